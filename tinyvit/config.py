"""Configs: small frozen dataclasses passed whole to the modules that use them, plus seeding.

`ViTConfig()` is the chapter's ViT-Tiny ("Detailed Specifications"). Variants are made with
`dataclasses.replace(cfg, depth=2)`, never by editing a default.
"""
from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

# The source system (the chapter's configs/vision_tiny.json) names the same fields differently.
SOURCE_KEYS = {
    "img_size": "image_size",
    "patch": "patch_size",
    "d_model": "dim",
    "n_layers": "depth",
    "n_heads": "heads",
    "d_ff": "mlp_dim",
}


class DictConfig:
    """What every config shares: `to_dict`, and `from_dict`, which refuses unknown or doubled keys by name."""

    KEY_ALIASES: dict[str, str] = {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return _from_dict(cls, data, aliases=cls.KEY_ALIASES)


@dataclass(frozen=True)
class ViTConfig(DictConfig):
    KEY_ALIASES = SOURCE_KEYS  # from_dict also reads the source system's key names (not a field: no annotation)
    image_size: int = 224
    patch_size: int = 16  # 224 / 16 = 14 -> a 14x14 grid of 196 patches, + 1 CLS token = 197
    in_channels: int = 3
    dim: int = 128
    depth: int = 4
    heads: int = 2
    mlp_dim: int = 512
    dropout: float = 0.1
    # Not in the chapter: dropout on the attention probabilities. 0 keeps PyTorch's fused attention kernel
    # on the CPU (with it, training falls back to a slower path); timm's ViTs also default to 0.
    attn_dropout: float = 0.0
    out_dim: int = 256  # the projector's output: the Thinker's width
    # Where the learned patch positions start: "normal" (trunc-normal, std 0.02, as ViT does) or "sincos" (the 2-D
    # sine-cosine table, positions.sincos_positions), which tells patches apart by place from the first step.
    pos_init: str = "normal"

    def __post_init__(self):  # fail early, with a message
        if self.pos_init not in ("normal", "sincos"):
            raise ValueError(f"pos_init must be 'normal' or 'sincos', got {self.pos_init!r}")
        if self.pos_init == "sincos" and self.dim % 4:
            raise ValueError(f"pos_init 'sincos' needs dim divisible by 4, got {self.dim}")
        for name in ("image_size", "patch_size", "in_channels", "dim", "depth", "heads", "mlp_dim", "out_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads} (each head needs dim // heads)")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")

    @property
    def grid_size(self) -> int:
        """Patches along one side: 224 // 16 = 14."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """P = 14 * 14 = 196."""
        return self.grid_size**2

    @property
    def num_tokens(self) -> int:
        """N = P + 1 (the CLS token) = 197."""
        return self.num_patches + 1

    @property
    def patch_dim(self) -> int:
        """Numbers in one flattened patch: C * p * p = 3 * 16 * 16 = 768."""
        return self.in_channels * self.patch_size**2

    @property
    def head_dim(self) -> int:
        """Dh = D // h = 64."""
        return self.dim // self.heads

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "ViTConfig":
        return cls.from_dict(read_json_object(path))


def _from_dict(cls, data: dict[str, Any], aliases: dict[str, str] | None = None):
    """Map keys through `aliases`, refuse unknown or doubled keys with a message naming them."""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__} expects a JSON object of settings, got {type(data).__name__}")
    aliases = aliases or {}
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    fields = set(types)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = aliases.get(key, key)
        if name not in fields:
            raise ValueError(f"unknown {cls.__name__} key {key!r}; expected some of {sorted(fields | set(aliases))}")
        if name in kwargs:
            raise ValueError(f"{cls.__name__} key {name!r} given twice (as {key!r} and under another name)")
        kwargs[name] = _checked(cls, key, types[name], value)
    return cls(**kwargs)


_KINDS = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}
_WORDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}


def _checked(cls, key: str, kind: str, value: Any) -> Any:
    """`value` if it has the field's type (an int is a float too; a bool is never a number), else a ValueError
    naming the key, the type expected and what came. A JSON list becomes the tuple a tuple field holds."""
    if kind.startswith("tuple[") and isinstance(value, (list, tuple)):
        items = kind[len("tuple["):-1].split(", ")
        if len(value) == len(items):
            return tuple(_checked(cls, f"{key}[{i}]", t, v) for i, (t, v) in enumerate(zip(items, value)))
        raise ValueError(f"{cls.__name__} key {key!r} must hold {len(items)} values, got {value!r}")
    if kind in _KINDS and (not isinstance(value, _KINDS[kind]) or (kind != "bool" and isinstance(value, bool))):
        got = "null" if value is None else f"{type(value).__name__} {value!r}"
        raise ValueError(f"{cls.__name__} key {key!r} must be {_WORDS[kind]}, got {got}")
    return float(value) if kind == "float" else value


def read_json_object(path: str | Path) -> dict[str, Any]:
    """Read a JSON file that must hold one object; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid UTF-8 JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def seed_everything(seed: int) -> None:
    """Seed Python's `random`, NumPy and torch, so a notebook or test run repeats exactly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


TEXT_KINDS = ("mean", "transformer")


@dataclass(frozen=True)
class TextConfig(DictConfig):
    """The caption side: SentencePiece vocabulary, context length, and the text encoder's shape."""

    vocab_size: int = 256
    context_length: int = 32  # tokens per caption, BOS and EOS included; longer captions are truncated
    # "mean": the chapter's mean-pooled token embeddings (a bag of words); "transformer": a small encoder
    kind: str = "mean"
    dim: int = 128
    depth: int = 2  # transformer kind only
    heads: int = 2  # transformer kind only
    mlp_dim: int = 512  # transformer kind only
    dropout: float = 0.0
    out_dim: int = 256  # the shared image-text embedding size E; must equal ViTConfig.out_dim

    def __post_init__(self):
        if self.kind not in TEXT_KINDS:
            raise ValueError(f"TextConfig.kind must be one of {TEXT_KINDS}, got {self.kind!r}")
        for name in ("vocab_size", "context_length", "dim", "depth", "heads", "mlp_dim", "out_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"TextConfig.{name} must be a positive integer, got {value!r}")
        if self.context_length < 3:
            raise ValueError(f"context_length must leave room for BOS, one token and EOS (>= 3), "
                             f"got {self.context_length}")
        if self.dim % self.heads:
            raise ValueError(f"TextConfig dim {self.dim} is not divisible by heads {self.heads}")


@dataclass(frozen=True)
class TrainConfig(DictConfig):
    """How to train: optimiser, schedule, batch, evaluation cadence, seed, device."""

    steps: int = 600
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    grad_clip: float = 1.0
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0  # the temperature is clamped at 1/100, as in CLIP
    eval_every: int = 100  # 0: evaluate only at the end
    checkpoint_every: int = 0  # 0: checkpoint only at the end
    seed: int = 0
    device: str = "cpu"  # "auto" picks a GPU when one is present
    # "auto": mixed precision on CUDA, fp32 elsewhere; "fp32": never mixed; "bf16": bfloat16 autocast on any device,
    # worth it on CPUs with AVX-512 BF16 or AMX, slow on CPUs without them (benchmarks/README.md)
    precision: str = "auto"

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(self, name)!r}")
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be positive, got {self.lr!r}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2: contrastive learning needs negatives in the batch")
        if self.device not in ("auto", "cpu", "cuda", "mps"):
            raise ValueError(f"device must be auto, cpu, cuda or mps, got {self.device!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")


@dataclass(frozen=True)
class ThinkerConfig(DictConfig):
    """The Thinker: a small causal language model reading [image token(s), question, answer] (tinyvit.thinker)."""

    vocab_size: int = 128
    dim: int = 256  # the projector's output size: image tokens enter the Thinker as they are
    depth: int = 2
    heads: int = 4
    mlp_dim: int = 512
    dropout: float = 0.0
    variant: str = "cls"  # "cls": the chapter's projector(CLS), 1 image token; "all": projector on all N tokens
    image_tokens: int = 1  # 1 for "cls"; the CLIP encoder's N (65 at 64x64 with 8x8 patches, 197 at 224/16) for "all"
    context_length: int = 40  # text tokens: BOS, question, EOS, answer, EOS
    # Whiten the image tokens with the mean and covariance of the training images' tokens (a fixed linear map,
    # set by Thinker.set_whitening) before the image LayerNorm: every direction of the token then has the same
    # scale, the faint ones too (see thinker.whitening).
    whiten: bool = False

    def __post_init__(self):
        if not isinstance(self.whiten, bool):
            raise ValueError(f"ThinkerConfig.whiten must be True or False, got {self.whiten!r}")
        if self.variant not in ("cls", "all"):
            raise ValueError(f"ThinkerConfig.variant must be 'cls' or 'all', got {self.variant!r}")
        for name in ("vocab_size", "dim", "depth", "heads", "mlp_dim", "image_tokens", "context_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ThinkerConfig.{name} must be a positive integer, got {value!r}")
        if self.variant == "cls" and self.image_tokens != 1:
            raise ValueError(f"variant 'cls' hands over exactly 1 image token, got image_tokens={self.image_tokens}")
        if self.dim % self.heads:
            raise ValueError(f"ThinkerConfig dim {self.dim} is not divisible by heads {self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ThinkerConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.context_length < 5:
            raise ValueError(f"context_length must hold BOS, a question token, EOS, an answer token and EOS (>= 5), "
                             f"got {self.context_length}")

    @property
    def max_tokens(self) -> int:
        """Longest input: image tokens + text tokens."""
        return self.image_tokens + self.context_length
