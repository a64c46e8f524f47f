import math

import pytest
import torch
import torch.nn.functional as F

from tinyvit.checks import check_answer_loss


def grade(checker, fn, capsys):
    result = checker(fn)
    return result, capsys.readouterr().out


# ---- the answer loss with left-out pieces (notebook 6) -------------------------------------------------

def answer_loss_reference(logits, targets, left_out):
    return F.cross_entropy(logits.masked_fill(left_out, float("-inf")), targets)


def answer_loss_by_hand(logits, targets, left_out):  # the same, written out: -log(e^target / sum of kept e^logit)
    kept = logits.exp() * ~left_out
    return -(kept[torch.arange(len(targets)), targets] / kept.sum(1)).log().mean()


@pytest.mark.parametrize("fn", [answer_loss_reference, answer_loss_by_hand,
                                lambda l, t, m: answer_loss_reference(l, t, m).reshape(1)])
def test_check_answer_loss_accepts_correct_forms(fn, capsys):
    ok, out = grade(check_answer_loss, fn, capsys)
    assert ok and out.startswith("correct")


@pytest.mark.parametrize("fn, words", [
    (lambda l, t, m: F.cross_entropy(l, t), "plain cross-entropy"),
    (lambda l, t, m: F.cross_entropy(l.masked_fill(m, 0.0), t), "a logit of 0 still counts"),
    (lambda l, t, m: F.cross_entropy(l.masked_fill(~m, float("-inf")), t), "not finite"),
    (lambda l, t, m: F.cross_entropy(l.masked_fill(~m, -1e9), t), "wrong way round"),
    (lambda l, t, m: F.cross_entropy(l.masked_fill(m, float("-inf")), t, reduction="sum"), "average over the rows"),
    (lambda l, t, m: F.cross_entropy(l.masked_fill(m, float("-inf")), t, reduction="none"), "one number"),
    (lambda l, t, m: -F.cross_entropy(l.masked_fill(m, float("-inf")), t), "differs"),  # the sign
    (lambda l, t, m: None, "not attempted"),
])
def test_check_answer_loss_names_the_mistake(fn, words, capsys):
    ok, out = grade(check_answer_loss, fn, capsys)
    assert not ok and words in out
    assert "masked_fill" not in out and "cross_entropy(" not in out  # a hint, never the answer


@pytest.mark.parametrize("fn, words", [
    (lambda l, t, m: answer_loss_reference(l, t, m).detach(), "cut off from autograd"),
    (lambda l, t, m: torch.tensor(answer_loss_reference(l, t, m).item()), "cut off from autograd"),
    (lambda l, t, m: answer_loss_reference(l.detach(), t, m) + 0 * l.sum(), "gradient is not"),
])
def test_check_answer_loss_wants_a_loss_that_backpropagates(fn, words, capsys):
    ok, out = grade(check_answer_loss, fn, capsys)
    assert not ok and words in out
