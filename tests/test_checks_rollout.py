import functools

import numpy as np
import pytest
import torch

from tinyvit import attention_rollout, cls_rollout_map
from tinyvit.checks import check_cls_attention_map, check_rollout


def grade(checker, fn, capsys):
    result = checker(fn)
    return result, capsys.readouterr().out


def stub(*args):
    raise NotImplementedError("your code here")


# ---- the CLS row of one layer, on the patch grid ---------------------------------------------------------

def cls_map_reference(weights, grid):
    B, h, N, _ = weights.shape
    return weights[:, :, 0, 1:].reshape(B, h, *grid)


def cls_map_loop(weights, grid):
    """One head at a time, with view and stack: a different correct form."""
    gh, gw = grid
    return torch.stack([torch.stack([w[0, 1:].view(gh, gw) for w in item]) for item in weights])


def test_check_cls_attention_map_accepts_reference_and_a_loop(capsys):
    ok, out = grade(check_cls_attention_map, cls_map_reference, capsys)
    assert ok and out.startswith("correct")
    assert grade(check_cls_attention_map, cls_map_loop, capsys)[0]


@pytest.mark.parametrize("fn, words", [
    (lambda w, g: w[:, :, 1:, 0].reshape(*w.shape[:2], *g), "CLS column"),
    (lambda w, g: w[:, :, 0, :-1].reshape(*w.shape[:2], *g), "last patch is missing"),
    (lambda w, g: w[:, :, 0, 1:].reshape(*w.shape[:2], g[1], g[0]).transpose(-2, -1), "transposed"),
    (lambda w, g: (lambda m: m / m.sum(dim=(-2, -1), keepdim=True))(cls_map_reference(w, g)), "renormalised"),
    (lambda w, g: w[:, :, 1, 1:].reshape(*w.shape[:2], *g), "row 1"),
    (lambda w, g: cls_map_reference(w, g).mean(dim=1), "keep one map per head"),
    (lambda w, g: w[:, :, 0, 1:], "expected maps of shape (2, 2, 2, 3)"),
    (lambda w, g: cls_map_reference(w.half().float(), g), "float16"),
    (lambda w, g: cls_map_reference(w, g) * 2, "values differ"),
])
def test_check_cls_attention_map_names_the_mistake(fn, words, capsys):
    ok, out = grade(check_cls_attention_map, fn, capsys)
    assert not ok
    assert words in out


def test_check_cls_attention_map_rejects_stub_and_the_package_rollout(capsys):
    ok, out = grade(check_cls_attention_map, stub, capsys)
    assert not ok and "not attempted" in out
    borrowed = lambda w, g: cls_rollout_map([w], g, residual=False)
    ok, out = grade(check_cls_attention_map, borrowed, capsys)
    assert not ok and "package's own tinyvit.cls_rollout_map" in out


# ---- attention rollout by hand -----------------------------------------------------------------------------

def rollout_reference(attentions):
    B, _, N, _ = attentions[0].shape
    rolled = torch.eye(N).expand(B, N, N)
    for weights in attentions:
        mixing = weights.mean(dim=1) + torch.eye(N)
        mixing = mixing / mixing.sum(dim=-1, keepdim=True)
        rolled = mixing @ rolled
    return rolled


def rollout_halves_in_numpy(attentions):
    """(A + I) / 2 (rows of A already sum to 1), reduced with functools, in NumPy: a different correct form."""
    N = attentions[0].shape[-1]
    mixings = [(a.mean(dim=1).numpy() + np.eye(N)) / 2 for a in attentions]
    return torch.from_numpy(functools.reduce(lambda rolled, m: m @ rolled, mixings))


def rollout_with(attentions, fuse=lambda a: a.mean(dim=1), residual=True, rows=True, last_left=True):
    N = attentions[0].shape[-1]
    out = None
    for weights in attentions:
        m = fuse(weights) + (torch.eye(N) if residual else 0)
        if rows:
            m = m / m.sum(dim=-1, keepdim=True)
        out = m if out is None else (m @ out if last_left else out @ m)
    return out


def test_check_rollout_accepts_reference_and_a_numpy_form(capsys):
    ok, out = grade(check_rollout, rollout_reference, capsys)
    assert ok and out.startswith("correct")
    assert grade(check_rollout, rollout_halves_in_numpy, capsys)[0]


@pytest.mark.parametrize("fn, words", [
    (lambda a: rollout_with(a, residual=False), "identity is missing"),
    (lambda a: rollout_with(a, rows=False), "rows sum to 8, not 1"),
    (lambda a: rollout_with(a, last_left=False), "wrong order"),
    (lambda a: rollout_with(a, fuse=lambda w: w.amax(dim=1)), "fused by their max"),
    (lambda a: rollout_with(a, fuse=lambda w: w.sum(dim=1)), "heads are summed"),
    (lambda a: rollout_with(a[-1:]), "only one layer"),
    (lambda a: rollout_with([torch.softmax(w, -1) for w in a]).transpose(-2, -1), "values differ"),
    (lambda a: rollout_reference(a).expand(2, 2, 5, 5) if len(a) == 3 else None, "one result per head"),
    (lambda a: rollout_reference(a)[0], "expected (2, 5, 5)"),
    (lambda a: rollout_reference([w.half().float() for w in a]), "float16"),
])
def test_check_rollout_names_the_mistake(fn, words, capsys):
    ok, out = grade(check_rollout, fn, capsys)
    assert not ok
    assert words in out


def test_check_rollout_names_renormalised_columns(capsys):
    def columns(attentions):
        N = attentions[0].shape[-1]
        out = None
        for w in attentions:
            m = w.mean(dim=1) + torch.eye(N)
            m = m / m.sum(dim=-2, keepdim=True)
            out = m if out is None else m @ out
        return out
    ok, out = grade(check_rollout, columns, capsys)
    assert not ok and "columns are renormalised" in out


def test_check_rollout_rejects_stub_and_the_package_rollout(capsys):
    ok, out = grade(check_rollout, stub, capsys)
    assert not ok and "not attempted" in out
    ok, out = grade(check_rollout, lambda a: attention_rollout(a), capsys)
    assert not ok and "package's own tinyvit.attention_rollout" in out
    import tinyvit.rollout as module
    ok, out = grade(check_rollout, lambda a: module.attention_rollout(a, "mean"), capsys)
    assert not ok and "write it yourself" in out


def test_rollout_hints_never_print_a_solution(capsys):
    for checker, fn in ((check_rollout, lambda a: rollout_with(a, rows=False)),
                        (check_cls_attention_map, lambda w, g: w[:, :, 1:, 0].reshape(*w.shape[:2], *g))):
        for _ in range(2):  # the second failure adds the hint
            _, out = grade(checker, fn, capsys)
            assert "def " not in out and "mean(dim" not in out and "reshape(" not in out
