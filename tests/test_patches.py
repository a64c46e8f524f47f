import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyvit import PatchEmbed, ViTConfig, patchify, unpatchify


def test_chapter_shapes():
    images = torch.randn(2, 3, 224, 224)
    patches = patchify(images, 16)
    assert patches.shape == (2, 196, 768)
    tokens = PatchEmbed(ViTConfig())(images)
    assert tokens.shape == (2, 196, 128)


def test_patch_order_is_row_major_and_channel_first():
    # Each pixel holds a code naming its channel, row and column, so we can read back where a number came from.
    C, H, W, p = 3, 8, 12, 4
    c, y, x = torch.meshgrid(torch.arange(C), torch.arange(H), torch.arange(W), indexing="ij")
    images = (c * 10000 + y * 100 + x).float()[None]
    patches = patchify(images, p)  # (1, 2*3, 3*4*4)
    assert patches.shape == (1, 6, 48)
    # Patch 1 is the top row's second patch (columns 4..7); patch 3 starts the second row (rows 4..7).
    assert patches[0, 1, 0].item() == 0 * 10000 + 0 * 100 + 4
    assert patches[0, 3, 0].item() == 0 * 10000 + 4 * 100 + 0
    # Inside a patch: all of the red channel first (row by row), then green, then blue.
    first = patches[0, 0].view(C, p, p)
    torch.testing.assert_close(first, images[0, :, :p, :p])


@settings(max_examples=40, deadline=None)
@given(
    channels=st.integers(1, 4),
    patch=st.integers(1, 8),
    rows=st.integers(1, 5),
    cols=st.integers(1, 5),
    batch=st.integers(1, 3),
)
def test_unpatchify_inverts_patchify(channels, patch, rows, cols, batch):
    images = torch.randn(batch, channels, rows * patch, cols * patch)
    patches = patchify(images, patch)
    assert patches.shape == (batch, rows * cols, channels * patch * patch)
    back = unpatchify(patches, patch, (rows * patch, cols * patch), channels)
    assert torch.equal(back, images)


def test_conv_and_linear_forms_agree_for_the_same_weights():
    cfg = ViTConfig(image_size=32, patch_size=8, dim=16, heads=2)
    conv = PatchEmbed(cfg, kind="conv")
    linear = PatchEmbed(cfg, kind="linear").load_from(conv)
    images = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(conv(images), linear(images), atol=1e-5, rtol=1e-5)
    # ... and back the other way.
    back = PatchEmbed(cfg, kind="conv").load_from(linear)
    torch.testing.assert_close(back(images), conv(images))


def test_linear_form_is_patchify_then_matrix_product():
    cfg = ViTConfig(image_size=32, patch_size=8, dim=16, heads=2)
    embed = PatchEmbed(cfg)
    images = torch.randn(2, 3, 32, 32)
    by_hand = patchify(images, 8) @ embed.linear_weight().T + embed.proj.bias
    torch.testing.assert_close(embed(images), by_hand, atol=1e-5, rtol=1e-5)


def test_unknown_kind():
    with pytest.raises(ValueError, match="'conv' or 'linear', got 'mlp'"):
        PatchEmbed(ViTConfig(), kind="mlp")


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.randn(1, 1, 224, 224), "expected 3 channels, got 1"),
        (torch.randn(1, 3, 225, 224), "image size 225x224 is not divisible by patch size 16"),
        (torch.zeros(1, 3, 224, 224, dtype=torch.uint8), "expected a float tensor .* got dtype torch.uint8"),
        (torch.randn(3, 224, 224), r"expected images of shape \(B, C, H, W\), got shape \(3, 224, 224\) \(add a batch"),
    ],
)
def test_bad_images_are_refused_with_a_message(images, message):
    with pytest.raises(ValueError, match=message):
        PatchEmbed(ViTConfig())(images)


def test_unpatchify_checks_sizes():
    with pytest.raises(ValueError, match="expected 4 patches of 48 numbers .* got 5 patches of 48"):
        unpatchify(torch.randn(1, 5, 48), 4, 8, 3)
