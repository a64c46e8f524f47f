"""Graders for notebook 2: the patch embedding, the CLS token and the positions."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .. import model, patches
from .core import Verdict, call, close, fail, grader, passed

FORBIDDEN_EMBED = {"nn.Conv2d (the convolution itself)": nn.Conv2d, "tinyvit.PatchEmbed": patches.PatchEmbed}
FORBIDDEN_TOKENS = {"VisionTransformer.embed_tokens": model.VisionTransformer.embed_tokens}


@grader
def check_patch_embedding(fn: Callable) -> Verdict:
    """Grade `fn(images, conv)`: the tokens of a Conv2d patch embedding (kernel = stride = p), computed as a
    matrix product on flat patches. (B, C, H, W), Conv2d -> (B, P, D)."""
    generator = torch.Generator().manual_seed(2)
    for (B, C, H, W), p, D in (((2, 3, 8, 8), 4, 6), ((1, 3, 12, 8), 4, 5)):
        conv = nn.Conv2d(C, D, kernel_size=p, stride=p)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator))
            conv.bias.copy_(torch.randn(D, generator=generator))
        images = torch.rand(B, C, H, W, generator=generator)
        with torch.no_grad():
            expected = conv(images).flatten(2).transpose(1, 2)  # (B, P, D)
            got = call(fn, images.clone(), conv, forbidden=FORBIDDEN_EMBED)
        if not isinstance(got, torch.Tensor):
            return fail(got)
        got = got.detach()
        if tuple(got.shape) != tuple(expected.shape):
            if tuple(got.shape) == (B, D, expected.shape[1]):
                return fail(f"expected shape {tuple(expected.shape)} (B, P, D), got {tuple(got.shape)}: one row "
                            "per patch, so multiply the patches by the transposed weight matrix")
            return fail(f"for images {(B, C, H, W)}, patch size {p} and {D} filters expected shape "
                        f"{tuple(expected.shape)} (B, P, D), got {tuple(got.shape)}")
        if close(got, expected):
            continue
        flat = patches.patchify(images, p)  # (B, P, C*p*p)
        weight, bias = conv.weight.detach(), conv.bias.detach()  # (D, C, p, p), (D,)
        if close(got, flat @ weight.flatten(1).T):
            return fail("the bias is missing: the convolution adds one bias per output channel to every token")
        grid = images.reshape(B, C, H // p, p, W // p, p)  # (B, C, gh, p, gw, p)
        channels_last = grid.permute(0, 2, 4, 3, 5, 1).reshape(B, -1, C * p * p)  # (B, P, p*p*C)
        if close(got, channels_last @ weight.flatten(1).T + bias):
            return fail("the patches are flattened channels-last (p, p, C), but a conv filter flattens "
                        "channel-first (C, p, p): the numbers meet the wrong weights",
                        hint="patchify from notebook 1 flattens each patch the way the filter does")
        filters_last = weight.permute(0, 2, 3, 1).flatten(1)  # (D, p*p*C)
        if close(got, flat @ filters_last.T + bias):
            return fail("the filters are flattened channels-last (p, p, C) while the patches are channel-first: "
                        "flatten the weight (D, C, p, p) as it is stored",
                        hint="weight.flatten(1) keeps the (C, p, p) order")
        gh, gw = H // p, W // p
        tokens = expected.reshape(B, gh, gw, D).transpose(1, 2).reshape(B, -1, D)  # (B, P, D), columns first
        if close(got, tokens):
            return fail("the tokens come out column by column: number the patches row by row, as patchify does")
        return fail(f"the shape is right but the values differ (images {(B, C, H, W)}, patch size {p}): each "
                    "token should be the conv's output at that patch's place in the grid")
    return passed("correct: flat patches times the flattened filters, plus the bias, is the convolution")


@grader
def check_cls_and_positions(fn: Callable) -> Verdict:
    """Grade `fn(tokens, cls_token, pos_embed)`: (B, P, D), (1, 1, D), (1, P + 1, D) -> (B, P + 1, D), the CLS
    token in slot 0 and row i of the position table added to token i."""
    generator = torch.Generator().manual_seed(3)
    for B, P, D in ((3, 4, 6), (2, 9, 4)):
        tokens = torch.randn(B, P, D, generator=generator)
        cls = torch.randn(1, 1, D, generator=generator)
        pos = torch.randn(1, P + 1, D, generator=generator)
        expected = torch.cat([cls.expand(B, -1, -1), tokens], dim=1) + pos  # (B, N, D)
        got = call(fn, tokens.clone(), cls.clone(), pos.clone(), forbidden=FORBIDDEN_TOKENS)
        if isinstance(got, str) and "Sizes of tensors must match" in got:
            return fail(f"{got}\nthe CLS token is stored once, (1, 1, D); the batch holds {B} images: give "
                        "each image its own copy in front (expand it along the batch axis)")
        if not isinstance(got, torch.Tensor):
            return fail(got)
        if tuple(got.shape) != tuple(expected.shape):
            if tuple(got.shape) == (B, P + 1, 2 * D):
                return fail(f"expected shape {tuple(expected.shape)}, got {tuple(got.shape)}: the positions are "
                            "concatenated along the width; they are added, number by number")
            if tuple(got.shape) == (B, P, D):
                return fail(f"expected shape {tuple(expected.shape)}, got {tuple(got.shape)}: the CLS token is "
                            "missing; put it in front of the patch tokens")
            return fail(f"for tokens {(B, P, D)} expected shape {tuple(expected.shape)} (B, P + 1, D), "
                        f"got {tuple(got.shape)}")
        if close(got, expected):
            continue
        if close(got, torch.cat([tokens, cls.expand(B, -1, -1)], dim=1) + pos):
            return fail("the CLS token is at the end: it goes in front, in slot 0, where the encoder reads it")
        if close(got, torch.cat([cls.expand(B, -1, -1), tokens + pos[:, 1:]], dim=1)):
            return fail("the CLS token got no position: the table has P + 1 rows, and row 0 is the CLS slot's")
        if close(got, torch.cat([cls.expand(B, -1, -1), tokens + pos[:, :P]], dim=1)):
            return fail("the positions are off by one and CLS got none: add the whole table after putting "
                        "CLS in front, so row 0 meets CLS and row 1 the first patch")
        if close(got, torch.cat([cls.expand(B, -1, -1) + pos[:, P:], tokens + pos[:, :P]], dim=1)):
            return fail("the positions are shifted by one: row 0 belongs to CLS, row 1 to the first patch")
        return fail(f"the shape is right but the values differ (tokens {(B, P, D)}): expected CLS in slot 0, "
                    "then the patches, each plus its own row of the position table")
    return passed("correct: CLS in front, then row i of the position table added to token i")
