"""Graders for notebook 6: the Thinker (the causal mask, greedy decoding, the answer loss)."""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import thinker
from ..config import ThinkerConfig
from ..text import EOS_ID
from .core import Verdict, backpropagates, call, close, fail, grader, passed, scalar

FORBIDDEN = {"tinyvit.thinker.answer_loss": thinker.answer_loss, "tinyvit.thinker.generate": thinker.generate,
             "tinyvit.thinker.answer_questions": thinker.answer_questions}


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


# ---- the causal mask ------------------------------------------------------------------------------------

@grader
def check_causal_mask(fn: Callable) -> Verdict:
    """Grade `fn(T)`: the (T, T) causal mask of a decoder, row i the query, column j the key. Either a bool mask
    (True = may attend, the package's convention) or an additive float mask (0 = may attend, -inf = blocked)."""
    for T in (6, 9, 1):
        got = call(fn, T)
        if not isinstance(got, torch.Tensor):
            return fail(got)
        if tuple(got.shape) != (T, T):
            return fail(f"for T = {T} expected shape ({T}, {T}), one row per query and one column per key, "
                        f"got {tuple(got.shape)}")
        allowed = _allowed(got)
        if isinstance(allowed, str):
            return fail(allowed)
        causal = torch.ones(T, T, dtype=torch.bool).tril()  # (T, T)
        if torch.equal(allowed, causal):
            continue
        if torch.equal(allowed, ~causal):
            return fail("the mask is the wrong way round: it allows exactly what should be blocked",
                        hint="in a bool mask True means 'may attend'; in an additive one 0 means 'may attend'")
        if torch.equal(allowed, causal.T):
            return fail("the mask is transposed: each position may see the ones after it, the future, instead "
                        "of the ones before it",
                        hint="row i is the query: it may attend to the keys in columns 0 .. i")
        if torch.equal(allowed, causal.tril(-1)):
            return fail("the diagonal is blocked: a position must also see itself (position 0 would see "
                        "nothing at all, and its softmax would be 0/0)",
                        hint="the mask keeps the diagonal: j <= i, not j < i")
        if allowed.all():
            return fail("nothing is masked: every position sees every other, so in training it could read the "
                        "very token it is asked to predict")
        return fail(f"for T = {T} the mask allows the wrong entries: row i may attend to columns 0 .. i and to "
                    "nothing after")
    return passed("correct: each position sees itself and the positions before it")


def _allowed(mask: torch.Tensor) -> torch.Tensor | str:
    """A submitted mask as a bool table (True = may attend), or why it cannot be read as a mask."""
    if mask.dtype == torch.bool:
        return mask
    if not mask.is_floating_point():
        return (f"the mask has dtype {mask.dtype}: attention takes a bool mask (True = may attend) or an "
                "additive float mask (0 or -inf)")
    if bool(((mask == 0) | (mask == 1)).all()) and bool((mask == 1).any()):
        return ("a float mask is added to the scores, so 1 and 0 block nothing: use a bool mask (True = may "
                "attend), or add -inf where a position may not look")
    blocked = mask <= -1e4
    if not bool(((mask == 0) | blocked).all()):
        return "an additive mask holds only 0 (may attend) and -inf (blocked); yours holds other values"
    return mask == 0


# ---- greedy decoding ------------------------------------------------------------------------------------

class _Scripted(nn.Module):
    """A small random Thinker whose next piece depends on the last one fed in (so a decoder that does not feed
    its pieces back repeats itself), and that writes EOS once the text reaches `eos_at` tokens (never if None)."""

    def __init__(self, eos_at: int | None):
        super().__init__()
        self.cfg = ThinkerConfig(vocab_size=24, dim=32, depth=1, heads=2, mlp_dim=64, context_length=20)
        with torch.random.fork_rng():  # the same weights every time, and the learner's random state untouched
            torch.manual_seed(5)
            self.inner = thinker.Thinker(self.cfg).eval()
        self.eos_at = eos_at

    def forward(self, image_tokens: torch.Tensor, ids: torch.Tensor, segments=None) -> torch.Tensor:
        logits = self.inner(image_tokens, ids, segments)  # (B, K + T, V)
        V = self.cfg.vocab_size
        following = (ids[:, -1] * 5 + 1) % (V - 4) + 4  # (B,): never a special piece
        logits[:, -1] += 20 * F.one_hot(following, V).to(logits.dtype)
        logits[:, -1, EOS_ID] = 40.0 if self.eos_at is not None and ids.shape[1] >= self.eos_at else -40.0
        return logits


def _decode(model: nn.Module, image: torch.Tensor, prompt: torch.Tensor, max_new: int, position: int = -1,
            stop: bool = True, feed: bool = True) -> list[int]:
    """Greedy decoding and the grader's variants of it: scores read at `position`; no stop at EOS; pieces not fed
    back."""
    ids, out = prompt, []
    with torch.no_grad():
        for _ in range(max_new):
            piece = int(model(image, ids)[0, position].argmax())
            if stop and piece == EOS_ID:
                break
            out.append(piece)
            if feed:
                ids = torch.cat([ids, torch.tensor([[piece]])], dim=1)  # (1, T0 + t)
    return out


def _as_ids(result: Any) -> Any:
    """A learner's answer as a 1-D tensor of ids: a list of ints, a (n,) or (1, n) tensor; else unchanged."""
    if isinstance(result, (list, tuple)) and all(isinstance(i, (int, torch.Tensor)) for i in result):
        return torch.tensor([int(i) for i in result], dtype=torch.long)
    if isinstance(result, torch.Tensor) and result.dim() == 2 and result.shape[0] == 1:
        return result[0]
    return result


@grader
def check_greedy_decode(fn: Callable) -> Verdict:
    """Grade `fn(model, image_tokens, prompt, max_new_tokens)`: image tokens (1, K, D), prompt ids (1, T0) ->
    the new piece ids (a list, EOS not included), each the argmax at the last position, until EOS or
    max_new_tokens pieces."""
    image = torch.randn(1, 1, 32, generator=torch.Generator().manual_seed(1))  # (1, K, D)
    for eos_at, T0, max_new in ((7, 4, 8), (None, 3, 5), (3, 3, 6)):
        model = _Scripted(eos_at)
        prompt = torch.tensor([[2, 9, 12, 3][:T0 - 1] + [EOS_ID]])  # (1, T0): BOS, question, EOS
        expected = thinker.generate(model, image, prompt, max_new_tokens=max_new)[0]
        got = call(lambda *args: _as_ids(fn(*args)), model, image, prompt.clone(), max_new, forbidden=FORBIDDEN)
        if not isinstance(got, torch.Tensor):
            return fail(got)
        if got.dim() != 1:
            return fail(f"expected the new pieces as a list of ids (or a 1-D tensor), got shape {tuple(got.shape)}")
        got = got.tolist()
        if got == expected:
            continue
        prompt_list, n = prompt[0].tolist(), len(expected)
        if got[:T0] == prompt_list and got[T0:] == expected:
            return fail("your list starts with the prompt: return only the pieces the model wrote")
        if got == expected + [EOS_ID]:
            return fail("your answer ends with EOS: EOS ends the answer, it is not part of it",
                        hint="check for EOS before you append the piece")
        if eos_at is not None and got == _decode(model, image, prompt, max_new, stop=False):
            return fail(f"the model wrote EOS after {n} pieces and you went on: stop at EOS")
        if got == _decode(model, image, prompt, max_new, feed=False):
            return fail("every step reads the same sequence: feed each new piece back in before the next step",
                        hint="after choosing a piece, concatenate it to the ids along the sequence axis")
        if got == _decode(model, image, prompt, max_new, position=0):
            return fail("the next piece is predicted at the last position of the sequence, not at the first")
        if got[:n] == expected and len(got) > max_new:
            return fail(f"you wrote {len(got)} pieces where max_new_tokens is {max_new}: stop at that many")
        if eos_at is None and got == expected[:-1]:
            return fail(f"you wrote {len(got)} pieces where {max_new} were allowed and no EOS came: an "
                        "off-by-one in the length limit")
        step = next((t for t, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), n))
        return fail(f"the pieces differ from greedy decoding at step {step} (prompt of {T0} ids, at most "
                    f"{max_new} new): take the highest-scoring piece each step, and stop at EOS")
    return passed("correct: greedy decoding, stopping at EOS or at the length limit")
