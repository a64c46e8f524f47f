"""Recipes: the settings of `python -m tinyvit train` in one place. `default_recipe` is the shapes recipe;
`make_recipe` lays a config file and command-line flags over it. The CLI's other defaults sit here too.

A recipe is a dict of configs: {"vision": ViTConfig, "text": TextConfig, "train": TrainConfig,
"shapes": ShapesConfig, "batches": BatchConfig}.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .config import SOURCE_KEYS, TextConfig, TrainConfig, ViTConfig, read_json_object
from .data import BatchConfig, ShapesConfig
from .runs import convert_old_configs

DEFAULT_STEPS = 3000  # the steps the shapes recipe is built for; shorter runs say so in their summary
SHAPE_PHASE_SHARE = 0.5  # the default recipe's share of steps that contrast only the copies of one scene
EVAL_ITEMS = 500  # items scored at the end of a run; 200 of them during it
TOKENIZER_CAPTIONS = 4000  # shapes captions the tokenizer is trained on
PRELOAD_BYTES = 1 << 30  # manifests whose images fit in 1 GiB as float tensors are read (and checked) up front
CHECKPOINT_EVERY = 100  # the CLI's checkpoint interval (steps) when the config sets none: what --resume continues
SECTIONS = ("vision", "text", "train", "shapes", "batches")
FLAGS = {"image_size": ("vision", "image_size"), "patch_size": ("vision", "patch_size"),
         "text_encoder": ("text", "kind"), "vocab_size": ("text", "vocab_size"), "steps": ("train", "steps"),
         "batch_size": ("train", "batch_size"), "lr": ("train", "lr"), "seed": ("train", "seed"),
         "device": ("train", "device"), "precision": ("train", "precision"),
         "checkpoint_every": ("train", "checkpoint_every")}


def default_recipe(steps: int = DEFAULT_STEPS) -> dict[str, Any]:
    """The shapes recipe for `steps` training steps. The chapter's width, depth, heads and MLP are kept; 64x64
    images with 8x8 patches give 65 tokens instead of the chapter's 197, so a step costs about a third as much, and
    the shapes still span several patches. What makes it learn shape and not only colour (benchmarks/README.md):
    - light backgrounds: every named colour is darker than the paper, so an edge has one sign for the linear
      patch embedding;
    - hard-negative groups (one scene drawn with 4 different main shapes) fill every batch, and 30 % of the scenes
      are in colours without a name, captioned by shape alone;
    - for the first SHAPE_PHASE_SHARE of the steps the loss contrasts only the copies of one scene (shape alone),
      then pairs that share the main shape or colour (so colour is learned, and never taught to rule a shape out);
    - dropout 0: every step sees fresh images, so there is nothing to overfit."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return {
        "vision": ViTConfig(image_size=64, patch_size=8, dropout=0.0),
        "text": TextConfig(vocab_size=256, context_length=24),
        "train": TrainConfig(steps=steps, batch_size=64, lr=1e-3, warmup_steps=min(100, steps // 10), eval_every=250,
                             device="auto"),
        "shapes": ShapesConfig(image_size=64, background=(0.75, 0.95), unnamed_fraction=0.3),
        "batches": BatchConfig(hard_fraction=1.0, group_size=4, shared_attribute_negatives=True,
                               shape_first_steps=round(steps * SHAPE_PHASE_SHARE)),
    }


SHORT_STEPS = 1400  # the short recipe's steps: a few minutes on a laptop CPU (book appendix B has its cost)
SHORT_SHAPE_SHARE = 0.7  # its shape phase is longer: shape is the slow part, colour follows in a few hundred steps


def short_recipe(steps: int = SHORT_STEPS) -> dict[str, Any]:
    """The default recipe cut down for notebook 4: the same cures, on 32x32 images with 8x8 patches (17 tokens
    instead of 65, so a step costs about a quarter as much), with SHORT_SHAPE_SHARE of the steps in the shape
    phase, on the CPU. Book appendix B has what it reaches, over seeds, against the full recipe."""
    recipe = default_recipe(steps)
    return {
        "vision": dataclasses.replace(recipe["vision"], image_size=32),
        "text": recipe["text"],
        "train": dataclasses.replace(recipe["train"], eval_every=max(1, steps // 7), device="cpu"),
        "shapes": dataclasses.replace(recipe["shapes"], image_size=32),
        "batches": dataclasses.replace(recipe["batches"], shape_first_steps=round(steps * SHORT_SHAPE_SHARE)),
    }


def make_recipe(config_file: str | Path | dict | None = None, **flags: Any) -> dict[str, Any]:
    """The default recipe for the steps asked (a `steps` flag, else the config's train.steps, else 3000), then the
    config's sections laid over it, then the flags (None: not given). `config_file` is a JSON file (or the dict
    read from one) of {"vision", "text", "train", "shapes", "batches"} sections (a run's config.json works), or a
    bare ViT config. A shape phase the config names is kept, and must be shorter than the run."""
    unknown = set(flags) - set(FLAGS)
    if unknown:
        raise TypeError(f"make_recipe got unknown flags {sorted(unknown)}; expected some of {sorted(FLAGS)}")
    data = _read_config(config_file)
    name = "the config" if isinstance(config_file, dict) or config_file is None else str(config_file)
    steps = flags.get("steps")
    if steps is None:
        steps = data.get("train", {}).get("steps", DEFAULT_STEPS)
        try:
            TrainConfig.from_dict({"steps": steps})  # its type and value, checked before the recipe is built
        except ValueError as err:
            raise ValueError(f"{name}, section 'train': {err}") from None
    recipe = default_recipe(steps)
    for section, values in data.items():
        if section == "vision":
            values = {SOURCE_KEYS.get(k, k): v for k, v in values.items()}
        try:
            recipe[section] = type(recipe[section]).from_dict({**recipe[section].to_dict(), **values})
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name}, section {section!r}: {err}") from None
    changes: dict[str, dict[str, Any]] = {}
    for flag, value in flags.items():
        if value is not None:
            section, field = FLAGS[flag]
            changes.setdefault(section, {})[field] = value
    for section, values in changes.items():
        recipe[section] = dataclasses.replace(recipe[section], **values)
    phase, steps = recipe["batches"].shape_first_steps, recipe["train"].steps
    if phase and phase >= steps:
        raise ValueError(f"batches.shape_first_steps ({phase}) must be fewer than the training steps ({steps}): "
                         f"it is the first phase of the run; lower it, or leave it out to get "
                         f"round(steps * {SHAPE_PHASE_SHARE})")
    recipe["shapes"] = dataclasses.replace(recipe["shapes"], image_size=recipe["vision"].image_size)
    return recipe


def _read_config(config_file: str | Path | dict | None) -> dict[str, dict]:
    """The sections of a config file, checked: a bare ViT config becomes {"vision": ...}; "data" (where a run's
    data came from) is dropped; a run saved by older code is converted (runs.convert_old_configs)."""
    if config_file is None:
        return {}
    name = "the config" if isinstance(config_file, dict) else str(config_file)
    data = dict(config_file) if isinstance(config_file, dict) else read_json_object(config_file)
    if not (set(SECTIONS) | {"data"}) & set(data):
        data = {"vision": data}  # a bare ViT config, e.g. the source system's vision_tiny.json
    data.pop("data", None)
    for section, values in data.items():
        if section not in SECTIONS or not isinstance(values, dict):
            raise ValueError(f"{name}: unknown section {section!r}; expected some of {', '.join(SECTIONS)}, each a "
                             f"JSON object")
    return convert_old_configs(data, name)  # a run saved by older tinyvit: its batch keys were in "shapes"
