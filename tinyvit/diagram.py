"""The course's architecture figure: the whole pipeline, drawn with matplotlib from a `ViTConfig`.

Top lane, the vision encoder: pixels -> patches -> patch embedding -> CLS + positions -> blocks -> CLS ->
projector. Its output, the image token, goes two ways: into the Thinker beside the question's text tokens
(how the token is used), and into InfoNCE against the caption's text token (how the encoder is trained).
Every number on the figure comes from the config, so the figure cannot drift from the model.

    python -m tinyvit.diagram book/_assets/architecture.svg
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

from .config import ViTConfig

ENCODER, TRAINING, THINKER = "#dbe9f6", "#fde3c8", "#d9f0d3"  # fill colours of the three kinds of box
EDGE = "#4a4a4a"
TEXT_TOKENS = 5  # the chapter's example question, "What animal is this?", as 5 text tokens


@dataclass(frozen=True)
class Stage:
    """One box of the figure: a title, the shape of what it holds or outputs, a one-line note, a colour."""

    title: str
    shape: str
    note: str
    colour: str = ENCODER


def encoder_stages(cfg: ViTConfig) -> list[Stage]:
    """The vision encoder's steps with the shapes `cfg` gives (one image, batch axis left out)."""
    g, p = cfg.grid_size, cfg.patch_size
    return [
        Stage("pixels", f"({cfg.in_channels}, {cfg.image_size}, {cfg.image_size})",
              f"{cfg.in_channels * cfg.image_size**2:,} numbers"),
        Stage("patches", f"({cfg.num_patches}, {cfg.patch_dim})", f"{g} x {g} grid of {p} x {p}"),
        Stage("patch embedding", f"({cfg.num_patches}, {cfg.dim})", f"linear {cfg.patch_dim} → {cfg.dim}"),
        Stage("+ CLS, + positions", f"({cfg.num_tokens}, {cfg.dim})", f"1 + {cfg.num_patches} tokens"),
        Stage(f"{cfg.depth} pre-norm blocks", f"({cfg.num_tokens}, {cfg.dim})",
              f"{cfg.heads} heads, MLP {cfg.mlp_dim}"),
        Stage("CLS token", f"({cfg.dim},)", "its final state"),
        Stage("projector", f"({cfg.out_dim},)", f"linear {cfg.dim} → {cfg.out_dim}"),
    ]


def side_stages(cfg: ViTConfig, text_tokens: int = TEXT_TOKENS) -> dict[str, Stage]:
    """The boxes below the encoder: the image token, the CLIP training side and the Thinker side."""
    E = cfg.out_dim
    return {
        "image token": Stage("image token", f"({E},)", "one vector per image"),
        "caption": Stage("caption", "str", '"a red square ..."', TRAINING),
        "tokenizer": Stage("SentencePiece", "(T,) ids", "word pieces", TRAINING),
        "text encoder": Stage("text encoder", f"({E},)", "the text token", TRAINING),
        "infonce": Stage("InfoNCE", "(B, B) logits", "matching pairs closer", TRAINING),
        "question": Stage("text tokens", f"({text_tokens}, {E})", '"What animal is this?"', THINKER),
        "thinker": Stage("Thinker", f"({1 + text_tokens}, {E})", f"1 image + {text_tokens} text tokens",
                         THINKER),
    }


def architecture_figure(cfg: ViTConfig | None = None, text_tokens: int = TEXT_TOKENS) -> Figure:
    """The pipeline figure for `cfg` (the chapter's ViT-Tiny by default), as a matplotlib Figure."""
    cfg = cfg or ViTConfig()
    fig = Figure(figsize=(13.0, 5.6))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 13.0)
    ax.set_ylim(0, 5.6)
    ax.axis("off")
    w, h = 1.62, 1.0  # box size in inches (the axes span the figure, 1 unit = 1 inch)

    # The vision encoder: one lane of boxes inside a shaded band.
    ax.add_patch(FancyBboxPatch((0.12, 3.55), 12.76, 1.85, boxstyle="round,pad=0,rounding_size=0.12",
                                facecolor="#f4f8fc", edgecolor="#9bb7d4", linewidth=1.0))
    ax.text(0.28, 5.18, f"vision encoder (ViT-Tiny: {cfg.image_size} px, patch {cfg.patch_size}, "
            f"width {cfg.dim})", fontsize=10.5, fontweight="bold", va="center", color="#2c4f73")
    top = {}
    for i, stage in enumerate(encoder_stages(cfg)):
        x = 0.3 + i * 1.8
        top[i] = _box(ax, x, 3.75, w, h, stage)
        if i:
            _arrow(ax, (x - 0.18 + 0.0, 4.25), (x, 4.25))
    _patch_grid(ax, 1.8 + 0.3 + w - 0.36, 3.75 + h - 0.36, 0.28, min(cfg.grid_size, 7))

    side = side_stages(cfg, text_tokens)
    image = _box(ax, 9.6, 2.05, w + 0.25, h, side["image token"])
    _arrow(ax, (top[6][0] + w / 2, 3.75), (image[0] + (w + 0.25) / 2 + 0.3, 2.05 + h), rad=0.0)

    # Training (CLIP): caption -> SentencePiece -> text encoder -> InfoNCE <- image token.
    ax.text(0.28, 1.72, "training (CLIP)", fontsize=10, fontweight="bold", color="#9a5b13")
    x0 = 0.3
    keys = ["caption", "tokenizer", "text encoder", "infonce"]
    boxes = [_box(ax, x0 + i * 1.95, 0.45, w, h, side[k]) for i, k in enumerate(keys)]
    for a, b in zip(boxes, boxes[1:]):
        _arrow(ax, (a[0] + w, 0.95), (b[0], 0.95))
    _arrow(ax, (image[0], 2.55), (boxes[-1][0] + w / 2, 0.45 + h), rad=0.25, style="-|>")

    # Use: the image token beside the question's text tokens, into the Thinker.
    ax.text(9.6, 1.72, "use (Thinker)", fontsize=10, fontweight="bold", color="#2f6b25")
    question = _box(ax, 9.05, 0.45, w, h, side["question"])
    thinker = _box(ax, 11.1, 0.45, w + 0.1, h, side["thinker"])
    _arrow(ax, (question[0] + w, 0.95), (thinker[0], 0.95))
    _arrow(ax, (image[0] + w + 0.25, 2.55), (thinker[0] + (w + 0.1) / 2, 0.45 + h), rad=-0.25)
    return fig


def save_architecture(path: str | Path, cfg: ViTConfig | None = None) -> Path:
    """Write the figure to `path` (SVG, PNG or PDF by its suffix); an SVG keeps its labels as text and no date,
    so saving again gives the same file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = architecture_figure(cfg)
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "tinyvit"}):
        metadata = {"Date": None} if path.suffix == ".svg" else None
        fig.savefig(path, metadata=metadata, dpi=110)
    return path


def _box(ax, x: float, y: float, w: float, h: float, stage: Stage) -> tuple[float, float]:
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=0.08",
                                facecolor=stage.colour, edgecolor=EDGE, linewidth=1.0))
    ax.text(x + w / 2, y + h * 0.76, stage.title, ha="center", va="center", fontsize=9.5, fontweight="bold")
    ax.text(x + w / 2, y + h * 0.47, stage.shape, ha="center", va="center", fontsize=9.5, family="monospace")
    ax.text(x + w / 2, y + h * 0.18, stage.note, ha="center", va="center", fontsize=8, color="#333333")
    return x, y


def _arrow(ax, start, end, rad: float = 0.0, style: str = "-|>") -> None:
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=12, linewidth=1.2, color=EDGE,
                                 connectionstyle=f"arc3,rad={rad}", shrinkA=1, shrinkB=1))


def _patch_grid(ax, x: float, y: float, size: float, n: int) -> None:
    """A small n x n grid in a box's corner: the patches, drawn as what they are."""
    cell = size / n
    for r in range(n):
        for c in range(n):
            shade = "#7fa6cc" if (r + c) % 2 else "#b9d0e6"
            ax.add_patch(Rectangle((x + c * cell, y + r * cell), cell, cell, facecolor=shade,
                                   edgecolor="white", linewidth=0.3))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tinyvit.diagram OUTPUT.svg", file=sys.stderr)
        return 2
    print(save_architecture(args[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
