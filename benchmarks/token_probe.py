"""What does a CLIP run's single image token carry? Linear probes on the frozen projector(CLS) token, the
Thinker's input, read with one nn.Linear each (full-batch Adam, cross-entropy):

- one object: its colour and its shape, trained on "train" images, scored on new images of seen pairs and on the
  held-out colour-shape pairs (a linear read-out that never saw a blue circle, asked for its colour);
- two objects (seen pairs): "what colour is the <shape>?", one probe per shape, trained on two-object "train"
  scenes that hold that shape and scored on "test" ones. A reader that knows which two colours are present but
  not which belongs to the shape scores about 0.5, so a score above that means the token binds colour to shape;
  beside it, how often the probe names the *other* object's colour;
- two objects, by object: the colour and the shape of the main object (named first in the caption) and of the
  second, one probe each on the same scenes: how much better the token carries the main one;
- two objects, one reader for all shapes: a small MLP fed (the asked shape, one-hot; the token), trained on
  batches of 256 questions, scored on the "test" scenes as it learns: how many examples it takes to read what the
  token holds (the Thinker sees about 11 such questions a step). Twice: on the token as it is, and whitened with
  the statistics of ordinary training images (`tinyvit.thinker.whitening`, what `think --whiten` does);
- two objects, the same reader as a language model: the same "what colour is the <shape>?" questions, as text, read
  by a Thinker (the shipped architecture, whitened token) and by the MLP, both with the same batches of 256, AdamW
  at a constant learning rate, and the unseen answers left out as `think` does (`tinyvit.thinker.unseen_answers`);
  scored on new seen-pair scenes and on held-out ones (`--reader-steps`, 0 skips it).

    python benchmarks/token_probe.py --run CLIP_RUN_DIR [--images N] [--reader-steps N] [--readers NAME:LR,...]
                                     [--threads N]

The Thinker reads the same token (benchmarks/thinker_qa.py): where a probe beats the Thinker, the token holds more
than the language model learned to use.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F

from tinyvit.config import ThinkerConfig
from tinyvit.data import COLOURS, SHAPES, ShapesConfig, ShapesDataset
from tinyvit.text import PAD_ID
from tinyvit.thinker import (Thinker, answer_loss, encode_qa, encode_scenes, first_answer_positions, greedy_matches,
                             load_clip_encoder, train_tokenizer, unseen_answers, whitening)


def tokens_of(encoder, dataset: ShapesDataset) -> torch.Tensor:
    """Frozen projector(CLS) tokens, normalised to length 1. -> (n, E)."""
    return F.normalize(encode_scenes(encoder, dataset, "cls")[:, 0].float(), dim=-1)


def fit_probe(x: torch.Tensor, y: torch.Tensor, classes: int, steps: int = 500, seed: int = 0) -> torch.nn.Linear:
    """A linear classifier on (n, E) features and (n,) labels, trained to convergence on the whole set."""
    torch.manual_seed(seed)
    probe = torch.nn.Linear(x.shape[1], classes)
    optimiser = torch.optim.Adam(probe.parameters(), lr=1e-2)
    for _ in range(steps):
        optimiser.zero_grad()
        F.cross_entropy(probe(x) * 10, y).backward()  # x has length 1: a fixed scale of 10 lets the logits grow
        optimiser.step()
    return probe


@torch.no_grad()
def accuracy(probe: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    return (probe(x).argmax(1) == y).float().mean().item()


def one_object(encoder, shapes: ShapesConfig, n: int) -> dict[str, dict[str, float]]:
    """Colour and shape of single objects: {"colour": {"seen", "held-out"}, "shape": {...}}."""
    cfg = dataclasses.replace(shapes, min_objects=1, max_objects=1)
    sets = {split: ShapesDataset(size, cfg, split) for split, size in (("train", n), ("test", n // 4),
                                                                        ("heldout", n // 4))}
    x = {split: tokens_of(encoder, ds) for split, ds in sets.items()}
    out = {}
    for key, classes in (("colour", len(COLOURS)), ("shape", len(SHAPES))):
        y = {split: ds.labels(key) for split, ds in sets.items()}
        named = y["train"] >= 0  # colours without a name have no colour label
        probe = fit_probe(x["train"][named], y["train"][named], classes)
        out[key] = {"seen": accuracy(probe, x["test"], y["test"]),
                    "held-out": accuracy(probe, x["heldout"], y["heldout"])}
    return out


def colour_of_shape(scenes: list[dict], x: torch.Tensor, shape: int) -> tuple[torch.Tensor, ...]:
    """Two-object scenes holding `shape` once, in a named colour -> (tokens, its colour, the other's colour, whether
    it is the main object: the one the caption names first)."""
    rows, its, other, main = [], [], [], []
    for i, scene in enumerate(scenes):
        mine = [o for o in scene["objects"] if o["shape"] == shape]
        rest = [o for o in scene["objects"] if o["shape"] != shape]
        if len(mine) == 1 and len(rest) == 1 and mine[0]["colour"] >= 0:
            rows.append(i), its.append(mine[0]["colour"]), other.append(rest[0]["colour"])
            main.append(scene["objects"][0] is mine[0])
    return x[rows], torch.tensor(its), torch.tensor(other), torch.tensor(main, dtype=torch.bool)


def two_object_sets(encoder, shapes: ShapesConfig, n: int) -> tuple[list[dict], torch.Tensor, list[dict], torch.Tensor]:
    """n "train" and n / 4 "test" scenes of two named objects: (train scenes, their tokens, test scenes, tokens)."""
    cfg = dataclasses.replace(shapes, min_objects=2, max_objects=2, unnamed_fraction=0.0)
    train, test = ShapesDataset(n, cfg, "train"), ShapesDataset(n // 4, cfg, "test")
    return train.scenes(), tokens_of(encoder, train), test.scenes(), tokens_of(encoder, test)


def two_objects(sets: tuple) -> dict[str, tuple[float, float]]:
    """Per shape: (the probe names the shape's colour, it names the other object's colour), seen pairs."""
    train_scenes, x_train, test_scenes, x_test = sets
    out = {}
    for k, name in enumerate(SHAPES):
        xa, ya, _, _ = colour_of_shape(train_scenes, x_train, k)
        xb, yb, other, _ = colour_of_shape(test_scenes, x_test, k)
        probe = fit_probe(xa, ya, len(COLOURS))
        out[name] = (accuracy(probe, xb, yb), accuracy(probe, xb, other))
    return out


def main_and_second(sets: tuple) -> dict[str, tuple[float, float]]:
    """The colour and the shape of the main object (the one the caption names first) and of the second, one linear
    probe each, on the same two-object scenes: {"colour": (main, second), "shape": (main, second)}."""
    train_scenes, x_train, test_scenes, x_test = sets
    out = {}
    for key, classes in (("colour", len(COLOURS)), ("shape", len(SHAPES))):
        scores = []
        for k in (0, 1):
            ya = torch.tensor([scene["objects"][k][key] for scene in train_scenes])
            yb = torch.tensor([scene["objects"][k][key] for scene in test_scenes])
            scores.append(accuracy(fit_probe(x_train, ya, classes), x_test, yb))
        out[key] = tuple(scores)
    return out


def colour_questions(scenes: list[dict], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every "what colour is the <shape>?" that `colour_of_shape` asks of two-object scenes, all shapes together:
    {"token" (M, E), "shape" (M,), "colour" (M,), "main" (M,) bool: the asked object is the one named first}."""
    out: dict[str, list] = {"token": [], "shape": [], "colour": [], "main": []}
    for k in range(len(SHAPES)):
        xs, ys, _, main = colour_of_shape(scenes, x, k)
        out["token"].append(xs), out["shape"].append(torch.full((len(ys),), k)), out["colour"].append(ys)
        out["main"].append(main)
    return {key: torch.cat(value) for key, value in out.items()}


def shape_and_token(shape: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """An MLP reader's input: [one-hot asked shape, token]. (M,), (M, E) -> (M, S + E)."""
    return torch.cat([F.one_hot(shape, len(SHAPES)).float(), token], 1)


def colour_mlp(in_features: int) -> torch.nn.Sequential:
    """The MLP reader: two hidden layers of 512 with GELU, one logit per colour."""
    return torch.nn.Sequential(torch.nn.Linear(in_features, 512), torch.nn.GELU(), torch.nn.Linear(512, 512),
                               torch.nn.GELU(), torch.nn.Linear(512, len(COLOURS)))


def mlp_reader(sets: tuple, steps: int, whitener: tuple[torch.Tensor, torch.Tensor] | None = None, seed: int = 0
               ) -> list[tuple[int, float]]:
    """(questions seen, accuracy on "test" scenes) as an MLP learns "what colour is the <shape>?" from
    [one-hot shape, token]: two hidden layers of 512 with GELU, AdamW 1e-3, batches of 256. The token is scaled to
    length 10, or whitened with `whitener` = (mean, W) from `tinyvit.thinker.whitening`."""
    train_scenes, x_train, test_scenes, x_test = sets
    if whitener is not None:
        mean, w = whitener
        x_train, x_test = (x_train - mean) @ w, (x_test - mean) @ w
    else:
        x_train, x_test = x_train * 10, x_test * 10

    train, test = colour_questions(train_scenes, x_train), colour_questions(test_scenes, x_test)
    xa, ya = shape_and_token(train["shape"], train["token"]), train["colour"]
    xb, yb = shape_and_token(test["shape"], test["token"]), test["colour"]
    torch.manual_seed(seed)
    net = colour_mlp(xa.shape[1])
    optimiser = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05)
    curve, marks = [], {steps // 32, steps // 16, steps // 8, steps // 4, steps // 2, steps}
    for step in range(1, steps + 1):
        batch = torch.randint(0, len(ya), (256,))
        optimiser.zero_grad()
        F.cross_entropy(net(xa[batch]), ya[batch]).backward()
        optimiser.step()
        if step in marks:
            with torch.no_grad():
                curve.append((step * 256, (net(xb).argmax(1) == yb).float().mean().item()))
    return curve


def colour_text(tokenizer, q: dict[str, torch.Tensor]) -> tuple[list[dict], torch.Tensor, torch.Tensor]:
    """`colour_questions` as the Thinker reads them -> (records, ids (M, T), answer mask (M, T)), cut to the
    longest question and answer."""
    records = [{"type": "colour", "question": f"what colour is the {SHAPES[k]}?", "answer": COLOURS[c]}
               for k, c in zip(q["shape"].tolist(), q["colour"].tolist())]
    ids, mask = encode_qa(tokenizer, records, ThinkerConfig.context_length)
    width = int((ids != PAD_ID).sum(1).max())
    return records, ids[:, :width], mask[:, :width]


def mlp_colour_reader(train: dict[str, torch.Tensor], whitener: tuple[torch.Tensor, torch.Tensor]):
    """`colour_mlp` on [one-hot asked shape, whitened token], with the colours the asked shape
    never had in `train` left out of its softmax. -> (module, loss(batch indices), right(questions) (M,) bool)."""
    mean, w = whitener
    seen_colours = torch.zeros(len(SHAPES), len(COLOURS), dtype=torch.bool)  # what each shape had in training
    seen_colours[train["shape"], train["colour"]] = True
    net = colour_mlp(len(SHAPES) + w.shape[0])

    def inputs(q: dict[str, torch.Tensor]) -> torch.Tensor:  # (M, S + E)
        return shape_and_token(q["shape"], (q["token"] - mean) @ w)
    x = inputs(train)

    def loss(batch: torch.Tensor) -> torch.Tensor:
        logits = net(x[batch]).masked_fill(~seen_colours[train["shape"][batch]], float("-inf"))
        return F.cross_entropy(logits, train["colour"][batch])

    @torch.no_grad()
    def right(q: dict[str, torch.Tensor]) -> torch.Tensor:
        return net(inputs(q)).argmax(1) == q["colour"]
    return net, loss, right


def thinker_colour_reader(train: dict[str, torch.Tensor], ordinary: torch.Tensor, tokenizer):
    """A Thinker as `think --whiten` builds it (whitening fixed from `ordinary` (n, E) tokens), reading the same
    questions as text, with `unseen_answers` left out as `think` does. -> (module, loss, right) as above."""
    records, ids, mask = colour_text(tokenizer, train)
    net = Thinker(ThinkerConfig(vocab_size=tokenizer.vocab_size, dim=ordinary.shape[1], whiten=True))
    net.set_whitening(ordinary[:, None])
    left_out = unseen_answers(records, ids, mask)  # per question: the colours its shape never had
    ruled_out = torch.full((*ids.shape, max(map(len, left_out), default=0) or 1), -1, dtype=torch.long)  # (M, T, R)
    for m, (first, pieces) in enumerate(zip(first_answer_positions(mask).tolist(), left_out)):
        ruled_out[m, first, : len(pieces)] = torch.tensor(pieces, dtype=torch.long)

    def loss(batch: torch.Tensor) -> torch.Tensor:
        net.train()
        return answer_loss(net(train["token"][batch, None], ids[batch]), ids[batch], mask[batch], ruled_out[batch])

    def right(q: dict[str, torch.Tensor]) -> torch.Tensor:
        _, q_ids, q_mask = colour_text(tokenizer, q)
        return greedy_matches(net, q["token"][:, None], q_ids, q_mask)
    return net, loss, right


def binding_readers(sets: tuple, heldout: tuple[list[dict], torch.Tensor], ordinary: torch.Tensor, tokenizer,
                    steps: int, readers: tuple[tuple[str, float], ...] = (("mlp", 1e-3), ("thinker", 1e-3),
                                                                          ("thinker", 3e-3)), seed: int = 0
                    ) -> dict[tuple[str, float], list[tuple[int, float, float, float, float]]]:
    """The MLP reader and the Thinker on one stream of "what colour is the <shape>?" questions about two-object
    "train" scenes: batches of 256 (the same indices for every reader), AdamW at a constant lr with weight decay
    0.05, the token whitened with the statistics of `ordinary` (n, E) tokens, unseen answers left out.
    -> per (reader, lr): (questions seen, seen-pair accuracy, held-out accuracy, held-out asked about the main
    object (a held-out pair), asked about the second) at 1/8, 1/4, 1/2 and all of `steps`."""
    train_scenes, x_train, test_scenes, x_test = sets
    train, test, held = (colour_questions(s, x) for s, x in ((train_scenes, x_train), (test_scenes, x_test), heldout))
    marks = {steps // 8, steps // 4, steps // 2, steps}
    curves = {}
    for name, lr in readers:
        torch.manual_seed(seed)
        net, loss, right = mlp_colour_reader(train, whitening(ordinary)) if name == "mlp" else \
            thinker_colour_reader(train, ordinary, tokenizer)
        optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
        order = torch.Generator().manual_seed(seed)
        curve = []
        for step in range(1, steps + 1):
            optimiser.zero_grad()
            loss(torch.randint(0, len(train["colour"]), (256,), generator=order)).backward()
            optimiser.step()
            if step in marks:
                seen, hits = right(test).float(), right(held).float()
                curve.append((step * 256, seen.mean().item(), hits.mean().item(), hits[held["main"]].mean().item(),
                              hits[~held["main"]].mean().item()))
        curves[(name, lr)] = curve
    return curves


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, type=Path, metavar="CLIP_RUN_DIR")
    parser.add_argument("--images", type=int, default=6000, help="training images per probe set (default 6000)")
    parser.add_argument("--mlp-steps", type=int, default=1000, help="steps of the MLP reader (default 1000)")
    parser.add_argument("--reader-steps", type=int, default=1000,
                        help="steps of the MLP-against-Thinker comparison (default 1000, ~3 minutes; 0 skips it)")
    parser.add_argument("--readers", default="mlp:1e-3,thinker:1e-3,thinker:3e-3", metavar="NAME:LR,...",
                        help="the readers compared, mlp or thinker, each at its learning rate (default "
                             "mlp:1e-3,thinker:1e-3,thinker:3e-3; 3e-3 is `think`'s)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        readers = tuple((name, float(lr)) for name, lr in (item.split(":") for item in args.readers.split(",")))
    except ValueError:
        readers = ()
    if not readers or any(name not in ("mlp", "thinker") or not lr > 0 for name, lr in readers):
        parser.error(f"--readers takes NAME:LR items, NAME mlp or thinker and LR > 0, got {args.readers!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    encoder, shapes = load_clip_encoder(args.run)
    print(f"linear probes on the frozen projector(CLS) token of {args.run}")
    for key, scores in one_object(encoder, shapes, args.images).items():
        print(f"one object, its {key:6s}  seen pairs {scores['seen']:.2f}   held-out pairs {scores['held-out']:.2f}")
    print("two objects (seen pairs), 'what colour is the <shape>?': the shape's colour / the other object's colour")
    sets = two_object_sets(encoder, shapes, args.images)
    for name, (its, other) in two_objects(sets).items():
        print(f"  {name:9s} {its:.2f} / {other:.2f}")
    print("two objects (seen pairs), the main object's / the second object's attribute:")
    for key, (main, second) in main_and_second(sets).items():
        print(f"  {key:9s} {main:.2f} / {second:.2f}")
    print("two objects (seen pairs), one MLP reader for every shape: questions seen -> the shape's colour, "
          "token as it is / whitened")
    ordinary_tokens = tokens_of(encoder, ShapesDataset(args.images, shapes, "train", seed=1))  # the Thinker's mix
    ordinary = whitening(ordinary_tokens)
    curves = [mlp_reader(sets, args.mlp_steps, whitener) for whitener in (None, ordinary)]
    for (seen, raw), (_, white) in zip(*curves):
        print(f"  {seen:>8,} {raw:.2f} / {white:.2f}")
    if args.reader_steps:
        cfg = dataclasses.replace(shapes, min_objects=2, max_objects=2, unnamed_fraction=0.0)
        held = ShapesDataset(args.images // 4, cfg, "heldout")
        tokenizer = train_tokenizer(ShapesDataset(3000, shapes, "train"))  # the tokenizer `think` trains (seed 0)
        curves = binding_readers(sets, (held.scenes(), tokens_of(encoder, held)), ordinary_tokens, tokenizer,
                                 args.reader_steps, readers)
        print("two objects, 'what colour is the <shape>?' read by an MLP and by a Thinker: the same batches of 256, "
              "whitened token,\nunseen answers left out; questions seen -> seen pairs / held-out pairs (held-out: "
              "asked about the held-out object, the main one / about the other)")
        print("  " + " " * 9 + "".join(f"  {name} lr {lr:g}".ljust(30) for name, lr in curves))
        for rows in zip(*curves.values()):
            print(f"  {rows[0][0]:>9,}" + "".join(f"  {a:.2f} / {b:.2f} ({c:.2f}, {d:.2f})".ljust(30)
                                                  for _, a, b, c, d in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
