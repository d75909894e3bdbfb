"""One training run: a task, an optimizer at one learning rate, one seed, one batch size — and what it measured.

The run is the arena's unit of work. It never raises for a run that goes bad numerically: a non-finite loss,
gradient or parameter, or a loss that grows past ``DIVERGENCE_FACTOR`` times its starting scale, ends the run
early and marks it ``diverged`` (with the reason). A non-finite gradient counts even where the optimizer would hide
it (Lion's sign of a NaN is 0 in torch). Exceptions from the task's own code do propagate (the caller records them
as errors).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import hashlib
import itertools
import math
import random
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from ..registry import create_optimizer, set_optimizer_mode, state_bytes
from .optimizer_setup import arena_weight_decay, lr_multiplier, run_length_kwargs, ultralytics_only
from .task import Task, check_loss, checked_model, metric_value

DIVERGENCE_FACTOR = 10.0
"""A run whose smoothed training loss exceeds this multiple of its first loss has blown up."""

MAX_CURVE_POINTS = 100
MAX_TRAJECTORY_POINTS = 300


@dataclass
class RunResult:
    """Everything one run measured. Stored as JSON in the trial's user attributes, so plain types only."""

    final_metric: float | None
    """The validation metric after the last step (``None`` when the run diverged)."""
    best_metric: float | None
    diverged: bool
    diverged_at: int | None
    steps: int
    """Optimizer steps completed."""
    steps_to_target: int | None
    """The first evaluation step at which the metric met the task's target (resolution: ``eval_every``)."""
    seconds_to_target: float | None
    """Training seconds (forward, backward and step; evaluation excluded) up to that evaluation."""
    train_seconds: float
    opt_step_ms: float
    """Median wall time of ``optimizer.step()`` (with the LR scheduler's step), per step."""
    fwd_bwd_ms: float
    """Median wall time of forward, loss and backward, per step."""
    state_bytes: int
    params: int
    peak_memory_mb: float | None
    """Peak memory above the level before the model was built: resident set on CPU, allocated on CUDA."""
    loss_steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    """Mean training loss over each window ending at the matching entry of ``loss_steps``."""
    eval_steps: list[int] = field(default_factory=list)
    eval_metric: list[float] = field(default_factory=list)
    trajectory: list[list[float]] | None = None
    """For 2-D tasks: the point after each step (subsampled), starting with the initial point."""
    diverged_because: str | None = None
    """What ended a diverged run: a non-finite loss, gradient, metric or parameter, or the loss's growth."""
    init_digest: str | None = None
    """A hash of the initial weights: runs of one seed start from the same weights whatever the optimizer."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        known = {f.name for f in fields(cls)}  # results stored by another version may lack or add a field
        return cls(**{k: v for k, v in data.items() if k in known})


@functools.cache
def _libc_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def _malloc_trim() -> None:
    trim = _libc_malloc_trim()
    if trim is not None:
        trim(0)


#: (device type, optimizer name) pairs :func:`_warm_up` has run in this process.
_warmed_up: set[tuple[str, str]] = set()


def _warm_up_task() -> Task:
    """Two steps of a 2x2 linear layer: the runner's code path, on a model of its own."""
    return Task("warm-up", make_model=lambda: nn.Linear(2, 2),
                make_batches=lambda generator, batch_size: itertools.repeat(torch.ones(batch_size, 2)),
                loss=lambda model, x: model(x).square().mean(),
                evaluate=lambda model: model(torch.ones(1, 2, device=model.weight.device)).sum().item(),
                steps=2, batch_size=1, eval_every=1)


def _warm_up(device: torch.device, optimizer_name: str = "adamw") -> None:
    """Make, once per process and optimizer, the one-time allocations its first run would be charged for, by a
    throwaway run of :func:`_warm_up_task`: torch's first optimizer imports dynamo (~70 MB resident on CPU), the
    first seeding formats a stack (linecache reads the source files), the first backward starts autograd, the
    optimizer's first step imports its modules; on a GPU the first matmul allocates cuBLAS's workspace. The task's
    own code runs in its runs only; the global generators are left as they were."""
    if (device.type, optimizer_name) in _warmed_up:
        return
    _warmed_up.add((device.type, optimizer_name))
    try:
        with global_generators_restored([device] if device.type == "cuda" else []):
            train_once(_warm_up_task(), optimizer_name, 1e-3, 0, device=device)
            seed_everything(0)  # seeding formats its stack (linecache), which has more frames once dynamo is used
    except Exception:  # an optimizer that cannot train this model, a device that fails: the run itself says why
        pass


class _PeakMemory:
    """Peak memory of this process during a run: CUDA's allocator peak, or on Linux the resident-set high-water
    mark, which ``/proc/self/clear_refs`` resets (so each run gets its own peak, not the worker's lifetime one).

    On CPU, memory freed by earlier runs is first handed back to the OS (``malloc_trim``); otherwise a run that
    reuses it would show no growth at all. On every device the garbage of earlier runs (reference cycles: a Muon
    run leaves its model and state in one) is collected first: freed during this run, it would be subtracted from
    this run's peak. One-time allocations are kept out of a worker's first run: :func:`_warm_up` makes the generic
    ones before the baseline, and file-backed pages the run maps in (the code of library kernels it is the first to
    call: 3 MB on digits_mlp, 8 on char_lm) are not counted; they are shared, reclaimable, and no later run pays
    them.
    """

    def __init__(self, device: torch.device, optimizer_name: str = "adamw") -> None:
        self.device = device
        self.baseline: float | None = None
        self.file_baseline = 0.0
        _warm_up(device, optimizer_name)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            self.baseline = torch.cuda.memory_allocated(device) / 2**20
        else:
            _malloc_trim()
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                self.baseline, self.file_baseline = self._status("VmRSS", "RssFile")
            except OSError:  # not Linux, or not allowed: no figure rather than a wrong one
                self.baseline = None

    @staticmethod
    def _status(*keys: str) -> tuple[float, ...]:
        """``keys`` of ``/proc/self/status``, in MB."""
        values: dict[str, float] = {}
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in keys:
                    values[key] = int(value.split()[0]) / 1024
        missing = [key for key in keys if key not in values]
        if missing:
            raise OSError(f"/proc/self/status has no {', '.join(missing)}")
        return tuple(values[key] for key in keys)

    def peak_mb(self) -> float | None:
        if self.baseline is None:
            return None
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20 - self.baseline
        high_water, file_backed = self._status("VmHWM", "RssFile")
        return high_water - self.baseline - max(file_backed - self.file_baseline, 0.0)


def weights_digest(model: nn.Module) -> str:
    """A short hash of every parameter and buffer of ``model`` (names, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if isinstance(tensor, torch.Tensor):
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _subsample(items: list[Any], limit: int) -> list[Any]:
    if len(items) <= limit:
        return items
    stride = math.ceil(len(items) / limit)
    return items[::stride] + ([items[-1]] if (len(items) - 1) % stride else [])


def _evaluate(task: Task, model: nn.Module, optimizer: Optimizer | None = None) -> float:
    model.eval()
    if optimizer is not None:
        set_optimizer_mode(optimizer, False)  # schedule-free: evaluate at x, the average, not the training point y
    with torch.no_grad():
        value = metric_value(task, task.evaluate(model))
    model.train()
    if optimizer is not None:
        set_optimizer_mode(optimizer, True)
    return value


def _grads_finite(model: nn.Module) -> torch.Tensor | bool:
    """Whether every (dense) gradient is finite: one reduction, read with the loss."""
    grads = [p.grad for p in model.parameters() if p.grad is not None and not p.grad.is_sparse]
    if not grads:
        return True
    return torch.stack(torch._foreach_norm(grads)).isfinite().all()


def _meets(task: Task, value: float) -> bool:
    if task.target is None or not math.isfinite(value):
        return False
    return value >= task.target if task.higher_is_better else value <= task.target


def seed_everything(seed: int) -> None:
    """Seed torch (every device), Python's ``random`` and NumPy's global generator: a task that draws its initial
    weights or data order from either (a NumPy init, ``random.shuffle``) then gives every optimizer the same ones."""
    torch.manual_seed(seed)
    random.seed(seed)
    try:
        import numpy
    except ImportError:  # torch runs without NumPy; then nothing can draw from it
        return
    numpy.random.seed(seed)


@contextlib.contextmanager
def global_generators_restored(devices: list[torch.device]) -> Iterator[None]:
    """Torch's generators (CPU and ``devices``), Python's and NumPy's (where imported) given back their states on
    exit, however the block seeds or draws from them."""
    python_state = random.getstate()
    numpy_random = sys.modules.get("numpy.random")
    numpy_state = numpy_random.get_state() if numpy_random is not None else None
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        if numpy_state is not None:
            numpy_random.set_state(numpy_state)


def train_once(task: Task, optimizer_name: str, lr: float, seed: int, batch_size: int | None = None, *,
               device: str | torch.device = "cpu", heartbeat: Callable[[], None] | None = None,
               weight_decay: float | None = None, out: Path | None = None,
               optimizer_kwargs: dict[str, Any] | None = None) -> RunResult:
    """Train ``task`` from the seed's initial weights with ``optimizer_name`` at peak learning rate ``lr``.

    The schedule is a cosine decay from ``lr`` to 0 over ``task.steps`` with no warm-up, the same for every
    optimizer but those designed for a constant lr (see :func:`lr_multiplier`); schedule-free optimizers train in
    ``train()`` mode and are evaluated in ``eval()`` mode. ``heartbeat`` is called after every step (it should
    throttle itself), so a long run shows it is alive. ``weight_decay`` replaces the task's AdamW-scale decay (each
    optimizer gets its published translation of either). ``optimizer_kwargs`` go to the optimizer's constructor
    (``state_dtype="int8"``, say) on the arena's own loop. A workload (``task.run`` set) trains through its own
    framework instead, writing what the framework writes under ``out``.
    """
    device = torch.device(device)
    batch_size = task.batch_size if batch_size is None else batch_size
    if task.run is not None:
        return task.run(optimizer_name, lr, seed, batch_size, device=device, heartbeat=heartbeat, out=out)
    ultralytics_only(optimizer_name)
    memory = _PeakMemory(device, optimizer_name)
    seed_everything(seed)
    model = checked_model(task, task.make_model()).to(device)
    init_digest = weights_digest(model)
    batches = iter(task.make_batches(torch.Generator().manual_seed(seed), batch_size))
    decay = task.weight_decay if weight_decay is None else weight_decay
    steps = task.steps
    optimizer = create_optimizer(model, optimizer_name, lr=lr, **arena_weight_decay(optimizer_name, decay),
                                 **run_length_kwargs(optimizer_name, steps), **(optimizer_kwargs or {}))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(optimizer_name, steps))
    set_optimizer_mode(optimizer, True)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    position = task.position
    trajectory = [list(position(model))] if position else None
    eval_steps, eval_metric = [0], [_evaluate(task, model, optimizer)]
    loss_steps: list[int] = []
    train_loss: list[float] = []
    opt_times: list[float] = []
    fwd_times: list[float] = []
    window: list[float] = []  # losses since the last curve point
    recent: deque[float] = deque(maxlen=10)  # the divergence check's smoothing, independent of eval_every
    scale: float | None = None  # the first nonzero |loss|: what "grew 10×" is measured against
    diverged_at: int | None = None
    because: str | None = None
    steps_to_target = 0 if _meets(task, eval_metric[0]) else None
    seconds_to_target = 0.0 if steps_to_target == 0 else None
    train_seconds = 0.0

    for step in range(1, steps + 1):
        try:
            batch = _to_device(next(batches), device)
        except StopIteration:  # a bare StopIteration names neither the cause nor the fix
            raise RuntimeError(f"make_batches yielded only {step - 1} batches for {steps} steps (task "
                               f"{task.name!r}: its iterator must be endless or at least steps long)") from None
        start = time.perf_counter()
        loss = task.loss(model, batch)
        if step == 1:
            check_loss(task, loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        finite_grads = _grads_finite(model)
        sync()
        middle = time.perf_counter()
        optimizer.step()
        scheduler.step()
        sync()
        end = time.perf_counter()
        fwd_times.append(middle - start)
        opt_times.append(end - middle)
        train_seconds += end - start

        value = loss.item()
        if scale is None and value != 0:
            scale = abs(value)
        window.append(value)
        recent.append(value)
        if position:
            trajectory.append(list(position(model)))
        because = ("non-finite loss" if not math.isfinite(value) else
                   "non-finite gradient" if not bool(finite_grads) else
                   f"loss above {DIVERGENCE_FACTOR:g}x its start" if scale is not None and
                   statistics.fmean(recent) > DIVERGENCE_FACTOR * scale else None)
        if because is not None:
            diverged_at = step
            break
        if heartbeat is not None:
            heartbeat()
        if step % task.eval_every == 0 or step == steps:
            loss_steps.append(step)
            train_loss.append(statistics.fmean(window))
            window = []
            metric = _evaluate(task, model, optimizer)
            if not math.isfinite(metric) or not all(torch.isfinite(p).all() for p in model.parameters()):
                diverged_at, because = step, "non-finite metric or parameter"
                break
            eval_steps.append(step)
            eval_metric.append(metric)
            if steps_to_target is None and _meets(task, metric):
                steps_to_target, seconds_to_target = step, train_seconds

    diverged = diverged_at is not None
    finite = [m for m in eval_metric if math.isfinite(m)]
    best = (max if task.higher_is_better else min)(finite) if finite else None
    skip = 2 if len(opt_times) > 4 else 0  # the first steps allocate state and warm caches
    return RunResult(
        final_metric=None if diverged else eval_metric[-1],
        best_metric=best,
        diverged=diverged,
        diverged_at=diverged_at,
        steps=len(opt_times),
        steps_to_target=steps_to_target,
        seconds_to_target=seconds_to_target,
        train_seconds=train_seconds,
        opt_step_ms=1e3 * statistics.median(opt_times[skip:]) if opt_times else math.nan,
        fwd_bwd_ms=1e3 * statistics.median(fwd_times[skip:]) if fwd_times else math.nan,
        state_bytes=state_bytes(optimizer),
        params=sum(p.numel() for p in model.parameters()),
        peak_memory_mb=memory.peak_mb(),
        loss_steps=_subsample(loss_steps, MAX_CURVE_POINTS),
        train_loss=_subsample([v if math.isfinite(v) else None for v in train_loss], MAX_CURVE_POINTS),
        eval_steps=_subsample(eval_steps, MAX_CURVE_POINTS),
        eval_metric=_subsample(eval_metric, MAX_CURVE_POINTS),
        trajectory=_subsample(trajectory, MAX_TRAJECTORY_POINTS) if trajectory else None,
        diverged_because=because,
        init_digest=init_digest,
    )
