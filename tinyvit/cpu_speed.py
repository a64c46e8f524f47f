"""Opt-in CPU speed-ups, applied to one model instance: `enable(model)` and `disable(model)`.

A learner can skip this module: each component computes what the plain model computes (to float rounding; the
tests check forward and backward) and changes only the modules of the model it is given. A layer's class is swapped
for a subclass with another `forward` (the same object: same parameters, same state_dict, still an `nn.Linear`),
and sliced inference is bound to each VisionTransformer instance. No class attribute changes.

Components:
- "onednn": float32 Linear products on the CPU by oneDNN's GEMM (`torch.ops.mkldnn._linear_pointwise`, a private
  op PyTorch keeps for its compiler: it may change in any release, so `available()` checks it is there).
- "dropout_masks": dropout masks cut from 64-bit random words, four 16-bit lanes each: torch's CPU generator is
  serial and `torch.rand` spends one draw per entry.
- "explicit_attention": training attention (gradients on, on the CPU) takes the explicit softmax path, whose
  backward beats the fused kernel's on small heads.
- "slices": inference (no autograd, on the CPU) runs a large batch in slices of about `SLICE_TOKENS` tokens, so each
  activation stays small enough for the caches and for the allocator to reuse its memory.
`recommended()` names those measured faster than plain PyTorch on the CPU kind at hand (benchmarks/encoder_speed.py
measures them; the figures are in benchmarks/README.md).
"""
from __future__ import annotations

import math
import platform
import types

import torch
import torch.nn.functional as F
from torch import nn

from .model import Attention, VisionTransformer

COMPONENTS = ("onednn", "dropout_masks", "explicit_attention", "slices")
SLICE_TOKENS = 2048  # tokens per inference slice: 10 images at 224x224, 31 at 64x64
# The components measured faster than plain PyTorch, by `torch.backends.cpu.get_cpu_capability()`, in both
# inference and a training step (benchmarks/encoder_speed.py; benchmarks/README.md has the runs). Unlisted: none.
RECOMMENDED = {"AVX512": ("onednn", "dropout_masks", "explicit_attention", "slices"), "AVX2": ("dropout_masks",)}


def available() -> bool:
    """oneDNN's linear op is in this PyTorch, on an x86-64 CPU (where it was measured)."""
    return (platform.machine().lower() in ("x86_64", "amd64") and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def recommended() -> tuple[str, ...]:
    """The components to enable by default on the CPU at hand: only those measured faster there."""
    chosen = RECOMMENDED.get(torch.backends.cpu.get_cpu_capability(), ())
    return tuple(c for c in chosen if c != "onednn" or available())


# ---- oneDNN's linear product ------------------------------------------------------------------------------------
def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T + bias by oneDNN's GEMM, the bias added inside the product. (..., in) -> (..., out)."""
    out = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), weight, bias, "none", [], "")
    return out.view(*x.shape[:-1], weight.shape[0])


class _OneDNNLinearFunction(torch.autograd.Function):
    """`onednn_linear` with its backward in oneDNN too: dx = g W, dW = g^T x, db = sum of g."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return onednn_linear(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])  # (M, out)
        dx = onednn_linear(grad, weight.t(), None) if ctx.needs_input_grad[0] else None  # (..., in)
        dw = db = None
        if ctx.needs_input_grad[1]:  # oneDNN copies its first operand's transpose into rows: the narrower goes there
            xs = x.reshape(-1, x.shape[-1])  # (M, in)
            if xs.shape[1] <= g.shape[1]:
                dw = onednn_linear(xs.t(), g.t(), None).t().contiguous()  # (in, out) -> (out, in)
            else:
                dw = onednn_linear(g.t(), xs.t(), None)  # (out, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = g.sum(0)
        return dx, dw, db


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear`, float32 CPU products (autocast off) through oneDNN. (..., in) -> (..., out)."""
    if (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and x.numel()
            and not torch.is_autocast_enabled("cpu")):
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
            return _OneDNNLinearFunction.apply(x, weight, bias)
        return onednn_linear(x, weight, bias)
    return F.linear(x, weight, bias)


class OneDNNLinear(nn.Linear):
    """nn.Linear whose float32 CPU products run through oneDNN (`linear`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def _register_flop_formula() -> None:
    """Let torch.utils.flop_counter count the oneDNN op as it counts the addmm of F.linear: 2 M K N (once)."""
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    op = torch.ops.mkldnn._linear_pointwise
    if op not in flop_registry:
        register_flop_formula(op)(lambda x_shape, w_shape, *args, out_shape=None, **kwargs:
                                  2 * x_shape[0] * x_shape[1] * w_shape[0])


# ---- cheap dropout masks ------------------------------------------------------------------------------------------
def keep_mask(shape: torch.Size, p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """A bool mask of `shape`, each entry False with probability round(p * 65536) / 65536, cut from random 64-bit
    integers, four 16-bit lanes each, so the generator runs once per four entries (all 64 bits are uniform:
    `random_(-2**63, None)` spans the int64 range)."""
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    lanes = words.view(torch.int16)[:n].view(shape)  # uniform on [-32768, 32767]
    return lanes >= round(p * 65536) - 32768


class MaskDropout(nn.Dropout):
    """nn.Dropout whose CPU masks come from `keep_mask` (p rounded to a multiple of 1/65536, the scale matching)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or self.inplace or x.device.type != "cpu":
            return super().forward(x)
        dropped = round(self.p * 65536) / 65536
        return x * (keep_mask(x.shape, self.p, x.device) * (1.0 / (1.0 - dropped)))


# ---- explicit attention in CPU training ---------------------------------------------------------------------------
class ExplicitTrainingAttention(Attention):
    """Attention that takes the explicit softmax path when gradients are wanted on the CPU (all queries); inference
    and the CLS-only queries stay on `scaled_dot_product_attention`."""

    def forward(self, x: torch.Tensor, return_attention: bool = False, attn_mask: torch.Tensor | None = None,
                queries: int | None = None):
        if queries is None and torch.is_grad_enabled() and x.device.type == "cpu":
            out, weights = super().forward(x, True, attn_mask)
            return out, weights if return_attention else None
        return super().forward(x, return_attention, attn_mask, queries)


# ---- inference in slices ------------------------------------------------------------------------------------------
def _in_slices(model: VisionTransformer, method, images: torch.Tensor, *args, **kwargs):
    """`method` (a VisionTransformer method, unbound) on slices of about `model.slice_tokens` tokens, joined."""
    p = model.cfg.patch_size
    n = max(1, model.slice_tokens // ((images.shape[-2] // p) * (images.shape[-1] // p) + 1))
    if torch.is_grad_enabled() or images.device.type != "cpu" or images.shape[0] <= n:
        return method(model, images, *args, **kwargs)
    parts = [method(model, images[i:i + n], *args, **kwargs) for i in range(0, images.shape[0], n)]
    if isinstance(parts[0], tuple):  # (output, [attention per block])
        return torch.cat([t for t, _ in parts]), [torch.cat(w) for w in zip(*(a for _, a in parts))]
    return torch.cat(parts)


def _sliced_forward(self, images, *args, **kwargs):
    return _in_slices(self, type(self).forward, images, *args, **kwargs)


def _sliced_forward_features(self, images, *args, **kwargs):
    return _in_slices(self, type(self).forward_features, images, *args, **kwargs)


# ---- enable / disable ---------------------------------------------------------------------------------------------
SWAPS = {"onednn": (nn.Linear, OneDNNLinear), "dropout_masks": (nn.Dropout, MaskDropout),
         "explicit_attention": (Attention, ExplicitTrainingAttention)}
SLICED = {"forward": _sliced_forward, "forward_features": _sliced_forward_features}


def enable(model: nn.Module, components: tuple[str, ...] | list[str] | None = None,
           slice_tokens: int = SLICE_TOKENS) -> nn.Module:
    """Turn `components` (default: `recommended()`) on in `model` and its submodules only; returns the model."""
    components = recommended() if components is None else tuple(components)
    unknown = [c for c in components if c not in COMPONENTS]
    if unknown:
        raise ValueError(f"unknown CPU speed components {unknown}; choose from {list(COMPONENTS)}")
    if "onednn" in components:
        if not available():
            raise ValueError("component 'onednn' needs an x86-64 CPU and a PyTorch with oneDNN's linear op")
        _register_flop_formula()
    for module in model.modules():
        for name, (plain, fast) in SWAPS.items():
            if name in components and type(module) is plain:  # exactly the plain class: subclasses keep theirs
                module.__class__ = fast
        if "slices" in components and isinstance(module, VisionTransformer):
            module.slice_tokens = slice_tokens
            for method, sliced in SLICED.items():
                setattr(module, method, types.MethodType(sliced, module))
    return model


def disable(model: nn.Module) -> nn.Module:
    """Return `model` and its submodules to plain PyTorch; returns the model."""
    for module in model.modules():
        for plain, fast in SWAPS.values():
            if type(module) is fast:
                module.__class__ = plain
        if "slice_tokens" in module.__dict__:
            for method in (*SLICED, "slice_tokens"):
                delattr(module, method)
    return model


def enabled(model: nn.Module) -> tuple[str, ...]:
    """The components on in `model` (in any of its submodules)."""
    types_in = {type(m) for m in model.modules()}
    on = {name for name, (_, fast) in SWAPS.items() if fast in types_in}
    if any("slice_tokens" in m.__dict__ for m in model.modules()):
        on.add("slices")
    return tuple(c for c in COMPONENTS if c in on)
