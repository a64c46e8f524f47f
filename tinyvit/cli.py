"""The command line: `python -m tinyvit train | eval | embed | think | ask` (run any of them with --help).

A run folder holds the files in `runs.RUN_FILES`. Training writes into RUN_DIR/.partial and moves the files into
RUN_DIR only at the end, metrics.json last, so a run folder with metrics.json is complete; a failed or interrupted
run leaves no metrics.json (and no .partial). Bad input ends with exit code 2 and one line on stderr.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .config import TEXT_KINDS, read_json_object
from . import cpu_speed
from .contrastive import CLIP, clip_batch_loss
from .data import (Batches, HardNegativeBatches, ManifestDataset, ShapesDataset, load_image, negatives_mask, read_rgb,
                   to_tensor)
from .evaluate import embed_images, evaluate_clip, evaluate_shapes
from .recipes import EVAL_ITEMS, FLAGS, PRELOAD_BYTES, TOKENIZER_CAPTIONS, make_recipe
from .runs import (RUN_FILES, check_out_folder, convert_old_configs, holds_clip_run, load_run, publish, staged_run,
                   write_json)
from .text import Tokenizer
from .thinker import (QUESTION_TYPES, RECIPE, THINKER_FILE, answer_questions, image_tokens, load_thinker,
                      normalise_question, save_thinker, train_thinker)
from .train import THREADS_HELP, fit, resolve_device, set_threads

DEVICES = ("auto", "cpu", "cuda", "mps")


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
                       '"shapes": {...}, "batches": {...}} over the default recipe (a run\'s config.json works), or '
                       'a bare ViT config')
    train.add_argument("--image-size", type=int, metavar="S")
    train.add_argument("--patch-size", type=int, metavar="P")
    train.add_argument("--steps", type=int, metavar="N", help="training steps (the recipe is built for N steps)")
    train.add_argument("--batch-size", type=int, metavar="B")
    train.add_argument("--lr", type=float, help="peak learning rate")
    train.add_argument("--seed", type=int)
    train.add_argument("--device", choices=DEVICES,
                       help="auto (the recipe's default) picks CUDA, then MPS, else the CPU")
    train.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                       help="auto: mixed precision on CUDA, fp32 elsewhere; bf16: bfloat16 autocast, also on CPUs "
                            "with AVX-512 BF16 or AMX (faster there, slow on CPUs without them)")
    train.add_argument("--text-encoder", choices=TEXT_KINDS, help="mean: mean-pooled tokens (a bag of words); "
                       "transformer: a small transformer encoder")
    train.add_argument("--vocab-size", type=int, help="tokenizer vocabulary (capped if the captions cannot fill it)")
    train.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    train.add_argument("--cpu-speed", choices=("recommended", "none"), default="recommended",
                       help="on the CPU: turn on the tinyvit.cpu_speed components measured faster on this kind of "
                            "CPU (recommended), or train plain PyTorch (none); the results are the same")
    train.add_argument("--force", action="store_true", help="overwrite a complete run in RUN_DIR")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)
    ev = sub.add_parser("eval", help="print retrieval (and zero-shot) metrics of a run on a manifest, as JSON")
    ev.add_argument("--run", required=True, metavar="RUN_DIR")
    ev.add_argument("--data", required=True, metavar="MANIFEST")
    ev.add_argument("--classes", metavar="FILE", help="one prompt per line, line i = class i; adds zero_shot_top1")
    ev.add_argument("--label-key", default="label", metavar="KEY",
                    help="integer field holding the class (default: label)")
    ev.add_argument("--device", choices=DEVICES, default="auto")
    ev.set_defaults(func=cmd_eval)
    em = sub.add_parser("embed", help="write L2-normalised image embeddings (N, 256) to a .pt (torch) or .npy file")
    em.add_argument("--run", required=True, metavar="RUN_DIR")
    em.add_argument("images", nargs="+", metavar="IMAGE")
    em.add_argument("--out", default="embeddings.pt", metavar="FILE", help="*.pt: a torch tensor; *.npy: a NumPy "
                    "array (default embeddings.pt)")
    em.add_argument("--device", choices=DEVICES, default="auto")
    em.set_defaults(func=cmd_embed)
    think = sub.add_parser("think", help="train a Thinker that answers questions about shapes images from a CLIP "
                           "run's frozen image tokens; write THINKER_DIR", description="Trains on the 'train' split, "
                           "scores on colour-shape pairs never trained on ('heldout'); writes thinker.pt, "
                           "metrics.json.")
    think.add_argument("--run", required=True, metavar="CLIP_RUN_DIR", help="a `python -m tinyvit train` run")
    think.add_argument("--out", required=True, metavar="THINKER_DIR", help="a folder of its own, not the CLIP run's")
    think.add_argument("--variant", choices=("cls", "all"), default="cls",
                       help="cls: projector(CLS), 1 image token (the chapter's); all: projector on all N tokens")
    think.add_argument("--steps", type=int, default=RECIPE.steps)
    think.add_argument("--batch-size", type=int, default=RECIPE.batch_size,
                       help=f"images per step, each with all its questions (default {RECIPE.batch_size})")
    think.add_argument("--lr", type=float, default=RECIPE.lr,
                       help=f"peak learning rate of AdamW, after warm-up and before the cosine decay (default "
                            f"{RECIPE.lr:g}; reading which colour goes with which shape wants 1e-3 and many more "
                            f"steps, benchmarks/README.md)")
    think.add_argument("--images", type=int, default=3000, help="training images (default 3000)")
    think.add_argument("--eval-images", type=int, default=500, help="held-out images scored at the end (default 500)")
    think.add_argument("--seed", type=int, default=RECIPE.seed)
    think.add_argument("--keep-unseen-answers", action="store_true",
                       help="train as a plain language model: every answer in the softmax, so it learns that a "
                            "circle is never blue if training has no blue circle (default: leave such answers out)")
    think.add_argument("--whiten", action="store_true",
                       help="whiten the image tokens with the training images' mean and covariance first")
    think.add_argument("--device", choices=DEVICES, default="cpu")
    think.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    think.add_argument("--force", action="store_true", help="overwrite a Thinker in THINKER_DIR")
    think.add_argument("--quiet", action="store_true", help="no progress bars")
    think.set_defaults(func=cmd_think)
    ask = sub.add_parser("ask", help="answer a question about an image with a trained Thinker")
    ask.add_argument("--run", required=True, metavar="THINKER_DIR", help="a `python -m tinyvit think` output folder")
    ask.add_argument("image", metavar="IMAGE")
    ask.add_argument("question", metavar="QUESTION", help='e.g. "what colour is the star?"')
    ask.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; > 0: sample")
    ask.add_argument("--max-tokens", type=int, default=24, help="answer length limit in pieces (default 24)")
    ask.add_argument("--seed", type=int, default=0, help="sampling seed")
    ask.add_argument("--resize", action="store_true", help="resize an image of another size instead of refusing it")
    ask.set_defaults(func=cmd_ask)
    return parser


def recipe_from_args(args: argparse.Namespace) -> dict:
    """The recipe of `train`: `recipes.make_recipe` with the --config file (a run's config.json saved by older
    tinyvit is converted first) and the flags given."""
    config = convert_old_configs(read_json_object(args.config), args.config) if args.config else None
    return make_recipe(config, **{flag: getattr(args, flag) for flag in FLAGS})


def load_manifest(path: str, image_size: int):
    """A manifest's pairs, read into memory (which checks every image) when they fit in PRELOAD_BYTES."""
    dataset = ManifestDataset(path, image_size)
    if len(dataset) * 3 * image_size**2 * 4 > PRELOAD_BYTES:
        return dataset
    return Pairs(torch.stack([load_image(item["image"], image_size) for item in dataset.items]), dataset.captions)


def cmd_train(args: argparse.Namespace) -> int:
    out = check_out_folder(args.out, args.force)
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

    def batches(step: int):
        images, captions, indices = loader(step)
        tokens = tokenizer.encode_batch(captions, text.context_length)  # (B, T)
        keep = None if args.data else negatives_mask(recipe["batches"], loader, step, indices)
        return (images, tokens) if keep is None else (images, tokens, keep)  # (B, 3, S, S), (B, T)[, (B, B)]

    with staged_run(out) as stage:
        history = fit(model, clip_batch_loss, batches, train, evaluate=lambda m: score(m, 200),
                      checkpoint_path=stage / "checkpoint.pt", progress=not args.quiet,
                      extra_state={"configs": model.configs(), "tokenizer": tokenizer.to_bytes()})
        metrics = {**score(model, EVAL_ITEMS), "train_seconds": round(history["time"][-1], 1), "steps": train.steps,
                   "data": args.data or "shapes (held-out colour-shape pairs)", "cpu_speed": list(speed)}
        tokenizer.save(stage / "tokenizer.model")
        sections = [s for s in recipe if not args.data or s not in ("shapes", "batches")]  # a manifest: no shapes
        config = {section: recipe[section].to_dict() for section in sections}
        write_json(stage / "config.json", {**config, "data": args.data or "shapes"})
        write_json(stage / "history.json", history)
        save_loss_plot(history, stage / "loss.png")
        write_json(stage / "metrics.json", metrics)
        publish(stage, out)
    print(summary(metrics, bool(args.data)))
    print(f"wrote {out}: {', '.join(RUN_FILES)}")
    return 0


def summary(metrics: dict, manifest: bool) -> str:
    n, r1 = metrics["n"], metrics["i2t_recall@1"]
    if manifest:
        return (f"on {n} training items: image->text recall@1 {r1:.3f}, @5 {metrics['i2t_recall@5']:.3f} "
                f"(score held-out data with: python -m tinyvit eval); {metrics['train_seconds']} s of training")
    return (f"held-out colour-shape pairs never seen in training ({n} images, "
            f"{metrics['n_zero_shot']} with one shape): "
            f"zero-shot shape accuracy {metrics['shape_zero_shot']:.3f}, colour {metrics['colour_zero_shot']:.3f}, "
            f"image->text recall@1 {r1:.3f} (chance {1 / n:.3f}); {metrics['train_seconds']} s of training")


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


def cmd_think(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if holds_clip_run(out):
        raise ValueError(f"--out {out} holds a CLIP run; write the Thinker into a folder of its own")
    if (out / THINKER_FILE).exists() and not args.force:
        raise ValueError(f"{out} already holds a {THINKER_FILE}; pass --force to overwrite it")
    for name in ("steps", "batch_size", "lr", "images", "eval_images"):
        if not getattr(args, name) > 0:  # "not >" also refuses nan
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    set_threads(args.threads)
    train = dataclasses.replace(RECIPE, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                device=args.device, warmup_steps=min(RECIPE.warmup_steps, args.steps // 10))
    result = train_thinker(args.run, args.variant, train, args.images, args.eval_images, progress=not args.quiet,
                           rule_out_unseen=not args.keep_unseen_answers, whiten=args.whiten)
    save_thinker(out, result, args.run)
    acc = result["metrics"]["accuracy"]
    print(f"held-out exact match ({args.variant}, {result['metrics']['image_tokens']} image token(s)): "
          + ", ".join(f"{t} {acc[t]:.3f}" for t in QUESTION_TYPES) + f"; {result['metrics']['train_seconds']} s")
    print(f"wrote {out}: {THINKER_FILE}, metrics.json")
    return 0


def read_image(path: str | Path, image_size: int, resize: bool = False) -> torch.Tensor:
    """An image file as the encoder's input (3, S, S); another size is refused unless `resize`."""
    rgb = read_rgb(path, image_size)  # missing or unreadable files raise here
    with Image.open(path) as img:
        width, height = ImageOps.exif_transpose(img).size
    if (width, height) != (image_size, image_size) and not resize:
        raise ValueError(f"{path} is {width}x{height} pixels, but the encoder expects {image_size}x{image_size}; "
                         "resize it, or pass --resize")
    return to_tensor(rgb)


def cmd_ask(args: argparse.Namespace) -> int:
    question = normalise_question(args.question)
    if args.max_tokens <= 0:
        raise ValueError(f"--max-tokens must be positive, got {args.max_tokens}")
    model, tokenizer, encoder = load_thinker(args.run)
    image = read_image(args.image, encoder.cfg.image_size, args.resize)  # (3, S, S)
    tokens = image_tokens(encoder, image[None], model.cfg.variant)  # (1, K, E)
    generator = torch.Generator().manual_seed(args.seed)
    print(answer_questions(model, tokenizer, tokens, [question], args.max_tokens, args.temperature, generator)[0])
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
