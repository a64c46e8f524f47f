"""Images from files: reading any picture as RGB, the tensors a model takes (and back, for display), and
manifests, a JSON list or JSONL of {"image", "caption"} items.

Shapes: S image side. Images are uint8 (S, S, 3) as stored, float (3, S, S) as fed to a model.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)
_MEAN, _STD = torch.tensor(IMAGE_MEAN).view(3, 1, 1), torch.tensor(IMAGE_STD).view(3, 1, 1)  # made once, not per image


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
            if not -2**63 <= value < 2**63:
                raise ValueError(f"item {item['image']} has {key!r} {value}, far beyond any class number")
        return torch.tensor([item[key] for item in self.items], dtype=torch.long)


class SkipUnreadable(Dataset):
    """A data set of (image, caption) items whose unreadable images are skipped: item i's image failing to load
    gives the next readable item instead, and its path joins `bad` (in the order met). More than `limit` of them
    is an error naming the last. `on_skip(path, reason)` is called once per bad path. ds[i] -> (image, caption)."""

    def __init__(self, dataset: ManifestDataset, limit: int, on_skip=None, bad: list[str] | None = None):
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"the limit of unreadable images must be a non-negative integer, got {limit!r}")
        self.dataset, self.limit, self.on_skip = dataset, limit, on_skip
        self.bad = [] if bad is None else bad  # shared with the caller, so a checkpoint can carry it

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def captions(self) -> list[str]:
        return self.dataset.captions

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        for k in range(len(self.dataset)):
            j = (i + k) % len(self.dataset)
            path = self.dataset.items[j]["image"]
            if path in self.bad:
                continue
            try:
                return self.dataset[j]
            except (ValueError, FileNotFoundError) as err:
                self.bad.append(path)
                if len(self.bad) > self.limit:
                    raise ValueError(f"{len(self.bad)} unreadable images met, more than the limit of {self.limit} "
                                     f"(--max-bad-images); the last: {err}") from None
                if self.on_skip is not None:
                    self.on_skip(path, str(err))
        raise ValueError("no image of the data set is readable")
