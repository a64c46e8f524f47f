"""How strong is the shape signal? The same ViT, the same stream of hard-negative groups, three losses.

Every batch holds 16 groups of 4 copies of one scene that differ only in the main object's shape (and so only in
the caption's shape word). Each row prints, over the last 50 steps, how often an image picks the right item among
the 4 of its group: the image's shape, read off by the loss's own scores. Chance is 0.25.

    --loss sup      cross-entropy on the main shape: a linear head on the 256-d image embedding
    --loss clip     symmetric InfoNCE over the batch; --negatives shared (pairs sharing shape or colour), all, or
                    group (only the 4 copies of one scene: a pure shape contrast, no colour signal at all)

benchmarks/README.md has the measurements (800 steps, light backgrounds): the supervised loss climbs highest,
group-only InfoNCE next, InfoNCE over shared-attribute negatives stays near chance, even with the text encoder
frozen or the temperature at 0.01. That is why the default recipe starts with a group-only phase.

    python benchmarks/shape_signal.py --loss sup
    python benchmarks/shape_signal.py --loss clip --negatives group
    python benchmarks/shape_signal.py --loss clip --background 0.3 0.7    # the default mid-grey backgrounds
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from tinyvit.config import ViTConfig, seed_everything
from tinyvit.contrastive import CLIP, clip_loss, shared_attribute_mask
from tinyvit.data import BatchConfig, HardNegativeBatches, ShapesConfig, ShapesDataset
from tinyvit.recipes import TOKENIZER_CAPTIONS, default_recipe
from tinyvit.text import Tokenizer

GROUP, GROUPS = 4, 16  # a batch of 64 = 16 groups of 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loss", choices=("sup", "clip"), default="clip")
    parser.add_argument("--negatives", choices=("shared", "all", "group"), default="shared")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--text-lr-scale", type=float, default=1.0, help="0 freezes the text encoder")
    parser.add_argument("--temperature", type=float, default=0.07)
    parser.add_argument("--background", type=float, nargs=2, default=(0.75, 0.95), metavar=("LOW", "HIGH"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seed_everything(0)

    shapes = ShapesConfig(unnamed_fraction=0.3, background=tuple(args.background))
    text_cfg = default_recipe()["text"]
    tokenizer = Tokenizer.train(ShapesDataset(TOKENIZER_CAPTIONS, shapes, "train").captions, text_cfg.vocab_size)
    text_cfg = dataclasses.replace(text_cfg, vocab_size=tokenizer.vocab_size)
    model = CLIP(ViTConfig(image_size=64, patch_size=8, dropout=0.0), text_cfg, args.temperature)
    head = nn.Linear(text_cfg.out_dim, 5)
    base_lrs = (args.lr, args.lr * args.text_lr_scale, args.lr)
    opt = torch.optim.AdamW([{"params": model.visual.parameters()},
                             {"params": [*model.text.parameters(), model.logit_scale]},
                             {"params": head.parameters()}], lr=args.lr, weight_decay=0.05)
    batches = HardNegativeBatches(shapes, BatchConfig(hard_fraction=1.0, group_size=GROUP), GROUP * GROUPS, seed=0)
    within_group = torch.block_diag(*[torch.ones(GROUP, GROUP, dtype=torch.bool)] * GROUPS)  # (64, 64)
    hits: list[float] = []
    start = time.perf_counter()
    print(f"loss={args.loss} negatives={args.negatives} background={tuple(args.background)} "
          f"text_lr_scale={args.text_lr_scale} temperature={args.temperature}")
    for step in range(args.steps):
        for group, lr in zip(opt.param_groups, base_lrs):
            group["lr"] = lr * min(1.0, (step + 1) / 100)  # linear warm-up, then constant
        images, captions, _ = batches(step)
        attributes = batches.attributes(step)  # (64, 2): main shape, main colour
        if args.loss == "sup":
            scores = head(model.visual(images))  # (64, 5)
            loss = F.cross_entropy(scores, attributes[:, 0])
            hit = (scores.argmax(1) == attributes[:, 0]).float().mean()
        else:
            logits = model(images, tokenizer.encode_batch(captions, text_cfg.context_length))  # (64, 64)
            keep = {"all": None, "shared": shared_attribute_mask(attributes), "group": within_group}[args.negatives]
            loss = clip_loss(logits, keep)
            blocks = logits.detach().view(GROUPS, GROUP, GROUPS, GROUP)[torch.arange(GROUPS), :, torch.arange(GROUPS)]
            hit = (blocks.argmax(-1) == torch.arange(GROUP)).float().mean()  # (16, 4, 4): each image vs its group
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        hits.append(hit.item())
        if (step + 1) % 50 == 0:
            print(f"step {step + 1:5d}  loss {loss.item():.3f}  shape within group {sum(hits[-50:]) / 50:.2f}  "
                  f"{time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
