"""Graders for notebook 3: one attention head, then multi-head attention built from it."""
from __future__ import annotations

import math
from typing import Callable

import torch

from .. import model
from .core import Verdict, call, close, fail, grader, passed

FORBIDDEN = {"tinyvit.Attention": model.Attention}


@grader
def check_attention_head(fn: Callable) -> Verdict:
    """Grade `fn(q, k, v)`: one head of scaled dot-product attention, (B, N, Dh) x 3 -> (B, N, Dh)."""
    generator = torch.Generator().manual_seed(1)
    for B, N, Dh in ((2, 5, 16), (1, 7, 4)):
        q, k, v = (2 * torch.randn(B, N, Dh, generator=generator) for _ in range(3))
        scores = q @ k.transpose(-2, -1)  # (B, N, N)
        expected = _attend(scores / math.sqrt(Dh), v)  # (B, N, Dh)
        got = call(fn, q.clone(), k.clone(), v.clone(), forbidden=FORBIDDEN)
        if not isinstance(got, torch.Tensor):
            return fail(got)
        if tuple(got.shape) != tuple(expected.shape):
            return fail(f"for q, k, v of shape {(B, N, Dh)} expected an output of shape {tuple(expected.shape)}, "
                         f"got {tuple(got.shape)}")
        if close(got, expected):
            continue
        if close(got, _attend(scores, v)):
            return fail("the scores are not scaled: divide q @ k^T by sqrt(d), the head's width, before the softmax",
                        hint="d is the last axis of q, the same for every query")
        if close(got, _attend(scores / Dh, v)):
            return fail("the scores are divided by d; the scale is 1 / sqrt(d)")
        if close(got, (scores / math.sqrt(Dh)).softmax(dim=-2) @ v):
            return fail("the softmax runs over the queries: each query's weights (one row) should sum to 1",
                        hint="the softmax goes along the last axis of the (B, N, N) scores, the keys")
        if close(got, scores / math.sqrt(Dh) @ v):
            return fail("the scores are used without a softmax: turn each row into weights that sum to 1")
        if close(got, _attend(scores.transpose(-2, -1) / math.sqrt(Dh), v)):
            return fail("the score matrix is transposed: row i should hold query i against every key (q @ k^T)")
        if nearly(got, expected):
            return fail(imprecise(got, expected))
        return fail(f"the shape is right but the values differ (q, k, v of shape {(B, N, Dh)}): "
                     "check the order scores -> scale -> softmax -> weighted sum of v")
    return passed("correct: softmax(q k^T / sqrt(d)) v")


@grader
def check_multi_head(fn: Callable) -> Verdict:
    """Grade `fn(q, k, v, heads)`: h heads side by side, (B, N, D) x 3 -> (B, N, D), the heads' outputs joined.
    Passed through the layer's output projection, the result must equal `tinyvit.Attention`'s explicit path."""
    generator = torch.Generator().manual_seed(3)
    for B, N, D, h in ((2, 5, 12, 3), (1, 6, 8, 2)):
        layer = model.Attention(D, h).eval()
        with torch.no_grad():  # larger weights than the init's, so each head's softmax has a clear peak
            for p in layer.parameters():
                p.copy_(0.5 * torch.randn(p.shape, generator=generator))
        x = torch.randn(B, N, D, generator=generator)
        with torch.no_grad():
            q, k, v = layer.qkv(x).split(D, dim=-1)  # 3 x (B, N, D)
            reference, _ = layer(x, return_attention=True)  # (B, N, D): the explicit path, after proj
        got = call(fn, q.clone(), k.clone(), v.clone(), h, forbidden=FORBIDDEN)
        if not isinstance(got, torch.Tensor):
            return fail(got)
        Dh = D // h
        if tuple(got.shape) != (B, N, D):
            return fail(_shape_mistake(tuple(got.shape), B, N, D, h))
        with torch.no_grad():
            projected = layer.proj(got.detach().float())  # (B, N, D)
        if close(projected, reference):
            continue
        got = got.detach()
        split = lambda t: t.view(B, N, h, Dh).transpose(1, 2)  # (B, h, N, Dh)  # noqa: E731
        joined = lambda o: o.transpose(1, 2).reshape(B, N, D)  # (B, h, N, Dh) -> (B, N, D)  # noqa: E731
        expected = joined(_heads(split(q), split(k), split(v), Dh))  # (B, N, D)
        scores = q @ k.transpose(-2, -1)  # (B, N, N): all channels at once
        if close(got, _attend(scores / math.sqrt(Dh), v)) or close(got, _attend(scores / math.sqrt(D), v)):
            return fail(f"one attention over all {D} channels: split q, k and v into {h} heads of {Dh} "
                        "channels, attend in each head apart, then join the outputs",
                        hint="every head has its own (N, N) weights; with one softmax over all channels there "
                             "is only one set of weights")
        if close(got, joined(_heads(split(q), split(k), split(v), D))):
            return fail(f"each head's scores are scaled by 1/sqrt({D}), the full width; a head scales by "
                        f"1/sqrt({Dh}), its own width",
                        hint="if you reused your one-head function, it takes the width from its q argument")
        interleaved = lambda t: t.view(B, N, Dh, h).permute(0, 3, 1, 2)  # (B, h, N, Dh)  # noqa: E731
        heads = _heads(interleaved(q), interleaved(k), interleaved(v), Dh)  # (B, h, N, Dh)
        if close(got, joined(heads)) or close(got, heads.permute(0, 2, 3, 1).reshape(B, N, D)):
            return fail("the heads are interleaved (channel j goes to head j mod h): each head owns a block "
                        f"of {Dh} neighbouring channels, head 0 the first block",
                        hint=f"head i's channels are i * {Dh} up to (i + 1) * {Dh}, not every {h}-th one")
        scrambled = lambda t: t.reshape(B, h, N, Dh)  # (B, h, N, Dh) without moving the axes  # noqa: E731
        heads = _heads(scrambled(q), scrambled(k), scrambled(v), Dh)  # (B, h, N, Dh)
        if close(got, heads.reshape(B, N, D)) or close(got, joined(heads)):
            return fail("q, k and v were reshaped straight to (B, h, N, Dh): that cuts the token axis into "
                        "heads instead of the channel axis, so tokens get mixed",
                        hint="first view the channels as (heads, Dh), giving (B, N, h, Dh), then swap the "
                             "token and head axes")
        if close(got, _heads(split(q), split(k), split(v), Dh).reshape(B, N, D)):
            return fail("the heads' outputs were reshaped to (B, N, D) while the head axis still stood before "
                        "the token axis: that mixes tokens from different heads",
                        hint="move the head axis back next to the channel axis before joining")
        if close(got, joined(_heads(split(q), split(k), split(v), Dh).flip(1))):
            return fail("the heads are joined in reverse order: head 0's output comes first")
        if nearly(projected, reference):
            return fail(imprecise(got, expected))
        return fail(f"the shape is right but the values differ (q, k, v of shape {(B, N, D)}, {h} heads): "
                     "split into heads, attend in each head, join the heads' outputs in order")
    return passed("correct: the heads attend apart and join back to (B, N, D), as tinyvit.Attention does")


def _shape_mistake(shape: tuple, B: int, N: int, D: int, h: int) -> str:
    Dh = D // h
    if shape == (B, N, Dh):
        return (f"got {shape}, one head's width: join all {h} heads' outputs (each {Dh} wide) back to "
                f"(B, N, D) = {(B, N, D)}, not their sum or mean")
    if shape == (B, h, N, Dh):
        return f"got {shape}: the heads are still on their own axis; join them to (B, N, D) = {(B, N, D)}"
    return f"for q, k, v of shape {(B, N, D)} and {h} heads expected an output of shape {(B, N, D)}, got {shape}"


def _heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, width: int) -> torch.Tensor:
    """All heads at once, scores scaled by 1/sqrt(width). (B, h, N, Dh) x 3 -> (B, h, N, Dh)."""
    return _attend(q @ k.transpose(-2, -1) / math.sqrt(width), v)


def _attend(scores: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return scores.softmax(dim=-1) @ v  # (..., N, Dh)


def nearly(got: torch.Tensor, expected: torch.Tensor) -> bool:
    """Right to two or three digits only: the computation is right, its precision is not."""
    return got.shape == expected.shape and torch.allclose(got.float(), expected.float(), rtol=2e-2, atol=2e-3)


def imprecise(got: torch.Tensor, expected: torch.Tensor) -> str:
    gap = (got.float() - expected.float()).abs().max().item()
    return (f"nearly right, but off by up to {gap:.1e}, more than float32 rounding: a value went through "
            "float16 or bfloat16, or a constant was rounded; compute in float32")
