"""Stored runs turned into the numbers a report shows: per cell, the chosen lr and its results over seeds."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from .config import CompareConfig
from .plan import Cell, CellPlan, Outcome, point_key
from .storage import ArenaStorage, Record
from .task import Task


def median(values: Iterable[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(finite) if finite else None


@dataclass
class CellSummary:
    cell: Cell
    plan: CellPlan
    finals: list[Record]
    """Runs at the chosen lr, one per seed (seed 0 included)."""
    metric_median: float | None
    metric_min: float | None
    metric_max: float | None
    diverged: int
    """Diverged runs among the finals."""
    tuning_diverged: int
    """Diverged runs among the tuning runs (seed 0, every grid lr)."""
    reached: int
    """Finals that met the task's target."""
    steps_to_target: float | None
    seconds_to_target: float | None
    opt_step_ms: float | None
    fwd_bwd_ms: float | None
    state_bytes_per_param: float | None
    peak_memory_mb: float | None

    @property
    def runs(self) -> int:
        return len(self.finals)


class ResultSet:
    """The finished runs of one comparison, with the queries the report and the claims need."""

    def __init__(self, config: CompareConfig, records: list[Record]) -> None:
        self.config = config
        self.tasks: dict[str, Task] = config.load_tasks()
        self.cells: list[Cell] = config.cells()
        self.records = records
        self._by_cell: dict[str, list[Record]] = {}
        for record in records:
            self._by_cell.setdefault(record.cell.study_name, []).append(record)
        self.summaries = {cell.study_name: self._summarise(cell) for cell in self.cells}

    @classmethod
    def load(cls, config: CompareConfig, store: ArenaStorage) -> ResultSet:
        return cls(config, store.records(config.cells()))

    # -------------------------------------------------------------------------------------------- queries
    def task(self, cell: Cell) -> Task:
        return self.tasks[cell.task]

    def records_of(self, cell: Cell) -> list[Record]:
        return self._by_cell.get(cell.study_name, [])

    def cell(self, task_spec: str, optimizer: str, batch_size: int | None = None) -> Cell | None:
        task = self.tasks[task_spec]
        batch_size = self.config.default_batch_size(task) if batch_size is None else batch_size
        for cell in self.cells:
            if (cell.task, cell.optimizer, cell.batch_size) == (task_spec, optimizer, batch_size):
                return cell
        return None

    def summary(self, task_spec: str, optimizer: str, batch_size: int | None = None) -> CellSummary | None:
        cell = self.cell(task_spec, optimizer, batch_size)
        return self.summaries[cell.study_name] if cell else None

    def headline_cells(self) -> list[Cell]:
        """Cells at each task's default batch size: the ones most tables and plots show."""
        return [c for c in self.cells if c.batch_size == self.config.default_batch_size(self.task(c))]

    def at_lr(self, cell: Cell, lr: float, seed: int = 0) -> Record | None:
        for record in self.records_of(cell):
            if point_key(record.lr, record.seed) == point_key(lr, seed):
                return record
        return None

    # ------------------------------------------------------------------------------------------ summaries
    def _summarise(self, cell: Cell) -> CellSummary:
        records = self.records_of(cell)
        finished = {point_key(r.lr, r.seed): Outcome(r.lr, r.seed, r.metric) for r in records}
        plan = self.config.plan(cell, finished)
        finals = sorted((r for r in records if plan.chosen_lr is not None and r.seed < self.config.seeds
                         and point_key(r.lr, 0) == point_key(plan.chosen_lr, 0)), key=lambda r: r.seed)
        tuning = {point_key(lr, 0) for lr in plan.tuning_lrs}
        results = [r.result for r in finals if r.result is not None]
        metrics = [r.metric for r in finals if r.metric is not None]

        def med(attr: str, source: list = results) -> float | None:
            return median(getattr(r, attr) for r in source)

        reached = [r for r in results if r.steps_to_target is not None and not r.diverged]
        return CellSummary(
            cell=cell, plan=plan, finals=finals,
            metric_median=median(metrics), metric_min=min(metrics, default=None),
            metric_max=max(metrics, default=None),
            diverged=sum(r.state == "diverged" for r in finals),
            tuning_diverged=sum(r.state == "diverged" for r in records if point_key(r.lr, r.seed) in tuning),
            reached=len(reached),
            # runs that never reached the target do not enter the median: the count ``reached`` says how many did
            steps_to_target=med("steps_to_target", reached), seconds_to_target=med("seconds_to_target", reached),
            opt_step_ms=med("opt_step_ms"), fwd_bwd_ms=med("fwd_bwd_ms"),
            state_bytes_per_param=median(r.state_bytes / r.params for r in results if r.params),
            peak_memory_mb=med("peak_memory_mb"),
        )

    def median_curve(self, cell: Cell, attr_steps: str, attr_values: str
                     ) -> tuple[list[int], list[float], list[float], list[float]]:
        """Median, min and max over the final seeds of a per-step curve, step by step (a seed that stopped early,
        diverged, counts only up to where it got)."""
        by_step: dict[int, list[float]] = {}
        for record in self.summaries[cell.study_name].finals:
            if record.result is None:
                continue
            for step, value in zip(getattr(record.result, attr_steps), getattr(record.result, attr_values)):
                if value is not None and math.isfinite(value):
                    by_step.setdefault(step, []).append(value)
        steps = sorted(by_step)
        return (steps, [statistics.median(by_step[s]) for s in steps], [min(by_step[s]) for s in steps],
                [max(by_step[s]) for s in steps])
