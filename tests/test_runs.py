import argparse
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from tinyvit import load_run
from tinyvit.config import TextConfig, TrainConfig, ViTConfig
from tinyvit.contrastive import CLIP
from tinyvit.data import BatchConfig, ShapesConfig
from tinyvit.runs import (
    FORMAT, FORMAT_VERSION, RUN_FILES, check_configs, check_out_folder, convert_old_configs, holds_clip_run,
    load_checkpoint, load_clip_encoder, publish, read_run_config, save_checkpoint, staged_run, write_json,
)
from tinyvit.text import Tokenizer
from tinyvit.thinker import load_thinker

DATA = Path(__file__).resolve().parents[1] / "data"
VISION = ViTConfig(image_size=16, patch_size=8, dim=32, depth=1, heads=2, mlp_dim=64, out_dim=16)
TEXT = TextConfig(vocab_size=40, context_length=8, dim=32, out_dim=16)
OLD_SHAPES = {  # a config.json "shapes" section as older tinyvit saved it (see data/shapes_clip/config.json)
    "image_size": 64, "unnamed_fraction": 0.3, "background": [0.75, 0.95], "hard_fraction": 1.0, "group_size": 4,
    "shared_attribute_negatives": True, "shape_first_steps": 1500, "binding_fraction": 0.0, "binding_named": "random",
    "late_background": None, "late_background_share": 1.0, "late_background_ramp": 0, "place_fraction": 0.0,
}


def tiny_run(folder: Path, config: dict | None = None) -> CLIP:
    """A run folder as `train` writes it (checkpoint, tokenizer, config.json), from an untrained tiny CLIP."""
    torch.manual_seed(0)
    model = CLIP(VISION, TEXT)
    tokenizer = Tokenizer.train(["a red circle", "a blue square", "a green star on the left"] * 4, 40)
    save_checkpoint(folder / "checkpoint.pt", model=model.state_dict(), configs=model.configs(),
                    tokenizer=tokenizer.to_bytes())
    tokenizer.save(folder / "tokenizer.model")
    write_json(folder / "config.json", config or {**model.configs(), "train": TrainConfig().to_dict(), "data": "x"})
    return model


# --- checkpoints ----------------------------------------------------------------------------------------------

def test_checkpoint_round_trip_keeps_every_kind_of_value_and_the_format_marker(tmp_path):
    state = {"weights": torch.arange(6.0).view(2, 3), "step": 7, "history": {"loss": [1.5, 0.5]},
             "tokenizer": b"\x00proto\xff", "name": "run"}
    save_checkpoint(tmp_path / "c.pt", **state)
    ckpt = load_checkpoint(tmp_path / "c.pt")
    assert ckpt["format"] == FORMAT and ckpt["version"] == FORMAT_VERSION
    assert torch.equal(ckpt["weights"], state["weights"])
    assert {k: ckpt[k] for k in ("step", "history", "tokenizer", "name")} == {k: state[k] for k in
                                                                              ("step", "history", "tokenizer", "name")}
    assert torch.load(tmp_path / "c.pt", weights_only=True)["step"] == 7  # plain data: no tinyvit needed to read it


def test_atomic_save_leaves_no_temp_file_and_a_failed_write_keeps_the_old_checkpoint(tmp_path):
    path = tmp_path / "run" / "checkpoint.pt"
    save_checkpoint(path, step=1, weights=torch.ones(3))
    assert os.listdir(path.parent) == ["checkpoint.pt"]
    with pytest.raises(Exception):
        save_checkpoint(path, step=2, weights=torch.zeros(3), bad=lambda: None)  # a lambda cannot be pickled
    assert os.listdir(path.parent) == ["checkpoint.pt"]
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 1 and torch.equal(ckpt["weights"], torch.ones(3))


def test_a_failed_json_write_keeps_the_old_file(tmp_path):
    write_json(tmp_path / "metrics.json", {"n": 1})
    with pytest.raises(TypeError):
        write_json(tmp_path / "metrics.json", {"n": object()})
    assert os.listdir(tmp_path) == ["metrics.json"]
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"n": 1}


def test_load_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="junk.pt is not a readable tinyvit checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="foreign.pt is not a tinyvit checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    torch.save({"format": FORMAT, "version": FORMAT_VERSION + 1}, tmp_path / "newer.pt")
    with pytest.raises(ValueError, match=f"format version {FORMAT_VERSION + 1}, expected {FORMAT_VERSION}"):
        load_checkpoint(tmp_path / "newer.pt")


def test_checkpoint_with_code_in_it_is_refused_by_weights_only(tmp_path):
    torch.save({"format": "tinyvit-checkpoint", "version": 1, "obj": argparse.Namespace(a=1)},
               tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a readable tinyvit checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


# --- configs saved by older code --------------------------------------------------------------------------------

def test_old_shapes_configs_move_their_batch_keys_and_drop_removed_options_at_their_defaults():
    new = convert_old_configs({"shapes": OLD_SHAPES, "data": "shapes"}, "config.json")
    assert new["batches"] == {"hard_fraction": 1.0, "group_size": 4, "shared_attribute_negatives": True,
                              "shape_first_steps": 1500}
    assert new["shapes"] == {"image_size": 64, "unnamed_fraction": 0.3, "background": [0.75, 0.95]}
    assert ShapesConfig.from_dict(new["shapes"]) and BatchConfig.from_dict(new["batches"])
    assert "binding_fraction" in OLD_SHAPES and new["data"] == "shapes"  # the input is left as it was
    assert convert_old_configs({"shapes": {**OLD_SHAPES, "background": (0.75, 0.95)}}, "c")["shapes"]["background"]


@pytest.mark.parametrize("key, value", [("binding_fraction", 0.25), ("binding_named", "first_shape"),
                                        ("late_background", [0.3, 0.6]), ("late_background_share", 0.5),
                                        ("late_background_ramp", 100), ("place_fraction", 0.5)])
def test_a_removed_option_that_was_used_is_refused_by_name(key, value):
    with pytest.raises(ValueError, match=rf"old.json: shapes\.{key} is a research option tinyvit no longer has"):
        convert_old_configs({"shapes": {**OLD_SHAPES, key: value}}, "old.json")


@pytest.mark.parametrize("kind", ["pairs", "bigrams"])
def test_removed_text_kinds_are_refused_with_the_kinds_left(kind):
    with pytest.raises(ValueError, match=rf"kind '{kind}' is no longer part of tinyvit \(kinds: 'mean', 'transformer'"):
        convert_old_configs({"text": {"kind": kind, "bigram_buckets": 4096}}, "old.json")
    with pytest.raises(ValueError, match=r"text\.bigram_buckets is a research option"):
        convert_old_configs({"text": {"kind": "mean", "bigram_buckets": 512}}, "old.json")
    assert convert_old_configs({"text": {"kind": "mean", "bigram_buckets": 4096}}, "old.json") == {
        "text": {"kind": "mean"}}


def test_configs_from_before_a_field_existed_still_match_its_old_value():
    old = convert_old_configs({"vision": {"dim": 32}}, "old.pt")  # saved before ViTConfig.pos_init existed
    check_configs({"vision": {"dim": 32, "pos_init": "normal"}}, old)  # what every older run had
    check_configs(old, {"vision": {"dim": 32, "pos_init": "normal"}})  # and the other way round
    with pytest.raises(ValueError, match="vision.pos_init: expected 'sincos', found 'normal'"):
        check_configs({"vision": {"dim": 32, "pos_init": "sincos"}}, old)
    with pytest.raises(ValueError, match="vision.depth: expected 2, found nothing"):
        check_configs({"vision": {"dim": 32, "depth": 2}}, old)  # other missing fields still count
    assert convert_old_configs({"vision": {"pos_init": "sincos"}}, "x")["vision"]["pos_init"] == "sincos"


def test_read_run_config_gives_config_objects_and_names_what_is_wrong(tmp_path):
    tiny_run(tmp_path)
    configs = read_run_config(tmp_path)
    assert configs["vision"] == VISION and configs["text"] == TEXT and configs["train"] == TrainConfig()
    assert configs["data"] == "x" and "shapes" not in configs
    for bad, message in (({"vision": VISION.to_dict()}, "needs 'vision' and 'text' sections"),
                         ({"vision": VISION.to_dict(), "text": TEXT.to_dict(), "extra": {}}, "unknown section"),
                         ({"vision": {**VISION.to_dict(), "depht": 1}, "text": TEXT.to_dict()}, "depht")):
        write_json(tmp_path / "config.json", bad)
        with pytest.raises(ValueError, match=message):
            read_run_config(tmp_path)


# --- run folders ----------------------------------------------------------------------------------------------

def test_load_run_checks_config_json_against_the_checkpoint(tmp_path):
    model = tiny_run(tmp_path)
    loaded, tokenizer = load_run(tmp_path)
    assert not loaded.training and tokenizer.vocab_size <= 40
    images, tokens = torch.randn(2, 3, 16, 16), torch.randint(4, 40, (2, 8))
    torch.testing.assert_close(loaded(images, tokens), model.eval()(images, tokens), rtol=0, atol=0)
    (tmp_path / "config.json").unlink()  # without config.json: the checkpoint's own configs
    assert load_run(tmp_path)[0].vision_cfg == VISION
    write_json(tmp_path / "config.json", {"vision": {**VISION.to_dict(), "depth": 2}, "text": TEXT.to_dict()})
    with pytest.raises(ValueError, match="vision.depth: expected 2, found 1"):
        load_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="run folder not found"):
        load_run(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="has no checkpoint.pt"):
        load_run(DATA / "thinker_cls")


def test_every_shipped_run_loads():
    clip, tokenizer = load_run(DATA / "shapes_clip")
    configs = read_run_config(DATA / "shapes_clip")  # saved by older code: batch keys inside "shapes"
    assert configs["batches"] == BatchConfig(hard_fraction=1.0, group_size=4, shared_attribute_negatives=True,
                                             shape_first_steps=1500)
    assert configs["shapes"].background == (0.75, 0.95) and configs["vision"] == clip.vision_cfg
    encoder, shapes = load_clip_encoder(DATA / "shapes_clip")
    assert shapes == configs["shapes"] and not any(p.requires_grad for p in encoder.parameters())
    images = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(encoder(images), clip.visual(images))
    assert tokenizer.encode("a red circle") and tokenizer.vocab_size == configs["text"].vocab_size
    for name, tokens in (("thinker_cls", 1), ("thinker_all", 65)):  # each checks its encoder's fingerprint
        thinker, _, thinker_encoder = load_thinker(DATA / name)
        assert thinker.cfg.image_tokens == tokens and thinker_encoder.cfg == clip.vision_cfg


def test_a_run_is_staged_then_published_with_metrics_last(tmp_path):
    out = check_out_folder(tmp_path / "run")
    with staged_run(out) as stage:
        for name in RUN_FILES:
            (stage / name).write_text(name)
        save_checkpoint(stage / "checkpoint.pt", model={}, step=4)
        publish(stage, out)
    assert sorted(os.listdir(out)) == sorted(RUN_FILES) and holds_clip_run(out)
    with pytest.raises(ValueError, match="already holds a complete run; pass --force"):
        check_out_folder(out)
    assert check_out_folder(out, force=True) == out
    before = (out / "checkpoint.pt").read_bytes()
    with pytest.raises(RuntimeError, match="power cut"), staged_run(out) as stage:
        (stage / "config.json").write_text("new")
        raise RuntimeError("power cut")
    assert sorted(os.listdir(out)) == sorted(RUN_FILES) and (out / "checkpoint.pt").read_bytes() == before
    with pytest.raises(RuntimeError) as failed, staged_run(out, resume_command="RESUME") as stage:
        save_checkpoint(stage / "checkpoint.pt", model={}, step=2)
        raise RuntimeError("power cut")
    assert failed.value.__notes__ == [f"the checkpoint of step 2 is kept in {out / '.partial'}; continue with: RESUME"]
    with pytest.raises(ValueError, match="unfinished run with a checkpoint of step 2; continue it with --resume"):
        check_out_folder(out)
    assert check_out_folder(out, resume=True) == out and check_out_folder(out, force=True) == out
    with pytest.raises(KeyboardInterrupt), staged_run(tmp_path / "new"):
        raise KeyboardInterrupt
    assert not (tmp_path / "new").exists()  # a folder the run created goes with it
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        check_out_folder(tmp_path / "file")
    shutil.rmtree(out)
    assert not holds_clip_run(out)


def test_a_checkpoint_without_what_its_reader_needs_is_refused_by_name(tmp_path):
    save_checkpoint(tmp_path / "c.pt", tokenizer=b"x")
    with pytest.raises(ValueError, match="c.pt is a tinyvit checkpoint without 'model'; it is damaged"):
        load_checkpoint(tmp_path / "c.pt", needs=("model", "tokenizer"))
    (tmp_path / "run").mkdir()
    save_checkpoint(tmp_path / "run" / "checkpoint.pt", configs={}, tokenizer=b"x")
    with pytest.raises(ValueError, match="without 'model'"):
        load_run(tmp_path / "run")
