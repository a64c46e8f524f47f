"""tinyvit: the chapter's ViT-Tiny vision encoder and its CLIP-style pretraining, small enough to read and run on a CPU."""
from .config import TextConfig, TrainConfig, ViTConfig, seed_everything
from .model import (
    MLP, Attention, Block, VisionEncoder, VisionTransformer, forward_flops, param_report, resample_pos_embed,
)
from .patches import PatchEmbed, patchify, unpatchify

__all__ = [
    "ViTConfig", "TextConfig", "TrainConfig", "seed_everything",
    "patchify", "unpatchify", "PatchEmbed",
    "Attention", "MLP", "Block", "VisionTransformer", "VisionEncoder", "param_report", "resample_pos_embed",
    "forward_flops",
]
