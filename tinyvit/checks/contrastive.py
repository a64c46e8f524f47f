"""Graders for notebook 4: the contrastive (InfoNCE) loss."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .. import contrastive
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
