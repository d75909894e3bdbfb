"""The published claims from the seed articles, each checked against the stored results of *this* comparison.

Every verdict is computed from the runs: "holds", "does not hold", or "not measured here" when the comparison
lacks what the claim needs (an optimizer, a batch-size sweep, a divergence to compare against).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from .plan import default_lr, grid_lr, stress_lrs
from .results import CellSummary, ResultSet, median
from .storage import FAILURES

HOLDS, FAILS, UNMEASURED = "holds", "does not hold", "not measured here"


@dataclass(frozen=True)
class ClaimResult:
    claim: str
    source: str
    measured: str
    verdict: str


@dataclass(frozen=True)
class Claim:
    claim: str
    source: str
    check: Callable[[ResultSet], tuple[str, str]]

    def evaluate(self, results: ResultSet) -> ClaimResult:
        measured, verdict = self.check(results)
        return ClaimResult(self.claim, self.source, measured, verdict)


def _pairs(results: ResultSet, a: str, b: str) -> list[tuple[str, CellSummary, CellSummary]]:
    """(task, summary of a, summary of b) at each task's headline batch size, where both have results."""
    pairs = []
    for spec in results.tasks:
        sa, sb = results.summary(spec, a), results.summary(spec, b)
        if sa and sb and sa.finals and sb.finals:
            pairs.append((results.tasks[spec].name, sa, sb))
    return pairs


def _gap(results: ResultSet, spec: str, ours: float, theirs: float) -> float:
    """How much better ``ours`` is than ``theirs``, relative to ``|theirs|`` (positive: better)."""
    sign = 1 if results.tasks[spec].higher_is_better else -1
    return sign * (ours - theirs) / max(abs(theirs), 1e-12)


def lion_memory(results: ResultSet) -> tuple[str, str]:
    pairs = [(t, sa.state_bytes_per_param, sb.state_bytes_per_param) for t, sa, sb in _pairs(results, "lion", "adamw")
             if sa.state_bytes_per_param and sb.state_bytes_per_param]
    if not pairs:
        return "needs lion and adamw", UNMEASURED
    ratios = [lion / adamw for _, lion, adamw in pairs]
    ratio = statistics.median(ratios)
    return (f"state {pairs[0][1]:.2f} vs {pairs[0][2]:.2f} B/param; Lion/AdamW = {ratio:.2f} "
            f"(median of {len(ratios)} tasks)", HOLDS if ratio <= 0.55 else FAILS)


def lion_step_speed(results: ResultSet) -> tuple[str, str]:
    """Holds when Lion's step is at least 2 % faster; a larger speed-up still holds (noted as beyond the range)."""
    ratios = [sa.opt_step_ms / sb.opt_step_ms for _, sa, sb in _pairs(results, "lion", "adamw")
              if sa.opt_step_ms and sb.opt_step_ms]
    if not ratios:
        return "needs lion and adamw", UNMEASURED
    speedup = 1 - statistics.median(ratios)
    measured = (f"Lion's step {100 * speedup:+.1f} % faster (median of {len(ratios)} tasks; "
                f"range {100 * (1 - max(ratios)):+.0f} to {100 * (1 - min(ratios)):+.0f} %)")
    if speedup > 0.15:
        measured += ", beyond the claimed range"
    return measured, HOLDS if speedup >= 0.02 else FAILS


def lion_smaller_lr(results: ResultSet) -> tuple[str, str]:
    """Tasks where either chosen lr sits on the grid's final edge are left out: the ratio there is only a bound."""
    ratios, edges = [], []
    for task, lion, adamw in _pairs(results, "lion", "adamw"):
        if not (lion.plan.chosen_lr and adamw.plan.chosen_lr):
            continue
        if lion.plan.at_edge or adamw.plan.at_edge:
            edges.append(task)
        else:
            ratios.append(adamw.plan.chosen_lr / lion.plan.chosen_lr)
    skipped = f"; left out (chosen lr on the grid's edge): {', '.join(edges)}" if edges else ""
    if not ratios:
        return "needs tuned lion and adamw with interior optima" + skipped, UNMEASURED
    ratio = statistics.median(ratios)
    spread = ", ".join(f"{r:.3g}" for r in sorted(ratios))
    measured = f"tuned AdamW lr / tuned Lion lr = {ratio:.3g} (median; per task {spread}){skipped}"
    # the grid moves in steps of √10, so 3.16 and 10 are the grid's values inside "3–10×"
    return measured, HOLDS if 2.9 <= ratio <= 11 else FAILS


def lion_small_batch(results: ResultSet) -> tuple[str, str]:
    """Holds where Lion trails AdamW at every batch size below 64 yet matches it (its median inside AdamW's seed
    range, or better) at some batch size of 64 or more: a batch-size effect, not Lion being worse everywhere."""
    lines, verdicts = [], []
    for spec, task in results.tasks.items():
        sizes = results.config.batch_sizes_for(task)
        if not any(b < 64 for b in sizes) or not any(b >= 64 for b in sizes):
            continue
        worse_small, matches_large, texts = [], [], []
        for bs in sizes:
            lion, adamw = results.summary(spec, "lion", bs), results.summary(spec, "adamw", bs)
            if not (lion and adamw and lion.metric_median is not None and adamw.metric_median is not None):
                continue
            texts.append(f"bs {bs}: {lion.metric_median:.3g} vs {adamw.metric_median:.3g}")
            worst = adamw.metric_min if task.higher_is_better else adamw.metric_max
            if bs < 64:
                worse_small.append(_gap(results, spec, lion.metric_median, adamw.metric_median) < 0)
            else:
                matches_large.append(_gap(results, spec, lion.metric_median, worst) >= 0)
        if worse_small and matches_large and not _batch_has_no_effect(results, spec, sizes):
            lines.append(f"{task.name} {task.metric} " + ", ".join(texts))
            verdicts.append(all(worse_small) and any(matches_large))
    if not verdicts:
        return "needs lion, adamw and batch sizes on both sides of 64", UNMEASURED
    return "Lion vs AdamW (median over seeds, lr tuned per batch size): " + "; ".join(lines), \
        HOLDS if all(verdicts) else FAILS


def _batch_has_no_effect(results: ResultSet, spec: str, sizes: tuple[int, ...]) -> bool:
    """A task that ignores its batches (the 2-D functions) gives identical results at every batch size."""
    for optimizer in ("lion", "adamw"):
        summaries = [results.summary(spec, optimizer, bs) for bs in sizes]
        if len({s.metric_median for s in summaries if s is not None}) > 1:
            return False
    return True


def _first_hit(steps: list[int], values: list[float], target: float, higher: bool) -> int | None:
    return next((s for s, v in zip(steps, values) if (v >= target if higher else v <= target)), None)


def adan_half_steps(results: ResultSet) -> tuple[str, str]:
    """Per task: the first evaluation at which Adan's median curve reaches AdamW's final median, over the first at
    which AdamW's own median curve reaches it. Holds when the median ratio is at most 0.6."""
    fractions, lines = [], []
    for spec, task in results.tasks.items():
        adan, adamw = results.summary(spec, "adan"), results.summary(spec, "adamw")
        if not (adan and adamw and adan.finals and adamw.metric_median is not None):
            continue
        target = adamw.metric_median
        adamw_hit = _first_hit(*results.median_curve(adamw.cell, "eval_steps", "eval_metric")[:2], target,
                               task.higher_is_better)
        adan_hit = _first_hit(*results.median_curve(adan.cell, "eval_steps", "eval_metric")[:2], target,
                              task.higher_is_better)
        if not adamw_hit:  # AdamW's median curve reaches its final median at its start: nothing to halve
            continue
        fraction = adan_hit / adamw_hit if adan_hit is not None else math.inf
        fractions.append(fraction)
        lines.append(f"{task.name} {'never' if adan_hit is None else f'{adan_hit}/{adamw_hit}'}")
    if not fractions:
        return "needs adan and adamw", UNMEASURED
    typical = statistics.median(fractions)
    measured = (f"Adan's steps to AdamW's final median over AdamW's own: median "
                f"{'never' if math.isinf(typical) else f'{typical:.2f}'} ({'; '.join(lines)})")
    return measured, HOLDS if typical <= 0.6 else FAILS


def _stress(results: ResultSet, optimizer: str):
    """Per task, the runs of ``optimizer`` at AdamW-sized learning rates (seed 0)."""
    out = {}
    for spec in results.tasks:
        cell = results.cell(spec, optimizer)
        if cell is None:
            continue
        runs = {lr: results.at_lr(cell, lr) for lr in stress_lrs()}
        out[spec] = {lr: r for lr, r in runs.items() if r is not None}
    return out


def rlion_adamw_lr(results: ResultSet) -> tuple[str, str]:
    stress = _stress(results, "rlion")
    runs = [(spec, lr, r) for spec, by_lr in stress.items() for lr, r in by_lr.items()]
    if not runs or "adamw" not in results.config.optimizers:
        return "needs rlion and adamw", UNMEASURED
    diverged = [r for _, _, r in runs if r.state == "diverged"]
    errors = [r for _, _, r in runs if r.state in FAILURES]
    gaps = []
    for spec, by_lr in stress.items():
        adamw = results.summary(spec, "adamw")
        at_default = by_lr.get(grid_lr(default_lr("adamw"), 0))
        if adamw and adamw.metric_median is not None and at_default and at_default.metric is not None:
            gaps.append(_gap(results, spec, at_default.metric, adamw.metric_median))
    lrs = sorted({lr for _, lr, _ in runs})
    measured = (f"RLion at lr {', '.join(f'{lr:g}' for lr in lrs)}, no warm-up: {len(diverged)} of {len(runs)} runs "
                f"diverged")
    if errors:
        measured += f", {len(errors)} raised"
    if gaps:
        measured += f"; at lr {default_lr('adamw'):g} vs tuned AdamW: median {100 * median(gaps):+.1f} %"
    return measured, HOLDS if not diverged and len(errors) < len(runs) else FAILS


def rlion_stable_where_lion_diverges(results: ResultSet) -> tuple[str, str]:
    lion, rlion = _stress(results, "lion"), _stress(results, "rlion")
    both = [(spec, lr) for spec in lion if spec in rlion for lr in lion[spec] if lr in rlion[spec]]
    if not both:
        return "needs lion and rlion", UNMEASURED
    lion_bad = [(s, lr) for s, lr in both if lion[s][lr].state == "diverged"]
    rlion_bad = [(s, lr) for s, lr in lion_bad if rlion[s][lr].state == "diverged"]
    measured = (f"at AdamW-sized lrs Lion diverged in {len(lion_bad)} of {len(both)} runs; RLion diverged in "
                f"{len(rlion_bad)} of those")
    if lion_bad:
        measured += " (" + ", ".join(f"{results.tasks[s].name} lr {lr:g}" for s, lr in lion_bad) + ")"
    if not lion_bad:
        return measured, UNMEASURED
    return measured, HOLDS if not rlion_bad else FAILS


LION = "Chen et al. 2023, arXiv 2302.06675"
ADAN = "Xie et al. 2022, arXiv 2208.06677"
RLION = "Rong et al. 2025, Sci. Rep. 15, \"A refined lion optimizer for deep learning\""
BLOG = " (as summarised in a YOLOv8 blog post)"

CLAIMS: tuple[Claim, ...] = (
    Claim("Lion halves optimizer memory vs AdamW", LION, lion_memory),
    Claim("Lion's step is 2–15 % faster than AdamW's", LION + BLOG, lion_step_speed),
    Claim("Lion wants a 3–10× smaller learning rate than AdamW", LION, lion_smaller_lr),
    Claim("Lion is worse than AdamW below batch size 64", LION, lion_small_batch),
    Claim("Adan reaches AdamW's result in about half the steps", ADAN, adan_half_steps),
    Claim("RLion trains at AdamW-sized learning rates without warm-up", RLION, rlion_adamw_lr),
    Claim("RLion does not diverge where Lion does", RLION, rlion_stable_where_lion_diverges),
)


def evaluate_claims(results: ResultSet) -> list[ClaimResult]:
    return [claim.evaluate(results) for claim in CLAIMS]
