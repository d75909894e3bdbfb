"""The fair protocol: which runs a comparison needs, decided from what has finished so far.

For every *cell* (task × batch size × optimizer) the protocol is, after DeepOBS (Schmidt et al. 2021) and AlgoPerf:

1. **Tune** on seed 0: the learning rate on a log grid of half-decade steps, ``default · 10^(k/2)``, centred on the
   optimizer's documented default. While the best point lies on an edge of the grid, the grid grows by one step
   on that side (up to the budget's ``max_radius``, 1000× either way), so a good learning rate is not missed
   because a default was far off (Rosenbrock wants AdamW at ~0.3, 300× its default).
2. **Select** the learning rate with the best validation metric after the last step (diverged runs never win).
3. **Repeat** the selected setting over the remaining seeds; the report gives median and spread.

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

STRESS_STEPS = (0, 1, 2)
"""AdamW's default lr times 10^(k/2): 1e-3, 3.2e-3, 1e-2 — AdamW-sized learning rates, no warm-up."""


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


BUDGET_PRESETS = {
    "tiny": Budget("tiny", grid=(-1, 0, 1), seeds=2, max_radius=2, run_timeout=120.0),
    "quick": Budget("quick", grid=(-1, 0, 1), seeds=3, max_radius=6, run_timeout=600.0),
    "full": Budget("full", grid=(-2, -1, 0, 1, 2), seeds=5, max_radius=6, run_timeout=3600.0),
}

DEFAULT_OPTIMIZERS = {
    "tiny": ("adamw", "lion", "rlion", "adan"),
    "quick": ("adamw", "lion", "rlion", "adan"),
    "full": ("adamw", "lion", "rlion", "adan", "adax", "adafactor", "nesterov", "lookahead_adamw"),
}


def grid_lr(default_lr: float, k: int) -> float:
    """The grid point ``default · 10^(k/2)``, rounded to 4 significant digits so that keys are stable."""
    return float(f"{default_lr * 10 ** (k / 2):.4g}")


def default_lr(optimizer: str) -> float:
    return base_optimizer_info(optimizer).default_lr


def stress_lrs() -> list[float]:
    """The AdamW-sized learning rates Lion and RLion also run at."""
    return [grid_lr(default_lr("adamw"), k) for k in STRESS_STEPS]


def point_key(lr: float, seed: int) -> str:
    return f"lr={lr:.4g}|seed={seed}"


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


@dataclass
class CellPlan:
    missing: list[tuple[float, int]] = field(default_factory=list)
    """Points to run now, in order."""
    blocked: bool = False
    """More points will follow once the tuning points finish (some may be running elsewhere)."""
    chosen_lr: float | None = None
    tuning_lrs: list[float] = field(default_factory=list)
    at_edge: bool = False
    """The chosen lr sits on the final grid's edge: the best lr may lie further out."""

    @property
    def complete(self) -> bool:
        return not self.missing and not self.blocked


def _better(value: float, than: float, higher_is_better: bool) -> bool:
    return value > than if higher_is_better else value < than


def plan_cell(cell: Cell, budget: Budget, seeds: int, finished: Mapping[str, Outcome],
              stress: bool) -> CellPlan:
    """The points ``cell`` still needs, given the ``finished`` ones keyed by :func:`point_key`."""
    base = default_lr(cell.optimizer)
    low, high = min(budget.grid), max(budget.grid)
    plan = CellPlan()
    if stress and not cell.optimizer.startswith(LOOKAHEAD_PREFIX) and base_optimizer_info(cell.optimizer).stress:
        plan.missing += [(lr, 0) for lr in stress_lrs()]
    while True:
        ks = range(low, high + 1)
        plan.tuning_lrs = [grid_lr(base, k) for k in ks]
        missing = [(lr, 0) for lr in plan.tuning_lrs if point_key(lr, 0) not in finished]
        if missing:
            plan.missing = missing + plan.missing
            plan.blocked = True
            break
        best_k, best = None, None
        for k in sorted(ks, key=abs):  # on a tie the point nearer the default wins, so ties never grow the grid
            metric = finished[point_key(grid_lr(base, k), 0)].metric
            if metric is not None and math.isfinite(metric) and (best is None or
                                                                 _better(metric, best, cell.higher_is_better)):
                best_k, best = k, metric
        if best_k is None:  # every tuning run diverged: nothing to repeat over seeds
            break
        can_low = best_k == low and low > -budget.max_radius
        can_high = best_k == high and high < budget.max_radius
        if can_low or can_high:
            low, high = (low - 1, high) if can_low else (low, high + 1)
            continue
        plan.chosen_lr = grid_lr(base, best_k)
        plan.at_edge = best_k in (low, high) and len(ks) > 1
        plan.missing += [(plan.chosen_lr, s) for s in range(1, seeds)]
        break
    plan.missing = [p for p in dict.fromkeys(plan.missing) if point_key(*p) not in finished]
    return plan


def cells_for(tasks: Iterable[tuple[str, str, tuple[int, ...], bool, str]], optimizers: Iterable[str],
              budget: str) -> list[Cell]:
    """Cells in the order they are worked on: task by task, so early results cover whole tasks.

    ``tasks`` holds ``(spec, name, batch_sizes, higher_is_better, fingerprint)`` per task.
    """
    optimizers = list(optimizers)
    return [Cell(spec, name, bs, opt, budget, higher, fingerprint)
            for spec, name, batch_sizes, higher, fingerprint in tasks for bs in batch_sizes for opt in optimizers]
