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


@grader
def check_unpatchify(fn: Callable) -> Verdict:
    """Grade `fn(patches, patch_size, height, width)`: (B, P, C*p*p) -> (B, C, H, W), the inverse of patchify."""
    generator = torch.Generator().manual_seed(0)
    for (B, C, H, W), p in (((2, 3, 8, 8), 4), ((1, 3, 12, 8), 4), ((2, 2, 6, 9), 3)):
        expected = torch.rand(B, C, H, W, generator=generator)
        flat = patches.patchify(expected, p)  # (B, P, C*p*p)
        got = call(fn, flat.clone(), p, H, W, forbidden={"tinyvit.unpatchify": patches.unpatchify})
        if not isinstance(got, torch.Tensor):
            return fail(got)
        if tuple(got.shape) != (B, C, H, W):
            if tuple(got.shape) == (B, H, W, C):
                return fail(f"expected shape {(B, C, H, W)} (B, C, H, W), got {tuple(got.shape)}: the channel "
                            "axis belongs right after the batch axis, as PyTorch stores images")
            return fail(f"for patches of shape {tuple(flat.shape)}, patch size {p} and a {H} x {W} image "
                         f"expected shape {(B, C, H, W)}, got {tuple(got.shape)}")
        if close(got, expected):
            continue
        gh, gw = H // p, W // p
        if close(got, flat.reshape(B, C, H, W)):
            return fail("one reshape alone puts numbers in the wrong places: a patch's numbers sit together in "
                        "memory, an image row's do not; split the axes, permute, then reshape",
                        hint="reshape to (B, H/p, W/p, C, p, p) first, then bring C to the front and pair each "
                             "grid axis with its within-patch axis")
        if gh == gw and close(patches.patchify(got, p), _transpose_grid(flat, gh, gw)):
            return fail("the patches are placed column by column: patch 1 belongs to the right of patch 0, "
                        "not below it", hint="the grid-row axis (H/p) must come before the grid-column axis")
        channels_last = flat.reshape(B, gh, gw, p, p, C).permute(0, 5, 1, 3, 2, 4)  # (B, C, gh, p, gw, p)
        if close(got, channels_last.reshape(B, C, H, W)):
            return fail("each patch is read as (p, p, C), channels last; patchify flattened it channel-first, "
                        "(C, p, p)", hint="split the last axis as (C, p, p), in that order")
        swapped = flat.reshape(B, gw, gh, C, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, gw, p, gh, p)
        if gh != gw and close(got, swapped.reshape(B, C, H, W)):
            return fail(f"for a {H} x {W} image the grid has H/p = {gh} rows of W/p = {gw} patches; "
                        "your function swaps the two")
        return fail(f"the shape is right but the values differ (a {C} x {H} x {W} image, patch size {p}): "
                    "unpatchify(patchify(x)) should give x back exactly")
    return passed("correct: every patch back in its place, unpatchify(patchify(x)) == x")


def _transpose_grid(flat: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """Patches renumbered column by column: (B, P, K) -> (B, P, K)."""
    B, P, K = flat.shape
    return flat.reshape(B, gh, gw, K).transpose(1, 2).reshape(B, P, K)
