"""CLIP training-step throughput: tinyvit's CLIP against a peer whose vision tower is nn.TransformerEncoderLayer.

Both models have the same size, the same text encoder (tinyvit.text.TextEncoder), the same loss and the same
AdamW (`fit`'s); a step is forward, backward and optimiser update on one batch. The peer's layers are built as the
source system builds them: TransformerEncoderLayer(norm_first=True, activation="gelu", batch_first=True).
Two settings, each model in both:
- the default recipe's, dropout 0 (like for like: the gap is tinyvit's CLS-only last block, and the
  `tinyvit.cpu_speed` components in use);
- the chapter's dropout 0.1. The peer's TransformerEncoderLayer then also drops attention probabilities, which
  takes PyTorch off its fused attention kernel; tinyvit drops only on the residual branches (timm's default too).
A fifth row times tinyvit under bfloat16 autocast (`--precision bf16`), against tinyvit in fp32: it says what the
option buys on the CPU at hand, not how the designs compare.
tinyvit's models run with the `tinyvit.cpu_speed` components of `--components` (default: `recommended()`, the set
measured faster on the CPU kind at hand; `none` for plain PyTorch). The models are timed round by round, interleaved (a
small CPU's speed can drift over tens of seconds), and the median per-round ratio is printed. Target: peer / tinyvit
>= 1.5 at the recipe's setting.

    python benchmarks/clip_speed.py [--rounds 5] [--steps 3] [--batch 64] [--image-size 64] [--patch-size 8]
                                    [--components recommended|none|onednn,slices,...]
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tinyvit import CLIP, TextConfig, TextEncoder, TrainConfig, ViTConfig, clip_logits, cpu_speed, default_recipe
from tinyvit.contrastive import clip_batch_loss
from tinyvit.train import make_optimizer

sys.path.insert(0, str(Path(__file__).parent))
from encoder_speed import PeerEncoder as PeerVision  # noqa: E402  the same ViT from nn.TransformerEncoderLayer


class PeerCLIP(nn.Module):
    """PeerVision + tinyvit's TextEncoder + a learnable temperature. (B, C, H, W), (B, T) -> (B, B)."""

    def __init__(self, vision_cfg: ViTConfig, text_cfg: TextConfig):
        super().__init__()
        self.visual, self.text = PeerVision(vision_cfg), TextEncoder(text_cfg)
        self.logit_scale = nn.Parameter(torch.tensor(1 / 0.07).log())

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        img = F.normalize(self.visual(images), dim=-1)
        return clip_logits(img, F.normalize(self.text(tokens), dim=-1), self.logit_scale)


def trainer(model: nn.Module, batch, dtype: torch.dtype | None = None):
    """One training step as a closure: forward (under CPU autocast to `dtype`, if given), symmetric InfoNCE,
    backward, AdamW."""
    optimizer = make_optimizer(model, TrainConfig(lr=1e-4), torch.device("cpu"))  # `fit`'s AdamW
    model.train()

    def step():
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = clip_batch_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="training steps per model per round")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=default_recipe()["vision"].image_size)
    parser.add_argument("--patch-size", type=int, default=default_recipe()["vision"].patch_size)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--components", default="recommended",
                        help="tinyvit.cpu_speed components for tinyvit's models: 'recommended', 'none' or a list")
    args = parser.parse_args()
    components = {"recommended": cpu_speed.recommended(), "none": ()}.get(args.components,
                                                                          tuple(args.components.split(",")))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    recipe = default_recipe()  # tinyvit's CLIP as `python -m tinyvit train` builds it
    vision = dataclasses.replace(recipe["vision"], image_size=args.image_size, patch_size=args.patch_size)
    text = recipe["text"]
    images = torch.randn(args.batch, 3, args.image_size, args.image_size)
    tokens = torch.randint(4, text.vocab_size, (args.batch, text.context_length))
    chapter = dataclasses.replace(vision, dropout=0.1)
    models = {"tinyvit": CLIP(vision, text), "peer (TransformerEncoderLayer)": PeerCLIP(vision, text),
              "tinyvit, dropout 0.1": CLIP(chapter, text), "peer, dropout 0.1": PeerCLIP(chapter, text),
              "tinyvit, --precision bf16": CLIP(vision, text)}
    for name, model in models.items():
        if name.startswith("tinyvit"):
            cpu_speed.enable(model, components)
    sizes = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    assert len(set(sizes.values())) == 1, f"the models differ in size: {sizes}"
    steps = {name: trainer(model, (images, tokens), torch.bfloat16 if "bf16" in name else None)
             for name, model in models.items()}
    for step in steps.values():
        step()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in models}
    for r in range(args.rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))
        for name in order:
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[name]()
            times[name].append((time.perf_counter() - start) / args.steps)
    print(f"CLIP training step, batch {args.batch}, {args.image_size}x{args.image_size} images, patch "
          f"{args.patch_size}, {vision.num_tokens} tokens, {sizes['tinyvit'] / 1e6:.2f} M parameters, "
          f"{args.threads} threads, {args.rounds} rounds x {args.steps} steps; tinyvit's cpu_speed components: "
          f"{', '.join(components) or 'none'}")
    for name, t in times.items():
        print(f"  {name:32s} median {statistics.median(t) * 1000:7.1f} ms/step")

    def speedup(ours: str, theirs: str) -> float:
        return statistics.median(p / o for p, o in zip(times[theirs], times[ours]))

    print(f"speed-up of tinyvit over the peer (median per-round ratio), recipe's dropout {vision.dropout}: "
          f"{speedup('tinyvit', 'peer (TransformerEncoderLayer)'):.2f}x (target >= 1.5)")
    print(f"                                             with the chapter's dropout 0.1: "
          f"{speedup('tinyvit, dropout 0.1', 'peer, dropout 0.1'):.2f}x")
    print(f"tinyvit with bfloat16 autocast over tinyvit in fp32 (not like for like with the peer): "
          f"{speedup('tinyvit, --precision bf16', 'tinyvit'):.2f}x")


if __name__ == "__main__":
    main()
