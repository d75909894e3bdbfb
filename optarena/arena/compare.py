"""``optarena compare``: plan, run (in parallel, resumably, across machines) and report a fair comparison."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from .catalog import load_tasks
from .config import CompareConfig
from .storage import FAILURES, ArenaStorage
from .workers import POLL_SECONDS, supervise, work


def progress_counts(config: CompareConfig, store: ArenaStorage) -> tuple[int, int]:
    """(finished runs, expected runs): what is planned now plus the seed runs that follow unfinished tuning."""
    done = total = 0
    for cell in config.cells():
        finished = store.finished(cell)
        plan = config.plan(cell, finished)
        done += len(finished)
        total += len(finished) + len(plan.missing) + (config.seeds - 1 if plan.blocked else 0)
    return done, total


def run_compare(config: CompareConfig, *, show_progress: bool = True):
    """Run the comparison ``config`` describes (resuming whatever is stored already) and write the report.

    Returns the :class:`~optarena.arena.results.ResultSet` the report was built from.
    """
    from .report import print_summary, write_report
    from .results import ResultSet

    config.out.mkdir(parents=True, exist_ok=True)
    load_tasks.cache_clear()  # a task file edited since an earlier comparison in this process is read anew
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
        done, total = progress_counts(config, store)
        if total > done:  # no more workers than runs left
            supervise(config, store, min(config.workers, total - done), refresh)
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


def failure_summary(results) -> str | None:
    """"N of M runs failed (...)" for the runs of ``results`` that produced no result; None if none did."""
    failed = [r.state for r in results.records if r.state in FAILURES]
    if not failed:
        return None
    kinds = ", ".join(f"{failed.count(kind)} {'raised' if kind == 'error' else kind}" for kind in FAILURES
                      if kind in failed)
    return f"{len(failed)} of {len(results.records)} runs failed ({kinds}); see the report's \"Runs that failed\""


__all__ = ["CompareConfig", "failure_summary", "progress_counts", "run_compare", "work"]
