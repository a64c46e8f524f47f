"""Graders for notebook 1: cutting images into patches."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .. import patches
from .core import Verdict, call, close, fail, grader, passed

FORBIDDEN = {"tinyvit.patchify": patches.patchify, "tinyvit.PatchEmbed": patches.PatchEmbed}


@grader
def check_patchify(fn: Callable) -> Verdict:
    """Grade `fn(images, patch_size)`: (B, C, H, W) -> (B, P, C*p*p), patches row-major, flattened channel-first."""
    generator = torch.Generator().manual_seed(0)
    for shape, p in (((2, 3, 8, 8), 4), ((1, 3, 12, 8), 4), ((2, 1, 6, 9), 3)):
        images = torch.rand(shape, generator=generator)
        B, C, H, W = shape
        expected = patches.patchify(images, p)  # (B, P, C*p*p)
        got = call(fn, images.clone(), p, forbidden=FORBIDDEN)
        if not isinstance(got, torch.Tensor):
            return fail(got)
        if tuple(got.shape) != tuple(expected.shape):
            return fail(f"for images of shape {shape} and patch size {p} expected shape {tuple(expected.shape)} "
                         f"(B, P, C*p*p), got {tuple(got.shape)}")
        if close(got, expected):
            continue
        grid = images.reshape(B, C, H // p, p, W // p, p)  # (B, C, gh, p, gw, p)
        column_major = grid.permute(0, 4, 2, 1, 3, 5).reshape(B, -1, C * p * p)  # (B, P, C*p*p)
        channels_last = grid.permute(0, 2, 4, 3, 5, 1).reshape(B, -1, C * p * p)  # (B, P, p*p*C)
        if close(got, column_major):
            return fail("the patches come out column by column (a transposed grid): number them row by row, "
                        "left to right along the top row first",
                        hint="after reshaping to (B, C, H/p, p, W/p, p), the grid-row axis must come before the "
                             "grid-column axis in your permute")
        if close(got, channels_last) and C > 1:
            return fail("each patch is flattened channels-last (p, p, C); flatten it channels-first (C, p, p), "
                        "the order a Conv2d kernel reads",
                        hint="in your permute, put the channel axis C just before the two within-patch axes")
        if close(got.sort(dim=-1).values, expected.sort(dim=-1).values):
            return fail("each output row holds the right pixels in a scrambled order: check which axes you "
                         "permute before the last reshape")
        return fail(f"the shape is right but the values differ (images {shape}, patch size {p}): "
                     "patch 0 should be the top-left p x p block of every channel")
    return passed("correct: patches in row-major order, each flattened channel-first")
