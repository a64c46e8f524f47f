import copy
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tinyvit import CLIP, Attention, TextConfig, ViTConfig, VisionEncoder, cpu_speed

SMALL = ViTConfig(image_size=32, patch_size=8, dim=32, depth=2, heads=4, mlp_dim=64, out_dim=16, dropout=0.0)
ONEDNN = pytest.mark.skipif(not cpu_speed.available(), reason="this PyTorch or CPU has no oneDNN linear op")


def pair(seed: int = 0, cfg: ViTConfig = SMALL) -> tuple[VisionEncoder, VisionEncoder]:
    """Two models with the same weights."""
    torch.manual_seed(seed)
    plain = VisionEncoder(cfg)
    fast = copy.deepcopy(plain)
    return plain, fast


def outputs_and_grads(model: VisionEncoder, images: torch.Tensor) -> list[torch.Tensor]:
    """Training-mode outputs and gradients (through the CLS-only path and every token), then inference outputs."""
    model.train().zero_grad()
    emb, feats = model(images), model.forward_features(images)
    (emb.square().sum() + feats.square().mean()).backward()
    results = [emb.detach(), feats.detach()] + [p.grad.clone() for p in model.parameters()]
    model.eval()
    with torch.no_grad():
        emb, (feats, attentions) = model(images), model.forward_features(images, return_attention=True)
    return results + [emb, feats] + attentions


@pytest.mark.parametrize("components", [pytest.param(["onednn"], marks=ONEDNN), ["explicit_attention"], ["slices"],
                                        pytest.param(list(cpu_speed.COMPONENTS), marks=ONEDNN)])
def test_each_component_computes_what_the_plain_model_computes_forward_and_backward(components):
    plain, fast = pair()
    cpu_speed.enable(fast, components, slice_tokens=40)  # slices of 2 images (17 tokens each)
    assert set(cpu_speed.enabled(fast)) == set(components) and cpu_speed.enabled(plain) == ()
    images = torch.randn(5, 3, 32, 32)
    for a, b in zip(outputs_and_grads(plain, images), outputs_and_grads(fast, images)):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_enable_and_disable_touch_one_model_only():
    plain, fast = pair()
    other = VisionEncoder(SMALL)
    classes = {name: type(m) for name, m in other.named_modules()}
    cpu_speed.enable(fast, ["dropout_masks", "explicit_attention", "slices"])
    assert type(fast.blocks[0].attn) is cpu_speed.ExplicitTrainingAttention
    assert type(fast.blocks[0].mlp.drop) is cpu_speed.MaskDropout
    assert "forward" in vars(fast) and "forward" not in vars(other)
    assert {name: type(m) for name, m in other.named_modules()} == classes  # the other model is unchanged
    assert type(plain.blocks[0].attn) is Attention and isinstance(fast.blocks[0].attn, Attention)
    assert list(fast.state_dict()) == list(plain.state_dict())  # the same parameters and keys
    cpu_speed.disable(fast)
    assert {name: type(m) for name, m in fast.named_modules()} == classes
    assert "forward" not in vars(fast) and "slice_tokens" not in vars(fast) and cpu_speed.enabled(fast) == ()


@ONEDNN
def test_onednn_swaps_plain_linears_only_and_keeps_them_nn_linears():
    clip = CLIP(SMALL, TextConfig(vocab_size=50, dim=32, depth=1, heads=4, mlp_dim=64, out_dim=16,
                                  kind="transformer"))
    cpu_speed.enable(clip, ["onednn"])  # a whole CLIP: the vision and text encoders both
    linears = [m for m in clip.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is cpu_speed.OneDNNLinear for m in linears)
    layer = nn.MultiheadAttention(8, 2)  # its out_proj is a subclass of nn.Linear: left as it is
    cpu_speed.enable(layer, ["onednn"])
    assert type(layer.out_proj) is not cpu_speed.OneDNNLinear
    cpu_speed.disable(clip)
    assert not any(type(m) is cpu_speed.OneDNNLinear for m in clip.modules())


@ONEDNN
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("out", [48, 16])  # wider and narrower than the input: two ways to the weight's gradient
def test_onednn_linear_gives_f_linears_outputs_and_gradients(bias, out, monkeypatch):
    torch.manual_seed(0)
    calls = []
    kernel = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(1) or kernel(*a))  # counts
    w = torch.randn(out, 32, requires_grad=True)
    b = torch.randn(out, requires_grad=True) if bias else None
    base = torch.randn(3, 11, 40, requires_grad=True)
    x = base[..., 4:36]  # (3, 11, 32), not contiguous
    weights = [w] + ([b] if bias else [])
    y = cpu_speed.linear(x, w, b)
    y.square().sum().backward()
    assert len(calls) == 3  # forward, input gradient, weight gradient
    got = [y.detach(), base.grad.clone()] + [p.grad.clone() for p in weights]
    for t in [base] + weights:
        t.grad = None
    expected = torch.nn.functional.linear(x, w, b)
    expected.square().sum().backward()
    for a, e in zip(got, [expected.detach(), base.grad] + [p.grad for p in weights]):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-4)
    assert got[2].is_contiguous()  # the weight's gradient has the weight's layout
    with torch.no_grad():  # inference: straight to the kernel, no autograd function
        torch.testing.assert_close(cpu_speed.linear(x, w, b), expected.detach(), rtol=1e-5, atol=1e-5)
    calls.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast keeps torch's own path, in bfloat16
        assert cpu_speed.linear(x, w, b).dtype == torch.bfloat16 and not calls


@ONEDNN
def test_the_flop_counter_counts_an_enabled_model_as_a_plain_one():
    plain, fast = pair()
    cpu_speed.enable(fast, ["onednn"])
    counts = []
    for model in (plain, fast):
        with FlopCounterMode(display=False) as counter:
            model.forward_features(torch.randn(2, 3, 32, 32)).sum().backward()
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] > 0


def test_importing_the_package_changes_nothing_process_wide():
    code = ("import torch, tinyvit, tinyvit.cpu_speed; from torch.utils.flop_counter import flop_registry; "
            "print(hasattr(torch.ops.mkldnn, '_linear_pointwise') and "
            "torch.ops.mkldnn._linear_pointwise in flop_registry)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_dropout_masks_drop_p_and_keep_the_mean_and_the_gradient_is_the_scaled_mask():
    drop = nn.Dropout(0.25)
    cpu_speed.enable(drop, ["dropout_masks"])
    assert type(drop) is cpu_speed.MaskDropout
    torch.manual_seed(0)
    x = torch.ones(200_000, requires_grad=True)
    y = drop(x)
    assert abs((y == 0).float().mean().item() - 0.25) < 0.01
    assert torch.all((y == 0) | torch.isclose(y, torch.tensor(1 / 0.75)))
    assert abs(y.mean().item() - 1.0) < 0.01
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() / 0.75)
    drop.eval()
    assert drop(x) is x  # eval mode: the identity, as nn.Dropout


def test_a_model_with_dropout_masks_trains_as_the_plain_one_in_eval_and_at_p_zero():
    plain, fast = pair(cfg=ViTConfig(image_size=32, patch_size=8, dim=32, depth=2, heads=4, mlp_dim=64, dropout=0.1))
    cpu_speed.enable(fast, ["dropout_masks"])
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(images), plain.eval()(images))
        fast.train()
        assert not torch.equal(fast(images), fast(images))  # training mode: masks drawn


def test_keep_mask_drops_p_of_the_entries_from_uniform_16_bit_lanes():
    torch.manual_seed(0)
    mask = cpu_speed.keep_mask((1000, 400), 0.1)
    assert mask.shape == (1000, 400) and mask.dtype == torch.bool
    dropped = (~mask).float()
    assert abs(dropped.mean().item() - 0.1) < 0.003
    for lane in range(4):  # each of the four 16-bit lanes cut from one 64-bit draw drops its share
        assert abs(dropped.flatten()[lane::4].mean().item() - 0.1) < 0.005
    torch.manual_seed(0)
    assert torch.equal(cpu_speed.keep_mask((1000, 400), 0.1), mask)  # the global seed decides it
    assert cpu_speed.keep_mask((7,), 0.0).all() and cpu_speed.keep_mask((3, 5), 0.5).shape == (3, 5)


def test_explicit_attention_is_taken_in_cpu_training_only(monkeypatch):
    attn = cpu_speed.enable(Attention(32, 4), ["explicit_attention"])
    fused_calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",  # counts the fused kernel's calls
                        lambda *a, **k: fused_calls.append(1) or sdpa(*a, **k))
    x = torch.randn(2, 9, 32)
    out, weights = attn(x)
    assert weights is None and not fused_calls  # gradients on: the explicit path, weights not returned
    assert attn(x, return_attention=True)[1].shape == (2, 4, 9, 9)
    with torch.no_grad():
        attn(x)
    attn(x, queries=1)
    assert len(fused_calls) == 2  # inference and the CLS-only queries: the fused kernel


def test_slices_run_large_batches_in_slices_and_only_without_autograd():
    torch.manual_seed(0)
    model = cpu_speed.enable(VisionEncoder(SMALL).eval(), ["slices"], slice_tokens=40)  # 2 images a slice
    sizes = []
    model.patch_embed.register_forward_hook(lambda m, args, out: sizes.append(out.shape[0]))
    images = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        model(images), model.forward_features(images), model(images, return_attention=True)
    assert sizes == [2, 2, 1] * 3
    sizes.clear()
    model(images)  # with autograd on: one batch, so gradients flow as usual
    assert sizes == [5]


def test_a_copy_of_an_enabled_model_slices_itself():
    model = cpu_speed.enable(VisionEncoder(SMALL).eval(), ["slices"], slice_tokens=40)
    twin = copy.deepcopy(model)
    assert twin.forward.__self__ is twin
    with torch.no_grad():
        twin.pos_embed.zero_()  # the copy's own weights are used, not the original's
        assert not torch.allclose(twin(torch.ones(4, 3, 32, 32)), model(torch.ones(4, 3, 32, 32)))


def test_enable_refuses_unknown_components():
    with pytest.raises(ValueError, match=r"unknown CPU speed components \['flash'\]"):
        cpu_speed.enable(VisionEncoder(SMALL), ["flash"])


def test_recommended_follows_the_cpu_kind():
    assert set(cpu_speed.recommended()) <= set(cpu_speed.COMPONENTS)
    code = "import tinyvit.cpu_speed as c; print(c.recommended())"
    for capability, expected in (("avx2", "('dropout_masks',)"), ("default", "()")):
        env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
        assert out.strip() == expected, capability
