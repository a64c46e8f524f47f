"""How much does one image token carry? Train the Thinker twice on the same questions, reading (a) the chapter's
single projector(CLS) token or (b) the projector applied to all N tokens, and score exact-match answers on
held-out colour-shape pairs, per question type and for one- and two-object scenes.

    python benchmarks/thinker_qa.py --run CLIP_RUN_DIR [--out DIR] [--steps N] [--images N] [--threads N]
                                    [--keep-unseen-answers] [--whiten]
    python benchmarks/thinker_qa.py --run CLIP_RUN_DIR --answers THINKER_DIR

--answers trains nothing: it reads a saved Thinker and sorts its answers to questions about one of two objects into
right, the other object's, and one that is in neither: in new scenes of seen pairs and in held-out scenes, each
split by the object asked about, the main one (which the caption names first, the held-out pair in a held-out
scene) or the second; and the colour questions by the shape they ask about. It also scores the Thinker on the
first --eval-images of its own training images and their very questions, beside as many new images of the same
pairs: a Thinker that overfits does better on the first, one that underfits does not.

--keep-unseen-answers trains plain language models (every answer in the softmax) instead of leaving out, for each
question, the answers it never had in training (`tinyvit.thinker.unseen_answers`): the comparison that shows the
colour-from-shape shortcut in the language model.

With --out, each Thinker is saved as a `python -m tinyvit think` folder (DIR/cls, DIR/all) that `ask` can use.
Targets set for the Thinker: shape and colour >= 90 % with (a); each training <= 5 minutes on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from tinyvit.data import COLOURS, SHAPES, ShapesConfig, ShapesDataset
from tinyvit.text import UNK_ID, Tokenizer
from tinyvit.thinker import (QUESTION_TYPES, RECIPE, answer_questions, encode_scenes, evaluate_qa, load_clip_encoder,
                             load_thinker, make_qa, save_thinker, train_thinker)
from tinyvit import load_checkpoint


def tokenizer_coverage(run: Path, n_images: int) -> str:
    """How the CLIP run's caption tokenizer copes with the questions, against one trained on the QA texts."""
    clip_tok = Tokenizer.from_bytes(load_checkpoint(run / "checkpoint.pt")["tokenizer"])
    _, shapes = load_clip_encoder(run)
    records = make_qa(ShapesDataset(n_images, shapes, "train"))
    questions = sorted({r["question"] for r in records})
    with_unk = sum(UNK_ID in clip_tok.encode(q) for q in questions)
    pieces = sum(len(clip_tok.encode(q)) for q in questions) / len(questions)
    return (f"CLIP caption tokenizer: {with_unk}/{len(questions)} distinct questions hold an unknown piece, "
            f"{pieces:.1f} pieces per question")


def two_object_answers(thinker: tuple, shapes: ShapesConfig, n_images: int, split: str = "test"
                       ) -> tuple[dict[tuple[str, str], dict[str, int]], dict[str, list[bool]]]:
    """A saved Thinker's answers to "what colour is the <shape>?" and "what shape is the <colour> one?" on the
    two-object scenes among n_images new images of `split` ("test": seen pairs; "heldout") -> ({(type, "main" |
    "second"): {"right", "the other object's", "neither"}}, by the object asked about; {shape: [right?, ...]} for
    the colour questions, by the shape asked about). `thinker` is what `load_thinker` returns; `shapes` the CLIP
    run's data config."""
    model, tokenizer, encoder = thinker
    dataset = ShapesDataset(n_images, shapes, split)
    records = [r for r in make_qa(dataset) if r["n_objects"] == 2 and r["type"] in ("shape", "colour")]
    tokens = encode_scenes(encoder, dataset, model.cfg.variant)  # (n, K, E)
    questions = [r["question"] for r in records]
    answers = answer_questions(model, tokenizer, tokens[[r["image"] for r in records]], questions)
    scenes = dataset.scenes()
    counts = {(t, o): {"right": 0, "the other object's": 0, "neither": 0}
              for t in ("shape", "colour") for o in ("main", "second")}
    by_shape: dict[str, list[bool]] = {shape: [] for shape in SHAPES}
    for record, answer in zip(records, answers):
        other = scenes[record["image"]]["objects"][1 - record["object"]]
        other_answer = SHAPES[other["shape"]] if record["type"] == "shape" else \
            (COLOURS[other["colour"]] if other["colour"] >= 0 else None)
        kind = "right" if answer == record["answer"] else "the other object's" if answer == other_answer else "neither"
        counts[record["type"], "main" if record["object"] == 0 else "second"][kind] += 1
        if record["type"] == "colour":
            by_shape[record["pair"][0]].append(kind == "right")
    return counts, by_shape


def fit_check(thinker: tuple, thinker_dir: Path, shapes: ShapesConfig, n_images: int) -> dict[str, dict]:
    """A saved Thinker's exact match on the first n_images of its own training images with the questions it was
    trained on (make_qa draws them in order, so a prefix of the training set gets the same ones), and on n_images
    new images of the same pairs -> {"training images" | "new images": evaluate_qa's dict}. Thinkers saved before
    metrics.json recorded the seed were trained with the default, 0."""
    model, tokenizer, encoder = thinker
    metrics = json.loads((thinker_dir / "metrics.json").read_text(encoding="utf-8"))
    seed, n_train = metrics.get("seed", 0), metrics["train_images"]
    out = {}
    for name, split, n in (("training images", "train", min(n_images, n_train)), ("new images", "test", n_images)):
        dataset = ShapesDataset(n, shapes, split, seed=seed)
        tokens = encode_scenes(encoder, dataset, model.cfg.variant)
        out[name] = evaluate_qa(model, tokenizer, tokens, make_qa(dataset, seed))
    return out


def shares(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    return f"({total}): " + ", ".join(f"{k} {v / max(total, 1):.2f}" for k, v in counts.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, type=Path, metavar="CLIP_RUN_DIR")
    parser.add_argument("--out", type=Path, metavar="DIR", help="save the two Thinkers as DIR/cls and DIR/all")
    parser.add_argument("--steps", type=int, default=RECIPE.steps)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--eval-images", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--variants", nargs="+", default=["cls", "all"], choices=["cls", "all"])
    parser.add_argument("--keep-unseen-answers", action="store_true", help="train plain language models")
    parser.add_argument("--whiten", action="store_true", help="whiten the image tokens (Thinker.set_whitening)")
    parser.add_argument("--answers", type=Path, metavar="THINKER_DIR",
                        help="train nothing: sort a saved Thinker's two-object answers on seen pairs")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.answers:
        thinker, shapes = load_thinker(args.answers), load_clip_encoder(args.run)[1]  # read once, used three times
        for split, name in (("test", "new images of seen pairs"), ("heldout", "held-out images")):
            print(f"{args.answers}: questions about one of two objects, {args.eval_images} {name}")
            counts, by_shape = two_object_answers(thinker, shapes, args.eval_images, split)
            for kind in ("shape", "colour"):
                both = {k: counts[kind, "main"][k] + counts[kind, "second"][k] for k in counts[kind, "main"]}
                print(f"  {kind:6s} {shares(both)}")
                for which in ("main", "second"):
                    print(f"    about the {which:6s} object {shares(counts[kind, which])}")
            print("  colour, right, by the shape asked about: " + ", ".join(
                f"{shape} {sum(hits) / len(hits):.2f} ({len(hits)})" for shape, hits in by_shape.items() if hits))
        print(f"{args.answers}: does it fit its training questions? exact match shape / colour")
        for name, scores in fit_check(thinker, args.answers, shapes, args.eval_images).items():
            one, two = scores["one_object"], scores["two_objects"]
            print(f"  {name:15s} ({sum(scores['n'].values())} questions): one object {one['shape']:.2f} / "
                  f"{one['colour']:.2f}, two objects {two['shape']:.2f} / {two['colour']:.2f}")
        return 0
    train = dataclasses.replace(RECIPE, steps=args.steps, warmup_steps=min(RECIPE.warmup_steps, args.steps // 10))
    print(tokenizer_coverage(args.run, 300))
    results = {}
    for variant in args.variants:
        result = train_thinker(args.run, variant, train, args.images, args.eval_images, progress=sys.stderr.isatty(),
                               rule_out_unseen=not args.keep_unseen_answers, whiten=args.whiten)
        results[variant] = result["metrics"]
        if args.out:
            save_thinker(args.out / variant, result, args.run)
    names = {v: f"{v} ({results[v]['image_tokens']} token{'s' * (results[v]['image_tokens'] > 1)})" for v in results}
    print(f"\nexact match on {args.eval_images} held-out images (colour-shape pairs never trained on) and "
          f"{args.eval_images} images of seen pairs ({train.steps} steps, {args.images} training images, "
          f"{torch.get_num_threads()} threads, unseen answers "
          f"{'kept in the softmax' if args.keep_unseen_answers else 'left out of the loss'})")
    print(f"{'held-out question':<24}" + "".join(f"{names[v]:>18}" for v in results))
    for scope, label in (("accuracy", "{t}"), ("one_object", "{t}, 1 object"), ("two_objects", "{t}, 2 objects"),
                         ("seen_pairs", "{t}, seen pairs")):
        for t in QUESTION_TYPES:
            tables = [results[v]["seen_pairs"]["accuracy"] if scope == "seen_pairs" else results[v][scope]
                      for v in results]
            cells = [table.get(t) for table in tables]
            print(f"{label.format(t=t):<24}" + "".join(f"{c:>18.3f}" if c is not None else f"{'-':>18}" for c in cells))
    print(f"{'questions (n)':<24}" + "".join(f"{sum(results[v]['n'].values()):>18}" for v in results))
    print(f"{'training seconds':<24}" + "".join(f"{results[v]['train_seconds']:>18.1f}" for v in results))
    print(f"{'final loss':<24}" + "".join(f"{results[v]['final_loss']:>18.3f}" for v in results))
    if "cls" in results:
        acc = results["cls"]["accuracy"]
        for t in ("shape", "colour"):
            print(f"target {t} >= 0.90 with cls: {'met' if acc[t] >= 0.9 else 'MISSED'} ({acc[t]:.3f})")
    for v in results:
        seconds = results[v]["train_seconds"]
        print(f"target training <= 300 s ({v}): {'met' if seconds <= 300 else 'MISSED'} ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
