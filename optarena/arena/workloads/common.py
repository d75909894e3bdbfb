"""What the Lightning and Hugging Face workloads share: a run's measurements, collected by framework callbacks,
and how a user's module or function is resolved from a spec."""

from __future__ import annotations

import importlib
import math
import os
import statistics
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...registry import state_bytes
from ..catalog import _exception_line, _import_factory
from ..runner import MAX_CURVE_POINTS, RunResult, _PeakMemory, _subsample


class Diverged(Exception):
    """Raised from a framework callback to end a run whose loss, metric or weights became non-finite."""


def resolve(spec: str, module_name: str, attr: str) -> tuple[Any, str | None]:
    """``(module_name.attr, its module's file)`` (a module path or a ``.py`` file), with the spec in the error.
    The file is the one that was loaded (a class loaded from a path is not findable by its ``__module__``), for
    the fingerprint."""
    if module_name.endswith(".py") or os.sep in module_name:
        return _import_factory(f"{module_name}:{attr}"), str(Path(module_name).resolve())
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"Invalid task: {spec!r} (cannot import {module_name!r}: {err})") from None
    except Exception as err:  # the module's own code: a SyntaxError, or anything it raises at import
        raise ValueError(f"Invalid task: {spec!r} (importing {module_name!r} failed: {_exception_line(err)})") \
            from err
    if not hasattr(module, attr):
        raise ValueError(f"Invalid task: {spec!r} ({module_name!r} has no {attr!r})")
    return getattr(module, attr), getattr(module, "__file__", None)


def option(options: Mapping[str, Any], key: str, default: Any) -> Any:
    """The spec's option ``key``, or ``default`` where it is not given (an option given empty, ``steps=``, is not)."""
    return default if options.get(key) is None else options[key]


def target_option(spec: str, options: Mapping[str, Any]) -> float | None:
    """The spec's ``target`` as a finite number, or None where it is not given."""
    target = options.get("target")
    return None if target is None else finite_float(spec, "target", target)


def positive_int(spec: str, name: str, value: Any) -> int:
    """``value`` of the spec's option ``name`` as a positive integer, or a ValueError naming both."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Invalid task: {spec!r} ({name}={value!r} is not a positive integer)")
    return value


def finite_float(spec: str, name: str, value: Any, *, minimum: float | None = None) -> float:
    """``value`` of the spec's option ``name`` as a finite number (at least ``minimum``), or a ValueError. Text that
    reads as a number is one: YAML reads ``1e-4`` (no dot) as a string."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or (minimum is not None and value < minimum):
        bound = f" >= {minimum:g}" if minimum is not None else ""
        raise ValueError(f"Invalid task: {spec!r} ({name}={value!r} is not a finite number{bound})")
    return float(value)


def flag(spec: str, name: str, value: Any) -> bool:
    """``value`` of the spec's option ``name`` as a bool: true/false, not any truthy text (``max`` would read as
    true and turn the metric's direction around silently)."""
    if not isinstance(value, bool):
        raise ValueError(f"Invalid task: {spec!r} ({name}={value!r} is not true or false)")
    return value


@dataclass
class Recorder:
    """Collects one run's curve and timings from callbacks, and makes the RunResult."""

    device: torch.device
    higher_is_better: bool
    target: float | None = None
    optimizer_name: str = "adamw"
    """Warmed up before the memory baseline, as the runner does: its one-time costs are no run's."""
    memory: _PeakMemory = field(init=False)
    digest: str | None = None
    eval_steps: list[int] = field(default_factory=list)
    eval_metric: list[float] = field(default_factory=list)
    loss_steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    window: list[float] = field(default_factory=list)
    opt_times: list[float] = field(default_factory=list)
    fwd_times: list[float] = field(default_factory=list)
    train_seconds: float = 0.0
    steps_to_target: int | None = None
    seconds_to_target: float | None = None
    _start: float = 0.0
    _before_opt: float | None = None

    def __post_init__(self) -> None:
        self.memory = _PeakMemory(self.device, self.optimizer_name)

    def step_start(self) -> None:
        self._start, self._before_opt = time.perf_counter(), None

    def before_optimizer(self) -> None:
        self._before_opt = time.perf_counter()

    def step_end(self, loss: float | None) -> None:
        end = time.perf_counter()
        self.train_seconds += end - self._start
        if self._before_opt is not None:
            self.fwd_times.append(self._before_opt - self._start)
            self.opt_times.append(end - self._before_opt)
        if loss is not None:
            self.step_end_loss(loss)

    def step_end_loss(self, loss: float) -> None:
        """A training loss, per step or per logging window."""
        if not math.isfinite(loss):
            raise Diverged("non-finite loss")
        self.window.append(loss)

    def evaluated(self, step: int, metric: float, model: nn.Module | None = None) -> None:
        if not math.isfinite(metric) or (model is not None and
                                         not all(torch.isfinite(p).all() for p in model.parameters())):
            raise Diverged("non-finite metric or parameter")
        if self.eval_steps and self.eval_steps[-1] == step:  # the same point twice (a final evaluation)
            self.eval_metric[-1] = metric
            return
        self.eval_steps.append(step)
        self.eval_metric.append(metric)
        if self.window:
            self.loss_steps.append(step)
            self.train_loss.append(statistics.fmean(self.window))
            self.window = []
        meets = self.target is not None and (metric >= self.target if self.higher_is_better else
                                             metric <= self.target)
        if self.steps_to_target is None and meets:
            self.steps_to_target, self.seconds_to_target = step, self.train_seconds

    def result(self, steps: int, optimizer: torch.optim.Optimizer | None, model: nn.Module | None,
               because: str | None) -> RunResult:
        metrics = self.eval_metric
        skip = 2 if len(self.opt_times) > 4 else 0
        best = (max if self.higher_is_better else min)(metrics) if metrics else None
        return RunResult(
            final_metric=None if because or not metrics else metrics[-1], best_metric=best,
            diverged=because is not None, diverged_at=steps if because else None, steps=steps,
            steps_to_target=self.steps_to_target, seconds_to_target=self.seconds_to_target,
            train_seconds=self.train_seconds,
            opt_step_ms=1e3 * statistics.median(self.opt_times[skip:]) if self.opt_times else math.nan,
            fwd_bwd_ms=1e3 * statistics.median(self.fwd_times[skip:]) if self.fwd_times else math.nan,
            state_bytes=state_bytes(optimizer) if optimizer is not None else 0,
            params=sum(p.numel() for p in model.parameters()) if model is not None else 0,
            peak_memory_mb=self.memory.peak_mb(),
            loss_steps=_subsample(self.loss_steps, MAX_CURVE_POINTS),
            train_loss=_subsample(self.train_loss, MAX_CURVE_POINTS),
            eval_steps=_subsample(self.eval_steps, MAX_CURVE_POINTS),
            eval_metric=_subsample(metrics, MAX_CURVE_POINTS),
            diverged_because=because, init_digest=self.digest)


def run_dir(out: Path | None, framework: str, task: str, optimizer: str, lr: float, seed: int) -> Path:
    import tempfile

    base = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix=f"optarena-{framework}-"))
    return base / framework / task / f"{optimizer}-lr{lr:.4g}-seed{seed}"
