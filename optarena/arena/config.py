"""What defines a comparison: :class:`CompareConfig`, validated as it is made."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..info import LOOKAHEAD_PREFIX, base_optimizer_info
from ..validation import MAX_THREADS, MAX_WORKERS, check_number, check_positive_int
from .catalog import default_tasks, load_tasks
from .plan import BUDGET_PRESETS, DEFAULT_OPTIMIZERS, TUNABLE, Cell, CellPlan, Outcome, cells_for, plan_cell
from .storage import HEARTBEAT_SECONDS, ArenaStorage
from .storage_urls import check_shared, default_storage_url
from .task import BUDGETS, Task


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


@dataclass
class CompareConfig:
    """Everything that defines a comparison. Re-running with the same config resumes it."""

    optimizers: tuple[str, ...] = ()
    """Registered optimizer names (``lookahead_`` prefix allowed); empty: the budget's default roster."""
    tasks: tuple[str, ...] = ()
    """Built-in task names or ``module:function`` specs; empty: every built-in task."""
    budget: str = "quick"
    seeds: int | None = None
    """Seeds per selected setting; ``None``: the budget's preset."""
    batch_sizes: tuple[int, ...] | None = None
    """Batch sizes for every task; ``None``: each task's default plus its own sweep."""
    out: Path = Path("optarena-report")
    storage: str | None = None
    """Optuna storage URL; ``None``: SQLite in ``out``."""
    workers: int = field(default_factory=default_workers)
    """Worker processes on this machine; default one per core (at most 8)."""
    device: str = "cpu"
    threads: int | None = None
    """Torch threads per worker; ``None``: the cores divided among the workers (small models run several times
    faster on one thread per process than on several threads in one process)."""
    stale_after: float = 600.0
    """Seconds without a heartbeat after which another machine's running trial is taken over."""
    run_timeout: float | None = None
    """Seconds one run may take before its worker is stopped and the run recorded as timed out; ``None``: the
    budget's (tiny 120, quick 600, full 3600); 0: no limit."""
    tune: tuple[str, ...] = ("lr",)
    """What is tuned per cell: ``("lr",)`` (the growing lr grid) or ``("lr", "weight_decay")`` (a fixed-budget search
    over both, the same for every optimizer)."""
    invocation: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    """Identifies this command; its worker processes share it (see :class:`ArenaStorage`)."""
    started: float = field(default_factory=time.time)
    """When this command started (epoch seconds): a run that failed after it is final for it, whichever machine's
    command recorded the failure (see :class:`ArenaStorage`)."""

    def __post_init__(self) -> None:
        if self.budget not in BUDGETS:
            raise ValueError(f"Invalid budget: {self.budget!r} (expected one of {', '.join(BUDGETS)})")
        # a string would be read letter by letter ("Unknown optimizer 'a'"); a Task object cannot reach the worker
        # processes, which load every task anew from its spec
        for what, expected in (("optimizers", "a tuple of names, e.g. ('adamw', 'lion')"),
                               ("tasks", "a tuple of specs, e.g. ('digits_mlp', 'my_tasks:make_task'): a task of "
                                         "your own by its 'module:function', which every worker process loads")):
            values = getattr(self, what)
            if not isinstance(values, (str, bytes)) and isinstance(values, Iterable):
                values = tuple(values)  # a generator is read once
            if not isinstance(values, tuple) or not all(isinstance(v, str) for v in values):
                raise TypeError(f"Invalid {what}: {values!r} ({expected})")
            setattr(self, what, values)
        names = tuple(self.optimizers) or DEFAULT_OPTIMIZERS[self.budget]
        for name in names:
            base_optimizer_info(name)  # ValueError naming the unknown one
        self.optimizers = tuple(dict.fromkeys(n.lower() for n in names))
        self.tasks = tuple(dict.fromkeys(self.tasks)) or default_tasks(self.budget)
        self.tune = tuple(dict.fromkeys(self.tune))
        if not self.tune or "lr" not in self.tune or any(t not in TUNABLE for t in self.tune):
            raise ValueError(f"Invalid tune: {','.join(self.tune)!r} (expected 'lr' or 'lr,weight_decay': the learning "
                             "rate is always tuned)")
        if self.seeds is None:
            self.seeds = BUDGET_PRESETS[self.budget].seeds
        check_positive_int("seeds", self.seeds)
        check_positive_int("workers", self.workers)
        if self.workers > MAX_WORKERS:
            raise ValueError(f"Invalid workers: {self.workers!r} (at most {MAX_WORKERS} processes per machine; the "
                             "runs are shared with other machines through --storage)")
        if self.run_timeout is None:
            self.run_timeout = BUDGET_PRESETS[self.budget].run_timeout
        check_number("run_timeout", self.run_timeout)
        if self.threads is not None:
            check_positive_int("threads", self.threads)
            if self.threads > MAX_THREADS:
                raise ValueError(f"Invalid threads: {self.threads!r} (at most {MAX_THREADS} torch threads per worker)")
        if self.batch_sizes is not None:
            if isinstance(self.batch_sizes, (str, bytes)) or not isinstance(self.batch_sizes, Iterable):
                raise TypeError(f"Invalid batch_sizes: {self.batch_sizes!r} (a tuple of positive integers, e.g. "
                                "(16, 64))")
            self.batch_sizes = tuple(self.batch_sizes)
            if not self.batch_sizes:
                raise ValueError(f"Invalid batch_sizes: {self.batch_sizes!r} (positive integers)")
            for size in self.batch_sizes:
                check_positive_int("batch size", size)
        if isinstance(self.stale_after, bool) or not isinstance(self.stale_after, (int, float)) or \
                not self.stale_after >= 2 * HEARTBEAT_SECONDS:
            raise ValueError(f"Invalid stale_after: {self.stale_after!r} (seconds, at least "
                             f"{2 * HEARTBEAT_SECONDS:g}: twice the heartbeat interval)")
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"Invalid device: {self.device!r} ({err})") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"Invalid device: {self.device!r} (CUDA is not available here)")
        if device.type == "meta":
            raise ValueError(f"Invalid device: {self.device!r} (meta tensors hold no data: nothing can be trained)")
        try:
            torch.zeros(1, device=device)
        except (RuntimeError, AssertionError) as err:
            raise ValueError(f"Invalid device: {self.device!r} ({str(err).splitlines()[0]})") from None
        self.out = Path(self.out)
        _check_out(self.out)
        self.storage = self.storage or default_storage_url(self.out)
        check_shared(self.storage)

    @property
    def threads_per_worker(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // self.workers)

    def load_tasks(self) -> dict[str, Task]:
        """The tasks by spec (loaded once per process); ``batch_sizes`` refused where no task is batched."""
        tasks = load_tasks(self.tasks, self.budget)
        if self.batch_sizes and not any(t.batched for t in tasks.values()):
            # it would change nothing: refused as --epochs is where no workload takes it
            raise ValueError(f"Invalid --batch-sizes: {','.join(map(str, self.batch_sizes))!r} (no task compared "
                             f"here has data to batch: {', '.join(t.name for t in tasks.values())}; leave "
                             "--batch-sizes out)")
        return tasks

    def open_storage(self) -> ArenaStorage:
        return ArenaStorage(self.storage, stale_after=self.stale_after, invocation=self.invocation,
                            started=self.started)

    def batch_sizes_for(self, task: Task) -> tuple[int, ...]:
        """``batch_sizes``, or the task's own; a task without data (``batched=False``) runs at its own only, and one
        with fewer training examples than a batch size runs that size as its full batch (``train_examples``)."""
        if not (self.batch_sizes and task.batched):
            return task.all_batch_sizes
        return tuple(sorted({min(size, task.train_examples or size) for size in self.batch_sizes}))

    def default_batch_size(self, task: Task) -> int:
        """The batch size a task's headline results use: its own default, or the closest swept one."""
        sizes = self.batch_sizes_for(task)
        return min(sizes, key=lambda b: (abs(b - task.batch_size), b))

    def cells(self) -> list[Cell]:
        """Every task × batch size × optimizer, except the pairs that cannot run (:meth:`not_run`)."""
        tasks = self.load_tasks()
        skipped = {(spec, optimizer) for spec, optimizer, _ in self.not_run()}
        return [c for c in cells_for([(spec, t.name, self.batch_sizes_for(t), t.higher_is_better, t.fingerprint)
                                      for spec, t in tasks.items()], self.optimizers, self.budget)
                if (c.task, c.optimizer) not in skipped]

    def not_run(self) -> list[tuple[str, str, str]]:
        """(task spec, optimizer, why) for the pairs a framework cannot train: ultralytics builds no schedule-free
        optimizer, and ultralytics' own optimizers (MuSGD) exist only inside its trainer."""
        out = []
        for spec, task in self.load_tasks().items():
            for name in self.optimizers:
                info = base_optimizer_info(name)
                if task.framework == "ultralytics" and info.train_eval_modes:
                    out.append((spec, name, "ultralytics validates an average of the training weights, which "
                                            "schedule-free optimizers would have to switch to"))
                elif info.source == "ultralytics" and task.framework != "ultralytics":
                    out.append((spec, name, "only ultralytics' own trainer builds it"))
        return out

    def plan(self, cell: Cell, finished: Mapping[str, Outcome]) -> CellPlan:
        task = self.load_tasks()[cell.task]
        # the stress runs serve claims that compare with AdamW or between the stress-tested optimizers
        stressed = [n for n in self.optimizers if base_optimizer_info(n).stress and not n.startswith(LOOKAHEAD_PREFIX)]
        stress = ("adamw" in self.optimizers or len(stressed) > 1) and cell.batch_size == self.default_batch_size(task)
        return plan_cell(cell, BUDGET_PRESETS[self.budget], self.seeds, finished, stress=stress, tune=self.tune,
                         base_wd=task.weight_decay)


def _check_out(out: Path) -> None:
    """Refuse an output folder that cannot be one before anything runs: an existing file, or a place this process
    cannot write to, or a name the file system refuses (too long, say)."""
    try:
        _check_out_folder(out)
    except OSError as err:
        raise ValueError(f"Invalid --out: {str(out)!r} cannot be a folder here ({err.strerror})") from None


def _check_out_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"Invalid --out: {str(out)!r} is an existing file, not a folder (name a folder; it is "
                         "created if missing)")
    existing = out
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ValueError(f"Invalid --out: {str(out)!r} lies under {str(existing)!r}, which is a file")
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        what = "the folder" if existing == out else f"{str(existing)!r}, where it would be created,"
        raise ValueError(f"Invalid --out: {str(out)!r} is not writable ({what} does not allow this user to write)")
