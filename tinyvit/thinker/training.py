"""Training the Thinker on a CLIP run's frozen image tokens, scoring it, and saving and loading it.

The loss reads only the answer tokens. A saved Thinker (THINKER_DIR/thinker.pt) names the CLIP run it reads and
the fingerprint of that run's encoder weights, so it is never paired with an encoder it did not learn to read.
Shapes: B batch, K image tokens, T text tokens, D = E = 256, V vocab, M question-answer records.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..config import ThinkerConfig, TrainConfig
from ..data import ShapesDataset
from ..model import VisionEncoder
from ..runs import check_configs, holds_clip_run, load_checkpoint, load_clip_encoder, save_checkpoint, write_json
from ..text import PAD_ID, Tokenizer
from ..train import fit, resolve_device
from .model import Thinker, generate, image_tokens
from .questions import (QUESTION_TYPES, QABatches, encode_qa, make_qa, prompt_ids, train_tokenizer,
                        unseen_answers)

THINKER_FILE = "thinker.pt"
# batch_size counts images, each with all its questions.
RECIPE = TrainConfig(steps=600, batch_size=16, lr=3e-3, weight_decay=0.05, warmup_steps=30, eval_every=0)


def answer_loss(logits: torch.Tensor, ids: torch.Tensor, answer_mask: torch.Tensor,
                ruled_out: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy on the answer tokens only. logits (B, K + T, V), ids (B, T), answer_mask (B, T) bool -> scalar.
    Position K - 1 + t predicts text token t, so the question and the image are context, never targets.
    ruled_out (B, T, R) long, -1 for none: pieces left out of the softmax at each position (`unseen_answers`), so
    the loss neither raises nor lowers them there."""
    K = logits.shape[1] - ids.shape[1]
    pred = logits[:, K - 1 : -1]  # (B, T, V)
    if ruled_out is not None and ruled_out.numel():
        left_out = torch.zeros_like(pred, dtype=torch.bool).scatter_(-1, ruled_out.clamp(min=0), ruled_out >= 0)
        pred = pred.masked_fill(left_out, float("-inf"))  # (B, T, V)
    return F.cross_entropy(pred[answer_mask], ids[answer_mask])


def thinker_batch_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The loss `train.fit` calls: batch = (image tokens (B, K, D), ids (B, T), answer mask (B, T)[, segments
    (B, T)[, ruled_out (B, T, R)]]) -> scalar. In packed rows a pair's first token (BOS) is never a target, so no
    pair predicts another."""
    image_tokens, ids, answer_mask, *rest = batch
    segments = rest[0] if rest else None
    return answer_loss(model(image_tokens, ids, segments), ids, answer_mask, rest[1] if len(rest) > 1 else None)


def encode_scenes(encoder: VisionEncoder, dataset: ShapesDataset, variant: str, batch_size: int = 200,
                  progress: bool = False) -> torch.Tensor:
    """Draw every image once and keep its frozen image tokens -> float16 (n, K, E). The encoder is frozen, so
    this replaces the encoder's forward pass at every training step; float16 halves the cache's memory."""
    encoder.eval()
    device = next(encoder.parameters()).device
    chunks = []
    for start in tqdm(range(0, len(dataset), batch_size), desc=f"image tokens ({variant})", disable=not progress):
        images = torch.stack([dataset[i][0] for i in range(start, min(start + batch_size, len(dataset)))])
        chunks.append(image_tokens(encoder, images.to(device), variant).half().cpu())  # (b, K, E)
    return torch.cat(chunks)  # (n, K, E)


def answer_questions(model: Thinker, tokenizer: Tokenizer, image_tokens: torch.Tensor, questions: Sequence[str],
                     max_new_tokens: int = 24, temperature: float = 0.0, generator: torch.Generator | None = None,
                     batch_size: int = 256) -> list[str]:
    """One answer per (image tokens (M, K, D), question) pair, generated in batches of equal prompt length."""
    if len(questions) != image_tokens.shape[0]:
        raise ValueError(f"{len(questions)} questions for {image_tokens.shape[0]} images")
    model.eval()
    prompts = [prompt_ids(tokenizer, q) for q in questions]
    groups: dict[int, list[int]] = defaultdict(list)
    for m, prompt in enumerate(prompts):
        groups[len(prompt)].append(m)
    answers = [""] * len(questions)
    device = next(model.parameters()).device
    for rows in groups.values():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            ids = torch.tensor([prompts[m] for m in chunk], device=device)  # (b, T0)
            new = generate(model, image_tokens[chunk].float().to(device), ids, max_new_tokens, temperature, generator)
            for m, piece_ids in zip(chunk, new):
                answers[m] = tokenizer.decode(piece_ids)
    return answers


@torch.no_grad()
def greedy_matches(model: Thinker, tokens: torch.Tensor, ids: torch.Tensor, answer_mask: torch.Tensor,
                   batch_size: int = 256) -> torch.Tensor:
    """Would greedy decoding write exactly the answer's pieces and then EOS? (M, K, D), (M, T), (M, T) -> (M,) bool.
    One pass with the answer fed in: greedy decoding follows the answer step by step exactly when the argmax is the
    right piece at every answer position, so this equals generating and comparing, at one forward pass per row."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, ids.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        width = int((ids[rows] != PAD_ID).sum(1).max())
        chunk, mask = ids[rows, :width].to(device), answer_mask[rows, :width].to(device)  # (b, T')
        logits = model(tokens[rows].float().to(device), chunk)  # (b, K + T', V)
        pred = logits[:, logits.shape[1] - width - 1 : -1].argmax(-1)  # (b, T'): the piece each position predicts
        out.append(((pred == chunk) | ~mask).all(1).cpu())
    return torch.cat(out)


def evaluate_qa(model: Thinker, tokenizer: Tokenizer, tokens: torch.Tensor, records: Sequence[dict[str, Any]]
                ) -> dict[str, Any]:
    """Exact-match accuracy of greedy answers per question type, overall and split by 1- and 2-object scenes.
    tokens (n, K, E) are the images' cached tokens; records come from make_qa on the same data set. -> {"accuracy":
    {type: acc}, "one_object": {...}, "two_objects": {...}, "n": {type: count}, "examples": 8 generated answers}."""
    ids, mask = encode_qa(tokenizer, records, model.cfg.context_length)
    matches = greedy_matches(model, tokens[[r["image"] for r in records]], ids, mask)  # (M,)
    hits: dict[str, list[bool]] = defaultdict(list)
    for record, hit in zip(records, matches.tolist()):
        hits[record["type"]].append(hit)
        hits[f"{record['type']}/{record['n_objects']}"].append(hit)

    def table(suffix: str = "") -> dict[str, float]:
        return {t: float(np.mean(hits[t + suffix])) for t in QUESTION_TYPES if hits[t + suffix]}

    shown = records[:8]
    answers = answer_questions(model, tokenizer, tokens[[r["image"] for r in shown]], [r["question"] for r in shown])
    return {"accuracy": table(), "one_object": table("/1"), "two_objects": table("/2"),
            "n": {t: len(hits[t]) for t in QUESTION_TYPES},
            "examples": [{"question": r["question"], "answer": r["answer"], "predicted": a}
                         for r, a in zip(shown, answers)]}


def encoder_fingerprint(encoder: VisionEncoder) -> str:
    """A short SHA-256 of the encoder's weights: a Thinker is tied to the exact encoder it learned to read."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def train_thinker(clip_run: str | Path, variant: str = "cls", train: TrainConfig = RECIPE, n_images: int = 3000,
                  eval_images: int = 500, progress: bool = True, rule_out_unseen: bool = True,
                  whiten: bool = False, checkpoint_path: str | Path | None = None,
                  resume: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train a Thinker on the questions about n_images "train" images read through a CLIP run's frozen encoder,
    then score it on eval_images "heldout" images (colour-shape pairs never trained on) and as many "test" images
    (new images of trained pairs: "seen_pairs"). With `rule_out_unseen` (the default) the loss leaves out, for each
    question, the answers it never had in training (`unseen_answers`); False trains a plain language model.
    `whiten` whitens the image tokens with the training images' statistics (`Thinker.set_whitening`).
    `checkpoint_path` and `resume` go to `train.fit` (the data is drawn again from the seed; the tokenizer must
    come out the same). -> {"model", "tokenizer", "encoder", "shapes", "history", "metrics"};
    metrics["train_seconds"] counts the tokenizer, the image tokens and the steps."""
    encoder, shapes = load_clip_encoder(clip_run, train.device)
    started = time.perf_counter()
    train_set = ShapesDataset(n_images, shapes, "train", seed=train.seed)
    tokenizer = train_tokenizer(train_set, seed=train.seed)
    K = 1 if variant == "cls" else encoder.cfg.num_tokens
    cfg = ThinkerConfig(vocab_size=tokenizer.vocab_size, dim=encoder.cfg.out_dim, variant=variant, image_tokens=K,
                        whiten=whiten)
    records = make_qa(train_set, seed=train.seed)
    ids, mask = encode_qa(tokenizer, records, cfg.context_length)
    tokens = encode_scenes(encoder, train_set, variant, progress=progress)  # (n, K, E)
    torch.manual_seed(train.seed)
    model = Thinker(cfg)
    if whiten:
        model.set_whitening(tokens)  # (n, K, E) float16: `whitening` reads it in float64 chunks
    ruled_out = unseen_answers(records, ids, mask) if rule_out_unseen else None
    batches = QABatches(tokens, records, ids, mask, train.batch_size, train.seed, ruled_out)
    if resume is not None and resume.get("tokenizer") != tokenizer.to_bytes():
        raise ValueError("cannot resume: the Thinker's tokenizer comes out differently now than when the run began")
    history = fit(model, thinker_batch_loss, batches, train, progress=progress, checkpoint_path=checkpoint_path,
                  resume=resume, extra_state={"configs": {"thinker": cfg.to_dict()}, "tokenizer": tokenizer.to_bytes()})
    train_seconds = time.perf_counter() - started
    heldout = ShapesDataset(eval_images, shapes, "heldout", seed=train.seed)
    scores = evaluate_qa(model, tokenizer, encode_scenes(encoder, heldout, variant), make_qa(heldout, train.seed))
    seen = ShapesDataset(eval_images, shapes, "test", seed=train.seed)  # new images of the pairs trained on
    seen_scores = evaluate_qa(model, tokenizer, encode_scenes(encoder, seen, variant), make_qa(seen, train.seed))
    metrics = {**scores, "seen_pairs": {k: seen_scores[k] for k in ("accuracy", "one_object", "two_objects")},
               "variant": variant, "image_tokens": K, "rule_out_unseen": rule_out_unseen,
               "train_seconds": round(train_seconds, 1), "steps": train.steps, "lr": train.lr, "seed": train.seed,
               "train_images": n_images, "train_questions": len(records), "eval_images": eval_images,
               "final_loss": float(np.mean(history["loss"][-20:]))}
    return {"model": model, "tokenizer": tokenizer, "encoder": encoder, "shapes": shapes, "history": history,
            "metrics": metrics}


def save_thinker(out_dir: str | Path, result: dict[str, Any], clip_run: str | Path,
                 relative_to: str | Path | None = None) -> Path:
    """Write THINKER_DIR/thinker.pt (atomic: the LM's weights and config, its tokenizer, the CLIP run's path
    relative to THINKER_DIR (or to `relative_to`, the folder it will be moved to), its vision config and weights'
    fingerprint), then metrics.json. -> the checkpoint. A CLIP run's folder is refused: its metrics.json is the
    CLIP run's own."""
    out = Path(out_dir)
    if holds_clip_run(relative_to or out):
        raise ValueError(f"{out} holds a CLIP run; write the Thinker into a folder of its own")
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)  # the completion marker goes first and comes back last
    model = result["model"]
    path = save_checkpoint(
        out / THINKER_FILE, model={k: v.cpu() for k, v in model.state_dict().items()},
        configs={"thinker": model.cfg.to_dict(), "vision": result["encoder"].cfg.to_dict(),
                 "shapes": result["shapes"].to_dict()},
        tokenizer=result["tokenizer"].to_bytes(),
        clip_run=os.path.relpath(Path(clip_run).resolve(), Path(relative_to or out).resolve()),
        encoder_fingerprint=encoder_fingerprint(result["encoder"]),
        loss=[round(x, 4) for x in result["history"]["loss"]])
    write_json(out / "metrics.json", result["metrics"])
    return path


def load_thinker(run_dir: str | Path, device: str = "cpu") -> tuple[Thinker, Tokenizer, VisionEncoder]:
    """A saved Thinker (eval mode), its tokenizer, and the frozen encoder of the CLIP run it reads; the encoder's
    config must be the one the Thinker was trained with."""
    run = Path(run_dir)
    if not (run / THINKER_FILE).is_file():
        raise FileNotFoundError(f"{run} holds no {THINKER_FILE}: pass the --out folder of `python -m tinyvit think`")
    ckpt = load_checkpoint(run / THINKER_FILE, needs=("model", "tokenizer", "clip_run"))
    if "thinker" not in ckpt.get("configs", {}):
        raise ValueError(f"{run / THINKER_FILE} is a tinyvit checkpoint but not a Thinker (no 'thinker' config)")
    clip_run = (run / ckpt["clip_run"]).resolve()
    if not (clip_run / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"the CLIP run this Thinker reads is missing: {clip_run} (saved as "
                                f"{ckpt['clip_run']!r}, relative to {run})")
    encoder, _ = load_clip_encoder(clip_run, device)
    check_configs(ckpt["configs"]["vision"], encoder.cfg.to_dict(), prefix="vision")
    if ckpt.get("encoder_fingerprint") != encoder_fingerprint(encoder):
        raise ValueError(f"the encoder in {clip_run} is not the one this Thinker was trained on (its weights "
                         "changed); train the Thinker again with `python -m tinyvit think`")
    model = Thinker(ThinkerConfig.from_dict(ckpt["configs"]["thinker"]))
    model.load_state_dict(ckpt["model"])
    return model.to(resolve_device(device)).eval(), Tokenizer.from_bytes(ckpt["tokenizer"]), encoder
