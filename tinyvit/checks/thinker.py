"""Graders for notebook 6: the Thinker."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .. import thinker
from .core import Verdict, backpropagates, call, close, fail, grader, passed, scalar

FORBIDDEN = {"tinyvit.thinker.answer_loss": thinker.answer_loss}


@grader
def check_answer_loss(fn: Callable) -> Verdict:
    """Grade `fn(logits, targets, left_out)`: the mean cross-entropy of (M, V) logits against (M,) target pieces,
    where the pieces marked True in the (M, V) bool `left_out` take no part in that row's softmax (notebook 6's
    cure for the language model's shortcut) -> scalar."""
    generator = torch.Generator().manual_seed(3)
    for M, V in ((5, 7), (3, 4)):
        logits = torch.randn(M, V, generator=generator) * 2
        targets = torch.randint(0, V, (M,), generator=generator)
        left_out = torch.rand(M, V, generator=generator) < 0.3
        left_out[torch.arange(M), targets] = False  # a row's own answer is never left out
        left_out[0] = False  # one row leaves nothing out
        logits.requires_grad_()
        got = scalar(call(fn, logits, targets.clone(), left_out.clone(), forbidden=FORBIDDEN), over="the rows")
        if isinstance(got, str):
            return fail(got)
        expected = F.cross_entropy(logits.masked_fill(left_out, float("-inf")), targets)
        if close(got, expected):
            reason = backpropagates(got, (logits,), expected)
            if reason:
                return fail(reason)
            continue
        got, logits, expected = got.detach(), logits.detach(), expected.detach()
        if not torch.isfinite(got):
            return fail("the loss is not finite: a left-out piece must drop out of the sum of exponentials, and "
                         "the right answer must never be left out")
        if close(got, F.cross_entropy(logits, targets)):
            return fail("this is the plain cross-entropy: the left-out pieces still take part in the softmax")
        if close(got, F.cross_entropy(logits.masked_fill(left_out, 0.0), targets)):
            return fail("a logit of 0 still counts in the softmax (e^0 = 1): a left-out piece needs e^logit = 0")
        if close(got, F.cross_entropy(logits.masked_fill(~left_out, -1e9), targets)):  # finite, inverted
            return fail("the mask is the wrong way round: True marks the pieces to leave out")
        if close(got, M * expected):
            return fail(f"the loss is {M}x too large: average over the rows instead of summing")
        return fail(f"the value differs from the expected loss ({M} rows, {V} pieces): each row's softmax runs "
                     "over the pieces it keeps, and the loss is -log of the target's probability")
    return passed("correct: the cross-entropy with left-out answers, and it backpropagates")
