"""``optarena compare``: plan, run (in parallel, resumably, across machines) and report a fair comparison."""

from __future__ import annotations

import math
import multiprocessing
import os
import time
import traceback
import warnings
from collections.abc import Callable

import torch

from .config import CompareConfig
from .plan import Cell, point_key
from .runner import train_once
from .storage import HEARTBEAT_SECONDS, ArenaStorage

POLL_SECONDS = 1.0
"""How often a worker with nothing to do looks again while other workers finish the points it waits for."""


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
    children = [context.Process(target=_child, args=(config,), daemon=True)
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


__all__ = ["CompareConfig", "progress_counts", "run_compare", "work"]
