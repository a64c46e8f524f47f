"""tinyvit: the chapter's ViT-Tiny vision encoder and its CLIP-style pretraining, small enough to read and run on a CPU.

Figures (`tinyvit.viz`), notebook widgets (`tinyvit.widgets`) and exercise graders (`tinyvit.checks`) are imported as
submodules, so `import tinyvit` needs neither matplotlib nor ipywidgets.
"""
from .accounting import forward_flops, param_report
from .config import TextConfig, TrainConfig, ViTConfig, seed_everything
from .contrastive import CLIP, clip_logits, clip_loss, one_way_loss
from .data import BatchConfig, ShapesConfig
from .recipes import default_recipe, make_recipe
from .evaluate import (
    embed_images, evaluate_clip, evaluate_shapes, recall_at_k, similarity_matrix, zero_shot_classify,
)
from .model import MLP, Attention, Block, VisionEncoder, VisionTransformer, init_weights
from .positions import resample_pos_embed, sincos_positions
from .patches import PatchEmbed, patchify, unpatchify
from .rollout import attention_rollout, cls_rollout_map, object_patch_mask
from .runs import load_checkpoint, load_clip_encoder, load_run, read_run_config, save_checkpoint
from .text import TextEncoder, Tokenizer
from .thinker import Thinker, generate, load_thinker, train_thinker
from .train import fit, lr_at, resolve_device

__all__ = [
    "ViTConfig", "TextConfig", "TrainConfig", "seed_everything",
    "patchify", "unpatchify", "PatchEmbed",
    "Attention", "MLP", "Block", "VisionTransformer", "VisionEncoder", "init_weights", "param_report",
    "resample_pos_embed", "forward_flops", "sincos_positions",
    "attention_rollout", "cls_rollout_map", "object_patch_mask",
    "Tokenizer", "TextEncoder",
    "CLIP", "clip_logits", "clip_loss", "one_way_loss", "default_recipe", "make_recipe", "BatchConfig",
    "ShapesConfig",
    "fit", "lr_at", "resolve_device",
    "load_run", "load_clip_encoder", "read_run_config", "save_checkpoint", "load_checkpoint",
    "Thinker", "generate", "train_thinker", "load_thinker",
    "similarity_matrix", "recall_at_k", "zero_shot_classify", "embed_images", "evaluate_clip", "evaluate_shapes",
]
