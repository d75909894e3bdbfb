"""Argument checks shared by the optimizers, the wrappers and the arena: each raises ``ValueError`` naming the
argument and the value it was given."""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch

#: Worker processes one command may start on one machine.
MAX_WORKERS = 256
#: Torch threads per process (torch takes any int32 and then fails, or crashes, creating them).
MAX_THREADS = 1024
#: The largest lr, weight decay or other multiplier an optimizer takes, whatever the parameters' dtype: the math runs
#: in float32 for float32/bf16/fp16 params, where a larger value failed deep in the step ("value cannot be converted
#: to type float without overflow") or made every weight infinite after one step.
FLOAT32_MAX = torch.finfo(torch.float32).max
#: The range of an eps that divides (Adan, AdaX, AdEMAMix, Amos): one below float32's smallest normal is flushed to 0
#: under flush-denormal (or rounds to 0 below ~7e-46), so a zero gradient entry gave 0/0, a NaN weight; one beyond
#: float32 froze every weight (m/inf).
EPS_RANGE = (torch.finfo(torch.float32).tiny, FLOAT32_MAX)


def check_number(name: str, value: Any, *, low: float = 0.0, high: float = math.inf,
                 low_open: bool = False, high_open: bool = False) -> None:
    """Unless ``value`` is a finite real number in the range (closed by default)."""
    # the common case first, in a fraction of the general path's time: the optimizers check their groups before
    # every step (a scheduler's float lr), which on a small model is a visible share of the step
    if type(value) is float and value - value == 0.0 and (value > low if low_open else value >= low) \
            and (value < high if high_open else value <= high):  # finite: inf - inf and nan - nan are nan
        return
    if type(value).__name__ == "Tensor" or hasattr(value, "__torch_function__"):
        raise ValueError(f"Invalid {name}: a Tensor ({value!r}); pass a Python float (LR schedulers set floats, and "
                         "the fused step already hands lr, betas and weight decay to its kernels as tensors, so "
                         "changing them never recompiles)")
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not _finite_float(value):
        raise ValueError(f"Invalid {name}: {value!r} (expected a finite real number: a float or an int)")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"Invalid {name}: {value!r} (must be in {left}{low}, {high}{right})")


def _finite_float(value: numbers.Real) -> bool:
    """Whether the math can take ``value`` as a float: a float or int (numpy's too) within float range; a
    ``Fraction`` or an int beyond 1.8e308 failed deep inside the step (torch's ops take neither)."""
    if not isinstance(value, (int, float)) and type(value).__module__ != "numpy":
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def check_betas(betas: Any, count: int, *, name: str = "betas") -> None:
    """Unless ``betas`` holds exactly ``count`` numbers, each in [0, 1)."""
    if type(betas) in (tuple, list) and len(betas) == count and all(type(b) is float and 0.0 <= b < 1.0 for b in betas):
        return  # the common case, checked before every step (see check_number)
    if not isinstance(betas, Sequence) or isinstance(betas, str) or len(betas) != count:
        raise ValueError(f"Invalid {name}: {betas!r} (expected a tuple of {count} numbers)")
    for i, beta in enumerate(betas):
        check_number(f"{name}[{i}]", beta, low=0.0, high=1.0, high_open=True)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """Unless ``value`` is one of ``choices``, of the same type (``foreach=1`` is a mistake worth reporting)."""
    if not any(type(value) is type(c) and value == c for c in choices):
        raise ValueError(f"Invalid {name}: {value!r} (expected one of {', '.join(map(repr, choices))})")


def check_positive_int(name: str, value: Any) -> None:
    """Unless ``value`` is an integer ≥ 1 (a NumPy integer too; bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"Invalid {name}: {value!r} (must be a positive integer)")


def positive_int_arg(most: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: a positive integer, at most ``most``; argparse names the flag in its error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1 or (most is not None and value > most):
            limit = f" up to {most}" if most is not None else ""
            raise argparse.ArgumentTypeError(f"expected a positive integer{limit}, got {text!r}")
        return value

    return parse


def check_group_now(optimizer: Any, group: dict[str, Any], check: Callable[[dict[str, Any]], None], where: str,
                    part: str = "") -> None:
    """``check`` (the constructor's checks of one param group) on ``group`` before a step moves anything: a scheduler
    or a user may have set its values since (a NaN lr made every weight NaN, silently). A one-element tensor lr (a
    ``LambdaLR`` whose lambda returns a tensor sets one) is checked as its number: the constructor refuses it, a
    schedule may set it. Nothing inside ``torch.compile(opt.step)``, which guards on the values it traced. ``part``
    names a part of the group in the message (MuonAdamW's halves)."""
    if torch.compiler.is_compiling():
        return

    lr = group.get("lr")
    try:
        check({**group, "lr": lr.item()} if isinstance(lr, torch.Tensor) and lr.numel() == 1 else group)
    except ValueError as err:
        index = next((i for i, g in enumerate(optimizer.param_groups) if g is group), None)
        label = "a param group" if index is None else f"param group {index}"
        raise ValueError(f"{type(optimizer).__name__}.{where}: {label}{part} (set after construction): {err}") from None
