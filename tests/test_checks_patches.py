import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tinyvit import patchify
from tinyvit.checks import (NOT_ATTEMPTED, check_attention_head, check_info_nce, check_patchify,
                            check_unpatchify)


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
    (lambda x, p: patchify_reference(x, p).flip(-1), "scrambled"),
    (lambda x, p: patchify_reference(x, p) + 1, "values differ"),
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


def test_check_patchify_rejects_the_package_own_patchify(capsys):
    ok, out = grade(check_patchify, lambda x, p: patchify(x, p), capsys)
    assert not ok and "package's own tinyvit.patchify" in out
    import tinyvit.patches as patches_module
    ok, out = grade(check_patchify, lambda x, p: patches_module.patchify(x, p), capsys)
    assert not ok and "write it yourself" in out


def test_a_verdict_is_a_bool_that_a_notebook_does_not_echo(capsys):
    verdict, _ = grade(check_patchify, patchify_reference, capsys)
    assert verdict and verdict == True and not (not verdict)  # noqa: E712
    assert hasattr(verdict, "_ipython_display_") and verdict._ipython_display_() is None


def test_hints_get_more_specific_on_a_second_failed_attempt(capsys):
    grade(check_patchify, patchify_reference, capsys)  # whatever ran before, the count starts at 0
    _, first = grade(check_patchify, patchify_transposed, capsys)
    _, second = grade(check_patchify, patchify_transposed, capsys)
    assert "column by column" in first and "hint:" not in first
    assert "column by column" in second and "hint: after reshaping" in second
    grade(check_patchify, patchify_reference, capsys)  # a success starts the count again
    _, again = grade(check_patchify, patchify_transposed, capsys)
    assert "hint:" not in again


# ---- unpatchify -----------------------------------------------------------------------------------------

def unpatchify_reference(flat, p, H, W):
    B, P, K = flat.shape
    C = K // (p * p)
    x = flat.reshape(B, H // p, W // p, C, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, gh, p, gw, p)
    return x.reshape(B, C, H, W)


def unpatchify_fold(flat, p, H, W):
    return F.fold(flat.transpose(1, 2), output_size=(H, W), kernel_size=p, stride=p)


def unpatchify_one_reshape(flat, p, H, W):
    B, P, K = flat.shape
    return flat.reshape(B, K // (p * p), H, W)


def unpatchify_column_major(flat, p, H, W):
    B, P, K = flat.shape
    C = K // (p * p)
    x = flat.reshape(B, W // p, H // p, C, p, p).permute(0, 3, 2, 4, 1, 5)  # grid read as (gw, gh)
    return x.reshape(B, C, H, W)


def unpatchify_channels_last(flat, p, H, W):
    B, P, K = flat.shape
    C = K // (p * p)
    x = flat.reshape(B, H // p, W // p, p, p, C).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(B, C, H, W)


def unpatchify_swapped_sides(flat, p, H, W):
    B, P, K = flat.shape
    C = K // (p * p)
    x = flat.reshape(B, W // p, H // p, C, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(B, C, H, W)


def unpatchify_image_layout(flat, p, H, W):
    return unpatchify_reference(flat, p, H, W).permute(0, 2, 3, 1)  # (B, H, W, C)


def test_check_unpatchify_accepts_reference_and_fold(capsys):
    assert grade(check_unpatchify, unpatchify_reference, capsys)[0]
    ok, out = grade(check_unpatchify, unpatchify_fold, capsys)
    assert ok and out.startswith("correct")


@pytest.mark.parametrize("fn, words", [
    (unpatchify_one_reshape, "one reshape alone"),
    (unpatchify_column_major, "column by column"),
    (unpatchify_channels_last, "channels last"),
    (unpatchify_image_layout, "the channel axis belongs right after the batch axis"),
    (lambda f, p, H, W: unpatchify_reference(f, p, H, W) * 2, "values differ"),
    (lambda f, p, H, W: f, "expected shape (2, 3, 8, 8)"),
])
def test_check_unpatchify_names_the_mistake(fn, words, capsys):
    ok, out = grade(check_unpatchify, fn, capsys)
    assert not ok and words in out


def test_check_unpatchify_names_swapped_sides_on_a_non_square_image(capsys):
    def square_right_else_swapped(flat, p, H, W):
        return (unpatchify_reference if H == W else unpatchify_swapped_sides)(flat, p, H, W)
    ok, out = grade(check_unpatchify, square_right_else_swapped, capsys)
    assert not ok and "swaps the two" in out and "12 x 8" in out


def test_check_unpatchify_rejects_its_stub_and_the_package_own(capsys):
    from tinyvit import unpatchify
    ok, out = grade(check_unpatchify, lambda f, p, H, W: None, capsys)
    assert not ok and "not attempted" in out
    ok, out = grade(check_unpatchify, lambda f, p, H, W: unpatchify(f, p, (H, W), f.shape[-1] // p**2), capsys)
    assert not ok and "package's own tinyvit.unpatchify" in out
