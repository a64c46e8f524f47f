"""ipywidgets explorers for the notebooks: patch size, attention by layer/head/query, a live loss curve.

Each explorer is a `VBox` (so a notebook displays it by naming it) with a plain method that does what its
controls do (`set_patch_size`, `select`), so tests and notebooks can drive it without a browser.
Pictures go into an `Image` widget as PNG bytes, so a saved notebook (and the book) keeps the last view.

In the static book no kernel runs, so a slider there would move nothing. Each explorer with controls therefore
carries a note (`LiveNote`) right under its controls, hidden wherever the explorer is live (JupyterLab,
Notebook) and shown by the book's stylesheet (book/_assets/tinyvit.css), which also greys out the controls:
the book says "live in JupyterLab" instead of offering a dead slider.
"""
from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from . import viz


def patch_facts(image_size: int, patch_size: int, heads: int = 1, bytes_per_entry: int = 4,
                channels: int = 3) -> dict[str, int]:
    """The arithmetic of one patch size: grid side, patches, tokens (with CLS), numbers per patch, attention
    entries and bytes for `heads` attention matrices of one image (fp32: 4 bytes per entry)."""
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    grid = image_size // patch_size
    tokens = grid * grid + 1
    entries = heads * tokens * tokens
    return {"grid": grid, "patches": grid * grid, "tokens": tokens, "patch_dim": channels * patch_size**2,
            "entries": entries, "bytes": entries * bytes_per_entry}


def divisors_between(n: int, low: int, high: int) -> list[int]:
    """The divisors of n in [low, high]: the patch sizes that tile an n x n image exactly."""
    return [d for d in range(low, high + 1) if n % d == 0]


def format_bytes(count: int) -> str:
    """Bytes in binary units: 153664 -> '150.1 KiB'."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


LIVE_NOTE_CLASS = "tinyvit-live-note"  # the book's CSS shows this note; everywhere else it stays hidden


class LiveNote(widgets.HTML):
    """A note that only the static book shows: "Live in JupyterLab: run the notebook to move the slider".

    Its layout is display: none (set inline on the widget, so JupyterLab takes no room for it); the book's
    stylesheet shows any widget that holds a `.tinyvit-live-note`."""

    def __init__(self, controls: str = "slider"):
        text = (f"<b>Live in JupyterLab</b>: run the notebook to move the {controls}. The book runs no Python, "
                f"so here it shows the view saved with the notebook.")
        super().__init__(f"<div class='{LIVE_NOTE_CLASS}'>{text}</div>",
                         layout=widgets.Layout(display="none"))


def figure_png(fig) -> bytes:
    """Render a figure to PNG bytes and close it (so the notebook does not also show it)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=72, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


class PatchExplorer(widgets.VBox):
    """A slider over the patch sizes that tile the image; shows the grid, the token count and the attention
    matrix's size and fp32 memory. image: (C, H, W) in [0, 1], square."""

    def __init__(self, image: torch.Tensor, sizes: Sequence[int] | None = None, value: int = 16, heads: int = 1):
        _, H, W = image.shape
        if H != W:
            raise ValueError(f"PatchExplorer expects a square image, got {H}x{W}")
        sizes = list(sizes) if sizes is not None else divisors_between(H, 4, 56)
        bad = [p for p in sizes if H % p]
        if bad or value not in sizes:
            raise ValueError(f"patch sizes must divide {H} and include the start value {value}; got {sizes}")
        self.image, self.heads = image, heads
        self.slider = widgets.SelectionSlider(options=sizes, value=value, description="patch size",
                                              continuous_update=False)
        self.info = widgets.HTML()
        self.picture = widgets.Image(format="png", width=360)
        self.slider.observe(lambda change: self._update(), names="value")
        super().__init__([self.slider, LiveNote("slider"), self.info, self.picture])
        self._update()

    def set_patch_size(self, patch_size: int) -> None:
        """Move the slider, as a learner would; the grid and the numbers follow."""
        if patch_size not in self.slider.options:
            raise ValueError(f"patch size {patch_size} is not one of {list(self.slider.options)}")
        self.slider.value = patch_size

    def _update(self) -> None:
        p = self.slider.value
        facts = patch_facts(self.image.shape[-1], p, self.heads, channels=self.image.shape[0])
        head_word = "one head" if self.heads == 1 else f"{self.heads} heads"
        self.info.value = (
            f"<b>{p}x{p}</b> patches of {facts['patch_dim']:,} numbers: a {facts['grid']}x{facts['grid']} grid = "
            f"<b>{facts['patches']:,} patches</b>, + CLS = <b>{facts['tokens']:,} tokens</b><br>"
            f"attention ({head_word}): {facts['tokens']:,} x {facts['tokens']:,} = "
            f"<b>{facts['entries']:,} entries</b> = {format_bytes(facts['bytes'])} in fp32"
        )
        self.picture.value = figure_png(viz.show_patch_grid(self.image, p, numbers=facts["grid"] <= 8))


class AttentionExplorer(widgets.VBox):
    """Pick a layer, a head and a query token (0 = CLS) and see its attention over the patches, drawn on the image.

    attentions: per layer, (h, N, N) or (1, h, N, N) weights, as `VisionEncoder(..., return_attention=True)` gives.
    layer, head, query: the view it opens with (layer 0's CLS token by default); the info line always names
    the view shown, so a notebook that describes the explorer describes the view it opens with.
    """

    def __init__(self, image: torch.Tensor, attentions: Sequence[torch.Tensor], patch_size: int,
                 layer: int = 0, head: int = 0, query: int = 0):
        maps = [(a[0] if a.ndim == 4 else a).detach() for a in attentions]  # each (h, N, N)
        if not maps or any(m.ndim != 3 or m.shape != maps[0].shape for m in maps):
            shapes = [tuple(a.shape) for a in attentions]
            raise ValueError(f"expected a list of (h, N, N) attention weights, got shapes {shapes}")
        grid = image.shape[-1] // patch_size
        if maps[0].shape[-1] != grid * grid + 1:
            raise ValueError(f"attention over {maps[0].shape[-1]} tokens does not fit a {grid}x{grid} grid + CLS")
        self.image, self.maps, self.patch_size = image, maps, patch_size
        h, N = maps[0].shape[0], maps[0].shape[-1]
        self.layer = widgets.IntSlider(0, 0, len(maps) - 1, description="layer", continuous_update=False)
        self.head = widgets.IntSlider(0, 0, h - 1, description="head", continuous_update=False)
        self.query = widgets.IntSlider(0, 0, N - 1, description="query token", continuous_update=False)
        self.info = widgets.HTML()
        self.picture = widgets.Image(format="png", width=360)
        self._paused = False  # set while `select` moves several controls, so the picture is drawn once
        for control in (self.layer, self.head, self.query):
            control.observe(lambda change: self._paused or self._update(), names="value")
        super().__init__([widgets.HBox([self.layer, self.head]), self.query, LiveNote("sliders"), self.info,
                          self.picture])
        self.select(layer, head, query)

    def select(self, layer: int, head: int, query: int) -> None:
        """Set all three controls at once; the picture follows."""
        controls = (("layer", layer, self.layer), ("head", head, self.head), ("query", query, self.query))
        for name, value, control in controls:
            if not control.min <= value <= control.max:
                raise ValueError(f"{name} must be in {control.min}..{control.max}, got {value}")
        self._paused = True
        try:
            self.layer.value, self.head.value, self.query.value = layer, head, query
        finally:
            self._paused = False
        self._update()

    def current(self) -> torch.Tensor:
        """The shown query's attention over the patches (CLS column dropped), (P,)."""
        return self.maps[self.layer.value][self.head.value, self.query.value, 1:]

    def view(self) -> str:
        """The view shown, in words: 'layer 0, head 0, query = CLS'."""
        q = self.query.value
        who = "CLS" if q == 0 else f"patch {q - 1}"
        return f"layer {self.layer.value}, head {self.head.value}, query = {who}"

    def _update(self) -> None:
        weights = self.current()
        q = self.query.value
        who = "CLS" if q == 0 else f"patch {q - 1}"
        on_cls = float(self.maps[self.layer.value][self.head.value, q, 0])
        self.info.value = f"{self.view()}: {1 - on_cls:.1%} of its attention on patches, {on_cls:.1%} on CLS"
        fig = viz.show_attention_map(self.image, weights, self.patch_size, title=f"where {who} looks")
        self.picture.value = figure_png(fig)


class LiveLoss(widgets.VBox):
    """A loss curve that redraws while `train.fit` runs: pass `live.wrap(loss_fn)` as fit's loss function and
    every `every` steps the picture shows the losses so far (the last step's loss in the line above it)."""

    def __init__(self, every: int = 10, title: str = "training loss"):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer (steps between redraws), got {every!r}")
        self.every, self.title, self.losses = every, title, []
        self.info = widgets.HTML("no steps yet")
        self.picture = widgets.Image(format="png", width=420)
        super().__init__([self.info, self.picture])

    def wrap(self, loss_fn: Callable[[Any, Any], torch.Tensor]) -> Callable[[Any, Any], torch.Tensor]:
        """loss_fn(model, batch) -> scalar tensor, recorded on its way back to the trainer."""
        def recorded(model, batch):
            loss = loss_fn(model, batch)
            self.record(loss.item())
            return loss
        return recorded

    def record(self, loss: float) -> None:
        """Add one step's loss; redraw when the step count is a multiple of `every`."""
        self.losses.append(float(loss))
        if len(self.losses) % self.every == 0:
            self.draw()

    def draw(self) -> None:
        """Show every loss recorded so far."""
        if not self.losses:
            raise ValueError("LiveLoss has no losses to draw yet: record() some first")
        self.info.value = f"step {len(self.losses)}: loss {self.losses[-1]:.3f}"
        fig = viz.plot_curves({self.title: self.losses}, xlabel="step")
        fig.set_size_inches(6, 3)
        self.picture.value = figure_png(fig)
