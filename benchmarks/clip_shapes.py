"""Does the CLIP recipe learn shape, or only colour? Accuracy against training time, on colour-shape pairs the
model never saw, and on shapes from an independently written generator (benchmarks/shapes_variant.py).

Each evaluation prints one row: training seconds (evaluation time excluded), step, zero-shot shape and colour
accuracy on held-out pairs (one-shape images), image->text recall@1 over 500 held-out captions, shape accuracy on
seen pairs, and zero-shot shape / colour on the variant generator's held-out pairs.

    python benchmarks/clip_shapes.py                      # the default recipe (python -m tinyvit train)
    python benchmarks/clip_shapes.py --recipe naive       # plain batches, the chapter's dropout: the shortcut
    python benchmarks/clip_shapes.py --hard-fraction 0.5 --unnamed-fraction 0 --steps 600   # any variant
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from shapes_variant import variant_items  # noqa: E402

from tinyvit.contrastive import CLIP, clip_batch_loss, default_recipe, shared_attribute_mask  # noqa: E402
from tinyvit.data import HardNegativeBatches, ShapesDataset, heldout_pairs, to_tensor  # noqa: E402
from tinyvit.evaluate import class_embeddings, embed_images, evaluate_shapes, shapes_prompts  # noqa: E402
from tinyvit.text import Tokenizer  # noqa: E402
from tinyvit.train import fit  # noqa: E402


def recipe_for(args: argparse.Namespace) -> dict:
    recipe = default_recipe()
    if args.recipe == "naive":  # what issue 4 started from: plain batches, the chapter's dropout everywhere
        recipe["shapes"] = dataclasses.replace(recipe["shapes"], hard_fraction=0.0, unnamed_fraction=0.0,
                                               shared_attribute_negatives=False)
        recipe["vision"] = dataclasses.replace(recipe["vision"], dropout=0.1)
    shapes = {k: v for k, v in (("hard_fraction", args.hard_fraction), ("unnamed_fraction", args.unnamed_fraction))
              if v is not None}
    recipe["shapes"] = dataclasses.replace(recipe["shapes"], **shapes)
    if args.dropout is not None:
        recipe["vision"] = dataclasses.replace(recipe["vision"], dropout=args.dropout)
    train = {k: v for k, v in (("lr", args.lr), ("steps", args.steps), ("batch_size", args.batch_size)) if v is not None}
    recipe["train"] = dataclasses.replace(recipe["train"], device="cpu", eval_every=args.eval_every, **train)
    return recipe


def variant_scores(model: CLIP, tokenizer: Tokenizer, items: list[dict]) -> dict[str, float]:
    images = torch.stack([to_tensor(item["image"]) for item in items])  # (n, 3, S, S)
    emb = embed_images(model, images)  # (n, E)
    out = {}
    for key in ("shape", "colour"):
        predictions = (emb @ class_embeddings(model, tokenizer, shapes_prompts(key)).T).argmax(dim=1)
        out[f"variant_{key}"] = (predictions == torch.tensor([item[key] for item in items])).float().mean().item()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=["default", "naive"], default="default")
    parser.add_argument("--hard-fraction", type=float)
    parser.add_argument("--unnamed-fraction", type=float)
    parser.add_argument("--dropout", type=float)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = recipe_for(args)
    vision, text, train, shapes = recipe["vision"], recipe["text"], recipe["train"], recipe["shapes"]
    tokenizer = Tokenizer.train(ShapesDataset(4000, shapes, "train", seed=train.seed).captions, text.vocab_size)
    text = dataclasses.replace(text, vocab_size=tokenizer.vocab_size)
    torch.manual_seed(train.seed)
    model = CLIP(vision, text, train.init_temperature)
    stream = HardNegativeBatches(shapes, train.batch_size, seed=train.seed)

    done = [0]  # steps taken so far, for the evaluation rows

    def batches(step: int):
        done[0] = step + 1
        images, captions, _ = stream(step)
        tokens = tokenizer.encode_batch(captions, text.context_length)
        if shapes.shared_attribute_negatives:
            return images, tokens, shared_attribute_mask(stream.attributes(step))
        return images, tokens

    heldout = ShapesDataset(500, shapes, "heldout", seed=1)
    seen = ShapesDataset(300, dataclasses.replace(shapes, max_objects=1), "test", seed=2)
    variant = variant_items(300, vision.image_size, heldout_pairs(), seed=3)
    rows, eval_seconds, start = [], 0.0, time.perf_counter()
    print(json.dumps({k: (v.to_dict() if hasattr(v, "to_dict") else dataclasses.asdict(v)) for k, v in recipe.items()}))
    print(f"{'train s':>8} {'step':>5} {'shape':>6} {'colour':>6} {'R@1':>6} {'seen shape':>10} {'var shape':>9} "
          f"{'var colour':>10}")

    def evaluate(m: CLIP) -> dict:
        nonlocal eval_seconds
        t = time.perf_counter()
        held = evaluate_shapes(m, tokenizer, heldout)
        row = {"train_s": round(t - start - eval_seconds, 1), "step": done[0],
               "shape": held["shape_zero_shot"], "colour": held["colour_zero_shot"], "r1": held["i2t_recall@1"],
               "seen_shape": evaluate_shapes(m, tokenizer, seen)["shape_zero_shot"],
               **variant_scores(m, tokenizer, variant)}
        eval_seconds += time.perf_counter() - t
        rows.append(row)
        print(f"{row['train_s']:8.0f} {row['step']:5d} {row['shape']:6.3f} {row['colour']:6.3f} {row['r1']:6.3f} "
              f"{row['seen_shape']:10.3f} {row['variant_shape']:9.3f} {row['variant_colour']:10.3f}", flush=True)
        return row

    fit(model, clip_batch_loss, batches, train, evaluate=evaluate, progress=False)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
