"""Data: a procedural shapes data set with captions and held-out colour-shape pairs; image loading; manifests
(a JSON list or JSONL of {"image", "caption"}); and seeded batches that make resuming training exact.

Shapes: B batch, S image side. Images are uint8 (S, S, 3) as drawn or stored, float (3, S, S) as fed to a model.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

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
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)
_MEAN, _STD = torch.tensor(IMAGE_MEAN).view(3, 1, 1), torch.tensor(IMAGE_STD).view(3, 1, 1)  # made once, not per image


@dataclass(frozen=True)
class ShapesConfig:
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
    # How a training stream is batched (HardNegativeBatches): the share of each batch that comes in groups of
    # `group_size` copies of one scene differing only in the main shape.
    hard_fraction: float = 0.0
    group_size: int = 4
    # The share of those groups that vary the main object's place and size instead (one object, shape and colour
    # kept, captioned "a <size> <colour> <shape> in the <place>"): what tells their captions apart is where.
    place_fraction: float = 0.0
    # From shape_first_steps on, the share of those groups that are *binding groups*: two-object scenes, each drawn
    # as it is and with the two colours traded (a red square and a blue star; a blue square and a red star), each
    # captioned by naming one object ("a red square" / "a blue square"). Both copies hold the same colours and
    # shapes, so only which colour goes with which shape tells their captions apart. (To a mean-pooled text
    # encoder, groups that name the other object ask the opposite: benchmarks/README.md, "Session 7".)
    binding_fraction: float = 0.0
    # Which object a binding group's captions name: "random" (a coin toss per scene) or "first_shape" (the one
    # whose shape comes first in SHAPES, so one image is never asked both ways).
    binding_named: str = "random"
    # Contrast only pairs that share the main shape or the main colour (contrastive.shared_attribute_mask).
    shared_attribute_negatives: bool = False
    # For the first N training steps contrast only the copies of one scene (a hard-negative group, so hard_fraction
    # must be 1): shape is then the only thing that tells captions apart, and colour cannot crowd it out.
    shape_first_steps: int = 0
    # From step shape_first_steps on, draw this share of a training stream's scenes (whole hard-negative groups) on
    # backgrounds from `late_background` instead: shapes are first learned with one edge sign on light paper, then
    # seen on darker paper too, where a colour can be lighter or darker than the background. None: never.
    late_background: tuple[float, float] | None = None
    late_background_share: float = 1.0
    # Steps over which that share grows linearly from 0 to late_background_share, from shape_first_steps on, so
    # the darker paper comes in gradually instead of all at once. 0: the whole share at once.
    late_background_ramp: int = 0

    def __post_init__(self):
        if not isinstance(self.image_size, int) or self.image_size < 8:
            raise ValueError(f"image_size must be an integer >= 8, got {self.image_size!r}")
        if not 1 <= self.min_objects <= self.max_objects <= 2:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= 2, got {self.min_objects}, {self.max_objects}")
        if not 0.05 <= self.min_size <= self.max_size <= 0.6:
            raise ValueError(f"need 0.05 <= min_size <= max_size <= 0.6, got {self.min_size}, {self.max_size}")
        object.__setattr__(self, "background", _grey_range("background", self.background))  # a JSON list too
        if self.late_background is not None:
            object.__setattr__(self, "late_background", _grey_range("late_background", self.late_background))
        if not isinstance(self.shape_first_steps, int) or self.shape_first_steps < 0:
            raise ValueError(f"shape_first_steps must be a non-negative integer, got {self.shape_first_steps!r}")
        if self.binding_named not in ("random", "first_shape"):
            raise ValueError(f"binding_named must be 'random' or 'first_shape', got {self.binding_named!r}")
        if not isinstance(self.late_background_ramp, int) or self.late_background_ramp < 0:
            raise ValueError(f"late_background_ramp must be a non-negative integer, got {self.late_background_ramp!r}")
        if self.shape_first_steps and self.hard_fraction != 1.0:
            raise ValueError(f"shape_first_steps contrasts the copies of one scene, so every item must be in a "
                             f"hard-negative group: need hard_fraction 1.0, got {self.hard_fraction} "
                             f"(or set shape_first_steps to 0)")
        for name, top in (("noise", 0.5), ("texture", 0.5), ("colour_jitter", 0.3), ("max_rotation", 45.0),
                          ("unnamed_fraction", 1.0), ("hard_fraction", 1.0), ("place_fraction", 1.0),
                          ("binding_fraction", 1.0), ("late_background_share", 1.0)):
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


def _scene(index: int, cfg: ShapesConfig, split: str, seed: int, main_shape: int | None = None,
           main_place: int | None = None, bind: tuple[int, bool] | None = None
           ) -> tuple[dict[str, Any], np.random.Generator]:
    """Objects and caption of one item, and the generator left for drawing it (labels need no drawing).
    `main_shape` swaps the main object's shape and nothing else: same place, size, colour, caption template and
    background. `main_place` (a position 0-8) keeps the main object alone, moves it into that ninth of the image
    at a size of its own, and captions it with its size and place: same shape, colour, rotation and background.
    `bind` = (named, traded), for a scene of two named objects: with `traded`, the two objects swap colours
    (nothing else changes), and the caption names object `named` alone ("a blue square")."""
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
    if main_shape is not None and objects[0]["colour"] < 0:
        objects[0]["shape"] = main_shape
    elif main_shape is not None:
        pair = (SHAPES[main_shape], COLOURS[objects[0]["colour"]])
        if (pair in HELDOUT) != (split == "heldout"):
            kind = "a held-out" if pair in HELDOUT else "a seen"
            raise ValueError(f"a {pair[1]} {pair[0]} is {kind} colour-shape pair: not allowed in the {split!r} split")
        objects[0]["shape"] = main_shape
    if main_place is not None:
        objects = [_placed(objects[0], main_place, cfg, np.random.default_rng([seed, SPLITS.index(split), index,
                                                                                 1 + main_place]))]
    if bind is not None:
        objects = _bound(objects, *bind)
    main = objects[0]
    if bind is not None:
        caption = with_article(object_name(objects[bind[0]]))
    elif main_place is not None:
        caption = caption_options(objects, cfg)[3]
    else:
        caption = _caption(objects, cfg, rng)
    return {"caption": caption, "shape": main["shape"], "colour": main["colour"],
            "position": main["position"], "objects": objects}, rng


def _bound(objects: list[dict[str, Any]], named: int, traded: bool) -> list[dict[str, Any]]:
    """The two objects of a binding-group scene (`_can_bind`), their colours swapped if `traded`."""
    if not _can_bind(objects) or named not in (0, 1):
        raise ValueError(f"a binding scene needs two objects in named colours whose traded colours make no held-out "
                         f"pair, and named in (0, 1); got {[object_name(o) for o in objects]} and named={named!r}")
    if not traded:
        return objects
    a, b = objects
    return [{**a, "colour": b["colour"]}, {**b, "colour": a["colour"]}]


def _can_bind(objects: list[dict[str, Any]]) -> bool:
    """Two objects in named colours whose traded colours make no held-out pair: usable for a binding group."""
    if len(objects) != 2 or min(o["colour"] for o in objects) < 0:
        return False
    a, b = objects
    return all((SHAPES[x["shape"]], COLOURS[y["colour"]]) not in HELDOUT for x, y in ((a, b), (b, a)))


def _placed(obj: dict[str, Any], place: int, cfg: ShapesConfig, rng: np.random.Generator) -> dict[str, Any]:
    """The object moved into ninth `place` (0-8, row by row) of the image at a new random size."""
    if not 0 <= place < len(POSITIONS):
        raise ValueError(f"place must be a position index 0-{len(POSITIONS) - 1}, got {place!r}")
    size = float(rng.uniform(cfg.min_size, cfg.max_size))
    r = size / 2
    x = rng.uniform(max(place % 3 / 3, r), min((place % 3 + 1) / 3, 1 - r))
    y = rng.uniform(max(place // 3 / 3, r), min((place // 3 + 1) / 3, 1 - r))
    return {**obj, "position": place, "size": size, "centre": (float(x), float(y))}


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


def _render(objects: list[dict[str, Any]], cfg: ShapesConfig, rng: np.random.Generator) -> np.ndarray:
    """Draw the objects on a textured, noisy background. -> uint8 (S, S, 3)."""
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
    # Uniform noise with std cfg.noise * 255 (a uniform on [-a, a] has std a / sqrt(3)); 6x cheaper than normal.
    image += (rng.random(image.shape, dtype=np.float32) - 0.5) * (cfg.noise * 255 * math.sqrt(12))
    return np.clip(image, 0, 255).round().astype(np.uint8)


def make_item(index: int, cfg: ShapesConfig = ShapesConfig(), split: str = "train", seed: int = 0,
              shape: int | None = None, place: int | None = None, bind: tuple[int, bool] | None = None
              ) -> dict[str, Any]:
    """One shapes item, a pure function of (seed, split, index): {"image": uint8 (S, S, 3), "caption", "shape",
    "colour", "position" (indices into SHAPES/COLOURS/POSITIONS of the main object), "objects": per-object dicts
    with shape, colour, position, size (fraction of the side), centre (x, y fractions), angle (degrees)}.
    `shape` (an index into SHAPES) redraws the same scene with another main shape: a hard negative; `place` (an
    index into POSITIONS) redraws its main object alone in another place and size; `bind` (named, traded) swaps
    the two objects' colours if traded and captions object `named` alone (a binding group's scene)."""
    scene, rng = _scene(index, cfg, split, seed, shape, place, bind)
    return {"image": _render(scene["objects"], cfg, rng), **scene}


def to_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
    """A PIL image or uint8 array (H, W, 3) -> float (3, H, W), normalised with IMAGE_MEAN and IMAGE_STD."""
    array = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"to_tensor expects a uint8 array (H, W, 3), got {array.dtype} {array.shape}")
    x = torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255  # (3, H, W)
    return (x - _MEAN) / _STD


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Undo to_tensor for display: (3, H, W) -> (H, W, 3), or (B, 3, H, W) -> (B, H, W, 3), floats in [0, 1]."""
    if images.dim() not in (3, 4) or images.shape[-3] != 3:
        raise ValueError(f"denormalize expects (3, H, W) or (B, 3, H, W), got {tuple(images.shape)}")
    x = images.detach().cpu().float() * _STD + _MEAN
    return x.movedim(-3, -1).clamp(0, 1)  # (..., H, W, 3)


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
            self._scenes = [_scene(i, self.cfg, self.split, self.seed)[0] for i in range(self.size)]
        return self._scenes

    @property
    def captions(self) -> list[str]:
        return [s["caption"] for s in self.scenes()]

    def labels(self, key: str) -> torch.Tensor:
        """Main-object labels, key in shape | colour | position. -> LongTensor (size,)."""
        if key not in ("shape", "colour", "position"):
            raise ValueError(f"label key must be shape, colour or position, got {key!r}")
        return torch.tensor([s[key] for s in self.scenes()], dtype=torch.long)


def load_image(path: str | Path, image_size: int) -> torch.Tensor:
    """Read an image file with Pillow, as RGB, resized to image_size x image_size. -> (3, S, S) normalised."""
    return to_tensor(read_rgb(path, image_size))


def read_rgb(path: str | Path, image_size: int) -> np.ndarray:
    """An image file as uint8 (S, S, 3): grey, palette, CMYK and 16-bit become RGB, transparency goes on white,
    EXIF rotation is applied, and the whole picture is resized (bicubic, antialiased; not cropped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode.startswith("I") or img.mode == "F":  # 16/32-bit grey: scale to 8 bits
                grey = np.asarray(img, np.float32)
                grey = np.clip(grey / 257 if grey.max() > 255 else grey, 0, 255)
                img = Image.fromarray(grey.round().astype(np.uint8))
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                rgba = img.convert("RGBA")
                img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            img = img.convert("RGB")
            if img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.Resampling.BICUBIC)
            return np.asarray(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path} is not a readable image ({type(err).__name__}: {err})") from None


def _parse_manifest(path: Path) -> list[tuple[str, Any]]:
    """(where, object) pairs from a JSON list or from JSONL; `where` names the item or line for messages."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(f"manifest {path} is not valid UTF-8 (line {line}, byte {err.start}): {err.reason}") from None
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"manifest {path} is not valid JSON: {err.msg} at line {err.lineno} "
                             f"column {err.colno}") from None
        return [(f"item {k + 1}", obj) for k, obj in enumerate(data)]
    entries = []
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                entries.append((f"line {n}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise ValueError(f"manifest {path}, line {n}: not valid JSON ({err.msg}); a manifest is a JSON list "
                                 f"or JSONL with one object per line") from None
    return entries


def _check_items(entries: list[tuple[str, Any]], base: Path, source: str) -> list[dict[str, Any]]:
    """Validate items and resolve their images against `base`; every missing file is named at once."""
    if not entries:
        raise ValueError(f"manifest {source} holds no items")
    items, missing = [], []
    for where, obj in entries:
        if not isinstance(obj, dict):
            raise ValueError(f"manifest {source}, {where}: expected an object with image and caption, "
                             f"got {type(obj).__name__}")
        for key in ("image", "caption"):
            if key not in obj:
                raise ValueError(f"manifest {source}, {where}: missing {key!r} (keys: {sorted(obj)})")
        image, caption = obj["image"], obj["caption"]
        if not isinstance(image, str) or not image.strip():
            raise ValueError(f"manifest {source}, {where}: image must be a non-empty path string, got {image!r}")
        if not isinstance(caption, str):
            raise ValueError(f"manifest {source}, {where}: caption must be a string, "
                             f"got {type(caption).__name__} {caption!r}")
        if not caption.strip():
            raise ValueError(f"manifest {source}, {where}: caption is empty")
        resolved = os.path.normpath(base / image)
        if not os.path.isfile(resolved):
            missing.append(image)
        items.append({**obj, "image": resolved})
    if missing:
        shown = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise FileNotFoundError(f"{len(missing)} image file(s) named in manifest {source} not found "
                                f"(paths relative to {base}): {shown}")
    return items


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Items of a manifest (JSON list or JSONL of {"image", "caption", optional "label", other keys kept}), with
    "image" resolved to an absolute path string; errors name the file and the item or line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    return _check_items(_parse_manifest(path), path.parent.absolute(), str(path))


class ManifestDataset(Dataset):
    """Image-caption pairs from a manifest file or a list of item dicts (paths relative to the working directory).
    ds[i] -> (image (3, S, S) float, caption)."""

    def __init__(self, manifest: str | Path | list[dict[str, Any]], image_size: int):
        if isinstance(manifest, (str, Path)):
            self.items = read_manifest(manifest)
        else:
            self.items = _check_items([(f"item {k + 1}", o) for k, o in enumerate(manifest)], Path.cwd(), "items")
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        item = self.items[i]
        return load_image(item["image"], self.image_size), item["caption"]

    @property
    def captions(self) -> list[str]:
        return [item["caption"] for item in self.items]

    def labels(self, key: str = "label") -> torch.Tensor:
        """The integer field `key` of every item. -> LongTensor (n,)."""
        for item in self.items:
            value = item.get(key)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"item {item['image']} has no integer {key!r} (got {value!r})")
        return torch.tensor([item[key] for item in self.items], dtype=torch.long)


def export_shapes(out_dir: str | Path, n: int, cfg: ShapesConfig = ShapesConfig(), split: str = "train",
                  seed: int = 0) -> Path:
    """Write n shapes PNGs, annotations.json (label = shape index) and classes_{shape,colour,position}.txt
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


class Batches:
    """Seeded batches, a pure function of (seed, step): each epoch is a fresh permutation of the data set and
    item j of step s is perm_epoch[(s*B + j) % n], epoch = (s*B + j) // n. That is what makes resuming exact.
    batches(step) -> (images (B, 3, S, S), captions list[str], indices LongTensor (B,))."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0):
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if len(dataset) == 0:
            raise ValueError("Batches needs a non-empty data set")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= 4:  # a batch touches at most a few epochs; keep the cache small
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
        return self._perms[epoch]

    def indices(self, step: int) -> torch.Tensor:
        """Data-set indices of this step's batch. -> LongTensor (B,)."""
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative integer, got {step!r}")
        n = len(self.dataset)
        flat = [step * self.batch_size + j for j in range(self.batch_size)]
        return torch.tensor([int(self._perm(k // n)[k % n]) for k in flat], dtype=torch.long)

    def __call__(self, step: int) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        indices = self.indices(step)
        pairs = [self.dataset[int(i)] for i in indices]
        return torch.stack([image for image, _ in pairs]), [caption for _, caption in pairs], indices  # (B, 3, S, S)


class HardNegativeBatches:
    """Batches of fresh shapes items in which colour and position cannot tell captions apart: a `hard_fraction`
    of each batch comes in groups of `group_size` copies of one scene that differ only in the main object's shape
    (and so only in the caption's shape word); a `place_fraction` of those groups vary its place and size instead
    (and so the caption's size and place words); from `shape_first_steps` on, a `binding_fraction` of them are
    binding groups (ShapesConfig.binding_fraction: scenes of two objects drawn as they are and with their colours
    traded, the caption naming one object). The rest are ordinary items. All of these default to the
    ShapesConfig's; with hard_fraction 0 this is a plain stream of fresh items, item j of step s being scene
    s * B + j. A pure function of (seed, step), like Batches. batches(step) -> (images (B, 3, S, S), captions
    list[str], indices LongTensor (B,) of the scenes: the same for every copy of one scene)."""

    def __init__(self, cfg: ShapesConfig, batch_size: int, seed: int = 0, group_size: int | None = None,
                 hard_fraction: float | None = None, split: str = "train"):
        group_size = cfg.group_size if group_size is None else group_size
        hard_fraction = cfg.hard_fraction if hard_fraction is None else hard_fraction
        allowed = min(sum((s, c) not in HELDOUT for s in SHAPES) for c in COLOURS)
        if not 2 <= group_size <= allowed:
            raise ValueError(f"group_size must be between 2 and {allowed} (the shapes every named colour allows), "
                             f"got {group_size}")
        if not 0 <= hard_fraction <= 1:
            raise ValueError(f"hard_fraction must be in [0, 1], got {hard_fraction!r}")
        if split == "heldout":
            raise ValueError("hard negatives swap shapes, which the heldout split (one pair per shape) cannot do")
        if cfg.binding_fraction and group_size % 2:
            raise ValueError(f"binding groups hold each scene twice (as drawn, colours traded): group_size must be "
                             f"even, got {group_size}")
        self.cfg, self.batch_size, self.seed, self.split = cfg, batch_size, seed, split
        self.group_size, self.groups = group_size, int(batch_size * hard_fraction) // group_size
        self.place_groups = round(self.groups * cfg.place_fraction)  # the last ones
        self.binding_groups = min(round(self.groups * cfg.binding_fraction), self.groups - self.place_groups)  # first
        self._drawn: tuple[int, torch.Tensor] | None = None  # (step, attributes) of the batch drawn last
        self._late = None if cfg.late_background is None else dataclasses.replace(cfg, background=cfg.late_background)

    #: Binding scenes are drawn from scene indices above this one, apart from the stream's own (step * B + j),
    #: BINDING_CANDIDATES indices per scene, of which the first usable one (`_can_bind`) is kept.
    BINDING_INDICES = 2**40
    BINDING_CANDIDATES = 64

    @classmethod
    def binding_items(cls, indices: torch.Tensor) -> torch.Tensor:
        """Which items of a batch (its scene indices, as batches(step) returns them) belong to binding groups.
        (B,) long -> (B,) bool."""
        return indices >= cls.BINDING_INDICES

    def plan(self, step: int) -> list[tuple[int, int | None, int | None, tuple[int, bool] | None]]:
        """(scene index, main shape or None, main place or None, (named, traded) or None) for each of the B items
        of this step: None, None, None for a scene as it is."""
        rng = np.random.default_rng([self.seed, step, 1])
        first = step * self.batch_size
        binding = self.binding_groups if step >= self.cfg.shape_first_steps else 0
        plan: list[tuple[int, int | None, int | None, tuple[int, bool] | None]] = []
        for g in range(self.groups):
            index = first + g
            if g < binding:
                plan += self._binding_group(step, g)
                continue
            if g >= self.groups - self.place_groups:
                places = rng.choice(len(POSITIONS), self.group_size, replace=False)
                plan += [(index, None, int(k), None) for k in places]
                continue
            colour = _scene(index, self.cfg, self.split, self.seed)[0]["colour"]  # -1: a colour without a name
            shapes = [k for k, s in enumerate(SHAPES) if colour < 0 or (s, COLOURS[colour]) not in HELDOUT]
            plan += [(index, int(k), None, None) for k in rng.choice(shapes, self.group_size, replace=False)]
        plan += [(first + j, None, None, None) for j in range(self.groups, self.batch_size - len(plan) + self.groups)]
        return plan

    def _binding_group(self, step: int, g: int) -> list[tuple[int, None, None, tuple[int, bool]]]:
        """group_size / 2 two-object scenes, each as drawn and with its colours traded, captioned by the same one
        of its objects. The scenes are the first usable ones (`_can_bind`) among indices reserved for this group."""
        plan = []
        n = self.BINDING_CANDIDATES
        base = self.BINDING_INDICES + (step * self.groups + g) * self.group_size * n
        for j in range(self.group_size // 2):
            for c in range(n):
                index = base + j * n + c
                objects = _scene(index, self.cfg, self.split, self.seed)[0]["objects"]
                if _can_bind(objects):
                    break
            else:
                raise RuntimeError(f"no usable two-object scene for binding group {g} of step {step}")
            if self.cfg.binding_named == "first_shape":
                named = 0 if objects[0]["shape"] < objects[1]["shape"] else 1
            else:
                named = int(np.random.default_rng([self.seed, index, 3]).integers(2))
            plan += [(index, None, None, (named, False)), (index, None, None, (named, True))]
        return plan

    def attributes(self, step: int) -> torch.Tensor:
        """Main (shape, colour) of each item of this step, colour -1 for one without a name. -> LongTensor (B, 2).
        Right after batches(step) (as in a training step) the drawn items' labels are reused: no second plan."""
        if self._drawn is not None and self._drawn[0] == step:
            return self._drawn[1]
        scenes = [_scene(index, self.cfg, self.split, self.seed, shape, place, bind)[0]
                  for index, shape, place, bind in self.plan(step)]
        return _main_attributes(scenes)

    def scene_config(self, step: int, index: int) -> ShapesConfig:
        """The config scene `index` of this step is drawn with: after the shape phase, a `late_background_share` of
        the scenes (a seeded draw per scene, so a group's copies share it) take the `late_background` range."""
        cfg = self.cfg
        if cfg.late_background is None or step < cfg.shape_first_steps:
            return cfg
        share = cfg.late_background_share
        if cfg.late_background_ramp:  # grows linearly, the whole share after late_background_ramp steps
            share *= min(1.0, (step - cfg.shape_first_steps + 1) / cfg.late_background_ramp)
        if np.random.default_rng([self.seed, index, 2]).random() >= share:
            return cfg
        return self._late

    def __call__(self, step: int) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        plan = self.plan(step)
        items = [make_item(index, self.scene_config(step, index), self.split, self.seed, shape, place, bind)
                 for index, shape, place, bind in plan]
        self._drawn = (step, _main_attributes(items))
        images = torch.stack([to_tensor(item["image"]) for item in items])  # (B, 3, S, S)
        indices = torch.tensor([index for index, *_ in plan], dtype=torch.long)
        return images, [item["caption"] for item in items], indices


def _main_attributes(scenes: list[dict[str, Any]]) -> torch.Tensor:
    """(shape, colour) of each scene's main object -> LongTensor (B, 2)."""
    return torch.tensor([[scene["shape"], scene["colour"]] for scene in scenes], dtype=torch.long)
