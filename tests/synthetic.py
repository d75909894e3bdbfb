"""Made-up stored runs for the verdict, claim and results tests: every figure a report prints can be set by hand."""

from __future__ import annotations

from pathlib import Path

from optarena.arena import CompareConfig
from optarena.arena.runner import RunResult
from optarena.arena.storage import Record

USER_TASKS = str(Path(__file__).resolve().parent / "arena_user_tasks.py")
LINEAR = f"{USER_TASKS}:linear"
SECOND = f"{USER_TASKS}:second_linear"
ADAMW_GRID, LION_GRID = (3.162e-4, 1e-3, 3.162e-3), (3.162e-5, 1e-4, 3.162e-4)


def result(metric: float | None, *, steps: tuple[int, ...] = (0, 10, 20, 30), curve: tuple[float, ...] | None = None,
           state_bytes: int = 80, opt_ms: float = 1.0, to_target: int | None = None,
           seconds: float | None = None) -> RunResult:
    """A run of the linear task (val_mse, lower is better) ending at ``metric``; its curve starts at
    ``metric + 1`` (the untrained model) unless ``curve`` is given."""
    curve = curve or (tuple(metric + 1.0 / (i + 1) for i in range(len(steps) - 1)) + (metric,) if metric is not None
                      else (1.0,))
    return RunResult(final_metric=metric, best_metric=metric, diverged=metric is None, diverged_at=None,
                     steps=steps[-1], steps_to_target=to_target,
                     seconds_to_target=seconds if seconds is not None or to_target is None else to_target / 100,
                     train_seconds=0.1, opt_step_ms=opt_ms, fwd_bwd_ms=1.0, state_bytes=state_bytes, params=9,
                     peak_memory_mb=0.0, eval_steps=list(steps[:len(curve)]), eval_metric=list(curve))


def config(tmp_path: Path, tasks: tuple[str, ...] = (LINEAR,), **kw) -> CompareConfig:
    kw.setdefault("optimizers", ("adamw", "lion", "rlion", "adan"))
    kw.setdefault("seeds", 2)
    kw.setdefault("budget", "tiny")
    return CompareConfig(tasks=tasks, out=tmp_path, workers=1, **kw)


def records(config: CompareConfig, optimizer: str, runs: dict[tuple, RunResult], batch_size: int | None = None,
            task: str = "linear") -> list[Record]:
    """Records of ``runs`` keyed ``(lr, seed)`` or ``(lr, seed, weight decay)``."""
    cell = next(c for c in config.cells() if c.optimizer == optimizer and c.task_name == task
                and (batch_size is None or c.batch_size == batch_size))
    return [Record(cell, lr, seed, "diverged" if r.diverged else "complete", r, None, i, "w", "h", *wd)
            for i, ((lr, seed, *wd), r) in enumerate(runs.items())]


def tuned(lrs: tuple[float, ...], metrics: tuple[float, ...], seeds: int = 2, spread: float = 0.0,
          opt_ms_spread: float = 0.0, **kw) -> dict[tuple[float, int], RunResult]:
    """Tuning runs (seed 0) and the seed runs at the best (lowest) lr, seed s worse by ``s · spread`` and its step
    ``s · opt_ms_spread`` ms slower."""
    runs = {(lr, 0): result(m, **kw) for lr, m in zip(lrs, metrics)}
    best = lrs[metrics.index(min(metrics))]
    opt_ms = kw.pop("opt_ms", 1.0)
    runs.update({(best, s): result(min(metrics) + s * spread, opt_ms=opt_ms + s * opt_ms_spread, **kw)
                 for s in range(1, seeds)})
    return runs
