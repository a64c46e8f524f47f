import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch

from tinyvit.config import TextConfig, TrainConfig, ViTConfig
from tinyvit.data import BatchConfig, HardNegativeBatches, ShapesConfig, ShapesDataset, negatives_mask
from tinyvit.recipes import (EVAL_ITEMS, PRELOAD_BYTES, SHAPE_PHASE_SHARE, TOKENIZER_CAPTIONS, default_recipe,
                             make_recipe)

FIXTURE = Path(__file__).parent / "fixtures" / "data_default_recipe.pt"


def digest(images: torch.Tensor) -> list[str]:
    """(B, 3, S, S) normalised floats -> a short sha256 of each item's uint8 pixels."""
    pixels = ((images * 0.5 + 0.5) * 255).round().to(torch.uint8)
    return [hashlib.sha256(p.numpy().tobytes()).hexdigest()[:16] for p in pixels]


def test_the_default_recipe_draws_the_scenes_captions_and_batches_it_always_drew():
    # The fixture was written by the code before the data package was split and its research options removed: the
    # shipped run's held-out scores rest on these exact batches.
    expected = torch.load(FIXTURE, weights_only=True)
    recipe = default_recipe()
    shapes, batches, train = recipe["shapes"], recipe["batches"], recipe["train"]
    loader = HardNegativeBatches(shapes, batches, train.batch_size, seed=train.seed)
    for step, want in expected["steps"].items():
        images, captions, indices = loader(step)
        assert captions == want["captions"], step
        assert torch.equal(indices, want["indices"]) and torch.equal(loader.attributes(step), want["attributes"])
        assert digest(images) == want["digests"], step
        keep = negatives_mask(batches, loader, step, indices)
        assert torch.equal(keep, want["keep"]), step
        if step == 0:
            assert torch.equal(((images[:2] * 0.5 + 0.5) * 255).round().to(torch.uint8), expected["pixels"])
    words = ShapesDataset(TOKENIZER_CAPTIONS, shapes, "train", seed=train.seed).captions
    assert hashlib.sha256("\n".join(words).encode()).hexdigest() == expected["tokenizer_captions"]
    held = ShapesDataset(EVAL_ITEMS, shapes, "heldout", seed=train.seed)
    assert hashlib.sha256("\n".join(held.captions).encode()).hexdigest() == expected["heldout_captions"]
    assert torch.equal(torch.stack([held.labels(k) for k in ("shape", "colour", "position")]),
                       expected["heldout_labels"])
    assert digest(torch.stack([held[i][0] for i in range(8)])) == expected["heldout_digests"]


def test_default_recipe_pins_what_makes_shape_learnable():
    from tinyvit.data import RGB

    recipe = default_recipe()
    assert set(recipe) == {"vision", "text", "train", "shapes", "batches"}
    vision, text, train = recipe["vision"], recipe["text"], recipe["train"]
    shapes, batches = recipe["shapes"], recipe["batches"]
    assert isinstance(shapes, ShapesConfig) and isinstance(batches, BatchConfig)
    assert (vision.image_size, vision.patch_size, vision.dropout) == (64, 8, 0.0) and vision.num_tokens == 65
    assert (vision.dim, vision.depth, vision.heads, vision.mlp_dim, vision.out_dim) == (128, 4, 2, 512, 256)
    assert text.vocab_size == 256 and text.kind == "mean"
    assert (train.steps, train.batch_size, train.lr, train.warmup_steps) == (3000, 64, 1e-3, 100)
    assert shapes.image_size == vision.image_size and shapes.unnamed_fraction == 0.3
    assert 0.15 <= shapes.min_size and shapes.max_size <= 0.5
    # Light paper: every named colour (mean over R, G, B, plus the per-object jitter) is darker than the darkest
    # background the recipe draws, its faint tint included, so an edge has one sign for the linear patch embedding.
    darkest_paper = shapes.background[0] * 255 - 10
    assert all(sum(rgb) / 3 + shapes.colour_jitter * 255 < darkest_paper for rgb in RGB.values())
    # Every item in a hard-negative group; the first half of the steps contrasts only the copies of one scene.
    assert batches.hard_fraction == 1.0 and batches.group_size == 4 and batches.shared_attribute_negatives
    assert batches.shape_first_steps == round(train.steps * SHAPE_PHASE_SHARE) == 1500


@pytest.mark.parametrize("steps", [1, 3, 30, 100, 3000, 5000])
def test_default_recipe_for_other_steps_keeps_the_share_of_the_shape_phase(steps):
    recipe = default_recipe(steps)
    assert recipe["train"].steps == steps and recipe["batches"].shape_first_steps == round(steps * SHAPE_PHASE_SHARE)
    assert recipe["train"].warmup_steps == min(100, steps // 10)  # a short run gets a short warm-up
    assert recipe["batches"].shape_first_steps < steps
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="steps must be a positive integer"):
            default_recipe(bad)


def test_make_recipe_without_a_config_or_flags_is_the_default_recipe():
    assert make_recipe() == default_recipe()
    assert make_recipe(steps=None, lr=None) == default_recipe()


def test_make_recipe_flags_override_their_fields():
    recipe = make_recipe(image_size=32, patch_size=4, text_encoder="transformer", vocab_size=100, batch_size=16,
                         lr=3e-4, seed=5, device="cpu", precision="fp32")
    assert (recipe["vision"].image_size, recipe["vision"].patch_size) == (32, 4)
    assert recipe["shapes"].image_size == 32  # the data is drawn at the model's size
    assert (recipe["text"].kind, recipe["text"].vocab_size) == ("transformer", 100)
    train = recipe["train"]
    assert (train.batch_size, train.lr, train.seed, train.device, train.precision) == (16, 3e-4, 5, "cpu", "fp32")
    assert train.steps == 3000 and recipe["batches"] == default_recipe()["batches"]
    with pytest.raises(TypeError, match="unknown flags"):
        make_recipe(epochs=3)


def test_make_recipe_builds_the_recipe_for_the_steps_asked():
    assert make_recipe(steps=100) == default_recipe(100)
    assert make_recipe(steps=100)["batches"].shape_first_steps == 50
    assert make_recipe({"train": {"steps": 40}}) == default_recipe(40)  # steps named in the config
    assert make_recipe({"train": {"steps": 40}}, steps=60)["train"].steps == 60  # the flag wins


def test_a_shape_phase_named_in_the_config_is_kept_and_checked_against_the_steps(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"train": {"steps": 40}, "batches": {"shape_first_steps": 30}}))
    assert make_recipe(config)["batches"].shape_first_steps == 30
    assert make_recipe(config, steps=100)["batches"].shape_first_steps == 30  # kept, not rescaled
    with pytest.raises(ValueError, match=r"shape_first_steps \(30\) must be fewer than the training steps \(20\)"):
        make_recipe(config, steps=20)
    assert make_recipe({"batches": {"shape_first_steps": 0}}, steps=20)["batches"].shape_first_steps == 0


def test_make_recipe_reads_sections_a_run_config_and_a_bare_vit_config(tmp_path):
    run = {section: cfg.to_dict() for section, cfg in default_recipe(200).items()}
    path = tmp_path / "run.json"
    path.write_text(json.dumps({**run, "data": "shapes"}))
    assert make_recipe(path) == default_recipe(200)  # a run's config.json gives that run's recipe back
    bare = tmp_path / "vision_tiny.json"
    bare.write_text(json.dumps({"img_size": 32, "patch": 8, "d_model": 64, "n_layers": 2, "n_heads": 2}))
    recipe = make_recipe(bare)
    assert recipe["vision"] == dataclasses.replace(ViTConfig(image_size=32, patch_size=8, dim=64, depth=2, heads=2),
                                                   dropout=0.0)
    assert recipe["shapes"].image_size == 32 and isinstance(recipe["text"], TextConfig)
    assert isinstance(recipe["train"], TrainConfig)


@pytest.mark.parametrize("config, message", [
    ({"vision": {}, "model": {"dim": 8}}, "unknown section 'model'"),
    ({"model": {"dim": 8}}, "unknown ViTConfig key 'model'"),  # no known section: a bare ViT config
    ({"vision": 3}, "unknown section 'vision'"),
    ({"shapes": {"late_background": [0.1, 0.2]}}, "shapes.late_background is a research option"),
    ({"shapes": {"colour": "red"}}, "unknown ShapesConfig key 'colour'"),
    ({"batches": {"binding_fraction": 0.5}}, "unknown BatchConfig key 'binding_fraction'"),
    ({"text": {"kind": "bigrams"}}, "the text encoder kind 'bigrams' is no longer part of tinyvit"),
    ({"text": {"kind": "lstm"}}, "TextConfig.kind must be one of"),
])
def test_make_recipe_refuses_unknown_or_misplaced_settings_by_name(config, message):
    with pytest.raises(ValueError, match=message):
        make_recipe(config)


def test_cli_defaults():
    assert EVAL_ITEMS == 500 and TOKENIZER_CAPTIONS == 4000 and PRELOAD_BYTES == 1 << 30


def test_make_recipe_reads_a_run_saved_by_older_code():
    # data/shapes_clip was saved with the batch keys inside "shapes": they land in "batches", as the run had them
    recipe = make_recipe(Path(__file__).resolve().parents[1] / "data" / "shapes_clip" / "config.json")
    default = default_recipe()
    assert recipe["batches"] == default["batches"] and recipe["shapes"] == default["shapes"]
    assert recipe["vision"] == default["vision"] and recipe["train"].steps == 3000
    moved = make_recipe({"shapes": {"hard_fraction": 1.0, "shape_first_steps": 20}}, steps=50)
    assert moved["batches"].shape_first_steps == 20 and "hard_fraction" not in moved["shapes"].to_dict()


def test_short_recipe_is_the_default_recipe_on_smaller_images():
    from tinyvit.recipes import SHORT_SHAPE_SHARE, short_recipe
    short, full = short_recipe(700), default_recipe(700)
    assert short["vision"].num_tokens == 17 and short["shapes"].image_size == 32
    assert short["batches"].shape_first_steps == round(700 * SHORT_SHAPE_SHARE) < 700
    for section in ("text", "shapes", "batches", "train", "vision"):  # the same cures and sizes otherwise
        mine, theirs = short[section].to_dict(), full[section].to_dict()
        changed = {k for k in mine if mine[k] != theirs[k]}
        assert changed <= {"image_size", "shape_first_steps", "eval_every", "device"}, (section, changed)
