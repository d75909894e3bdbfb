"""The fair protocol: which runs a comparison needs, decided from what has finished so far.

For every *cell* (task × batch size × optimizer) the protocol is, after DeepOBS (Schmidt et al. 2021) and AlgoPerf:

1. **Tune** on seed 0: the learning rate on a log grid of half-decade steps, ``default · 10^(k/2)``, centred on the
   optimizer's documented default. While the best point lies on an edge of the grid, the grid grows by one step
   on that side (up to the budget's ``max_radius``, 1000× either way), so a good learning rate is not missed
   because a default was far off (Rosenbrock wants AdamW at ~0.3, 300× its default).
2. **Select** the learning rate with the best validation metric after the last step (diverged runs never win).
3. **Repeat** the selected setting over the remaining seeds; the report gives median and spread.

With ``--tune lr,weight_decay`` step 1 is instead a fixed budget of runs (``Budget.search_trials``) over a declared
space of learning rate and weight decay (:func:`search_points`), the same for every optimizer, as in AlgoPerf's
external-tuning rules; the decay is searched at AdamW's scale and each optimizer gets its published translation.

Optimizers whose ``OptimizerInfo.stress`` is set (Lion, RLion) also run at AdamW-sized learning rates (seed 0, the
"stress" runs), because published claims are about exactly that. Every run is one (lr, seed) *point*; a plan lists
the points still missing, so re-running a finished comparison plans nothing and an interrupted one resumes where
it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..info import LOOKAHEAD_PREFIX, base_optimizer_info

STRESS_STEPS = (0, 1, 2, 3, 4)
"""AdamW's default lr times 10^(k/2): 1e-3 to 0.1 — AdamW-sized learning rates, no warm-up, up to where Lion
diverges on the quick suite (digits_mlp at 0.1), so that "RLion does not diverge where Lion does" is decided."""


@dataclass(frozen=True)
class Budget:
    name: str
    grid: tuple[int, ...]
    """Initial grid exponents k (lr = default · 10^(k/2))."""
    seeds: int
    max_radius: int
    """The grid may grow up to ``|k| <= max_radius`` (6: 1000× either side of the default)."""
    run_timeout: float
    """Seconds one run may take before its worker is stopped and the run recorded as timed out."""
    search_trials: int
    """Tuning runs per cell with ``--tune lr,weight_decay``: a fixed budget, the same for every optimizer."""


BUDGET_PRESETS = {
    "tiny": Budget("tiny", grid=(-1, 0, 1), seeds=2, max_radius=2, run_timeout=120.0, search_trials=4),
    "quick": Budget("quick", grid=(-1, 0, 1), seeds=3, max_radius=6, run_timeout=600.0, search_trials=9),
    "full": Budget("full", grid=(-2, -1, 0, 1, 2), seeds=5, max_radius=6, run_timeout=3600.0, search_trials=16),
}

DEFAULT_OPTIMIZERS = {
    "tiny": ("adamw", "lion", "rlion", "adan"),
    "quick": ("adamw", "lion", "rlion", "adan", "muon", "schedulefree_adamw"),
    "full": ("adamw", "lion", "rlion", "adan", "muon", "schedulefree_adamw", "ademamix", "amos", "adax", "adafactor",
             "nesterov", "lookahead_adamw"),
}


def grid_lr(default_lr: float, k: int) -> float:
    """The grid point ``default · 10^(k/2)``, rounded to 4 significant digits so that keys are stable."""
    return float(f"{default_lr * 10 ** (k / 2):.4g}")


def default_lr(optimizer: str) -> float:
    return base_optimizer_info(optimizer).default_lr


def stress_lrs() -> list[float]:
    """The AdamW-sized learning rates Lion and RLion also run at."""
    return [grid_lr(default_lr("adamw"), k) for k in STRESS_STEPS]


TUNABLE = ("lr", "weight_decay")
LR_SPAN, WD_SPAN = 1.5, 1.0
"""With ``--tune lr,weight_decay``: the search space is lr in default·10^[−1.5, 1.5] and the AdamW-scale weight decay
in base·10^[−1, 1] (base: the task's decay, or AdamW's default 0.01 for a task without one)."""


def point_key(lr: float, seed: int, wd: float | None = None) -> str:
    """A run's identity in its study. ``wd`` is the AdamW-scale weight decay where it was tuned (None: the task's)."""
    key = f"lr={lr:.4g}|seed={seed}"
    return key if wd is None else f"{key}|wd={wd:.4g}"


def _halton(index: int, base: int) -> float:
    value, fraction = 0.0, 1.0
    while index:
        fraction /= base
        index, digit = divmod(index, base)
        value += digit * fraction
    return value


def search_points(default: float, base_wd: float, trials: int) -> list[tuple[float, float]]:
    """The (lr, AdamW-scale weight decay) points of a fixed-budget search, the same in relative terms for every
    optimizer (AlgoPerf's external tuning samples its space quasi-randomly too): the defaults first, then a Halton
    sequence (bases 2 and 3) over log lr and log wd."""
    points = []
    for i in range(trials):
        u, v = (0.5, 0.5) if i == 0 else (_halton(i + 1, 2), _halton(i + 1, 3))  # from index 2: u = 0.5 is taken
        points.append((float(f"{default * 10 ** (LR_SPAN * (2 * u - 1)):.4g}"),
                       float(f"{base_wd * 10 ** (WD_SPAN * (2 * v - 1)):.4g}")))
    return points


@dataclass(frozen=True)
class Cell:
    """One optimizer on one task at one batch size: a unit of tuning."""

    task: str
    """The task spec as given (built-in name or ``module:function``)."""
    task_name: str
    batch_size: int
    optimizer: str
    budget: str
    higher_is_better: bool
    fingerprint: str = ""
    """The task definition's (``Task.fingerprint``): a changed task gets new studies, so its runs are made anew."""

    @property
    def study_name(self) -> str:
        name = f"{self.task_name}|bs={self.batch_size}|{self.optimizer}|{self.budget}"
        return f"{name}|{self.fingerprint}" if self.fingerprint else name


@dataclass
class Outcome:
    """What the plan needs to know about a finished point."""

    lr: float
    seed: int
    metric: float | None
    """Final validation metric; ``None`` for a diverged or failed run."""
    wd: float | None = None


Point = tuple[float, int, float | None]
"""(lr, seed, AdamW-scale weight decay or None for the task's)."""


@dataclass
class CellPlan:
    missing: list[Point] = field(default_factory=list)
    """Points to run now, in order."""
    blocked: bool = False
    """More points will follow once the tuning points finish (some may be running elsewhere)."""
    chosen_lr: float | None = None
    chosen_wd: float | None = None
    """Set where the weight decay was tuned."""
    tuning: list[tuple[float, float | None]] = field(default_factory=list)
    """The (lr, wd) settings tuned on seed 0."""
    at_edge: bool = False
    """The chosen lr sits on the final grid's edge: the best lr may lie further out."""
    points: list[Point] = field(default_factory=list)
    """Every point the plan holds so far, finished or not: what a run must belong to for its failure to count."""

    @property
    def tuning_lrs(self) -> list[float]:
        """The learning-rate grid (empty after a search over weight decay too: its points are no grid)."""
        return [lr for lr, wd in self.tuning if wd is None]

    @property
    def complete(self) -> bool:
        return not self.missing and not self.blocked


def better(value: float, than: float, higher_is_better: bool) -> bool:
    """``value`` is strictly better than ``than`` in the metric's direction."""
    return value > than if higher_is_better else value < than


def _best(cell: Cell, finished: Mapping[str, Outcome], keys: list[str]) -> int | None:
    """Index of the best finished metric among ``keys`` (the first wins ties); None when every run diverged."""
    best_i, best = None, None
    for i, key in enumerate(keys):
        metric = finished[key].metric
        if metric is not None and math.isfinite(metric) and (best is None or better(metric, best,
                                                                                      cell.higher_is_better)):
            best_i, best = i, metric
    return best_i


def plan_cell(cell: Cell, budget: Budget, seeds: int, finished: Mapping[str, Outcome], stress: bool,
              tune: tuple[str, ...] = ("lr",), base_wd: float = 0.0) -> CellPlan:
    """The points ``cell`` still needs, given the ``finished`` ones keyed by :func:`point_key`. ``tune`` holds
    ``"lr"`` (the growing grid) or also ``"weight_decay"`` (a fixed-budget search around ``base_wd``)."""
    base = default_lr(cell.optimizer)
    plan = CellPlan()
    if stress and not cell.optimizer.startswith(LOOKAHEAD_PREFIX) and base_optimizer_info(cell.optimizer).stress:
        plan.missing += [(lr, 0, None) for lr in stress_lrs()]
    if "weight_decay" in tune:
        _plan_search(plan, cell, search_points(base, base_wd or 0.01, budget.search_trials), finished)
    else:
        _plan_grid(plan, cell, budget, base, finished)
    if plan.chosen_lr is not None:
        plan.missing += [(plan.chosen_lr, s, plan.chosen_wd) for s in range(1, seeds)]
    plan.points = list(dict.fromkeys([*plan.missing, *((lr, 0, wd) for lr, wd in plan.tuning)]))
    plan.missing = [p for p in dict.fromkeys(plan.missing) if point_key(*p) not in finished]
    return plan


def _plan_search(plan: CellPlan, cell: Cell, points: list[tuple[float, float]],
                 finished: Mapping[str, Outcome]) -> None:
    plan.tuning = list(points)
    missing = [(lr, 0, wd) for lr, wd in points if point_key(lr, 0, wd) not in finished]
    if missing:
        plan.missing = missing + plan.missing
        plan.blocked = True
        return
    best = _best(cell, finished, [point_key(lr, 0, wd) for lr, wd in points])
    if best is not None:
        plan.chosen_lr, plan.chosen_wd = points[best]


def _plan_grid(plan: CellPlan, cell: Cell, budget: Budget, base: float, finished: Mapping[str, Outcome]) -> None:
    low, high = min(budget.grid), max(budget.grid)
    while True:
        ks = sorted(range(low, high + 1), key=abs)  # on a tie the point nearer the default wins: ties never grow it
        plan.tuning = [(grid_lr(base, k), None) for k in range(low, high + 1)]
        missing = [(lr, 0, None) for lr, _ in plan.tuning if point_key(lr, 0) not in finished]
        if missing:
            plan.missing = missing + plan.missing
            plan.blocked = True
            return
        best = _best(cell, finished, [point_key(grid_lr(base, k), 0) for k in ks])
        if best is None:  # every tuning run diverged: nothing to repeat over seeds
            return
        best_k = ks[best]
        can_low = best_k == low and low > -budget.max_radius
        can_high = best_k == high and high < budget.max_radius
        if can_low or can_high:
            low, high = (low - 1, high) if can_low else (low, high + 1)
            continue
        plan.chosen_lr = grid_lr(base, best_k)
        plan.at_edge = best_k in (low, high) and len(ks) > 1
        return


def cells_for(tasks: Iterable[tuple[str, str, tuple[int, ...], bool, str]], optimizers: Iterable[str],
              budget: str) -> list[Cell]:
    """Cells in the order they are worked on: task by task, so early results cover whole tasks.

    ``tasks`` holds ``(spec, name, batch_sizes, higher_is_better, fingerprint)`` per task.
    """
    optimizers = list(optimizers)
    return [Cell(spec, name, bs, opt, budget, higher, fingerprint)
            for spec, name, batch_sizes, higher, fingerprint in tasks for bs in batch_sizes for opt in optimizers]
