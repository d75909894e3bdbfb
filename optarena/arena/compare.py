"""``optarena compare``: plan, run (in parallel, resumably, across machines) and report a fair comparison."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .catalog import load_tasks
from .config import CompareConfig
from .storage import FAILURES, ArenaStorage
from .storage_urls import StorageError
from .workers import POLL_SECONDS, WorkersLost, supervise, work


class ReportError(StorageError):
    """The report could not be written (a full disk, say); every finished run is stored, and the same command
    writes the report once there is room."""


@dataclass
class RunProgress:
    done: int
    """Finished runs."""
    total: int
    """Expected runs: what is planned now plus the seed runs that follow unfinished tuning."""
    finished: list[tuple[str, str]]
    """(task name, optimizer) pairs with every batch size's cell complete, in plan order."""


def progress_counts(config: CompareConfig, store: ArenaStorage) -> RunProgress:
    done = total = 0
    complete: dict[tuple[str, str], bool] = {}
    for cell in config.cells():
        finished = store.finished(cell)
        plan = config.plan(cell, finished)
        done += len(finished)
        total += len(finished) + len(plan.missing) + (config.seeds - 1 if plan.blocked else 0)
        key = (cell.task_name, cell.optimizer)
        complete[key] = complete.get(key, True) and plan.complete
    return RunProgress(done, total, [key for key, ok in complete.items() if ok])


def run_compare(config: CompareConfig, *, show_progress: bool = True):
    """Run the comparison ``config`` describes (resuming whatever is stored already) and write the report.

    Returns the :class:`~optarena.arena.results.ResultSet` the report was built from.
    """
    from .claims import evaluate_claims
    from .report import print_summary, write_report
    from .results import ResultSet
    from .verdict import compute_verdict

    load_tasks.cache_clear()  # a task file edited since an earlier comparison in this process is read anew
    tasks = config.load_tasks()  # a task that fails to load stops here, before anything is written
    framework = [t.name for t in tasks.values() if t.run is not None]
    if "weight_decay" in config.tune and framework:
        raise ValueError(f"Invalid --tune: 'lr,weight_decay' on framework workloads ({', '.join(framework)}): their "
                         "weight decay is the framework's own setting; tune lr only there")
    fixed = [f"{t.name} ({t.batch_size_owner})" for t in tasks.values() if t.batch_size_owner]
    if config.batch_sizes and fixed:
        raise ValueError(f"Invalid --batch-sizes: {','.join(map(str, config.batch_sizes))!r} on workloads whose batch "
                         f"size is set elsewhere: {', '.join(fixed)}; every size would repeat one setting")
    if not config.cells():
        why = "; ".join(f"{o} on {tasks[spec].name}: {reason}" for spec, o, reason in config.not_run())
        raise ValueError(f"Invalid --optimizers: nothing can run ({why})")
    created = _make_folders(config.out)
    try:
        store = config.open_storage()
        for cell in config.cells():  # create the studies before workers race to do it
            store.study_id(cell)
    except BaseException:
        _remove_unused(created, config.out / "arena.db")
        raise

    started = time.perf_counter()
    with _progress(show_progress) as update:
        last = -math.inf

        def refresh() -> None:  # reading every cell costs a few ms each: at most once per poll interval
            nonlocal last
            if time.monotonic() - last >= POLL_SECONDS:
                update(progress_counts(config, store))
                last = time.monotonic()

        refresh()
        now = progress_counts(config, store)
        seen = None
        if now.total > now.done:  # no more workers than runs left
            seen = supervise(config, store, min(config.workers, now.total - now.done), refresh)
        now = progress_counts(config, store)
        update(now)
    elapsed = time.perf_counter() - started
    try:
        with report_lock(config.out):  # results read inside it: the last writer has the newest
            results = ResultSet.load(config, store)
            verdict, claims = compute_verdict(results), evaluate_claims(results)
            paths = write_report(results, config.out, wall_seconds=elapsed, verdict=verdict, claims=claims)
    except OSError as err:  # a full disk, a folder removed meanwhile: the runs are stored, the report can follow
        where = f": {err.filename}" if err.filename else ""
        raise ReportError(f"The report could not be written to {str(config.out)!r} ({err.strerror or err}{where})"
                          ) from None
    if show_progress:
        print_summary(results, paths, wall_seconds=elapsed, verdict=verdict, claims=claims)
    if seen is not None and now.done < now.total:  # the workers all ended with work left: never a success
        why = (f"the worker processes kept dying outside any run ({seen.idle_deaths} times; the last: "
               f"{seen.last_error})" if seen.idle_deaths else "the worker processes ended")
        raise WorkersLost(f"{why} before the comparison was complete ({now.done} of {now.total} planned runs "
                          "made); the report covers the finished ones")
    return results


@contextlib.contextmanager
def report_lock(out: Path) -> Iterator[None]:
    """Hold ``OUT/.report.lock`` while the report is written: commands sharing one folder finish together, and two
    writing one file at once tore it (mixed content) or lost its temporary file (shared by name) to the other."""
    with contextlib.ExitStack() as stack:
        try:
            import fcntl

            handle = stack.enter_context(open(out / ".report.lock", "a"))
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        except (ImportError, OSError):  # not POSIX, or a file system without locks: write unlocked
            pass
        yield


def _make_folders(out: Path) -> list[Path]:
    """Create ``out`` and its missing parents; the folders this process created, deepest last."""
    missing = [p for p in (out, *out.parents) if not p.exists()][::-1]
    created = []
    for folder in missing:
        try:
            folder.mkdir()
        except FileExistsError:  # another process made it first: not ours to remove
            continue
        except OSError as err:
            _remove_unused(created)
            raise ValueError(f"Invalid --out: {str(out)!r} cannot be created ({err.strerror})") from None
        created.append(folder)
    return created


def _remove_unused(created: list[Path], *own_files: Path) -> None:
    """Undo :func:`_make_folders` for a comparison that never started: the files it made (the default SQLite
    storage) and the folders it created, each only if nothing else has appeared in it."""
    if not created:
        return
    for path in own_files:
        for piece in path.parent.glob(path.name + "*"):  # the database and its -wal/-shm companions
            piece.unlink(missing_ok=True)
    for folder in reversed(created):
        try:
            folder.rmdir()  # fails on a folder that is not empty: someone else's files stay
        except OSError:
            return


class _progress:
    """A rich progress bar with an ETA on a terminal; otherwise (a log, CI) one line per finished task × optimizer;
    nothing when disabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None
        self.reported: set[tuple[str, str]] = set()

    def __enter__(self) -> Callable[[RunProgress], None]:
        if not self.enabled:
            return lambda progress: None
        if not sys.stdout.isatty():
            return self._lines
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("[bold]optarena compare"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("runs"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
        self.bar.__enter__()
        self.task_id = self.bar.add_task("runs", total=None)
        return lambda p: self.bar.update(self.task_id, completed=p.done, total=p.total)

    def _lines(self, progress: RunProgress) -> None:
        for task, optimizer in progress.finished:
            if (task, optimizer) not in self.reported:
                self.reported.add((task, optimizer))
                print(f"[{progress.done}/{progress.total} runs] {task} × {optimizer}: done", flush=True)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


def failure_summary(results) -> str | None:
    """"N of M runs failed (...)" for the runs of the current plan that produced no result; None if none did."""
    failed = [r.state for r in results.failures]
    if not failed:
        return None
    kinds = ", ".join(f"{failed.count(kind)} {'raised' if kind == 'error' else kind}" for kind in FAILURES
                      if kind in failed)
    return (f"{len(failed)} of {len(results.planned)} runs failed ({kinds}); see the report's \"Runs that "
            "failed\"")


__all__ = ["CompareConfig", "failure_summary", "ReportError", "RunProgress", "progress_counts", "run_compare", "work",
           "WorkersLost"]
