"""Does the CLIP recipe learn shape, or only colour? Accuracy against training time, on colour-shape pairs the
model never saw, and on shapes from an independently written generator (benchmarks/shapes_variant.py).

Each evaluation prints one row: training seconds (evaluation time excluded), step, zero-shot shape and colour
accuracy on held-out pairs (one-shape images), image->text recall@1 over 500 held-out captions, shape accuracy on
seen pairs, and zero-shot shape / colour on the variant generator's held-out pairs.

    python benchmarks/clip_shapes.py                      # the default recipe (python -m tinyvit train)
    python benchmarks/clip_shapes.py --recipe naive       # plain batches, the chapter's dropout: the shortcut
    python benchmarks/clip_shapes.py --hard-fraction 0.5 --shape-first-steps 0 --steps 600   # any variant
    python benchmarks/clip_shapes.py --score data/shapes_clip    # score a finished run, no training

The variant generator draws on mid-grey, gradient and checkerboard backgrounds (70-190 of 255); `--score` scores it
both as drawn and redrawn on light backgrounds, to tell the background apart from its other changes. It also
splits the held-out recall@1: how often the top caption is at least true of the image (right content, another
wording), per number of objects, beside a reference reader who knows every scene (`evaluate.oracle_recall_at_1`),
and checks place alone: on one-object scenes, held-out and seen, the image's pick among nine captions that differ
only in the place; and binding alone: a two-object scene and its colour-traded copy, captioned "a red square" and
"a blue square", each image against both captions (`binding_pairs`, chance 0.5).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from shapes_variant import variant_items  # noqa: E402

from tinyvit.contrastive import CLIP, clip_batch_loss  # noqa: E402
from tinyvit.data import (COLOURS, HELDOUT, POSITIONS, SHAPES, BatchConfig, HardNegativeBatches,  # noqa: E402
                          ShapesConfig, ShapesDataset, caption_options, draw_objects, heldout_pairs, make_scene,
                          negatives_mask, object_name, to_tensor, with_article)
from tinyvit.evaluate import (class_embeddings, embed_images, embed_texts, evaluate_shapes,  # noqa: E402
                              oracle_hits, shapes_prompts)
from tinyvit.recipes import TOKENIZER_CAPTIONS, default_recipe  # noqa: E402
from tinyvit.runs import load_run, read_run_config  # noqa: E402
from tinyvit.text import Tokenizer  # noqa: E402
from tinyvit.train import fit  # noqa: E402


def naive_recipe() -> dict:
    """The default recipe before the shape cures (until commit 782ab7b): mid-grey backgrounds, plain batches of fresh
    items, every other caption a negative, the chapter's dropout 0.1, 600 steps with 50 of warm-up. The shortcut."""
    recipe = default_recipe(600)
    recipe["shapes"] = ShapesConfig(image_size=recipe["vision"].image_size)  # the data's defaults: none of the cures
    recipe["batches"] = BatchConfig()
    recipe["vision"] = dataclasses.replace(recipe["vision"], dropout=0.1)
    recipe["train"] = dataclasses.replace(recipe["train"], steps=600, warmup_steps=50, eval_every=100)
    return recipe


def recipe_for(args: argparse.Namespace) -> dict:
    """The recipe asked for, built for --steps (the default recipe keeps its share of shape-only steps)."""
    if args.recipe == "naive":
        recipe = naive_recipe()
    else:
        recipe = default_recipe() if args.steps is None else default_recipe(args.steps)
    shapes = {k: v for k, v in (("unnamed_fraction", args.unnamed_fraction),
                                ("background", args.background and tuple(args.background))) if v is not None}
    recipe["shapes"] = dataclasses.replace(recipe["shapes"], **shapes)
    batches = {k: v for k, v in (("hard_fraction", args.hard_fraction), ("shape_first_steps", args.shape_first_steps))
               if v is not None}
    recipe["batches"] = dataclasses.replace(recipe["batches"], **batches)
    if args.dropout is not None:
        recipe["vision"] = dataclasses.replace(recipe["vision"], dropout=args.dropout)
    train = {k: v for k, v in (("lr", args.lr), ("steps", args.steps), ("batch_size", args.batch_size))
             if v is not None}
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


def recall_breakdown(model: CLIP, tokenizer: Tokenizer, dataset: ShapesDataset) -> dict[str, float]:
    """Image->text top-1 over the data set's captions, split by objects per scene: the exact caption (recall@1),
    a caption true of the image (perhaps in another wording), and the reference reader's recall@1."""
    captions, scenes = dataset.captions, dataset.scenes()
    truths = [set(caption_options(scene["objects"], dataset.cfg)) for scene in scenes]
    reader = oracle_hits(captions, truths)
    top = (embed_images(model, dataset) @ embed_texts(model, tokenizer, captions).T).argmax(dim=1).tolist()
    out = {"reference reader: i2t R@1": sum(reader) / len(reader)}
    for n in (1, 2):
        rows = [i for i, scene in enumerate(scenes) if len(scene["objects"]) == n]
        out[f"{n}-object: top caption exact"] = sum(captions[top[i]] == captions[i] for i in rows) / len(rows)
        out[f"{n}-object: top caption true"] = sum(captions[top[i]] in truths[i] for i in rows) / len(rows)
        out[f"{n}-object: reference reader R@1"] = sum(reader[i] for i in rows) / len(rows)
    # What a false top caption gets wrong on two-object scenes. Caption j was written for scene j, so its objects
    # are scenes[top[i]]'s: no parsing. Shares of all two-object scenes.
    rows = [i for i, scene in enumerate(scenes) if len(scene["objects"]) == 2]
    misses = [(scenes[i]["objects"], scenes[top[i]]["objects"]) for i in rows if captions[top[i]] not in truths[i]]

    def names(objects: list[dict]) -> list[str]:
        return [object_name(o) for o in objects]

    kinds = {"a one-object caption": sum(len(b) == 1 for _, b in misses),
             "main object wrong": sum(len(b) == 2 and names(a)[0] != names(b)[0] for a, b in misses),
             "other object wrong": sum(len(b) == 2 and names(a)[0] == names(b)[0] and names(a)[1] != names(b)[1]
                                          for a, b in misses),
             "relation or size wrong": sum(len(b) == 2 and names(a) == names(b) for a, b in misses)}
    for kind, count in kinds.items():
        out[f"2-object miss: {kind}"] = count / len(rows)
    # Could a bag of words be the trouble? Distinct captions here with the same words in another order:
    bags = Counter(tuple(sorted(c.split())) for c in set(captions))
    out["captions sharing a bag of words"] = sum(bags[tuple(sorted(c.split()))] > 1 for c in captions) / len(captions)
    return out


def place_accuracy(model: CLIP, tokenizer: Tokenizer, dataset: ShapesDataset) -> float:
    """On one-object scenes: does the image pick its own place among nine captions that differ only in the place
    ("a small red square in the top left", "... in the top centre", ...)? Chance is 1/9."""
    scenes = dataset.scenes()
    rows = [i for i, scene in enumerate(scenes) if len(scene["objects"]) == 1]
    images = embed_images(model, dataset)[rows]  # (n, E)
    objects = [scenes[i]["objects"][0] for i in rows]
    texts = [caption_options([{**obj, "position": place}], dataset.cfg)[3]
             for obj in objects for place in range(len(POSITIONS))]
    options = embed_texts(model, tokenizer, texts).view(len(rows), len(POSITIONS), -1)  # (n, 9, E)
    picked = (options @ images[:, :, None])[..., 0].argmax(dim=1)  # (n,)
    return (picked == torch.tensor([obj["position"] for obj in objects])).float().mean().item()


BINDING_INDICES = 2**40  # binding scenes come from scene indices far above any training stream's


def can_bind(objects: list[dict]) -> bool:
    """Two objects in named colours whose traded colours make no held-out pair."""
    if len(objects) != 2 or min(o["colour"] for o in objects) < 0:
        return False
    a, b = objects
    return all((SHAPES[x["shape"]], COLOURS[y["colour"]]) not in HELDOUT for x, y in ((a, b), (b, a)))


def binding_pairs(model: CLIP, tokenizer: Tokenizer, shapes: ShapesConfig, n: int = 512, seed: int = 1000) -> float:
    """Two-object scenes from a stream no training run uses, each drawn as it is and with its two colours traded
    (a red square and a blue star; a blue square and a red star), both captioned by the same one of its objects
    ("a red square" / "a blue square"). How often does an image score its own caption above its traded copy's?
    Chance is 0.5; only which colour goes with which shape tells the two apart. (The package's former binding
    groups, ShapesConfig.binding_fraction at commit 5f4f5a7, drew such pairs for training.)"""
    images, captions, index = [], [], BINDING_INDICES
    while len(images) < n:
        scene, rng = make_scene(index, shapes, "train", seed)
        objects = scene["objects"]
        if can_bind(objects):
            named = int(np.random.default_rng([seed, index, 3]).integers(2))
            a, b = objects
            for drawn in (objects, [{**a, "colour": b["colour"]}, {**b, "colour": a["colour"]}]):
                images.append(to_tensor(draw_objects(drawn, shapes, copy.deepcopy(rng))))  # same paper and noise
                captions.append(with_article(object_name(drawn[named])))
        index += 1
    with torch.no_grad():
        img = torch.cat([model.encode_image(chunk) for chunk in torch.stack(images).split(128)])  # (n, E)
    similarity = img @ embed_texts(model, tokenizer, captions).T  # (n, n); items 2i, 2i + 1: as drawn, traded
    similarity = similarity.view(n // 2, 2, n // 2, 2)
    pairs = torch.arange(n // 2)
    own = similarity[pairs, :, pairs, :]  # (n/2, 2, 2): image a / b against caption a / b of the same pair
    right = (own[:, 0, 0] > own[:, 0, 1]).float() + (own[:, 1, 1] > own[:, 1, 0]).float()
    return (right.sum() / n).item()


def score_run(run_dir: str) -> None:
    """One row for a finished run: held-out and seen pairs as it was trained, and the variant generator's held-out
    pairs on its own backgrounds and on light ones."""
    model, tokenizer = load_run(run_dir)
    config = read_run_config(run_dir)
    shapes = config["shapes"]
    size, seed = shapes.image_size, config["train"].seed
    held_set, seen_set = (ShapesDataset(500, shapes, split, seed=seed) for split in ("heldout", "test"))
    held, seen = evaluate_shapes(model, tokenizer, held_set), evaluate_shapes(model, tokenizer, seen_set)
    row = {"held-out shape": held["shape_zero_shot"], "held-out colour": held["colour_zero_shot"],
           "held-out i2t R@1": held["i2t_recall@1"], "seen shape": seen["shape_zero_shot"],
           "seen colour": seen["colour_zero_shot"]}
    row.update(recall_breakdown(model, tokenizer, held_set))
    row["1-object: place of 9 (chance 0.11)"] = place_accuracy(model, tokenizer, held_set)
    row["  the same on seen pairs"] = place_accuracy(model, tokenizer, seen_set)
    row["2-object binding pairs (chance 0.5)"] = binding_pairs(model, tokenizer, shapes)
    for name, light in (("variant", False), ("variant, light backgrounds", True)):
        scores = variant_scores(model, tokenizer, variant_items(300, size, heldout_pairs(), seed=3, light=light))
        row.update({f"{name} shape": scores["variant_shape"], f"{name} colour": scores["variant_colour"]})
    for key, value in row.items():
        print(f"{key:38s} {value:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=["default", "naive"], default="default")
    parser.add_argument("--hard-fraction", type=float)
    parser.add_argument("--unnamed-fraction", type=float)
    parser.add_argument("--shape-first-steps", type=int, help="steps that contrast only the copies of one scene")
    parser.add_argument("--background", type=float, nargs=2, metavar=("LOW", "HIGH"), help="grey-level range")
    parser.add_argument("--dropout", type=float)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--score", metavar="RUN_DIR", help="score this finished run instead of training one")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.score:
        score_run(args.score)
        return
    recipe = recipe_for(args)
    vision, text, train, shapes = recipe["vision"], recipe["text"], recipe["train"], recipe["shapes"]
    captions = ShapesDataset(TOKENIZER_CAPTIONS, shapes, "train", seed=train.seed).captions
    tokenizer = Tokenizer.train(captions, text.vocab_size)
    text = dataclasses.replace(text, vocab_size=tokenizer.vocab_size)
    torch.manual_seed(train.seed)
    model = CLIP(vision, text, train.init_temperature)
    stream = HardNegativeBatches(shapes, recipe["batches"], train.batch_size, seed=train.seed)

    done = [0]  # steps taken so far, for the evaluation rows

    def batches(step: int):
        done[0] = step + 1
        images, captions, indices = stream(step)
        tokens = tokenizer.encode_batch(captions, text.context_length)
        keep = negatives_mask(recipe["batches"], stream, step, indices)  # as `python -m tinyvit train` does
        return (images, tokens) if keep is None else (images, tokens, keep)

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
