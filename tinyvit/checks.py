"""Self-check: graders for the coding exercises and the chapter's questions as multiple-choice quizzes.

A grader calls the learner's function on small inputs, compares with a reference, prints one short hint that
names what is wrong (a shape, an ordering, a missing scale), returns True or False, and never prints the answer.
A function that returns None or raises NotImplementedError counts as "not attempted yet".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .patches import patchify

NOT_ATTEMPTED = "not attempted yet: fill in the function, then run this cell again"


def check_patchify(fn: Callable) -> bool:
    """Grade `fn(images, patch_size)`: (B, C, H, W) -> (B, P, C*p*p), patches row-major, flattened channel-first."""
    generator = torch.Generator().manual_seed(0)
    for shape, p in (((2, 3, 8, 8), 4), ((1, 3, 12, 8), 4), ((2, 1, 6, 9), 3)):
        images = torch.rand(shape, generator=generator)
        B, C, H, W = shape
        expected = patchify(images, p)  # (B, P, C*p*p)
        got = _call(fn, images.clone(), p)
        if not isinstance(got, torch.Tensor):
            return _fail(got)
        if tuple(got.shape) != tuple(expected.shape):
            return _fail(f"for images of shape {shape} and patch size {p} expected shape {tuple(expected.shape)} "
                         f"(B, P, C*p*p), got {tuple(got.shape)}")
        if _close(got, expected):
            continue
        grid = images.reshape(B, C, H // p, p, W // p, p)  # (B, C, gh, p, gw, p)
        column_major = grid.permute(0, 4, 2, 1, 3, 5).reshape(B, -1, C * p * p)  # (B, P, C*p*p)
        channels_last = grid.permute(0, 2, 4, 3, 5, 1).reshape(B, -1, C * p * p)  # (B, P, p*p*C)
        if _close(got, column_major):
            return _fail("the patches come out column by column (a transposed grid): number them row by row, "
                         "left to right along the top row first")
        if _close(got, channels_last) and C > 1:
            return _fail("each patch is flattened channels-last (p, p, C); flatten it channels-first (C, p, p), "
                         "the order a Conv2d kernel reads")
        if _close(got.sort(dim=-1).values, expected.sort(dim=-1).values):
            return _fail("each output row holds the right pixels in a scrambled order: check which axes you "
                         "permute before the last reshape")
        return _fail(f"the shape is right but the values differ (images {shape}, patch size {p}): "
                     "patch 0 should be the top-left p x p block of every channel")
    print("correct: patches in row-major order, each flattened channel-first")
    return True


def check_attention_head(fn: Callable) -> bool:
    """Grade `fn(q, k, v)`: one head of scaled dot-product attention, (B, N, Dh) x 3 -> (B, N, Dh)."""
    generator = torch.Generator().manual_seed(1)
    for B, N, Dh in ((2, 5, 16), (1, 7, 4)):
        q, k, v = (2 * torch.randn(B, N, Dh, generator=generator) for _ in range(3))
        scores = q @ k.transpose(-2, -1)  # (B, N, N)
        expected = _attend(scores / math.sqrt(Dh), v)  # (B, N, Dh)
        got = _call(fn, q.clone(), k.clone(), v.clone())
        if not isinstance(got, torch.Tensor):
            return _fail(got)
        if tuple(got.shape) != tuple(expected.shape):
            return _fail(f"for q, k, v of shape {(B, N, Dh)} expected an output of shape {tuple(expected.shape)}, "
                         f"got {tuple(got.shape)}")
        if _close(got, expected):
            continue
        if _close(got, _attend(scores, v)):
            return _fail("the scores are not scaled: divide q @ k^T by sqrt(d), the head's width, before the softmax")
        if _close(got, _attend(scores / Dh, v)):
            return _fail("the scores are divided by d; the scale is 1 / sqrt(d)")
        if _close(got, (scores / math.sqrt(Dh)).softmax(dim=-2) @ v):
            return _fail("the softmax runs over the queries: each query's weights (one row) should sum to 1")
        if _close(got, scores / math.sqrt(Dh) @ v):
            return _fail("the scores are used without a softmax: turn each row into weights that sum to 1")
        if _close(got, _attend(scores.transpose(-2, -1) / math.sqrt(Dh), v)):
            return _fail("the score matrix is transposed: row i should hold query i against every key (q @ k^T)")
        return _fail(f"the shape is right but the values differ (q, k, v of shape {(B, N, Dh)}): "
                     "check the order scores -> scale -> softmax -> weighted sum of v")
    print("correct: softmax(q k^T / sqrt(d)) v")
    return True


def check_info_nce(fn: Callable) -> bool:
    """Grade `fn(image_emb, text_emb, temperature)`: the symmetric CLIP loss of L2-normalised (B, E) pairs -> scalar."""
    generator = torch.Generator().manual_seed(2)
    for B, E, temperature in ((6, 16, 0.07), (4, 8, 0.5)):
        image_emb = F.normalize(torch.randn(B, E, generator=generator), dim=-1)
        text_emb = F.normalize(torch.randn(B, E, generator=generator), dim=-1)
        logits = image_emb @ text_emb.T  # (B, B): row i is image i against every caption
        expected = symmetric_info_nce(logits / temperature)
        got = _scalar(_call(fn, image_emb.clone(), text_emb.clone(), temperature), over="the batch")
        if isinstance(got, str):
            return _fail(got)
        if _close(got, expected):
            continue
        targets = torch.arange(B)
        image_to_text = F.cross_entropy(logits / temperature, targets)
        text_to_image = F.cross_entropy(logits.T / temperature, targets)
        if _close(got, image_to_text) or _close(got, text_to_image):
            return _fail("this is a one-way loss (one direction only): average the image->text and the "
                         "text->image cross-entropies")
        if _close(got, image_to_text + text_to_image):
            return _fail("both directions are there, but added: the loss is their mean")
        if _close(got, symmetric_info_nce(logits)) or _close(got, symmetric_info_nce(logits * temperature)):
            return _fail("the temperature is missing or multiplied: divide the similarities by the temperature")
        if _close(got, B * expected):
            return _fail(f"the loss is {B}x too large: average over the batch instead of summing")
        return _fail(f"the value differs from the expected loss (batch {B}, temperature {temperature}): "
                     "matching pairs sit on the diagonal of the similarity matrix")
    print("correct: the symmetric InfoNCE (CLIP) loss")
    return True


def symmetric_info_nce(logits: torch.Tensor) -> torch.Tensor:
    """CLIP's loss from (B, B) scaled similarities: the mean over both directions of -log softmax of the matching
    pair, i.e. (1/2B) * sum_i [ (log sum_j e^{l_ij} - l_ii) + (log sum_j e^{l_ji} - l_ii) ]. -> scalar."""
    diagonal = logits.diagonal()  # (B,)
    image_to_text = (logits.logsumexp(dim=1) - diagonal).mean()
    text_to_image = (logits.logsumexp(dim=0) - diagonal).mean()
    return (image_to_text + text_to_image) / 2


def check_answer_loss(fn: Callable) -> bool:
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
        expected = F.cross_entropy(logits.masked_fill(left_out, float("-inf")), targets)
        got = _scalar(_call(fn, logits.clone(), targets.clone(), left_out.clone()), over="the rows")
        if isinstance(got, str):
            return _fail(got)
        if _close(got, expected):
            continue
        if not torch.isfinite(got):
            return _fail("the loss is not finite: a left-out piece must drop out of the sum of exponentials, and "
                         "the right answer must never be left out")
        if _close(got, F.cross_entropy(logits, targets)):
            return _fail("this is the plain cross-entropy: the left-out pieces still take part in the softmax")
        if _close(got, F.cross_entropy(logits.masked_fill(left_out, 0.0), targets)):
            return _fail("a logit of 0 still counts in the softmax (e^0 = 1): a left-out piece needs e^logit = 0")
        if _close(got, F.cross_entropy(logits.masked_fill(~left_out, -1e9), targets)):  # finite, inverted
            return _fail("the mask is the wrong way round: True marks the pieces to leave out")
        if _close(got, M * expected):
            return _fail(f"the loss is {M}x too large: average over the rows instead of summing")
        return _fail(f"the value differs from the expected loss ({M} rows, {V} pieces): each row's softmax runs "
                     "over the pieces it keeps, and the loss is -log of the target's probability")
    print("correct: the cross-entropy with left-out answers")
    return True


@dataclass(frozen=True)
class Question:
    """A multiple-choice question: one correct option, and feedback for every option."""

    prompt: str
    options: tuple[str, ...]
    answer: int
    feedback: tuple[str, ...]

    def __post_init__(self):
        if len(self.options) != len(self.feedback) or not 0 <= self.answer < len(self.options):
            raise ValueError(f"question {self.prompt!r}: {len(self.options)} options, {len(self.feedback)} "
                             f"feedback lines and answer index {self.answer} do not fit together")

    def grade(self, choice: int | None) -> tuple[bool, str]:
        """(correct?, feedback) for the option index the learner chose."""
        if choice is None:
            return False, "pick an option first"
        if not 0 <= choice < len(self.options):
            raise ValueError(f"choice must be an option index 0..{len(self.options) - 1}, got {choice!r}")
        verdict = "Correct. " if choice == self.answer else "Not quite. "
        return choice == self.answer, verdict + self.feedback[choice]


def _attend(scores: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return scores.softmax(dim=-1) @ v  # (B, N, Dh)


def _call(fn: Callable, *args):
    """The learner's result, or a message string saying why there is none."""
    try:
        got = fn(*args)
    except NotImplementedError:
        return NOT_ATTEMPTED
    except Exception as err:  # the learner's code may fail in any way; report it, do not crash the grader
        return f"your function raised {type(err).__name__}: {err}"
    if got is None:
        return NOT_ATTEMPTED
    if not isinstance(got, torch.Tensor):
        return f"expected a torch.Tensor, got {type(got).__name__}"
    return got


def _scalar(got, over: str):
    """A loss grader's view of `_call`'s result: the 0-d tensor, or the message saying why there is none."""
    if not isinstance(got, torch.Tensor):
        return got
    if got.numel() != 1:
        return f"expected one number (a 0-d tensor), got a tensor of shape {tuple(got.shape)}: average over {over}"
    return got.reshape(())


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5)


def _fail(message: str) -> bool:
    print(message)
    return False


QUESTIONS = (
    Question(
        prompt="1. Why does the encoder cut the image into patches instead of attending over single pixels?",
        options=(
            "Attention compares every token with every other, so its cost grows with the square of the token "
            "count: 196 patch tokens instead of 50,176 pixel tokens means 65,536 times fewer attention entries.",
            "A transformer accepts at most 196 inputs.",
            "Single pixels lose their colour when they are embedded.",
            "Patches keep all of the image's information, pixels do not.",
        ),
        answer=0,
        feedback=(
            "196^2 = 38,416 entries per head against 50,176^2 (about 2.5 billion, 10 GB in fp32).",
            "Nothing in attention fixes the sequence length; only its cost grows, quadratically.",
            "A pixel token would still carry its three colour values.",
            "Patches hold exactly the same numbers as the pixels; the gain is fewer, larger tokens.",
        ),
    ),
    Question(
        prompt="2. What is the CLS token?",
        options=(
            "The average of the 196 patch tokens.",
            "A learned 128-d vector put in front of the patch tokens; it attends to them in every block, and "
            "its final state is the one the loss sees, so training makes it a summary of the image.",
            "The class label of the image, given as input.",
            "The top-left patch, which the model reads first.",
        ),
        answer=1,
        feedback=(
            "Mean pooling is the alternative to a CLS token, not what the CLS token is.",
            "It has no pixels of its own: it only collects, through attention.",
            "No label goes in; CLIP-style training has no classes at all.",
            "Patch 0 is the top-left patch; CLS comes before it, at token index 0.",
        ),
    ),
    Question(
        prompt="3. Into how many 16 x 16 patches is a 224 x 224 image cut?",
        options=("14", "196", "197", "256"),
        answer=1,
        feedback=(
            "14 is the count along one side: 224 / 16.",
            "14 x 14 = 196.",
            "197 is the number of tokens: the 196 patches plus CLS.",
            "256 is the number of pixels in one patch (16 x 16), or the projector's width.",
        ),
    ),
    Question(
        prompt="4. Why does the encoder keep only the CLS token's output?",
        options=(
            "Because the patch tokens are empty after the last block.",
            "Because the training loss is computed on CLS alone, so CLS learns to gather what the task needs, "
            "and the Thinker's interface takes one vector per image; the patch tokens still carry information.",
            "Because attention deletes the patch tokens' information once CLS has read it.",
            "Because averaging the patch tokens is impossible.",
        ),
        answer=1,
        feedback=(
            "They hold 196 x 128 numbers of context-mixed features; other models keep them all.",
            "Keeping only CLS is a design choice; mean pooling, or passing all tokens, also work.",
            "Attention only mixes: nothing is moved out of the patch tokens.",
            "Averaging the patch tokens (mean pooling) is a common alternative to a CLS token.",
        ),
    ),
    Question(
        prompt="5. Why is the 128-d CLS vector projected to 256 dimensions at the end?",
        options=(
            "To add detail: 256 numbers describe the image better than 128.",
            "Because attention needs 256 dimensions.",
            "So that the image token has the width of the Thinker's token embeddings and can sit in the "
            "same sequence as the text tokens.",
            "Because the contrastive loss only works in 256 dimensions.",
        ),
        answer=2,
        feedback=(
            "A linear map cannot add information: its 256 outputs span at most 128 dimensions.",
            "The encoder's attention runs at width 128.",
            "The projector is an adapter between two widths, 128 and the Thinker's 256.",
            "The loss works in any shared width; 256 is chosen to match the Thinker.",
        ),
    ),
)
