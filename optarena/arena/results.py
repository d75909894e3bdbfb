"""Stored runs turned into the numbers a report shows: per cell, the chosen lr and its results over seeds."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from .config import CompareConfig
from .plan import Cell, CellPlan, Outcome, better, point_key
from .storage import FAILURES, ArenaStorage, Record
from .task import Task

NUMERICAL_TIE = 1e-5
"""Results this close (relative) are one result: float32 noise. The 2-D functions ignore the seed, so their seed
spread is 0 and only this tells 12.934429 from 12.934431 as the same local minimum."""
METRIC_FORMAT = ".4g"
"""How the report prints a result. Two results printed alike are one result, whatever their spread."""


def as_printed(value: float, fmt: str) -> float:
    """``value`` as the report prints it with ``fmt``: what a sentence beside the printed number compares, so that
    the number and the sentence cannot disagree (2.04 % and 1.96 % both print as 2.0 %)."""
    return float(format(value, fmt)) + 0.0  # -0.0 prints as "-0"


def printed_alike(a: float, b: float) -> bool:
    """Whether two results print the same (``METRIC_FORMAT``): one result, whatever their spread."""
    return format(a, METRIC_FORMAT) == format(b, METRIC_FORMAT)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def no_worse(value: float, than: float, higher_is_better: bool) -> bool:
    """``value`` is at least as good as ``than``, up to ``NUMERICAL_TIE``."""
    slack = NUMERICAL_TIE * max(abs(value), abs(than))
    return value >= than - slack if higher_is_better else value <= than + slack


def relative_gap(higher_is_better: bool, ours: float, theirs: float) -> float | None:
    """How much better ``ours`` is than ``theirs``, relative to ``|theirs|`` (positive: better); None where
    ``theirs`` is 0 and ``ours`` is not (no relative gap to a zero)."""
    if theirs == 0:
        return 0.0 if ours == 0 else None
    return (1 if higher_is_better else -1) * (ours - theirs) / abs(theirs)


def median(values: Iterable[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(finite) if finite else None


def median_counting_divergence(metrics: list[float], diverged: int, higher_is_better: bool) -> float | None:
    """The median over seeds of a final metric, a diverged seed counting as worse than any result: None (no
    result) where the median falls on diverged seeds, as with two of three diverged."""
    ranked: list[float | None] = [*sorted(metrics, reverse=higher_is_better), *[None] * diverged]
    if not ranked:
        return None
    middle = ranked[(len(ranked) - 1) // 2: len(ranked) // 2 + 1]
    return None if None in middle else statistics.fmean(middle)


def spread_measured(a: CellSummary, b: CellSummary) -> bool:
    """Whether both results have a seed spread: at least two seeds each that ended with a result."""
    return min(a.with_result, b.with_result) >= 2


@dataclass
class CellSummary:
    cell: Cell
    plan: CellPlan
    finals: list[Record]
    """Runs at the chosen lr, one per seed (seed 0 included)."""
    metric_median: float | None
    """The median over the finals, a diverged seed counting as worse than any result (None if it falls there)."""
    metric_min: float | None
    metric_max: float | None
    """The range over the finals with a result: the seed spread (a diverged seed counts in the median only)."""
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
    initial_metric: float | None
    """The untrained model's metric (median over the finals' evaluations at step 0)."""
    higher_is_better: bool

    @property
    def runs(self) -> int:
        return len(self.finals)

    @property
    def with_result(self) -> int:
        """Finals that ended with a result (not diverged, not failed): the seeds a spread is measured over."""
        return sum(r.metric is not None for r in self.finals)

    @property
    def lost_to_divergence(self) -> bool:
        """No result because runs diverged: at the chosen lr, or at every tuning lr (no lr was chosen)."""
        return self.metric_median is None and bool(self.diverged or (self.plan.chosen_lr is None
                                                                      and self.tuning_diverged))

    @property
    def worst(self) -> float | None:
        """The worst metric among the seeds with a result: the edge of the seed spread on the losing side."""
        return self.metric_min if self.higher_is_better else self.metric_max

    def better_than(self, value: float) -> bool:
        """Whether this result's median is strictly better than ``value``."""
        if self.metric_median is None:
            return False
        return better(self.metric_median, value, self.higher_is_better)

    def ties(self, other: CellSummary) -> bool:
        """Two results tie when their difference lies inside the seed spread: either median inside the other's
        range over seeds, ``[min, max]`` (widened by ``NUMERICAL_TIE``), also as printed (a median printed on the
        printed edge of the other's range is inside it to the reader), or the two medians printed alike."""
        if self.metric_median is None or other.metric_median is None:
            return False
        if printed_alike(self.metric_median, other.metric_median):
            return True

        def inside(value: float, low: float, high: float) -> bool:
            if no_worse(value, low, True) and no_worse(value, high, False):
                return True
            value, low, high = (as_printed(x, METRIC_FORMAT) for x in (value, low, high))
            return low <= value <= high

        return (inside(self.metric_median, other.metric_min, other.metric_max)
                or inside(other.metric_median, self.metric_min, self.metric_max))

    def beats(self, other: CellSummary) -> bool:
        """Better than ``other`` and not tied with it (a result beats a run that has none)."""
        if other.metric_median is None:
            return self.metric_median is not None
        return self.better_than(other.metric_median) and not self.ties(other)

    def beats_beyond_spread(self, other: CellSummary) -> bool:
        """Better than ``other`` beyond a measured seed spread (both with results on two seeds or more), or
        ``other`` has no result: what "beaten beyond the seed spread" says."""
        return self.beats(other) and (other.metric_median is None or spread_measured(self, other))


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
        self._headline: dict[str, dict[str, CellSummary]] = {}
        self._planned_keys: dict[str, set[str]] = {}

    @classmethod
    def load(cls, config: CompareConfig, store: ArenaStorage) -> ResultSet:
        return cls(config, store.records(config.cells()))

    # -------------------------------------------------------------------------------------------- queries
    def in_plan(self, record: Record) -> bool:
        """Whether ``record`` is a run of the current plan (not of a seed beyond ``--seeds`` or an lr the tuning
        no longer chooses, say)."""
        name = record.cell.study_name
        if name not in self._planned_keys:
            self._planned_keys[name] = {point_key(*p) for p in self.summaries[name].plan.points}
        return point_key(record.lr, record.seed, record.wd) in self._planned_keys[name]

    @property
    def planned(self) -> list[Record]:
        """The stored runs of the current plan."""
        return [r for r in self.records if self.in_plan(r)]

    @property
    def failures(self) -> list[Record]:
        """The runs of the current plan that produced no result: what the failure count, the exit status and the
        report's "Runs that failed" cover (a failure of a point no longer planned counts no more)."""
        return [r for r in self.planned if r.state in FAILURES]

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

    def headline(self, task_spec: str) -> dict[str, CellSummary]:
        """Each optimizer's summary at the task's default batch size, in roster order (built once per task: the
        verdict and the claims ask for it per optimizer and per sentence)."""
        if task_spec not in self._headline:
            self._headline[task_spec] = {optimizer: summary for optimizer in self.config.optimizers
                                         if (summary := self.summary(task_spec, optimizer)) is not None}
        return self._headline[task_spec]

    def headline_cells(self) -> list[Cell]:
        """Cells at each task's default batch size: the ones most tables and plots show."""
        return [c for c in self.cells if c.batch_size == self.config.default_batch_size(self.task(c))]

    def at_lr(self, cell: Cell, lr: float, seed: int = 0) -> Record | None:
        for record in self.records_of(cell):
            if point_key(record.lr, record.seed, record.wd) == point_key(lr, seed):
                return record
        return None

    # ------------------------------------------------------------------------------------------ summaries
    def _summarise(self, cell: Cell) -> CellSummary:
        records = self.records_of(cell)
        finished = {point_key(r.lr, r.seed, r.wd): Outcome(r.lr, r.seed, r.metric, r.wd) for r in records}
        plan = self.config.plan(cell, finished)
        chosen = point_key(plan.chosen_lr, 0, plan.chosen_wd) if plan.chosen_lr is not None else None
        finals = sorted((r for r in records if r.seed < self.config.seeds and point_key(r.lr, 0, r.wd) == chosen),
                        key=lambda r: r.seed)
        tuning = {point_key(lr, 0, wd) for lr, wd in plan.tuning}
        results = [r.result for r in finals if r.result is not None]
        metrics = [r.metric for r in finals if r.metric is not None]

        def med(attr: str, source: list = results) -> float | None:
            return median(getattr(r, attr) for r in source)

        reached = [r for r in results if r.steps_to_target is not None and not r.diverged]
        diverged = sum(r.state == "diverged" for r in finals)
        return CellSummary(
            cell=cell, plan=plan, finals=finals,
            metric_median=median_counting_divergence(metrics, diverged, cell.higher_is_better),
            metric_min=min(metrics, default=None),
            metric_max=max(metrics, default=None),
            diverged=diverged,
            tuning_diverged=sum(r.state == "diverged" for r in records if point_key(r.lr, r.seed, r.wd) in tuning),
            reached=len(reached),
            # runs that never reached the target do not enter the median: the count ``reached`` says how many did
            steps_to_target=med("steps_to_target", reached), seconds_to_target=med("seconds_to_target", reached),
            opt_step_ms=med("opt_step_ms"), fwd_bwd_ms=med("fwd_bwd_ms"),
            state_bytes_per_param=median(r.state_bytes / r.params for r in results if r.params),
            peak_memory_mb=med("peak_memory_mb"),
            initial_metric=median(r.eval_metric[0] for r in results if r.eval_steps and r.eval_steps[0] == 0),
            higher_is_better=cell.higher_is_better,
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
