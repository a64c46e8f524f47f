"""A small training loop that knows nothing about ViTs: a model, a loss function and a batch source.

`fit` runs AdamW with a linear warm-up then a cosine decay, clips gradients, shows a progress bar, evaluates now
and then through a callback, and saves checkpoints that resume exactly. The batch source is a function of the
step number (`batches(step) -> batch`), so a resumed run sees the very batches the uninterrupted run would have.
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .config import TrainConfig, seed_everything
from .runs import TRAINING_KEYS, check_configs, load_checkpoint, save_checkpoint

THREADS_HELP = "CPU threads for torch (default: torch's choice; 1 is often faster on a machine busy with other work)"


def set_threads(threads: int | None) -> None:
    """A command's --threads: None keeps torch's choice, anything below 1 is refused."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" picks CUDA, then Apple's MPS, else the CPU; a named device that is missing is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be auto, cpu, cuda or mps, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but torch sees no CUDA GPU (use --device auto or cpu)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was asked for, but this torch build has no usable MPS backend")
    return torch.device(name)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for 0-based `step`: linear warm-up to cfg.lr over cfg.warmup_steps, then cosine to 0."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay only on the weights of Linear and Conv layers; never on biases, norms, embedding tables,
    CLS/position tokens or the temperature, which are offsets and scales rather than maps to shrink."""
    decay_ids = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))}
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if id(p) in decay_ids], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) not in decay_ids], "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """`fit`'s AdamW: betas (0.9, 0.98), eps 1e-6, weight decay as `param_groups` says, and torch's fused kernel
    where it has one (CPU, CUDA, MPS): one pass over all the parameters instead of a loop of small ops per tensor;
    the update is the same AdamW."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6,
                             fused=device.type in ("cpu", "cuda", "mps"))


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of a TrainConfig.precision on `device`, None for plain fp32. "auto": mixed precision on
    CUDA (bf16 where supported, else fp16) and fp32 elsewhere, the CPU being the reference path; "fp32": None;
    "bf16": bfloat16 on any device (the weights, the optimiser and the loss's softmax stay fp32)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor inside a (nested) tuple/list/dict batch to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel/DataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


def fit(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    batches: Callable[[int], Any],
    cfg: TrainConfig,
    *,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    checkpoint_path: str | Path | None = None,
    extra_state: dict[str, Any] | None = None,
    resume: str | Path | dict | None = None,
    until: int | None = None,
    progress: bool = True,
) -> dict[str, list]:
    """Train `model` for cfg.steps steps of `loss_fn(model, batches(step))`; return the history for plotting.

    evaluate(model) -> {name: value} runs every cfg.eval_every steps and at the end (eval mode, no grad).
    checkpoint_path gets a checkpoint every cfg.checkpoint_every steps (if > 0) and at the end; extra_state
    (e.g. {"configs": ..., "tokenizer": bytes}) rides along, and its "configs" must match a `resume` checkpoint's.
    `until` stops early at that step while keeping the cfg.steps schedule, so a resumed run continues it.
    History: lists "step", "loss", "lr", "time" (seconds), "temperature" (if the model has a logit_scale),
    and "eval" (a list of {"step": s, **results}).
    """
    device = resolve_device(cfg.device)
    core = unwrap(model)
    extra_state = dict(extra_state or {})
    until = cfg.steps if until is None else min(until, cfg.steps)
    model.to(device)
    optimizer = make_optimizer(core, cfg, device)
    amp_dtype = autocast_dtype(device, cfg.precision)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    history: dict[str, list] = {"step": [], "loss": [], "lr": [], "time": [], "eval": []}
    if hasattr(core, "logit_scale"):
        history["temperature"] = []
    start, elapsed = 0, 0.0
    if resume is not None:
        ckpt = resume if isinstance(resume, dict) else load_checkpoint(resume, needs=TRAINING_KEYS)
        if "configs" in extra_state:
            check_configs(extra_state["configs"], ckpt.get("configs", {}))
        core.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start, history = ckpt["step"], ckpt["history"]
        elapsed = history["time"][-1] if history["time"] else 0.0
        set_rng_state(ckpt["rng"], device)
    else:
        seed_everything(cfg.seed)

    def save(step: int) -> None:
        save_checkpoint(
            checkpoint_path, model=core.state_dict(), optimizer=optimizer.state_dict(), scaler=scaler.state_dict(),
            step=step, history=history, rng=get_rng_state(device), train_config=cfg.to_dict(), **extra_state,
        )

    def run_eval(step: int) -> None:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            history["eval"].append({"step": step, **evaluate(core)})
        model.train(was_training)

    model.train()
    t0 = time.perf_counter() - elapsed
    bar = tqdm(range(start, until), initial=start, total=until, disable=not progress, desc="train")
    for step in bar:
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = to_device(batches(step), device)
        autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
        with autocast:
            loss = loss_fn(model, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; try a lower learning rate")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(core.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        if hasattr(core, "clamp_logit_scale"):
            core.clamp_logit_scale(cfg.max_logit_scale)
        done = step + 1
        history["step"].append(done)
        history["loss"].append(loss.item())
        history["lr"].append(lr)
        history["time"].append(time.perf_counter() - t0)
        if "temperature" in history:
            history["temperature"].append(math.exp(-core.logit_scale.item()))
        bar.set_postfix(loss=f"{history['loss'][-1]:.3f}", lr=f"{lr:.1e}")
        if evaluate is not None and (done == cfg.steps or (cfg.eval_every > 0 and done % cfg.eval_every == 0)):
            run_eval(done)
        periodic = cfg.checkpoint_every > 0 and done % cfg.checkpoint_every == 0
        if checkpoint_path is not None and (done == until or periodic):
            save(done)
    bar.close()
    return history


def get_rng_state(device: torch.device) -> dict[str, Any]:
    """torch's CPU (and CUDA) generator states and Python's `random` state, so dropout repeats after a resume."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
