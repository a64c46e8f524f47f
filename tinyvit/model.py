"""Steps 4-7 of the chapter: CLS token and positions, pre-norm transformer blocks, CLS pooling, projector.
Shapes: B batch, P patches, N = P + 1 tokens, D width, h heads, Dh = D // h, E = out_dim."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ViTConfig
from .patches import PatchEmbed
from .positions import resample_pos_embed, sincos_positions


def trunc_normal(tensor: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    """Normal(0, std) cut at 2 std (`nn.init.trunc_normal_`'s own bounds, -2 and 2, would cut nothing)."""
    return nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std)


def init_weights(module: nn.Module) -> None:
    """The one init of every tinyvit model: Linear, Embedding weights trunc-normal; zero biases; LayerNorm = 1."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            trunc_normal(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv Linear. (B, N, D) -> (B, N, D). `fused`: PyTorch's kernel,
    else the explicit softmax, the path also taken whenever the caller asks for the (B, h, N, N) weights."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, attn_dropout: float = 0.0, fused: bool = True):
        super().__init__()
        self.heads, self.attn_dropout, self.fused = heads, attn_dropout, fused
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, return_attention: bool = False, attn_mask: torch.Tensor | None = None,
                queries: int | None = None):
        """Returns (out, weights); weights is (B, h, N, N) when asked for, else None.
        `attn_mask` (bool, broadcastable to (B, h, N, N), True = may attend) is for the text encoder's padding.
        `queries=Q` computes the outputs of the first Q tokens only, still attending to all N: (B, Q, D)."""
        B, N, D = x.shape
        h, Dh = self.heads, D // self.heads
        if queries is None:
            q, k, v = self.qkv(x).view(B, N, 3, h, Dh).permute(2, 0, 3, 1, 4)  # 3 x (B, h, N, Dh)
        else:  # the qkv weight's rows are [W_q; W_k; W_v]: queries from Q tokens, keys and values from all N
            w, b = self.qkv.weight, self.qkv.bias
            q = F.linear(x[:, :queries], w[:D], b[:D]).view(B, queries, h, Dh).transpose(1, 2)  # (B, h, Q, Dh)
            k, v = F.linear(x, w[D:], b[D:]).view(B, N, 2, h, Dh).permute(2, 0, 3, 1, 4)  # 2 x (B, h, N, Dh)
        p, weights = (self.attn_dropout if self.training else 0.0), None
        if self.fused and not return_attention:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)  # (B, h, N, Dh)
        else:  # explicit, so that a learner (and viz.py) can see the softmax weights
            scores = q @ k.transpose(-2, -1) * Dh**-0.5  # (B, h, N, N)
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            weights = scores.softmax(dim=-1)  # (B, h, N, N)
            out = F.dropout(weights, p) @ v  # (B, h, N, Dh)
        out = out.transpose(1, 2).reshape(B, q.shape[2], D)  # (B, N or Q, D)
        return self.proj_drop(self.proj(out)), weights if return_attention else None


class MLP(nn.Module):
    """Per-token feed-forward network D -> mlp_dim -> D with GELU. (B, N, D) -> (B, N, D)."""

    def __init__(self, dim: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(mlp_dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)). (B, N, D) -> (B, N, D)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float = 0.0, attn_dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout, attn_dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_dim, dropout)

    def forward(self, x: torch.Tensor, return_attention: bool = False, attn_mask: torch.Tensor | None = None,
                queries: int | None = None):
        """Returns (x, attention weights or None); with `queries=Q`, x holds the first Q tokens only (B, Q, D)."""
        a, weights = self.attn(self.norm1(x), return_attention, attn_mask, queries)
        x = (x if queries is None else x[:, :queries]) + a
        x = x + self.mlp(self.norm2(x))
        return x, weights


class VisionTransformer(nn.Module):
    """Patches -> [CLS] + patch tokens + positions -> blocks -> final LayerNorm. (B, C, H, W) -> (B, N, D)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens, cfg.dim))
        self.pos_drop = nn.Dropout(cfg.dropout)  # as in the ViT paper: dropout right after adding positions
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp_dim, cfg.dropout, cfg.attn_dropout)
                                    for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        trunc_normal(self.pos_embed)
        if cfg.pos_init == "sincos":  # the patch positions start from the sine-cosine table, CLS's stays
            with torch.no_grad():
                self.pos_embed[0, 1:] = sincos_positions(cfg.grid_size, cfg.dim)
        trunc_normal(self.cls_token)
        init_weights(self)
        w = self.patch_embed.proj.weight  # Xavier, as for the flat Linear the patch embedding is
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)

    def positions_for(self, images: torch.Tensor, interpolate_pos: bool) -> torch.Tensor:
        """The (1, N, D) position embeddings for this batch's grid, resampled only when allowed."""
        grid = (images.shape[-2] // self.cfg.patch_size, images.shape[-1] // self.cfg.patch_size)
        g, s = self.cfg.grid_size, self.cfg.image_size
        if grid != (g, g) and not interpolate_pos:
            raise ValueError(f"image size {images.shape[-2]}x{images.shape[-1]} gives a {grid[0]}x{grid[1]} patch "
                             f"grid, but the position embeddings cover {g}x{g} (image_size {s}): resize the image "
                             f"to {s}x{s}, or pass interpolate_pos=True to resample the positions")
        return resample_pos_embed(self.pos_embed, grid)  # the same grid: pos_embed itself

    def embed_tokens(self, images: torch.Tensor, interpolate_pos: bool = False) -> torch.Tensor:
        """Patches, CLS token and positions, before the blocks: (B, C, H, W) -> (B, N, D)."""
        x = self.patch_embed(images)  # (B, P, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        return self.pos_drop(torch.cat([cls, x], dim=1) + self.positions_for(images, interpolate_pos))  # (B, N, D)

    def forward_features(self, images: torch.Tensor, return_attention: bool = False, interpolate_pos: bool = False):
        """All tokens after the final norm: (B, C, H, W) -> (B, N, D); with `return_attention`, also a list of
        `depth` weight tensors (B, h, N, N)."""
        x, attentions = self.embed_tokens(images, interpolate_pos), []
        for block in self.blocks:
            x, weights = block(x, return_attention)
            attentions.append(weights)
        x = self.norm(x)
        return (x, attentions) if return_attention else x

    def forward(self, images: torch.Tensor, return_attention: bool = False, interpolate_pos: bool = False):
        """The CLS token: (B, C, H, W) -> (B, D) (and the attention list when asked for). Only the CLS token leaves,
        so the last block updates only it (as nanoGPT's `x[:, [-1], :]`): its queries, output projection and MLP run
        on 1 token, its keys and values still on all N. The result equals `forward_features(images)[:, 0]`."""
        if return_attention:  # the attention maps of every token are wanted: the full path
            tokens, attentions = self.forward_features(images, True, interpolate_pos)
            return tokens[:, 0], attentions
        x = self.embed_tokens(images, interpolate_pos)
        for block in self.blocks[:-1]:
            x, _ = block(x)
        x, _ = self.blocks[-1](x, queries=1)  # (B, 1, D): the CLS token only
        return self.norm(x)[:, 0]  # (B, D)


class VisionEncoder(VisionTransformer):
    """The chapter's vision encoder: the CLS token through a bias-free Linear D -> E. (B, C, H, W) -> (B, E)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__(cfg)
        self.projector = nn.Linear(cfg.dim, cfg.out_dim, bias=False)
        trunc_normal(self.projector.weight)

    def forward(self, images: torch.Tensor, return_attention: bool = False, interpolate_pos: bool = False):
        """(B, C, H, W) -> (B, E); with `return_attention`, (embedding, [(B, h, N, N)] * depth)."""
        out = super().forward(images, return_attention, interpolate_pos)
        return (self.projector(out[0]), out[1]) if return_attention else self.projector(out)  # (B, E)

    def encode_image(self, images: torch.Tensor, interpolate_pos: bool = False) -> torch.Tensor:
        """L2-normalised image embeddings, as the contrastive loss compares them. (B, C, H, W) -> (B, E)."""
        return F.normalize(self(images, interpolate_pos=interpolate_pos), dim=-1)
