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


# ---- recall@k -------------------------------------------------------------------------------------------

from tinyvit.checks import check_recall_at_k  # noqa: E402
from tinyvit.evaluate import recall_at_k  # noqa: E402


def recall_reference(sim, k):
    top = sim.topk(k, dim=1).indices  # (n, k)
    return (top == torch.arange(len(sim))[:, None]).any(dim=1).float().mean()


def recall_by_rank(sim, k):  # another correct form: a Python float from the rank of the right caption
    rank = (sim > sim.diagonal()[:, None]).sum(dim=1)
    return (rank < k).double().mean().item()


@pytest.mark.parametrize("fn", [recall_reference, recall_by_rank])
def test_check_recall_at_k_accepts_correct_forms(fn, capsys):
    ok, out = grade(check_recall_at_k, fn, capsys)
    assert ok and out.startswith("correct")


@pytest.mark.parametrize("fn, words", [
    (lambda sim, k: recall_reference(sim.T, k), "text->image"),
    (lambda sim, k: recall_reference(sim, k) * len(sim), "count of hits"),
    (lambda sim, k: 100 * recall_reference(sim, k), "percentage"),
    (lambda sim, k: recall_reference(-sim, k), "least"),
    (lambda sim, k: recall_reference(sim, 1), "recall@1"),
    (lambda sim, k: recall_reference(sim, k + 1), "off by one"),
    (lambda sim, k: recall_reference(sim, max(k - 1, 1)) if k > 1 else recall_reference(sim, 2), "off by one"),
    (lambda sim, k: (sim.topk(k, dim=1).indices == torch.arange(len(sim))[:, None]).any(dim=1).float(),
     "one number"),
    (lambda sim, k: recall_reference(sim, k) + 0.01, "differs"),
    (lambda sim, k: "0.5", "expected a torch.Tensor"),
])
def test_check_recall_at_k_names_the_mistake(fn, words, capsys):
    ok, out = grade(check_recall_at_k, fn, capsys)
    assert not ok and words in out


def test_check_recall_at_k_rejects_stub_and_the_package_own_function(capsys):
    def stub(sim, k):
        raise NotImplementedError("your code here")
    ok, out = grade(check_recall_at_k, stub, capsys)
    assert not ok and "not attempted" in out
    ok, out = grade(check_recall_at_k, lambda sim, k: recall_at_k(sim, k), capsys)
    assert not ok and "package's own" in out


def test_check_recall_at_k_hints_get_specific_and_never_show_code(capsys):
    wrong = lambda sim, k: recall_reference(sim.T, k)
    assert grade(check_recall_at_k, recall_reference, capsys)[0]  # a pass resets the count of failed attempts
    _, first = grade(check_recall_at_k, wrong, capsys)
    _, second = grade(check_recall_at_k, wrong, capsys)
    assert "hint:" not in first and "hint:" in second
    assert "topk(" not in first + second and "def " not in first + second
    assert grade(check_recall_at_k, recall_reference, capsys)[0]
