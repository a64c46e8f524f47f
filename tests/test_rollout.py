from fractions import Fraction as Fr

import pytest
import torch

from tinyvit import ViTConfig, VisionEncoder
from tinyvit.data import ShapesConfig, make_item
from tinyvit.rollout import attention_rollout, cls_rollout_map, object_patch_mask


def random_attention(B=2, h=3, N=5, depth=4):
    return [torch.randn(B, h, N, N).softmax(dim=-1) for _ in range(depth)]


def as_tensor(rows):
    return torch.tensor([[float(x) for x in row] for row in rows])


# A 3-token, two-layer example worked out by hand with fractions.
LAYER1 = [[Fr(1, 2), Fr(1, 4), Fr(1, 4)], [0, 1, 0], [Fr(1, 5), Fr(1, 5), Fr(3, 5)]]
LAYER2 = [[Fr(1, 3)] * 3] * 3
# With the residual each layer becomes (A + I) / 2:
#   M1 = [[3/4, 1/8, 1/8], [0, 1, 0], [1/10, 1/10, 4/5]],  M2 = 2/3 on the diagonal, 1/6 elsewhere;
#   rollout = M2 @ M1, e.g. row 0 = 2/3 * M1[0] + 1/6 * M1[1] + 1/6 * M1[2] = [31/60, 16/60, 13/60].
BY_HAND = [[Fr(31, 60), Fr(16, 60), Fr(13, 60)],
           [Fr(34, 240), Fr(169, 240), Fr(37, 240)],
           [Fr(46, 240), Fr(61, 240), Fr(133, 240)]]


def test_hand_computed_three_token_example():
    layers = [as_tensor(LAYER1)[None, None], as_tensor(LAYER2)[None, None]]  # each (1, 1, 3, 3)
    torch.testing.assert_close(attention_rollout(layers)[0], as_tensor(BY_HAND))
    # Without the residual, rollout is the plain product of the attention matrices (last layer leftmost).
    product = as_tensor(LAYER2) @ as_tensor(LAYER1)
    torch.testing.assert_close(attention_rollout(layers, residual=False)[0], product)


def test_heads_are_fused_before_rolling():
    a = as_tensor(LAYER1)
    b = torch.eye(3)
    two_heads = torch.stack([a, b])[None]  # (1, 2, 3, 3)
    mean = attention_rollout([two_heads], residual=False)[0]
    torch.testing.assert_close(mean, (a + b) / 2)
    # max fusion: elementwise max, rows renormalised. Row 1 of both heads is [0, 1, 0].
    top = torch.maximum(a, b)
    torch.testing.assert_close(attention_rollout([two_heads], "max", residual=False)[0], top / top.sum(1, keepdim=True))
    low = attention_rollout([two_heads], "min", residual=False)[0]
    # min fusion: row 0 is min([1/2, 1/4, 1/4], [1, 0, 0]) = [1/2, 0, 0], renormalised to [1, 0, 0].
    torch.testing.assert_close(low, torch.eye(3))
    # Heads that share no key leave min fusion nothing: without the residual the row stays zero (and is not NaN).
    disjoint = torch.stack([torch.eye(3), torch.eye(3).roll(1, dims=1)])[None]  # (1, 2, 3, 3)
    assert torch.equal(attention_rollout([disjoint], "min", residual=False)[0], torch.zeros(3, 3))


@pytest.mark.parametrize("head_fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("residual", [True, False])
def test_every_rolled_matrix_is_row_stochastic(head_fusion, residual):
    attentions = random_attention()
    if head_fusion == "min" and not residual:
        attentions = [a + 0.01 for a in attentions]  # keep every min positive, so no row is all zeros
    rolled = attention_rollout(attentions, head_fusion, residual)
    assert rolled.shape == (2, 5, 5)
    assert (rolled >= 0).all()
    torch.testing.assert_close(rolled.sum(dim=-1), torch.ones(2, 5))


@pytest.mark.parametrize("residual", [True, False])
def test_identity_attention_rolls_to_the_identity(residual):
    eye = torch.eye(4).expand(3, 2, 4, 4)  # (B, h, N, N): every token attends only to itself
    torch.testing.assert_close(attention_rollout([eye] * 3, residual=residual), torch.eye(4).expand(3, 4, 4))


def test_residual_keeps_more_of_each_token_itself():
    attentions = random_attention(B=1, h=2, N=6, depth=3)
    with_residual = attention_rollout(attentions).diagonal(dim1=-2, dim2=-1)
    without = attention_rollout(attentions, residual=False).diagonal(dim1=-2, dim2=-1)
    assert (with_residual > without).all()


def test_cls_rollout_map_is_a_distribution_over_the_grid():
    cfg = ViTConfig(image_size=32, patch_size=8, dim=32, depth=2, heads=2, mlp_dim=64)
    model = VisionEncoder(cfg).eval()
    with torch.no_grad():
        _, attentions = model(torch.rand(3, 3, 32, 32), return_attention=True)
    maps = cls_rollout_map(attentions)
    assert maps.shape == (3, 4, 4)
    torch.testing.assert_close(maps.sum(dim=(1, 2)), torch.ones(3))
    rolled = attention_rollout(attentions)
    torch.testing.assert_close(maps[1].flatten(), rolled[1, 0, 1:] / rolled[1, 0, 1:].sum())
    wide = cls_rollout_map(random_attention(B=1, N=1 + 2 * 3), grid=(2, 3))  # a non-square grid, row-major
    assert wide.shape == (1, 2, 3)


def test_bad_input_is_refused_with_a_message():
    good = random_attention(depth=2)
    with pytest.raises(ValueError, match="non-empty list"):
        attention_rollout([])
    with pytest.raises(ValueError, match="non-empty list .* got a tensor of shape"):
        attention_rollout(good[0])
    with pytest.raises(ValueError, match=r"\(B, h, N, N\), one shape .*; got \[\(2, 3, 5, 5\), \(3, 5, 5\)\]"):
        attention_rollout([good[0], good[1][0]])
    with pytest.raises(ValueError, match="one shape for all layers"):
        attention_rollout([good[0], torch.rand(2, 3, 6, 6)])
    with pytest.raises(ValueError, match="one shape for all layers"):
        attention_rollout([torch.rand(2, 3, 5, 4)])
    with pytest.raises(ValueError, match="head_fusion must be one of .* got 'sum'"):
        attention_rollout(good, head_fusion="sum")
    with pytest.raises(ValueError, match="6 patches do not form a square grid; pass grid"):
        cls_rollout_map([torch.rand(1, 1, 7, 7)])
    with pytest.raises(ValueError, match=r"grid \(2, 2\) does not hold the 6 patches of 7 tokens"):
        cls_rollout_map([torch.rand(1, 1, 7, 7)], grid=(2, 2))


def test_object_patch_mask_marks_the_patches_a_square_overlaps():
    mask = object_patch_mask([{"centre": (0.5, 0.5), "size": 0.5}], image_size=64, patch_size=8)
    assert mask.shape == (8, 8) and mask.dtype == torch.bool
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2:6, 2:6] = True  # the square spans 0.25..0.75: patches 2..5 on each axis, edges only touching 1 and 6
    assert torch.equal(mask, expected)
    corner = object_patch_mask([{"centre": (0.1, 0.9), "size": 0.1}], 64, 16)  # x 0.05..0.15, y 0.85..0.95
    assert corner.nonzero().tolist() == [[3, 0]]  # row from y, column from x
    both = object_patch_mask([{"centre": (0.1, 0.9), "size": 0.1}, {"centre": (0.5, 0.5), "size": 0.5}], 64, 16)
    assert int(both.sum()) == 1 + 4


def test_object_patch_mask_covers_every_drawn_object():
    cfg = ShapesConfig(image_size=64, noise=0.0, texture=0.0)
    for index in range(20):
        item = make_item(index, cfg)
        mask = object_patch_mask(item["objects"], 64, 8)
        for obj in item["objects"]:
            x, y = obj["centre"]
            assert mask[int(y * 8), int(x * 8)]  # the patch under each centre
        # Pixels far from the background colour (the shapes) lie almost all in masked patches.
        pixels = torch.from_numpy(item["image"]).float()  # (S, S, 3)
        background = pixels[mask.logical_not().repeat_interleave(8, 0).repeat_interleave(8, 1)].median(dim=0).values
        far = (pixels - background).abs().amax(dim=-1) > 60  # (S, S)
        inside = mask.repeat_interleave(8, 0).repeat_interleave(8, 1)  # (S, S)
        assert far.sum() > 0 and (far & inside).sum() >= 0.95 * far.sum()


def test_object_patch_mask_refuses_bad_input():
    with pytest.raises(ValueError, match="image_size 60 is not a multiple of patch_size 8"):
        object_patch_mask([{"centre": (0.5, 0.5), "size": 0.2}], 60, 8)
    with pytest.raises(ValueError, match="at least one object"):
        object_patch_mask([], 64, 8)
    with pytest.raises(ValueError, match=r"needs 'centre' \(x, y\) and 'size', got keys \['size'\]"):
        object_patch_mask([{"size": 0.2}], 64, 8)
