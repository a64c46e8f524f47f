import math

import pytest
import torch
import torch.nn.functional as F

from tinyvit.checks import check_attention_head


def grade(checker, fn, capsys):
    result = checker(fn)
    return result, capsys.readouterr().out


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


def test_check_attention_head_rejects_the_package_attention(capsys):
    from tinyvit import Attention

    def borrowed(q, k, v):
        layer = Attention(q.shape[-1], 1)
        return layer(q)[0]
    ok, out = grade(check_attention_head, borrowed, capsys)
    assert not ok and "package's own tinyvit.Attention" in out
