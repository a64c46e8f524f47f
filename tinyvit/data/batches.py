"""Batch samplers: seeded batches of a data set, and streams of fresh shapes scenes with hard-negative groups, and
which pairs of such a batch the contrastive loss may contrast.

Both samplers are pure functions of (seed, step), which is what makes resuming training exact.
Shapes: B batch, S image side. loader(step) -> (images (B, 3, S, S), captions list[str], indices LongTensor (B,)).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import DictConfig
from ..contrastive import shared_attribute_mask
from .images import to_tensor
from .shapes import COLOURS, HELDOUT, SHAPES, ShapesConfig, make_item, make_scene

# A hard-negative group swaps the main shape among those its colour allows: a named colour has one held-out shape.
MAX_GROUP_SIZE = min(sum((s, c) not in HELDOUT for s in SHAPES) for c in COLOURS)


@dataclass(frozen=True)
class BatchConfig(DictConfig):
    """How a shapes training stream is batched (HardNegativeBatches) and which pairs its loss contrasts."""

    # The share of each batch that comes in groups of `group_size` copies of one scene differing only in the
    # main object's shape (and so only in the caption's shape word).
    hard_fraction: float = 0.0
    group_size: int = 4
    # Contrast only pairs that share the main shape or the main colour (contrastive.shared_attribute_mask).
    shared_attribute_negatives: bool = False
    # For the first N training steps contrast only the copies of one scene (a hard-negative group, so hard_fraction
    # must be 1): shape is then the only thing that tells captions apart, and colour cannot crowd it out.
    shape_first_steps: int = 0

    def __post_init__(self):
        if isinstance(self.hard_fraction, bool) or not isinstance(self.hard_fraction, (int, float)) \
                or not 0 <= self.hard_fraction <= 1:
            raise ValueError(f"BatchConfig.hard_fraction must be a number in [0, 1], got {self.hard_fraction!r}")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) \
                or not 2 <= self.group_size <= MAX_GROUP_SIZE:
            raise ValueError(f"BatchConfig.group_size must be an integer between 2 and {MAX_GROUP_SIZE} (the shapes "
                             f"every named colour allows), got {self.group_size!r}")
        if not isinstance(self.shared_attribute_negatives, bool):
            raise ValueError(f"BatchConfig.shared_attribute_negatives must be True or False, "
                             f"got {self.shared_attribute_negatives!r}")
        if isinstance(self.shape_first_steps, bool) or not isinstance(self.shape_first_steps, int) \
                or self.shape_first_steps < 0:
            raise ValueError(f"BatchConfig.shape_first_steps must be a non-negative integer, "
                             f"got {self.shape_first_steps!r}")
        if self.shape_first_steps and self.hard_fraction != 1.0:
            raise ValueError(f"BatchConfig.shape_first_steps contrasts the copies of one scene, so every item must be "
                             f"in a hard-negative group: need hard_fraction 1.0, got {self.hard_fraction} "
                             f"(or set shape_first_steps to 0)")


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
    """Batches of fresh training scenes in which colour and position cannot tell captions apart: a
    `batches.hard_fraction` of each batch comes in groups of `batches.group_size` copies of one scene that differ
    only in the main object's shape (and so only in the caption's shape word); the rest are ordinary scenes. With
    hard_fraction 0 this is a plain stream of fresh scenes, item j of step s being scene s * B + j. A pure
    function of (seed, step), like Batches. loader(step) -> (images (B, 3, S, S), captions list[str], indices
    LongTensor (B,) of the scenes: the same for every copy of one scene)."""

    def __init__(self, shapes: ShapesConfig, batches: BatchConfig, batch_size: int, seed: int = 0):
        if not isinstance(shapes, ShapesConfig) or not isinstance(batches, BatchConfig):
            raise TypeError(f"HardNegativeBatches(shapes, batches, batch_size, seed) takes a ShapesConfig and a "
                            f"BatchConfig, got {type(shapes).__name__} and {type(batches).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.shapes, self.batches, self.batch_size, self.seed = shapes, batches, batch_size, seed
        self.group_size = batches.group_size
        self.groups = int(batch_size * batches.hard_fraction) // batches.group_size
        self._drawn: tuple[int, torch.Tensor] | None = None  # (step, attributes) of the batch drawn last

    def plan(self, step: int) -> list[tuple[int, int | None]]:
        """(scene index, main shape or None) for each of the B items of this step: None for a scene as it is."""
        rng = np.random.default_rng([self.seed, step, 1])
        first = step * self.batch_size
        plan: list[tuple[int, int | None]] = []
        for g in range(self.groups):
            index = first + g
            colour = make_scene(index, self.shapes, "train", self.seed)[0]["colour"]  # -1: a colour without a name
            shapes = [k for k, s in enumerate(SHAPES) if colour < 0 or (s, COLOURS[colour]) not in HELDOUT]
            plan += [(index, int(k)) for k in rng.choice(shapes, self.group_size, replace=False)]
        plan += [(first + j, None) for j in range(self.groups, self.batch_size - len(plan) + self.groups)]
        return plan

    def attributes(self, step: int) -> torch.Tensor:
        """Main (shape, colour) of each item of this step, colour -1 for one without a name. -> LongTensor (B, 2).
        Right after loader(step) (as in a training step) the drawn items' labels are reused: no second plan."""
        if self._drawn is not None and self._drawn[0] == step:
            return self._drawn[1]
        return _main_attributes([make_scene(index, self.shapes, "train", self.seed, shape)[0]
                                 for index, shape in self.plan(step)])

    def __call__(self, step: int) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        plan = self.plan(step)
        items = [make_item(index, self.shapes, "train", self.seed, shape) for index, shape in plan]
        self._drawn = (step, _main_attributes(items))
        images = torch.stack([to_tensor(item["image"]) for item in items])  # (B, 3, S, S)
        indices = torch.tensor([index for index, _ in plan], dtype=torch.long)
        return images, [item["caption"] for item in items], indices


def _main_attributes(scenes: list[dict[str, Any]]) -> torch.Tensor:
    """(shape, colour) of each scene's main object -> LongTensor (B, 2)."""
    return torch.tensor([[scene["shape"], scene["colour"]] for scene in scenes], dtype=torch.long)


def negatives_mask(batches: BatchConfig, loader: HardNegativeBatches, step: int,
                   indices: torch.Tensor) -> torch.Tensor | None:
    """Which pairs of a shapes batch the loss may contrast (None: all of them). During the first
    `shape_first_steps`, only copies of one scene (same scene index: they differ in shape alone); then, with
    `shared_attribute_negatives`, pairs that share the main shape or colour. -> (B, B) bool or None."""
    if step < batches.shape_first_steps:
        return shared_attribute_mask(indices[:, None])  # one attribute, the scene: a block per group
    if batches.shared_attribute_negatives:
        return shared_attribute_mask(loader.attributes(step))
    return None
