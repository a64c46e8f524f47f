"""CLIP training-step throughput: tinyvit's CLIP against a peer whose vision tower is nn.TransformerEncoderLayer.

Both models have the same size, the same text encoder (tinyvit.text.TextEncoder), the same loss and the same
AdamW; a step is forward, backward and optimiser update on one batch. The peer's layers are built as the source
system builds them: TransformerEncoderLayer(norm_first=True, activation="gelu", batch_first=True, dropout=0.1),
and that dropout also drops attention probabilities, which takes PyTorch off its fused attention kernel in
training. tinyvit keeps dropout 0.1 on the residual branches but none on attention (timm's default too); the
third row, tinyvit with attention dropout 0.1, shows how much of the gap that choice is; the fourth, without any
dropout, shows what the random masks cost (on the CPU, drawing them is a fifth of a step).
The models are timed round by round, interleaved (this machine's speed drifts over tens of seconds), and the
median per-round ratio is printed. Target: peer / tinyvit >= 1.5.

    python benchmarks/clip_speed.py [--rounds 5] [--steps 3] [--batch 64] [--image-size 64] [--patch-size 8]
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

from tinyvit.config import TextConfig, ViTConfig
from tinyvit.contrastive import CLIP, clip_batch_loss, clip_logits, default_recipe
from tinyvit.text import TextEncoder

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


def trainer(model: nn.Module, batch):
    """One training step as a closure: forward, symmetric InfoNCE, backward, AdamW."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step():
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    recipe = default_recipe()  # tinyvit's CLIP as `python -m tinyvit train` builds it
    vision = dataclasses.replace(recipe["vision"], image_size=args.image_size, patch_size=args.patch_size)
    text = recipe["text"]
    images = torch.randn(args.batch, 3, args.image_size, args.image_size)
    tokens = torch.randint(4, text.vocab_size, (args.batch, text.context_length))
    models = {"tinyvit": CLIP(vision, text), "peer (TransformerEncoderLayer)": PeerCLIP(vision, text),
              "tinyvit, attention dropout 0.1": CLIP(dataclasses.replace(vision, attn_dropout=0.1), text),
              "tinyvit, no dropout at all": CLIP(dataclasses.replace(vision, dropout=0.0), text)}
    sizes = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    assert len(set(sizes.values())) == 1, f"the models differ in size: {sizes}"
    steps = {name: trainer(model, (images, tokens)) for name, model in models.items()}
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
          f"{args.threads} threads, {args.rounds} rounds x {args.steps} steps")
    peer = "peer (TransformerEncoderLayer)"
    for name, t in times.items():
        ratio = statistics.median(p / o for p, o in zip(times[peer], t))
        print(f"  {name:32s} median {statistics.median(t) * 1000:7.1f} ms/step   peer / this: {ratio:.2f}x")
    ratio = statistics.median(p / o for p, o in zip(times[peer], times["tinyvit"]))
    print(f"speed-up of tinyvit over the peer (median per-round ratio): {ratio:.2f}x (target >= 1.5)")


if __name__ == "__main__":
    main()
