"""The published claims from the seed articles, each checked against the stored results of *this* comparison.

Every verdict is computed from the runs and follows the claim's words: a quantitative claim "holds" only when the
measurement falls inside the claimed range; outside it the effect is "larger than claimed" or "smaller than
claimed", or the claim "does not hold" when the effect is absent or reversed; "not measured here" when the
comparison lacks what the claim needs (an optimizer, a batch-size sweep, a divergence to compare against) or cannot
resolve it (step times that tie inside their seed spread on half the tasks or more). Ties follow the seed spread
(:meth:`CellSummary.ties`, :func:`steps_tie`); a task where an optimizer never learned is left out of ratio claims and
named.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from .plan import default_lr, grid_lr, stress_lrs
from .results import METRIC_FORMAT, CellSummary, ResultSet, as_printed, median, no_worse, plural, relative_gap
from .storage import FAILURES, Record
from .verdict import lr_plateau, never_learned

HOLDS, FAILS, UNMEASURED = "holds", "does not hold", "not measured here"
LARGER, SMALLER = "larger than claimed", "smaller than claimed"
"""A measurement outside a claimed range with the claimed sign: the effect is there, but bigger or smaller."""
VERDICTS = (HOLDS, LARGER, SMALLER, FAILS, UNMEASURED)

COMPARABLE_MARGIN = 0.10
"""Within AdamW's seed spread, or at most this much worse relative to its median: "trains as well as AdamW"."""
HALVES = (45, 55)
""""Halves": a saving of this many percent of AdamW's state (printed beside the verdict)."""
ABOUT_HALF = (0.4, 0.6)
""""About half the steps": this fraction of AdamW's steps (printed beside the verdict)."""


@dataclass(frozen=True)
class ClaimResult:
    claim: str
    source: str
    measured: str
    verdict: str
    context: str


@dataclass(frozen=True)
class Claim:
    claim: str
    source: str
    check: Callable[[ResultSet], tuple[str, str]]
    context: str = ""
    """What independent studies found: shown beside the verdict, never part of it."""

    def evaluate(self, results: ResultSet) -> ClaimResult:
        measured, verdict = self.check(results)
        return ClaimResult(self.claim, self.source, measured, verdict, self.context)


def range_verdict(value: float, low: float, high: float, none: float = 0.0) -> str:
    """A claim of an effect between ``low`` and ``high`` (both on the same side of ``none``, the value meaning no
    effect), given the measured ``value``: inside holds; beyond ``high`` is larger, between ``none`` and ``low``
    smaller than claimed; at or past ``none`` the effect is absent or reversed."""
    if low <= value <= high:
        return HOLDS
    if value > high:
        return LARGER
    return SMALLER if value > none else FAILS


def _pairs(results: ResultSet, a: str, b: str) -> list[tuple[str, CellSummary, CellSummary]]:
    """(task spec, summary of a, summary of b) at each task's headline batch size, where both have results."""
    pairs = []
    for spec in results.tasks:
        sa, sb = results.summary(spec, a), results.summary(spec, b)
        if sa and sb and sa.finals and sb.finals:
            pairs.append((spec, sa, sb))
    return pairs


def _gap(results: ResultSet, spec: str, ours: float, theirs: float) -> float | None:
    return relative_gap(results.tasks[spec].higher_is_better, ours, theirs)


def _names(results: ResultSet, specs: list[str]) -> str:
    return ", ".join(results.tasks[s].name for s in specs)


def lion_memory(results: ResultSet) -> tuple[str, str]:
    """"Halves" read as a saving of ``HALVES`` percent of AdamW's state."""
    pairs = [(sa.state_bytes_per_param, sb.state_bytes_per_param) for _, sa, sb in _pairs(results, "lion", "adamw")
             if sa.state_bytes_per_param and sb.state_bytes_per_param]
    if not pairs:
        return "needs lion and adamw", UNMEASURED
    saving = as_printed(100 * (1 - statistics.median(lion / adamw for lion, adamw in pairs)), ".0f")
    lion, adamw = (statistics.median(p[i] for p in pairs) for i in (0, 1))
    keeps = f"{saving:.0f} % less" if saving >= 0 else f"{-saving:.0f} % more"
    return (f"state {lion:.2f} vs {adamw:.2f} B/param (medians): Lion keeps {keeps} (median of "
            f"{plural(len(pairs), 'task')}; claimed 50 %, read as {HALVES[0]}–{HALVES[1]} %)",
            range_verdict(saving, *HALVES))


def _step_times(summary: CellSummary) -> list[float]:
    """The optimizer step's median ms in each seed's run at the chosen lr (the runs ``opt_step_ms`` summarises)."""
    return [r.result.opt_step_ms for r in summary.finals
            if r.result is not None and r.result.opt_step_ms and math.isfinite(r.result.opt_step_ms)]


def steps_tie(a: CellSummary, b: CellSummary) -> bool:
    """Whether two step times tie as results do (:meth:`CellSummary.ties`): either median inside the other's range
    over seeds. With one seed each, only equal times tie."""
    ta, tb = _step_times(a), _step_times(b)
    return bool(ta and tb) and (min(tb) <= a.opt_step_ms <= max(tb) or min(ta) <= b.opt_step_ms <= max(ta))


def lion_step_speed(results: ResultSet) -> tuple[str, str]:
    """The median over tasks of how much less time Lion's step takes than AdamW's, a task whose two step times tie
    inside their seed spread counting 0. Where they tie on half the tasks or more, this run cannot resolve a
    difference of a few percent, and no verdict is drawn."""
    pairs = [(sa, sb) for _, sa, sb in _pairs(results, "lion", "adamw") if sa.opt_step_ms and sb.opt_step_ms]
    if not pairs:
        return "needs lion and adamw", UNMEASURED
    ratios = [sa.opt_step_ms / sb.opt_step_ms for sa, sb in pairs]
    ties = [steps_tie(sa, sb) for sa, sb in pairs]
    speedup = as_printed(statistics.median(0.0 if tie else 100 * (1 - r) for r, tie in zip(ratios, ties)), ".1f")
    # a slower Lion reads "more time", not "-12.1 % less time"
    less = f"{speedup:.1f} % less" if speedup >= 0 else f"{-speedup:.1f} % more"
    low, high = (as_printed(100 * (1 - r), ".0f") for r in (max(ratios), min(ratios)))
    measured = (f"Lion's step takes {less} time than AdamW's (positive: Lion faster; median of "
                f"{plural(len(ratios), 'task')}, a tie inside the seed spread counting 0; range {low:+.0f} to "
                f"{high:+.0f} %; claimed 2 to 15 %); the two tie on {sum(ties)} of {plural(len(pairs), 'task')}")
    if 2 * sum(ties) >= len(pairs):
        return measured + ", too many to decide here", UNMEASURED
    return measured, range_verdict(speedup, 2, 15)


def lion_smaller_lr(results: ResultSet) -> tuple[str, str]:
    """The median over tasks of tuned AdamW lr / tuned Lion lr. Left out, and named: tasks where either has no result
    (diverged at every lr, say), where either never learned (its "tuned" lr is noise), where either chosen lr sits on
    the grid's final edge (only a bound), and where the lrs that tie with either chosen one run to the grid's edge
    (any lr beyond does as well: the chosen one is an arbitrary pick from an open range, as on rastrigin, where every
    optimizer ends in one minimum)."""
    ratios, left_out = [], {}
    for spec in results.tasks:  # every task both ran: one where either diverged at every lr is named too
        lion, adamw = results.summary(spec, "lion"), results.summary(spec, "adamw")
        if lion is None or adamw is None:
            continue
        name = results.tasks[spec].name
        never = [o for o in ("lion", "adamw") if never_learned(results, spec, o)]
        flat = [s for s in (lion, adamw) if (p := lr_plateau(results, s)) and p.points > 1 and p.open_ended]
        without = [o for o, s in (("lion", lion), ("adamw", adamw)) if s.metric_median is None]
        if without:
            left_out[name] = f"{' and '.join(without)} without a result"
        elif never:
            left_out[name] = f"{' and '.join(never)} never learned"
        elif lion.plan.at_edge or adamw.plan.at_edge:
            left_out[name] = "chosen lr on the grid's edge"
        elif flat:
            left_out[name] = "equally good lrs up to the grid's edge"
        else:
            ratios.append((as_printed(adamw.plan.chosen_lr / lion.plan.chosen_lr, ".3g"), name))
    skipped = "; left out: " + ", ".join(f"{n} ({why})" for n, why in left_out.items()) if left_out else ""
    if not ratios:
        return "needs tuned lion and adamw that learned, with interior optima" + skipped, UNMEASURED
    # compared as printed (3 digits): the grid's points are rounded to 4, so its ratio 10 may be 10.003
    ratio = as_printed(statistics.median(r for r, _ in ratios), ".3g")
    inside = sum(3 <= r <= 10 for r, _ in ratios)
    per_task = ", ".join(f"{n} {r:.3g}" for r, n in sorted(ratios))
    measured = (f"tuned AdamW lr / tuned Lion lr = {ratio:.3g} (median of {plural(len(ratios), 'task')}, {inside} "
                f"inside 3–10; {per_task}){skipped}")
    return measured, range_verdict(ratio, 3, 10, none=1.0)


def lion_small_batch(results: ResultSet) -> tuple[str, str]:
    """Holds where AdamW beats Lion (beyond the seed spread, or Lion diverged) at every batch size below 64 and at
    none of 64 or more: a batch-size effect, as the claim words it. Batch sizes where Lion's runs failed are named
    and left out."""
    lines, verdicts = [], []
    for spec, task in results.tasks.items():
        sizes = results.config.batch_sizes_for(task)
        if not any(b < 64 for b in sizes) or not any(b >= 64 for b in sizes) or _batch_has_no_effect(results, spec,
                                                                                                        sizes):
            continue
        trails_at: dict[int, bool] = {}
        texts = []
        for bs in sizes:
            lion, adamw = results.summary(spec, "lion", bs), results.summary(spec, "adamw", bs)
            if not (lion and adamw and adamw.metric_median is not None):
                continue
            if lion.metric_median is None and not lion.lost_to_divergence:  # failed (or not run): no evidence
                if results.records_of(lion.cell):
                    texts.append(f"bs {bs} left out (Lion's runs failed)")
                continue
            trails_at[bs] = adamw.beats(lion)  # a Lion that diverged trails a result
            ours = "diverged" if lion.metric_median is None else f"{lion.metric_median:{METRIC_FORMAT}}"
            texts.append(f"bs {bs} {ours} vs {adamw.metric_median:{METRIC_FORMAT}} "
                         f"({'trails' if trails_at[bs] else 'level or ahead'})")
        level_small = [bs for bs, trails in trails_at.items() if bs < 64 and not trails]
        trails_large = [bs for bs, trails in trails_at.items() if bs >= 64 and trails]
        if len({bs < 64 for bs in trails_at}) == 2:  # measured on both sides of 64
            effect = not level_small and not trails_large
            reasons = []
            if level_small:
                reasons.append(f"Lion does not trail at bs {', '.join(map(str, level_small))}")
            if trails_large:
                every = ", so at every batch size" if all(trails_at.values()) else ""
                reasons.append(f"Lion trails at bs {', '.join(map(str, trails_large))}{every}")
            why = f": {' and '.join(reasons)}" if reasons else ""
            lines.append(f"{task.name} {task.metric} ({'higher' if task.higher_is_better else 'lower'} is better), "
                         f"Lion vs AdamW: " + ", ".join(texts) + why)
            verdicts.append(effect)
    if not verdicts:
        return "needs lion, adamw and batch sizes on both sides of 64", UNMEASURED
    return "; ".join(lines) + " (median over seeds, lr tuned per batch size)", HOLDS if all(verdicts) else FAILS


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
    which AdamW's own median curve reaches it. "About half": a median ratio of 0.4–0.6. Tasks where AdamW never
    learned are left out (there is nothing to reach)."""
    fractions, lines, left_out, at_start = [], [], [], []
    for spec, task in results.tasks.items():
        adan, adamw = results.summary(spec, "adan"), results.summary(spec, "adamw")
        # an Adan that diverged at every lr it was tuned over has no finals, and no result either
        if not (adan and adamw and (adan.finals or adan.lost_to_divergence) and adamw.metric_median is not None):
            continue
        if never_learned(results, spec, "adamw"):
            left_out.append(task.name)
            continue
        if adan.lost_to_divergence:  # it may pass AdamW's result on the way to diverging
            fractions.append(math.inf)
            lines.append(f"{task.name} never (Adan diverged on {adan.diverged} of {plural(adan.runs, 'seed')})"
                         if adan.diverged else f"{task.name} never (Adan diverged at every lr tried)")
            continue
        target = adamw.metric_median
        adamw_hit = _first_hit(*results.median_curve(adamw.cell, "eval_steps", "eval_metric")[:2], target,
                               task.higher_is_better)
        adan_hit = _first_hit(*results.median_curve(adan.cell, "eval_steps", "eval_metric")[:2], target,
                              task.higher_is_better)
        if not adamw_hit:  # AdamW's median curve reaches its final median at its start: nothing to halve
            at_start.append(task.name)
            continue
        fraction = adan_hit / adamw_hit if adan_hit is not None else math.inf
        fractions.append(fraction)
        lines.append(f"{task.name} {'never' if adan_hit is None else f'{adan_hit}/{adamw_hit}'}")
    if not fractions:
        return "needs adan and adamw", UNMEASURED
    typical = statistics.median(fractions)
    typical = typical if math.isinf(typical) else as_printed(typical, ".2f")
    measured = (f"Adan's steps to AdamW's final median over AdamW's own (below 1: Adan faster; claimed about 0.5, "
                f"read as {ABOUT_HALF[0]:.2f}–{ABOUT_HALF[1]:.2f}): "
                f"median {'never' if math.isinf(typical) else f'{typical:.2f}'} ({'; '.join(lines)})")
    if left_out:
        measured += f"; left out (AdamW never learned): {', '.join(left_out)}"
    if at_start:
        measured += f"; left out (AdamW's result already met at step 0): {', '.join(at_start)}"
    # fewer steps is the effect: a smaller fraction is a larger effect than claimed
    return measured, range_verdict(1 - typical, 1 - ABOUT_HALF[1], 1 - ABOUT_HALF[0])


def _stress(results: ResultSet, optimizer: str) -> dict[str, dict[float, Record]]:
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
    """At AdamW's default lr, no warm-up, RLion's result must be comparable to tuned AdamW's (inside AdamW's seed
    spread or within ``COMPARABLE_MARGIN`` of its median) on every task where AdamW learned: not merely finite."""
    lr = default_lr("adamw")
    gaps, behind, left_out, failed, no_gap, considered = [], [], [], [], [], 0
    for spec, by_lr in _stress(results, "rlion").items():
        adamw, run = results.summary(spec, "adamw"), by_lr.get(grid_lr(lr, 0))
        if run is None or adamw is None or adamw.metric_median is None:
            continue
        if never_learned(results, spec, "adamw"):
            left_out.append(spec)
            continue
        name = results.tasks[spec].name
        if run.state in FAILURES:  # no result: no evidence either way
            failed.append(f"{name} ({run.state})")
            continue
        considered += 1
        if run.metric is None:
            behind.append(f"{name} ({run.state})")
            continue
        inside = no_worse(run.metric, adamw.worst, results.tasks[spec].higher_is_better)
        gap = _gap(results, spec, run.metric, adamw.metric_median)
        if gap is None:  # AdamW's median is 0: no relative gap to it, only its seed spread decides
            no_gap.append(name)
            if not inside:
                behind.append(f"{name} {run.metric:{METRIC_FORMAT}} against AdamW's 0")
            continue
        gap = as_printed(100 * gap, ".1f") / 100
        gaps.append((gap, name))
        if not inside and gap < -COMPARABLE_MARGIN:
            behind.append(f"{name} {100 * gap:+.1f} %")
    skipped = ""
    if left_out:
        skipped += f"; left out (AdamW never learned): {_names(results, left_out)}"
    if failed:
        skipped += f"; left out, RLion's run failed: {', '.join(failed)}"
    if not considered:
        return "needs rlion (with its runs at AdamW-sized lrs) and adamw" + skipped, UNMEASURED
    typical = median(g for g, _ in gaps)
    measured = f"RLion at lr {lr:g}, no warm-up, vs tuned AdamW (negative: RLion worse): " + (
        f"median {100 * typical:+.1f} % over {plural(len(gaps), 'task')}" if typical is not None else
        "no relative gap" if no_gap else "no finite result")
    if no_gap:
        measured += f" (no relative gap to AdamW's 0 on {', '.join(no_gap)})"
    if behind:
        measured += (f"; behind beyond AdamW's seed spread and {100 * COMPARABLE_MARGIN:.0f} % on "
                     f"{len(behind)} of {plural(considered, 'task')}: {', '.join(behind)}")
    else:  # what "as well" took, beside a median that may lie further behind
        measured += (f"; inside AdamW's seed spread or within {100 * COMPARABLE_MARGIN:.0f} % of its median on "
                     + ("the one task" if considered == 1 else f"all {considered} tasks"))
    measured += skipped
    return measured, FAILS if behind else HOLDS


def rlion_stable_where_lion_diverges(results: ResultSet) -> tuple[str, str]:
    lion, rlion = _stress(results, "lion"), _stress(results, "rlion")
    both = [(spec, lr) for spec in lion if spec in rlion for lr in lion[spec] if lr in rlion[spec]]
    if not both:
        return "needs lion and rlion", UNMEASURED
    # a run that failed (error, crash, timeout) has no result: no evidence either way
    failed = [(s, lr) for s, lr in both if lion[s][lr].state in FAILURES or rlion[s][lr].state in FAILURES]
    both = [p for p in both if p not in failed]
    lion_bad = [(s, lr) for s, lr in both if lion[s][lr].state == "diverged"]
    rlion_bad = [(s, lr) for s, lr in lion_bad if rlion[s][lr].state == "diverged"]
    lrs = sorted({lr for _, lr in both})
    measured = (f"at lr {', '.join(f'{lr:g}' for lr in lrs)} (no warm-up) Lion diverged in {len(lion_bad)} of "
                f"{len(both)} runs; RLion diverged in {len(rlion_bad)} of those")
    if lion_bad:
        measured += " (" + ", ".join(f"{results.tasks[s].name} lr {lr:g}"
                                     f"{' (RLion too)' if (s, lr) in rlion_bad else ''}" for s, lr in lion_bad) + ")"
    if failed:
        measured += "; left out, a run failed: " + ", ".join(
            f"{results.tasks[s].name} lr {lr:g} ({'Lion' if lion[s][lr].state in FAILURES else 'RLion'})"
            for s, lr in failed)
    if not lion_bad:
        return measured, UNMEASURED
    return measured, HOLDS if not rlion_bad else FAILS


LION = "Chen et al. 2023, arXiv 2302.06675"
ADAN = "Xie et al. 2022, arXiv 2208.06677"
RLION = "Rong et al. 2025, Sci. Rep. 15, \"A refined lion optimizer for deep learning\""
BLOG = " (as summarised in a YOLOv8 blog post)"
EQUAL_TUNING = ("Zhao et al., ICLR 2025 (arXiv 2407.07972): tuned with equal care, Adam, Lion, Adafactor and Signum "
                "reach comparable language-model losses and are similarly stable across hyper-parameters; Kaddour et "
                "al., NeurIPS 2023 (arXiv 2307.06440): Lion's and Sophia's gains over a tuned AdamW vanish at a "
                "fixed compute budget")
BYTE_FLOOR = ("a step bound by memory traffic moves 20 B/param for Lion against 28 for AdamW (fp32): at most "
              "29 % faster (README, Speed)")

CLAIMS: tuple[Claim, ...] = (
    Claim("Lion halves optimizer memory vs AdamW", LION, lion_memory,
          "by construction: one state buffer against AdamW's two"),
    Claim("Lion's step is 2–15 % faster than AdamW's", LION + BLOG, lion_step_speed, BYTE_FLOOR),
    Claim("Lion wants a 3–10× smaller learning rate than AdamW", LION, lion_smaller_lr, EQUAL_TUNING),
    Claim("Lion trails AdamW below batch size 64, not above it (a batch-size effect)", LION + BLOG, lion_small_batch,
          "Chen et al. report Lion's gain over AdamW growing with the batch size"),
    Claim("Adan reaches AdamW's result in about half the steps", ADAN, adan_half_steps,
          "AlgoPerf (Dahl et al. 2023, arXiv 2306.07179) measures exactly this, time to a target, across workloads"),
    Claim("RLion trains as well as AdamW at AdamW-sized learning rates, without warm-up", RLION, rlion_adamw_lr,
          "no independent replication known to optarena"),
    Claim("RLion does not diverge where Lion does", RLION, rlion_stable_where_lion_diverges,
          "no independent replication known to optarena"),
)


def evaluate_claims(results: ResultSet) -> list[ClaimResult]:
    return [claim.evaluate(results) for claim in CLAIMS]
