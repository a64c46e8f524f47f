"""tinyvit.thinker.training and the think / ask commands: the loss, training, scoring, saving and loading."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import tinyvit.cli as cli
from tinyvit.config import ThinkerConfig, TrainConfig
from tinyvit.data import ShapesConfig, ShapesDataset, make_item
from tinyvit.runs import load_checkpoint, save_checkpoint
from tinyvit.text import BOS_ID, EOS_ID, PAD_ID
from tinyvit.thinker import (
    RECIPE, QABatches, Thinker, answer_loss, answer_questions, encode_qa, evaluate_qa, greedy_matches, load_thinker,
    make_qa, thinker_batch_loss, train_tokenizer,
)
from tinyvit.train import fit

TINY = ThinkerConfig(vocab_size=40, dim=32, depth=2, heads=2, mlp_dim=64, context_length=12)
CLIP_CONFIG = {"vision": {"dim": 32, "depth": 1, "heads": 2, "mlp_dim": 64},
               "text": {"dim": 32, "context_length": 16}, "train": {"eval_every": 0, "warmup_steps": 1}}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")


def test_loss_reads_only_answer_tokens():
    ids = torch.tensor([[BOS_ID, 7, 8, EOS_ID, 9, 10, EOS_ID, PAD_ID]])
    mask = torch.tensor([[False, False, False, False, True, True, True, False]])
    logits = torch.randn(1, 1 + 8, 40, requires_grad=True)
    loss = answer_loss(logits, ids, mask)
    # Position K - 1 + t predicts text token t (K = 1): answer tokens 4, 5, 6 are read at positions 4, 5, 6.
    torch.testing.assert_close(loss, F.cross_entropy(logits[0, 4:7], ids[0, 4:7]))
    loss.backward()
    used = logits.grad.abs().sum(-1)[0] > 0
    assert used.tolist() == [False, False, False, False, True, True, True, False, False]


def test_ruled_out_pieces_leave_the_softmax_and_get_no_gradient():
    ids = torch.tensor([[BOS_ID, 7, 8, EOS_ID, 9, 10, EOS_ID, PAD_ID]])
    mask = torch.tensor([[False, False, False, False, True, True, True, False]])
    ruled_out = torch.full((1, 8, 2), -1)
    ruled_out[0, 4] = torch.tensor([11, 12])  # at the first answer piece (9), pieces 11 and 12 are left out
    logits = torch.randn(1, 9, 40, requires_grad=True)
    loss = answer_loss(logits, ids, mask, ruled_out)
    pred = logits[0, 4:7].clone()
    pred[0, [11, 12]] = float("-inf")
    torch.testing.assert_close(loss, F.cross_entropy(pred, ids[0, 4:7]))
    loss.backward()
    assert logits.grad[0, 4, [11, 12]].abs().sum() == 0 and logits.grad[0, 4, 13] != 0
    assert logits.grad[0, 5, 11] != 0  # only the named position leaves them out
    nothing_left_out = torch.full((1, 8, 2), -1)
    torch.testing.assert_close(answer_loss(logits, ids, mask, nothing_left_out), answer_loss(logits, ids, mask))


def test_short_training_lowers_the_loss_and_answers_exactly():
    dataset = ShapesDataset(4, ShapesConfig(image_size=16), "train")
    tok, records = train_tokenizer(dataset), make_qa(dataset)
    cfg = dataclasses.replace(TINY, vocab_size=tok.vocab_size, context_length=40)
    ids, mask = encode_qa(tok, records, cfg.context_length)
    # A distinct random token per image: the answers are learnable by heart, which is all 60 steps can do.
    tokens = torch.randn(4, 1, 32).half()
    model = Thinker(cfg)
    untrained = evaluate_qa(model, tok, tokens, records)
    train = TrainConfig(steps=60, batch_size=4, lr=1e-2, warmup_steps=5, eval_every=0)
    history = fit(model, thinker_batch_loss, QABatches(tokens, records, ids, mask, 4), train, progress=False)
    assert np.mean(history["loss"][-5:]) < 0.1 * np.mean(history["loss"][:5])
    scores = evaluate_qa(model, tok, tokens, records)
    assert set(scores["accuracy"]) == {"shape", "colour", "position", "describe"}
    assert sum(scores["n"].values()) == len(records)
    hits = sum(scores["accuracy"][t] * scores["n"][t] for t in scores["n"])
    assert hits >= 0.9 * len(records) and sum(untrained["accuracy"].values()) == 0
    assert scores["examples"][0]["predicted"] == scores["examples"][0]["answer"] == records[0]["answer"]
    # Scoring with the answer fed in agrees with generating each answer and comparing the text.
    generated = answer_questions(model, tok, tokens[[r["image"] for r in records]], [r["question"] for r in records])
    matches = greedy_matches(model, tokens[[r["image"] for r in records]], ids, mask, batch_size=7)
    assert matches.tolist() == [a == r["answer"] for a, r in zip(generated, records)]


# --- the command line: `think` writes a Thinker, `ask` answers from a subprocess ---------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("thinker")
    config = root / "tiny.json"
    config.write_text(json.dumps(CLIP_CONFIG))
    clip_run, thinker_run = root / "clip", root / "thinker"
    assert cli.main(["train", "--out", str(clip_run), "--steps", "3", "--batch-size", "8", "--image-size", "16",
                     "--patch-size", "8", "--quiet", "--config", str(config)]) == 0
    assert cli.main(["think", "--run", str(clip_run), "--out", str(thinker_run), "--variant", "all", "--steps", "3",
                     "--batch-size", "8", "--images", "12", "--eval-images", "6", "--quiet"]) == 0
    image = root / "item.png"
    Image.fromarray(make_item(0, ShapesConfig(image_size=16), "heldout")["image"]).save(image)
    return {"root": root, "clip": clip_run, "thinker": thinker_run, "image": image}


def test_think_leaves_unseen_answers_out_unless_asked_to_keep_them(runs):
    assert json.loads((runs["thinker"] / "metrics.json").read_text())["rule_out_unseen"] is True
    plain = runs["root"] / "plain"
    assert cli.main(["think", "--run", str(runs["clip"]), "--out", str(plain), "--steps", "2", "--batch-size", "4",
                     "--images", "8", "--eval-images", "4", "--keep-unseen-answers", "--quiet"]) == 0
    assert json.loads((plain / "metrics.json").read_text())["rule_out_unseen"] is False


def test_think_whiten_stores_the_whitening_with_the_thinker(runs):
    white = runs["root"] / "white"
    assert cli.main(["think", "--run", str(runs["clip"]), "--out", str(white), "--steps", "2", "--batch-size", "4",
                     "--images", "8", "--eval-images", "4", "--whiten", "--quiet"]) == 0
    model, _, _ = load_thinker(white)
    assert model.cfg.whiten and not torch.equal(model.image_whitener, torch.eye(model.cfg.dim))


def test_think_lr_sets_the_peak_learning_rate_and_refuses_bad_values(runs, capsys):
    assert json.loads((runs["thinker"] / "metrics.json").read_text())["lr"] == RECIPE.lr
    slow = runs["root"] / "slow"
    assert cli.main(["think", "--run", str(runs["clip"]), "--out", str(slow), "--steps", "2", "--batch-size", "4",
                     "--images", "8", "--eval-images", "4", "--lr", "1e-3", "--quiet"]) == 0
    assert json.loads((slow / "metrics.json").read_text())["lr"] == 1e-3
    capsys.readouterr()
    for bad, shown in (("0", "0.0"), ("-1e-3", "-0.001"), ("nan", "nan")):
        argv = ["think", "--run", runs["clip"], "--out", runs["root"] / "bad", f"--lr={bad}", "--quiet"]
        one_line_error(capsys, argv, f"--lr must be positive, got {shown}")
    assert not (runs["root"] / "bad").exists()


@pytest.mark.cuda
def test_think_trains_on_cuda_and_the_thinker_answers_on_the_cpu(runs):
    gpu = runs["root"] / "gpu"
    assert cli.main(["think", "--run", str(runs["clip"]), "--out", str(gpu), "--steps", "3", "--batch-size", "4",
                     "--images", "8", "--eval-images", "4", "--device", "cuda", "--whiten", "--quiet"]) == 0
    model, _, encoder = load_thinker(gpu)  # on the CPU by default
    assert {p.device.type for p in [*model.parameters(), *model.buffers(), *encoder.parameters()]} == {"cpu"}
    result = ask("--run", gpu, runs["image"], "What colour is the circle?")
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 1, result.stderr


def ask(*args):
    return subprocess.run([sys.executable, "-m", "tinyvit", "ask", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=300)


def one_line_error(capsys, argv, *fragments):
    """cli.main(argv) in this process: exit code 2, one stderr line holding every fragment, no traceback."""
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and "Traceback" not in captured.err
    for fragment in fragments:
        assert fragment in captured.err, captured.err


def test_think_writes_a_checkpoint_and_metrics(runs):
    assert sorted(os.listdir(runs["thinker"])) == ["metrics.json", "thinker.pt"]
    metrics = json.loads((runs["thinker"] / "metrics.json").read_text())
    assert metrics["variant"] == "all" and metrics["image_tokens"] == 5 and metrics["steps"] == 3
    assert set(metrics["accuracy"]) == {"shape", "colour", "position", "describe"}
    code = cli.main(["think", "--run", str(runs["clip"]), "--out", str(runs["thinker"]), "--quiet"])
    assert code == 2  # an existing Thinker is kept without --force


def test_think_never_writes_into_a_clip_run_folder(runs, capsys):
    before = (runs["clip"] / "metrics.json").read_bytes()
    one_line_error(capsys, ["think", "--run", runs["clip"], "--out", runs["clip"], "--steps", "2", "--quiet"],
                   "holds a CLIP run", "folder of its own")
    assert (runs["clip"] / "metrics.json").read_bytes() == before and not (runs["clip"] / "thinker.pt").exists()
    from tinyvit.thinker import save_thinker

    with pytest.raises(ValueError, match="holds a CLIP run"):
        save_thinker(runs["clip"], {}, runs["clip"])


def test_ask_answers_from_a_subprocess(runs):
    result = ask("--run", runs["thinker"], runs["image"], "What colour is the circle?")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    sampled = ask("--run", runs["thinker"], runs["image"], "describe the image.", "--temperature", "1.5",
                  "--max-tokens", "3")
    assert sampled.returncode == 0, sampled.stderr


def test_ask_refuses_bad_input_with_one_clear_line(runs, tmp_path, capsys):
    big = tmp_path / "big.png"
    Image.new("RGB", (40, 30), "white").save(big)
    question = "what shape is this?"
    one_line_error(capsys, ["ask", "--run", runs["thinker"], big, question], "40x30", "expects 16x16", "--resize")
    assert cli.main(["ask", "--run", str(runs["thinker"]), str(big), question, "--resize"]) == 0
    assert capsys.readouterr().out.count("\n") == 1
    one_line_error(capsys, ["ask", "--run", runs["thinker"], runs["image"], "   "], "question is empty")
    one_line_error(capsys, ["ask", "--run", runs["thinker"], tmp_path / "nope.png", question], "not found")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG not really")
    one_line_error(capsys, ["ask", "--run", runs["thinker"], corrupt, question], "not a readable image")
    one_line_error(capsys, ["ask", "--run", runs["clip"], runs["image"], question], "holds no thinker.pt")
    one_line_error(capsys, ["ask", "--run", runs["thinker"], runs["image"], question, "--max-tokens", "0"],
                   "--max-tokens must be positive")
    rambling = "what shape is the " + "very " * 40 + "big one?"
    one_line_error(capsys, ["ask", "--run", runs["thinker"], runs["image"], rambling], "this Thinker reads at most 38",
                   "(context_length 40): ask a shorter question")


def test_ask_refuses_a_thinker_whose_encoder_changed(runs, tmp_path, capsys):
    shutil.copytree(runs["clip"], tmp_path / "clip")
    shutil.copytree(runs["thinker"], tmp_path / "thinker")  # it finds its CLIP run at ../clip, the copy
    args = ["ask", "--run", tmp_path / "thinker", runs["image"], "what shape is this?"]
    assert cli.main([str(a) for a in args]) == 0
    capsys.readouterr()
    ckpt = load_checkpoint(tmp_path / "clip" / "checkpoint.pt")
    ckpt["model"]["visual.projector.weight"] += 0.01
    kept = {k: v for k, v in ckpt.items() if k not in ("format", "version")}
    save_checkpoint(tmp_path / "clip" / "checkpoint.pt", **kept)
    one_line_error(capsys, args, "not the one this Thinker was trained on")
    shutil.rmtree(tmp_path / "clip")
    one_line_error(capsys, args, "the CLIP run this Thinker reads is missing")


def test_an_interrupted_think_keeps_its_checkpoint_and_resume_gives_the_same_losses(runs, capsys, monkeypatch):
    import tinyvit.thinker.training as training

    out = runs["root"] / "resumed"
    args = ["think", "--run", str(runs["clip"]), "--out", str(out), "--variant", "all", "--steps", "3",
            "--batch-size", "8", "--images", "12", "--eval-images", "6", "--quiet"]  # the fixture's Thinker
    whole_fit = training.fit

    def interrupted_after_two_steps(*fit_args, **kwargs):
        whole_fit(*fit_args, **kwargs, until=2)  # saves the checkpoint of step 2
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "fit", interrupted_after_two_steps)
    assert cli.main(args) == 130
    assert f"the checkpoint of step 2 is kept in {out / '.partial'}" in capsys.readouterr().err
    monkeypatch.undo()
    one_line_error(capsys, args, "unfinished run with a checkpoint of step 2; continue it with --resume")
    one_line_error(capsys, ["think", "--out", out, "--resume", "--steps", "5"], "leave out --steps")
    assert cli.main(["think", "--out", str(out), "--resume", "--quiet"]) == 0
    assert sorted(os.listdir(out)) == ["metrics.json", "thinker.pt"]
    assert load_checkpoint(out / "thinker.pt")["loss"] == load_checkpoint(runs["thinker"] / "thinker.pt")["loss"]
    assert cli.main(["ask", "--run", str(out), str(runs["image"]), "what shape is this?"]) == 0


def test_ask_prints_the_exact_answer_a_thinker_memorised(runs):
    """Teach the fixture's Thinker one made-up answer for one image, then ask from a subprocess: the command prints
    exactly that answer, so image reading, the image tokens, the prompt and decoding all line up end to end."""
    from tinyvit.data import load_image
    from tinyvit.thinker import image_tokens

    model, tokenizer, encoder = load_thinker(runs["thinker"])
    question, answer = "What colour is the circle?", "purple square"
    tokens = image_tokens(encoder, load_image(runs["image"], 16)[None], model.cfg.variant).detach()  # (1, K, E)
    ids, mask = encode_qa(tokenizer, [{"question": question, "answer": answer}], model.cfg.context_length)
    train = TrainConfig(steps=40, batch_size=2, lr=3e-3, warmup_steps=2, eval_every=0, grad_clip=0)
    fit(model, thinker_batch_loss, lambda step: (tokens, ids, mask), train, progress=False)
    memorised = runs["root"] / "memorised"  # beside the CLIP run, like the fixture's Thinker
    shutil.copytree(runs["thinker"], memorised)
    ckpt = load_checkpoint(memorised / "thinker.pt")
    ckpt["model"] = model.state_dict()
    save_checkpoint(memorised / "thinker.pt", **{k: v for k, v in ckpt.items() if k not in ("format", "version")})
    result = ask("--run", memorised, runs["image"], question)
    assert result.returncode == 0, result.stderr
    assert result.stdout == answer + "\n"
