"""Position embeddings beside the learned ones: the fixed 2-D sine-cosine table, and resampling a learned table to
another patch grid (for images of another size)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sincos_positions(grid: int, dim: int) -> torch.Tensor:
    """The fixed 2-D sine-cosine position table (MAE's): half of the dim numbers encode the patch's row, half its
    column, each as the sine and cosine of dim/4 frequencies 1 / 10000^(k / (dim/4)). -> (grid*grid, dim),
    patches in row-major order. tinyvit learns its positions; this is the table to compare them with (notebook 2),
    or to start them from (`ViTConfig(pos_init="sincos")`)."""
    if dim % 4:
        raise ValueError(f"the sine-cosine table needs dim divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")  # (grid, grid) each
    freqs = 1.0 / 10000 ** (torch.arange(dim // 4) / (dim // 4))  # (dim/4,)

    def encode(coord: torch.Tensor) -> torch.Tensor:
        angles = coord.flatten()[:, None] * freqs  # (grid*grid, dim/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (grid*grid, dim/2)

    return torch.cat([encode(rows), encode(cols)], dim=1)  # (grid*grid, dim)


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int]) -> torch.Tensor:
    """Resize the patch positions bicubically to another grid, the CLS position kept apart.

    (1, 1 + g*g, D) -> (1, 1 + gh*gw, D). Resampling to the same grid returns the input unchanged.
    """
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    _, P, D = patch_pos.shape
    g = math.isqrt(P)
    if g * g != P:
        raise ValueError(f"position embeddings for {P} patches do not form a square grid")
    if (g, g) == tuple(new_grid):
        return pos_embed
    grid = patch_pos.reshape(1, g, g, D).permute(0, 3, 1, 2)  # (1, D, g, g)
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False)  # (1, D, gh, gw)
    patch_pos = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], D)  # (1, gh*gw, D)
    return torch.cat([cls_pos, patch_pos], dim=1)  # (1, 1 + gh*gw, D)
