import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tinyvit import ViTConfig, VisionEncoder, VisionTransformer, forward_flops, param_report

SMALL = ViTConfig(image_size=32, patch_size=8, dim=32, depth=2, heads=4, mlp_dim=64)


def closed_form_params(cfg: ViTConfig) -> dict[str, int]:
    D, M = cfg.dim, cfg.mlp_dim
    block = 2 * (2 * D) + (D * 3 * D + 3 * D) + (D * D + D) + (D * M + M) + (M * D + D)
    parts = {
        "patch embedding": cfg.patch_dim * D + D,
        "CLS token": D,
        "position embeddings": cfg.num_tokens * D,
        "blocks": cfg.depth * block,
        "final norm": 2 * D,
        "projector": D * cfg.out_dim,
    }
    parts["total"] = sum(parts.values())
    return parts


@pytest.mark.parametrize("cfg", [ViTConfig(), SMALL])
def test_parameter_counts_match_the_closed_form(cfg):
    report = dict(param_report(VisionEncoder(cfg)))
    expected = closed_form_params(cfg)
    for name in ("patch embedding", "CLS token", "position embeddings", "final norm", "projector", "total"):
        assert report[name] == expected[name], name
    assert sum(report[f"block {i + 1}"] for i in range(cfg.depth)) == expected["blocks"]
    assert report["total"] == sum(p.numel() for p in VisionEncoder(cfg).parameters())


def test_param_report_rows_in_order():
    names = [name for name, _ in param_report(VisionTransformer(SMALL))]
    assert names == ["patch embedding", "CLS token", "position embeddings", "block 1", "block 2", "final norm", "total"]


def test_param_report_refuses_a_model_with_parameters_it_does_not_know():
    model = VisionEncoder(SMALL)
    model.extra = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="parameters outside the known components"):
        param_report(model)


@pytest.mark.parametrize("cfg", [ViTConfig(), dataclasses.replace(SMALL, image_size=48, patch_size=16, heads=2)])
def test_forward_flops_equal_torchs_flop_counter(cfg):
    # As notebook 3 checks it: every token through every block (the path that returns the attention weights),
    # matrix products only, which is all that FlopCounterMode counts.
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        VisionEncoder(cfg).eval()(torch.rand(1, 3, cfg.image_size, cfg.image_size), return_attention=True)
    flops = forward_flops(cfg)
    assert counter.get_total_flops() == flops["total"] == sum(n for name, n in flops.items() if name != "total")


def test_forward_flops_at_the_chapters_config():
    flops = forward_flops(ViTConfig())
    assert flops["patch embedding"] == 2 * 196 * 768 * 128
    assert flops["attention scores"] == 4 * 2 * 197 * 197 * 128
    assert 0.42e9 < flops["total"] < 0.44e9
