"""The caption side: a SentencePiece tokenizer trained on the captions, and the text encoder that turns token ids
into one vector per caption (the chapter's mean of token embeddings, or a small transformer).

Shapes: B batch, T context length, V vocab, D width, h heads, Dh = D // h, E = out_dim (the shared embedding size).
"""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Sequence

import sentencepiece as spm
import torch
from torch import nn

from .config import TextConfig
from .model import Block, init_weights, trunc_normal

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


def _check_captions(captions: Sequence[str]) -> list[str]:
    if isinstance(captions, str) or not hasattr(captions, "__iter__"):
        raise ValueError(f"Tokenizer.train expects a list of caption strings, got {type(captions).__name__}")
    captions = list(captions)
    if not captions:
        raise ValueError("Tokenizer.train needs at least one caption, got an empty list")
    for k, caption in enumerate(captions):
        if not isinstance(caption, str):
            raise ValueError(f"caption {k} must be a string, got {type(caption).__name__} {caption!r}")
        if not caption.strip():
            raise ValueError(f"caption {k} is empty")
    return captions


def _train_proto(captions: list[str], vocab_size: int, model_type: str) -> bytes:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(captions), model_writer=model, vocab_size=vocab_size, model_type=model_type,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        normalization_rule_name="identity",  # keep captions as written (and the model ~1 KB instead of ~240 KB)
        character_coverage=1.0, minloglevel=2,
    )
    return model.getvalue()


class Tokenizer:
    """SentencePiece sub-words with fixed special ids pad 0, unk 1, bos 2, eos 3. Repeated spaces collapse to one,
    so decode(encode(c)) == c for captions with single spaces and no leading or trailing space."""

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def __init__(self, model_proto: bytes):
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=bytes(model_proto))
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"not a SentencePiece model ({len(model_proto)} bytes): {err}") from None
        ids = (self._sp.pad_id(), self._sp.unk_id(), self._sp.bos_id(), self._sp.eos_id())
        if ids != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise ValueError(f"tokenizer model has special ids pad/unk/bos/eos = {ids}, expected (0, 1, 2, 3)")
        self._proto = bytes(model_proto)

    @classmethod
    def train(cls, captions: Sequence[str], vocab_size: int = 256, model_type: str = "bpe") -> "Tokenizer":
        """Train on the captions, in memory. If `vocab_size` is more than the captions can fill, it is capped at
        the largest size SentencePiece can build (read it from `.vocab_size`); too small raises ValueError."""
        captions = _check_captions(captions)
        if model_type not in ("bpe", "unigram"):
            raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
        if not isinstance(vocab_size, int) or vocab_size < 5:
            raise ValueError(f"vocab_size must be an integer >= 5 (4 special ids + pieces), got {vocab_size!r}")
        for _ in range(3):  # a capped retry normally succeeds at once
            try:
                return cls(_train_proto(captions, vocab_size, model_type))
            except RuntimeError as err:
                message = str(err)
                too_high = re.search(r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)", message)
                too_low = re.search(r"smaller than required_chars\. \d+ vs (\d+)", message)
                if too_high:
                    vocab_size = int(too_high.group(1))
                elif too_low:
                    raise ValueError(
                        f"vocab_size {vocab_size} is too small for these captions: one piece per distinct character "
                        f"plus the 4 special ids needs vocab_size >= {too_low.group(1)}") from None
                else:
                    raise ValueError(f"SentencePiece could not train on these captions: {message}") from None
        raise ValueError(f"SentencePiece could not settle on a vocabulary size (last tried {vocab_size})")

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size})"

    def encode(self, text: str) -> list[int]:
        """Piece ids of one text, without BOS/EOS."""
        if not isinstance(text, str):
            raise ValueError(f"encode expects a string, got {type(text).__name__}")
        return self._sp.encode(text)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of a sequence of ids; pad, bos and eos are skipped (unk shows as ' ⁇ ')."""
        ids = [int(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the vocabulary of size {self.vocab_size}")
        return self._sp.decode([i for i in ids if i not in (PAD_ID, BOS_ID, EOS_ID)])

    def encode_batch(self, texts: Sequence[str], context_length: int) -> torch.Tensor:
        """[BOS, pieces..., EOS, PAD...] per text; too-long texts lose pieces, never BOS or EOS. -> (B, T) long."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("encode_batch expects a list of strings")
        if not isinstance(context_length, int) or context_length < 3:
            raise ValueError(f"context_length must be an integer >= 3 (BOS, a piece, EOS), got {context_length!r}")
        tokens = torch.full((len(texts), context_length), PAD_ID, dtype=torch.long)  # (B, T)
        for b, ids in enumerate(self._sp.encode(list(texts))):
            row = [BOS_ID] + ids[: context_length - 2] + [EOS_ID]
            tokens[b, : len(row)] = torch.tensor(row)
        return tokens

    def to_bytes(self) -> bytes:
        """The serialised SentencePiece model (the content of a .model file)."""
        return self._proto

    @classmethod
    def from_bytes(cls, data: bytes) -> "Tokenizer":
        return cls(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self._proto)

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            return cls(path.read_bytes())
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None


class TextEncoder(nn.Module):
    """Token ids -> one caption vector, not normalised. (B, T) -> (B, E).

    kind "mean": the chapter's option 2, the mean of the token embeddings over non-pad positions, then a Linear.
    A bag of words: "a red square above a blue star" and "a blue square above a red star" give the same vector.
    kind "transformer": token + position embeddings -> pre-norm blocks (padding masked) -> LayerNorm -> the same
    masked mean -> Linear. Padding never changes the output; a row of only padding gives a finite vector."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        if cfg.kind == "transformer":
            self.pos_embed = nn.Parameter(torch.zeros(1, cfg.context_length, cfg.dim))
            self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp_dim, cfg.dropout) for _ in range(cfg.depth))
            self.norm = nn.LayerNorm(cfg.dim)
        self.projector = nn.Linear(cfg.dim, cfg.out_dim, bias=False)
        self.init_weights()

    def init_weights(self) -> None:
        """The package's one init (`model.init_weights`), and the positions trunc-normal(0.02) too."""
        init_weights(self)
        if self.cfg.kind == "transformer":
            trunc_normal(self.pos_embed)

    def _check(self, tokens: torch.Tensor) -> None:
        if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long or tokens.dim() != 2:
            got = f"{tokens.dtype} {tuple(tokens.shape)}" if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"TextEncoder expects token ids as a long tensor (B, T), got {got}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.cfg.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.cfg.vocab_size}) for vocab_size {self.cfg.vocab_size}, "
                             f"got ids from {int(tokens.min())} to {int(tokens.max())}")
        if self.cfg.kind == "transformer" and tokens.shape[1] > self.cfg.context_length:
            raise ValueError(f"{tokens.shape[1]} tokens per caption exceed context_length {self.cfg.context_length}")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) long ids, PAD_ID = 0 for padding -> (B, E)."""
        self._check(tokens)
        B, T = tokens.shape
        keep = tokens != PAD_ID  # (B, T)
        x = self.token_embed(tokens)  # (B, T, D)
        if self.cfg.kind == "transformer":
            x = x + self.pos_embed[:, :T]
            # Query i may attend to key j when j is not padding; each token also sees itself, so an all-pad row
            # still has one key per query (no NaN), and real tokens never see padding.
            attn_mask = keep[:, None, None, :] | torch.eye(T, dtype=torch.bool, device=tokens.device)  # (B, 1, T, T)
            for block in self.blocks:
                x = block(x, attn_mask=attn_mask)[0]
            x = self.norm(x)
        pooled = _masked_mean(x, keep)  # (B, D)
        return self.projector(pooled)  # (B, E)


def _masked_mean(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean over the positions where keep is True: (B, T, D), (B, T) bool -> (B, D); a row with none gives 0."""
    weights = keep.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1)
