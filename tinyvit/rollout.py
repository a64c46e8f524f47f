"""Attention rollout (Abnar & Zuidema, 2020): where does a token's final state come from among the input tokens?

One layer's attention says how each token mixes the *previous* layer's tokens, but a block also adds its input
back (the residual), so the layer's full mixing is roughly 0.5 * attention + 0.5 * identity. Multiplying these
mixings through the layers, first layer rightmost, tracks the input tokens all the way to the output.

Shapes: B batch, h heads, N = P + 1 tokens (CLS first), P patches on a gh x gw grid.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

HEAD_FUSIONS = ("mean", "max", "min")


def _check_attentions(attentions: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(attentions, torch.Tensor) or not isinstance(attentions, Sequence) or not attentions:
        got = repr(attentions)
        if isinstance(attentions, torch.Tensor):
            got = f"a tensor of shape {tuple(attentions.shape)}"
        raise ValueError(f"expected a non-empty list of per-layer attention weights (B, h, N, N), got {got}")
    first = attentions[0]
    same = all(isinstance(a, torch.Tensor) and a.ndim == 4 and a.shape == first.shape for a in attentions)
    if not same or first.shape[-1] != first.shape[-2]:
        shapes = [tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__ for a in attentions]
        raise ValueError(f"expected every layer's attention as (B, h, N, N), one shape for all layers; got {shapes}")
    return list(attentions)


def attention_rollout(attentions: Sequence[torch.Tensor], head_fusion: str = "mean",
                      residual: bool = True) -> torch.Tensor:
    """Roll the attention of every layer into one token-to-input-token matrix. depth x (B, h, N, N) -> (B, N, N).

    Per layer: fuse the heads (mean, max or min), add the identity for the residual when `residual`, renormalise
    each row to sum to 1; then multiply the layers, the last one leftmost. Row i of the result is a distribution
    over the input tokens: how much of token i's final state each of them contributed."""
    attentions = _check_attentions(attentions)
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
    B, _, N, _ = attentions[0].shape
    eye = torch.eye(N, dtype=torch.float32, device=attentions[0].device)  # (N, N)
    rolled = eye.expand(B, N, N)  # (B, N, N): before any layer, each token is only itself
    for weights in attentions:
        weights = weights.detach().float()
        if head_fusion == "mean":
            mixing = weights.mean(dim=1)  # (B, N, N)
        else:
            mixing = weights.amax(dim=1) if head_fusion == "max" else weights.amin(dim=1)  # (B, N, N)
        if residual:
            mixing = mixing + eye  # x + attn(x): the input passes through unchanged beside the attention
        # Rows sum to 1 again (a row min-fusion left all zero, possible only without the residual, stays zero).
        mixing = mixing / mixing.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(mixing.dtype).tiny)
        rolled = mixing @ rolled  # (B, N, N): this layer mixes what the layers below produced
    return rolled


def cls_rollout_map(attentions: Sequence[torch.Tensor], grid: tuple[int, int] | None = None,
                    head_fusion: str = "mean", residual: bool = True) -> torch.Tensor:
    """The CLS token's rollout over the patches, as a picture: depth x (B, h, N, N) -> (B, gh, gw).

    The CLS row of `attention_rollout` without its CLS column, renormalised so that each map sums to 1 (a
    distribution over the patches). `grid` is (gh, gw); by default the P = N - 1 patches form a square."""
    rolled = attention_rollout(attentions, head_fusion, residual)  # (B, N, N)
    P = rolled.shape[-1] - 1
    if grid is None:
        side = math.isqrt(P)
        if side * side != P:
            raise ValueError(f"{P} patches do not form a square grid; pass grid=(gh, gw)")
        grid = (side, side)
    if len(grid) != 2 or grid[0] * grid[1] != P:
        raise ValueError(f"grid {tuple(grid)} does not hold the {P} patches of {P + 1} tokens (CLS + patches)")
    on_patches = rolled[:, 0, 1:]  # (B, P): CLS's final state, traced back to the input patches
    on_patches = on_patches / on_patches.sum(dim=-1, keepdim=True)
    return on_patches.reshape(-1, grid[0], grid[1])  # (B, gh, gw)


def object_patch_mask(objects: Sequence[Mapping[str, Any]], image_size: int, patch_size: int) -> torch.Tensor:
    """Which patches an item's objects touch: those that overlap an object's bounding square (side `size`, centred
    on `centre`, both fractions of the image side, as `data.make_item` records them). -> (gh, gw) bool."""
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    if not objects:
        raise ValueError("expected at least one object (dicts with 'centre' and 'size'), got none")
    g = image_size // patch_size
    edges = torch.arange(g + 1, dtype=torch.float64) * patch_size / image_size  # patch edges as fractions
    mask = torch.zeros(g, g, dtype=torch.bool)
    for obj in objects:
        if "centre" not in obj or "size" not in obj:
            raise ValueError(f"each object needs 'centre' (x, y) and 'size', got keys {sorted(obj)}")
        (x, y), half = obj["centre"], obj["size"] / 2
        cols = (edges[1:] > x - half) & (edges[:-1] < x + half)  # (g,): patch columns the square spans
        rows = (edges[1:] > y - half) & (edges[:-1] < y + half)  # (g,)
        mask |= rows[:, None] & cols[None, :]  # (g, g)
    return mask
