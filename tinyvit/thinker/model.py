"""The Thinker: a tiny decoder-only language model that reads [image token(s), question, answer]. Its image tokens
come from a frozen, CLIP-trained VisionEncoder's projector, so the 256-d space the chapter aligns is exactly what
joins the two models.

Shapes: B batch, K image tokens (1 for "cls", N for "all"), T text tokens, L = K + T, D = E = 256, V vocab.
Text layout: [BOS, question..., EOS, answer..., EOS, PAD...]. EOS closes each turn: after the question's EOS the
model answers, and the answer's EOS stops generation.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import ThinkerConfig
from ..model import Block, VisionEncoder, init_weights, trunc_normal
from ..text import EOS_ID, PAD_ID

WHITEN_EPS = 1e-4  # Thinker.set_whitening: directions with less than 1e-4 of the top variance are not amplified


class Thinker(nn.Module):
    """Normalised image tokens + text token embeddings + positions -> causal pre-norm blocks -> LayerNorm -> logits.
    (B, K, D), (B, T) long -> (B, K + T, V). Position i sees positions <= i only."""

    def __init__(self, cfg: ThinkerConfig):
        super().__init__()
        self.cfg = cfg
        # The projector's tokens are long and the N of one image point almost the same way; a LayerNorm with gain
        # 0.02 brings them to the scale of the text embeddings and positions, so the Thinker's own position
        # embeddings can tell the N image tokens apart. It mixes nothing across tokens.
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
    orders of magnitude. Whitened, each direction the tokens use has variance ~1, so a reader learns from faint ones
    as fast as from strong ones: which colour belongs to which of two objects is learned much faster that way
    (benchmarks/token_probe.py). eps keeps the unused directions (variance ~0) near 0."""
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


@torch.no_grad()
def image_tokens(encoder: VisionEncoder, images: torch.Tensor, variant: str) -> torch.Tensor:
    """The tokens handed to the Thinker: "cls" -> projector(CLS) (B, 1, E); "all" -> projector on every token
    (B, N, E). images (B, C, H, W)."""
    if variant not in ("cls", "all"):
        raise ValueError(f"variant must be 'cls' or 'all', got {variant!r}")
    if variant == "cls":  # the encoder's own output
        return encoder(images)[:, None]  # (B, 1, E)
    return encoder.projector(encoder.forward_features(images))  # (B, N, E)


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
