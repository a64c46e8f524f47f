"""Graders for notebook 3: attention."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

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
            return fail("the scores are not scaled: divide q @ k^T by sqrt(d), the head's width, before the softmax")
        if close(got, _attend(scores / Dh, v)):
            return fail("the scores are divided by d; the scale is 1 / sqrt(d)")
        if close(got, (scores / math.sqrt(Dh)).softmax(dim=-2) @ v):
            return fail("the softmax runs over the queries: each query's weights (one row) should sum to 1")
        if close(got, scores / math.sqrt(Dh) @ v):
            return fail("the scores are used without a softmax: turn each row into weights that sum to 1")
        if close(got, _attend(scores.transpose(-2, -1) / math.sqrt(Dh), v)):
            return fail("the score matrix is transposed: row i should hold query i against every key (q @ k^T)")
        return fail(f"the shape is right but the values differ (q, k, v of shape {(B, N, Dh)}): "
                     "check the order scores -> scale -> softmax -> weighted sum of v")
    return passed("correct: softmax(q k^T / sqrt(d)) v")


def _attend(scores: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return scores.softmax(dim=-1) @ v  # (B, N, Dh)
