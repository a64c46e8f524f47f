"""CPU inference in slices (`VisionTransformer.slice_tokens`) against the whole batch at once, in a process that
does inference only, as `python -m tinyvit eval` and `embed` do.

For each setting the two are timed in alternate rounds (the CPU's speed drifts), on the same images, and the
median per-round ratio is printed with the largest difference between their outputs.

    python benchmarks/inference_slices.py [--rounds 6] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from tinyvit import ViTConfig, VisionEncoder

sys.path.insert(0, str(Path(__file__).parent))
from encoder_speed import time_call  # noqa: E402  best of n timed calls

SETTINGS = [("224x224, patch 16, batch 128 (the chapter's encoder)", ViTConfig(), 128),
            ("64x64, patch 8, batch 256 (the shapes recipe; evaluate's batch)",
             ViTConfig(image_size=64, patch_size=8), 256)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for name, cfg, batch in SETTINGS:
        model = VisionEncoder(cfg).eval()
        images = torch.randn(batch, 3, cfg.image_size, cfg.image_size)
        sliced_tokens = model.slice_tokens

        def run(slice_tokens):
            model.slice_tokens = slice_tokens
            with torch.inference_mode():
                return model.forward_features(images)

        gap = (run(sliced_tokens) - run(None)).abs().max().item()  # also the warm-up
        ratios, rates = [], []
        for r in range(args.rounds):
            order = (None, sliced_tokens) if r % 2 == 0 else (sliced_tokens, None)
            seconds = {s: time_call(lambda s=s: run(s), 2) for s in order}
            ratios.append(seconds[None] / seconds[sliced_tokens])
            rates.append((batch / seconds[None], batch / seconds[sliced_tokens]))
        whole, sliced = (statistics.median(r[k] for r in rates) for k in (0, 1))
        print(f"{name}: whole {whole:6.0f} images/s, in slices of {sliced_tokens} tokens {sliced:6.0f} images/s, "
              f"ratio {statistics.median(ratios):.2f}x; largest output difference {gap:.1e}")


if __name__ == "__main__":
    main()
