import dataclasses
import json

import pytest

from tinyvit import ViTConfig
from tinyvit.config import TextConfig, TrainConfig


def test_defaults_are_the_chapters_vit_tiny():
    cfg = ViTConfig()
    assert (cfg.image_size, cfg.patch_size, cfg.in_channels) == (224, 16, 3)
    assert (cfg.dim, cfg.depth, cfg.heads, cfg.mlp_dim, cfg.dropout, cfg.out_dim) == (128, 4, 2, 512, 0.1, 256)


def test_derived_sizes():
    cfg = ViTConfig()
    assert cfg.grid_size == 224 // 16 == 14
    assert cfg.num_patches == 14 * 14 == 196
    assert cfg.num_tokens == 197
    assert cfg.patch_dim == 3 * 16 * 16 == 768
    assert cfg.head_dim == 64


def test_json_round_trip(tmp_path):
    cfg = ViTConfig(image_size=64, patch_size=8, depth=2)
    cfg.save(tmp_path / "vit.json")
    assert ViTConfig.load(tmp_path / "vit.json") == cfg


def test_shipped_config_file_is_the_default():
    from importlib.resources import files

    data = json.loads(files("tinyvit").joinpath("configs/vision_tiny.json").read_text())
    assert ViTConfig.from_dict(data) == ViTConfig()


def test_source_system_keys_are_accepted():
    source = {"img_size": 224, "patch": 16, "d_model": 128, "n_layers": 4, "n_heads": 2, "d_ff": 512, "dropout": 0.1}
    assert ViTConfig.from_dict(source) == ViTConfig()


def test_unknown_key_is_named():
    with pytest.raises(ValueError, match="unknown ViTConfig key 'width'"):
        ViTConfig.from_dict({"width": 128})


def test_doubled_key_is_refused():
    with pytest.raises(ValueError, match="given twice"):
        ViTConfig.from_dict({"dim": 128, "d_model": 128})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image_size": 225}, "image_size 225 is not a multiple of patch_size 16"),
        ({"dim": 130, "heads": 4}, "dim 130 is not divisible by heads 4"),
        ({"depth": 0}, "depth must be a positive integer, got 0"),
        ({"dropout": 1.5}, r"dropout must be in \[0, 1\), got 1.5"),
    ],
)
def test_bad_values_fail_early(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ViTConfig(**kwargs)


def test_configs_are_frozen_and_replace_makes_variants():
    cfg = ViTConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.depth = 2
    assert dataclasses.replace(cfg, depth=2).depth == 2 and cfg.depth == 4


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        ViTConfig.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid UTF-8 JSON"):
        ViTConfig.load(bad)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object, got list"):
        ViTConfig.load(listed)


def test_text_and_train_configs_round_trip_and_validate():
    text = TextConfig(kind="transformer", vocab_size=100)
    assert TextConfig.from_dict(text.to_dict()) == text
    train = TrainConfig(steps=10, batch_size=4)
    assert TrainConfig.from_dict(train.to_dict()) == train
    with pytest.raises(ValueError, match=r"one of \('mean', 'transformer'\), got 'lstm'"):
        TextConfig(kind="lstm")
    with pytest.raises(ValueError, match="unknown TextConfig key 'bigram_buckets'"):
        TextConfig.from_dict({"kind": "mean", "bigram_buckets": 4096})
    with pytest.raises(ValueError, match="context_length must leave room"):
        TextConfig(context_length=2)
    with pytest.raises(ValueError, match="needs negatives"):
        TrainConfig(batch_size=1)


@pytest.mark.parametrize("value, got", [("5", "str '5'"), (None, "null"), (5.5, "float 5.5"), (True, "bool True")])
def test_loaded_values_of_the_wrong_type_are_refused_naming_the_key(value, got):
    with pytest.raises(ValueError, match=f"TrainConfig key 'steps' must be an integer, got {got}"):
        TrainConfig.from_dict({"steps": value})


def test_loaded_numbers_strings_bools_and_pairs_are_checked_too():
    from tinyvit.config import ThinkerConfig
    from tinyvit.data import ShapesConfig

    with pytest.raises(ValueError, match="TrainConfig key 'lr' must be a number, got str '0.1'"):
        TrainConfig.from_dict({"lr": "0.1"})
    with pytest.raises(ValueError, match="TrainConfig key 'seed' must be an integer, got str 'abc'"):
        TrainConfig.from_dict({"seed": "abc"})
    with pytest.raises(ValueError, match="TextConfig key 'kind' must be a string, got int 3"):
        TextConfig.from_dict({"kind": 3})
    with pytest.raises(ValueError, match="ThinkerConfig key 'whiten' must be true or false, got int 1"):
        ThinkerConfig.from_dict({"whiten": 1})
    with pytest.raises(ValueError, match=r"ShapesConfig key 'background\[1\]' must be a number, got str 'x'"):
        ShapesConfig.from_dict({"background": [0.5, "x"]})
    assert TrainConfig.from_dict({"lr": 1}).lr == 1.0  # an integer is a number
    assert ShapesConfig.from_dict({"background": [0.5, 0.9]}).background == (0.5, 0.9)  # JSON lists become tuples
    assert ViTConfig.from_dict({"d_model": 64, "heads": 2}).dim == 64  # the source system's names are checked too
