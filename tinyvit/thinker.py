"""The Thinker: a tiny decoder-only language model that answers questions about shapes images. Its input is
[image token(s), question, answer]; the image tokens come from a frozen, CLIP-trained VisionEncoder's projector,
so the 256-d space the chapter aligns is exactly what joins the two models.

Shapes: B batch, K image tokens (1 for "cls", N for "all"), T text tokens, L = K + T, D = E = 256, V vocab.
Text layout: [BOS, question..., EOS, answer..., EOS, PAD...]. EOS closes each turn: after the question's EOS the
model answers, and the answer's EOS stops generation. The loss reads only the answer tokens (its EOS included).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import time
from collections import defaultdict
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import nn
from tqdm.auto import tqdm

from .config import TextConfig, ThinkerConfig, TrainConfig, ViTConfig, read_json_object
from .contrastive import CLIP
from .data import (COLOURS, POSITIONS, SHAPES, WHERE, Batches, ShapesConfig, ShapesDataset, object_name, read_rgb,
                   to_tensor, with_article)
from .model import Block, VisionEncoder, init_weights, trunc_normal
from .text import BOS_ID, EOS_ID, PAD_ID, Tokenizer
from .train import THREADS_HELP, check_configs, fit, load_checkpoint, resolve_device, save_checkpoint, set_threads

QUESTION_TYPES = ("shape", "colour", "position", "describe")
THINKER_FILE = "thinker.pt"
# batch_size counts images, each with all its questions (~5.5). On the shared 2-core CPU (one thread) these
# 600 steps took 76-111 s for "cls" and 133-146 s for "all" (65 image tokens at 64x64); benchmarks/thinker_qa.py.
WHITEN_EPS = 1e-4  # Thinker.set_whitening: directions with less than 1e-4 of the top variance are not amplified
RECIPE = TrainConfig(steps=600, batch_size=16, lr=3e-3, weight_decay=0.05, warmup_steps=30, eval_every=0)


class Thinker(nn.Module):
    """Normalised image tokens + text token embeddings + positions -> causal pre-norm blocks -> LayerNorm -> logits.
    (B, K, D), (B, T) long -> (B, K + T, V). Position i sees positions <= i only."""

    def __init__(self, cfg: ThinkerConfig):
        super().__init__()
        self.cfg = cfg
        # The projector's tokens are ~8 long and the N of one image point almost the same way (cosine ~0.85);
        # a LayerNorm with gain 0.02 brings them to the scale of the text embeddings and positions, so the
        # Thinker's own position embeddings can tell the N image tokens apart. It mixes nothing across tokens.
        self.image_norm = nn.LayerNorm(cfg.dim)
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.max_tokens, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp_dim, cfg.dropout) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        init_weights(self)
        trunc_normal(self.pos_embed)
        nn.init.constant_(self.image_norm.weight, 0.02)
        if cfg.whiten:  # identity until set_whitening; buffers, so they are saved and loaded with the weights
            self.register_buffer("image_mean", torch.zeros(cfg.dim))
            self.register_buffer("image_whitener", torch.eye(cfg.dim))

    def set_whitening(self, tokens: torch.Tensor, eps: float = WHITEN_EPS) -> None:
        """Fix the whitening from the training images' tokens (n, K, D) (`whitening`); needs cfg.whiten."""
        if not self.cfg.whiten:
            raise ValueError("this Thinker was built with whiten=False: set ThinkerConfig(whiten=True) first")
        mean, whitener = whitening(tokens, eps)
        self.image_mean.copy_(mean)
        self.image_whitener.copy_(whitener)

    def embed(self, image_tokens: torch.Tensor, ids: torch.Tensor, segments: torch.Tensor | None = None
              ) -> torch.Tensor:
        """The chapter's concatenation: (B, K, D) image tokens (normalised), (B, T) ids -> (B, K + T, D), positions
        added. With `segments` (packed rows, see `forward`) each segment's positions start right after the image."""
        B, K, D = image_tokens.shape
        if K != self.cfg.image_tokens or D != self.cfg.dim:
            raise ValueError(f"expected image tokens (B, {self.cfg.image_tokens}, {self.cfg.dim}) for variant "
                             f"{self.cfg.variant!r}, got {tuple(image_tokens.shape)}")
        if ids.dim() != 2 or ids.shape[0] != B:
            raise ValueError(f"expected ids (B={B}, T), got {tuple(ids.shape)}")
        image = image_tokens.to(self.pos_embed.dtype)  # (B, K, D)
        if self.cfg.whiten:
            image = (image - self.image_mean) @ self.image_whitener
        image = self.image_norm(image)  # (B, K, D)
        x = torch.cat([image, self.token_embed(ids)], dim=1)  # (B, K + T, D)
        T = ids.shape[1]
        text_positions = torch.arange(T, device=ids.device).expand(B, T) if segments is None else \
            _positions_in_segments(segments)  # (B, T)
        if T and int(text_positions.max()) >= self.cfg.context_length:
            raise ValueError(f"a question and answer of {int(text_positions.max()) + 1} tokens exceed context_length "
                             f"{self.cfg.context_length}")
        positions = torch.cat([torch.arange(K, device=ids.device).expand(B, K), K + text_positions], dim=1)  # (B, L)
        return x + self.pos_embed[0, positions]  # (B, L, D)

    def forward(self, image_tokens: torch.Tensor, ids: torch.Tensor, segments: torch.Tensor | None = None
                ) -> torch.Tensor:
        """(B, K, D), (B, T) long -> logits (B, K + T, V); logits at position i predict the token at i + 1.
        Packed rows: `segments` (B, T) numbers the question-answer pairs of a row 1, 2, ... (-1 for padding); a
        token then sees the image and the earlier tokens of its own pair only, exactly as if it were alone."""
        x = self.embed(image_tokens, ids, segments)  # (B, L, D)
        B, L, _ = x.shape
        allowed = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()  # (L, L), True = may attend
        if segments is not None:
            K = L - ids.shape[1]
            seg = torch.cat([segments.new_zeros(B, K), segments], dim=1)  # (B, L): the image is segment 0
            same = (seg[:, :, None] == seg[:, None, :]) | (seg[:, None, :] == 0)  # (B, L, L)
            allowed = (allowed & same)[:, None]  # (B, 1, L, L)
        for block in self.blocks:
            x = block(x, attn_mask=allowed)[0]
        return self.head(self.norm(x))  # (B, L, V)


@torch.no_grad()
def whitening(tokens: torch.Tensor, eps: float = WHITEN_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (D,), W (D, D)) that whiten tokens (..., D): x -> (x - mean) W, with W = V diag((l + eps l_max)^-1/2) V^T
    from the eigen-decomposition V diag(l) V^T of their covariance.

    The projector's 256 numbers span at most 128 directions (it maps the 128-d CLS), and their variances differ by
    orders of magnitude (for the shipped encoder, five directions hold almost all of it). Whitened, each direction
    the tokens use has variance ~1, so a reader learns from faint ones as fast as from strong ones: which colour
    belongs to which of two objects is learned much faster that way (benchmarks/token_probe.py). eps keeps the
    unused directions (variance ~0) near 0."""
    flat = tokens.reshape(-1, tokens.shape[-1])  # (rows, D)
    total, outer = torch.zeros(flat.shape[1], dtype=torch.float64), 0
    for chunk in flat.split(65536):  # in float64, a chunk at a time: the "all" variant has n * N rows
        chunk = chunk.double()
        total, outer = total + chunk.sum(0), outer + chunk.T @ chunk
    mean = total / len(flat)  # (D,)
    covariance = (outer - len(flat) * torch.outer(mean, mean)) / (len(flat) - 1)  # (D, D)
    variances, vectors = torch.linalg.eigh(covariance)  # ascending, (D,), (D, D)
    scale = (variances.clamp(min=0) + eps * variances.max()).rsqrt()  # (D,)
    return mean.float(), (vectors @ torch.diag(scale) @ vectors.T).float()


def _positions_in_segments(segments: torch.Tensor) -> torch.Tensor:
    """Index of each token within its run of equal segment numbers, 0 for padding. (B, T) -> (B, T)."""
    B, T = segments.shape
    index = torch.arange(T, device=segments.device).expand(B, T)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    positions = index - torch.where(starts, index, 0).cummax(dim=1).values
    return positions.masked_fill(segments < 0, 0)  # padding (-1) is never read: any in-range position will do


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


def first_answer_positions(answer_mask: torch.Tensor) -> torch.Tensor:
    """Where each record's answer starts: (M, T) bool from `encode_qa` -> (M,) long. The loss leaves unseen
    answers out at this position only."""
    return answer_mask.int().argmax(1)


def unseen_answers(records: Sequence[dict[str, Any]], ids: torch.Tensor, answer_mask: torch.Tensor
                   ) -> list[list[int]]:
    """Per record, the first answer pieces that answer other questions of its type in these records but never its
    own question: for "what colour is the circle?" in a training set without blue circles, the piece of "blue".

    A plain language model learns from such a set that a circle is never blue: every "what colour is the circle?"
    lowers "blue", since the softmax raises the right answer and lowers all others. Asked about a blue circle, it
    then answers with a colour circles had in training, whatever the image token says (the shortcut of the CLIP
    loss, benchmarks/README.md, now in the language model). Leaving these pieces out of the loss at that position
    (`answer_loss`'s ruled_out) keeps absence of evidence from becoming evidence of absence. It reads only the
    training records, never the held-out list. ids, answer_mask (M, T) from `encode_qa` -> M sorted lists."""
    pieces = ids.gather(1, first_answer_positions(answer_mask)[:, None])[:, 0].tolist()  # (M,)
    of_type: dict[str, set[int]] = defaultdict(set)
    of_question: dict[str, set[int]] = defaultdict(set)
    for record, piece in zip(records, pieces):
        of_type[record["type"]].add(piece)
        of_question[record["question"]].add(piece)
    return [sorted(of_type[r["type"]] - of_question[r["question"]]) for r in records]


@torch.no_grad()
def image_tokens(encoder: VisionEncoder, images: torch.Tensor, variant: str) -> torch.Tensor:
    """The tokens handed to the Thinker: "cls" -> projector(CLS) (B, 1, E); "all" -> projector on every token
    (B, N, E). images (B, C, H, W)."""
    if variant not in ("cls", "all"):
        raise ValueError(f"variant must be 'cls' or 'all', got {variant!r}")
    if variant == "cls":  # the encoder's own output, whose last block updates only the CLS token
        return encoder(images)[:, None]  # (B, 1, E)
    return encoder.projector(encoder.forward_features(images))  # (B, N, E)


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


def scene_questions(scene: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    """Question-answer records of one scene (a make_item / ShapesDataset.scenes() dict): per object a shape, a
    colour and a position question, then one "describe the image." (objects in reading order). An object in a
    colour without a name gets no colour question, nor a shape question beside another object (nothing names it).
    Record: type, question, answer, object (index, -1 for describe), pair (shape, colour or None), n_objects."""
    objects, records = scene["objects"], []
    two = len(objects) == 2
    for k, obj in enumerate(objects):
        shape, colour = SHAPES[obj["shape"]], COLOURS[obj["colour"]] if obj["colour"] >= 0 else None
        named = object_name(obj) if rng.random() < 0.5 else shape  # both forms are unique in a scene
        questions = [("shape", "what shape is this?", shape)] if not two else \
            [("shape", f"what shape is the {colour} one?", shape)] if colour else []
        questions += [("colour", f"what colour is the {shape}?", colour)] if colour else []
        questions.append(("position", f"where is the {named}?", POSITIONS[obj["position"]]))
        records += [{"type": kind, "question": question, "answer": answer, "object": k, "pair": (shape, colour),
                     "n_objects": len(objects)} for kind, question, answer in questions]
    in_reading_order = sorted(objects, key=lambda o: (o["position"], o["centre"][1], o["centre"][0]))
    description = " and ".join(f"{with_article(object_name(o))} {WHERE[POSITIONS[o['position']]]}"
                               for o in in_reading_order)
    records.append({"type": "describe", "question": "describe the image.", "answer": description, "object": -1,
                    "pair": None, "n_objects": len(objects)})
    return records


def make_qa(dataset: ShapesDataset, seed: int = 0) -> list[dict[str, Any]]:
    """Every question of every scene of `dataset`, each record with "image": its index in the data set."""
    rng = random.Random(seed)
    return [{**record, "image": i} for i, scene in enumerate(dataset.scenes())
            for record in scene_questions(scene, rng)]


def train_tokenizer(dataset: ShapesDataset, vocab_size: int = 160, seed: int = 0) -> Tokenizer:
    """SentencePiece on the questions, answers and captions of `dataset`. The CLIP run's tokenizer saw captions
    only: "what", "where", "describe", "colour" and "?" are not in them, so it cuts the questions into letters
    (and "?" into unk). Trained on the QA texts, every word of a question or answer is one or two pieces."""
    texts = [r[key] for r in make_qa(dataset, seed) for key in ("question", "answer")] + dataset.captions
    return Tokenizer.train(sorted(set(texts)), vocab_size)


def normalise_question(question: str) -> str:
    """Lower case, single spaces: the questions are written that way. Empty questions are refused."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"the question is empty; ask e.g. 'what shape is this?' (got {question!r})")
    return " ".join(question.lower().split())


def prompt_ids(tokenizer: Tokenizer, question: str) -> list[int]:
    """[BOS, question pieces..., EOS]: the part of the text the model reads before answering."""
    return [BOS_ID, *tokenizer.encode(normalise_question(question)), EOS_ID]


def encode_qa(tokenizer: Tokenizer, records: Sequence[dict[str, Any]], context_length: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """[BOS, question, EOS, answer, EOS, PAD...] per record -> ids (M, T) long and answer mask (M, T) bool
    (True on the answer's pieces and its closing EOS). Too long a record raises ValueError."""
    ids = torch.full((len(records), context_length), PAD_ID, dtype=torch.long)  # (M, T)
    mask = torch.zeros(len(records), context_length, dtype=torch.bool)  # (M, T)
    for m, record in enumerate(records):
        prompt, answer = prompt_ids(tokenizer, record["question"]), tokenizer.encode(record["answer"]) + [EOS_ID]
        if len(prompt) + len(answer) > context_length:
            raise ValueError(f"{record['question']!r} + {record['answer']!r} needs {len(prompt) + len(answer)} "
                             f"tokens, more than context_length {context_length}")
        ids[m, : len(prompt) + len(answer)] = torch.tensor(prompt + answer)
        mask[m, len(prompt) : len(prompt) + len(answer)] = True
    return ids, mask


class QABatches:
    """Training batches of `batch_size` images, each image's question-answer pairs packed into one row after its
    tokens: the image is read once for all its questions (for 65 image tokens, ~3x less work per question).
    A pure function of (seed, step) as `data.Batches` makes them, so resuming is exact. batches(step) ->
    (image tokens float (B, K, E), ids (B, T'), answer mask (B, T'), segments (B, T'): pair 1, 2, ..., -1 = pad),
    and with `ruled_out` (per record, pieces left out of its first answer position's softmax: `unseen_answers`)
    a fifth tensor (B, T', R) long, -1 where nothing is left out."""

    def __init__(self, tokens: torch.Tensor, records: Sequence[dict[str, Any]], ids: torch.Tensor,
                 answer_mask: torch.Tensor, batch_size: int, seed: int = 0,
                 ruled_out: Sequence[Sequence[int]] | None = None):
        rows_of: dict[int, list[int]] = defaultdict(list)
        for m, record in enumerate(records):
            rows_of[record["image"]].append(m)
        self.tokens, self.images = tokens, sorted(rows_of)
        lengths = (ids != PAD_ID).sum(1).tolist()
        self.with_ruled_out = ruled_out is not None
        self.width = max(map(len, ruled_out), default=0) if self.with_ruled_out else 0  # R
        first = first_answer_positions(answer_mask).tolist()  # (M,)

        def left_out(m: int) -> torch.Tensor:  # (t, R) int32: the record's pieces at its first answer position
            out = torch.full((lengths[m], self.width), -1, dtype=torch.int32)
            out[first[m], : len(ruled_out[m])] = torch.tensor(ruled_out[m], dtype=torch.int32)
            return out

        self.rows = []  # per image: its pairs end to end, (ids, answer mask, segments[, ruled out]), each (t, ...)
        for image in self.images:
            parts = [(ids[m, : lengths[m]], answer_mask[m, : lengths[m]], torch.full((lengths[m],), j + 1))
                     + ((left_out(m),) if self.with_ruled_out else ()) for j, m in enumerate(rows_of[image])]
            self.rows.append(tuple(torch.cat(column) for column in zip(*parts)))
        self.order = Batches(self.images, batch_size, seed)

    def __call__(self, step: int) -> tuple[torch.Tensor, ...]:
        picks = self.order.indices(step).tolist()  # (B,)
        width = max(len(self.rows[p][0]) for p in picks)
        ids = torch.full((len(picks), width), PAD_ID, dtype=torch.long)  # (B, T')
        mask = torch.zeros(len(picks), width, dtype=torch.bool)  # (B, T')
        segments = torch.full((len(picks), width), -1, dtype=torch.long)  # (B, T')
        columns = [ids, mask, segments]
        if self.with_ruled_out:
            columns.append(torch.full((len(picks), width, self.width), -1, dtype=torch.long))  # (B, T', R)
        for b, p in enumerate(picks):
            n = len(self.rows[p][0])
            for column, values in zip(columns, self.rows[p]):
                column[b, :n] = values
        return (self.tokens[[self.images[p] for p in picks]].float(), *columns)


@torch.no_grad()
def generate(model: Thinker, image_tokens: torch.Tensor, prompts: torch.Tensor, max_new_tokens: int = 24,
             temperature: float = 0.0, generator: torch.Generator | None = None) -> list[list[int]]:
    """Continue equal-length prompts (B, T0) after image tokens (B, K, D) one token at a time; greedy when
    temperature is 0, else sampled from softmax(logits / temperature). A row stops at EOS (not returned) or after
    max_new_tokens (capped by the context length). -> B lists of new token ids."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    B = prompts.shape[0]
    limit = min(max_new_tokens, model.cfg.context_length - prompts.shape[1])
    ids, done, out = prompts, torch.zeros(B, dtype=torch.bool), [[] for _ in range(B)]
    for _ in range(max(limit, 0)):
        logits = model(image_tokens, ids)[:, -1].float()  # (B, V)
        if temperature > 0:
            probs = (logits / temperature).softmax(-1)  # (B, V)
            step = torch.multinomial(probs, 1, generator=generator)[:, 0]  # (B,)
        else:
            step = logits.argmax(-1)  # (B,)
        step = step.cpu().masked_fill(done, PAD_ID)
        for b in range(B):
            if not done[b]:
                if step[b] == EOS_ID:
                    done[b] = True
                else:
                    out[b].append(int(step[b]))
        if done.all():
            break
        ids = torch.cat([ids, step[:, None].to(ids.device)], dim=1)  # (B, T0 + t)
    return out


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


def load_clip_encoder(run_dir: str | Path, device: str = "cpu") -> tuple[VisionEncoder, ShapesConfig]:
    """The frozen VisionEncoder (eval mode, no gradients) of a `python -m tinyvit train` run, and the shapes
    settings it was trained on (its config.json's "shapes", else shapes drawn at the encoder's image size)."""
    run = Path(run_dir)
    if not (run / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"{run} has no checkpoint.pt: pass the folder of a `python -m tinyvit train` run")
    ckpt = load_checkpoint(run / "checkpoint.pt")
    configs = ckpt.get("configs", {})
    if "vision" not in configs or "text" not in configs:
        raise ValueError(f"{run / 'checkpoint.pt'} is not a CLIP run: its configs hold {sorted(configs)}, "
                         "expected 'vision' and 'text'")
    clip = CLIP(ViTConfig.from_dict(configs["vision"]), TextConfig.from_dict(configs["text"]))
    clip.load_state_dict(ckpt["model"])
    saved = read_json_object(run / "config.json").get("shapes") if (run / "config.json").is_file() else None
    shapes = ShapesConfig(**saved) if saved else ShapesConfig(image_size=clip.vision_cfg.image_size)
    return clip.visual.eval().requires_grad_(False).to(resolve_device(device)), shapes


def encoder_fingerprint(encoder: VisionEncoder) -> str:
    """A short SHA-256 of the encoder's weights: a Thinker is tied to the exact encoder it learned to read."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def train_thinker(clip_run: str | Path, variant: str = "cls", train: TrainConfig = RECIPE, n_images: int = 3000,
                  eval_images: int = 500, progress: bool = True, rule_out_unseen: bool = True,
                  whiten: bool = False) -> dict[str, Any]:
    """Train a Thinker on the questions about n_images "train" images read through a CLIP run's frozen encoder,
    then score it on eval_images "heldout" images (colour-shape pairs never trained on) and as many "test" images
    (new images of trained pairs: "seen_pairs"). With `rule_out_unseen` (the default) the loss leaves out, for each
    question, the answers it never had in training (`unseen_answers`); False trains a plain language model.
    `whiten` whitens the image tokens with the training images' statistics (`Thinker.set_whitening`).
    -> {"model", "tokenizer", "encoder", "shapes", "history", "metrics"}; metrics["train_seconds"] counts the
    tokenizer, the image tokens and the steps."""
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
    history = fit(model, thinker_batch_loss, batches, train, progress=progress)
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


def save_thinker(out_dir: str | Path, result: dict[str, Any], clip_run: str | Path) -> Path:
    """Write THINKER_DIR/thinker.pt (atomic: the LM's weights and config, its tokenizer, the CLIP run's path
    relative to THINKER_DIR, its vision config and weights' fingerprint), then metrics.json. -> the checkpoint."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)  # the completion marker goes first and comes back last
    model = result["model"]
    path = save_checkpoint(
        out / THINKER_FILE, model={k: v.cpu() for k, v in model.state_dict().items()},
        configs={"thinker": model.cfg.to_dict(), "vision": result["encoder"].cfg.to_dict(),
                 "shapes": asdict(result["shapes"])},
        tokenizer=result["tokenizer"].to_bytes(), clip_run=os.path.relpath(Path(clip_run).resolve(), out.resolve()),
        encoder_fingerprint=encoder_fingerprint(result["encoder"]),
        loss=[round(x, 4) for x in result["history"]["loss"]])
    (out / "metrics.json").write_text(json.dumps(result["metrics"], indent=1) + "\n", encoding="utf-8")
    return path


def load_thinker(run_dir: str | Path, device: str = "cpu") -> tuple[Thinker, Tokenizer, VisionEncoder]:
    """A saved Thinker (eval mode), its tokenizer, and the frozen encoder of the CLIP run it reads; the encoder's
    config must be the one the Thinker was trained with."""
    run = Path(run_dir)
    if not (run / THINKER_FILE).is_file():
        raise FileNotFoundError(f"{run} holds no {THINKER_FILE}: pass the --out folder of `python -m tinyvit think`")
    ckpt = load_checkpoint(run / THINKER_FILE)
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


def read_image(path: str | Path, image_size: int, resize: bool = False) -> torch.Tensor:
    """An image file as the encoder's input (3, S, S); another size is refused unless `resize`."""
    rgb = read_rgb(path, image_size)  # missing or unreadable files raise here
    with Image.open(path) as img:
        width, height = ImageOps.exif_transpose(img).size
    if (width, height) != (image_size, image_size) and not resize:
        raise ValueError(f"{path} is {width}x{height} pixels, but the encoder expects {image_size}x{image_size}; "
                         "resize it, or pass --resize")
    return to_tensor(rgb)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register `think` and `ask` on the CLI's subparsers."""
    think = sub.add_parser("think", help="train a Thinker that answers questions about shapes images from a CLIP "
                           "run's frozen image tokens; write THINKER_DIR", description="Trains on the 'train' split, "
                           "scores on colour-shape pairs never trained on ('heldout'); writes thinker.pt, "
                           "metrics.json.")
    think.add_argument("--run", required=True, metavar="CLIP_RUN_DIR", help="a `python -m tinyvit train` run")
    think.add_argument("--out", required=True, metavar="THINKER_DIR")
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
    think.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="cpu")
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


def cmd_think(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if (out / THINKER_FILE).exists() and not args.force:
        raise ValueError(f"{out} already holds a {THINKER_FILE}; pass --force to overwrite it")
    for name in ("steps", "batch_size", "lr", "images", "eval_images"):
        if not getattr(args, name) > 0:  # "not >" also refuses nan
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    set_threads(args.threads)
    train = replace(RECIPE, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                    device=args.device, warmup_steps=min(RECIPE.warmup_steps, args.steps // 10))
    result = train_thinker(args.run, args.variant, train, args.images, args.eval_images, progress=not args.quiet,
                           rule_out_unseen=not args.keep_unseen_answers, whiten=args.whiten)
    save_thinker(out, result, args.run)
    acc = result["metrics"]["accuracy"]
    print(f"held-out exact match ({args.variant}, {result['metrics']['image_tokens']} image token(s)): "
          + ", ".join(f"{t} {acc[t]:.3f}" for t in QUESTION_TYPES) + f"; {result['metrics']['train_seconds']} s")
    print(f"wrote {out}: {THINKER_FILE}, metrics.json")
    return 0


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
