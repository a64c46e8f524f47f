"""`python -m tinyvit train` and the run folder: interrupted by real signals and resumed, the output-folder rule,
output-path and disk faults, and what the command records."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import tinyvit.cli as cli
from tinyvit.data import ShapesConfig, export_shapes
from tinyvit.runs import save_checkpoint

TINY = {"vision": {"dim": 32, "depth": 1, "heads": 2, "mlp_dim": 64},
        "text": {"dim": 32, "context_length": 16}, "train": {"eval_every": 0, "warmup_steps": 1}}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A 24-item shapes manifest, a tiny config, and one uninterrupted 20-step run with a checkpoint every 2 steps."""
    root = tmp_path_factory.mktemp("train")
    manifest = export_shapes(root / "shapes", 24, ShapesConfig(image_size=16), split="heldout")
    config = root / "tiny.json"
    config.write_text(json.dumps(TINY))
    work = {"root": root, "manifest": manifest, "config": config}
    done = subprocess.run(command(work, root / "full"), capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr
    return {**work, "full": root / "full"}


def command(work, out, *extra):
    return [sys.executable, "-m", "tinyvit", "train", "--out", str(out), "--data", str(work["manifest"]), "--config",
            str(work["config"]), "--steps", "20", "--batch-size", "8", "--image-size", "16", "--patch-size", "8",
            "--checkpoint-every", "2", "--quiet", *extra]


def losses(run_dir):
    return json.loads((run_dir / "history.json").read_text())["loss"]


def one_error_line(capsys, argv):
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signal_keeps_the_checkpoint_and_resume_gives_the_uninterrupted_losses(work, tmp_path, sig, code, word):
    out = tmp_path / "run"
    proc = subprocess.Popen(command(work, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    checkpoint = out / ".partial" / "checkpoint.pt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert f"{word}; the checkpoint of step" in err and f"train --out {out} --resume" in err
    assert sorted(os.listdir(out)) == [".partial"] and checkpoint.is_file()  # nothing that looks complete
    again = subprocess.run(command(work, out), capture_output=True, text=True, env=ENV, timeout=300)
    assert again.returncode == 2 and "continue it with --resume, or pass --force" in again.stderr
    assert checkpoint.is_file()  # a new run into the same folder did not delete it
    resumed = subprocess.run([sys.executable, "-m", "tinyvit", "train", "--out", str(out), "--resume", "--quiet"],
                             capture_output=True, text=True, env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert losses(out) == losses(work["full"]) and len(losses(out)) == 20
    assert not (out / ".partial").exists()


def test_resume_refuses_new_settings_and_a_folder_with_nothing_to_resume(work, tmp_path, capsys):
    err = one_error_line(capsys, ["train", "--out", tmp_path / "none", "--resume"])
    assert "holds no checkpoint to continue from" in err
    stage = tmp_path / "r" / ".partial"
    shutil.copytree(work["full"], stage)
    err = one_error_line(capsys, ["train", "--out", tmp_path / "r", "--resume", "--steps", "30"])
    assert "with its own settings" in err and "leave out --steps" in err
    err = one_error_line(capsys, ["train", "--out", tmp_path / "r", "--resume", "--force"])
    assert "pass one of them" in err


def test_the_output_folder_rule(work, tmp_path, capsys):
    err = one_error_line(capsys, ["train", "--out", "", "--steps", "3"])
    assert "--out is empty" in err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("my own config")
    (mine / "history.json").write_text("my own notes")
    for force in ([], ["--force"]):
        err = one_error_line(capsys, ["train", "--out", mine, "--steps", "3", *force])
        assert "holds files that are not a tinyvit run (config.json, history.json)" in err
    assert (mine / "config.json").read_text() == "my own config" and sorted(os.listdir(mine)) == ["config.json",
                                                                                                  "history.json"]
    note = tmp_path / "note.txt"
    note.write_text("x")
    assert f"is below {note}, which is a file" in one_error_line(capsys, ["train", "--out", note / "run", "--steps", 3])
    assert "exists and is not a folder" in one_error_line(capsys, ["train", "--out", note, "--steps", 3])
    err = one_error_line(capsys, ["think", "--run", work["full"], "--out", work["full"], "--steps", 3])
    assert "holds a CLIP run" in err
    thinker = tmp_path / "thinker"
    save_checkpoint(thinker / "thinker.pt", model={})
    assert "holds a Thinker run" in one_error_line(capsys, ["train", "--out", thinker, "--steps", 3, "--force"])
    assert sorted(os.listdir(work["full"])) == sorted(cli.RUN_FILES)  # every refusal left the run as it was


def test_a_full_disk_is_one_line_naming_the_file_and_the_old_run_stays(work, tmp_path, capsys, monkeypatch):
    old = tmp_path / "old"
    shutil.copytree(work["full"], old)
    before = {name: (old / name).read_bytes() for name in cli.RUN_FILES}

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    args = command(work, old, "--force")[3:]
    err = one_error_line(capsys, args)
    assert "cannot write" in err and str(old) in err and "No space left on device" in err
    assert {name: (old / name).read_bytes() for name in cli.RUN_FILES} == before
    err = one_error_line(capsys, ["embed", "--run", old, work["manifest"].parent / "heldout_00000.png",
                                  "--out", tmp_path / "e.pt"])
    assert f"cannot write {tmp_path / 'e.pt'}: No space left on device" in err and not (tmp_path / "e.pt").exists()


def test_embed_refuses_a_folder_or_a_path_below_a_file(work, tmp_path, capsys):
    image = work["manifest"].parent / "heldout_00000.png"
    assert "is a folder" in one_error_line(capsys, ["embed", "--run", work["full"], image, "--out", tmp_path])
    (tmp_path / "file").write_text("x")
    err = one_error_line(capsys, ["embed", "--run", work["full"], image, "--out", tmp_path / "file" / "e.pt"])
    assert str(tmp_path / "file") in err


def test_train_records_its_cpu_speed_components_and_none_trains_plain(work, tmp_path):
    assert isinstance(json.loads((work["full"] / "metrics.json").read_text())["cpu_speed"], list)
    plain = subprocess.run(command(work, tmp_path / "plain", "--cpu-speed", "none"), capture_output=True, text=True,
                           env=ENV, timeout=300)
    assert plain.returncode == 0, plain.stderr
    assert json.loads((tmp_path / "plain" / "metrics.json").read_text())["cpu_speed"] == []
    torch.testing.assert_close(torch.tensor(losses(tmp_path / "plain")), torch.tensor(losses(work["full"])))


def test_a_manifest_read_lazily_skips_bad_images_up_to_the_limit_and_names_them(work, tmp_path, capsys, monkeypatch):
    import tinyvit.cli_train as cli_train

    monkeypatch.setattr(cli_train, "PRELOAD_BYTES", 0)  # as if the images did not fit in memory
    broken = tmp_path / "broken"
    shutil.copytree(work["manifest"].parent, broken)
    (broken / "heldout_00005.png").write_bytes(b"this is not a PNG")
    args = command({**work, "manifest": broken / "annotations.json"}, tmp_path / "run")[3:]
    args[args.index("20")] = "4"  # --steps 4: every item is met once
    err = one_error_line(capsys, args)
    assert "1 unreadable images met, more than the limit of 0 (--max-bad-images)" in err and "heldout_00005" in err
    assert cli.main(args[:2] + [str(tmp_path / "run2")] + args[3:] + ["--max-bad-images", "1"]) == 0
    captured = capsys.readouterr()
    assert "skipped an unreadable image (1 of at most 1)" in captured.err and "heldout_00005.png" in captured.err
    assert "1 unreadable images skipped" in captured.out
    metrics = json.loads((tmp_path / "run2" / "metrics.json").read_text())
    assert metrics["bad_images"] == [str(broken / "heldout_00005.png")]


def test_the_loss_plot_marks_the_phase_switch_and_names_its_scores(tmp_path, monkeypatch):
    import tinyvit.cli_train as cli_train
    from matplotlib.figure import Figure

    drawn = []
    monkeypatch.setattr(Figure, "savefig", lambda figure, path, **kwargs: drawn.append(figure))
    history = {"step": [1, 2, 3, 4], "loss": [1.4, 1.3, 3.3, 3.2],
               "eval": [{"step": 4, "n": 500, "shape_zero_shot": 0.5, "colour_zero_shot": 0.4, "i2t_recall@1": 0.1}]}
    cli_train.save_loss_plot(history, tmp_path / "loss.png", phase=2)
    loss_axis, score_axis = drawn[0].axes
    assert "phase 2 from step 3: colour too" in [line.get_label() for line in loss_axis.get_lines()]
    assert [line.get_label() for line in score_axis.get_lines()] == [
        "zero-shot shape accuracy", "zero-shot colour accuracy", "image→text recall@1"]
    assert score_axis.get_ylabel() == "score on 500 held-out images"
