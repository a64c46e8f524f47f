"""Graders for notebook 4: the contrastive (InfoNCE) loss."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .. import contrastive, evaluate
from .core import Verdict, backpropagates, call, close, fail, grader, passed, scalar

FORBIDDEN = {"tinyvit.clip_loss": contrastive.clip_loss, "tinyvit.clip_logits": contrastive.clip_logits,
             "tinyvit.one_way_loss": contrastive.one_way_loss}


@grader
def check_info_nce(fn: Callable) -> Verdict:
    """Grade `fn(image_emb, text_emb, temperature)`: the symmetric CLIP loss of L2-normalised (B, E) pairs -> scalar."""
    generator = torch.Generator().manual_seed(2)
    for B, E, temperature in ((6, 16, 0.07), (4, 8, 0.5)):
        image_emb = F.normalize(torch.randn(B, E, generator=generator), dim=-1).requires_grad_()
        text_emb = F.normalize(torch.randn(B, E, generator=generator), dim=-1).requires_grad_()
        got = scalar(call(fn, image_emb, text_emb, temperature, forbidden=FORBIDDEN), over="the batch")
        if isinstance(got, str):
            return fail(got)
        logits = image_emb @ text_emb.T  # (B, B): row i is image i against every caption
        expected = symmetric_info_nce(logits / temperature)
        if close(got, expected):
            reason = backpropagates(got, (image_emb, text_emb), expected)
            if reason:
                return fail(reason)
            continue
        got, logits, expected = got.detach(), logits.detach(), expected.detach()
        targets = torch.arange(B)
        image_to_text = F.cross_entropy(logits / temperature, targets)
        text_to_image = F.cross_entropy(logits.T / temperature, targets)
        if close(got, image_to_text) or close(got, text_to_image):
            return fail("this is a one-way loss (one direction only): average the image->text and the "
                         "text->image cross-entropies")
        if close(got, image_to_text + text_to_image):
            return fail("both directions are there, but added: the loss is their mean")
        if close(got, symmetric_info_nce(logits)) or close(got, symmetric_info_nce(logits * temperature)):
            return fail("the temperature is missing or multiplied: divide the similarities by the temperature")
        if close(got, B * expected):
            return fail(f"the loss is {B}x too large: average over the batch instead of summing")
        return fail(f"the value differs from the expected loss (batch {B}, temperature {temperature}): "
                     "matching pairs sit on the diagonal of the similarity matrix")
    return passed("correct: the symmetric InfoNCE (CLIP) loss, and it backpropagates")


def symmetric_info_nce(logits: torch.Tensor) -> torch.Tensor:
    """CLIP's loss from (B, B) scaled similarities: the mean over both directions of -log softmax of the matching
    pair, i.e. (1/2B) * sum_i [ (log sum_j e^{l_ij} - l_ii) + (log sum_j e^{l_ji} - l_ii) ]. -> scalar."""
    diagonal = logits.diagonal()  # (B,)
    image_to_text = (logits.logsumexp(dim=1) - diagonal).mean()
    text_to_image = (logits.logsumexp(dim=0) - diagonal).mean()
    return (image_to_text + text_to_image) / 2


RECALL_FORBIDDEN = {"tinyvit.evaluate.recall_at_k": evaluate.recall_at_k,
                    "tinyvit.evaluate.retrieval_metrics": evaluate.retrieval_metrics}


def _number(fn: Callable) -> Callable:
    """The learner's function with a float or int result turned into a 0-d tensor, so `call` can check it."""
    def wrapped(*args):
        got = fn(*args)
        return torch.tensor(float(got)) if isinstance(got, (float, int)) and not isinstance(got, bool) else got
    return wrapped


def _recall(sim: torch.Tensor, k: int) -> float:
    """Share of rows whose own column (the diagonal) is among their k most similar. (n, n) -> float."""
    rank = (sim > sim.diagonal()[:, None]).sum(dim=1)  # (n,): columns that beat the right one
    return (rank < k).double().mean().item()


@grader
def check_recall_at_k(fn: Callable) -> Verdict:
    """Grade `fn(sim, k)`: image->text recall@k of a paired (n, n) similarity matrix (row i = image i, its caption
    is column i) -> the share of rows whose own caption is among the k most similar columns, a number in [0, 1]."""
    generator = torch.Generator().manual_seed(4)
    for n, k in ((12, 3), (10, 2), (9, 1)):
        sim = torch.randn(n, n, generator=generator) + 1.5 * torch.eye(n)  # (n, n): the right pair scores higher
        expected = _recall(sim, k)
        got = call(_number(fn), sim.clone(), k, forbidden=RECALL_FORBIDDEN)
        if not isinstance(got, torch.Tensor):
            return fail(got)
        if got.numel() != 1:
            return fail(f"expected one number, got a tensor of shape {tuple(got.shape)}: average the hits over "
                        "the rows", hint="a hit is a row whose own column is among its k largest; recall@k is "
                                         "the share of rows that hit")
        value = got.double().item()
        if abs(value - expected) < 1e-6:
            continue
        if abs(value - _recall(sim.T, k)) < 1e-6:
            return fail("this is text->image recall (down the columns): rank the captions of each image, "
                        "along each row", hint="row i holds image i against every caption")
        if abs(value - expected * n) < 1e-6:
            return fail(f"this is a count of hits (out of {n}), not a share: divide by the number of rows")
        if abs(value - 100 * expected) < 1e-6:
            return fail("this is a percentage: return a share between 0 and 1")
        if abs(value - _recall(-sim, k)) < 1e-6:
            return fail("the k *least* similar captions were taken: a better match has a higher similarity",
                        hint="topk returns the largest values unless told otherwise; sort descending")
        if k > 1 and abs(value - _recall(sim, 1)) < 1e-6:
            return fail(f"only the single best caption counts here (recall@1): with k={k} a row hits when its "
                        f"caption is anywhere in the top {k}")
        if any(abs(value - _recall(sim, j)) < 1e-6 for j in (k - 1, k + 1) if j >= 1):
            return fail(f"off by one in k: with k={k} exactly the {k} most similar captions count",
                        hint="rank 0 is the best caption; a hit is rank < k")
        return fail(f"the value differs from the expected recall@{k} for a {n} x {n} matrix: a row hits when its "
                    "own column (the diagonal) is among its k largest similarities")
    return passed("correct: image->text recall@k")
