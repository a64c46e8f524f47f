"""`python -m tinyvit think`: train a Thinker on a CLIP run's frozen image tokens into THINKER_DIR.

The Thinker is trained in THINKER_DIR/.partial, with a checkpoint every CHECKPOINT_EVERY steps, and published at
the end (thinker.pt, then metrics.json). An interrupted run keeps .partial when it holds a checkpoint, and
`think --out THINKER_DIR --resume` continues it with its own settings (.partial/think.json).
"""
from __future__ import annotations

import argparse
import dataclasses

from .config import read_json_object
from .recipes import CHECKPOINT_EVERY
from .runs import STAGE, TRAINING_KEYS, check_out_folder, load_checkpoint, publish, staged_run, write_json
from .thinker import QUESTION_TYPES, RECIPE, THINKER_FILE, save_thinker, train_thinker
from .train import set_threads

#: think's settings and their defaults (the flags default to None, so --resume can tell which were given).
THINK_DEFAULTS = {"run": None, "variant": "cls", "steps": RECIPE.steps, "batch_size": RECIPE.batch_size,
                  "lr": RECIPE.lr, "images": 3000, "eval_images": 500, "seed": RECIPE.seed,
                  "keep_unseen_answers": False, "whiten": False, "device": "cpu"}


def think_settings(args: argparse.Namespace, out) -> dict:
    """The settings of this run: the flags over THINK_DEFAULTS, or with --resume the saved ones (a flag given
    then is refused)."""
    if args.resume:
        given = [f"--{k.replace('_', '-')}" for k in THINK_DEFAULTS if getattr(args, k) is not None]
        if given:
            raise ValueError(f"--resume continues the Thinker in {out / STAGE} with its own settings (think.json); "
                             f"leave out {', '.join(given)}")
        return read_json_object(out / STAGE / "think.json")
    if args.run is None:
        raise ValueError("--run CLIP_RUN_DIR is needed: the CLIP run whose image tokens the Thinker reads")
    chosen = {k: default if getattr(args, k) is None else getattr(args, k) for k, default in THINK_DEFAULTS.items()}
    for name in ("steps", "batch_size", "lr", "images", "eval_images"):
        if not chosen[name] > 0:  # "not >" also refuses nan
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {chosen[name]}")
    return chosen


def cmd_think(args: argparse.Namespace) -> int:
    out = check_out_folder(args.out, args.force, args.resume, kind="think")
    given = think_settings(args, out)
    set_threads(args.threads)
    steps = given["steps"]
    train = dataclasses.replace(RECIPE, steps=steps, batch_size=given["batch_size"], lr=given["lr"],
                                seed=given["seed"], device=given["device"], checkpoint_every=CHECKPOINT_EVERY,
                                warmup_steps=min(RECIPE.warmup_steps, steps // 10))
    resume_command = f"python -m tinyvit think --out {out} --resume"
    with staged_run(out, args.resume, resume_command) as stage:
        if not args.resume:
            write_json(stage / "think.json", given)
        ckpt = load_checkpoint(stage / "checkpoint.pt", needs=TRAINING_KEYS) if args.resume else None
        result = train_thinker(given["run"], given["variant"], train, given["images"], given["eval_images"],
                               progress=not args.quiet, rule_out_unseen=not given["keep_unseen_answers"],
                               whiten=given["whiten"], checkpoint_path=stage / "checkpoint.pt", resume=ckpt)
        save_thinker(stage, result, given["run"], relative_to=out)
        publish(stage, out, (THINKER_FILE, "metrics.json"))
    acc = result["metrics"]["accuracy"]
    print(f"held-out exact match ({given['variant']}, {result['metrics']['image_tokens']} image token(s)): "
          + ", ".join(f"{t} {acc[t]:.3f}" for t in QUESTION_TYPES) + f"; {result['metrics']['train_seconds']} s")
    print(f"wrote {out}: {THINKER_FILE}, metrics.json")
    return 0
