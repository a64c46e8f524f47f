"""One run of the issue-4 recipe sweep: CLIP on the shapes data with settings over the default recipe, scored every
EVERY steps on held-out and seen colour-shape pairs. The 32 runs in benchmarks/README.md ("Sweeps") were made with
it, 16 at a time on a borrowed GPU (fp32, batch 64, one CPU thread each for the data), from recipe_sweep.tsv; their
logs, concatenated, are recipe_sweep_logs.jsonl. This script's first draft wrote them; it differed in three
details: its header line says "over" where this one says "settings", it did not round the scores, and its weight
decay also shrank the CLS token and the token table (here: train.param_groups, as `fit` does):

    while IFS=$'\\t' read -r name json; do
        python benchmarks/recipe_sweep.py "$name" "$json" --steps 3000 --every 500 --out logs &
    done < benchmarks/recipe_sweep.tsv; wait

JSON holds sections over the recipe the sweep started from, the old default (clip_shapes.naive_recipe(): mid-grey
backgrounds, plain batches, dropout 0.1, warm-up 50; {"vision": {...}, "text": {...}, "train": {...}, "shapes": {...}})
and these sweep-only keys:
    "pos": "sincos"          learned positions that start from 2-D sine-cosine values instead of noise
    "curriculum": [f, lo, hi] shapes lo..hi of the side for the first fraction f of the steps
    "negatives": "group"     contrast only the copies of one scene (needs hard_fraction 1): shape alone
Each evaluation appends one JSON line to OUT/NAME.log: step, loss, held-out shape (hs) / colour (hc) zero-shot
accuracy, held-out image->text recall@1 (r1) over 500 captions, seen-pair shape (ss) / colour (sc), seconds.
On this 2-core CPU one run of 3000 steps takes about 15-25 minutes; pass --device cpu --threads 2.
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
from clip_shapes import naive_recipe  # noqa: E402

from tinyvit.contrastive import CLIP, clip_loss, shared_attribute_mask  # noqa: E402
from tinyvit.data import HardNegativeBatches, ShapesDataset  # noqa: E402
from tinyvit.evaluate import evaluate_shapes  # noqa: E402
from tinyvit.model import sincos_positions  # noqa: E402
from tinyvit.text import Tokenizer  # noqa: E402
from tinyvit.train import lr_at, param_groups  # noqa: E402

SWEEP_KEYS = ("pos", "curriculum", "negatives")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name")
    parser.add_argument("json", help="settings over the default recipe, plus the sweep-only keys")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--out", default="sweep_logs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    settings = json.loads(args.json)
    extra = {key: settings.pop(key) for key in SWEEP_KEYS if key in settings}
    recipe = naive_recipe()
    for section, values in settings.items():
        recipe[section] = dataclasses.replace(recipe[section], **values)
    recipe["train"] = dataclasses.replace(recipe["train"], steps=args.steps)
    recipe["shapes"] = dataclasses.replace(recipe["shapes"], image_size=recipe["vision"].image_size)
    vision, text, train, shapes = recipe["vision"], recipe["text"], recipe["train"], recipe["shapes"]

    torch.manual_seed(train.seed)
    tokenizer = Tokenizer.train(ShapesDataset(4000, shapes, "train", seed=train.seed).captions, text.vocab_size)
    text = dataclasses.replace(text, vocab_size=tokenizer.vocab_size)
    model = CLIP(vision, text, train.init_temperature)
    if extra.get("pos") == "sincos":
        with torch.no_grad():
            model.visual.pos_embed[0, 1:] = sincos_positions(vision.grid_size, vision.dim)
    model.to(device).train()
    opt = torch.optim.AdamW(param_groups(model, train.weight_decay), lr=train.lr)
    curriculum = extra.get("curriculum")  # [fraction of the steps, min size, max size]
    early = HardNegativeBatches(dataclasses.replace(shapes, min_size=curriculum[1], max_size=curriculum[2]),
                                train.batch_size, train.seed) if curriculum else None
    stream = HardNegativeBatches(shapes, train.batch_size, train.seed)
    groups = torch.block_diag(*[torch.ones(shapes.group_size, shapes.group_size, dtype=torch.bool)]
                              * (train.batch_size // shapes.group_size)).to(device)
    heldout = ShapesDataset(500, shapes, "heldout", seed=train.seed + 7)
    seen = ShapesDataset(500, shapes, "test", seed=train.seed + 7)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = (out / f"{args.name}.log").open("w")
    print(json.dumps({"name": args.name, "settings": args.json}), file=log, flush=True)
    start = time.perf_counter()
    for step in range(train.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, train)
        batches = early if curriculum and step < curriculum[0] * train.steps else stream
        images, captions, _ = batches(step)
        tokens = tokenizer.encode_batch(captions, text.context_length)
        keep = None
        if extra.get("negatives") == "group":
            keep = groups
        elif shapes.shared_attribute_negatives:
            keep = shared_attribute_mask(batches.attributes(step)).to(device)
        loss = clip_loss(model(images.to(device), tokens.to(device)), keep)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        opt.step()
        model.clamp_logit_scale()
        if (step + 1) % args.every == 0 or step + 1 == train.steps:
            model.eval()
            with torch.no_grad():
                h, s = evaluate_shapes(model, tokenizer, heldout), evaluate_shapes(model, tokenizer, seen)
            model.train()
            row = {"step": step + 1, "loss": round(loss.item(), 3), "hs": round(h["shape_zero_shot"], 3),
                   "hc": round(h["colour_zero_shot"], 3), "r1": round(h["i2t_recall@1"], 3),
                   "ss": round(s["shape_zero_shot"], 3), "sc": round(s["colour_zero_shot"], 3),
                   "t": round(time.perf_counter() - start)}
            print(json.dumps(row), file=log, flush=True)


if __name__ == "__main__":
    main()
