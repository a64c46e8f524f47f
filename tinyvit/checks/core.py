"""What every grader shares: calling the learner's function safely, spotting the package's own function in it,
requiring a loss that backpropagates, and a verdict that prints nothing extra in a notebook.

A grader calls the learner's function on small inputs, compares with a reference, prints one short hint that
names the mistake, and returns a `Verdict` (true when correct). It never prints the answer. A function that returns
None or raises NotImplementedError counts as "not attempted yet".
"""
from __future__ import annotations

import functools
import sys
from collections import Counter
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

NOT_ATTEMPTED = "not attempted yet: fill in the function, then run this cell again"
_failures: Counter = Counter()  # failed attempts per grader in this kernel: later hints get more specific
_running: list[str] = []


class Verdict:
    """A grader's result: true when the submission is correct. A notebook shows nothing for it (the grader has
    already printed its one line), so a grader call can end a cell without a stray "False"."""

    def __init__(self, ok: bool):
        self.ok = bool(ok)

    def __bool__(self) -> bool:
        return self.ok

    def __eq__(self, other: object) -> bool:
        return bool(self) == bool(other)

    def __hash__(self) -> int:
        return hash(self.ok)

    def __repr__(self) -> str:
        return f"Verdict({self.ok})"

    def _ipython_display_(self) -> None:  # IPython calls this instead of printing the repr
        pass


def passed(message: str) -> Verdict:
    print(message)
    return Verdict(True)


def fail(message: str, hint: str | None = None) -> Verdict:
    """Print what is wrong; from the second failed attempt at the same grader on, also the more specific `hint`."""
    print(message)
    if hint and _running and _failures[_running[-1]] >= 1:
        print(f"hint: {hint}")
    return Verdict(False)


def grader(check: Callable[..., Verdict]) -> Callable[..., Verdict]:
    """Mark a grader: counts its failed attempts, so `fail` can make its hints more specific each time."""
    @functools.wraps(check)
    def wrapped(*args, **kwargs) -> Verdict:
        _running.append(check.__name__)
        try:
            verdict = check(*args, **kwargs)
        finally:
            _running.pop()
        _failures[check.__name__] = 0 if verdict else _failures[check.__name__] + 1
        return verdict
    return wrapped


@contextmanager
def watching(forbidden: dict[str, Callable]) -> Iterator[list[str]]:
    """Record which of `forbidden` ({name: function}) run while the block runs, however the learner reached them
    (imported under another name, through a module, or a method). Yields the list of names seen."""
    codes = {_code(fn): name for name, fn in forbidden.items()}
    seen: list[str] = []

    def profiler(frame, event, arg):
        if event == "call" and frame.f_code in codes and codes[frame.f_code] not in seen:
            seen.append(codes[frame.f_code])

    previous = sys.getprofile()
    sys.setprofile(profiler)
    try:
        yield seen
    finally:
        sys.setprofile(previous)


def _code(fn: Callable):
    fn = getattr(fn, "__func__", fn)
    fn = getattr(fn, "forward", fn) if isinstance(fn, type) else fn
    return fn.__code__


def call(fn: Callable, *args, forbidden: dict[str, Callable] | None = None) -> Any:
    """The learner's result, or a message string saying why there is none (not attempted, an exception, the
    package's own function called, or something that is not a tensor)."""
    try:
        with watching(forbidden or {}) as seen:
            got = fn(*args)
    except NotImplementedError:
        return NOT_ATTEMPTED
    except Exception as err:  # the learner's code may fail in any way; report it, do not crash the grader
        return f"your function raised {type(err).__name__}: {err}"
    if seen:
        return (f"your function calls the package's own {seen[0]}: this exercise asks you to write it yourself "
                f"(the package's version is what the grader compares against)")
    if got is None:
        return NOT_ATTEMPTED
    if not isinstance(got, torch.Tensor):
        return f"expected a torch.Tensor, got {type(got).__name__}"
    return got


def scalar(got: Any, over: str) -> Any:
    """A loss grader's view of `call`'s result: the 0-d tensor, or the message saying why there is none."""
    if not isinstance(got, torch.Tensor):
        return got
    if got.numel() != 1:
        return f"expected one number (a 0-d tensor), got a tensor of shape {tuple(got.shape)}: average over {over}"
    return got.reshape(())


def backpropagates(got: torch.Tensor, inputs: tuple[torch.Tensor, ...], expected: torch.Tensor) -> str | None:
    """None when the learner's loss `got` carries gradients to `inputs` equal to those of `expected`; otherwise
    the reason, for a loss computed outside autograd (NumPy, .item(), .detach(), torch.tensor of a number)."""
    if got.grad_fn is None:
        return ("the loss is cut off from autograd (NumPy, .item(), .detach() or torch.tensor(...) of a value): "
                "training could not backpropagate through it; compute it with torch operations on the inputs")
    mine = torch.autograd.grad(got, inputs, allow_unused=True, retain_graph=True)
    reference = torch.autograd.grad(expected, inputs, allow_unused=True)
    for a, b in zip(mine, reference):
        if (a is None) != (b is None) or (a is not None and not close(a, b)):
            return "the value is right but its gradient is not: part of the loss is detached from autograd"
    return None


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=rtol, atol=atol)
