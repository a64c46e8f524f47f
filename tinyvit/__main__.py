"""The command line: `python -m tinyvit train | eval | embed` (run any of them with --help).

A run folder holds checkpoint.pt, tokenizer.model, config.json, history.json, loss.png and metrics.json.
Training writes into RUN_DIR/.partial and moves the files into RUN_DIR only at the end, metrics.json last, so a
run folder with metrics.json is complete; a failed or interrupted run leaves no metrics.json (and no .partial).
Bad input ends with exit code 2 and one line on stderr.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from .config import SOURCE_KEYS, TEXT_KINDS, TextConfig, TrainConfig, ViTConfig, read_json_object
from .contrastive import SHAPE_PHASE_SHARE, CLIP, clip_batch_loss, default_recipe, shared_attribute_mask
from .data import Batches, HardNegativeBatches, ManifestDataset, ShapesConfig, ShapesDataset, load_image
from .evaluate import embed_images, evaluate_clip, evaluate_shapes
from .text import Tokenizer
from .thinker import add_commands as add_thinker_commands
from .train import THREADS_HELP, fit, load_checkpoint, load_model, resolve_device, set_threads

RUN_FILES = ("checkpoint.pt", "tokenizer.model", "config.json", "history.json", "loss.png", "metrics.json")
EVAL_ITEMS = 500  # items scored at the end of a run; 200 of them during it
TOKENIZER_CAPTIONS = 4000  # shapes captions the tokenizer is trained on
PRELOAD_BYTES = 1 << 30  # manifests whose images fit in 1 GiB as float tensors are read (and checked) up front


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of the usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class Pairs(torch.utils.data.Dataset):
    """Images already in memory, with their captions. ds[i] -> (image (3, S, S), caption)."""

    def __init__(self, images: torch.Tensor, captions: list[str]):
        self.images, self.captions = images, captions

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int):
        return self.images[i], self.captions[i]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m tinyvit", description="Train, evaluate and use tinyvit's CLIP-style encoders.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    train = sub.add_parser("train", help="train the tokenizer, image and text encoders; write RUN_DIR",
                           description="Without --data: the default recipe on the built-in shapes data, scored at the "
                           "end on colour-shape pairs it never saw.")
    train.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to write")
    train.add_argument("--data", metavar="MANIFEST", help="JSON list or JSONL of {image, caption}; default: shapes")
    train.add_argument("--config", metavar="JSON", help='settings {"vision": {...}, "text": {...}, "train": {...}, '
                       '"shapes": {...}} over the default recipe (a run\'s config.json works), or a bare ViT config')
    train.add_argument("--image-size", type=int, metavar="S")
    train.add_argument("--patch-size", type=int, metavar="P")
    train.add_argument("--steps", type=int, metavar="N", help="training steps (warm-up shrinks to at most N/10)")
    train.add_argument("--batch-size", type=int, metavar="B")
    train.add_argument("--lr", type=float, help="peak learning rate")
    train.add_argument("--seed", type=int)
    train.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"),
                       help="auto (the recipe's default) picks CUDA, then MPS, else the CPU")
    train.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                       help="auto: mixed precision on CUDA, fp32 elsewhere; bf16: bfloat16 autocast, also on CPUs "
                            "with AVX-512 BF16 or AMX (faster there, slow on CPUs without them)")
    train.add_argument("--text-encoder", choices=TEXT_KINDS,
                       help="mean-pooled tokens (a bag of words); that plus neighbouring pairs through a learned "
                            "width-2 convolution (pairs) or a learned vector per pair (bigrams); or a transformer")
    train.add_argument("--vocab-size", type=int, help="tokenizer vocabulary (capped if the captions cannot fill it)")
    train.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    train.add_argument("--force", action="store_true", help="overwrite a complete run in RUN_DIR")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)
    ev = sub.add_parser("eval", help="print retrieval (and zero-shot) metrics of a run on a manifest, as JSON")
    ev.add_argument("--run", required=True, metavar="RUN_DIR")
    ev.add_argument("--data", required=True, metavar="MANIFEST")
    ev.add_argument("--classes", metavar="FILE", help="one prompt per line, line i = class i; adds zero_shot_top1")
    ev.add_argument("--label-key", default="label", metavar="KEY",
                    help="integer field holding the class (default: label)")
    ev.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    ev.set_defaults(func=cmd_eval)
    em = sub.add_parser("embed", help="write L2-normalised image embeddings (N, 256) to a .pt (torch) or .npy file")
    em.add_argument("--run", required=True, metavar="RUN_DIR")
    em.add_argument("images", nargs="+", metavar="IMAGE")
    em.add_argument("--out", default="embeddings.pt", metavar="FILE", help="*.pt: a torch tensor; *.npy: a NumPy "
                    "array (default embeddings.pt)")
    em.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    em.set_defaults(func=cmd_embed)
    add_thinker_commands(sub)  # think, ask: tinyvit/thinker.py
    return parser


def recipe_from_args(args: argparse.Namespace) -> dict:
    """The default recipe, then the --config file's sections merged over it, then the flags."""
    recipe = default_recipe()
    base_steps = recipe["train"].steps
    config_shapes: dict = {}
    if args.config:
        data = read_json_object(args.config)
        config_shapes = data.get("shapes", {}) if isinstance(data.get("shapes"), dict) else {}
        if not {"vision", "text", "train", "shapes", "data"} & set(data):
            data = {"vision": data}  # a bare ViT config, e.g. the source system's vision_tiny.json
        for section, values in data.items():
            if section == "data":
                continue  # where a run's data came from: informational
            if section not in recipe or not isinstance(values, dict):
                raise ValueError(f"{args.config}: unknown section {section!r}; expected vision, text, train or shapes")
            base = recipe[section]
            if section == "vision":
                values = {SOURCE_KEYS.get(k, k): v for k, v in values.items()}
            if isinstance(base, ShapesConfig):
                unknown = set(values) - {f.name for f in dataclasses.fields(ShapesConfig)}
                if unknown:
                    raise ValueError(f"{args.config}: unknown shapes keys {sorted(unknown)}")
                recipe[section] = dataclasses.replace(base, **values)
            else:
                recipe[section] = type(base).from_dict({**base.to_dict(), **values})
    flags = {"vision": {"image_size": args.image_size, "patch_size": args.patch_size},
             "text": {"kind": args.text_encoder, "vocab_size": args.vocab_size},
             "train": {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                       "device": args.device, "precision": args.precision}}
    for section, values in flags.items():
        recipe[section] = dataclasses.replace(recipe[section], **{k: v for k, v in values.items() if v is not None})
    train = recipe["train"]
    if args.steps is not None and train.warmup_steps > args.steps // 10:
        recipe["train"] = dataclasses.replace(train, warmup_steps=args.steps // 10)
    steps = recipe["train"].steps
    if steps != base_steps and "shape_first_steps" not in config_shapes and recipe["shapes"].shape_first_steps:
        # other steps, no shape phase named: keep the recipe's split between the shape phase and the rest
        recipe["shapes"] = dataclasses.replace(recipe["shapes"], shape_first_steps=round(steps * SHAPE_PHASE_SHARE))
    recipe["shapes"] = dataclasses.replace(recipe["shapes"], image_size=recipe["vision"].image_size)
    return recipe


def load_manifest(path: str, image_size: int):
    """A manifest's pairs, read into memory (which checks every image) when they fit in PRELOAD_BYTES."""
    dataset = ManifestDataset(path, image_size)
    if len(dataset) * 3 * image_size**2 * 4 > PRELOAD_BYTES:
        return dataset
    return Pairs(torch.stack([load_image(item["image"], image_size) for item in dataset.items]), dataset.captions)


def cmd_train(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    if (out / "metrics.json").exists() and not args.force:
        raise ValueError(f"{out} already holds a complete run; pass --force to overwrite it")
    recipe = recipe_from_args(args)
    vision, train = recipe["vision"], recipe["train"]
    set_threads(args.threads)
    resolve_device(train.device)  # a missing GPU fails here, before any work
    if args.data:
        dataset = load_manifest(args.data, vision.image_size)
        if len(dataset) < train.batch_size:
            raise ValueError(f"{args.data} holds {len(dataset)} items, fewer than the batch size {train.batch_size}; "
                             f"pass --batch-size {len(dataset)} or less")
        tokenizer = Tokenizer.train(dataset.captions, recipe["text"].vocab_size)
        loader = Batches(dataset, train.batch_size, seed=train.seed)

        def score(model: CLIP, n: int) -> dict:  # the first n training items: a manifest has no held-out part
            subset = torch.utils.data.Subset(dataset, range(min(n, len(dataset))))
            return evaluate_clip(model, tokenizer, subset, dataset.captions[:n])
    else:
        shapes = recipe["shapes"]
        first = ShapesDataset(TOKENIZER_CAPTIONS, shapes, "train", seed=train.seed)
        tokenizer = Tokenizer.train(first.captions, recipe["text"].vocab_size)
        loader = HardNegativeBatches(shapes, train.batch_size, seed=train.seed)  # a fresh stream, hard groups

        def score(model: CLIP, n: int) -> dict:  # colour-shape pairs that never occur in training
            return evaluate_shapes(model, tokenizer, ShapesDataset(n, shapes, "heldout", seed=train.seed))
    text = dataclasses.replace(recipe["text"], vocab_size=tokenizer.vocab_size)
    recipe["text"] = text
    torch.manual_seed(train.seed)
    model = CLIP(vision, text, train.init_temperature)

    def batches(step: int):
        images, captions, indices = loader(step)
        tokens = tokenizer.encode_batch(captions, text.context_length)  # (B, T)
        keep = None if args.data else negatives_mask(recipe["shapes"], loader, step, indices)
        return (images, tokens) if keep is None else (images, tokens, keep)  # (B, 3, S, S), (B, T)[, (B, B)]

    created = not out.exists()
    stage = out / ".partial"
    try:
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        history = fit(model, clip_batch_loss, batches, train, evaluate=lambda m: score(m, 200),
                      checkpoint_path=stage / "checkpoint.pt", progress=not args.quiet,
                      extra_state={"configs": model.configs(), "tokenizer": tokenizer.to_bytes()})
        metrics = {**score(model, EVAL_ITEMS), "train_seconds": round(history["time"][-1], 1), "steps": train.steps,
                   "data": args.data or "shapes (held-out colour-shape pairs)"}
        tokenizer.save(stage / "tokenizer.model")
        config = {section: cfg.to_dict() if hasattr(cfg, "to_dict") else dataclasses.asdict(cfg)
                  for section, cfg in recipe.items() if section != "shapes" or not args.data}
        write_json(stage / "config.json", {**config, "data": args.data or "shapes"})
        write_json(stage / "history.json", history)
        save_loss_plot(history, stage / "loss.png")
        write_json(stage / "metrics.json", metrics)
        publish(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    print(summary(metrics, bool(args.data)))
    print(f"wrote {out}: {', '.join(RUN_FILES)}")
    return 0


def negatives_mask(shapes: ShapesConfig, loader: HardNegativeBatches, step: int,
                   indices: torch.Tensor) -> torch.Tensor | None:
    """Which pairs of a shapes batch the loss may contrast (None: all of them). During the first
    `shape_first_steps`, only copies of one scene (same scene index: they differ in shape alone); then, with
    `shared_attribute_negatives`, pairs that share the main shape or colour; a binding group's items (ShapesConfig.
    binding_fraction) only with their traded copy. -> (B, B) bool or None."""
    if step < shapes.shape_first_steps:
        return shared_attribute_mask(indices[:, None])  # one attribute, the scene: a block per group
    keep = shared_attribute_mask(loader.attributes(step)) if shapes.shared_attribute_negatives else None
    bound = HardNegativeBatches.binding_items(indices)  # "a red square" is true of many other images, so a binding
    if bound.any():  # item is contrasted with its own traded copy alone, both ways
        same_scene = shared_attribute_mask(indices[:, None])
        keep = torch.ones_like(same_scene) if keep is None else keep
        keep = torch.where(bound[:, None] | bound[None, :], same_scene, keep)
    return keep


def summary(metrics: dict, manifest: bool) -> str:
    n, r1 = metrics["n"], metrics["i2t_recall@1"]
    if manifest:
        return (f"on {n} training items: image->text recall@1 {r1:.3f}, @5 {metrics['i2t_recall@5']:.3f} "
                f"(score held-out data with: python -m tinyvit eval); {metrics['train_seconds']} s of training")
    return (f"held-out colour-shape pairs never seen in training ({n} images, "
            f"{metrics['n_zero_shot']} with one shape): "
            f"zero-shot shape accuracy {metrics['shape_zero_shot']:.3f}, colour {metrics['colour_zero_shot']:.3f}, "
            f"image->text recall@1 {r1:.3f} (chance {1 / n:.3f}); {metrics['train_seconds']} s of training")


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def publish(stage: Path, out: Path) -> None:
    """Move a finished run from `stage` into `out`: the old completion marker goes first, the new one last."""
    (out / "metrics.json").unlink(missing_ok=True)
    for name in RUN_FILES[:-1]:
        os.replace(stage / name, out / name)
    os.replace(stage / "metrics.json", out / "metrics.json")
    stage.rmdir()


def save_loss_plot(history: dict, path: Path) -> None:
    """Loss per step, and the periodic evaluation scores (held-out for shapes, training items for a manifest) on a
    second axis. Uses a bare Figure: no pyplot state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(history["step"], history["loss"], lw=1, label="training loss")
    ax.set(xlabel="step", ylabel="symmetric InfoNCE loss")
    evals = history["eval"]
    scores = [k for k in ("shape_zero_shot", "colour_zero_shot", "i2t_recall@1") if evals and k in evals[0]]
    if scores:
        ax2 = ax.twinx()
        for key in scores:
            ax2.plot([e["step"] for e in history["eval"]], [e[key] for e in history["eval"]], "o-", label=key)
        ax2.set(ylabel=f"evaluation score ({evals[0]['n']} items)", ylim=(0, 1))
        ax2.legend(loc="center right")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def load_run(run_dir: str, device: str = "cpu") -> tuple[CLIP, Tokenizer]:
    """The model (eval mode) and tokenizer of a finished run; config.json must agree with the checkpoint."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder not found: {run}")
    if not (run / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"{run} has no checkpoint.pt; is it a finished `python -m tinyvit train --out` run?")
    ckpt = load_checkpoint(run / "checkpoint.pt")
    configs = read_json_object(run / "config.json") if (run / "config.json").is_file() else ckpt["configs"]
    if "vision" not in configs or "text" not in configs:
        raise ValueError(f"{run / 'config.json'} needs 'vision' and 'text' sections, found {sorted(configs)}")
    model = CLIP(ViTConfig.from_dict(configs["vision"]), TextConfig.from_dict(configs["text"]))
    load_model(model, ckpt, configs=model.configs())
    return model.to(resolve_device(device)).eval(), Tokenizer.from_bytes(ckpt["tokenizer"])


def read_classes(path: str) -> list[str]:
    """One prompt per line (line i is class i); blank lines are allowed only at the end."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"classes file not found: {file}")
    lines = file.read_text(encoding="utf-8").rstrip("\n").split("\n")
    blank = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if blank:
        raise ValueError(f"{file}: line {blank[0]} is empty; each line must hold the prompt of one class")
    return [line.strip() for line in lines]


def cmd_eval(args: argparse.Namespace) -> int:
    model, tokenizer = load_run(args.run, args.device)
    dataset = ManifestDataset(args.data, model.vision_cfg.image_size)
    classes = read_classes(args.classes) if args.classes else None
    labels = dataset.labels(args.label_key) if classes else None
    metrics = evaluate_clip(model, tokenizer, dataset, dataset.captions, labels=labels, class_prompts=classes)
    print(json.dumps(metrics))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix not in (".pt", ".npy"):
        raise ValueError(f"--out must end in .pt (torch tensor) or .npy (NumPy array), got {out.name}")
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image file(s) not found: {', '.join(missing)}")
    model, _ = load_run(args.run, args.device)
    images = torch.stack([load_image(p, model.vision_cfg.image_size) for p in args.images])  # (N, 3, S, S)
    embeddings = embed_images(model, images)  # (N, E)
    if out.suffix == ".npy":
        np.save(out, embeddings.numpy())
    else:
        torch.save(embeddings, out)
    print(f"embeddings {tuple(embeddings.shape)} -> {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; no complete run was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
