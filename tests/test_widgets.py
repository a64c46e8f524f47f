import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch

from tinyvit import ViTConfig, VisionEncoder
from tinyvit.widgets import (LIVE_NOTE_CLASS, AttentionExplorer, LiveLoss, LiveNote, PatchExplorer,
                             divisors_between, format_bytes, patch_facts)

PNG = b"\x89PNG"


def test_patch_facts_for_the_chapter_config():
    facts = patch_facts(224, 16)
    assert facts == {"grid": 14, "patches": 196, "tokens": 197, "patch_dim": 768, "entries": 38_809,
                     "bytes": 155_236}
    assert patch_facts(224, 16, heads=2)["entries"] == 2 * 197**2
    with pytest.raises(ValueError, match="224 is not a multiple of patch_size 15"):
        patch_facts(224, 15)


def test_helpers():
    assert divisors_between(224, 4, 56) == [4, 7, 8, 14, 16, 28, 32, 56]
    assert format_bytes(512) == "512 B"
    assert format_bytes(196**2 * 4) == "150.1 KiB"
    assert format_bytes(50_176**2 * 4) == "9.4 GiB"


def test_patch_explorer_follows_the_slider():
    explorer = PatchExplorer(torch.rand(3, 224, 224))
    assert list(explorer.slider.options) == [4, 7, 8, 14, 16, 28, 32, 56]
    assert "196 patches" in explorer.info.value and "197 tokens" in explorer.info.value
    first_picture = bytes(explorer.picture.value)
    assert bytes(first_picture).startswith(PNG)
    explorer.set_patch_size(32)
    assert "49 patches" in explorer.info.value and "50 tokens" in explorer.info.value
    assert "2,500 entries" in explorer.info.value and "9.8 KiB" in explorer.info.value
    assert bytes(explorer.picture.value) != first_picture
    explorer.slider.value = 4  # as a drag in the browser would
    assert "3,136 patches" in explorer.info.value and "9,840,769 entries" in explorer.info.value
    assert not plt.get_fignums()  # the figures went into the widget, none left open for the notebook
    with pytest.raises(ValueError, match="patch size 5 is not one of"):
        explorer.set_patch_size(5)


def test_patch_explorer_rejects_bad_images_and_sizes():
    with pytest.raises(ValueError, match="square image, got 32x48"):
        PatchExplorer(torch.rand(3, 32, 48))
    with pytest.raises(ValueError, match="must divide 32"):
        PatchExplorer(torch.rand(3, 32, 32), sizes=[4, 5], value=4)


def test_attention_explorer_shows_the_chosen_query():
    cfg = ViTConfig(image_size=32, patch_size=8, dim=32, depth=2, heads=2, mlp_dim=64)
    model = VisionEncoder(cfg).eval()
    image = torch.rand(3, 32, 32)
    _, attentions = model(image[None], return_attention=True)
    explorer = AttentionExplorer(image, attentions, cfg.patch_size)
    assert explorer.info.value.startswith("layer 0, head 0, query = CLS: ")
    explorer.select(1, 1, 5)
    assert "layer 1, head 1, query = patch 4" in explorer.info.value
    torch.testing.assert_close(explorer.current(), attentions[1][0, 1, 5, 1:].detach())
    assert bytes(explorer.picture.value).startswith(PNG)
    with pytest.raises(ValueError, match="head must be in 0..1, got 2"):
        explorer.select(0, 2, 0)
    with pytest.raises(ValueError, match="does not fit a 2x2 grid"):
        AttentionExplorer(image, attentions, 16)


def test_attention_explorer_opens_at_the_view_it_is_given():
    cfg = ViTConfig(image_size=32, patch_size=8, dim=32, depth=2, heads=2, mlp_dim=64)
    image = torch.rand(3, 32, 32)
    _, attentions = VisionEncoder(cfg).eval()(image[None], return_attention=True)
    explorer = AttentionExplorer(image, attentions, cfg.patch_size, layer=1, head=0, query=3)
    assert (explorer.layer.value, explorer.head.value, explorer.query.value) == (1, 0, 3)
    assert explorer.view() == "layer 1, head 0, query = patch 2"
    assert explorer.info.value.startswith("layer 1, head 0, query = patch 2: ")
    torch.testing.assert_close(explorer.current(), attentions[1][0, 0, 3, 1:].detach())
    assert AttentionExplorer(image, attentions, cfg.patch_size).view() == "layer 0, head 0, query = CLS"
    with pytest.raises(ValueError, match="query must be in 0..16, got 17"):
        AttentionExplorer(image, attentions, cfg.patch_size, query=17)


@pytest.mark.parametrize("make", [
    lambda: PatchExplorer(torch.rand(3, 32, 32), value=8),
    lambda: AttentionExplorer(torch.rand(3, 32, 32), [torch.rand(2, 17, 17)], 8),
], ids=["patch", "attention"])
def test_explorers_carry_a_note_only_the_book_shows(make):
    """Right under the controls: a note for the static book, where no kernel can move them. It is hidden by
    the widget's own layout (JupyterLab shows nothing for it); book/_assets/tinyvit.css shows it."""
    explorer = make()
    notes = [child for child in explorer.children if isinstance(child, LiveNote)]
    assert len(notes) == 1 and notes[0].layout.display == "none"
    assert f"class='{LIVE_NOTE_CLASS}'" in notes[0].value
    assert "<b>Live in JupyterLab</b>: run the notebook" in notes[0].value
    controls = {PatchExplorer: "slider", AttentionExplorer: "sliders"}[type(explorer)]
    assert f"to move the {controls}." in notes[0].value
    index = explorer.children.index(notes[0])
    assert index == (1 if isinstance(explorer, PatchExplorer) else 2)  # just under the slider(s)
    assert LIVE_NOTE_CLASS not in explorer.info.value  # the info line a notebook may print stays plain


def test_live_loss_records_what_the_trainer_sees_and_redraws_every_few_steps():
    live = LiveLoss(every=3)
    loss_fn = live.wrap(lambda model, batch: (model * batch).sum())
    weight = torch.tensor(2.0, requires_grad=True)
    losses = [loss_fn(weight, torch.tensor(float(x))) for x in (1, 2)]
    assert [loss.item() for loss in losses] == [2.0, 4.0] and losses[0].requires_grad  # handed back untouched
    assert live.losses == [2.0, 4.0] and live.picture.value == b"" and live.info.value == "no steps yet"
    loss_fn(weight, torch.tensor(3.0))
    assert live.info.value == "step 3: loss 6.000" and bytes(live.picture.value).startswith(PNG)
    assert not plt.get_fignums()
    with pytest.raises(ValueError, match="every must be a positive integer"):
        LiveLoss(every=0)
    with pytest.raises(ValueError, match="no losses to draw yet"):
        LiveLoss().draw()
