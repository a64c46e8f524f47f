import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from tinyvit import patchify, viz


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def image():
    return torch.rand(3, 32, 32)


def test_to_numpy_image_is_channels_last_and_clipped():
    image = torch.tensor([[[2.0, -1.0]], [[0.5, 0.5]], [[0.0, 1.0]]])  # (3, 1, 2)
    array = viz.to_numpy_image(image)
    assert array.shape == (1, 2, 3)
    np.testing.assert_allclose(array[0, 0], [1.0, 0.5, 0.0])
    assert viz.to_numpy_image(torch.rand(1, 4, 5)).shape == (4, 5)
    with pytest.raises(ValueError, match=r"\(C, H, W\) tensor, got \(1, 3, 4, 4\)"):
        viz.to_numpy_image(torch.rand(1, 3, 4, 4))


def test_show_patch_grid_draws_one_line_per_patch_edge(image):
    fig = viz.show_patch_grid(image, 8, numbers=True)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.images) == 1 and ax.images[0].get_array().shape == (32, 32, 3)
    assert len(ax.lines) == 5 + 5  # edges at 0, 8, 16, 24, 32 in each direction
    assert [t.get_text() for t in ax.texts] == [str(i) for i in range(16)]
    assert ax.get_title() == "8x8 patches: 4x4 = 16"
    with pytest.raises(ValueError, match="not divisible by patch size 5"):
        viz.show_patch_grid(image, 5)


def test_show_patches_draws_tiles_in_token_order(image):
    patches = patchify(image[None], 8)[0]  # (16, 192)
    fig = viz.show_patches(patches, 8, ncols=4, count=6)
    tiles = [ax for ax in fig.axes if ax.images]
    assert len(fig.axes) == 8 and len(tiles) == 6
    assert [ax.get_title() for ax in tiles] == [str(i) for i in range(6)]
    np.testing.assert_allclose(tiles[5].images[0].get_array(), viz.to_numpy_image(image[:, 8:16, 8:16]))
    with pytest.raises(ValueError, match=r"\(P, 192\)"):
        viz.show_patches(patches[:, :100], 8)


def test_show_pos_similarity_puts_each_position_in_its_tile():
    grid = 3
    similarity = torch.eye(grid * grid)
    fig = viz.show_pos_similarity(similarity, grid)
    canvas = fig.axes[0].images[0].get_array()
    assert canvas.shape == (grid * 4 - 1, grid * 4 - 1)
    # position (1, 2) is tile (1, 2), and inside it the bright pixel sits at (1, 2)
    tile = canvas[4:7, 8:11]
    assert tile[1, 2] == 1 and tile.sum() == 1
    with pytest.raises(ValueError, match=r"\(9, 9\) similarity matrix for a 3x3 grid, got \(4, 4\)"):
        viz.show_pos_similarity(torch.eye(4), 3)


def test_attention_figures(image):
    weights = torch.softmax(torch.randn(17, 17), dim=-1)
    fig = viz.show_attention_matrix(weights)
    assert fig.axes[0].images[0].get_array().shape == (17, 17)
    fig = viz.show_attention_map(image, weights[0, 1:], 8)
    ax = fig.axes[0]
    assert len(ax.images) == 2 and ax.images[1].get_array().shape == (32, 32)
    np.testing.assert_allclose(ax.images[1].get_array()[0, 0], weights[0, 1].item(), rtol=1e-6)
    np.testing.assert_allclose(ax.images[1].get_array()[31, 31], weights[0, 16].item(), rtol=1e-6)
    with pytest.raises(ValueError, match="expected 16 values"):
        viz.show_attention_map(image, weights[0], 8)
    with pytest.raises(ValueError, match=r"\(N, N\)"):
        viz.show_attention_matrix(weights[:3])


def test_plot_scaling_and_curves():
    fig = viz.plot_scaling([4, 8, 16], {"tokens": [3137, 785, 197], "entries": [1e7, 6e5, 4e4]}, mark=16)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert [line.get_label() for line in ax.lines[:2]] == ["tokens", "entries"]
    with pytest.raises(ValueError, match="has 2 values for 3"):
        viz.plot_scaling([4, 8, 16], {"tokens": [1, 2]})
    fig = viz.plot_curves({"loss": [3.0, 2.0, 1.5], "accuracy": ([0, 10], [0.1, 0.8])})
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy"]
    np.testing.assert_allclose(fig.axes[1].lines[0].get_xdata(), [0, 10])
    with pytest.raises(ValueError, match="at least one curve"):
        viz.plot_curves({})


def test_show_similarity_labels_and_values():
    fig = viz.show_similarity(torch.eye(3), ["a", "b", "c"], ["x", "y", "z"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]
    assert len(ax.texts) == 9 and ax.texts[0].get_text() == "1.00"


def test_table_renders_html_and_markdown():
    table = viz.Table(["claim", "value"], [["tokens", 197], ["a <b>", "x|y"]], title="t")
    html = table._repr_html_()
    assert ">197</td>" in html and "&lt;b&gt;" in html and ">t</caption>" in html
    assert repr(table).splitlines()[2:] == ["| claim | value |", "|---|---|", "| tokens | 197 |", "| a <b> | x\\|y |"]
    assert "150,528" in repr(viz.Table(["n"], [[150528]]))
    with pytest.raises(ValueError, match="has 1 cells, expected 2"):
        viz.Table(["a", "b"], [["only"]])


def test_table_cells_have_padding_and_borders_and_numbers_align_right():
    html = viz.Table(["patch", "tokens"], [[16, 197], [8, 785]])._repr_html_()
    cells = re.findall(r"<t[hd] style='([^']*)'>", html)
    assert len(cells) == 6
    assert all("padding:" in style and "border:1px solid" in style for style in cells)
    assert all("text-align:right" in style for style in cells)  # both columns hold only numbers
    mixed = viz.Table(["claim", "n"], [["a", 1], ["b", "two"]])._repr_html_()
    assert "text-align:right" not in mixed


def test_table_highlights_its_verdict_column():
    rows = [["tokens", "true"], ["pixels", "false"], ["speed", "misleading"], ["recall", "not tested here"],
            ["norm", "missing, 128"], ["other", "see text"]]
    html = viz.Table(["claim", "verdict"], rows)._repr_html_()
    kinds = re.findall(r"class='verdict verdict-(\w+)'[^>]*>([^<]*)<", html)
    assert kinds == [("right", "true"), ("wrong", "false"), ("imprecise", "misleading"),
                     ("untested", "not tested here"), ("wrong", "missing, 128")]
    assert html.count("background-color:#fde0dc") == 2  # each kind has its own colours, inline for JupyterLab
    assert "verdict-" not in viz.Table(["claim", "verdict"], rows, verdicts=None)._repr_html_()
    named = viz.Table(["claim", "Holds?"], [["x", "right"]], verdicts="holds?")._repr_html_()
    assert "verdict verdict-right" in named
    assert "verdict-" not in viz.Table(["claim", "value"], [["x", "true"]])._repr_html_()
    with pytest.raises(ValueError, match="names no column"):
        viz.Table(["claim"], [["x"]], verdicts="status")
    assert viz.verdict_kind("Wrong.") == "wrong" and viz.verdict_kind("") is None


def test_show_attention_grid_draws_one_panel_per_map_on_one_scale(image):
    maps = torch.rand(2, 3, 16)  # (layers, heads, P) for a 4x4 grid
    maps[1, 2, 5] = 3.0
    fig = viz.show_attention_grid(image, maps, 8, row_labels=["layer 0", "layer 1"], col_labels=["h0", "h1", "h2"])
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 6 and panels[5].get_title() == "layer 1, h2"
    overlay = panels[5].images[1].get_array()
    assert overlay.shape == (32, 32) and overlay[8, 8 + 4] == 3.0  # patch 5 = row 1, column 1
    assert all(ax.images[1].get_clim() == (0.0, 3.0) for ax in panels)
    own = viz.show_attention_grid(image, maps, 8, same_scale=False)
    assert [ax for ax in own.axes if ax.images][0].images[1].get_clim()[1] == pytest.approx(float(maps[0, 0].max()))
    with pytest.raises(ValueError, match=r"\(rows, cols, P\), got \(3, 16\)"):
        viz.show_attention_grid(image, maps[0], 8)
    with pytest.raises(ValueError, match="col_labels has 2 labels for 3 cols"):
        viz.show_attention_grid(image, maps, 8, col_labels=["a", "b"])


def test_show_images_puts_each_caption_over_its_image():
    images = torch.rand(5, 3, 8, 8)
    fig = viz.show_images(images, [f"caption {i}" for i in range(4)] + ["a much longer caption that needs wrapping"],
                          ncols=3)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(fig.axes) == 6 and len(shown) == 5
    np.testing.assert_allclose(shown[2].images[0].get_array(), images[2].permute(1, 2, 0).numpy(), rtol=1e-6)
    assert shown[1].get_title() == "caption 1" and "\n" in shown[4].get_title()
    lines = viz.show_images(images[:1], ["first line\nsecond line, long enough to be wrapped in two"], wrap=30)
    assert [ax for ax in lines.axes if ax.images][0].get_title().split("\n") == [
        "first line", "second line, long enough to be", "wrapped in two"]
    with pytest.raises(ValueError, match="4 captions for 5 images"):
        viz.show_images(images, ["x"] * 4)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\), got \(3, 8, 8\)"):
        viz.show_images(images[0])


def test_show_confusion_writes_counts_true_by_predicted():
    counts = torch.tensor([[5, 1], [0, 4]])
    fig = viz.show_confusion(counts, ["circle", "square"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["5", "1", "0", "4"]
    assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "true"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["circle", "square"]
    with pytest.raises(ValueError, match=r"\(3, 3\) count matrix for 3 class names, got \(2, 2\)"):
        viz.show_confusion(counts, ["a", "b", "c"])
