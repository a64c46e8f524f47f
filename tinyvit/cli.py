"""The command line: `python -m tinyvit train | eval | embed | think | ask` (run any of them with --help).

A run folder holds the files in `runs.RUN_FILES`. Training writes into RUN_DIR/.partial and moves the files into
RUN_DIR only at the end, metrics.json last, so a run folder with metrics.json is complete. A failed or interrupted
run (Ctrl-C, SIGTERM) leaves no metrics.json; it keeps RUN_DIR/.partial only when that holds a checkpoint, which
`--resume` continues. Bad input and output-path or disk faults end with exit code 2 and one line on stderr.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .cli_think import cmd_think
from .cli_train import cmd_train, recipe_from_args, save_loss_plot, summary  # noqa: F401 (public through cli)
from .config import TEXT_KINDS
from .data import ManifestDataset, load_image, read_rgb, to_tensor
from .evaluate import embed_images, evaluate_clip
from .runs import RUN_FILES, atomic_file, load_run  # noqa: F401
from .thinker import RECIPE, answer_questions, image_tokens, load_thinker, normalise_question, prompt_ids
from .train import THREADS_HELP

DEVICES = ("auto", "cpu", "cuda", "mps")


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of the usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


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
    train.add_argument("--checkpoint-every", type=int, metavar="N",
                       help="steps between the checkpoints --resume continues from (default 100; 0: only at the end)")
    train.add_argument("--max-bad-images", type=int, default=0, metavar="N",
                       help="a manifest too large to read up front: skip up to N unreadable images met in training "
                            "(named on stderr and in metrics.json) before giving up (default 0)")
    train.add_argument("--resume", action="store_true", help="continue the unfinished run in RUN_DIR/.partial from "
                       "its last checkpoint, with its own settings")
    train.add_argument("--force", action="store_true", help="overwrite a run (complete or unfinished) in RUN_DIR")
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
    think.add_argument("--run", metavar="CLIP_RUN_DIR", help="a `python -m tinyvit train` run (needed unless --resume)")
    think.add_argument("--out", required=True, metavar="THINKER_DIR", help="a folder of its own, not the CLIP run's")
    think.add_argument("--variant", choices=("cls", "all"),
                       help="cls (default): projector(CLS), 1 image token (the chapter's); all: projector on all N "
                            "tokens")
    think.add_argument("--steps", type=int, help=f"training steps (default {RECIPE.steps})")
    think.add_argument("--batch-size", type=int,
                       help=f"images per step, each with all its questions (default {RECIPE.batch_size})")
    think.add_argument("--lr", type=float,
                       help=f"peak learning rate of AdamW, after warm-up and before the cosine decay (default "
                            f"{RECIPE.lr:g}; reading which colour goes with which shape wants 1e-3 and many more "
                            f"steps, benchmarks/README.md)")
    think.add_argument("--images", type=int, help="training images (default 3000)")
    think.add_argument("--eval-images", type=int, help="held-out images scored at the end (default 500)")
    think.add_argument("--seed", type=int, help=f"default {RECIPE.seed}")
    think.add_argument("--keep-unseen-answers", action="store_true", default=None,
                       help="train as a plain language model: every answer in the softmax, so it learns that a "
                            "circle is never blue if training has no blue circle (default: leave such answers out)")
    think.add_argument("--whiten", action="store_true", default=None,
                       help="whiten the image tokens with the training images' mean and covariance first")
    think.add_argument("--device", choices=DEVICES, help="default cpu")
    think.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    think.add_argument("--resume", action="store_true", help="continue the unfinished Thinker in "
                       "THINKER_DIR/.partial from its last checkpoint, with its own settings")
    think.add_argument("--force", action="store_true", help="overwrite a Thinker (complete or unfinished)")
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


def read_classes(path: str) -> list[str]:
    """One prompt per line (line i is class i); blank lines are allowed only at the end."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"classes file not found: {file}")
    data = file.read_bytes()
    try:
        lines = data.decode("utf-8").rstrip("\n").split("\n")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(f"classes file {file} is not valid UTF-8 (line {line}, byte {err.start}); save it as "
                         "UTF-8") from None
    blank = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if blank:
        raise ValueError(f"{file}: line {blank[0]} is empty; each line must hold the prompt of one class")
    first: dict[str, int] = {}
    for i, line in enumerate(lines, start=1):
        if first.setdefault(line.strip(), i) != i:
            raise ValueError(f"{file}: lines {first[line.strip()]} and {i} hold the same prompt {line.strip()!r}, so "
                             "no image could ever be given the second class; give each class its own prompt")
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
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; name a file ending in .pt or .npy")
    if out.suffix not in (".pt", ".npy"):
        raise ValueError(f"--out must end in .pt (torch tensor) or .npy (NumPy array), got {out.name}")
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image file(s) not found: {', '.join(missing)}")
    model, _ = load_run(args.run, args.device)
    images = torch.stack([load_image(p, model.vision_cfg.image_size) for p in args.images])  # (N, 3, S, S)
    embeddings = embed_images(model, images)  # (N, E)
    with atomic_file(out) as f:  # a folder, a path below a file or a full disk: one line naming the path
        if out.suffix == ".npy":
            np.save(f, embeddings.numpy())
        else:
            torch.save(embeddings, f)
    print(f"embeddings {tuple(embeddings.shape)} -> {out}")
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
    pieces, room = len(prompt_ids(tokenizer, question)), model.cfg.context_length - 2  # an answer piece and EOS
    if pieces > room:
        raise ValueError(f"the question is {pieces} tokens long (with BOS and EOS); this Thinker reads at most {room} "
                         f"before its answer (context_length {model.cfg.context_length}): ask a shorter question")
    image = read_image(args.image, encoder.cfg.image_size, args.resize)  # (3, S, S)
    tokens = image_tokens(encoder, image[None], model.cfg.variant)  # (1, K, E)
    generator = torch.Generator().manual_seed(args.seed)
    print(answer_questions(model, tokenizer, tokens, [question], args.max_tokens, args.temperature, generator)[0])
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that a run stops the same way (its checkpoint kept)."""


def _terminate(signum, frame):
    raise Terminated


def one_line(err: BaseException) -> str:
    """The message and any notes (e.g. where a checkpoint was kept) on one line."""
    text = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    if isinstance(err, OSError) and err.filename:
        text = f"{text}: {err.filename}"
    return " ".join("; ".join([text, *getattr(err, "__notes__", [])]).split())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: leave SIGTERM alone
        previous = None
    try:
        return args.func(args)
    except (ValueError, OSError, FloatingPointError) as err:  # OSError: output paths and full disks too
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        kept = "; ".join(getattr(err, "__notes__", [])) or "no complete run was written"
        print(f"{'terminated' if isinstance(err, Terminated) else 'interrupted'}; {kept}", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
