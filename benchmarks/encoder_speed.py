"""Encoder throughput: plain tinyvit against each `tinyvit.cpu_speed` component, all of them, the recommended set,
and a peer built from torch.nn.TransformerEncoderLayer, in one interleaved run.

The peer is how the source system builds its encoder (pre-norm, GELU, dropout everywhere, including on the
attention probabilities); in eval mode PyTorch runs it through its fused "fast path" kernels. Every variant is a
copy of the same weights. The variants are timed round by round, in an order that rotates each round, because a
CPU's speed drifts over tens of seconds: only per-round ratios are meaningful. Three measurements per variant:
`inference` (the encoder's embedding, `model(images)`, as `embed` and `eval` run it), `all tokens`
(`forward_features`: every token through every block; the peer's blocks and final norm) and `training` (forward,
backward and an AdamW step). It prints, per measurement, each variant's median per-round speed relative to plain
tinyvit (and the range over rounds) and tinyvit's speed relative to the peer, plain and with the recommended set.

    python benchmarks/encoder_speed.py [--rounds 6] [--batch 64] [--threads 2]
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python benchmarks/encoder_speed.py
        # on an AVX-512 CPU: approximates an AVX2-only one (torch's kernels, oneDNN and MKL all kept to AVX2)
    python benchmarks/encoder_speed.py --batch 256 --image-size 64 --patch-size 8   # the shapes recipe's encoder
    python benchmarks/encoder_speed.py --quick      # seconds, tiny sizes: checks that it runs (ratios mean nothing)
    python benchmarks/encoder_speed.py --breakdown  # where the inference time goes, and what would reach 80 %

`--breakdown` profiles `forward_features` (torch.profiler, self time per op), sorts the time into matrix products,
the attention kernel, the patch convolution and the ops that do no products (GELU, LayerNorm, residual adds,
copies), sets each beside its FLOPs from `forward_flops`, and prints the share of the fastest fp32 matmul rate the
encoder would reach if the attention kernel ran as fast as the products, if the convolution did too, and if on top
of that every op without products were free.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import platform
import statistics
import time

import torch
from torch import nn

from tinyvit import ViTConfig, VisionEncoder, cpu_speed, forward_flops

ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


class PeerEncoder(nn.Module):
    """The same ViT-Tiny, its blocks from nn.TransformerEncoderLayer(norm_first=True, activation="gelu")."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.patch_embed = nn.Conv2d(cfg.in_channels, cfg.dim, cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.randn(1, 1, cfg.dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.num_tokens, cfg.dim) * 0.02)
        self.pos_drop = nn.Dropout(cfg.dropout)  # as tinyvit's: dropout right after adding positions
        layer = nn.TransformerEncoderLayer(
            cfg.dim, cfg.heads, cfg.mlp_dim, dropout=cfg.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        self.projector = nn.Linear(cfg.dim, cfg.out_dim, bias=False)

    def forward_features(self, images):
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, P, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        x = self.pos_drop(torch.cat([cls, x], dim=1) + self.pos_embed)  # (B, N, D)
        return self.norm(self.blocks(x))  # (B, N, D)

    def forward(self, images):
        return self.projector(self.forward_features(images)[:, 0])  # (B, E)


def time_call(fn, repeats: int) -> float:
    """Seconds per call, best of `repeats` (after the caller's warm-up)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def variants(cfg: ViTConfig) -> dict[str, nn.Module]:
    """Plain tinyvit, one copy per component, all components, the recommended set, and the peer."""
    plain = VisionEncoder(cfg)
    models = {"plain": plain}
    components = [c for c in cpu_speed.COMPONENTS if c != "onednn" or cpu_speed.available()]
    for c in components:
        models[c] = cpu_speed.enable(copy.deepcopy(plain), [c])
    models["all"] = cpu_speed.enable(copy.deepcopy(plain), components)
    recommended = cpu_speed.recommended()
    if recommended and set(recommended) != set(components) and len(recommended) > 1:
        models["recommended"] = cpu_speed.enable(copy.deepcopy(plain), recommended)
    models["peer"] = PeerEncoder(cfg)
    return models


def recommended_name() -> str:
    """The variant that runs the recommended set."""
    chosen = set(cpu_speed.recommended())
    if not chosen:
        return "plain"
    components = {c for c in cpu_speed.COMPONENTS if c != "onednn" or cpu_speed.available()}
    return "all" if chosen == components else next(iter(chosen)) if len(chosen) == 1 else "recommended"


def measure(models: dict[str, nn.Module], images: torch.Tensor, rounds: int, repeats: int) -> dict:
    """{measurement: {variant: [seconds per round]}}, the variants interleaved in a rotating order."""
    optims = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in models.items()}

    def infer(m):
        m.eval()
        with torch.inference_mode():
            m(images)

    def all_tokens(m):
        m.eval()
        with torch.inference_mode():
            m.forward_features(images)

    def train_step(name):
        m = models[name].train()
        loss = m(images).square().mean()
        optims[name].zero_grad(set_to_none=True)
        loss.backward()
        optims[name].step()

    for name, m in models.items():  # warm-up
        infer(m), all_tokens(m), train_step(name)
    times = {kind: {name: [] for name in models} for kind in ("inference", "all tokens", "training")}
    names = list(models)
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            m = models[name]
            times["inference"][name].append(time_call(lambda: infer(m), repeats))
            times["all tokens"][name].append(time_call(lambda: all_tokens(m), repeats))
            times["training"][name].append(time_call(lambda: train_step(name), 1))
        print(f"round {r + 1}: " + ", ".join(f"{n} {images.shape[0] / times['training'][n][-1]:.0f}"
                                             for n in names) + " training img/s", flush=True)
    return times


def report(times: dict, batch: int) -> None:
    def ratios(fast: str, slow: str, kind: str) -> list[float]:
        return [s / f for f, s in zip(times[kind][fast], times[kind][slow])]

    best = recommended_name()
    for kind, rows in times.items():
        print(f"\n{kind}: images/s (median) and speed relative to plain tinyvit (median per-round ratio, range)")
        for name in rows:
            r = ratios(name, "plain", kind)
            print(f"  {name:20s} {batch / statistics.median(rows[name]):8.1f}  x{statistics.median(r):.2f} "
                  f"({min(r):.2f}-{max(r):.2f})")
        for name in dict.fromkeys(("plain", best)):
            r = ratios(name, "peer", kind)
            print(f"  tinyvit {name} / peer: x{statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f})")


def matmul_gflops(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """The fp32 matrix-product rate, n x n x n, by each GEMM library torch can call: MKL (`a @ b`, PyTorch's
    default) and, where present, oneDNN (`cpu_speed`'s "onednn" component)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    products = {"MKL": lambda: a @ b}
    if cpu_speed.available():
        products["oneDNN"] = lambda: cpu_speed.linear(a, b)  # a @ b^T: the same FLOPs
    rates = {}
    for name, product in products.items():
        product()
        rates[name] = 2 * n**3 / time_call(product, repeats) / 1e9
    return rates


CATEGORIES = {  # profiler op name -> part of the encoder; first match wins, the rest is "no products"
    "attention": ("scaled_dot_product", "attention", "bmm", "softmax", "baddbmm"),
    "patch convolution": ("conv",),
    "products": ("linear_pointwise", "addmm", "aten::mm", "matmul"),
}


def category(op_name: str) -> str:
    for name, needles in CATEGORIES.items():
        if any(needle in op_name for needle in needles):
            return name
    return "no products"


def breakdown(model: nn.Module, cfg: ViTConfig, images: torch.Tensor, calls: int = 3) -> None:
    """Print where forward_features' time goes and the matmul-rate share it would reach with faster parts."""
    from torch.profiler import ProfilerActivity, profile

    model.eval()
    with torch.inference_mode():
        model.forward_features(images)  # warm-up
        before = max(matmul_gflops().values()) * 1e9  # the matmul rate just before and just after the profile,
        with profile(activities=[ProfilerActivity.CPU]) as prof:  # since a CPU's speed drifts
            for _ in range(calls):
                model.forward_features(images)
        after = max(matmul_gflops().values()) * 1e9
    peak = (before + after) / 2
    seconds = dict.fromkeys(["products", "attention", "patch convolution", "no products"], 0.0)
    for event in prof.key_averages():
        seconds[category(event.key)] += event.self_cpu_time_total / 1e6 / calls
    f = forward_flops(cfg)
    B = images.shape[0]
    flops = {"products": B * (f["qkv"] + f["out projection"] + f["mlp"]),
             "attention": B * (f["attention scores"] + f["attention x values"]),
             "patch convolution": B * f["patch embedding"], "no products": 0}
    total = sum(seconds.values())
    everything = sum(flops.values())
    rate = flops["products"] / seconds["products"]  # what the Linear layers achieve at this shape
    attention_fast = total - seconds["attention"] + flops["attention"] / rate
    conv_fast = attention_fast - seconds["patch convolution"] + flops["patch convolution"] / rate
    free = conv_fast - seconds["no products"]
    print(f"forward_features, batch {B}: {total * 1e3:.0f} ms a call by the profiler's clock (its self time); fastest "
          f"fp32 matmul {before / 1e9:.0f} GFLOP/s before the profile, {after / 1e9:.0f} after (shares use the mean)")
    print(f"{'part':<18} {'time':>6} {'FLOPs':>6}   rate, share of the matmul rate")
    for name, t in seconds.items():
        share = f"{flops[name] / t / peak:.0%}" if flops[name] and t else "-"
        print(f"{name:<18} {t / total:6.1%} {flops[name] / everything:6.1%}   {share}")
    for label, seconds_needed in (
            ("share of the matmul rate now (profiler's clock)", total),
            ("with the attention kernel as fast per FLOP as the Linear products", attention_fast),
            ("and the patch convolution too", conv_fast),
            ("and every op without products (GELU, LayerNorm, adds, copies) free", free)):
        print(f"{label:<70} {everything / seconds_needed / peak:.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=ViTConfig.image_size)
    parser.add_argument("--patch-size", type=int, default=ViTConfig.patch_size)
    parser.add_argument("--repeats", type=int, default=2, help="timed inference calls per variant per round (best)")
    parser.add_argument("--quick", action="store_true", help="1 round, batch 2, 32x32: checks that it runs")
    parser.add_argument("--breakdown", action="store_true", help="profile where inference time goes instead")
    parser.add_argument("--components", default="recommended",
                        help="--breakdown only: comma-separated cpu_speed components, 'recommended' or 'none'")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.batch, args.image_size, args.patch_size, args.repeats = 1, 2, 32, 8, 1
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = dataclasses.replace(ViTConfig(), image_size=args.image_size, patch_size=args.patch_size)  # chapter's else
    images = torch.randn(args.batch, 3, cfg.image_size, cfg.image_size)
    isa = ", ".join(f"{v}={os.environ[v]}" for v in ISA_VARIABLES if v in os.environ) or "no ISA limits"
    print(f"{cpu_name()}; torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()} "
          f"({isa}); recommended components: {', '.join(cpu_speed.recommended()) or 'none'}")
    if args.breakdown:
        chosen = {"recommended": None, "none": ()}.get(args.components, args.components.split(","))
        breakdown(cpu_speed.enable(VisionEncoder(cfg), chosen), cfg, images)
        return
    models = variants(cfg)
    print(f"batch {args.batch}, {cfg.image_size}x{cfg.image_size}, patch {cfg.patch_size}, dropout {cfg.dropout}, "
          f"{args.threads} threads, {args.rounds} rounds, variants: {', '.join(models)}")
    report(measure(models, images, args.rounds, args.repeats), args.batch)


if __name__ == "__main__":
    main()
