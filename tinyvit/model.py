"""Steps 4-7 of the chapter: CLS token and positions, pre-norm transformer blocks, CLS pooling, projector.

Shapes: B batch, P patches, N = P + 1 tokens, D width, h heads, Dh = D // h, E = out_dim.
"""
from __future__ import annotations

import math
import platform

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import flop_registry, register_flop_formula

from .config import ViTConfig
from .patches import PatchEmbed


def trunc_normal(tensor: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    """Normal(0, std) cut at two standard deviations. (`nn.init.trunc_normal_`'s own bounds are -2 and 2 in
    absolute units, which for std 0.02 cut nothing.)"""
    return nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std)


def keep_mask(shape: torch.Size, p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """A bool mask of `shape`, each entry False with probability round(p * 65536) / 65536 (for p = 0.1: 0.1000061).

    The mask is cut from random 64-bit integers, four 16-bit lanes each, so the generator runs once per four entries.
    torch's CPU generator is serial (one core, whatever the thread count), and `torch.rand` spends one draw per
    entry: on this 2-core CPU the 64-bit way takes a quarter of the time, and dropout masks were 13 % of a
    training step. All 64 bits are uniform (`random_(-2**63, None)` spans the full int64 range)."""
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    lanes = words.view(torch.int16)[:n].view(shape)  # uniform on [-32768, 32767]
    return lanes >= round(p * 65536) - 32768


def _onednn_available() -> bool:
    """oneDNN's linear kernel is in this PyTorch, on an x86-64 CPU (where it was measured; see `Linear.onednn`)."""
    return (platform.machine().lower() in ("x86_64", "amd64") and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T + bias by oneDNN's GEMM (`torch.ops.mkldnn._linear_pointwise`, an op PyTorch keeps for its
    compiler's CPU code); the bias is added inside the product. (..., in) -> (..., out)."""
    out = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), weight, bias, "none", [], "")
    return out.view(*x.shape[:-1], weight.shape[0])


class _OneDNNLinearFunction(torch.autograd.Function):
    """`_onednn_linear` with its backward in oneDNN too: dx = g W, dW = g^T x, db = sum of g."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_linear(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])  # (M, out)
        dx = _onednn_linear(grad, weight.t(), None) if ctx.needs_input_grad[0] else None  # (..., in)
        dw = db = None
        if ctx.needs_input_grad[1]:
            # oneDNN copies its first operand's transpose into rows first, so the narrower of x and g goes there:
            # for the MLP's first layer 1.5 ms instead of 2.2 (4,160 x 128 -> 512), for its second 1.6 instead of 2.7
            xs = x.reshape(-1, x.shape[-1])  # (M, in)
            if xs.shape[1] <= g.shape[1]:
                dw = _onednn_linear(xs.t(), g.t(), None).t().contiguous()  # (in, out) -> (out, in)
            else:
                dw = _onednn_linear(g.t(), xs.t(), None)  # (out, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = g.sum(0)
        return dx, dw, db


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear`, except that float32 products on the CPU go through oneDNN when `Linear.onednn` is on (and
    autocast is off). The result is F.linear's to float rounding (tested, gradients too). (..., in) -> (..., out)."""
    if (Linear.onednn and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and x.numel()
            and not torch.is_autocast_enabled("cpu")):
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
            return _OneDNNLinearFunction.apply(x, weight, bias)
        return _onednn_linear(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear (the same parameters and state_dict) whose float32 CPU products run through `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)

    #: Use oneDNN's GEMM for float32 products on the CPU. PyTorch's own (`torch.mm`, `F.linear`) calls MKL, which
    #: on this AMD EPYC ran a 2048 x 2048 product at 208 GFLOP/s with 2 threads, where oneDNN ran it at 449, and the
    #: layer shapes of the default recipe at 383-434 against 203-215 (benchmarks/encoder_speed.py prints both
    #: rates). False: every product through F.linear.
    onednn: bool = _onednn_available()


if Linear.onednn and torch.ops.mkldnn._linear_pointwise not in flop_registry:
    @register_flop_formula(torch.ops.mkldnn._linear_pointwise)
    def _onednn_linear_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
        """What torch.utils.flop_counter.FlopCounterMode counts for `_onednn_linear`: 2 M K N, as for the addmm
        of the F.linear it replaces (notebook 3 checks its FLOP formula against that count)."""
        return 2 * x_shape[0] * x_shape[1] * w_shape[0]


class Dropout(nn.Module):
    """Inverted dropout: in training, zero each number with probability p and scale the rest by 1 / (1 - p), so
    the expected value is unchanged; in eval mode, the identity. nn.Dropout computes the same thing; on the CPU the
    mask comes from `keep_mask` (p rounded to a multiple of 1/65536, the scale matching it exactly), about four
    times cheaper than torch's own sampler there. Other devices use `F.dropout`. (B, ...) -> (B, ...)."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p!r}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        dropped = round(self.p * 65536) / 65536
        return x * (keep_mask(x.shape, self.p, x.device) * (1.0 / (1.0 - dropped)))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv Linear. (B, N, D) -> (B, N, D)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.heads = cfg.heads
        self.attn_dropout = cfg.attn_dropout
        self.qkv = Linear(cfg.dim, 3 * cfg.dim)
        self.proj = Linear(cfg.dim, cfg.dim)
        self.proj_drop = Dropout(cfg.dropout)

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
            q = linear(x[:, :queries], w[:D], b[:D]).view(B, queries, h, Dh).transpose(1, 2)  # (B, h, Q, Dh)
            k, v = linear(x, w[D:], b[D:]).view(B, N, 2, h, Dh).permute(2, 0, 3, 1, 4)  # 2 x (B, h, N, Dh)
        p = self.attn_dropout if self.training else 0.0
        weights = None
        if return_attention or (self.explicit_for_cpu_grad and queries is None and x.device.type == "cpu"
                                and torch.is_grad_enabled()):
            # The explicit path: a learner (and viz.py) can see the softmax weights, and CPU training runs faster.
            scores = q @ k.transpose(-2, -1) * Dh**-0.5  # (B, h, N, N)
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            probs = scores.softmax(dim=-1)  # (B, h, N, N)
            weights = probs if return_attention else None
            out = F.dropout(probs, p) @ v  # (B, h, N, Dh)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)  # (B, h, N, Dh)
        out = out.transpose(1, 2).reshape(B, q.shape[2], D)  # (B, N or Q, D)
        return self.proj_drop(self.proj(out)), weights

    #: On the CPU, when gradients are wanted, all-token attention takes the explicit path (minus the returned
    #: weights): its forward and backward together ran 1.65x faster than the fused kernel's at 65 tokens (batch 64,
    #: 2 heads of 64, this 2-core CPU) and 1.1-1.2x faster at 197, where the fused kernel's backward is slow on
    #: such small products. Inference, and the CLS-only queries of the last block, stay on
    #: `scaled_dot_product_attention`, which is faster there. Both give the same result to float rounding (tested).
    explicit_for_cpu_grad: bool = True


class MLP(nn.Module):
    """Per-token feed-forward network D -> mlp_dim -> D with GELU. (B, N, D) -> (B, N, D)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.fc1 = Linear(cfg.dim, cfg.mlp_dim)
        self.act = nn.GELU()
        self.fc2 = Linear(cfg.mlp_dim, cfg.dim)
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)). (B, N, D) -> (B, N, D)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, return_attention: bool = False, attn_mask: torch.Tensor | None = None,
                queries: int | None = None):
        """Returns (x, attention weights or None); with `queries=Q`, x holds the first Q tokens only (B, Q, D)."""
        a, weights = self.attn(self.norm1(x), return_attention, attn_mask, queries)
        x = (x if queries is None else x[:, :queries]) + a
        x = x + self.mlp(self.norm2(x))
        return x, weights


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int]) -> torch.Tensor:
    """Resize the patch positions bicubically to another grid, the CLS position kept apart.

    (1, 1 + g*g, D) -> (1, 1 + gh*gw, D). Resampling to the same grid returns the input unchanged.
    """
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    _, P, D = patch_pos.shape
    g = math.isqrt(P)
    if g * g != P:
        raise ValueError(f"position embeddings for {P} patches do not form a square grid")
    if (g, g) == tuple(new_grid):
        return pos_embed
    grid = patch_pos.reshape(1, g, g, D).permute(0, 3, 1, 2)  # (1, D, g, g)
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False)  # (1, D, gh, gw)
    patch_pos = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], D)  # (1, gh*gw, D)
    return torch.cat([cls_pos, patch_pos], dim=1)  # (1, 1 + gh*gw, D)


def sincos_positions(grid: int, dim: int) -> torch.Tensor:
    """The fixed 2-D sine-cosine position table (MAE's): half of the dim numbers encode the patch's row, half its
    column, each as the sine and cosine of dim/4 frequencies 1 / 10000^(k / (dim/4)). -> (grid*grid, dim),
    patches in row-major order. tinyvit learns its positions; this is the table to compare them with (notebook 2),
    or to start them from."""
    if dim % 4:
        raise ValueError(f"the sine-cosine table needs dim divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")  # (grid, grid) each
    freqs = 1.0 / 10000 ** (torch.arange(dim // 4) / (dim // 4))  # (dim/4,)

    def encode(coord: torch.Tensor) -> torch.Tensor:
        angles = coord.flatten()[:, None] * freqs  # (grid*grid, dim/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (grid*grid, dim/2)

    return torch.cat([encode(rows), encode(cols)], dim=1)  # (grid*grid, dim)


class VisionTransformer(nn.Module):
    """Patches -> [CLS] + patch tokens + positions -> blocks -> final LayerNorm. (B, C, H, W) -> (B, N, D)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens, cfg.dim))
        self.pos_drop = Dropout(cfg.dropout)  # as in the ViT paper: dropout right after adding positions
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.init_weights()

    def init_weights(self) -> None:
        """ViT-style init: trunc-normal(0.02) for CLS, positions and Linear weights; Xavier for the patch
        embedding (as a flat Linear); zero biases; LayerNorms at identity. With cfg.pos_init "sincos" the patch
        positions start from the sine-cosine table instead (the CLS position stays trunc-normal)."""
        trunc_normal(self.pos_embed)
        if self.cfg.pos_init == "sincos":
            with torch.no_grad():
                self.pos_embed[0, 1:] = sincos_positions(self.cfg.grid_size, self.cfg.dim)
        trunc_normal(self.cls_token)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)

    def positions_for(self, images: torch.Tensor, interpolate_pos: bool) -> torch.Tensor:
        """The (1, N, D) position embeddings for this batch's grid, resampled only when allowed."""
        p = self.cfg.patch_size
        grid = (images.shape[-2] // p, images.shape[-1] // p)
        if grid == (self.cfg.grid_size, self.cfg.grid_size):
            return self.pos_embed
        if not interpolate_pos:
            s = self.cfg.image_size
            raise ValueError(
                f"image size {images.shape[-2]}x{images.shape[-1]} gives a {grid[0]}x{grid[1]} patch grid, but the "
                f"position embeddings cover {self.cfg.grid_size}x{self.cfg.grid_size} (image_size {s}): "
                f"resize the image to {s}x{s}, or pass interpolate_pos=True to resample the positions"
            )
        return resample_pos_embed(self.pos_embed, grid)

    def embed_tokens(self, images: torch.Tensor, interpolate_pos: bool = False) -> torch.Tensor:
        """Patches, CLS token and positions, before the blocks: (B, C, H, W) -> (B, N, D)."""
        x = self.patch_embed(images)  # (B, P, D)
        pos = self.positions_for(images, interpolate_pos)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        return self.pos_drop(torch.cat([cls, x], dim=1) + pos)  # (B, N, D)

    def forward_features(self, images: torch.Tensor, return_attention: bool = False, interpolate_pos: bool = False):
        """All tokens after the final norm: (B, C, H, W) -> (B, N, D); with `return_attention`, also a list of
        `depth` weight tensors (B, h, N, N)."""
        sliced = self._in_slices(VisionTransformer.forward_features, images, return_attention, interpolate_pos)
        if sliced is not None:
            return sliced
        x = self.embed_tokens(images, interpolate_pos)
        attentions = []
        for block in self.blocks:
            x, weights = block(x, return_attention)
            attentions.append(weights)
        x = self.norm(x)
        return (x, attentions) if return_attention else x

    def forward(self, images: torch.Tensor, return_attention: bool = False, interpolate_pos: bool = False):
        """The CLS token: (B, C, H, W) -> (B, D) (and the attention list when asked for).

        Only the CLS token leaves the model, so the last block updates only the CLS token: its queries, output
        projection and MLP run on 1 token instead of N, while its keys and values still come from all N. The
        result equals `forward_features(images)[:, 0]` (to float rounding; a test checks it); at the chapter's
        config it skips a fifth of the matrix products."""
        if return_attention:  # the attention maps of every token are wanted: the full path
            tokens, attentions = self.forward_features(images, True, interpolate_pos)
            return tokens[:, 0], attentions
        sliced = self._in_slices(VisionTransformer.forward, images, False, interpolate_pos)
        if sliced is not None:
            return sliced
        x = self.embed_tokens(images, interpolate_pos)
        for block in self.blocks[:-1]:
            x, _ = block(x)
        x, _ = self.blocks[-1](x, queries=1)  # (B, 1, D): the CLS token only
        return self.norm(x)[:, 0]  # (B, D)

    def _in_slices(self, method, images: torch.Tensor, *args):
        """Without autograd on the CPU, run `method` (this class's own, not a subclass's) on slices of a large
        batch, about `slice_tokens` tokens each, and join the results; None when the batch is run whole."""
        if self.slice_tokens is None or torch.is_grad_enabled() or images.device.type != "cpu":
            return None
        p = self.cfg.patch_size
        n = max(1, self.slice_tokens // ((images.shape[-2] // p) * (images.shape[-1] // p) + 1))
        if images.shape[0] <= n:
            return None
        parts = [method(self, images[i:i + n], *args) for i in range(0, images.shape[0], n)]
        if isinstance(parts[0], tuple):  # (tokens, [attention per block])
            return torch.cat([t for t, _ in parts]), [torch.cat(w) for w in zip(*(a for _, a in parts))]
        return torch.cat(parts)

    #: Inference on the CPU runs a batch in slices of about this many tokens (2,048: 10 images at 224x224, 31 at
    #: 64x64); None runs it whole. The results are the same. Slices keep every activation under about 4 MB: whole
    #: batches of 64 at 224x224 make 26 MB MLP activations, which glibc's malloc maps fresh from the kernel on each
    #: use (page faults), and which spill the caches. Measured on this 2-core CPU (benchmarks/inference_slices.py),
    #: forward_features ran 1.3-1.5x faster at batches of 128 (224x224) and 256 (64x64). Training is not sliced:
    #: autograd keeps every activation anyway.
    slice_tokens: int | None = 2048


class VisionEncoder(VisionTransformer):
    """The chapter's vision encoder: the CLS token through a bias-free Linear D -> E. (B, C, H, W) -> (B, E)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__(cfg)
        self.projector = Linear(cfg.dim, cfg.out_dim, bias=False)
        trunc_normal(self.projector.weight)

    def forward(self, images: torch.Tensor, return_attention: bool = False, interpolate_pos: bool = False):
        """(B, C, H, W) -> (B, E); with `return_attention`, (embedding, [(B, h, N, N)] * depth)."""
        out = super().forward(images, return_attention, interpolate_pos)
        if return_attention:
            return self.projector(out[0]), out[1]
        return self.projector(out)  # (B, E)

    def encode_image(self, images: torch.Tensor, interpolate_pos: bool = False) -> torch.Tensor:
        """L2-normalised image embeddings, as the contrastive loss compares them. (B, C, H, W) -> (B, E)."""
        return F.normalize(self(images, interpolate_pos=interpolate_pos), dim=-1)


def param_report(model: nn.Module) -> list[tuple[str, int]]:
    """Parameters per component of a VisionTransformer/VisionEncoder, ending with the total."""
    rows = [
        ("patch embedding", _count(model.patch_embed)),
        ("CLS token", model.cls_token.numel()),
        ("position embeddings", model.pos_embed.numel()),
    ]
    rows += [(f"block {i + 1}", _count(block)) for i, block in enumerate(model.blocks)]
    rows.append(("final norm", _count(model.norm)))
    if hasattr(model, "projector"):
        rows.append(("projector", _count(model.projector)))
    total = _count(model)
    if sum(n for _, n in rows) != total:
        raise ValueError("param_report: the model has parameters outside the known components")
    rows.append(("total", total))
    return rows


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def forward_flops(cfg: ViTConfig) -> dict[str, int]:
    """Floating-point operations (multiply and add counted apart) of one image's forward pass, by part.

    Matrix products only; norms, softmax and GELU add under 1 %. At the chapter's config the total is ~0.43 GFLOP.
    """
    N, P, D, M = cfg.num_tokens, cfg.num_patches, cfg.dim, cfg.mlp_dim
    per_block = {
        "qkv": 2 * N * D * 3 * D,
        "attention scores": 2 * N * N * D,  # q @ k^T over all heads
        "attention x values": 2 * N * N * D,
        "out projection": 2 * N * D * D,
        "mlp": 2 * 2 * N * D * M,
    }
    flops = {"patch embedding": 2 * P * cfg.patch_dim * D}
    flops.update({name: cfg.depth * n for name, n in per_block.items()})
    flops["projector"] = 2 * D * cfg.out_dim
    flops["total"] = sum(flops.values())
    return flops
