"""Runs on disk: the one place a checkpoint or a run folder is written, read and checked.

A CLIP run folder (`python -m tinyvit train --out RUN_DIR`) holds the files in RUN_FILES. It is written into
RUN_DIR/.partial and moved into RUN_DIR at the end, metrics.json last, so a folder with metrics.json is complete.
Every file is written atomically (a temp file in the same folder, then os.replace): a crash mid-write leaves the
old file, never half a new one. Checkpoints are read with torch.load(weights_only=True): plain data only, no code
runs on loading. Configs saved by older tinyvit are brought up to date in one function, `convert_old_configs`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from .config import TextConfig, TrainConfig, ViTConfig, read_json_object
from .contrastive import CLIP
from .data import BatchConfig, ShapesConfig
from .model import VisionEncoder
from .text import Tokenizer

FORMAT = "tinyvit-checkpoint"  # the marker every tinyvit checkpoint carries
FORMAT_VERSION = 1
RUN_FILES = ("checkpoint.pt", "tokenizer.model", "config.json", "history.json", "loss.png", "metrics.json")
SECTIONS = {"vision": ViTConfig, "text": TextConfig, "train": TrainConfig, "shapes": ShapesConfig,
            "batches": BatchConfig}


# --- writing --------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Any]:
    """Open a temp file beside `path` for binary writing; on success it replaces `path`, on any error it is
    removed and `path` keeps what it held."""
    path = Path(path)
    _check_parents(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    if path.exists() and not path.is_file():
        raise ValueError(f"{path} exists and is not a file; name a file to write")
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.strerror:
            raise OSError(err.errno, f"cannot write {path}: {err.strerror}") from None
        raise


def save_checkpoint(path: str | Path, **state: Any) -> Path:
    """Write `state` (tensors, dicts, lists, numbers, strings, bytes) atomically, with the format marker."""
    try:
        with atomic_file(path) as f:
            torch.save({"format": FORMAT, "version": FORMAT_VERSION, **state}, f)
    except RuntimeError as err:  # torch's writer reports a failed write (a full disk) as a RuntimeError
        raise OSError(f"cannot write {path}: {str(err).strip().splitlines()[0]}") from None
    return Path(path)


def write_json(path: str | Path, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    with atomic_file(path) as f:
        f.write((json.dumps(data, indent=1) + "\n").encode("utf-8"))


STAGE = ".partial"  # RUN_DIR/.partial: the run being written, with its periodic checkpoints
OWN_MARKER = {"train": "checkpoint.pt", "think": "thinker.pt"}  # the file that says a folder holds that kind of run


def check_out_folder(out: str | Path, force: bool = False, resume: bool = False, kind: str = "train") -> Path:
    """Where a run may be written: a path that does not exist, an empty folder, or a folder holding a tinyvit run
    of this `kind` ("train" or "think"), which is replaced only with `force`; an unfinished run (RUN_DIR/.partial
    with a checkpoint) is continued with `resume` or replaced with `force`. Anything else is refused."""
    if not str(out).strip():
        raise ValueError("--out is empty; name the folder to write the run into")
    out = Path(out)
    _check_writable(out)
    checkpoint = out / STAGE / "checkpoint.pt"
    if resume:
        if force:
            raise ValueError("--resume continues a run and --force starts it over: pass one of them")
        if not checkpoint.is_file():
            raise ValueError(f"--resume: {out / STAGE} holds no checkpoint to continue from")
        return out
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries == [STAGE] and not checkpoint.exists() or not entries:
        return out  # new, empty, or a stage with nothing worth keeping
    other = next(k for k in OWN_MARKER if k != kind)
    if _peek(out / OWN_MARKER[other]) or (kind == "think" and holds_clip_run(out)):
        raise ValueError(f"--out {out} holds a {'CLIP' if other == 'train' else 'Thinker'} run; write this run "
                         "into a folder of its own")
    if not (_peek(out / OWN_MARKER[kind]) or _peek(checkpoint)):
        raise ValueError(f"--out {out} holds files that are not a tinyvit run ({', '.join(entries[:5])}); write the "
                         "run into a new or empty folder")
    if checkpoint.exists() and not force:
        raise ValueError(f"{out} holds an unfinished run with a checkpoint of step {checkpoint_step(checkpoint)}; "
                         "continue it with --resume, or pass --force to start over (its checkpoint is deleted)")
    if (out / "metrics.json").exists() and not force:
        raise ValueError(f"{out} already holds a complete run; pass --force to overwrite it")
    return out


def _check_writable(out: Path) -> None:
    """Refuse, naming the path, an --out below a file, one that is a file, or one in a folder we cannot write."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    parent = _check_parents(out)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: cannot write into {parent} (permission denied)")


def _check_parents(path: Path) -> Path:
    """The nearest folder above (or at) `path` that exists; a file there instead is an error naming both."""
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent != path and not parent.is_dir():
        raise ValueError(f"{path} is below {parent}, which is a file, not a folder")
    return parent


def _peek(path: Path) -> dict[str, Any]:
    """A checkpoint read lazily (mmap: only what is asked for is touched); {} when missing, unreadable or foreign."""
    try:
        ckpt = torch.load(path, mmap=True, weights_only=True)
    except Exception:
        return {}
    return ckpt if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT else {}


def checkpoint_step(path: str | Path) -> int | None:
    """The step a training checkpoint was saved at (None when it holds none)."""
    return _peek(Path(path)).get("step")


@contextlib.contextmanager
def staged_run(out: str | Path, resume: bool = False, resume_command: str | None = None) -> Iterator[Path]:
    """OUT/.partial to write a run into (fresh, or kept as it is to `resume`); the caller ends with `publish`.
    On any error or interrupt a stage holding a checkpoint is kept (a note on the exception says so, and how to
    continue: `resume_command`); any other stage goes, and so does OUT if this call created it and it is empty."""
    out = Path(out)
    created, stage = not out.exists(), out / STAGE
    try:
        if not resume:
            shutil.rmtree(stage, ignore_errors=True)
            stage.mkdir(parents=True)
        yield stage
    except BaseException as err:
        checkpoint = stage / "checkpoint.pt"
        if checkpoint.is_file():
            how = f"; continue with: {resume_command}" if resume_command else ""
            err.add_note(f"the checkpoint of step {checkpoint_step(checkpoint)} is kept in {stage}{how}")
        else:
            shutil.rmtree(stage, ignore_errors=True)
            if created and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
        raise


def publish(stage: Path, out: Path, files: tuple[str, ...] = RUN_FILES) -> None:
    """Move a finished run's `files` from `stage` into `out`: the old completion marker (metrics.json, the last
    of `files`) goes first, the new one comes last; then the stage goes, with anything else it held."""
    (out / files[-1]).unlink(missing_ok=True)
    for name in files:
        os.replace(stage / name, out / name)
    shutil.rmtree(stage)


# --- reading and checking ---------------------------------------------------------------------------------------

TRAINING_KEYS = ("model", "optimizer", "step", "history", "rng")  # what `train.fit` needs to resume


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", needs: tuple[str, ...] = ()
                    ) -> dict[str, Any]:
    """Read a checkpoint with torch.load(weights_only=True); its "configs" come back through
    `convert_old_configs`. A key in `needs` that it lacks is an error naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} is not a readable tinyvit checkpoint: {first}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a tinyvit checkpoint (no '{FORMAT}' marker); was it saved by tinyvit?")
    if ckpt.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path} has checkpoint format version {ckpt.get('version')}, expected {FORMAT_VERSION}")
    missing = [key for key in needs if key not in ckpt]
    if missing:
        raise ValueError(f"{path} is a tinyvit checkpoint without {', '.join(map(repr, missing))}; it is damaged or "
                         "was not saved by the command that reads it")
    if isinstance(ckpt.get("configs"), dict):
        ckpt["configs"] = convert_old_configs(ckpt["configs"], path)
    return ckpt


def check_configs(expected: dict[str, Any], found: dict[str, Any], prefix: str = "") -> None:
    """Raise a ValueError naming every field where two nested config dicts differ (expected vs found)."""
    problems = _config_diff(expected, found, prefix)
    if problems:
        raise ValueError("checkpoint config does not match the model: " + "; ".join(problems))


def _config_diff(expected: Any, found: Any, prefix: str) -> list[str]:
    if not (isinstance(expected, dict) and isinstance(found, dict)):
        return [] if expected == found else [f"{prefix}: expected {expected!r}, found {found!r}"]
    out = []
    for key in list(expected) + [k for k in found if k not in expected]:
        name = f"{prefix}.{key}" if prefix else str(key)
        if key not in found:
            out.append(f"{name}: expected {expected[key]!r}, found nothing")
        elif key not in expected:
            out.append(f"{name}: expected nothing, found {found[key]!r}")
        else:
            out += _config_diff(expected[key], found[key], name)
    return out


def load_model(model: nn.Module, ckpt: dict[str, Any], configs: dict[str, Any] | None = None) -> nn.Module:
    """Load a checkpoint's weights into `model` after checking `configs` against the checkpoint's ("configs")."""
    if configs is not None:
        check_configs(configs, ckpt.get("configs", {}))
    getattr(model, "module", model).load_state_dict(ckpt["model"])
    return model


# --- configs saved by older tinyvit -----------------------------------------------------------------------------

#: Options that have left the package, with the value they held by default: a saved config holding exactly that
#: value loads (the key is dropped, as the option did nothing); any other value is refused by name.
REMOVED_KEYS = {
    "shapes": {"binding_fraction": 0.0, "binding_named": "random", "late_background": None,
               "late_background_share": 1.0, "late_background_ramp": 0, "place_fraction": 0.0},
    "text": {"bigram_buckets": 4096},
}
REMOVED_TEXT_KINDS = ("pairs", "bigrams")
#: Fields added after runs were saved, with the value every older run implicitly had.
ADDED_KEYS = {"vision": {"pos_init": "normal"}}


def convert_old_configs(configs: dict[str, Any], source: str | Path) -> dict[str, Any]:
    """Bring configs saved by older tinyvit (a config.json, a checkpoint's "configs") up to date; `source` names
    the file in messages. The batching keys of "shapes" (the fields of BatchConfig) move to a "batches" section;
    REMOVED_KEYS at their old default are dropped and refused otherwise, as are the text kinds "pairs" and
    "bigrams"; ADDED_KEYS missing from a section get the value older runs had. Returns a new dict."""
    out = {key: dict(value) if isinstance(value, dict) else value for key, value in configs.items()}
    shapes = out.get("shapes")
    if isinstance(shapes, dict):
        moved = {f.name: shapes.pop(f.name) for f in dataclasses.fields(BatchConfig) if f.name in shapes}
        if moved:
            out["batches"] = {**moved, **out.get("batches", {})}
    for section, removed in REMOVED_KEYS.items():
        values = out.get(section) if isinstance(out.get(section), dict) else {}
        for key, old_default in removed.items():
            if key in values and _plain(values.pop(key)) != old_default:
                raise ValueError(f"{source}: {section}.{key} is a research option tinyvit no longer has (only its "
                                 f"default {old_default!r} loads); train the run again without it")
    text = out.get("text") if isinstance(out.get("text"), dict) else {}
    if text.get("kind") in REMOVED_TEXT_KINDS:
        raise ValueError(f"{source}: the text encoder kind {text['kind']!r} is no longer part of tinyvit (kinds: "
                         "'mean', 'transformer'); train the run again with --text-encoder mean or transformer")
    for section, added in ADDED_KEYS.items():
        if isinstance(out.get(section), dict):
            out[section] = {**added, **out[section]}
    return out


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """RUN_DIR/config.json as config objects: {"vision": ViTConfig, "text": TextConfig, and where saved "train":
    TrainConfig, "shapes": ShapesConfig, "batches": BatchConfig, "data": str}, after `convert_old_configs`."""
    path = Path(run_dir) / "config.json"
    data = convert_old_configs(read_json_object(path), path)
    if "vision" not in data or "text" not in data:
        raise ValueError(f"{path} needs 'vision' and 'text' sections, found {sorted(data)}")
    unknown = set(data) - set(SECTIONS) - {"data"}
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {sorted(unknown)}; expected {', '.join(SECTIONS)} or data")
    out: dict[str, Any] = {"data": data["data"]} if "data" in data else {}
    for name, cls in SECTIONS.items():
        if name in data:
            try:
                out[name] = cls.from_dict(data[name])
            except (TypeError, ValueError) as err:
                raise ValueError(f"{path}, section {name!r}: {err}") from None
    return out


def load_run(run_dir: str | Path, device: str = "cpu") -> tuple[CLIP, Tokenizer]:
    """The model (eval mode) and tokenizer of a finished `python -m tinyvit train` run; its config.json must agree
    with the checkpoint."""
    model, tokenizer, _ = _load_run(run_dir, device)
    return model, tokenizer


def _load_run(run_dir: str | Path, device: str) -> tuple[CLIP, Tokenizer, dict[str, Any]]:
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder not found: {run}")
    if not (run / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"{run} has no checkpoint.pt; is it a finished `python -m tinyvit train --out` run?")
    ckpt = load_checkpoint(run / "checkpoint.pt", needs=("model", "tokenizer"))
    if (run / "config.json").is_file():
        configs = read_run_config(run)
    else:
        saved = ckpt.get("configs", {})
        if "vision" not in saved or "text" not in saved:
            raise ValueError(f"{run / 'checkpoint.pt'} is not a CLIP run: its configs hold {sorted(saved)}, "
                             "expected 'vision' and 'text'")
        configs = {"vision": ViTConfig.from_dict(saved["vision"]), "text": TextConfig.from_dict(saved["text"])}
    model = CLIP(configs["vision"], configs["text"])
    load_model(model, ckpt, configs=model.configs())
    return model.to(_device(device)).eval(), Tokenizer.from_bytes(ckpt["tokenizer"]), configs


def load_clip_encoder(run_dir: str | Path, device: str = "cpu") -> tuple[VisionEncoder, ShapesConfig]:
    """The frozen VisionEncoder (eval mode, no gradients) of a CLIP run, checked as `load_run` checks, and the
    shapes it was trained on (config.json's "shapes", else shapes drawn at the encoder's image size)."""
    model, _, configs = _load_run(run_dir, device)
    shapes = configs.get("shapes") or ShapesConfig(image_size=model.vision_cfg.image_size)
    return model.visual.requires_grad_(False), shapes


def holds_clip_run(folder: str | Path) -> bool:
    """Does `folder` hold a CLIP run's files (its checkpoint or its tokenizer)?"""
    return any((Path(folder) / name).exists() for name in RUN_FILES[:2])


def _device(name: str) -> torch.device:
    from .train import resolve_device  # train imports this module for its checkpoints

    return resolve_device(name)
