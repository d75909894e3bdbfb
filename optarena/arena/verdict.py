"""The arena's answer, computed from the stored runs: the winner of each task, AlgoPerf-style scores across tasks,
how wide a learning-rate range each optimizer tolerates, its memory, and the pick that follows from those numbers.

Ties follow one rule everywhere (:meth:`CellSummary.ties`): a difference inside the seed spread is no difference.
Scoring follows the MLCommons AlgoPerf rules (Dahl et al. 2023, arXiv 2306.07179): per task and optimizer the
ratio ``r`` of its time to the task's target over the best time of any optimizer (a miss is ``r = ∞``); the
performance profile ``ρ(τ)`` is the fraction of tasks with ``r ≤ τ``; the score is its area over ``τ ∈ [1, 4]``,
normalised to 1 (first to the target on every task).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from .plan import point_key
from .results import CellSummary, ResultSet, median

TAU_MAX = 4.0
LEARNED_FRACTION = 0.05
"""A result that closes less than this fraction of the way from the untrained model to the task's best result
counts as "never learned"."""


# ------------------------------------------------------------------------------------------------------- per task
def headline(results: ResultSet, spec: str) -> dict[str, CellSummary]:
    """Each optimizer's summary at the task's default batch size, in roster order."""
    out = {}
    for optimizer in results.config.optimizers:
        summary = results.summary(spec, optimizer)
        if summary is not None:
            out[optimizer] = summary
    return out


def best_result(summaries: dict[str, CellSummary]) -> float | None:
    values = [s.metric_median for s in summaries.values() if s.metric_median is not None]
    if not values:
        return None
    return max(values) if next(iter(summaries.values())).higher_is_better else min(values)


def learned(summary: CellSummary, best: float | None) -> bool:
    """Whether the tuned result improves on the untrained model by at least ``LEARNED_FRACTION`` of the way to the
    task's best result (modular_add's chance accuracy, a loss that never left its start, count as not learned)."""
    if summary.metric_median is None:
        return False
    start = summary.initial_metric
    if start is None or best is None or best == start:
        return True  # nothing to measure learning against
    progress = (summary.metric_median - start) / (best - start)
    return progress >= LEARNED_FRACTION


def never_learned(results: ResultSet, spec: str, optimizer: str) -> bool:
    summaries = headline(results, spec)
    return optimizer in summaries and not learned(summaries[optimizer], best_result(summaries))


@dataclass
class TaskVerdict:
    task: str
    metric: str
    higher_is_better: bool
    ranking: list[tuple[str, float]]
    """(optimizer, median) with a result, best first."""
    tied: list[str]
    """The winner and every optimizer whose result ties it (inside the seed spread)."""
    margin: float | None
    """The winner's median over the runner-up's, relative to the runner-up's (positive: better)."""
    runner_up: str | None
    without_result: list[str] = field(default_factory=list)

    @property
    def winner(self) -> str | None:
        return self.ranking[0][0] if self.ranking else None

    @property
    def is_tie(self) -> bool:
        return len(self.tied) > 1

    def sentence(self) -> str:
        if not self.ranking:
            return f"{self.task}: no optimizer produced a result"
        (name, value), direction = self.ranking[0], "higher" if self.higher_is_better else "lower"
        text = f"{self.task} ({self.metric}, {direction} is better): "
        if self.runner_up is None:
            return text + f"{name} {value:.4g}, the only result"
        second = dict(self.ranking)[self.runner_up]
        gap = f"{name} {value:.4g} vs {self.runner_up} {second:.4g} ({100 * self.margin:+.1f} %)"
        if self.is_tie:
            return text + f"tie between {', '.join(self.tied)}: {gap}, inside the seed spread"
        return text + f"{name} wins: {gap}, beyond the seed spread"


def task_verdict(results: ResultSet, spec: str) -> TaskVerdict:
    task = results.tasks[spec]
    summaries = headline(results, spec)
    sign = 1 if task.higher_is_better else -1
    ranked = sorted((s.metric_median, name) for name, s in summaries.items() if s.metric_median is not None)
    ranking = [(name, value) for value, name in (reversed(ranked) if task.higher_is_better else ranked)]
    if not ranking:
        return TaskVerdict(task.name, task.metric, task.higher_is_better, [], [], None, None, list(summaries))
    winner = summaries[ranking[0][0]]
    tied = [name for name, _ in ranking if name == ranking[0][0] or summaries[name].ties(winner)]
    runner_up = ranking[1][0] if len(ranking) > 1 else None
    margin = None
    if runner_up is not None:
        second = ranking[1][1]
        margin = sign * (ranking[0][1] - second) / max(abs(second), 1e-12)
    missing = [name for name, s in summaries.items() if s.metric_median is None]
    return TaskVerdict(task.name, task.metric, task.higher_is_better, ranking, tied, margin, runner_up, missing)


# ---------------------------------------------------------------------------------------- AlgoPerf-style scores
def time_to_target(summary: CellSummary, attr: str) -> float:
    """Median over the seeds of ``steps_to_target`` or ``seconds_to_target``, a seed that missed counting as ∞."""
    times = []
    for record in summary.finals:
        value = getattr(record.result, attr) if record.result is not None and not record.result.diverged else None
        times.append(math.inf if value is None else float(value))
    return statistics.median(times) if times else math.inf


def performance_ratios(results: ResultSet, attr: str) -> dict[str, dict[str, float]]:
    """Per task with a target (by name), per optimizer: its time to the target over the task's best time."""
    out = {}
    for spec, task in results.tasks.items():
        if task.target is None:
            continue
        times = {name: time_to_target(s, attr) for name, s in headline(results, spec).items()}
        best = min(times.values(), default=math.inf)
        # a target met at step 0 (the untrained model) gives a best time of 0: every optimizer then ties at 1
        out[task.name] = {name: (math.inf if math.isinf(t) else 1.0 if t == best else t / best)
                          for name, t in times.items()}
    return out


def profile(ratios: dict[str, dict[str, float]], optimizer: str, tau: float) -> float:
    """ρ(τ): the fraction of tasks on which ``optimizer`` reached the target within τ times the best time."""
    if not ratios:
        return 0.0
    return sum(by_opt.get(optimizer, math.inf) <= tau for by_opt in ratios.values()) / len(ratios)


def score(ratios: dict[str, dict[str, float]], optimizer: str) -> float | None:
    """The area under ρ over τ ∈ [1, TAU_MAX], divided by TAU_MAX − 1 (exact: ρ is a step function)."""
    if not ratios:
        return None
    area = sum(max(0.0, TAU_MAX - r) for by_opt in ratios.values() if (r := by_opt.get(optimizer, math.inf)) <= TAU_MAX)
    return area / ((TAU_MAX - 1) * len(ratios))


# ----------------------------------------------------------------------------------------------- robustness
@dataclass(frozen=True)
class Plateau:
    decades: float
    """log10 of the widest and narrowest learning rates of the plateau around the chosen one."""
    points: int
    open_ended: bool
    """The plateau reaches the edge of the tuning grid: it may be wider."""


def lr_plateau(results: ResultSet, summary: CellSummary) -> Plateau | None:
    """The contiguous run of tuning-grid learning rates around the chosen one whose seed-0 result is no worse than
    the chosen setting's worst seed: the range over which the lr hardly matters."""
    chosen, worst = summary.plan.chosen_lr, summary.worst
    if chosen is None or worst is None:
        return None
    grid = sorted(summary.plan.tuning_lrs)
    keys = [point_key(lr, 0) for lr in grid]
    if point_key(chosen, 0) not in keys:
        return None
    good = []
    for lr in grid:
        record = results.at_lr(summary.cell, lr)
        metric = record.metric if record is not None else None
        good.append(metric is not None and (metric >= worst if summary.higher_is_better else metric <= worst))
    low = high = keys.index(point_key(chosen, 0))
    while low > 0 and good[low - 1]:
        low -= 1
    while high < len(grid) - 1 and good[high + 1]:
        high += 1
    return Plateau(math.log10(grid[high] / grid[low]), high - low + 1, low == 0 or high == len(grid) - 1)


# --------------------------------------------------------------------------------------------------- overview
@dataclass
class OptimizerStanding:
    name: str
    score_steps: float | None
    score_seconds: float | None
    first: int
    """Tasks it wins or ties for first."""
    tasks: int
    plateau_decades: float | None
    """Median over tasks of its learning-rate plateau's width."""
    state_bytes_per_param: float | None
    peak_memory_mb: float | None
    beats_adamw: list[str]
    """Tasks on which it beats AdamW beyond the seed spread."""
    never_learned: list[str]


@dataclass
class Verdict:
    tasks: list[TaskVerdict]
    standings: dict[str, OptimizerStanding]
    ratios_steps: dict[str, dict[str, float]]
    ratios_seconds: dict[str, dict[str, float]]
    pick: str


def compute_verdict(results: ResultSet) -> Verdict:
    tasks = [task_verdict(results, spec) for spec in results.tasks]
    ratios_steps = performance_ratios(results, "steps_to_target")
    ratios_seconds = performance_ratios(results, "seconds_to_target")
    standings = {}
    for name in results.config.optimizers:
        plateaus, summaries, beats, blank = [], [], [], []
        for spec in results.tasks:
            summaries_here = headline(results, spec)
            if name not in summaries_here:
                continue
            s = summaries_here[name]
            summaries.append(s)
            if (plateau := lr_plateau(results, s)) is not None:
                plateaus.append(plateau.decades)
            adamw = summaries_here.get("adamw")
            if name != "adamw" and adamw is not None and s.beats(adamw):
                beats.append(results.tasks[spec].name)
            if not learned(s, best_result(summaries_here)):
                blank.append(results.tasks[spec].name)
        standings[name] = OptimizerStanding(
            name, score(ratios_steps, name), score(ratios_seconds, name),
            first=sum(name in t.tied for t in tasks), tasks=len(summaries),
            plateau_decades=median(plateaus), state_bytes_per_param=median(s.state_bytes_per_param for s in summaries),
            peak_memory_mb=median(s.peak_memory_mb for s in summaries), beats_adamw=beats, never_learned=blank)
    return Verdict(tasks, standings, ratios_steps, ratios_seconds, pick_paragraph(results, tasks, standings))


def _tied_with_on_every_task(results: ResultSet, candidate: str, best: str) -> bool:
    """``candidate`` is never beaten by ``best`` beyond the seed spread on any task where both have a summary."""
    for spec in results.tasks:
        summaries = headline(results, spec)
        if candidate in summaries and best in summaries and summaries[best].beats(summaries[candidate]):
            return False
    return True


def pick_paragraph(results: ResultSet, tasks: list[TaskVerdict], standings: dict[str, OptimizerStanding]) -> str:
    """The "Pick" paragraph, every clause computed from the standings above it."""
    if not standings or not any(t.ranking for t in tasks):
        return "Pick: no results to pick from yet."

    def rank(s: OptimizerStanding) -> tuple[float, int]:
        return (s.score_steps if s.score_steps is not None else -1.0, s.first)

    ordered = sorted(standings.values(), key=rank, reverse=True)  # stable: roster order breaks exact ties
    best = ordered[0]
    scored = best.score_steps is not None
    why = (f"the best AlgoPerf-style score ({best.score_steps:.2f} in steps, {best.score_seconds:.2f} in seconds) "
           if scored else "")
    sentences = [f"Pick {best.name}: {why}{'and ' if scored else ''}first or tied for first on {best.first} of "
                 f"{best.tasks} tasks."]
    level = [s for s in ordered[1:] if rank(s) == rank(best)]
    if level:
        sentences.append(f"Level with it on both counts: {', '.join(s.name for s in level)}.")
    widths = {n: s.plateau_decades for n, s in standings.items() if s.plateau_decades is not None}
    if widths:
        widest = max(widths.values())
        robust = [n for n, w in widths.items() if w == widest]
        sentences.append(f"Most robust to the learning rate: {', '.join(robust)} (results within the seed spread "
                         f"of the best over {widest:.1f} decades of lr, median over tasks)." if widest > 0 else
                         "No optimizer's result stays within its seed spread at a neighbouring grid lr (median over "
                         "tasks): each needs its tuned learning rate.")
    peers = [s for s in standings.values() if _tied_with_on_every_task(results, s.name, best.name)
             and s.state_bytes_per_param is not None]
    if peers:
        cheapest = min(peers, key=lambda s: s.state_bytes_per_param)
        if cheapest.name == best.name:
            sentences.append(f"Nothing that ties {best.name} on every task keeps less state "
                             f"({best.state_bytes_per_param:.2f} B/param).")
        else:
            sentences.append(f"Cheapest in memory among those never beaten by {best.name} beyond the seed spread: "
                             f"{cheapest.name} ({cheapest.state_bytes_per_param:.2f} B/param of state against "
                             f"{best.state_bytes_per_param:.2f}).")
    if "adamw" in standings:
        winners = {n: s.beats_adamw for n, s in standings.items() if s.beats_adamw}
        if not winners:
            sentences.append("No optimizer beats the AdamW baseline beyond the seed spread on any task: on this "
                             "workload, AdamW is as good a choice as any here.")
        else:
            sentences.append("Beyond the seed spread, AdamW is beaten by " + "; ".join(
                f"{n} on {', '.join(t)}" for n, t in winners.items()) + ".")
    return " ".join(sentences)
