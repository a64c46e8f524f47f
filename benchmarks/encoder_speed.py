"""Encoder throughput: tinyvit's VisionEncoder against a peer built from torch.nn.TransformerEncoderLayer.

The peer is how the source system builds its encoder (pre-norm, GELU, dropout 0.1 everywhere, including on the
attention probabilities); in eval mode PyTorch runs it through its fused "fast path" kernels. The two models are
timed round by round, interleaved, because this machine's speed drifts 2-3x over tens of seconds: only the
per-round ratio is meaningful. Also prints tinyvit's achieved GFLOP/s as a fraction of the measured fp32 matmul rate
(the faster of MKL, torch's default, and oneDNN, which tinyvit's Linear layers use on the CPU; MKL's too),
timed on `forward_features` (every token through every block: the 0.43 GFLOP per image that `forward_flops` counts),
because the encoder's own forward skips the last block's work on the 196 patch tokens that CLS pooling discards.

    python benchmarks/encoder_speed.py [--rounds 7] [--batch 64] [--threads 2]
    python benchmarks/encoder_speed.py --breakdown   # where the inference time goes, and what would reach 80 %

`--breakdown` profiles `forward_features` (torch.profiler, self time per op), sorts the time into matrix products,
the attention kernel, the patch convolution and the ops that do no products (GELU, LayerNorm, residual adds,
copies), sets each beside its FLOPs from `forward_flops`, and prints the share of the matmul rate the encoder would
reach if the attention kernel ran as fast as the products, if the convolution did too, and if on top of that
every op without products were free.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from tinyvit import ViTConfig, VisionEncoder, forward_flops
from tinyvit.model import Linear, linear


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

    def forward(self, images):
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, P, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        x = self.pos_drop(torch.cat([cls, x], dim=1) + self.pos_embed)  # (B, N, D)
        return self.projector(self.norm(self.blocks(x))[:, 0])  # (B, E)


def time_call(fn, repeats: int) -> float:
    """Seconds per call, best of `repeats` (after the caller's warm-up)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_gflops(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """This machine's fp32 matrix-product rate, n x n x n, by each GEMM library torch can call: MKL (`a @ b`,
    PyTorch's default) and, where present, oneDNN (what tinyvit's Linear layers use on the CPU)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    products = {"MKL": lambda: a @ b}
    if Linear.onednn:
        products["oneDNN"] = lambda: linear(a, b)  # a @ b^T: the same FLOPs
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


def breakdown(cfg: ViTConfig, images: torch.Tensor, calls: int = 3) -> None:
    """Print where forward_features' time goes and the matmul-rate share it would reach with faster parts."""
    from torch.profiler import ProfilerActivity, profile

    model = VisionEncoder(cfg).eval()
    with torch.inference_mode():
        model.forward_features(images)  # warm-up
        before = max(matmul_gflops().values()) * 1e9  # the matmul rate just before and just after the profile,
        with profile(activities=[ProfilerActivity.CPU]) as prof:  # since this machine's speed drifts
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
        share = f"{flops[name] / t / peak:.0%}" if flops[name] else "-"
        print(f"{name:<18} {t / total:6.1%} {flops[name] / everything:6.1%}   {share}")
    for label, seconds_needed in (
            ("share of the matmul rate now (profiler's clock)", total),
            ("with the attention kernel as fast per FLOP as the Linear products", attention_fast),
            ("and the patch convolution too", conv_fast),
            ("and every op without products (GELU, LayerNorm, adds, copies) free", free)):
        print(f"{label:<70} {everything / seconds_needed / peak:.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per model per round (best is kept)")
    parser.add_argument("--breakdown", action="store_true", help="profile where inference time goes instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ViTConfig()
    images = torch.randn(args.batch, 3, cfg.image_size, cfg.image_size)
    if args.breakdown:
        breakdown(cfg, images)
        return
    models = {"tinyvit": VisionEncoder(cfg), "peer": PeerEncoder(cfg)}
    optims = {name: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True) for name, m in models.items()}

    def infer(m):
        m.eval()
        with torch.inference_mode():
            m(images)

    def all_tokens():
        models["tinyvit"].eval()
        with torch.inference_mode():
            models["tinyvit"].forward_features(images)

    def train_step(name):
        m = models[name].train()
        loss = m(images).square().mean()
        optims[name].zero_grad(set_to_none=True)
        loss.backward()
        optims[name].step()

    for name, m in models.items():  # warm-up
        infer(m)
        train_step(name)

    flops = forward_flops(cfg)["total"] - forward_flops(cfg)["projector"]  # forward_features' share
    rows = {"infer": [], "train": [], "tinyvit_gflops": [], "matmul_gflops": [], "mkl_gflops": []}
    print(f"batch {args.batch}, {cfg.image_size}x{cfg.image_size}, {args.threads} threads, {args.rounds} rounds")
    for r in range(args.rounds):
        t_inf = {name: time_call(lambda m=m: infer(m), args.repeats) for name, m in models.items()}
        t_train = {name: time_call(lambda n=name: train_step(n), 1) for name in models}
        t_all = time_call(all_tokens, args.repeats)
        rates = matmul_gflops()
        peak = max(rates.values())  # the fastest fp32 product this machine offers
        rows["infer"].append(t_inf["peer"] / t_inf["tinyvit"])
        rows["train"].append(t_train["peer"] / t_train["tinyvit"])
        achieved = flops * args.batch / t_all / 1e9
        rows["tinyvit_gflops"].append(achieved)
        rows["matmul_gflops"].append(peak)
        rows["mkl_gflops"].append(rates["MKL"])
        print(
            f"round {r + 1}: inference {args.batch / t_inf['tinyvit']:6.1f} vs {args.batch / t_inf['peer']:6.1f} img/s"
            f" | training {args.batch / t_train['tinyvit']:5.1f} vs {args.batch / t_train['peer']:5.1f} img/s"
            f" | tinyvit {achieved:5.1f} GFLOP/s; matmul " + ", ".join(f"{k} {v:5.1f}" for k, v in rates.items())
        )
    med = {k: statistics.median(v) for k, v in rows.items()}
    fraction = statistics.median(a / p for a, p in zip(rows["tinyvit_gflops"], rows["matmul_gflops"]))
    print()
    print(f"median inference speed ratio tinyvit / peer: {med['infer']:.2f}x  (target >= 1.0)")
    print(f"median training  speed ratio tinyvit / peer: {med['train']:.2f}x  (target >= 1.5)")
    mkl_fraction = statistics.median(a / p for a, p in zip(rows["tinyvit_gflops"], rows["mkl_gflops"]))
    print(f"tinyvit inference: {med['tinyvit_gflops']:.1f} GFLOP/s = {fraction:.0%} of the fastest fp32 matmul rate "
          f"({med['matmul_gflops']:.1f} GFLOP/s)  (target >= 80%); {mkl_fraction:.0%} of MKL's "
          f"({med['mkl_gflops']:.1f} GFLOP/s, torch's default)")


if __name__ == "__main__":
    main()
