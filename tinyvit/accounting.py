"""The chapter's arithmetic: parameters per component of a model, and the FLOPs of one image's forward pass."""
from __future__ import annotations

from torch import nn

from .config import ViTConfig


def param_report(model: nn.Module) -> list[tuple[str, int]]:
    """Parameters per component of a VisionTransformer/VisionEncoder, ending with the total."""
    rows = [
        ("patch embedding", count_params(model.patch_embed)),
        ("CLS token", model.cls_token.numel()),
        ("position embeddings", model.pos_embed.numel()),
    ]
    rows += [(f"block {i + 1}", count_params(block)) for i, block in enumerate(model.blocks)]
    rows.append(("final norm", count_params(model.norm)))
    if hasattr(model, "projector"):
        rows.append(("projector", count_params(model.projector)))
    total = count_params(model)
    if sum(n for _, n in rows) != total:
        raise ValueError("param_report: the model has parameters outside the known components")
    rows.append(("total", total))
    return rows


def count_params(module: nn.Module) -> int:
    """Numbers in all the parameters of `module`."""
    return sum(p.numel() for p in module.parameters())


def forward_flops(cfg: ViTConfig) -> dict[str, int]:
    """Floating-point operations (multiply and add counted apart) of one image's forward pass, by part, when every
    token goes through every block (`forward_features` and the projector).

    Matrix products only; norms, softmax and GELU add under 1 %. At the chapter's config the total is ~0.43 GFLOP.
    """
    N, P, D, M = cfg.num_tokens, cfg.num_patches, cfg.dim, cfg.mlp_dim
    per_block = {
        "qkv": 2 * N * D * 3 * D,
        "attention scores": 2 * N * N * D,  # q @ k^T over all heads
        "attention x values": 2 * N * N * D,
        "out projection": 2 * N * D * D,
        "mlp": 2 * 2 * N * D * M,
    }
    flops = {"patch embedding": 2 * P * cfg.patch_dim * D}
    flops.update({name: cfg.depth * n for name, n in per_block.items()})
    flops["projector"] = 2 * D * cfg.out_dim
    flops["total"] = sum(flops.values())
    return flops
