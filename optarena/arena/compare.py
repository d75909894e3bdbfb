"""``optarena compare``: plan, run (in parallel, resumably, across machines) and report a fair comparison."""

from __future__ import annotations

import math
import multiprocessing
import os
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..registry import base_optimizer_info
from ..validation import check_positive_int
from .plan import BUDGET_PRESETS, DEFAULT_OPTIMIZERS, Cell, CellPlan, Outcome, cells_for, plan_cell, point_key
from .runner import train_once
from .storage import HEARTBEAT_SECONDS, ArenaStorage, default_storage_url
from .task import BUDGETS, Task, builtin_tasks, load_task

POLL_SECONDS = 1.0
"""How often a worker with nothing to do looks again while other workers finish the points it waits for."""


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
    invocation: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    """Identifies this command; its worker processes share it (see :class:`ArenaStorage`)."""
    tasks_loaded: dict[str, Task] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.budget not in BUDGETS:
            raise ValueError(f"Invalid budget: {self.budget!r} (expected one of {', '.join(BUDGETS)})")
        names = tuple(self.optimizers) or DEFAULT_OPTIMIZERS[self.budget]
        for name in names:
            base_optimizer_info(name)  # ValueError naming the unknown one
        self.optimizers = tuple(dict.fromkeys(n.lower() for n in names))
        self.tasks = tuple(dict.fromkeys(self.tasks)) or tuple(builtin_tasks())
        if self.seeds is None:
            self.seeds = BUDGET_PRESETS[self.budget].seeds
        check_positive_int("seeds", self.seeds)
        check_positive_int("workers", self.workers)
        if self.threads is not None:
            check_positive_int("threads", self.threads)
        if self.batch_sizes is not None:
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
        self.out = Path(self.out)
        self.storage = self.storage or default_storage_url(self.out)

    def load_tasks(self) -> dict[str, Task]:
        if not self.tasks_loaded:
            tasks = {spec: load_task(spec, self.budget) for spec in self.tasks}
            names: dict[str, str] = {}
            for spec, task in tasks.items():  # the name keys the studies: two tasks must not share one
                if names.setdefault(task.name, spec) != spec:
                    raise ValueError(f"Invalid tasks: {names[task.name]!r} and {spec!r} are both named "
                                     f"{task.name!r}")
            self.tasks_loaded = tasks
        return self.tasks_loaded

    def open_storage(self) -> ArenaStorage:
        return ArenaStorage(self.storage, stale_after=self.stale_after, invocation=self.invocation)

    def batch_sizes_for(self, task: Task) -> tuple[int, ...]:
        return tuple(sorted(set(self.batch_sizes))) if self.batch_sizes else task.all_batch_sizes

    def default_batch_size(self, task: Task) -> int:
        """The batch size a task's headline results use: its own default, or the closest swept one."""
        sizes = self.batch_sizes_for(task)
        return min(sizes, key=lambda b: (abs(b - task.batch_size), b))

    def cells(self) -> list[Cell]:
        tasks = self.load_tasks()
        return cells_for([(spec, t.name, self.batch_sizes_for(t), t.higher_is_better) for spec, t in tasks.items()],
                         self.optimizers, self.budget)

    def plan(self, cell: Cell, finished: Mapping[str, Outcome]) -> CellPlan:
        task = self.load_tasks()[cell.task]
        stress = "adamw" in self.optimizers and cell.batch_size == self.default_batch_size(task)
        return plan_cell(cell, BUDGET_PRESETS[self.budget], self.seeds, finished, stress=stress)


def _configure_process(config: CompareConfig) -> None:
    threads = config.threads or max(1, (os.cpu_count() or 1) // config.workers)
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # subnormal second moments would slow AdamW 4x and fake a speed win


def _run_point(store: ArenaStorage, config: CompareConfig, cell: Cell, trial_id: int, lr: float, seed: int) -> None:
    task = config.load_tasks()[cell.task]
    last_beat = time.monotonic()

    def heartbeat() -> None:
        nonlocal last_beat
        if time.monotonic() - last_beat > HEARTBEAT_SECONDS:
            store.heartbeat(trial_id)
            last_beat = time.monotonic()

    try:
        result = train_once(task, cell.optimizer, lr, seed, cell.batch_size, device=config.device,
                            heartbeat=heartbeat)
    except Exception:  # the task's own code failed: record it, do not retry it forever
        store.fail(trial_id, traceback.format_exc())
        return
    except BaseException:  # Ctrl-C or exit: leave the point open for the next run
        store.abandon(trial_id, "interrupted")
        raise
    store.finish(trial_id, result)


def work(config: CompareConfig, on_progress: Callable[[], None] | None = None) -> None:
    """Run points until every cell is complete; safe to run in many processes and on many machines at once."""
    _configure_process(config)
    store = config.open_storage()
    cells = config.cells()
    while True:
        progressed = waiting = False
        for cell in cells:
            while True:
                trials = store.trials(cell)
                plan = config.plan(cell, store.finished(cell, trials))
                if plan.complete:
                    break
                running = store.running_keys(cell, trials)
                todo = [p for p in plan.missing if point_key(*p) not in running]
                if not todo:  # the rest is running elsewhere; come back to this cell later
                    waiting = True
                    break
                lr, seed = todo[0]
                trial_id = store.claim(cell, lr, seed)
                if trial_id is not None:
                    _run_point(store, config, cell, trial_id, lr, seed)
                    progressed = True
                    if on_progress:
                        on_progress()
        if not waiting:
            return
        if not progressed:
            time.sleep(POLL_SECONDS)
            if on_progress:
                on_progress()


def progress_counts(config: CompareConfig, store: ArenaStorage) -> tuple[int, int]:
    """(finished runs, expected runs): what is planned now plus the seed runs that follow unfinished tuning."""
    done = total = 0
    for cell in config.cells():
        finished = store.finished(cell)
        plan = config.plan(cell, finished)
        done += len(finished)
        total += len(finished) + len(plan.missing) + (config.seeds - 1 if plan.blocked else 0)
    return done, total


def _child(config: CompareConfig) -> None:
    try:
        work(config)
    except KeyboardInterrupt:
        pass


def _run_children(config: CompareConfig, refresh: Callable[[], None]) -> None:
    """Start ``config.workers`` worker processes (all at once, so they share the work) and wait for them."""
    context = multiprocessing.get_context("spawn")  # torch and fork do not mix
    children = [context.Process(target=_child, args=(replace(config, tasks_loaded={}),), daemon=True)
                for _ in range(config.workers)]
    for child in children:
        child.start()
    try:
        for child in children:
            while child.is_alive():
                child.join(POLL_SECONDS)
                refresh()
        for child in children:
            if child.exitcode != 0:  # whatever it left unfinished is done by the caller's own worker
                warnings.warn(f"optarena compare: worker process {child.pid} exited with code {child.exitcode}",
                              RuntimeWarning, stacklevel=2)
    except KeyboardInterrupt:  # the children got the same SIGINT: let them record their interrupted runs
        for child in children:
            child.join(10)
        raise
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()


def run_compare(config: CompareConfig, *, show_progress: bool = True):
    """Run the comparison ``config`` describes (resuming whatever is stored already) and write the report.

    Returns the :class:`~optarena.arena.results.ResultSet` the report was built from.
    """
    from .report import print_summary, write_report
    from .results import ResultSet

    config.out.mkdir(parents=True, exist_ok=True)
    config.load_tasks()
    store = config.open_storage()
    for cell in config.cells():  # create the studies before workers race to do it
        store.study_id(cell)

    started = time.perf_counter()
    with _progress(show_progress) as update:
        last = -math.inf

        def refresh() -> None:  # reading every cell costs a few ms each: at most once per poll interval
            nonlocal last
            if time.monotonic() - last >= POLL_SECONDS:
                update(*progress_counts(config, store))
                last = time.monotonic()

        refresh()
        if config.workers > 1:
            _run_children(config, refresh)
        # one worker works here; after several, this finishes whatever a crashed child left behind
        work(config, on_progress=refresh)
        update(*progress_counts(config, store))
    elapsed = time.perf_counter() - started
    results = ResultSet.load(config, store)
    paths = write_report(results, config.out, wall_seconds=elapsed)
    if show_progress:
        print_summary(results, paths, wall_seconds=elapsed)
    return results


class _progress:
    """A rich progress bar when asked for, a no-op otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __enter__(self) -> Callable[[int, int], None]:
        if not self.enabled:
            return lambda done, total: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("[bold]optarena compare"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("runs"), TimeElapsedColumn())
        self.bar.__enter__()
        self.task_id = self.bar.add_task("runs", total=None)
        return lambda done, total: self.bar.update(self.task_id, completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)


__all__: Sequence[str] = ["CompareConfig", "progress_counts", "run_compare", "work"]
