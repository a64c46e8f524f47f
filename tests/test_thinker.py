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

import tinyvit.__main__ as cli
from tinyvit.config import ThinkerConfig, TrainConfig, ViTConfig
from tinyvit.data import COLOURS, POSITIONS, SHAPES, ShapesConfig, ShapesDataset, heldout_pairs, make_item
from tinyvit.model import VisionEncoder
from tinyvit.text import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer
from tinyvit.thinker import (
    RECIPE, QABatches, Thinker, answer_loss, answer_questions, encode_qa, evaluate_qa, generate, greedy_matches,
    image_tokens, load_thinker, make_qa, prompt_ids, scene_questions, thinker_batch_loss, train_tokenizer,
    unseen_answers, whitening,
)
from tinyvit.train import fit, load_checkpoint, save_checkpoint

TINY = ThinkerConfig(vocab_size=40, dim=32, depth=2, heads=2, mlp_dim=64, context_length=12)
TINY_VIT = ViTConfig(image_size=16, patch_size=8, dim=16, depth=1, heads=2, mlp_dim=32, out_dim=32)
CLIP_CONFIG = {"vision": {"dim": 32, "depth": 1, "heads": 2, "mlp_dim": 64},
               "text": {"dim": 32, "context_length": 16}, "train": {"eval_every": 0, "warmup_steps": 1}}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run faster on one thread: with two on a busy machine, small ops wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_chapter_image_token_and_five_text_tokens_make_six():
    cfg = dataclasses.replace(TINY, dim=256, heads=4)
    model = Thinker(cfg)
    image = torch.randn(1, 1, 256)  # the chapter's (1, 256) image token, batched
    ids = torch.tensor([[15, 23, 8, 4, 16]])  # five text tokens
    assert model.token_embed(ids).shape == (1, 5, 256)
    assert model.embed(image, ids).shape == (1, 6, 256)
    assert model(image, ids).shape == (1, 6, cfg.vocab_size)


def test_all_variant_takes_n_tokens_and_refuses_the_wrong_count():
    model = Thinker(dataclasses.replace(TINY, variant="all", image_tokens=5))
    assert model(torch.randn(2, 5, 32), torch.ones(2, 3, dtype=torch.long)).shape == (2, 8, 40)
    with pytest.raises(ValueError, match=r"expected image tokens \(B, 5, 32\).*got \(2, 1, 32\)"):
        model(torch.randn(2, 1, 32), torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="variant 'cls' hands over exactly 1 image token"):
        ThinkerConfig(variant="cls", image_tokens=5)


def test_image_tokens_are_the_projected_cls_or_all_tokens():
    encoder = VisionEncoder(TINY_VIT).eval()
    images = torch.randn(3, 3, 16, 16)
    cls = image_tokens(encoder, images, "cls")
    every = image_tokens(encoder, images, "all")
    assert cls.shape == (3, 1, 32) and every.shape == (3, TINY_VIT.num_tokens, 32)
    torch.testing.assert_close(cls[:, 0], encoder(images))  # the chapter's (1, 256) is the encoder's output
    torch.testing.assert_close(every[:, :1], cls)
    assert not cls.requires_grad and not every.requires_grad  # no graph, even for an encoder that could learn


def test_a_token_never_sees_later_tokens():
    model = Thinker(TINY).eval()
    image, ids = torch.randn(2, 1, 32), torch.randint(4, 40, (2, 8))
    changed = ids.clone()
    changed[:, 5] = (ids[:, 5] + 1 - 4) % 36 + 4  # another token at text position 5 = sequence position 6
    before, after = model(image, ids), model(image, changed)
    torch.testing.assert_close(before[:, :6], after[:, :6])
    assert not torch.allclose(before[:, 6:], after[:, 6:])


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


def test_whitening_gives_the_training_tokens_unit_variance_in_every_direction_they_use():
    # Tokens that use 6 of 32 directions, with variances from 100 down to 1e-4, and an offset.
    generator = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(32, 6, generator=generator))[0]  # (32, 6) orthonormal columns
    scales = torch.tensor([10.0, 3.0, 1.0, 0.3, 0.1, 0.01])
    tokens = (torch.randn(4000, 6, generator=generator) * scales) @ basis.T + 5.0  # (4000, 32)
    model = Thinker(dataclasses.replace(TINY, whiten=True))
    assert torch.equal(model.image_whitener, torch.eye(32))  # identity until set
    model.set_whitening(tokens[:, None], eps=1e-8)
    white = (tokens - model.image_mean) @ model.image_whitener  # (4000, 32)
    variances = torch.linalg.eigvalsh(torch.cov(white.T.double()))
    torch.testing.assert_close(variances[-6:], torch.ones(6, dtype=torch.float64), atol=0.02, rtol=0)  # all alike
    assert variances[:-6].abs().max() < 1e-3  # the 26 unused directions stay at ~0
    torch.testing.assert_close(white.mean(0), torch.zeros(32), atol=1e-3, rtol=0)
    # The whitened token is what the image LayerNorm reads, and the buffers travel in the state dict.
    ids = torch.ones(2, 3, dtype=torch.long)
    image = tokens[:2, None]
    expected = model.image_norm(white[:2]) + model.pos_embed[0, 0]
    torch.testing.assert_close(model.embed(image, ids)[:, 0], expected, atol=1e-4, rtol=1e-4)
    clone = Thinker(dataclasses.replace(TINY, whiten=True))
    clone.load_state_dict(model.state_dict())
    torch.testing.assert_close(clone.embed(image, ids), model.embed(image, ids))
    assert "image_whitener" not in Thinker(TINY).state_dict()  # off by default: older Thinkers load unchanged
    with pytest.raises(ValueError, match="whiten=False"):
        Thinker(TINY).set_whitening(tokens[:, None])
    with pytest.raises(ValueError, match="whiten must be True or False"):
        ThinkerConfig(whiten="yes")


def test_whitening_in_chunks_equals_the_covariance_in_one_piece():
    tokens = torch.randn(70_000, 4, generator=torch.Generator().manual_seed(1)) * torch.tensor([3.0, 1.0, 0.5, 0.1])
    mean, whitener = whitening(tokens, eps=1e-6)  # 70,000 rows: two chunks
    variances, vectors = torch.linalg.eigh(torch.cov(tokens.T.double()))
    expected = vectors @ torch.diag((variances + 1e-6 * variances.max()).rsqrt()) @ vectors.T
    torch.testing.assert_close(mean, tokens.double().mean(0).float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(whitener, expected.float(), atol=1e-4, rtol=1e-4)


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


def test_unseen_answers_are_the_answers_of_a_type_a_question_never_had():
    dataset = ShapesDataset(300, ShapesConfig(image_size=16), "train")
    tok, records = train_tokenizer(dataset), make_qa(dataset)
    ids, mask = encode_qa(tok, records, 40)
    ruled_out = unseen_answers(records, ids, mask)
    by_question = {r["question"]: out for r, out in zip(records, ruled_out)}
    first_piece = {c: tok.encode(c)[0] for c in COLOURS}
    heldout = dict(heldout_pairs())  # shape -> its held-out colour: never in the train split
    for shape, colour in heldout.items():
        assert first_piece[colour] in by_question[f"what colour is the {shape}?"]
        assert first_piece[colour] not in by_question[f"what colour is the {next(s for s in SHAPES if s != shape)}?"]
    assert by_question["what shape is this?"] == []  # every shape answers it
    for record, out in zip(records, ruled_out):  # never the piece of an answer the question had
        assert out == by_question[record["question"]] and tok.encode(record["answer"])[0] not in out
    # In packed batches the pieces sit at each pair's first answer position and nowhere else.
    batches = QABatches(torch.randn(300, 1, 32).half(), records, ids, mask, batch_size=8, ruled_out=ruled_out)
    _, batch_ids, batch_mask, segments, batch_out = batches(0)
    assert batch_out.shape[:2] == batch_ids.shape and batch_out.shape[2] == max(map(len, ruled_out))
    starts = batch_mask & ~torch.cat([torch.zeros(8, 1, dtype=torch.bool), batch_mask[:, :-1]], 1)
    assert ((batch_out >= 0).any(-1) & ~starts).sum() == 0 and (batch_out >= 0).any()
    assert len(QABatches(torch.randn(300, 1, 32).half(), records, ids, mask, batch_size=8)(0)) == 4


class Scripted(Thinker):
    """Emits `script[i]` as the i-th new token whatever the input (a fixed logits table), to test the loop."""

    def __init__(self, script, ties=False):
        super().__init__(TINY)
        self.script, self.ties, self.prompt = script, ties, None

    def forward(self, image_tokens, ids):
        B, T = ids.shape
        self.prompt = self.prompt or T
        logits = torch.zeros(B, 1 + T, self.cfg.vocab_size)
        token = self.script[min(T - self.prompt, len(self.script) - 1)]
        logits[:, -1, token] = 5.0
        if self.ties:
            logits[:, -1, token + 1] = 5.0
        return logits


def test_generation_stops_at_eos_and_respects_the_length_limit():
    image, prompt = torch.zeros(2, 1, 32), torch.full((2, 3), 5)
    assert generate(Scripted([11, 12, EOS_ID, 13]), image, prompt) == [[11, 12], [11, 12]]
    assert generate(Scripted([11]), image, prompt, max_new_tokens=4) == [[11] * 4, [11] * 4]
    # The context holds 12 text tokens: a 3-token prompt leaves room for 9 new ones whatever is asked.
    assert len(generate(Scripted([11]), image, prompt, max_new_tokens=50)[0]) == TINY.context_length - 3


def test_sampling_follows_the_seeded_distribution():
    image, prompt = torch.zeros(200, 1, 32), torch.full((200, 3), 5)
    greedy = generate(Scripted([20], ties=True), image, prompt, max_new_tokens=1)
    assert {row[0] for row in greedy} == {20}  # argmax takes the first of two tied tokens
    draw = lambda seed: generate(Scripted([20], ties=True), image, prompt, max_new_tokens=1, temperature=1.0,
                                 generator=torch.Generator().manual_seed(seed))
    counts = np.bincount([row[0] for row in draw(0)], minlength=40)
    assert counts[20] + counts[21] > 150 and counts[20] > 50 and counts[21] > 50  # both likely tokens drawn
    assert draw(1) == draw(1) and draw(1) != draw(2)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        generate(Scripted([20]), image, prompt, temperature=-1.0)


@pytest.mark.parametrize("unnamed", [0.0, 0.5])
def test_questions_are_answered_from_the_labels(unnamed):
    cfg = ShapesConfig(image_size=32, unnamed_fraction=unnamed)
    rng = __import__("random").Random(0)
    kinds = set()
    for index in range(60):
        item = make_item(index, cfg, "train")
        records = scene_questions(item, rng)
        objects = item["objects"]
        named = [o["colour"] >= 0 for o in objects]
        assert len(records) == sum(3 if n else 2 if len(objects) == 1 else 1 for n in named) + 1
        for r in records:
            if r["type"] == "describe":
                assert r["answer"].count(" and ") == len(objects) - 1
                for o in objects:
                    colour = f"{COLOURS[o['colour']]} " if o["colour"] >= 0 else ""
                    assert f"{colour}{SHAPES[o['shape']]}" in r["answer"]
                continue
            o = objects[r["object"]]
            colour = COLOURS[o["colour"]] if o["colour"] >= 0 else None
            kinds.add((r["type"], colour is not None))
            expected = {"shape": SHAPES[o["shape"]], "colour": colour, "position": POSITIONS[o["position"]]}[r["type"]]
            assert r["answer"] == expected and r["pair"] == (SHAPES[o["shape"]], colour)
            # The question names the other attribute, which no other object in the scene shares.
            if r["type"] == "colour":
                assert SHAPES[o["shape"]] in r["question"]
            if r["type"] == "shape" and len(objects) == 2:
                assert colour in r["question"]
    assert ("colour", False) not in kinds and (("position", False) in kinds) == (unnamed > 0)


def test_heldout_pairs_never_appear_in_training_questions():
    records = make_qa(ShapesDataset(1500, ShapesConfig(image_size=32, unnamed_fraction=0.3), "train"))
    assert not {r["pair"] for r in records} & heldout_pairs()
    texts = [r["question"] + " | " + r["answer"] for r in records]
    for shape, colour in heldout_pairs():
        assert not any(f"{colour} {shape}" in t for t in texts)
        assert not any(r["pair"] is not None and r["pair"][0] == shape and r["answer"] == colour for r in records)
    heldout = make_qa(ShapesDataset(50, ShapesConfig(image_size=32), "heldout"))
    assert all(r["pair"] in heldout_pairs() for r in heldout if r["object"] == 0)


def test_qa_tokenizer_covers_the_questions_and_the_caption_tokenizer_does_not():
    dataset = ShapesDataset(300, ShapesConfig(image_size=32), "train")
    qa_tok = train_tokenizer(dataset)
    for r in make_qa(dataset):
        assert UNK_ID not in qa_tok.encode(r["question"]) + qa_tok.encode(r["answer"])
    assert len(qa_tok.encode("what shape is this?")) == 5
    caption_tok = Tokenizer.train(dataset.captions, 256)
    assert UNK_ID in caption_tok.encode("what shape is this?")  # "?" never occurs in a caption


def test_encode_qa_lays_out_question_then_answer():
    dataset = ShapesDataset(20, ShapesConfig(image_size=32), "train")
    tok, records = train_tokenizer(dataset), make_qa(dataset)
    ids, mask = encode_qa(tok, records, 24)
    for m in (0, 5, len(records) - 1):
        prompt = prompt_ids(tok, records[m]["question"])
        row = ids[m].tolist()
        assert row[: len(prompt)] == prompt and prompt[0] == BOS_ID and prompt[-1] == EOS_ID
        answer = [i for i, keep in zip(row, mask[m].tolist()) if keep]
        assert answer[-1] == EOS_ID and tok.decode(answer) == records[m]["answer"]
    with pytest.raises(ValueError, match="more than context_length 6"):
        encode_qa(tok, records, 6)


def test_batches_pack_each_images_questions_into_one_row():
    dataset = ShapesDataset(10, ShapesConfig(image_size=32), "train")
    tok, records = train_tokenizer(dataset), make_qa(dataset)
    ids, mask = encode_qa(tok, records, 24)
    tokens = torch.randn(10, 1, 32).half()
    batches = QABatches(tokens, records, ids, mask, batch_size=4, seed=3)
    a, b = batches(7), QABatches(tokens, records, ids, mask, batch_size=4, seed=3)(7)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    image, batch_ids, batch_mask, segments = a
    assert image.shape == (4, 1, 32) and image.dtype == torch.float32
    assert batch_ids.shape == batch_mask.shape == segments.shape and (segments[:, -1] != -1).any()
    for row in range(4):
        image_index = int(torch.nonzero((tokens.float() == image[row]).all(-1).all(-1))[0])
        mine = [m for m, r in enumerate(records) if r["image"] == image_index]
        assert int(segments[row].max()) == len(mine)
        for j, m in enumerate(mine):  # pair j + 1 of the row is record m, answer mask included
            n = int((ids[m] != PAD_ID).sum())
            assert torch.equal(batch_ids[row][segments[row] == j + 1], ids[m, :n])
            assert torch.equal(batch_mask[row][segments[row] == j + 1], mask[m, :n])


def test_a_packed_row_equals_its_pairs_run_alone():
    model = Thinker(dataclasses.replace(TINY, variant="all", image_tokens=3)).eval()
    image = torch.randn(1, 3, 32)
    pairs = [torch.randint(4, 40, (n,)) for n in (5, 7, 4)]
    # Three pairs and more padding than the context holds (padding must not need positions of its own).
    packed = torch.cat(pairs + [torch.zeros(15, dtype=torch.long)])[None]  # (1, 31)
    segments = torch.cat([torch.full((len(p),), j + 1) for j, p in enumerate(pairs)] + [torch.full((15,), -1)])[None]
    together = model(image, packed, segments)  # (1, 3 + 31, V)
    start = 3
    for j, pair in enumerate(pairs):
        alone = model(image, pair[None])  # (1, 3 + n, V)
        torch.testing.assert_close(together[:, start : start + len(pair)], alone[:, 3:], rtol=1e-4, atol=1e-5)
        start += len(pair)
    torch.testing.assert_close(together[:, :3], model(image, pairs[0][None])[:, :3], rtol=1e-4, atol=1e-5)


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
