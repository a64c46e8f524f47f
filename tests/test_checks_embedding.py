import pytest
import torch
import torch.nn.functional as F

from tinyvit import PatchEmbed, ViTConfig, VisionTransformer, patchify
from tinyvit.checks import check_cls_and_positions, check_patch_embedding


def grade(checker, fn, capsys):
    result = checker(fn)
    return result, capsys.readouterr().out


# ---- the patch embedding as a matrix product ------------------------------------------------------------

def embed_reference(images, conv):
    p = conv.kernel_size[0]
    return patchify(images, p) @ conv.weight.flatten(1).T + conv.bias  # (B, P, D)


def embed_unfold(images, conv):
    p = conv.kernel_size[0]
    flat = F.unfold(images, kernel_size=p, stride=p).transpose(1, 2)  # (B, P, C*p*p)
    return F.linear(flat, conv.weight.reshape(conv.out_channels, -1), conv.bias)


def embed_channels_last_patches(images, conv):
    B, C, H, W = images.shape
    p = conv.kernel_size[0]
    x = images.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1).reshape(B, -1, C * p * p)
    return x @ conv.weight.flatten(1).T + conv.bias


def embed_channels_last_filters(images, conv):
    p = conv.kernel_size[0]
    return patchify(images, p) @ conv.weight.permute(0, 2, 3, 1).flatten(1).T + conv.bias


def embed_column_major(images, conv):
    B, C, H, W = images.shape
    p = conv.kernel_size[0]
    x = images.reshape(B, C, H // p, p, W // p, p).permute(0, 4, 2, 1, 3, 5).reshape(B, -1, C * p * p)
    return x @ conv.weight.flatten(1).T + conv.bias


def test_check_patch_embedding_accepts_two_correct_forms(capsys):
    assert grade(check_patch_embedding, embed_reference, capsys)[0]
    ok, out = grade(check_patch_embedding, embed_unfold, capsys)
    assert ok and out.startswith("correct")


@pytest.mark.parametrize("fn, words", [
    (lambda x, conv: patchify(x, conv.kernel_size[0]) @ conv.weight.flatten(1).T, "the bias is missing"),
    (embed_channels_last_patches, "patches are flattened channels-last"),
    (embed_channels_last_filters, "filters are flattened channels-last"),
    (embed_column_major, "column by column"),
    (lambda x, conv: embed_reference(x, conv).transpose(1, 2), "one row per patch"),
    (lambda x, conv: embed_reference(x, conv) * 2, "values differ"),
    (lambda x, conv: patchify(x, conv.kernel_size[0]) @ conv.weight.flatten(1), "raised RuntimeError"),
])
def test_check_patch_embedding_names_the_mistake(fn, words, capsys):
    ok, out = grade(check_patch_embedding, fn, capsys)
    assert not ok and words in out


def test_check_patch_embedding_rejects_its_stub_and_the_convolution_itself(capsys):
    ok, out = grade(check_patch_embedding, lambda x, conv: None, capsys)
    assert not ok and "not attempted" in out
    ok, out = grade(check_patch_embedding, lambda x, conv: conv(x).flatten(2).transpose(1, 2), capsys)
    assert not ok and "the convolution itself" in out and "write it yourself" in out

    def through_patch_embed(images, conv):
        cfg = ViTConfig(image_size=images.shape[-1], patch_size=conv.kernel_size[0], dim=conv.out_channels,
                        heads=1)
        layer = PatchEmbed(cfg, kind="linear")
        layer.proj.weight.data, layer.proj.bias.data = conv.weight.flatten(1), conv.bias
        return layer(images)
    ok, out = grade(check_patch_embedding, through_patch_embed, capsys)
    assert not ok and "tinyvit.PatchEmbed" in out


# ---- CLS token and positions ----------------------------------------------------------------------------

def tokens_reference(tokens, cls_token, pos_embed):
    cls = cls_token.expand(tokens.shape[0], -1, -1)  # (B, 1, D)
    return torch.cat([cls, tokens], dim=1) + pos_embed  # (B, N, D)


def tokens_repeat(tokens, cls_token, pos_embed):
    return torch.cat([cls_token.repeat(len(tokens), 1, 1), tokens], dim=1) + pos_embed


def test_check_cls_and_positions_accepts_two_correct_forms(capsys):
    assert grade(check_cls_and_positions, tokens_reference, capsys)[0]
    ok, out = grade(check_cls_and_positions, tokens_repeat, capsys)
    assert ok and out.startswith("correct")


@pytest.mark.parametrize("fn, words", [
    (lambda t, c, pos: torch.cat([t, c.expand(len(t), -1, -1)], 1) + pos, "the CLS token is at the end"),
    (lambda t, c, pos: torch.cat([c.expand(len(t), -1, -1), t + pos[:, 1:]], 1), "CLS token got no position"),
    (lambda t, c, pos: torch.cat([c.expand(len(t), -1, -1), t + pos[:, :-1]], 1), "off by one"),
    (lambda t, c, pos: torch.cat([c.expand(len(t), -1, -1) + pos[:, -1:], t + pos[:, :-1]], 1), "shifted"),
    (lambda t, c, pos: torch.cat([c, t], 1) + pos, "expand it along the batch axis"),
    (lambda t, c, pos: torch.cat([torch.cat([c.expand(len(t), -1, -1), t], 1),
                                  pos.expand(len(t), -1, -1)], -1), "they are added"),
    (lambda t, c, pos: t + pos[:, 1:], "the CLS token is missing"),
    (lambda t, c, pos: tokens_reference(t, c, pos) - pos, "values differ"),
])
def test_check_cls_and_positions_names_the_mistake(fn, words, capsys):
    ok, out = grade(check_cls_and_positions, fn, capsys)
    assert not ok and words in out


def test_check_cls_and_positions_rejects_its_stub_and_the_package_own(capsys):
    ok, out = grade(check_cls_and_positions, lambda t, c, pos: None, capsys)
    assert not ok and "not attempted" in out
    vit = VisionTransformer(ViTConfig(image_size=8, patch_size=4, dim=4, heads=1))

    def through_the_model(tokens, cls_token, pos_embed):
        vit.embed_tokens(torch.zeros(1, 3, 8, 8))
        return tokens_reference(tokens, cls_token, pos_embed)
    ok, out = grade(check_cls_and_positions, through_the_model, capsys)
    assert not ok and "VisionTransformer.embed_tokens" in out


def test_embedding_hints_never_print_a_solution(capsys):
    for checker, fn in ((check_patch_embedding, embed_channels_last_patches),
                        (check_cls_and_positions, lambda t, c, pos: torch.cat([c, t], 1) + pos)):
        checker(fn)
        _, out = grade(checker, fn, capsys)  # the second attempt adds the more specific hint
        assert "def " not in out and "torch.cat(" not in out and "@" not in out and ".expand(" not in out
