import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tinyvit.cli as cli
import tinyvit.cli_train as cli_train
from tinyvit.data import ShapesConfig, export_shapes
from tinyvit.recipes import default_recipe

TINY = {"vision": {"dim": 32, "depth": 1, "heads": 2, "mlp_dim": 64},
        "text": {"dim": 32, "context_length": 16}, "train": {"eval_every": 0, "warmup_steps": 1}}
METRIC_KEYS = {"n", "i2t_recall@1", "i2t_recall@5", "t2i_recall@1", "t2i_recall@5"}
ENV = {**os.environ, "OMP_NUM_THREADS": "2"}


def run(*args, cwd=None):
    """python -m tinyvit ARGS in a subprocess -> CompletedProcess with text stdout/stderr."""
    return subprocess.run([sys.executable, "-m", "tinyvit", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=ENV, timeout=300)


def tiny_train_args(out, *extra):
    return ["train", "--out", out, "--steps", "4", "--batch-size", "8", "--image-size", "16", "--patch-size", "8",
            "--quiet", *extra]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """An exported shapes manifest, a tiny config file, and one tiny run trained on the manifest (subprocess)."""
    root = tmp_path_factory.mktemp("cli")
    manifest = export_shapes(root / "shapes", 24, ShapesConfig(image_size=16), split="heldout")
    config = root / "tiny.json"
    config.write_text(json.dumps(TINY))
    result = run(*tiny_train_args(root / "run", "--data", manifest, "--config", config))
    assert result.returncode == 0, result.stderr
    return {"root": root, "manifest": manifest, "config": config, "run": root / "run", "train": result}


def one_error_line(capsys, argv, expected_code=2):
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == expected_code
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


def test_train_on_a_manifest_writes_a_complete_run(work):
    run_dir = work["run"]
    assert sorted(os.listdir(run_dir)) == sorted(cli.RUN_FILES)  # no .partial left behind
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics) and metrics["n"] == 24
    history = json.loads((run_dir / "history.json").read_text())
    assert history["step"] == [1, 2, 3, 4] and len(history["loss"]) == 4
    config = json.loads((run_dir / "config.json").read_text())
    assert config["vision"]["depth"] == 1 and config["vision"]["image_size"] == 16 and config["train"]["steps"] == 4
    assert not {"shapes", "batches"} & set(config) and config["data"] == str(work["manifest"])
    assert (run_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert "recall@1" in work["train"].stdout


def test_eval_prints_one_json_object_with_the_design_keys(work):
    shapes = work["manifest"].parent
    result = run("eval", "--run", work["run"], "--data", work["manifest"], "--classes", shapes / "classes_shape.txt",
                 "--label-key", "shape_label")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert set(metrics) == METRIC_KEYS | {"zero_shot_top1"}
    assert metrics["n"] == 24 and all(0 <= v <= 1 for k, v in metrics.items() if k != "n")
    without = run("eval", "--run", work["run"], "--data", work["manifest"])
    assert set(json.loads(without.stdout)) == METRIC_KEYS


def test_embed_writes_normalised_256d_embeddings_as_pt_or_npy(work, tmp_path):
    images = sorted(work["manifest"].parent.glob("*.png"))[:3]
    result = run("embed", "--run", work["run"], *images, "--out", tmp_path / "e.pt")
    assert result.returncode == 0, result.stderr
    assert "(3, 256)" in result.stdout
    emb = torch.load(tmp_path / "e.pt", weights_only=True)
    assert emb.shape == (3, 256)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    assert cli.main(["embed", "--run", str(work["run"]), *map(str, images), "--out", str(tmp_path / "e.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), emb.numpy(), atol=1e-6)


def test_train_without_data_uses_the_shapes_recipe_and_reports_heldout_accuracy(work, tmp_path):
    result = run(*tiny_train_args(tmp_path / "run", "--config", work["config"]))
    assert result.returncode == 0, result.stderr
    assert "held-out colour-shape pairs" in result.stdout and "zero-shot shape accuracy" in result.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["n"] == cli_train.EVAL_ITEMS
    last = json.loads((tmp_path / "run" / "history.json").read_text())["eval"][-1]
    assert {k: v for k, v in last.items() if k != "step"}.items() <= metrics.items()  # loss.png ends on the summary
    assert "steps 1-2 contrast only copies of one scene" in result.stderr  # the recipe's phases, announced
    assert "step 3: the second phase of the recipe begins" in result.stderr
    assert "4 steps is short for the recipe, which is built for 3000" in result.stdout
    for key in ("shape_zero_shot", "colour_zero_shot", "i2t_recall@1"):
        assert 0 <= metrics[key] <= 1
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["shapes"]["image_size"] == 16 and config["batches"] == default_recipe(4)["batches"].to_dict()


def test_bad_input_exits_2_with_one_clear_line(work, tmp_path, capsys):
    manifest, run_dir = work["manifest"], work["run"]
    err = one_error_line(capsys, tiny_train_args(tmp_path / "a", "--data", tmp_path / "nope.json"))
    assert "manifest not found" in err and "nope.json" in err
    broken = tmp_path / "broken"
    shutil.copytree(manifest.parent, broken)
    (broken / "heldout_00003.png").unlink()
    (broken / "heldout_00005.png").write_bytes(b"this is not a PNG")
    err = one_error_line(capsys, tiny_train_args(tmp_path / "b", "--data", broken / "annotations.json"))
    assert "heldout_00003.png" in err and "not found" in err
    shutil.copy(manifest.parent / "heldout_00004.png", broken / "heldout_00003.png")
    err = one_error_line(capsys, tiny_train_args(tmp_path / "c", "--data", broken / "annotations.json"))
    assert "heldout_00005.png is not a readable image" in err
    err = one_error_line(capsys, tiny_train_args(tmp_path / "e", "--data", manifest) + ["--batch-size", "100"])
    assert "holds 24 items, fewer than the batch size 100" in err
    assert not any((tmp_path / d).exists() for d in "abce")  # failed runs leave no folder behind
    err = one_error_line(capsys, ["eval", "--run", tmp_path, "--data", manifest])
    assert "has no checkpoint.pt" in err
    err = one_error_line(capsys, ["embed", "--run", run_dir, broken / "heldout_00005.png", tmp_path / "gone.png",
                                  "--out", tmp_path / "e.pt"])
    assert "1 image file(s) not found" in err and "gone.png" in err
    err = one_error_line(capsys, ["embed", "--run", run_dir, broken / "heldout_00005.png", "--out", tmp_path / "e.pt"])
    assert "not a readable image" in err
    err = one_error_line(capsys, ["eval", "--run", run_dir, "--data", manifest, "--classes", tmp_path / "none.txt"])
    assert "classes file not found" in err
    err = one_error_line(capsys, tiny_train_args(run_dir, "--data", manifest))
    assert "already holds a complete run; pass --force" in err
    (tmp_path / "bad.json").write_text('{"train": {"stepz": 3}}')
    err = one_error_line(capsys, tiny_train_args(tmp_path / "d", "--config", tmp_path / "bad.json"))
    assert "unknown TrainConfig key 'stepz'" in err
    for train, message in (({"steps": True}, "'steps' must be an integer, got bool True"),
                           ({"seed": "abc"}, "TrainConfig key 'seed' must be an integer, got str 'abc'")):
        (tmp_path / "bad.json").write_text(json.dumps({"train": train}))
        err = one_error_line(capsys, ["train", "--out", tmp_path / "d", "--config", tmp_path / "bad.json"])
        assert f"{tmp_path / 'bad.json'}, section 'train'" in err and message in err
    assert not (tmp_path / "d").exists()


def test_eval_names_duplicate_prompts_undecodable_classes_and_impossible_labels(work, tmp_path, capsys):
    classes = tmp_path / "classes.txt"
    classes.write_text("a circle\na square\na circle\n")
    err = one_error_line(capsys, ["eval", "--run", work["run"], "--data", work["manifest"], "--classes", classes])
    assert "lines 1 and 3 hold the same prompt 'a circle'" in err
    classes.write_bytes("a circle\na caf\u00e9\n".encode("latin-1"))
    err = one_error_line(capsys, ["eval", "--run", work["run"], "--data", work["manifest"], "--classes", classes])
    assert f"classes file {classes} is not valid UTF-8 (line 2" in err
    items = json.loads(work["manifest"].read_text())
    items[3]["label"] = 10**30
    manifest = work["manifest"].parent / "huge_label.json"
    manifest.write_text(json.dumps(items))
    classes.write_text("a circle\na square\n")
    err = one_error_line(capsys, ["eval", "--run", work["run"], "--data", manifest, "--classes", classes])
    assert f"has 'label' {10**30}, far beyond any class number" in err


def test_eval_refuses_a_run_whose_config_disagrees_with_its_checkpoint(work, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(work["run"], copy)
    config = json.loads((copy / "config.json").read_text())
    config["vision"]["depth"], config["vision"]["mlp_dim"] = 2, 128
    (copy / "config.json").write_text(json.dumps(config))
    err = one_error_line(capsys, ["eval", "--run", copy, "--data", work["manifest"]])
    assert "vision.depth: expected 2, found 1" in err and "vision.mlp_dim: expected 128, found 64" in err


def test_usage_errors_are_one_line_from_a_subprocess(work):
    result = run("train", "--steps", "3")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "python -m tinyvit train: error: the following arguments are required: --out (see --help)"]
    result = run("eval", "--run", work["root"] / "missing", "--data", work["manifest"])
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: run folder not found: {work['root'] / 'missing'}"]


@pytest.mark.parametrize("command, words", [("train", ["--out", "--data", "--steps", "--device", "--force"]),
                                            ("eval", ["--run", "--classes", "--label-key"]),
                                            ("embed", ["--run", "IMAGE", ".npy"]),
                                            ("think", ["--run", "--out", "--variant", "--whiten"]),
                                            ("ask", ["--run", "IMAGE", "QUESTION", "--temperature"])])
def test_help_documents_each_command(command, words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(word in out for word in words)


def test_a_failed_run_leaves_nothing_that_looks_complete_and_keeps_its_checkpoint(work, tmp_path, monkeypatch,
                                                                                     capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_train, "fit", interrupted)
    assert cli.main(tiny_train_args(str(tmp_path / "new"), "--data", str(work["manifest"]))) == 130
    assert not (tmp_path / "new").exists()
    monkeypatch.undo()
    # a forced re-run that fails after training keeps the old complete run as it was
    old = tmp_path / "old"
    shutil.copytree(work["run"], old)
    before = (old / "checkpoint.pt").read_bytes()

    def broken_plot(*args):
        raise ValueError("plotting failed")

    monkeypatch.setattr(cli_train, "save_loss_plot", broken_plot)
    args = tiny_train_args(str(old), "--data", str(work["manifest"]), "--config", str(work["config"]), "--force")
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "plotting failed" in err and f"continue with: python -m tinyvit train --out {old} --resume" in err
    assert sorted(os.listdir(old)) == sorted([*cli.RUN_FILES, ".partial"])  # the finished training is kept
    assert (old / "checkpoint.pt").read_bytes() == before  # and the old run is as it was


def test_config_file_merges_over_the_recipe_and_flags_win(tmp_path):
    source = tmp_path / "vision_tiny.json"  # the source system's key names
    source.write_text(json.dumps({"img_size": 32, "patch": 8, "d_model": 64, "n_layers": 2, "n_heads": 2, "d_ff": 128}))
    args = cli.build_parser().parse_args(["train", "--out", "x", "--config", str(source), "--patch-size", "16"])
    recipe = cli.recipe_from_args(args)
    assert (recipe["vision"].image_size, recipe["vision"].patch_size, recipe["vision"].dim) == (32, 16, 64)
    assert recipe["shapes"].image_size == 32 and recipe["train"] == default_recipe()["train"]
    sections = tmp_path / "run_config.json"
    sections.write_text(json.dumps({"train": {"steps": 50, "device": "cpu"}, "data": "shapes"}))
    args = cli.build_parser().parse_args(["train", "--out", "x", "--config", str(sections), "--lr", "0.01"])
    train = cli.recipe_from_args(args)["train"]
    assert (train.steps, train.device, train.lr, train.batch_size) == (50, "cpu", 0.01, 64)
    args = cli.build_parser().parse_args(["train", "--out", "x", "--steps", "30"])
    assert cli.recipe_from_args(args)["train"].warmup_steps == 3  # a short run gets a short warm-up


def test_a_runs_config_json_works_as_a_config_file(work):
    args = cli.build_parser().parse_args(["train", "--out", "x", "--config", str(work["run"] / "config.json")])
    recipe = cli.recipe_from_args(args)
    saved = json.loads((work["run"] / "config.json").read_text())
    assert recipe["vision"].to_dict() == saved["vision"] and recipe["train"].to_dict() == saved["train"]


def test_the_shipped_runs_config_json_rebuilds_the_default_recipe():
    shipped = Path(__file__).resolve().parents[1] / "data" / "shapes_clip" / "config.json"  # saved by older code
    args = cli.build_parser().parse_args(["train", "--out", "x", "--config", str(shipped)])
    recipe, default = cli.recipe_from_args(args), default_recipe()
    assert all(recipe[s] == default[s] for s in ("vision", "train", "shapes", "batches"))
    assert recipe["text"].vocab_size == 254  # the tokenizer's cap, recorded in the run


def test_python_m_tinyvit_and_the_console_script_share_one_main():
    from tinyvit.__main__ import main  # pyproject's [project.scripts] entry point

    assert main is cli.main
    result = subprocess.run([sys.executable, "-m", "tinyvit", "--help"], capture_output=True, text=True, env=ENV)
    assert result.returncode == 0 and all(c in result.stdout for c in ("train", "eval", "embed", "think", "ask"))


def test_threads_must_be_positive(tmp_path, capsys):
    err = one_error_line(capsys, tiny_train_args(tmp_path / "t", "--threads", "0"))
    assert "--threads must be at least 1, got 0" in err


def test_other_step_counts_keep_the_recipes_shape_phase_share(tmp_path):
    base = default_recipe()
    share = base["batches"].shape_first_steps / base["train"].steps
    args = cli.build_parser().parse_args(["train", "--out", str(tmp_path / "r"), "--steps", "100"])
    assert cli.recipe_from_args(args)["batches"].shape_first_steps == round(100 * share)
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"train": {"steps": 40}, "batches": {"shape_first_steps": 30}}))
    args = cli.build_parser().parse_args(["train", "--out", str(tmp_path / "r"), "--config", str(config)])
    assert cli.recipe_from_args(args)["batches"].shape_first_steps == 30  # named in the config: kept


def test_cli_learns_real_handwritten_digits_from_their_manifest(tmp_path):
    """The shipped UCI digit scans (data/digits): 100 steps on the training manifest, then zero-shot on the 300 test
    scans from their class prompts: well above chance (0.10), and the loss falls."""
    digits = Path(__file__).resolve().parents[1] / "data" / "digits"
    out = tmp_path / "digits"
    trained = run("train", "--data", digits / "train.jsonl", "--out", out, "--image-size", 32, "--patch-size", 8,
                  "--steps", 100, "--quiet", "--seed", 0)
    assert trained.returncode == 0, trained.stderr
    loss = json.loads((out / "history.json").read_text())["loss"]
    assert np.mean(loss[-10:]) < np.mean(loss[:10]) - 0.5
    scored = run("eval", "--run", out, "--data", digits / "test.jsonl", "--classes", digits / "classes.txt")
    assert scored.returncode == 0, scored.stderr
    metrics = json.loads(scored.stdout)
    assert metrics["n"] == 300 and metrics["zero_shot_top1"] > 0.25
