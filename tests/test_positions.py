import math

import pytest
import torch

from tinyvit import resample_pos_embed, sincos_positions


def test_resampling_to_the_same_grid_is_the_identity():
    pos = torch.randn(1, 197, 8)
    assert resample_pos_embed(pos, (14, 14)) is pos


def test_resampling_keeps_cls_and_smooth_fields():
    # A position field that is a linear ramp over the grid stays (nearly) a ramp after resampling.
    g, new = 4, 8
    ramp = torch.linspace(0, 1, g).repeat(g, 1)  # (g, g), varies along columns
    pos = torch.cat([torch.full((1, 1, 1), 7.0), ramp.reshape(1, g * g, 1)], dim=1)
    out = resample_pos_embed(pos, (new, new))
    assert out.shape == (1, 1 + new * new, 1)
    assert out[0, 0, 0].item() == 7.0
    grid = out[0, 1:, 0].view(new, new)
    assert torch.all(grid[:, 1:] >= grid[:, :-1] - 1e-3)  # still increasing left to right
    torch.testing.assert_close(grid[:, 0], grid[0, 0].expand(new))  # constant down each column


def test_resampling_to_a_rectangle_and_refusing_a_non_square_table():
    assert resample_pos_embed(torch.randn(1, 17, 6), (6, 3)).shape == (1, 19, 6)
    with pytest.raises(ValueError, match="position embeddings for 15 patches do not form a square grid"):
        resample_pos_embed(torch.randn(1, 16, 6), (4, 4))


def test_sincos_positions_encode_row_and_column():
    table = sincos_positions(4, 8)  # 16 slots; per axis 2 frequencies (1 and 1/100), sine then cosine
    assert table.shape == (16, 8)
    slot = 1 * 4 + 2  # row 1, column 2
    expected = torch.tensor([math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01),
                             math.sin(2), math.sin(0.02), math.cos(2), math.cos(0.02)])
    torch.testing.assert_close(table[slot], expected)
    torch.testing.assert_close(table[0], torch.tensor([0.0, 0, 1, 1, 0, 0, 1, 1]))
    assert sincos_positions(14, 128).shape == (196, 128)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_positions(4, 6)
