import math

import pytest
import torch
import torch.nn.functional as F

from tinyvit import patchify
from tinyvit.checks import (NOT_ATTEMPTED, QUESTIONS, Question, check_answer_loss, check_attention_head,
                            check_info_nce, check_patchify, symmetric_info_nce)


def grade(checker, fn, capsys):
    result = checker(fn)
    return result, capsys.readouterr().out


# ---- patchify -------------------------------------------------------------------------------------------

def patchify_reference(images, p):
    B, C, H, W = images.shape
    x = images.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, -1, C * p * p)


def patchify_transposed(images, p):
    B, C, H, W = images.shape
    x = images.reshape(B, C, H // p, p, W // p, p).permute(0, 4, 2, 1, 3, 5)
    return x.reshape(B, -1, C * p * p)


def patchify_channels_last(images, p):
    B, C, H, W = images.shape
    x = images.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(B, -1, C * p * p)


def patchify_unfold_wrong_shape(images, p):
    return F.unfold(images, kernel_size=p, stride=p)  # (B, C*p*p, P): forgot the transpose


def test_check_patchify_accepts_reference_and_unfold(capsys):
    assert grade(check_patchify, patchify_reference, capsys)[0]
    unfold = lambda x, p: F.unfold(x, kernel_size=p, stride=p).transpose(1, 2)
    ok, out = grade(check_patchify, unfold, capsys)
    assert ok and out.startswith("correct")


@pytest.mark.parametrize("fn, words", [
    (patchify_transposed, "column by column"),
    (patchify_channels_last, "channels-last"),
    (patchify_unfold_wrong_shape, "expected shape (2, 4, 48)"),
    (lambda x, p: patchify(x, p).flip(-1), "scrambled"),
    (lambda x, p: patchify(x, p) + 1, "values differ"),
    (lambda x, p: [1, 2], "expected a torch.Tensor, got list"),
    (lambda x, p: x.nonexistent(), "raised AttributeError"),
])
def test_check_patchify_names_the_mistake(fn, words, capsys):
    ok, out = grade(check_patchify, fn, capsys)
    assert not ok
    assert words in out


@pytest.mark.parametrize("stub", [lambda x, p: None, lambda x, p: (_ for _ in ()).throw(NotImplementedError)])
def test_graders_report_not_attempted(stub, capsys):
    ok, out = grade(check_patchify, stub, capsys)
    assert not ok and "not attempted" in out
    ok, out = grade(check_attention_head, lambda q, k, v: None, capsys)
    assert not ok and out.strip() == NOT_ATTEMPTED
    ok, out = grade(check_info_nce, lambda i, t, temp: None, capsys)
    assert not ok and "not attempted" in out


def test_hints_never_print_a_solution(capsys):
    for checker, fn in ((check_patchify, patchify_transposed), (check_attention_head, lambda q, k, v: q),
                        (check_info_nce, lambda i, t, temp: (i * t).sum())):
        _, out = grade(checker, fn, capsys)
        assert "permute(" not in out and "reshape(" not in out and "def " not in out and "cross_entropy(" not in out


# ---- one attention head ---------------------------------------------------------------------------------

def head_reference(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1) @ v


def test_check_attention_head_accepts_reference_and_sdpa(capsys):
    assert grade(check_attention_head, head_reference, capsys)[0]
    ok, out = grade(check_attention_head, F.scaled_dot_product_attention, capsys)
    assert ok and out.startswith("correct")


@pytest.mark.parametrize("fn, words", [
    (lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1), -1) @ v, "sqrt(d)"),
    (lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1], -1) @ v, "divided by d"),
    (lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -2) @ v, "over the queries"),
    (lambda q, k, v: (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])) @ v, "without a softmax"),
    (lambda q, k, v: torch.softmax(k @ q.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1) @ v, "transposed"),
    (lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1), -1), "expected an output of shape (2, 5, 16)"),
    (lambda q, k, v: head_reference(q, k, v) * 2, "values differ"),
])
def test_check_attention_head_names_the_mistake(fn, words, capsys):
    ok, out = grade(check_attention_head, fn, capsys)
    assert not ok
    assert words in out


# ---- InfoNCE --------------------------------------------------------------------------------------------

def clip_loss_reference(image_emb, text_emb, temperature):
    logits = image_emb @ text_emb.T / temperature
    targets = torch.arange(len(logits))
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def test_symmetric_info_nce_matches_a_naive_loop():
    logits = torch.randn(5, 5)
    total = 0.0
    for i in range(5):
        total += -torch.log(logits[i].exp()[i] / logits[i].exp().sum())
        total += -torch.log(logits[:, i].exp()[i] / logits[:, i].exp().sum())
    torch.testing.assert_close(symmetric_info_nce(logits), total / 10)


def test_check_info_nce_accepts_reference(capsys):
    ok, out = grade(check_info_nce, clip_loss_reference, capsys)
    assert ok and out.startswith("correct")


def one_way(image_emb, text_emb, temperature):  # the chapter's loss: image -> text only
    logits = image_emb @ text_emb.T / temperature
    return F.cross_entropy(logits, torch.arange(len(logits)))


@pytest.mark.parametrize("fn, words", [
    (one_way, "one-way"),
    (lambda i, t, temp: one_way(t, i, temp), "one-way"),
    (lambda i, t, temp: 2 * clip_loss_reference(i, t, temp), "added"),
    (lambda i, t, temp: clip_loss_reference(i, t, 1.0), "temperature"),
    (lambda i, t, temp: clip_loss_reference(i, t, 1 / temp), "temperature"),
    (lambda i, t, temp: len(i) * clip_loss_reference(i, t, temp), "average over the batch"),
    (lambda i, t, temp: F.cross_entropy(i @ t.T / temp, torch.arange(len(i)), reduction="none"), "one number"),
    (lambda i, t, temp: clip_loss_reference(i, t.flip(0), temp), "diagonal"),
])
def test_check_info_nce_names_the_mistake(fn, words, capsys):
    ok, out = grade(check_info_nce, fn, capsys)
    assert not ok
    assert words in out


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


# ---- quiz questions -------------------------------------------------------------------------------------

def test_every_question_grades_its_answer_correct_and_the_others_not():
    assert len(QUESTIONS) == 5
    for question in QUESTIONS:
        for option in range(len(question.options)):
            correct, text = question.grade(option)
            assert correct == (option == question.answer)
            assert text.startswith("Correct." if correct else "Not quite.")
        assert question.grade(None) == (False, "pick an option first")


def test_question_rejects_bad_definitions_and_choices():
    with pytest.raises(ValueError, match="2 options, 1 feedback"):
        Question("q", ("a", "b"), 0, ("only one",))
    with pytest.raises(ValueError, match="option index 0..3"):
        QUESTIONS[0].grade(7)
