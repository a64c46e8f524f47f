"""Steps 1-3 of the chapter: an image becomes a grid of patches, each patch a 128-d token.

A patch is flattened channel-first, (C, p, p) -> C*p*p, which is exactly how a `Conv2d` kernel of size p
and stride p reads it; that is why the convolution and "patchify, then Linear" are the same map.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import ViTConfig


def check_images(images: torch.Tensor, in_channels: int, patch_size: int) -> None:
    """Raise a ValueError naming expected vs received for anything that is not (B, C, H, W) float images."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"expected images as a torch.Tensor of shape (B, C, H, W), got {type(images).__name__}")
    if not images.is_floating_point():
        raise ValueError(
            f"expected a float tensor (e.g. pixels scaled to [0, 1] and normalised), got dtype {images.dtype}; "
            "convert with images.float() / 255"
        )
    if images.ndim != 4:
        hint = " (add a batch dimension with images.unsqueeze(0))" if images.ndim == 3 else ""
        raise ValueError(f"expected images of shape (B, C, H, W), got shape {tuple(images.shape)}{hint}")
    _, C, H, W = images.shape
    if C != in_channels:
        raise ValueError(f"expected {in_channels} channels, got {C} (shape {tuple(images.shape)})")
    if H % patch_size or W % patch_size:
        raise ValueError(
            f"image size {H}x{W} is not divisible by patch size {patch_size}; "
            f"resize to a multiple of {patch_size} (e.g. {H // patch_size * patch_size or patch_size})"
        )


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into flat patches in row-major order. (B, C, H, W) -> (B, P, C*p*p)."""
    B, C, H, W = images.shape
    p = patch_size
    if H % p or W % p:
        raise ValueError(f"image size {H}x{W} is not divisible by patch size {p}")
    x = images.reshape(B, C, H // p, p, W // p, p)  # (B, C, gh, p, gw, p)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, C, p, p)
    return x.reshape(B, (H // p) * (W // p), C * p * p)  # (B, P, C*p*p)


def unpatchify(patches: torch.Tensor, patch_size: int, image_size: int | tuple[int, int],
              channels: int = 3) -> torch.Tensor:
    """Put flat patches back together; the inverse of `patchify`. (B, P, C*p*p) -> (B, C, H, W)."""
    H, W = (image_size, image_size) if isinstance(image_size, int) else image_size
    p = patch_size
    B, P, K = patches.shape
    if H % p or W % p:
        raise ValueError(f"image size {H}x{W} is not divisible by patch size {p}")
    if P != (H // p) * (W // p) or K != channels * p * p:
        raise ValueError(
            f"expected {(H // p) * (W // p)} patches of {channels * p * p} numbers for a {channels}x{H}x{W} image, "
            f"got {P} patches of {K}"
        )
    x = patches.reshape(B, H // p, W // p, channels, p, p)  # (B, gh, gw, C, p, p)
    x = x.permute(0, 3, 1, 4, 2, 5)  # (B, C, gh, p, gw, p)
    return x.reshape(B, channels, H, W)  # (B, C, H, W)


class PatchEmbed(nn.Module):
    """Flatten each p x p patch and map it linearly to D numbers. (B, C, H, W) -> (B, P, D).

    `kind="conv"` (default, as in timm) stores a Conv2d with kernel = stride = p; `kind="linear"` stores a Linear
    on `patchify`'s output. The same weights give the same tokens (`weight.flatten(1)` is the Linear's weight).
    """

    def __init__(self, cfg: ViTConfig, kind: str = "conv"):
        super().__init__()
        if kind not in ("conv", "linear"):
            raise ValueError(f"PatchEmbed kind must be 'conv' or 'linear', got {kind!r}")
        self.kind = kind
        self.patch_size = cfg.patch_size
        self.in_channels = cfg.in_channels
        if kind == "conv":
            self.proj = nn.Conv2d(cfg.in_channels, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        else:
            self.proj = nn.Linear(cfg.patch_dim, cfg.dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, self.in_channels, self.patch_size)
        if self.kind == "conv":
            x = self.proj(images)  # (B, D, gh, gw)
            return x.flatten(2).transpose(1, 2)  # (B, P, D)
        return self.proj(patchify(images, self.patch_size))  # (B, P, D)

    def linear_weight(self) -> torch.Tensor:
        """The (D, C*p*p) matrix this layer applies to each flat patch, whichever form stores it."""
        return self.proj.weight.flatten(1)

    def load_from(self, other: "PatchEmbed") -> "PatchEmbed":
        """Copy another PatchEmbed's weights into this one, converting between the conv and linear forms."""
        with torch.no_grad():
            self.proj.weight.copy_(other.linear_weight().reshape(self.proj.weight.shape))
            self.proj.bias.copy_(other.proj.bias)
        return self

