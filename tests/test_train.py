import dataclasses
import math

import pytest
import torch

from tinyvit.config import TextConfig, TrainConfig, ViTConfig
from tinyvit.contrastive import CLIP, clip_batch_loss
from tinyvit.runs import check_configs, load_checkpoint, load_model
from tinyvit.train import autocast_dtype, fit, lr_at, make_optimizer, param_groups, resolve_device

VISION = ViTConfig(image_size=16, patch_size=8, dim=32, depth=2, heads=2, mlp_dim=64, out_dim=16, dropout=0.1)
TEXT = TextConfig(vocab_size=40, context_length=8, dim=32, out_dim=16, dropout=0.1)
CFG = TrainConfig(steps=12, batch_size=8, lr=3e-3, warmup_steps=3, eval_every=0, seed=1)


def paired_data(n: int = 32, size: int = 16, seed: int = 0):
    """n random images, each with its own random caption tokens (BOS, 3 words, EOS)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g)
    words = torch.randint(4, TEXT.vocab_size, (n, 3), generator=g)
    toks = torch.zeros(n, TEXT.context_length, dtype=torch.long)
    toks[:, 0], toks[:, 1:4], toks[:, 4] = 2, words, 3
    return images, toks


def batch_source(images, toks, batch_size, seed=0):
    """A pure function of the step, as fit expects: a seeded random batch."""
    def batches(step):
        idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed * 100003 + step))[:batch_size]
        return images[idx], toks[idx]
    return batches


def tiny_clip(vision=VISION):
    torch.manual_seed(0)
    return CLIP(vision, TEXT)


def test_short_run_lowers_the_loss_and_records_history():
    images, toks = paired_data(8)
    model = tiny_clip()
    cfg = dataclasses.replace(CFG, steps=30, eval_every=10)
    calls = []
    history = fit(model, clip_batch_loss, lambda step: (images, toks), cfg, progress=False,
                  evaluate=lambda m: calls.append(m.training) or {"score": 1.0})
    assert history["step"] == list(range(1, 31))
    assert sum(history["loss"][-3:]) / 3 < 0.5 * sum(history["loss"][:3]) / 3
    assert len(history["temperature"]) == 30 and all(0.01 <= t <= 1 for t in history["temperature"])
    assert history["eval"] == [{"step": 10, "score": 1.0}, {"step": 20, "score": 1.0}, {"step": 30, "score": 1.0}]
    assert calls == [False, False, False]  # evaluated in eval mode
    assert model.training  # and back to training afterwards


def test_chapter_224_patch16_config_learns_in_a_few_steps():
    vision = ViTConfig(out_dim=16)  # the chapter's ViT-Tiny: 224x224, patch 16, 197 tokens
    images, toks = paired_data(8, size=224)
    model = tiny_clip(vision)
    history = fit(model, clip_batch_loss, lambda step: (images, toks),
                  dataclasses.replace(CFG, steps=6, warmup_steps=1, lr=1e-3), progress=False)
    assert history["loss"][-1] < history["loss"][0] - 0.2


def test_schedule_warms_up_linearly_then_follows_a_cosine():
    cfg = TrainConfig(steps=110, lr=1e-3, warmup_steps=10)
    assert [lr_at(s, cfg) for s in (0, 4, 9)] == pytest.approx([1e-4, 5e-4, 1e-3])
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(0.5e-3)  # halfway through the decay
    assert lr_at(35, cfg) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert lr_at(109, cfg) < 1e-6
    lrs = [lr_at(s, cfg) for s in range(10, 110)]
    assert lrs == sorted(lrs, reverse=True)


def test_no_weight_decay_on_biases_norms_embeddings_and_temperature():
    model = tiny_clip()
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {"logit_scale", "visual.cls_token", "visual.pos_embed", "visual.norm.weight"} <= skipped
    assert "visual.blocks.0.attn.qkv.weight" in decayed and "visual.projector.weight" in decayed
    assert not any(n.endswith("bias") for n in decayed)
    assert not any(isinstance(m, torch.nn.Embedding) and id(m.weight) in {id(p) for p in decay["params"]}
                   for m in model.modules())
    assert len(decayed) + len(skipped) == len(list(model.parameters()))


def test_fits_optimizer_is_fused_adamw_with_the_same_updates_as_the_loop():
    fused_model, loop_model = tiny_clip(), tiny_clip()
    fused = make_optimizer(fused_model, CFG, torch.device("cpu"))
    loop = torch.optim.AdamW(param_groups(loop_model, CFG.weight_decay), lr=CFG.lr, betas=(0.9, 0.98), eps=1e-6)
    assert fused.defaults["fused"] and not loop.defaults["fused"]
    assert [g["weight_decay"] for g in fused.param_groups] == [CFG.weight_decay, 0.0]
    for step in range(3):
        grads = [torch.randn_like(p, generator=torch.Generator().manual_seed(step * 1000 + i))
                 for i, p in enumerate(fused_model.parameters())]
        for model, optimizer in ((fused_model, fused), (loop_model, loop)):
            for p, g in zip(model.parameters(), grads):
                p.grad = g.clone()
            optimizer.step()
    for a, b in zip(fused_model.parameters(), loop_model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert any((a - b).abs().max() > 0 for a, b in zip(fused_model.parameters(), tiny_clip().parameters()))


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    images, toks = paired_data(8)
    model = tiny_clip()
    fit(model, clip_batch_loss, lambda step: (images, toks), dataclasses.replace(CFG, steps=3), progress=False,
        checkpoint_path=tmp_path / "ckpt.pt", extra_state={"configs": model.configs(), "tokenizer": b"\x00proto\xff"})
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    assert ckpt["step"] == 3 and ckpt["tokenizer"] == b"\x00proto\xff" and ckpt["configs"] == model.configs()
    assert ckpt["train_config"]["steps"] == 3
    fresh = load_model(tiny_clip(), ckpt, configs=model.configs())
    model.eval(), fresh.eval()
    torch.testing.assert_close(fresh(images, toks), model(images, toks), rtol=0, atol=0)
    # every object in it loads under weights_only=True, without tinyvit's help
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["format"] == "tinyvit-checkpoint"


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path):
    images, toks = paired_data(32)
    batches = batch_source(images, toks, CFG.batch_size)
    whole = fit(tiny_clip(), clip_batch_loss, batches, CFG, progress=False)
    model = tiny_clip()
    extra = {"configs": model.configs()}
    first = fit(model, clip_batch_loss, batches, CFG, until=5, checkpoint_path=tmp_path / "c.pt", extra_state=extra,
                progress=False)
    assert first["step"] == [1, 2, 3, 4, 5]
    torch.manual_seed(123)  # whatever happened in between must not matter
    resumed = fit(tiny_clip(), clip_batch_loss, batches, CFG, resume=tmp_path / "c.pt", extra_state=extra,
                  progress=False)
    assert resumed["step"] == list(range(1, 13))
    assert resumed["loss"] == whole["loss"]  # exactly, dropout included
    assert resumed["temperature"] == whole["temperature"]


def test_resume_into_a_different_config_names_each_mismatch(tmp_path):
    images, toks = paired_data(8)
    model = tiny_clip()
    fit(model, clip_batch_loss, lambda s: (images, toks), dataclasses.replace(CFG, steps=2), progress=False,
        checkpoint_path=tmp_path / "c.pt", extra_state={"configs": model.configs()})
    other = CLIP(dataclasses.replace(VISION, depth=3, mlp_dim=128), TEXT)
    with pytest.raises(ValueError) as err:
        fit(other, clip_batch_loss, lambda s: (images, toks), CFG, resume=tmp_path / "c.pt",
            extra_state={"configs": other.configs()}, progress=False)
    assert "vision.depth: expected 3, found 2" in str(err.value)
    assert "vision.mlp_dim: expected 128, found 64" in str(err.value)
    with pytest.raises(ValueError, match="text.kind: expected 'transformer', found 'mean'"):
        check_configs({"text": {"kind": "transformer"}}, {"text": {"kind": "mean"}})


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto").type == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"  # CUDA first
    monkeypatch.undo()
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or mps, got 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_a_crashed_run_resumes_from_its_last_periodic_checkpoint(tmp_path):
    images, toks = paired_data(32)
    batches = batch_source(images, toks, CFG.batch_size)
    cfg = dataclasses.replace(CFG, steps=8, checkpoint_every=3)
    whole = fit(tiny_clip(), clip_batch_loss, batches, cfg, progress=False)

    def crashing(step):
        if step == 7:
            raise RuntimeError("power cut")
        return batches(step)

    with pytest.raises(RuntimeError, match="power cut"):
        fit(tiny_clip(), clip_batch_loss, crashing, cfg, checkpoint_path=tmp_path / "c.pt", progress=False)
    assert load_checkpoint(tmp_path / "c.pt")["step"] == 6  # saved after steps 3 and 6
    resumed = fit(tiny_clip(), clip_batch_loss, batches, cfg, resume=tmp_path / "c.pt", progress=False)
    assert resumed["loss"] == whole["loss"]


def test_set_threads_keeps_torchs_choice_or_refuses_below_one():
    from tinyvit.train import set_threads

    before = torch.get_num_threads()
    set_threads(None)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="--threads must be at least 1, got 0"):
        set_threads(0)


def test_precision_picks_the_autocast_dtype():
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu) is None and autocast_dtype(cpu, "fp32") is None  # the CPU's reference path
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16
    assert autocast_dtype(torch.device("cuda"), "fp32") is None
    with pytest.raises(ValueError, match="precision must be auto, fp32 or bf16, got 'fp16'"):
        autocast_dtype(cpu, "fp16")
    with pytest.raises(ValueError, match="precision must be auto, fp32 or bf16, got 'half'"):
        TrainConfig(precision="half")


@pytest.mark.parametrize("device, precision", [("cpu", "bf16"), pytest.param("cuda", "auto", marks=pytest.mark.cuda)])
def test_mixed_precision_trains_in_half_and_keeps_fp32_weights(device, precision):
    images, toks = paired_data(8)
    model = tiny_clip()
    seen = []
    hook = model.visual.blocks[0].mlp.fc1.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    history = fit(model, clip_batch_loss, lambda step: (images, toks),
                  dataclasses.replace(CFG, steps=30, device=device, precision=precision), progress=False)
    hook.remove()
    # bf16 where asked for; "auto" on CUDA: bf16, or fp16 on GPUs without it
    expected = torch.float16 if device == "cuda" and not torch.cuda.is_bf16_supported() else torch.bfloat16
    assert seen[0] == expected  # the matrix products ran in half precision
    assert all(p.device.type == device and p.dtype == torch.float32 for p in model.parameters())  # the weights not
    assert sum(history["loss"][-3:]) / 3 < 0.5 * sum(history["loss"][:3]) / 3


# --- on a CUDA GPU (marked `cuda`: skipped without one, as in CI; run them where a GPU is: `pytest -m cuda`) -------

@pytest.mark.cuda
def test_cuda_resume_continues_the_uninterrupted_losses(tmp_path):
    images, toks = paired_data(32)
    batches = batch_source(images, toks, CFG.batch_size)
    cfg = dataclasses.replace(CFG, device="cuda")
    whole = fit(tiny_clip(), clip_batch_loss, batches, cfg, progress=False)
    model = tiny_clip()
    fit(model, clip_batch_loss, batches, cfg, until=5, checkpoint_path=tmp_path / "c.pt", progress=False)
    torch.cuda.manual_seed(123)  # the GPU's dropout stream must come back from the checkpoint
    resumed = fit(tiny_clip(), clip_batch_loss, batches, cfg, resume=tmp_path / "c.pt", progress=False)
    assert resumed["step"] == list(range(1, 13))
    # GPU kernels may sum in another order from run to run, so "the same" is to float rounding here
    torch.testing.assert_close(torch.tensor(resumed["loss"]), torch.tensor(whole["loss"]), rtol=1e-3, atol=1e-3)


@pytest.mark.cuda
def test_fp16_on_a_cuda_gpu_without_bf16_scales_the_loss_and_keeps_the_scaler_in_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # a T4 or V100, say
    assert autocast_dtype(torch.device("cuda")) is torch.float16
    images, toks = paired_data(8)
    model = tiny_clip()
    history = fit(model, clip_batch_loss, lambda step: (images, toks),
                  dataclasses.replace(CFG, steps=30, device="cuda"), checkpoint_path=tmp_path / "c.pt",
                  progress=False)
    assert all(math.isfinite(v) for v in history["loss"])
    assert sum(history["loss"][-3:]) / 3 < 0.5 * sum(history["loss"][:3]) / 3
    scaler = load_checkpoint(tmp_path / "c.pt")["scaler"]
    assert scaler and scaler["scale"] > 0  # a GradScaler ran and its state is kept for a resume


@pytest.mark.cuda
def test_a_checkpoint_trained_on_cuda_loads_on_the_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # cuDNN's default would round the patch conv
    images, toks = paired_data(8)
    model = tiny_clip()
    fit(model, clip_batch_loss, lambda step: (images, toks), dataclasses.replace(CFG, steps=5, device="cuda"),
        checkpoint_path=tmp_path / "c.pt", extra_state={"configs": model.configs()}, progress=False)
    ckpt = load_checkpoint(tmp_path / "c.pt")  # mapped to the CPU
    assert all(t.device.type == "cpu" for t in ckpt["model"].values())
    on_cpu = load_model(tiny_clip(), ckpt, configs=model.configs()).eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(on_cpu.encode_image(images), model.encode_image(images.cuda()).cpu(),
                                   rtol=1e-4, atol=1e-4)


def test_a_nan_loss_stops_fit_naming_the_step_before_it_touches_the_weights():
    model = torch.nn.Linear(4, 1)
    before = [p.detach().clone() for p in model.parameters()]

    def loss_fn(model, step):
        return model(torch.ones(1, 4)).sum() * (float("nan") if step == 2 else 1.0)

    cfg = TrainConfig(steps=5, batch_size=2, warmup_steps=0, eval_every=0)
    with pytest.raises(FloatingPointError, match="loss became nan at step 2; try a lower learning rate"):
        fit(model, loss_fn, lambda step: step, cfg, progress=False)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # steps 0 and 1 did train


@pytest.mark.parametrize("grad_clip, norm", [(1.0, 1.0), (0.0, 100 * 2.0)])
def test_grad_clip_caps_the_gradient_norm_adamw_sees(tmp_path, grad_clip, norm):
    """loss = 100 * w.x with x = (1, 1, 1, 1): the gradient is 100 * x, norm 200. AdamW's first moment after one
    step is (1 - 0.9) * gradient, so its norm is 0.1 * the clipped norm: 0.1 with grad_clip 1, 20 without."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1, bias=False)
    cfg = TrainConfig(steps=1, batch_size=2, warmup_steps=0, eval_every=0, grad_clip=grad_clip)
    fit(model, lambda m, x: 100 * m(x).sum(), lambda step: torch.ones(1, 4), cfg, progress=False,
        checkpoint_path=tmp_path / "c.pt")
    moment = load_checkpoint(tmp_path / "c.pt")["optimizer"]["state"][0]["exp_avg"]
    assert float(moment.norm()) == pytest.approx(0.1 * norm, rel=1e-5)
