"""A second shapes generator, written apart from tinyvit.data, for testing a trained encoder on shapes drawn and
captioned differently: shapes rasterised from distance functions with NumPy (no Pillow polygons), other sizes,
other backgrounds (flat, gradient, checkerboard), other shades of the colours, a taller triangle, a fatter star
and a thinner cross, and other caption wording. Only the names of shapes and colours are shared with tinyvit.data.

    items = variant_items(200, image_size=64, pairs=heldout_pairs(), seed=0)
    items[0] -> {"image": uint8 (S, S, 3), "caption": str, "shape": int, "colour": int}
"""
from __future__ import annotations

import numpy as np

from tinyvit.data import COLOURS, SHAPES

SHADES = {"red": (200, 30, 60), "green": (60, 190, 90), "blue": (30, 60, 200),
          "yellow": (250, 230, 80), "purple": (120, 40, 160), "orange": (230, 120, 40)}
WORDING = ("there is a {c} {s}", "one {c} {s} on a plain background", "{c} {s}", "i can see a {c} {s}",
           "the picture shows a {c} {s}", "a {s} coloured {c}")


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of a unit-radius shape at the origin; u to the right, v downwards."""
    if shape == "circle":
        return u**2 + v**2 <= 1
    if shape == "square":
        return (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)
    if shape == "triangle":  # taller and narrower than tinyvit.data's
        return (v <= 0.8) & (np.abs(u) <= (v + 0.95) * 0.5)
    if shape == "star":  # five points, fatter than tinyvit.data's: radius between 0.55 and 1
        angle = np.arctan2(v, u) + np.pi / 2
        spike = np.abs(((angle * 5 / (2 * np.pi)) % 1) - 0.5) * 2  # 1 at a tip, 0 between tips
        return np.hypot(u, v) <= 0.55 + 0.45 * spike**2
    if shape == "cross":  # thinner arms than tinyvit.data's
        return ((np.abs(u) <= 0.22) & (np.abs(v) <= 1)) | ((np.abs(v) <= 0.22) & (np.abs(u) <= 1))
    raise ValueError(f"unknown shape {shape!r}")


def _background(rng: np.random.Generator, size: int, light: bool = False) -> np.ndarray:
    kind = rng.integers(3)
    base = rng.uniform(70, 190)
    if light:  # the same kinds of background, shifted to light paper (200-225, +-30 with the gradient)
        base = 200 + (base - 70) * 25 / 120
    if kind == 0:  # flat
        image = np.full((size, size, 3), base, np.float32)
    elif kind == 1:  # gradient
        ramp = np.linspace(-30, 30, size, dtype=np.float32)
        image = base + (ramp[:, None, None] if rng.integers(2) else ramp[None, :, None]) + np.zeros((size, size, 3))
    else:  # low-contrast checkerboard
        cell = max(2, size // int(rng.integers(4, 9)))
        yy, xx = np.mgrid[:size, :size]
        image = base + 15 * (((yy // cell + xx // cell) % 2) * 2 - 1)[..., None] + np.zeros((size, size, 3))
    return image.astype(np.float32)


def variant_item(index: int, image_size: int, pairs: list[tuple[str, str]], seed: int = 0, light: bool = False) -> dict:
    """One image with a single shape of one of `pairs` (shape, colour), its caption and labels."""
    rng = np.random.default_rng([seed, 977, index])
    shape, colour = pairs[rng.integers(len(pairs))]
    S = image_size
    image = _background(rng, S, light)
    radius = rng.uniform(0.2, 0.55) * S / 2  # shapes 20 % to 55 % of the side
    cx, cy = rng.uniform(radius, S - radius, 2)
    ss = 3  # supersampling for soft edges
    grid = (np.arange(S * ss) + 0.5) / ss
    u, v = (grid[None, :] - cx) / radius, (grid[:, None] - cy) / radius
    mask = _inside(shape, u, v).reshape(S, ss, S, ss).mean(axis=(1, 3))[..., None]  # (S, S, 1)
    image = image * (1 - mask) + np.array(SHADES[colour], np.float32) * mask
    image += rng.uniform(-6, 6, image.shape)
    caption = WORDING[rng.integers(len(WORDING))].format(c=colour, s=shape)
    return {"image": np.clip(image, 0, 255).astype(np.uint8), "caption": caption,
            "shape": SHAPES.index(shape), "colour": COLOURS.index(colour)}


def variant_items(n: int, image_size: int, pairs, seed: int = 0, light: bool = False) -> list[dict]:
    pairs = sorted(pairs)
    return [variant_item(i, image_size, pairs, seed, light) for i in range(n)]
