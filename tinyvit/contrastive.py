"""CLIP-style pretraining: an image encoder and a text encoder pulled together by InfoNCE.

Shapes: B batch (B images and their B captions), E the shared embedding size, T tokens per caption.
Logits are scaled cosine similarities; row i compares image i with every caption, and the right caption for
image i is caption i, so the targets are the diagonal: `arange(B)`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import TextConfig, ViTConfig
from .model import VisionEncoder
from .text import TextEncoder


def clip_logits(img_emb: torch.Tensor, txt_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """exp(logit_scale) * cosine similarities; inputs already L2-normalised. (B, E), (B', E) -> (B, B')."""
    return logit_scale.exp() * img_emb @ txt_emb.T  # (B, B')


def one_way_loss(logits: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """The chapter's loss: each image must pick its caption among the batch's captions (image -> text only).
    (B, B) -> scalar. `keep` (B, B) bool drops the negatives where it is False (the diagonal is always kept)."""
    targets = torch.arange(logits.shape[0], device=logits.device)
    if keep is not None:
        keep = keep | torch.eye(len(keep), dtype=torch.bool, device=keep.device)
        logits = logits.masked_fill(~keep, float("-inf"))
    return F.cross_entropy(logits, targets)


def clip_loss(logits: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE, as CLIP trains: the mean of the image -> text and text -> image cross-entropies.
    (B, B) -> scalar. `keep` (B, B) bool, symmetric, drops the negatives where it is False."""
    if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"clip_loss expects square (B, B) logits, got shape {tuple(logits.shape)}")
    if keep is not None and keep.shape != logits.shape:
        raise ValueError(f"keep must have the logits' shape {tuple(logits.shape)}, got {tuple(keep.shape)}")
    return (one_way_loss(logits, keep) + one_way_loss(logits.T, None if keep is None else keep.T)) / 2


def shared_attribute_mask(attributes: torch.Tensor) -> torch.Tensor:
    """Which pairs may serve as negatives: those that share at least one attribute. (B, K) long -> (B, B) bool.
    With K = (shape, colour), a blue square is contrasted with blue triangles and red squares, never with a red
    circle: so the loss never teaches that blue rules circles out, which would wreck unseen pairs."""
    return (attributes[:, None, :] == attributes[None, :, :]).any(dim=-1)  # (B, B)


class CLIP(nn.Module):
    """A `VisionEncoder` and a `TextEncoder` projecting into one E-d space, and a learnable temperature.

    `forward(images, tokens)`: (B, C, H, W), (B, T) long -> logits (B, B), image i against caption j.
    The temperature lives in log space as `logit_scale = log(1 / T)`, so it stays positive under gradient steps.
    """

    def __init__(self, vision_cfg: ViTConfig, text_cfg: TextConfig, init_temperature: float = 0.07):
        super().__init__()
        if vision_cfg.out_dim != text_cfg.out_dim:
            raise ValueError(
                f"image and text embeddings must have the same size: ViTConfig.out_dim is {vision_cfg.out_dim}, "
                f"TextConfig.out_dim is {text_cfg.out_dim}"
            )
        if not init_temperature > 0:
            raise ValueError(f"init_temperature must be positive, got {init_temperature!r}")
        self.vision_cfg, self.text_cfg = vision_cfg, text_cfg
        self.visual = VisionEncoder(vision_cfg)
        self.text = TextEncoder(text_cfg)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings. (B, C, H, W) -> (B, E)."""
        return F.normalize(self.visual(images), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """L2-normalised caption embeddings. (B, T) long -> (B, E)."""
        return F.normalize(self.text(tokens), dim=-1)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W), (B, T) -> (B, B) logits."""
        return clip_logits(self.encode_image(images), self.encode_text(tokens), self.logit_scale)

    @property
    def temperature(self) -> float:
        """The current softmax temperature 1 / exp(logit_scale)."""
        return math.exp(-self.logit_scale.item())

    @torch.no_grad()
    def clamp_logit_scale(self, max_scale: float = 100.0) -> None:
        """Keep exp(logit_scale) in [1, max_scale] (temperature in [1/max_scale, 1]), as CLIP does: without a
        ceiling the scale can grow until the softmax is one-hot and training turns unstable."""
        self.logit_scale.clamp_(0.0, math.log(max_scale))

    def configs(self) -> dict[str, dict]:
        """The two configs as plain dicts, as checkpoints store them."""
        return {"vision": self.vision_cfg.to_dict(), "text": self.text_cfg.to_dict()}


def clip_batch_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The loss function `train.fit` calls: batch = (images (B, C, H, W), tokens (B, T)[, keep (B, B) bool])
    -> symmetric InfoNCE."""
    images, tokens, *keep = batch
    return clip_loss(model(images, tokens), *keep)
