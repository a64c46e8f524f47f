import math

import pytest
import torch
import torch.nn.functional as F

from tinyvit.checks import check_attention_head, check_multi_head


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


def test_check_attention_head_names_a_precision_loss(capsys):
    def half_precision(q, k, v):
        return head_reference(q.half().float(), k.half().float(), v)
    ok, out = grade(check_attention_head, half_precision, capsys)
    assert not ok and "float16" in out and "order" not in out


def test_check_attention_head_rejects_its_stub(capsys):
    def stub(q, k, v):
        raise NotImplementedError("your code here")
    ok, out = grade(check_attention_head, stub, capsys)
    assert not ok and "not attempted" in out


# ---- multi-head attention from one head ------------------------------------------------------------------

def multi_head_reference(q, k, v, heads):
    """Loop over the heads with the one-head function: the form notebook 3 asks for."""
    Dh = q.shape[-1] // heads
    parts = [slice(i * Dh, (i + 1) * Dh) for i in range(heads)]
    return torch.cat([head_reference(q[..., s], k[..., s], v[..., s]) for s in parts], dim=-1)


def multi_head_batched(q, k, v, heads):
    """All heads at once on a head axis: a different correct form."""
    B, N, D = q.shape
    split = lambda t: t.view(B, N, heads, D // heads).transpose(1, 2)  # (B, h, N, Dh)
    out = F.scaled_dot_product_attention(split(q), split(k), split(v))  # (B, h, N, Dh)
    return out.transpose(1, 2).reshape(B, N, D)


def multi_head_split(q, k, v, heads, how):
    B, N, D = q.shape
    Dh = D // heads
    if how == "interleaved":  # head i takes channels i, i + h, i + 2h, ...
        return torch.cat([head_reference(q[..., i::heads], k[..., i::heads], v[..., i::heads])
                          for i in range(heads)], dim=-1)
    if how == "reshape":  # straight to (B, h, N, Dh): tokens cut into heads
        out = head_reference(*(t.reshape(B, heads, N, Dh) for t in (q, k, v)))
        return out.reshape(B, N, D)
    if how == "no transpose back":
        split = lambda t: t.view(B, N, heads, Dh).transpose(1, 2)
        return head_reference(split(q), split(k), split(v)).reshape(B, N, D)
    if how == "scale by D":
        split = lambda t: t.view(B, N, heads, Dh).transpose(1, 2)
        scores = split(q) @ split(k).transpose(-2, -1) / math.sqrt(D)
        return (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(B, N, D)
    if how == "reversed":
        return torch.cat(multi_head_reference(q, k, v, heads).split(Dh, dim=-1)[::-1], dim=-1)
    raise ValueError(how)


def test_check_multi_head_accepts_a_loop_and_a_batched_form(capsys):
    ok, out = grade(check_multi_head, multi_head_reference, capsys)
    assert ok and out.startswith("correct") and "tinyvit.Attention" in out
    ok, out = grade(check_multi_head, multi_head_batched, capsys)
    assert ok


@pytest.mark.parametrize("fn, words", [
    (lambda q, k, v, h: head_reference(q, k, v), "one attention over all"),
    (lambda q, k, v, h: multi_head_split(q, k, v, h, "scale by D"), "1/sqrt(12), the full width"),
    (lambda q, k, v, h: multi_head_split(q, k, v, h, "interleaved"), "interleaved"),
    (lambda q, k, v, h: multi_head_split(q, k, v, h, "reshape"), "reshaped straight to (B, h, N, Dh)"),
    (lambda q, k, v, h: multi_head_split(q, k, v, h, "no transpose back"), "head axis still stood"),
    (lambda q, k, v, h: multi_head_split(q, k, v, h, "reversed"), "reverse order"),
    (lambda q, k, v, h: multi_head_reference(q, k, v, h)[..., :q.shape[-1] // h], "one head's width"),
    (lambda q, k, v, h: torch.stack(multi_head_reference(q, k, v, h).split(q.shape[-1] // h, -1), 1),
     "still on their own axis"),
    (lambda q, k, v, h: multi_head_reference(q.half().float(), k, v, h), "float16"),
    (lambda q, k, v, h: multi_head_reference(q, k, v, h) + 1, "values differ"),
])
def test_check_multi_head_names_the_mistake(fn, words, capsys):
    ok, out = grade(check_multi_head, fn, capsys)
    assert not ok
    assert words in out


def test_check_multi_head_rejects_its_stub_and_the_package_attention(capsys):
    def stub(q, k, v, heads):
        raise NotImplementedError("your code here")
    ok, out = grade(check_multi_head, stub, capsys)
    assert not ok and "not attempted" in out

    from tinyvit import Attention

    def borrowed(q, k, v, heads):
        layer = Attention(q.shape[-1], heads)
        return layer(q)[0]
    ok, out = grade(check_multi_head, borrowed, capsys)
    assert not ok and "package's own tinyvit.Attention" in out


def test_check_multi_head_hint_comes_on_the_second_failure(capsys):
    grade(check_multi_head, multi_head_reference, capsys)
    wrong = lambda q, k, v, h: multi_head_split(q, k, v, h, "interleaved")
    _, first = grade(check_multi_head, wrong, capsys)
    _, second = grade(check_multi_head, wrong, capsys)
    assert "hint:" not in first and "hint:" in second
