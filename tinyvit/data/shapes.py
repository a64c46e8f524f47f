"""The shapes data set: scenes of one or two coloured shapes on grey paper, drawn from a seed, with captions, and
colour-shape pairs held out of training.

Shapes: S image side. Images are uint8 (S, S, 3) as drawn, float (3, S, S) as fed to a model.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from ..config import DictConfig
from .images import to_tensor

SHAPES = ("circle", "square", "triangle", "star", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
POSITIONS = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right")
SPLITS = ("train", "test", "heldout")  # test: seen pairs, a stream apart from train; heldout: unseen pairs
RGB = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 90, 230),
       "yellow": (240, 215, 40), "purple": (150, 60, 200), "orange": (250, 140, 20)}
WHERE = {"top left": "in the top left", "top": "at the top", "top right": "in the top right", "left": "on the left",
         "centre": "in the centre", "right": "on the right", "bottom left": "in the bottom left",
         "bottom": "at the bottom", "bottom right": "in the bottom right"}
# One held-out colour per shape, each colour at most once: every shape and colour still appears in training.
HELDOUT = frozenset({("circle", "blue"), ("square", "red"), ("triangle", "yellow"), ("star", "green"),
                     ("cross", "purple")})
UNNAMED_DISTANCE = 120.0  # how far (RGB distance) a colour without a name stays from every named colour
_NAMED_RGB = np.array(list(RGB.values()))  # (6, 3)


@dataclass(frozen=True)
class ShapesConfig(DictConfig):
    """How shapes scenes are drawn. Sizes are fractions of the image side (a shape's full width)."""

    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 2
    min_size: float = 0.15
    max_size: float = 0.5
    background: tuple[float, float] = (0.3, 0.7)  # range of the background's grey level (0 black, 1 white)
    noise: float = 0.03  # std of the per-pixel noise, as a fraction of 255
    texture: float = 0.06  # amplitude of the smooth background waves, as a fraction of 255
    colour_jitter: float = 0.06  # per-object shade change, as a fraction of 255
    max_rotation: float = 15.0  # degrees; more would turn squares into diamonds
    # Share of train scenes drawn in colours that have no name (far from all six named ones) and captioned by
    # shape alone ("a circle"): shapes must then be recognised whatever their colour. No held-out pair is drawn.
    unnamed_fraction: float = 0.0

    def __post_init__(self):
        if not isinstance(self.image_size, int) or isinstance(self.image_size, bool) or self.image_size < 8:
            raise ValueError(f"image_size must be an integer >= 8, got {self.image_size!r}")
        if not 1 <= self.min_objects <= self.max_objects <= 2:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= 2, got {self.min_objects}, {self.max_objects}")
        if not 0.05 <= self.min_size <= self.max_size <= 0.6:
            raise ValueError(f"need 0.05 <= min_size <= max_size <= 0.6, got {self.min_size}, {self.max_size}")
        object.__setattr__(self, "background", _grey_range("background", self.background))  # a JSON list too
        for name, top in (("noise", 0.5), ("texture", 0.5), ("colour_jitter", 0.3), ("max_rotation", 45.0),
                          ("unnamed_fraction", 1.0)):
            if not 0 <= getattr(self, name) <= top:
                raise ValueError(f"{name} must be in [0, {top}], got {getattr(self, name)!r}")


def _grey_range(name: str, value: Any) -> tuple[float, float]:
    """A (low, high) pair of grey levels in [0, 1], from a tuple or a JSON list, or a ValueError naming `name`."""
    pair = tuple(value) if isinstance(value, (list, tuple)) else ()
    if len(pair) != 2 or not all(isinstance(v, (int, float)) for v in pair) or not 0 <= pair[0] <= pair[1] <= 1:
        raise ValueError(f"{name} must be a (low, high) pair of grey levels with 0 <= low <= high <= 1, got {value!r}")
    return float(pair[0]), float(pair[1])


def heldout_pairs() -> frozenset[tuple[str, str]]:
    """The (shape, colour) pairs that never occur in the train split and always lead a heldout image."""
    return HELDOUT


def with_article(phrase: str) -> str:
    """"a red circle", "an orange star": the indefinite article the phrase's first letter asks for."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _unit_polygon(shape: str) -> np.ndarray:
    """Vertices (K, 2) of a shape of radius 1 centred at 0, y pointing down."""
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "square":
        return 0.85 * np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)
    if shape == "triangle":
        return np.array([[0, -0.87], [1, 0.87], [-1, 0.87]])
    if shape == "star":
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2, 0.45, 1.0)
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)
    w = 0.33  # cross: a plus sign with arms 2w wide
    return np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1], [-w, 1], [-w, w], [-1, w],
                     [-1, -w], [-w, -w]])


def make_scene(index: int, cfg: ShapesConfig, split: str = "train", seed: int = 0, main_shape: int | None = None
               ) -> tuple[dict[str, Any], np.random.Generator]:
    """Objects, labels and caption of one item (make_item without the image), and the generator left for drawing
    it. `main_shape` swaps the main object's shape and nothing else: same place, size, colour, caption template
    and background (a hard negative)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be non-negative, got index={index}, seed={seed}")
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    seen = [(s, c) for s in SHAPES for c in COLOURS if (s, c) not in HELDOUT]
    unnamed = split == "train" and cfg.unnamed_fraction > 0 and rng.random() < cfg.unnamed_fraction
    if unnamed:  # shapes in colours without a name; the second shape differs from the first
        first = int(rng.integers(len(SHAPES)))
        pairs = [(SHAPES[first], None), (SHAPES[(first + 1 + rng.integers(len(SHAPES) - 1)) % len(SHAPES)], None)]
        pairs = pairs[:int(rng.integers(cfg.min_objects, cfg.max_objects + 1))]
    else:
        pool = sorted(HELDOUT) if split == "heldout" else seen
        pairs = [pool[rng.integers(len(pool))]]
        if rng.integers(cfg.min_objects, cfg.max_objects + 1) == 2:  # the other object differs in shape and colour
            others = [p for p in seen if p[0] != pairs[0][0] and p[1] != pairs[0][1]]
            pairs.append(others[rng.integers(len(others))])
    objects: list[dict[str, Any]] = []
    for shape, colour in pairs:
        for attempt in range(60):  # place without overlapping the first object; shrink if crowded
            size = cfg.min_size if attempt >= 30 else rng.uniform(cfg.min_size, cfg.max_size)
            r, cell = size / 2, rng.integers(9)
            x = rng.uniform(max(cell % 3 / 3, r), min((cell % 3 + 1) / 3, 1 - r))
            y = rng.uniform(max(cell // 3 / 3, r), min((cell // 3 + 1) / 3, 1 - r))
            if not objects:
                break
            o = objects[0]
            gap = math.hypot(x - o["centre"][0], y - o["centre"][1])
            if gap > 1.2 * (r + o["size"] / 2) and max(abs(x - o["centre"][0]), abs(y - o["centre"][1])) > 0.2:
                break
        position = min(int(y * 3), 2) * 3 + min(int(x * 3), 2)
        objects.append({"shape": SHAPES.index(shape), "colour": -1 if colour is None else COLOURS.index(colour),
                        "position": position, "size": float(size), "centre": (float(x), float(y)),
                        "angle": float(rng.uniform(-cfg.max_rotation, cfg.max_rotation))})
        if colour is None:
            objects[-1]["rgb"] = _unnamed_rgb(rng)
    if main_shape is not None and objects[0]["colour"] >= 0:
        pair = (SHAPES[main_shape], COLOURS[objects[0]["colour"]])
        if (pair in HELDOUT) != (split == "heldout"):
            kind = "a held-out" if pair in HELDOUT else "a seen"
            raise ValueError(f"a {pair[1]} {pair[0]} is {kind} colour-shape pair: not allowed in the {split!r} split")
    if main_shape is not None:
        objects[0]["shape"] = main_shape
    main = objects[0]
    caption = _caption(objects, cfg, rng)
    return {"caption": caption, "shape": main["shape"], "colour": main["colour"],
            "position": main["position"], "objects": objects}, rng


def _unnamed_rgb(rng: np.random.Generator) -> tuple[int, int, int]:
    """A colour at least UNNAMED_DISTANCE (in RGB) from every named colour, so it is none of them."""
    while True:
        rgb = rng.integers(0, 256, 3)
        if np.sqrt(((rgb - _NAMED_RGB) ** 2).sum(1)).min() >= UNNAMED_DISTANCE:  # distance to the nearest
            return tuple(int(v) for v in rgb)


def object_name(obj: dict[str, Any]) -> str:
    """"red circle", or just "circle" for a shape in a colour without a name (colour index -1)."""
    shape = SHAPES[obj["shape"]]
    return shape if obj["colour"] < 0 else f"{COLOURS[obj['colour']]} {shape}"


def _caption(objects: list[dict[str, Any]], cfg: ShapesConfig, rng: np.random.Generator) -> str:
    """A caption from one of several templates; the main (first) object's colour and shape come first."""
    options = caption_options(objects, cfg)
    return options[rng.integers(len(options))]


def caption_options(objects: list[dict[str, Any]], cfg: ShapesConfig = ShapesConfig()) -> list[str]:
    """Every caption the templates can write for a scene's objects (a scene's "objects"), in template order: six
    for one object ("a red square", "a small red square in the top left", ...), three for two. Each is true of the
    scene; the data set picks one at random, which is why even a perfect model cannot always retrieve the exact
    caption (`evaluate.oracle_recall_at_1`)."""
    main = objects[0]
    colour, shape = COLOURS[main["colour"]] if main["colour"] >= 0 else None, SHAPES[main["shape"]]
    third = (main["size"] - cfg.min_size) / max(cfg.max_size - cfg.min_size, 1e-9)
    size = "small" if third < 1 / 3 else "large" if third > 2 / 3 else "medium"
    name = object_name(main)
    if len(objects) == 2:
        o = objects[1]
        other = with_article(object_name(o))
        dx, dy = main["centre"][0] - o["centre"][0], main["centre"][1] - o["centre"][1]
        rel = ("above" if dy < 0 else "below") if abs(dy) >= abs(dx) else \
            ("to the left of" if dx < 0 else "to the right of")
        templates = [f"{name} {rel} {other}", f"{size} {name} {rel} {other}", f"{name} and {other}"]
    else:
        where = WHERE[POSITIONS[main["position"]]]
        templates = [f"{name}", f"{size} {name}", f"{name} {where}", f"{size} {name} {where}",
                     f"{shape} that is {colour}" if colour else f"{shape} {where}",
                     f"picture of {with_article(colour)} {shape}" if colour else
                     f"picture of {with_article(shape)}"]
    return [with_article(t) for t in templates]


def draw_objects(objects: list[dict[str, Any]], cfg: ShapesConfig, rng: np.random.Generator) -> np.ndarray:
    """Draw a scene's objects on a textured, noisy background, with the generator make_scene left. -> uint8
    (S, S, 3)."""
    S = cfg.image_size
    u = np.linspace(0, 1, S, dtype=np.float32)
    base = rng.uniform(*cfg.background) * 255 + rng.uniform(-10, 10, 3)  # a neutral grey with a faint tint
    image = np.broadcast_to(base.astype(np.float32), (S, S, 3)).copy()  # (S, S, 3)
    for _ in range(2):  # smooth waves of low frequency: a mild texture
        fx, fy, phase = rng.uniform(-3, 3), rng.uniform(-3, 3), rng.uniform(0, 2 * np.pi)
        image += (cfg.texture * 255 / 2 * np.sin(2 * np.pi * (fx * u[None, :] + fy * u[:, None]) + phase))[..., None]
    ss = 4 if S <= 64 else 2 if S <= 128 else 1  # supersample the masks for clean edges
    for obj in objects:
        a = math.radians(obj["angle"])
        rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
        points = (_unit_polygon(SHAPES[obj["shape"]]) @ rot * obj["size"] / 2 + obj["centre"]) * S  # (K, 2) pixels
        (x0, y0), (x1, y1) = np.floor(points.min(0)).astype(int), np.ceil(points.max(0)).astype(int)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, S), min(y1, S)  # draw only the object's box: cheaper
        mask = Image.new("L", ((x1 - x0) * ss, (y1 - y0) * ss), 0)
        ImageDraw.Draw(mask).polygon([tuple(p) for p in (points - (x0, y0)) * ss], fill=255)
        if ss > 1:
            mask = mask.resize((x1 - x0, y1 - y0), Image.Resampling.BOX)  # BOX = the covered fraction of a pixel
        alpha = np.asarray(mask, np.float32)[..., None] / 255  # (h, w, 1)
        base_rgb = obj["rgb"] if obj["colour"] < 0 else RGB[COLOURS[obj["colour"]]]
        colour = np.array(base_rgb) + rng.uniform(-1, 1, 3) * cfg.colour_jitter * 255
        box = image[y0:y1, x0:x1]
        box += alpha * (colour.astype(np.float32) - box)
    # Uniform noise with std cfg.noise * 255 (a uniform on [-a, a] has std a / sqrt(3)); cheaper than normal noise.
    image += (rng.random(image.shape, dtype=np.float32) - 0.5) * (cfg.noise * 255 * math.sqrt(12))
    return np.clip(image, 0, 255).round().astype(np.uint8)


def make_item(index: int, cfg: ShapesConfig = ShapesConfig(), split: str = "train", seed: int = 0,
              shape: int | None = None) -> dict[str, Any]:
    """One shapes item, a pure function of (seed, split, index): {"image": uint8 (S, S, 3), "caption", "shape",
    "colour", "position" (indices into SHAPES/COLOURS/POSITIONS of the main object), "objects": per-object dicts
    with shape, colour, position, size (fraction of the side), centre (x, y fractions), angle (degrees)}.
    `shape` (an index into SHAPES) redraws the same scene with another main shape: a hard negative."""
    scene, rng = make_scene(index, cfg, split, seed, shape)
    return {"image": draw_objects(scene["objects"], cfg, rng), **scene}


class ShapesDataset(Dataset):
    """`size` shapes items drawn on demand. ds[i] -> (image (3, S, S) float, caption); labels and captions come
    from the scene alone, so they need no drawing."""

    def __init__(self, size: int, cfg: ShapesConfig = ShapesConfig(), split: str = "train", seed: int = 0):
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"ShapesDataset size must be a positive integer, got {size!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.size, self.cfg, self.split, self.seed = size, cfg, split, seed
        self._scenes: list[dict[str, Any]] | None = None

    def __len__(self) -> int:
        return self.size

    def _index(self, i: int) -> int:
        if not -self.size <= i < self.size:
            raise IndexError(f"index {i} out of range for a ShapesDataset of {self.size} items")
        return int(i) % self.size

    def item(self, i: int) -> dict[str, Any]:
        """The full make_item dict of item i."""
        return make_item(self._index(i), self.cfg, self.split, self.seed)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        item = self.item(i)
        return to_tensor(item["image"]), item["caption"]

    def scenes(self) -> list[dict[str, Any]]:
        """Captions, labels and objects of every item, without images (computed once)."""
        if self._scenes is None:
            self._scenes = [make_scene(i, self.cfg, self.split, self.seed)[0] for i in range(self.size)]
        return self._scenes

    @property
    def captions(self) -> list[str]:
        return [s["caption"] for s in self.scenes()]

    def labels(self, key: str) -> torch.Tensor:
        """Main-object labels, key in shape | colour | position. -> LongTensor (size,)."""
        if key not in ("shape", "colour", "position"):
            raise ValueError(f"label key must be shape, colour or position, got {key!r}")
        return torch.tensor([s[key] for s in self.scenes()], dtype=torch.long)


def export_shapes(out_dir: str | Path, n: int, cfg: ShapesConfig = ShapesConfig(), split: str = "train",
                  seed: int = 0) -> Path:
    """Write n shapes PNGs, a manifest annotations.json (label = shape index) and classes_{shape,colour,position}.txt
    (line i is the prompt of class i) into out_dir. Returns the manifest's path."""
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"export_shapes needs a positive number of items, got {n!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    width = max(5, len(str(n - 1)))
    records = []
    for i in range(n):
        item = make_item(i, cfg, split, seed)
        name = f"{split}_{i:0{width}d}.png"
        Image.fromarray(item["image"]).save(out / name)
        records.append({"image": name, "caption": item["caption"], "label": item["shape"], "shape_label": item["shape"],
                        "colour_label": item["colour"], "position_label": item["position"]})
    for key, prompts in (("shape", [with_article(s) for s in SHAPES]),
                         ("colour", [with_article(f"{c} shape") for c in COLOURS]),
                         ("position", [f"a shape {WHERE[p]}" for p in POSITIONS])):
        (out / f"classes_{key}.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
    manifest = out / "annotations.json"
    manifest.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    return manifest
