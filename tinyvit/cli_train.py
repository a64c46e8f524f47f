"""`python -m tinyvit train`: the recipe from flags and config files, the data, the run folder, resuming, and what
the command says while and after it trains.

The run is written into RUN_DIR/.partial, with a checkpoint every --checkpoint-every steps, and published at the
end (runs.publish). Ctrl-C, SIGTERM or an error keep .partial when it holds a checkpoint, and
`train --out RUN_DIR --resume` continues it with the losses an uninterrupted run would have had.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import cpu_speed
from .config import read_json_object
from .contrastive import CLIP, clip_batch_loss
from .data import Batches, HardNegativeBatches, ManifestDataset, ShapesDataset, load_image, negatives_mask
from .data.images import SkipUnreadable
from .evaluate import evaluate_clip, evaluate_shapes
from .recipes import (CHECKPOINT_EVERY, DEFAULT_STEPS, EVAL_ITEMS, FLAGS, PRELOAD_BYTES, TOKENIZER_CAPTIONS,
                      make_recipe)
from .runs import (RUN_FILES, STAGE, TRAINING_KEYS, check_out_folder, load_checkpoint, publish,
                   staged_run, write_json)
from .text import Tokenizer
from .train import fit, resolve_device, set_threads

SCORE_LABELS = {"shape_zero_shot": "zero-shot shape accuracy", "colour_zero_shot": "zero-shot colour accuracy",
                "i2t_recall@1": "image→text recall@1"}


class Pairs(torch.utils.data.Dataset):
    """Images already in memory, with their captions. ds[i] -> (image (3, S, S), caption)."""

    def __init__(self, images: torch.Tensor, captions: list[str]):
        self.images, self.captions = images, captions

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int):
        return self.images[i], self.captions[i]


def recipe_from_args(args: argparse.Namespace) -> dict:
    """The recipe of `train`: `recipes.make_recipe` with the --config file (a run's config.json saved by older
    tinyvit is converted first) and the flags given."""
    return make_recipe(args.config, **{flag: getattr(args, flag) for flag in FLAGS})


def load_manifest(path: str, image_size: int, max_bad: int = 0, bad: list[str] | None = None):
    """A manifest's pairs, read into memory (which checks every image up front) when they fit in PRELOAD_BYTES;
    else read as batches need them, skipping up to `max_bad` unreadable images (named on stderr, listed in `bad`)."""
    dataset = ManifestDataset(path, image_size)
    if len(dataset) * 3 * image_size**2 * 4 > PRELOAD_BYTES:
        def say(image: str, reason: str) -> None:
            tqdm.write(f"skipped an unreadable image ({len(skipping.bad)} of at most {max_bad}): {reason}",
                       file=sys.stderr)

        skipping = SkipUnreadable(dataset, max_bad, say, bad)
        return skipping
    return Pairs(torch.stack([load_image(item["image"], image_size) for item in dataset.items]), dataset.captions)


def settings(args: argparse.Namespace, out: Path) -> tuple[dict, str | None, dict | None]:
    """(recipe, manifest or None, checkpoint to resume or None). --resume takes the run's own settings from
    RUN_DIR/.partial/config.json and refuses flags that would change them."""
    if not args.resume:
        return recipe_from_args(args), args.data, None
    given = [f"--{name.replace('_', '-')}" for name in ("config", "data", *FLAGS) if getattr(args, name) is not None]
    if given:
        raise ValueError(f"--resume continues the run in {out / STAGE} with its own settings (its config.json); "
                         f"leave out {', '.join(given)}")
    data = read_json_object(out / STAGE / "config.json").get("data")
    ckpt = load_checkpoint(out / STAGE / "checkpoint.pt", needs=(*TRAINING_KEYS, "tokenizer"))
    return make_recipe(out / STAGE / "config.json"), None if data == "shapes" else data, ckpt


def cmd_train(args: argparse.Namespace) -> int:
    out = check_out_folder(args.out, args.force, args.resume)
    recipe, data, ckpt = settings(args, out)
    vision, train = recipe["vision"], recipe["train"]
    if not train.checkpoint_every and args.checkpoint_every is None and not args.resume:
        train = recipe["train"] = dataclasses.replace(train, checkpoint_every=CHECKPOINT_EVERY)
    set_threads(args.threads)
    resolve_device(train.device)  # a missing GPU fails here, before any work
    bad: list[str] = list(ckpt.get("bad_images", [])) if ckpt else []
    phase = 0
    if data:
        dataset = load_manifest(data, vision.image_size, args.max_bad_images, bad)
        if len(dataset) < train.batch_size:
            raise ValueError(f"{data} holds {len(dataset)} items, fewer than the batch size {train.batch_size}; "
                             f"pass --batch-size {len(dataset)} or less")
        tokenizer = Tokenizer.from_bytes(ckpt["tokenizer"]) if ckpt else Tokenizer.train(dataset.captions,
                                                                                         recipe["text"].vocab_size)
        loader = Batches(dataset, train.batch_size, seed=train.seed)

        def score(model: CLIP, n: int) -> dict:  # the first n training items: a manifest has no held-out part
            subset = torch.utils.data.Subset(dataset, range(min(n, len(dataset))))
            return evaluate_clip(model, tokenizer, subset, dataset.captions[:n])
    else:
        shapes, phase = recipe["shapes"], recipe["batches"].shape_first_steps
        if ckpt:
            tokenizer = Tokenizer.from_bytes(ckpt["tokenizer"])
        else:
            first = ShapesDataset(TOKENIZER_CAPTIONS, shapes, "train", seed=train.seed)
            tokenizer = Tokenizer.train(first.captions, recipe["text"].vocab_size)
        loader = HardNegativeBatches(shapes, recipe["batches"], train.batch_size, seed=train.seed)  # a fresh stream

        def score(model: CLIP, n: int) -> dict:  # colour-shape pairs that never occur in training
            return evaluate_shapes(model, tokenizer, ShapesDataset(n, shapes, "heldout", seed=train.seed))
    text = dataclasses.replace(recipe["text"], vocab_size=tokenizer.vocab_size)
    recipe["text"] = text
    torch.manual_seed(train.seed)
    model = CLIP(vision, text, train.init_temperature)
    on_cpu = resolve_device(train.device).type == "cpu"
    speed = cpu_speed.recommended() if args.cpu_speed == "recommended" and on_cpu else ()
    cpu_speed.enable(model, speed)  # per instance; the saved weights are plain PyTorch's
    if phase:
        print(phase_note(phase, train.steps), file=sys.stderr)

    def batches(step: int):
        if phase and step == phase:
            tqdm.write(f"step {step + 1}: the second phase of the recipe begins; the loss now also contrasts "
                       "pairs that share a shape or colour, so it jumps up", file=sys.stderr)
        images, captions, indices = loader(step)
        tokens = tokenizer.encode_batch(captions, text.context_length)  # (B, T)
        keep = None if data else negatives_mask(recipe["batches"], loader, step, indices)
        return (images, tokens) if keep is None else (images, tokens, keep)  # (B, 3, S, S), (B, T)[, (B, B)]

    sections = [s for s in recipe if not data or s not in ("shapes", "batches")]  # a manifest: no shapes
    config = {**{section: recipe[section].to_dict() for section in sections}, "data": data or "shapes"}
    resume_command = f"python -m tinyvit train --out {out} --resume"
    with staged_run(out, args.resume, resume_command) as stage:
        if not args.resume:
            write_json(stage / "config.json", config)  # what --resume reads back
        history = fit(model, clip_batch_loss, batches, train, evaluate=lambda m: score(m, EVAL_ITEMS),
                      checkpoint_path=stage / "checkpoint.pt", progress=not args.quiet, resume=ckpt,
                      extra_state={"configs": model.configs(), "tokenizer": tokenizer.to_bytes(), "bad_images": bad})
        final = {k: v for k, v in history["eval"][-1].items() if k != "step"}  # the scores loss.png ends on
        metrics = {**final, "train_seconds": round(history["time"][-1], 1), "steps": train.steps,
                   "data": data or "shapes (held-out colour-shape pairs)", "cpu_speed": list(speed)}
        if data:
            metrics["bad_images"] = bad
        tokenizer.save(stage / "tokenizer.model")
        write_json(stage / "config.json", config)
        write_json(stage / "history.json", history)
        save_loss_plot(history, stage / "loss.png", phase, bool(data))
        write_json(stage / "metrics.json", metrics)
        publish(stage, out)
    print(summary(metrics, bool(data)))
    print(f"wrote {out}: {', '.join(RUN_FILES)}")
    return 0


def phase_note(phase: int, steps: int) -> str:
    return (f"the recipe trains in two phases: steps 1-{phase} contrast only copies of one scene (shape alone); "
            f"from step {phase + 1} of {steps} pairs that share a shape or colour too, where the loss jumps up")


def summary(metrics: dict, manifest: bool) -> str:
    n, r1 = metrics["n"], metrics["i2t_recall@1"]
    if manifest:
        bad = f"; {len(metrics['bad_images'])} unreadable images skipped" if metrics.get("bad_images") else ""
        return (f"on {n} training items: image->text recall@1 {r1:.3f}, @5 {metrics['i2t_recall@5']:.3f} "
                f"(score held-out data with: python -m tinyvit eval); {metrics['train_seconds']} s of training{bad}")
    short = metrics["steps"] < DEFAULT_STEPS
    return (f"held-out colour-shape pairs never seen in training ({n} images, "
            f"{metrics['n_zero_shot']} with one shape): "
            f"zero-shot shape accuracy {metrics['shape_zero_shot']:.3f}, colour {metrics['colour_zero_shot']:.3f}, "
            f"image->text recall@1 {r1:.3f} (chance {1 / n:.3f}); {metrics['train_seconds']} s of training"
            + (f"; {metrics['steps']} steps is short for the recipe, which is built for {DEFAULT_STEPS}: expect "
               "lower scores than a full run" if short else ""))


def save_loss_plot(history: dict, path: Path, phase: int = 0, manifest: bool = False) -> None:
    """Loss per step, the recipe's phase switch (if any) as a dashed line, and the periodic evaluation scores on a
    second axis: the items the summary scores. Uses a bare Figure: no pyplot state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(history["step"], history["loss"], lw=1, label="training loss")
    ax.set(xlabel="step", ylabel="symmetric InfoNCE loss")
    if phase:
        ax.axvline(phase + 0.5, color="grey", ls="--", lw=1, label=f"phase 2 from step {phase + 1}: colour too")
    evals = history["eval"]
    scores = [k for k in SCORE_LABELS if evals and k in evals[0]]
    if scores:
        ax2 = ax.twinx()
        for key in scores:
            ax2.plot([e["step"] for e in evals], [e[key] for e in evals], "o-", label=SCORE_LABELS[key])
        items = "training items" if manifest else "held-out images"
        ax2.set(ylabel=f"score on {evals[0]['n']} {items}", ylim=(0, 1))
        ax2.legend(loc="center right")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
