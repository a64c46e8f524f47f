"""Figures and small tables for the course: patch grids, position similarity, attention, costs, curves.

Every figure function returns its `matplotlib.figure.Figure` (a cell ends with `plt.show()`, a test inspects the
axes). Images are (C, H, W) tensors with values in [0, 1]."""
from __future__ import annotations

import html
import math
import textwrap
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F


def to_numpy_image(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) tensor in [0, 1] -> (H, W, C) array for `imshow` (grey for C == 1)."""
    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"expected one image as a (C, H, W) tensor, got {shape}")
    array = image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()  # (H, W, C)
    return array[..., 0] if array.shape[-1] == 1 else array


def show_patch_grid(image: torch.Tensor, patch_size: int, numbers: bool = False, ax=None, title: str | None = None):
    """The (C, H, W) image with its patch grid drawn on it; `numbers` writes each patch's row-major index."""
    _, H, W = image.shape
    if H % patch_size or W % patch_size:
        raise ValueError(f"image size {H}x{W} is not divisible by patch size {patch_size}")
    fig, ax = _figure_and_axes(ax, (5, 5))
    ax.imshow(to_numpy_image(image), cmap="gray")
    for edge in range(0, W + 1, patch_size):
        ax.axvline(edge - 0.5, color="white", lw=0.8 if W // patch_size <= 32 else 0.3)
    for edge in range(0, H + 1, patch_size):
        ax.axhline(edge - 0.5, color="white", lw=0.8 if H // patch_size <= 32 else 0.3)
    if numbers:
        cols = W // patch_size
        for index in range((H // patch_size) * cols):
            row, col = divmod(index, cols)
            ax.text((col + 0.5) * patch_size, (row + 0.5) * patch_size, str(index), ha="center", va="center",
                    fontsize=6, color="yellow")
    gh, gw = H // patch_size, W // patch_size
    ax.set_title(title or f"{patch_size}x{patch_size} patches: {gh}x{gw} = {gh * gw}")
    ax.set_axis_off()
    return fig


def show_patches(patches: torch.Tensor, patch_size: int, channels: int = 3, ncols: int = 14, count: int | None = None,
                 tile_inches: float = 0.6, title: str | None = None):
    """Flat patches (P, C*p*p), flattened channel-first, drawn as tiles in token order with their index."""
    if patches.ndim != 2 or patches.shape[1] != channels * patch_size**2:
        raise ValueError(f"expected patches of shape (P, {channels * patch_size ** 2}), got {tuple(patches.shape)}")
    count = patches.shape[0] if count is None else min(count, patches.shape[0])
    nrows = math.ceil(count / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * tile_inches, nrows * (tile_inches + 0.15) + 0.4),
                             squeeze=False, layout="constrained")
    for index, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if index < count:
            tile = patches[index].reshape(channels, patch_size, patch_size)  # (C, p, p)
            ax.imshow(to_numpy_image(tile), cmap="gray")
            ax.set_title(str(index), fontsize=6)
    fig.suptitle(title or f"the first {count} patches, in the order the transformer reads them", fontsize=9)
    return fig


def show_pos_similarity(similarity: torch.Tensor, grid: int, title: str = "position embeddings: cosine similarity"):
    """The ViT paper's position figure: for each patch position (a tile), its similarity to every position.

    similarity: (P, P) with P = grid * grid; tile (r, c) is row r * grid + c reshaped to (grid, grid).
    """
    P = grid * grid
    if tuple(similarity.shape) != (P, P):
        raise ValueError(f"expected a ({P}, {P}) similarity matrix for a {grid}x{grid} grid, "
                         f"got {tuple(similarity.shape)}")
    tiles = similarity.detach().float().cpu().reshape(grid, grid, grid, grid)  # (row, col, grid, grid)
    step = grid + 1  # one blank pixel between tiles
    canvas = np.full((grid * step - 1, grid * step - 1), np.nan)
    for row in range(grid):
        for col in range(grid):
            canvas[row * step:row * step + grid, col * step:col * step + grid] = tiles[row, col].numpy()
    fig, ax = plt.subplots(figsize=(6.5, 6))
    shown = ax.imshow(canvas, cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
    fig.colorbar(shown, ax=ax, fraction=0.046, label="cosine similarity")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("input patch column")
    ax.set_ylabel("input patch row")
    ax.set_xticks([]), ax.set_yticks([])
    return fig


def show_attention_matrix(weights: torch.Tensor, title: str = "attention weights", ax=None):
    """One head's (N, N) attention weights: row i is where query token i looks (colour scale from 0)."""
    if weights.ndim != 2 or weights.shape[0] != weights.shape[1]:
        raise ValueError(f"expected one head's (N, N) attention weights, got {tuple(weights.shape)}")
    fig, ax = _figure_and_axes(ax, (5, 4.4))
    shown = ax.imshow(weights.detach().float().cpu().numpy(), cmap="magma", vmin=0)
    fig.colorbar(shown, ax=ax, fraction=0.046)
    ax.set_xlabel("key token (0 = CLS)")
    ax.set_ylabel("query token (0 = CLS)")
    ax.set_title(title, fontsize=10)
    return fig


def show_attention_map(image: torch.Tensor, attention: torch.Tensor, patch_size: int, ax=None,
                       title: str | None = None, alpha: float = 0.6):
    """A per-patch map (P,) (one query's attention over the patches, or a rollout row) drawn over a (C, H, W)
    image; P = (H / p) * (W / p)."""
    _, H, W = image.shape
    gh, gw = H // patch_size, W // patch_size
    if attention.numel() != gh * gw:
        raise ValueError(f"expected {gh * gw} values (one per patch of a {gh}x{gw} grid), got {attention.numel()}")
    heat = attention.detach().float().cpu().reshape(1, 1, gh, gw)  # (1, 1, gh, gw)
    heat = F.interpolate(heat, size=(H, W), mode="nearest")[0, 0]  # (H, W)
    fig, ax = _figure_and_axes(ax, (5, 5))
    ax.imshow(to_numpy_image(image), cmap="gray")
    ax.imshow(heat.numpy(), cmap="inferno", alpha=alpha)
    ax.set_title(title or "attention over the patches", fontsize=10)
    ax.set_axis_off()
    return fig


def show_attention_grid(image: torch.Tensor, maps: torch.Tensor, patch_size: int,
                        row_labels: Sequence[str] | None = None, col_labels: Sequence[str] | None = None,
                        title: str | None = None, same_scale: bool = True, tile_inches: float = 2.0):
    """Per-patch maps (R, K, P), e.g. heads x layers, each drawn over the (C, H, W) image in an R x K grid.
    `same_scale` gives every panel one colour scale from 0 (with a colour bar), so a flat map looks flat."""
    if maps.ndim != 3:
        raise ValueError(f"expected maps of shape (rows, cols, P), got {tuple(maps.shape)}")
    R, K, _ = maps.shape
    for name, labels, count in (("row_labels", row_labels, R), ("col_labels", col_labels, K)):
        if labels is not None and len(labels) != count:
            raise ValueError(f"{name} has {len(labels)} labels for {count} {name[:3]}s of maps")
    size = (tile_inches * K + (0.6 if same_scale else 0), tile_inches * R + 0.4)
    fig, axes = plt.subplots(R, K, figsize=size, squeeze=False, layout="constrained")
    for (r, k), ax in np.ndenumerate(axes):
        label = ", ".join(x for x in (row_labels[r] if row_labels else "", col_labels[k] if col_labels else "") if x)
        show_attention_map(image, maps[r, k], patch_size, ax=ax, title=label or None)
        ax.title.set_fontsize(8)
    if same_scale:
        for ax in axes.flat:
            ax.images[1].set_clim(0.0, float(maps.max()))
        fig.colorbar(axes[0, 0].images[1], ax=axes, fraction=0.03, pad=0.02)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def show_images(images: torch.Tensor, captions: Sequence[str] | None = None, ncols: int = 4,
                tile_inches: float = 2.0, title: str | None = None, wrap: int = 28):
    """(B, C, H, W) images in [0, 1] in rows of `ncols`, each with its caption above it: each line of a caption
    wrapped at `wrap` characters."""
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"{len(captions)} captions for {len(images)} images")
    ncols = min(ncols, len(images))
    nrows = math.ceil(len(images) / ncols)
    texts = ["\n".join(part for line in c.split("\n") for part in textwrap.wrap(line, wrap) or [""])
             for c in captions] if captions is not None else []
    lines = max((t.count("\n") + 1 for t in texts), default=0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * tile_inches, nrows * (tile_inches + 0.17 * lines) + 0.3),
                             squeeze=False, layout="constrained")
    for index, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if index < len(images):
            ax.imshow(to_numpy_image(images[index]), cmap="gray", interpolation="nearest")
            if texts:
                ax.set_title(texts[index], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def show_confusion(counts: torch.Tensor, class_names: Sequence[str], title: str = "confusion matrix", ax=None):
    """A (K, K) count matrix, row = true class, column = predicted class, with the counts written in."""
    values = torch.as_tensor(counts).detach().cpu()
    K = len(class_names)
    if tuple(values.shape) != (K, K):
        raise ValueError(f"expected a ({K}, {K}) count matrix for {K} class names, got {tuple(values.shape)}")
    fig, ax = _figure_and_axes(ax, (0.55 * K + 2.2, 0.5 * K + 1.6))
    shown = ax.imshow(values.numpy(), cmap="Blues", vmin=0)
    top = float(values.max()) if values.numel() else 0.0
    for (r, c), v in np.ndenumerate(values.numpy()):
        ax.text(c, r, f"{v:g}", ha="center", va="center", fontsize=8, color="white" if v > top / 2 else "black")
    ax.set_xticks(range(K), class_names, fontsize=8, rotation=45, ha="right")
    ax.set_yticks(range(K), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.colorbar(shown, ax=ax, fraction=0.046)
    return fig


def plot_scaling(x: Sequence[float], series: Mapping[str, Sequence[float]], xlabel: str = "patch size",
                 mark: float | None = None, title: str | None = None):
    """Several quantities against one variable, on log-log axes; `mark` draws a vertical line (e.g. p = 16)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, values in series.items():
        if len(values) != len(x):
            raise ValueError(f"series {name!r} has {len(values)} values for {len(x)} x positions")
        ax.plot(x, values, marker="o", label=name)
    if mark is not None:
        ax.axvline(mark, color="grey", ls="--", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(list(x), [str(v) for v in x], rotation=90 if len(x) > 6 else 0)
    ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def show_similarity(matrix: torch.Tensor, row_labels: Sequence[str] | None = None,
                    col_labels: Sequence[str] | None = None, title: str = "similarity", ax=None):
    """A (rows, cols) similarity heat-map, e.g. images x captions, with the values written in small cells."""
    values = torch.as_tensor(matrix).detach().float().cpu().numpy()
    if values.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {values.shape}")
    fig, ax = _figure_and_axes(ax, (0.5 * values.shape[1] + 2, 0.45 * values.shape[0] + 1.5))
    shown = ax.imshow(values, cmap="viridis")
    fig.colorbar(shown, ax=ax, fraction=0.046)
    if values.size <= 144:
        for (r, c), v in np.ndenumerate(values):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white")
    if row_labels is not None:
        ax.set_yticks(range(values.shape[0]), row_labels, fontsize=8)
    if col_labels is not None:
        ax.set_xticks(range(values.shape[1]), col_labels, fontsize=8, rotation=45, ha="right")
    ax.set_title(title, fontsize=10)
    return fig


def plot_curves(curves: Mapping[str, Sequence[float] | tuple[Sequence[float], Sequence[float]]],
                xlabel: str = "step", title: str | None = None):
    """One panel per curve; each curve is a list of values (x = 0, 1, ...) or a pair (xs, ys)."""
    if not curves:
        raise ValueError("plot_curves needs at least one curve, got none")
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.2), squeeze=False)
    for ax, (name, curve) in zip(axes.flat, curves.items()):
        xs, ys = curve if isinstance(curve, tuple) else (range(len(curve)), curve)
        ax.plot(list(xs), list(ys))
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# Table styles, inline so that they hold wherever the HTML is shown: JupyterLab (light or dark theme), the book
# (whose stylesheet tinyvit.css adds only what inline styles cannot, e.g. wide tables scrolling), a browser.
_BORDER = "border:1px solid rgba(128,128,128,0.45)"
_CELL = f"padding:4px 10px;{_BORDER};vertical-align:top"
_HEAD = f"{_CELL};background-color:rgba(128,128,128,0.14);font-weight:600"

# A verdict column is highlighted by its first word: one class per kind of verdict, each with its colours.
VERDICT_WORDS = {
    "right": ("true", "right", "correct", "holds", "matches", "yes", "exact"),
    "wrong": ("false", "wrong", "incorrect", "missing", "error", "no"),
    "imprecise": ("imprecise", "misleading", "approximately", "approximate", "partly", "rounded",
                  "overstated", "understated", "vague", "loose", "unclear"),
    "untested": ("not", "untested", "unmeasured", "n/a"),
}
VERDICT_STYLES = {
    "right": "background-color:#dff3e4;color:#1b5e20",
    "wrong": "background-color:#fde0dc;color:#8e1b10",
    "imprecise": "background-color:#fff1cc;color:#6d4c00",
    "untested": "background-color:#eceff1;color:#37474f",
}


def verdict_kind(text: object) -> str | None:
    """'false' -> 'wrong', 'true' -> 'right', 'misleading' -> 'imprecise', 'not tested here' -> 'untested';
    None for a verdict whose first word is none of VERDICT_WORDS."""
    first = str(text).strip().lower().split(maxsplit=1)
    word = first[0].strip(".,;:!()") if first else ""
    return next((kind for kind, words in VERDICT_WORDS.items() if word in words), None)


class Table:
    """A small table that renders as HTML in a notebook (and in the book) and as Markdown text elsewhere.

    The HTML has padding and borders; columns that hold only numbers are right-aligned. The column named by
    `verdicts` (by default one named "verdict", if there is one) is highlighted: each cell gets the class
    `verdict verdict-<kind>` and that kind's colours (`verdict_kind`: right, wrong, imprecise, untested)."""

    def __init__(self, columns: Sequence[str], rows: Sequence[Sequence[object]], title: str | None = None,
                 verdicts: str | None = "verdict"):
        for row in rows:
            if len(row) != len(columns):
                raise ValueError(f"row {list(row)!r} has {len(row)} cells, expected {len(columns)} ({list(columns)})")
        self.columns, self.rows, self.title = list(columns), [list(r) for r in rows], title
        lowered = [str(c).strip().lower() for c in self.columns]
        if verdicts is None or verdicts.strip().lower() not in lowered:
            if verdicts not in (None, "verdict"):
                raise ValueError(f"verdicts={verdicts!r} names no column of {self.columns}")
            self.verdict_column = None
        else:
            self.verdict_column = lowered.index(verdicts.strip().lower())

    def _repr_html_(self) -> str:
        numeric = [bool(self.rows) and all(_is_number(row[k]) for row in self.rows) for k in range(len(self.columns))]
        align = ["right" if n else "left" for n in numeric]
        head = "".join(f"<th style='text-align:{a};{_HEAD}'>{html.escape(str(c))}</th>"
                       for c, a in zip(self.columns, align))
        body = "".join("<tr>" + "".join(self._td(k, v, align[k]) for k, v in enumerate(row)) + "</tr>"
                       for row in self.rows)
        caption = (f"<caption style='caption-side:top;text-align:left;font-weight:600;padding:0 0 0.4em'>"
                   f"{html.escape(self.title)}</caption>") if self.title else ""
        return (f"<table class='tinyvit-table' style='border-collapse:collapse;margin:0.4em 0'>{caption}"
                f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def _td(self, column: int, value: object, align: str) -> str:
        text = html.escape(_cell(value))
        kind = verdict_kind(value) if column == self.verdict_column else None
        if kind is None:
            return f"<td style='text-align:{align};{_CELL}'>{text}</td>"
        return (f"<td class='verdict verdict-{kind}' style='text-align:{align};{_CELL};"
                f"{VERDICT_STYLES[kind]};font-weight:600'>{text}</td>")

    def __repr__(self) -> str:
        lines = [f"**{self.title}**", ""] if self.title else []
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "---|" * len(self.columns))
        lines += ["| " + " | ".join(_cell(v).replace("|", "\\|") for v in row) + " |" for row in self.rows]
        return "\n".join(lines)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _cell(value: object) -> str:
    """Integers with thousands separators (as the chapter writes them), everything else as text."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{int(value):,}"
    return str(value)


def _figure_and_axes(ax, size: tuple[float, float]):
    if ax is None:
        return plt.subplots(figsize=size)
    return ax.figure, ax
