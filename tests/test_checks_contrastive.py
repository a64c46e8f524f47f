import math

import pytest
import torch
import torch.nn.functional as F

import numpy as np

from tinyvit import clip_logits, clip_loss
from tinyvit.checks import check_info_nce, symmetric_info_nce


def grade(checker, fn, capsys):
    result = checker(fn)
    return result, capsys.readouterr().out


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


def info_nce_in_numpy(image_emb, text_emb, temperature):
    logits = image_emb.detach().numpy() @ text_emb.detach().numpy().T / temperature

    def one_way(scores):
        scores = scores - scores.max(axis=1, keepdims=True)
        return -(np.diag(scores) - np.log(np.exp(scores).sum(axis=1))).mean()
    return torch.tensor((one_way(logits) + one_way(logits.T)) / 2)


@pytest.mark.parametrize("fn, words", [
    (info_nce_in_numpy, "cut off from autograd"),
    (lambda i, t, temp: torch.tensor(clip_loss_reference(i, t, temp).item()), "cut off from autograd"),
    (lambda i, t, temp: clip_loss_reference(i, t, temp).detach(), "cut off from autograd"),
    (lambda i, t, temp: clip_loss_reference(i.detach(), t, temp), "gradient is not"),
    (lambda i, t, temp: clip_loss(clip_logits(i, t, torch.tensor(1 / temp).log())), "package's own"),
])
def test_check_info_nce_wants_a_loss_that_backpropagates_and_is_the_learners(fn, words, capsys):
    ok, out = grade(check_info_nce, fn, capsys)
    assert not ok and words in out
