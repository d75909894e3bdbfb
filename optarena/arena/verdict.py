"""The arena's answer, computed from the stored runs: the winner of each task, AlgoPerf-style scores across tasks,
how wide a learning-rate range each optimizer tolerates, its memory, and the pick that follows from those numbers.

Two optimizers tie when the difference of their results lies inside the seed spread (:meth:`CellSummary.ties`).
Where one setting is compared with a single run (a neighbouring grid lr for the lr plateau, RLion's run at AdamW's lr
in the claims), the run counts as level when it is no worse than the setting's worst seed.
Scoring follows the MLCommons AlgoPerf rules (Dahl et al. 2023, arXiv 2306.07179): per task and optimizer the
ratio ``r`` of its time to the task's target over the best time of any optimizer (a miss is ``r = ∞``); the
performance profile ``ρ(τ)`` is the fraction of tasks with ``r ≤ τ``; the score is its area over ``τ ∈ [1, 4]``,
normalised to 1 (first to the target on every task).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from .plan import better, point_key, stress_lrs
from .results import (
    METRIC_FORMAT,
    CellSummary,
    ResultSet,
    as_printed,
    median,
    no_worse,
    printed_alike,
    relative_gap,
    spread_measured,
)

TAU_MAX = 4.0
LEARNED_FRACTION = 0.05
"""A result that closes less than this fraction of the way from the untrained model to the task's best result
counts as "never learned"."""


# ------------------------------------------------------------------------------------------------------- per task
def best_result(summaries: dict[str, CellSummary]) -> float | None:
    values = [s.metric_median for s in summaries.values() if s.metric_median is not None]
    if not values:
        return None
    return max(values) if next(iter(summaries.values())).higher_is_better else min(values)


def learned(summary: CellSummary, best: float | None, value: float | None = None) -> bool | None:
    """Whether the tuned result (or ``value``, one of its seeds) improves on the untrained model by at least
    ``LEARNED_FRACTION`` of the way to the task's best result (modular_add's chance accuracy, a loss that never left
    its start, count as not learned); None where there is nothing to judge: no result (diverged, failed), or no
    untrained result to measure from (workloads evaluate only after training): no verdict leans on it then."""
    value = summary.metric_median if value is None else value
    if value is None:
        return None
    start = summary.initial_metric
    if start is None or best is None:
        return None
    if not better(value, start, summary.higher_is_better):
        return False
    return best == start or (value - start) / (best - start) >= LEARNED_FRACTION


def never_learned(results: ResultSet, spec: str, optimizer: str) -> bool:
    summaries = results.headline(spec)
    return optimizer in summaries and learned(summaries[optimizer], best_result(summaries)) is False


@dataclass
class TaskVerdict:
    task: str
    metric: str
    higher_is_better: bool
    ranking: list[tuple[str, float]]
    """(optimizer, median) with a result, best first."""
    tied: list[str]
    """The winner and every optimizer whose result ties it (inside the seed spread, or equal as printed)."""
    margin: float | None
    """The winner's median over the runner-up's, relative to the runner-up's (positive: better); None where the
    runner-up's is 0."""
    runner_up: str | None
    without_result: dict[str, str] = field(default_factory=dict)
    """Optimizers with no result on the task, and why (diverged, crashed, ...)."""
    one_seed: bool = False
    """The winner or the runner-up has a result on one seed only: no spread was measured."""

    @property
    def winner(self) -> str | None:
        return self.ranking[0][0] if self.ranking else None

    @property
    def is_tie(self) -> bool:
        return self.runner_up is not None and self.runner_up in self.tied

    @property
    def margin_text(self) -> str:
        """The margin in percent; an equal result reads +0.0, never -0.0. A win (not a tie) whose margin rounds to
        +0.0 % gets two significant digits: 1.234 vs 1.235 is +0.0081 %, not a win by +0.0 %."""
        if self.margin is None:
            return "–"
        percent = round(100 * self.margin, 1) + 0.0
        if percent == 0 and self.margin != 0 and not self.is_tie:  # two significant digits, never 1e-05
            digits = 1 - math.floor(math.log10(abs(100 * self.margin)))
            return f"{100 * self.margin:+.{digits}f} %"
        return f"{percent:+.1f} %"

    @property
    def difference(self) -> str:
        if self.runner_up is None:
            return "the only result" if self.ranking else "no result"
        values = dict(self.ranking)
        if printed_alike(values[self.winner], values[self.runner_up]):
            return "equal as printed"
        if self.one_seed:
            return "one seed: no spread measured"
        return "inside the seed spread" if self.is_tie else "beyond the seed spread"

    def sentence(self) -> str:
        direction = "higher" if self.higher_is_better else "lower"
        text = f"{self.task} ({self.metric}, {direction} is better): "
        missing = "; no result: " + ", ".join(f"{n} ({why})" for n, why in self.without_result.items()) \
            if self.without_result else ""
        if not self.ranking:
            return text + "no optimizer produced a result" + missing
        name, value = self.ranking[0]
        if self.runner_up is None:
            return text + f"{name} {value:{METRIC_FORMAT}}, the only result" + missing
        second = dict(self.ranking)[self.runner_up]
        margin = self.margin_text if self.margin is not None else f"no relative margin: {self.runner_up} at 0"
        gap = (f"{name} {value:{METRIC_FORMAT}} vs {self.runner_up} {second:{METRIC_FORMAT}} ({margin}), "
               f"{self.difference}")
        if self.is_tie:
            return text + f"tie between {', '.join(self.tied)}: {gap}" + missing
        others = [n for n in self.tied if n != name]
        also = f"; {', '.join(others)} also within the seed spread of {name}" if others else ""
        return text + f"{name} best: {gap}{also}" + missing


def task_verdict(results: ResultSet, spec: str) -> TaskVerdict:
    task = results.tasks[spec]
    summaries = results.headline(spec)
    ranked = sorted((s.metric_median, name) for name, s in summaries.items() if s.metric_median is not None)
    ranking = [(name, value) for value, name in (reversed(ranked) if task.higher_is_better else ranked)]
    missing = {name: _why_no_result(results, s) for name, s in summaries.items() if s.metric_median is None}
    if not ranking:
        return TaskVerdict(task.name, task.metric, task.higher_is_better, [], [], None, None, missing)
    winner = summaries[ranking[0][0]]
    tied = [name for name, _ in ranking if name == ranking[0][0] or summaries[name].ties(winner)]
    runner_up = ranking[1][0] if len(ranking) > 1 else None
    margin = relative_gap(task.higher_is_better, ranking[0][1], ranking[1][1]) if runner_up else None
    one_seed = runner_up is not None and not spread_measured(winner, summaries[runner_up])
    return TaskVerdict(task.name, task.metric, task.higher_is_better, ranking, tied, margin, runner_up, missing,
                       one_seed)


def _why_no_result(results: ResultSet, summary: CellSummary) -> str:
    """What became of an optimizer's runs on a task without a result: their states (diverged, error, ...)."""
    runs = summary.finals or results.records_of(summary.cell)
    states = sorted({r.state for r in runs if r.state != "complete"})
    return " / ".join(states) or "not run yet"


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
        times = {name: time_to_target(s, attr) for name, s in results.headline(spec).items()}
        best = min(times.values(), default=math.inf)
        # a best time of 0 (the untrained model met the target on most seeds) makes any later time infinitely
        # slower by the ratio: those count as misses, a target the task should not have had
        out[task.name] = {name: (math.inf if math.isinf(t) else 1.0 if t == best else t / best if best > 0 else
                                 math.inf) for name, t in times.items()}
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
    """The contiguous run of learning rates around the chosen one whose seed-0 result is no worse than the chosen
    setting's worst seed: the range over which the lr hardly matters. The tuning grid counts, and the stress runs
    (seed 0, the task's decay) beyond its edges: they can extend or close the range there. A stress lr inside the
    grid would put one more single run between two grid points and shrink the plateau to whatever noise lies
    between them (RLion's 0.02 decades on one task)."""
    chosen, worst = summary.plan.chosen_lr, summary.worst
    grid_lrs = summary.plan.tuning_lrs
    if chosen is None or worst is None or not grid_lrs:
        return None
    outside = [lr for lr in stress_lrs() if lr < min(grid_lrs) or lr > max(grid_lrs)]
    ran = {point_key(lr, 0): (lr, record) for lr in [*grid_lrs, *outside]
           if (record := results.at_lr(summary.cell, lr)) is not None}
    grid = sorted(ran.values(), key=lambda item: item[0])
    keys = [point_key(lr, 0) for lr, _ in grid]
    if point_key(chosen, 0) not in keys:
        return None
    good = [record.metric is not None and no_worse(record.metric, worst, summary.higher_is_better)
            for _, record in grid]
    low = high = keys.index(point_key(chosen, 0))
    while low > 0 and good[low - 1]:
        low -= 1
    while high < len(grid) - 1 and good[high + 1]:
        high += 1
    return Plateau(math.log10(grid[high][0] / grid[low][0]), high - low + 1, low == 0 or high == len(grid) - 1)


def plateau_width(widths: list[float]) -> float | None:
    """The median of an optimizer's plateau widths over tasks, to the tenth of a decade it is printed to and compared
    at: the grid's points are rounded to 4 significant digits, so two plateaus of one half-decade step read 0.50004 and
    0.49996 decades (the verdict then named one of two optimizers printed with 0.5 each as the most robust)."""
    width = median(round(w, 1) for w in widths)  # each as printed, or one grid step splits a median of two
    return None if width is None else round(width, 1)


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
    """Tasks on which it beats AdamW beyond the seed spread, or AdamW diverged (runs that failed or have not run
    are no evidence)."""
    never_learned: list[str]
    ahead_of_adamw_on_one_seed: list[str] = field(default_factory=list)
    """Tasks on which it is ahead of AdamW where one of them has a result on one seed only: no spread measured."""


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
        plateaus, summaries, beats, one_seed, blank = [], [], [], [], []
        for spec in results.tasks:
            summaries_here = results.headline(spec)
            if name not in summaries_here:
                continue
            s = summaries_here[name]
            summaries.append(s)
            task = results.tasks[spec].name
            # every lr leaves a model that never learned where it was: a plateau of not learning, not robustness;
            # and a task without a result (None) has no plateau either
            best = best_result(summaries_here)
            if (outcome := learned(s, best)) is False:
                blank.append(task)
            # with a seed that did not learn, any lr is "no worse than the worst seed": noise, not robustness
            # (yolo_shapes: RLion's seeds 0.0006 to 0.215 read as "2.0 decades"), so no plateau is counted; nor
            # where learning cannot be judged
            elif outcome and s.worst is not None and learned(s, best, s.worst) \
                    and (plateau := lr_plateau(results, s)) is not None:
                plateaus.append(plateau.decades)
            adamw = summaries_here.get("adamw")
            if name != "adamw" and adamw is not None and _has_evidence(adamw) and s.beats(adamw):
                (beats if s.beats_beyond_spread(adamw) else one_seed).append(task)
        standings[name] = OptimizerStanding(
            name, score(ratios_steps, name), score(ratios_seconds, name),
            first=sum(name in t.tied for t in tasks), tasks=len(summaries),
            plateau_decades=plateau_width(plateaus),
            state_bytes_per_param=median(s.state_bytes_per_param for s in summaries),
            peak_memory_mb=median(s.peak_memory_mb for s in summaries), beats_adamw=beats, never_learned=blank,
            ahead_of_adamw_on_one_seed=one_seed)
    if not any(s.score_steps for s in standings.values()):  # no target reached anywhere: no score to show
        for standing in standings.values():
            standing.score_steps = standing.score_seconds = None
    return Verdict(tasks, standings, ratios_steps, ratios_seconds, pick_paragraph(results, tasks, standings))


def _has_evidence(summary: CellSummary) -> bool:
    """A result, or runs that diverged: an AdamW whose runs failed or have not run yet is beaten by nobody."""
    return summary.metric_median is not None or summary.lost_to_divergence


def _tied_with_on_every_task(results: ResultSet, candidate: str, best: str) -> bool:
    """``best`` never beats ``candidate`` (beyond the seed spread, or ahead where one has one seed only) on any task
    where both have a summary."""
    for spec in results.tasks:
        summaries = results.headline(spec)
        if candidate in summaries and best in summaries and summaries[best].beats(summaries[candidate]):
            return False
    return True


def pick_paragraph(results: ResultSet, tasks: list[TaskVerdict], standings: dict[str, OptimizerStanding]) -> str:
    """The "Pick" paragraph, every clause computed from the standings above it."""
    if not standings or not any(t.ranking for t in tasks):
        return "Pick: no results to pick from yet."
    scored = any(s.score_steps for s in standings.values())  # some optimizer reached some task's target

    def rank(s: OptimizerStanding) -> tuple[float, int]:
        """The score as printed, then the tasks first or tied for first."""
        return (as_printed(s.score_steps or 0.0, ".2f") if scored else 0.0, s.first)

    ordered = sorted(standings.values(), key=rank, reverse=True)  # stable: roster order breaks exact ties
    best = ordered[0]
    finals = f"best or tied for best final result on {best.first} of {best.tasks} tasks"
    if scored:
        seconds = {s.name: as_printed(s.score_seconds or 0.0, ".2f") for s in ordered}
        faster = [n for n, v in seconds.items() if v > seconds[best.name]]
        in_seconds = f"{seconds[best.name]:.2f} in seconds"
        if faster:  # seconds count compilation and the machine's noise: said, but steps decide
            in_seconds += (f", where {', '.join(faster)} score{'s' if len(faster) == 1 else ''} higher (up to "
                           f"{max(seconds[n] for n in faster):.2f})")
        sentences = [f"Pick {best.name}: the fastest to the tasks' targets{' in steps' if faster else ''} "
                     f"(AlgoPerf-style score {best.score_steps:.2f} in steps, {in_seconds}; 1 = first to every "
                     f"target), and {finals}."]
    else:
        why = ("No optimizer reached any task's target" if any(t.target is not None for t in results.tasks.values())
               else "No task has a target")
        sentences = [f"Pick {best.name}: {finals}. {why}, so there is no AlgoPerf-style score."]
    level = [s.name for s in ordered[1:] if rank(s) == rank(best)]
    if level:
        sentences.append(f"Level with it{' on both counts' if scored else ''}: {', '.join(level)}.")
    widths = {n: s.plateau_decades for n, s in standings.items() if s.plateau_decades is not None}
    if widths:
        widest = max(widths.values())
        robust = [n for n, w in widths.items() if w == widest]
        each = "it" if len(robust) == 1 else "each"
        sentences.append(f"Most robust to the learning rate: {', '.join(robust)} (results no worse than the chosen "
                         f"setting's worst seed over {widest:.1f} decades of lr, median over the tasks {each} "
                         "learned on every seed)." if widest > 0
                         else "No optimizer's result holds up at a neighbouring grid lr (median over the tasks each "
                              "learned on every seed): each needs its tuned learning rate.")
    if best.state_bytes_per_param is not None:
        def state_bytes(s: OptimizerStanding) -> float:
            return as_printed(s.state_bytes_per_param, ".2f")

        peers = [s for s in standings.values() if s.state_bytes_per_param is not None
                 and state_bytes(s) < state_bytes(best) and _tied_with_on_every_task(results, s.name, best.name)]
        if peers:
            cheapest = min(peers, key=state_bytes)
            sentences.append(f"Cheapest in memory among those {best.name} never beats: "
                             f"{cheapest.name} ({cheapest.state_bytes_per_param:.2f} B/param of state against "
                             f"{best.state_bytes_per_param:.2f}).")
        else:
            sentences.append(f"No optimizer that {best.name} never beats keeps less state than "
                             f"its {best.state_bytes_per_param:.2f} B/param.")
    if "adamw" in standings and len(standings) > 1:
        winners = {n: s.beats_adamw for n, s in standings.items() if s.beats_adamw}
        # tasks where AdamW's runs failed or have not run: nothing there is compared with it
        baselines = [(results.headline(spec)["adamw"], t) for spec, t in zip(results.tasks, tasks)
                     if "adamw" in results.headline(spec)]
        unknown = [t for adamw, t in baselines if not _has_evidence(adamw)]
        if winners:
            sentences.append("On the final metric, AdamW is beaten beyond the seed spread by " + "; ".join(
                f"{n} on {', '.join(t)}" for n, t in winners.items()) + ".")
        elif len(unknown) < len(baselines):  # AdamW has a result (or diverged) somewhere to compare with
            sentences.append("On the final metric, no optimizer beats the AdamW baseline beyond the seed spread on "
                             "any task" + (" where AdamW has a result." if unknown else
                                           "." if best.name == "adamw" or not scored else
                                           f": {best.name} is picked for its speed to the targets, and AdamW is "
                                           "as good a choice for the end result."))
        if unknown:
            sentences.append("No AdamW result to compare with on " + ", ".join(
                f"{t.task} ({t.without_result['adamw']})" for t in unknown) + ".")
        ahead = {n: s.ahead_of_adamw_on_one_seed for n, s in standings.items() if s.ahead_of_adamw_on_one_seed}
        if ahead:
            sentences.append("Ahead of AdamW where a result stands on one seed (no spread measured): " + "; ".join(
                f"{n} on {', '.join(t)}" for n, t in ahead.items()) + ".")
    return " ".join(sentences)
