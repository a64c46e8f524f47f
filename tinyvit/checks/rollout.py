"""Graders for notebook 5: the CLS token's attention map of one layer, and attention rollout by hand."""
from __future__ import annotations

from typing import Callable

import torch

from .. import rollout
from .attention import imprecise, nearly
from .core import Verdict, call, close, fail, grader, passed

FORBIDDEN = {"tinyvit.attention_rollout": rollout.attention_rollout,
             "tinyvit.cls_rollout_map": rollout.cls_rollout_map}


def random_attention(B: int, h: int, N: int, generator: torch.Generator) -> torch.Tensor:
    """Softmax weights with clear peaks, as a trained layer has. -> (B, h, N, N), rows summing to 1."""
    return (2 * torch.randn(B, h, N, N, generator=generator)).softmax(dim=-1)


@grader
def check_cls_attention_map(fn: Callable) -> Verdict:
    """Grade `fn(weights, grid)`: one layer's (B, h, N, N) weights -> (B, h, gh, gw), each head's CLS row without
    its CLS entry, folded onto the gh x gw patch grid (raw weights, not renormalised)."""
    generator = torch.Generator().manual_seed(4)
    for B, h, (gh, gw) in ((2, 2, (2, 3)), (1, 3, (3, 3))):
        N = gh * gw + 1
        weights = random_attention(B, h, N, generator)  # (B, h, N, N)
        expected = weights[:, :, 0, 1:].reshape(B, h, gh, gw)  # (B, h, gh, gw)
        got = call(fn, weights.clone(), (gh, gw), forbidden=FORBIDDEN)
        if not isinstance(got, torch.Tensor):
            return fail(got)
        if tuple(got.shape) != tuple(expected.shape):
            if tuple(got.shape) == (B, gh, gw):
                return fail(f"got {tuple(got.shape)}: one map for all heads; keep one map per head, "
                            f"(B, h, gh, gw) = {tuple(expected.shape)}")
            return fail(f"for weights of shape {tuple(weights.shape)} and grid {(gh, gw)} expected maps of shape "
                        f"{tuple(expected.shape)} (B, h, gh, gw), got {tuple(got.shape)}")
        if close(got, expected):
            continue
        got = got.detach()
        if close(got, weights[:, :, 1:, 0].reshape(B, h, gh, gw)):
            return fail("this is the CLS column: how much each patch reads from the CLS token. The CLS token's "
                        "own attention is its row, the query axis's first entry",
                        hint="weights[b, head, i, j] is query i looking at key j")
        if close(got, weights[:, :, 0, :-1].reshape(B, h, gh, gw)):
            return fail("the last patch is missing and the CLS entry kept: the row's first entry is the CLS "
                        "token looking at itself; the patches are the entries after it")
        if close(got, weights[:, :, 0, 1:].reshape(B, h, gw, gh).transpose(-2, -1)):
            return fail("the map is transposed: patches are numbered row by row (left to right along the top "
                        "row first), so patch k sits at row k // gw, column k % gw",
                        hint="reshape to (gh, gw) directly; no transpose is needed")
        if close(got, expected / expected.sum(dim=(-2, -1), keepdim=True)):
            return fail("each map is renormalised to sum to 1 over the patches: keep the raw weights (the share "
                        "the CLS token puts on itself is then what is missing from 1)")
        if close(got, weights[:, :, 1, 1:].reshape(B, h, gh, gw)):
            return fail("this is row 1, the first patch's attention: the CLS token is token 0")
        if nearly(got, expected):
            return fail(imprecise(got, expected))
        return fail(f"the shape is right but the values differ (weights {tuple(weights.shape)}, grid {(gh, gw)}): "
                     "take row 0 of each head, drop its first entry, fold the rest onto the grid")
    return passed("correct: each head's CLS row over the patches, on the patch grid")


@grader
def check_rollout(fn: Callable) -> Verdict:
    """Grade `fn(attentions)`: depth x (B, h, N, N) -> (B, N, N), attention rollout (Abnar & Zuidema, 2020): per
    layer the heads' mean plus the identity, rows renormalised; the layers multiplied, the last one leftmost."""
    generator = torch.Generator().manual_seed(5)
    for depth, B, h, N in ((3, 2, 2, 5), (2, 1, 3, 4)):
        attentions = [random_attention(B, h, N, generator) for _ in range(depth)]
        expected = rollout.attention_rollout(attentions)  # (B, N, N)
        got = call(fn, [a.clone() for a in attentions], forbidden=FORBIDDEN)
        if not isinstance(got, torch.Tensor):
            return fail(got)
        if tuple(got.shape) != tuple(expected.shape):
            if tuple(got.shape) == (B, h, N, N):
                return fail(f"got {tuple(got.shape)}: one result per head; average the heads of each layer "
                            f"first, for (B, N, N) = {tuple(expected.shape)}")
            return fail(f"for {depth} layers of {tuple(attentions[0].shape)} expected {tuple(expected.shape)} "
                        f"(B, N, N), got {tuple(got.shape)}")
        if close(got, expected):
            continue
        got = got.detach()
        eye = torch.eye(N)
        mean = [a.mean(dim=1) for a in attentions]  # depth x (B, N, N)
        rows = lambda m: m / m.sum(dim=-1, keepdim=True)  # noqa: E731
        if close(got, rollout.attention_rollout(attentions, residual=False)):
            return fail("the identity is missing: a block adds its input back (x + attention), so each layer's "
                        "mixing is the attention plus the identity, rows renormalised",
                        hint="without it, the CLS token keeps almost none of itself through the layers")
        if close(got, _chain([m + eye for m in mean])):
            return fail(f"rows sum to {2 ** depth}, not 1: after adding the identity, renormalise each row "
                        "(divide it by its sum)")
        if close(got, _chain([rows(m + eye) for m in mean], last_left=False)):
            return fail("the layers are multiplied in the wrong order: the last layer goes leftmost, "
                        "R = A_L ... A_2 A_1, since each layer mixes what the layers below produced",
                        hint="update the running product as (this layer) @ (product so far)")
        if close(got, _chain([(m + eye) / (m + eye).sum(dim=-2, keepdim=True) for m in mean])):
            return fail("the columns are renormalised; each row (one query's weights) should sum to 1")
        for fusion in ("max", "min"):
            if close(got, rollout.attention_rollout(attentions, head_fusion=fusion)):
                return fail(f"the heads are fused by their {fusion}: average them (the mean of the heads)")
        if close(got, _chain([rows(a.sum(dim=1) + eye) for a in attentions])):
            return fail("the heads are summed before the identity is added, so the attention outweighs the "
                        f"residual {h} to 1: average the heads instead")
        if depth > 1 and (close(got, rows(mean[-1] + eye)) or close(got, rows(mean[0] + eye))):
            return fail(f"only one layer is in the result: multiply all {depth} layers together")
        if nearly(got, expected):
            return fail(imprecise(got, expected))
        return fail(f"the shape is right but the values differ ({depth} layers of {tuple(attentions[0].shape)}): "
                     "per layer, mean over heads -> add identity -> renormalise rows; then multiply the layers")
    return passed("correct: attention rollout, every row a distribution over the input tokens")


def _chain(mixings: list[torch.Tensor], last_left: bool = True) -> torch.Tensor:
    """The product of per-layer (B, N, N) mixings, the last one leftmost (or, wrongly, rightmost)."""
    out = mixings[0]
    for m in mixings[1:]:
        out = m @ out if last_left else out @ m  # (B, N, N)
    return out
