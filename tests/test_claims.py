"""Claim verdicts on made-up stored runs, at every boundary: inside the claimed range, above it, below it, the
opposite sign, a task where an optimizer never learned, a tie inside the seed spread."""

from __future__ import annotations

import math

import pytest
from synthetic import ADAMW_GRID, LINEAR, LION_GRID, SECOND, config, records, result, tuned

from optarena.arena.claims import FAILS, HOLDS, LARGER, SMALLER, UNMEASURED, evaluate_claims, range_verdict
from optarena.arena.results import ResultSet

MEMORY = "Lion halves optimizer memory vs AdamW"
SPEED = "Lion's step is 2–15 % faster than AdamW's"
LR = "Lion wants a 3–10× smaller learning rate than AdamW"
BATCH = "Lion trails AdamW below batch size 64, not above it (a batch-size effect)"
ADAN = "Adan reaches AdamW's result in about half the steps"
RLION_LR = "RLion trains as well as AdamW at AdamW-sized learning rates, without warm-up"
RLION_STABLE = "RLion does not diverge where Lion does"
STRESS = (1e-3, 3.162e-3, 1e-2, 3.162e-2, 0.1)


def claims(cfg, recs) -> dict[str, tuple[str, str]]:
    return {c.claim: (c.measured, c.verdict) for c in evaluate_claims(ResultSet(cfg, recs))}


@pytest.mark.parametrize("value, verdict", [(0.05, HOLDS), (0.02, HOLDS), (0.15, HOLDS), (0.3, LARGER),
                                            (0.01, SMALLER), (0.0, FAILS), (-0.2, FAILS)])
def test_range_verdict_names_the_direction_outside_the_range(value, verdict):
    assert range_verdict(value, 0.02, 0.15) == verdict


@pytest.mark.parametrize("lion_bytes, lion_ms, memory, speed", [
    (40, 0.9, HOLDS, HOLDS),  # 50 % less state, 10 % faster
    (20, 0.5, LARGER, LARGER),  # 75 % less, 50 % faster: beyond the claimed ranges
    (60, 0.99, SMALLER, SMALLER),  # 25 % less, 1 % faster
    (90, 1.1, FAILS, FAILS),  # more state, slower
])
def test_memory_and_speed_claims_hold_only_inside_the_claimed_range(tmp_path, lion_bytes, lion_ms, memory, speed):
    cfg = config(tmp_path)
    recs = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2), state_bytes=80, opt_ms=1.0))
    recs += records(cfg, "lion", tuned(LION_GRID, (0.3, 0.1, 0.2), state_bytes=lion_bytes, opt_ms=lion_ms))
    found = claims(cfg, recs)
    assert found[MEMORY][1] == memory and found[SPEED][1] == speed
    # a slower Lion reads "more time", never a negative "less time"
    said = f"{100 * (1 - lion_ms):.1f} % less time" if lion_ms <= 1 else f"{100 * (lion_ms - 1):.1f} % more time"
    assert said in found[SPEED][0] and "positive: Lion faster" in found[SPEED][0]


@pytest.mark.parametrize("tasks, seeds, verdict, ties", [
    # (Lion's step ms, both optimizers' seed s slower by s · spread) per task; AdamW's step 1 ms
    (((0.9, 0.05), (0.9, 0.05)), 2, HOLDS, 0),  # 9.8 % faster: seeds 0.90-0.95 against 1.00-1.05
    (((0.9, 0.3), (0.9, 0.3)), 2, UNMEASURED, 2),  # medians 1.05 and 1.15, each inside the other's range: ties
    (((1.02, 0.15), (1.02, 0.15)), 2, UNMEASURED, 2),  # 1.9 % slower inside the spread: not "does not hold" either
    (((1.2, 0.15), (1.2, 0.15)), 2, FAILS, 0),  # 18.6 % slower, beyond the spread
    (((0.9, 0.05), (0.9, 0.3)), 2, UNMEASURED, 1),  # a tie on half the tasks: no verdict
    (((0.9, 0.0), (0.9, 0.0)), 1, HOLDS, 0),  # one seed: no spread, only equal times tie
    (((1.0, 0.0), (0.9, 0.0)), 1, UNMEASURED, 1),
])
def test_the_speed_claim_draws_no_verdict_from_step_times_inside_the_seed_spread(tmp_path, tasks, seeds, verdict,
                                                                                 ties):
    cfg = config(tmp_path, tasks=(LINEAR, SECOND), seeds=seeds)
    recs = []
    for task, (lion_ms, spread) in zip(("linear", "linear2"), tasks):
        adamw = tuned(ADAMW_GRID, (0.3, 0.1, 0.2), seeds=seeds, opt_ms=1.0, opt_ms_spread=spread)
        lion = tuned(LION_GRID, (0.3, 0.1, 0.2), seeds=seeds, opt_ms=lion_ms, opt_ms_spread=spread)
        recs += records(cfg, "adamw", adamw, task=task) + records(cfg, "lion", lion, task=task)
    measured, found = claims(cfg, recs)[SPEED]
    assert found == verdict, measured
    assert f"the two tie on {ties} of 2 tasks" in measured and "a tie inside the seed spread counting 0" in measured
    assert ("too many to decide here" in measured) == (verdict == UNMEASURED)


def _lion(best: float, lrs=(1e-5, 3.162e-5, 1e-4, 3.162e-4, 1e-3), metric: float = 0.1, **kw):
    """Lion runs on its whole grid with the best result at ``best``, 0.1 worse per half-decade away from it."""
    return tuned(lrs, tuple(metric + 0.2 * abs(math.log10(lr / best)) for lr in lrs), **kw)


@pytest.mark.parametrize("lion_best, verdict, ratio", [(1e-4, HOLDS, "10"), (3.162e-4, HOLDS, "3.16"),
                                                       (3.162e-5, LARGER, "31.6"), (1e-3, FAILS, "1 ")])
def test_the_lr_claim_reads_the_ratio_of_tuned_learning_rates(tmp_path, lion_best, verdict, ratio):
    cfg = config(tmp_path, budget="quick")  # the quick budget's grid may grow to 1000x either side of the default
    recs = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2)))
    # a grid wide enough that every best point is interior
    recs += records(cfg, "lion", _lion(lion_best, lrs=(1e-5, 3.162e-5, 1e-4, 3.162e-4, 1e-3, 3.162e-3)))
    measured, found = claims(cfg, recs)[LR]
    assert found == verdict and f"= {ratio}" in measured + " "


def test_the_lr_claim_leaves_out_a_task_where_lion_never_learned_or_the_lr_does_not_matter(tmp_path):
    cfg = config(tmp_path)
    adamw = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2)))
    flat = (1.0, 1.0, 1.0, 1.0)  # the untrained model's value, never improved
    never = records(cfg, "lion", {(lr, s): result(1.0, curve=flat) for lr in LION_GRID for s in (0, 1)})
    measured, verdict = claims(cfg, adamw + never)[LR]
    assert verdict == UNMEASURED and "linear (lion never learned)" in measured
    same = records(cfg, "lion", tuned(LION_GRID, (0.1, 0.1, 0.1)))  # every grid lr ties: no preferred lr
    measured, verdict = claims(cfg, adamw + same)[LR]
    assert verdict == UNMEASURED and "equally good lrs up to the grid's edge" in measured


def _batch_runs(cfg, lion_at: dict[int, tuple[float, float]]) -> list:
    """AdamW at 0.1 [0.1, 0.12] at every batch size; Lion's median and seed spread per batch size."""
    recs = []
    for bs, (metric, spread) in lion_at.items():
        recs += records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2), spread=0.02), bs)
        lion = (tuned(LION_GRID, (metric + 0.5, metric, metric + 0.6), spread=spread) if metric is not None else
                {(lr, s): result(None) for lr in LION_GRID for s in (0, 1)})  # None: diverged everywhere
        recs += records(cfg, "lion", lion, bs)
    return recs


@pytest.mark.parametrize("lion_at, verdict, why", [
    ({16: (0.5, 0.0), 64: (0.1, 0.0)}, HOLDS, "(trails), bs 64"),
    ({16: (0.5, 0.0), 64: (0.45, 0.0)}, FAILS, "Lion trails at bs 64, so at every batch size"),
    ({16: (0.11, 0.0), 64: (0.1, 0.0)}, FAILS, "Lion does not trail at bs 16"),  # inside AdamW's spread: a tie
    ({16: (0.5, 0.0), 64: (0.1, 0.0), 256: (0.5, 0.0)}, FAILS, "Lion trails at bs 256"),  # "not above it"
    ({16: (0.5, 0.0), 32: (0.1, 0.0), 64: (0.1, 0.0)}, FAILS,
     "(trails), bs 32 0.1 vs 0.11 (level or ahead), bs 64 0.1 vs 0.11 (level or ahead): Lion does not trail at bs 32"),
    ({16: (0.5, 0.0), 64: (0.1, 0.0), 256: (None, 0.0)}, FAILS,
     "bs 256 diverged vs 0.11 (trails): Lion trails at bs 256"),
    ({16: (0.51234, 0.0), 64: (0.1, 0.0)}, HOLDS, "bs 16 0.5123 vs 0.11 (trails)"),  # 4 digits, as the table prints
])
def test_the_batch_claim_is_a_batch_size_effect(tmp_path, lion_at, verdict, why):
    cfg = config(tmp_path, batch_sizes=tuple(lion_at))
    measured, found = claims(cfg, _batch_runs(cfg, lion_at))[BATCH]
    assert found == verdict and why in measured


@pytest.mark.parametrize("adan_hit, verdict", [(20, HOLDS), (10, LARGER), (30, SMALLER), (None, FAILS)])
def test_the_adan_claim_compares_steps_to_adamws_final_result(tmp_path, adan_hit, verdict):
    cfg = config(tmp_path)
    steps = (0, 10, 20, 30, 40)
    adamw = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2), steps=steps, curve=(1.0, 0.5, 0.3, 0.2, 0.1)))
    curve = tuple(0.09 if adan_hit is not None and s >= adan_hit else 0.5 for s in steps[1:])
    final = curve[-1]
    adan = records(cfg, "adan", tuned(ADAMW_GRID, (final + 0.2, final, final + 0.3), steps=steps, curve=(1.0, *curve)))
    measured, found = claims(cfg, adamw + adan)[ADAN]
    assert found == verdict and "below 1: Adan faster" in measured
    assert (f"{adan_hit}/40" if adan_hit else "never") in measured


def _rlion(cfg, at_adamw_lr: float | None, lion_diverges_at: float | None = None) -> list:
    lion = {**tuned(LION_GRID, (0.3, 0.1, 0.2)),
            **{(lr, 0): result(None if lr == lion_diverges_at else 0.2) for lr in STRESS}}
    rlion = {**tuned((9.487e-4, 3e-3, 9.487e-3), (0.3, 0.1, 0.2)),
             **{(lr, 0): result(at_adamw_lr if lr == 1e-3 else 0.15) for lr in STRESS}}
    return records(cfg, "lion", lion) + records(cfg, "rlion", rlion)


@pytest.mark.parametrize("at_adamw_lr, verdict", [
    (0.11, HOLDS),  # inside AdamW's seed spread [0.1, 0.12]
    (0.1205, HOLDS),  # outside AdamW's spread, but within 10 % of its median 0.11
    (0.125, FAILS),  # outside both
    (0.5, FAILS),  # finite, but five times AdamW's loss: not training as well
    (None, FAILS),  # diverged
])
def test_rlion_at_adamws_lr_must_train_as_well_as_adamw_not_merely_stay_finite(tmp_path, at_adamw_lr, verdict):
    cfg = config(tmp_path)
    adamw = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2), spread=0.02))
    measured, found = claims(cfg, adamw + _rlion(cfg, at_adamw_lr))[RLION_LR]
    assert found == verdict and "negative: RLion worse" in measured


def test_the_rlion_divergence_claim_needs_lion_to_diverge(tmp_path):
    cfg = config(tmp_path)
    adamw = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2)))
    measured, verdict = claims(cfg, adamw + _rlion(cfg, 0.1, lion_diverges_at=0.1))[RLION_STABLE]
    assert verdict == HOLDS and "linear lr 0.1" in measured
    assert claims(cfg, adamw + _rlion(cfg, 0.1))[RLION_STABLE][1] == UNMEASURED
    both = _rlion(cfg, 0.1, lion_diverges_at=0.1)
    both = [r for r in both if not (r.cell.optimizer == "rlion" and r.lr == 0.1)]
    both += records(cfg, "rlion", {(0.1, 0): result(None)})
    measured, verdict = claims(cfg, adamw + both)[RLION_STABLE]
    assert verdict == FAILS and "(RLion too)" in measured


def test_claim_verdicts_compare_their_figures_as_printed(tmp_path):
    cfg = config(tmp_path)
    adamw = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2), state_bytes=80000, opt_ms=1.0))
    for lion_bytes, lion_ms, saving, speedup in [(44320, 0.9804, 45, "2.0"), (43680, 0.9796, 45, "2.0"),
                                                 (40000, 0.8496, 50, "15.0")]:  # 44.6/45.4 %, 1.96/2.04/15.04 %
        lion = records(cfg, "lion", tuned(LION_GRID, (0.3, 0.1, 0.2), state_bytes=lion_bytes, opt_ms=lion_ms))
        found = claims(cfg, adamw + lion)
        assert found[MEMORY] == (found[MEMORY][0], HOLDS) and f"{saving} % less" in found[MEMORY][0]
        assert found[SPEED] == (found[SPEED][0], HOLDS) and f"{speedup} % less time" in found[SPEED][0]
    adamw = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2)))  # 0.1 on both seeds: no spread
    for at, verdict, text in [(0.1104, FAILS, "linear -10.4 %"), (0.1096, HOLDS, "median -9.6 %"),
                              (0.11004, HOLDS, "median -10.0 %")]:  # -10.04 % prints -10.0 %: not beyond 10 %
        measured, found = claims(cfg, adamw + _rlion(cfg, at))[RLION_LR]
        assert found == verdict and text in measured


@pytest.mark.parametrize("adan_hit", [151, 149, 101, 99])  # 0.604, 0.596, 0.404, 0.396 of AdamW's 250: 0.60, 0.40
def test_the_adan_claim_holds_at_the_printed_edges_of_about_half(tmp_path, adan_hit):
    cfg = config(tmp_path)
    steps = tuple(range(301))
    adamw = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2), steps=steps,
                                        curve=(1.0, *(0.5 if s < 250 else 0.1 for s in steps[1:]))))
    curve = (1.0, *(0.09 if s >= adan_hit else 0.5 for s in steps[1:]))
    adan = records(cfg, "adan", tuned(ADAMW_GRID, (0.29, 0.09, 0.39), steps=steps, curve=curve))
    assert claims(cfg, adamw + adan)[ADAN][1] == HOLDS


def test_the_adan_claim_does_not_count_a_result_passed_on_the_way_to_diverging(tmp_path):
    cfg = config(tmp_path, seeds=3)
    steps = (0, 10, 20, 30, 40)
    adamw = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2), seeds=3, steps=steps,
                                        curve=(1.0, 0.5, 0.3, 0.2, 0.1)))
    adan = tuned(ADAMW_GRID, (0.29, 0.09, 0.39), seeds=3, steps=steps, curve=(1.0, 0.5, 0.09, 0.09, 0.09))
    adan[(1e-3, 1)] = adan[(1e-3, 2)] = result(None, steps=steps, curve=(1.0, 0.5, 0.09, 0.09))
    measured, verdict = claims(cfg, adamw + records(cfg, "adan", adan))[ADAN]
    assert verdict == FAILS and "Adan diverged on 2 of 3 seeds" in measured


def test_the_lr_claim_after_a_search_holds_only_inside_3_to_10(tmp_path):
    from optarena.arena.plan import BUDGET_PRESETS, default_lr, search_points

    cfg = config(tmp_path, tasks=(config(tmp_path).tasks[0], SECOND), optimizers=("adamw", "lion"),
                 tune=("lr", "weight_decay"), budget="quick")

    def runs(optimizer: str, best: int) -> dict:
        points = search_points(default_lr(optimizer), 0.01, BUDGET_PRESETS["quick"].search_trials)
        found = {(lr, 0, wd): result(0.1 if i == best else 0.3) for i, (lr, wd) in enumerate(points)}
        found[(points[best][0], 1, points[best][1])] = result(0.11)
        return found

    recs = []
    for task, adamw_best in (("linear", 0), ("linear2", 4)):
        recs += records(cfg, "adamw", runs("adamw", adamw_best), task=task)
        recs += records(cfg, "lion", runs("lion", 8), task=task)
    measured, verdict = claims(cfg, recs)[LR]
    assert "= 10.9 (" in measured and verdict == LARGER


def test_a_failed_run_is_no_evidence_for_either_rlion_claim(tmp_path):
    from optarena.arena.storage import Record

    cfg = config(tmp_path)
    adamw = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2), spread=0.02))
    rlion_cell = next(c for c in cfg.cells() if c.optimizer == "rlion")
    runs = [r for r in _rlion(cfg, 0.11, lion_diverges_at=0.1) if not (r.cell == rlion_cell and r.lr in (1e-3, 0.1))]
    runs += [Record(rlion_cell, lr, 0, state, None, "boom", 99, "w", "h") for lr, state in
             ((1e-3, "timed out"), (0.1, "error"))]
    found = claims(cfg, adamw + runs)
    assert found[RLION_LR][1] == UNMEASURED and "RLion's run failed: linear (timed out)" in found[RLION_LR][0]
    measured, verdict = found[RLION_STABLE]
    assert verdict == UNMEASURED and "Lion diverged in 0 of 3 runs" in measured
    assert "left out, a run failed: linear lr 0.001 (RLion), linear lr 0.1 (RLion)" in measured


def test_a_failed_lion_run_is_left_out_of_the_divergence_claim_and_named(tmp_path):
    from optarena.arena.storage import Record

    cfg = config(tmp_path)
    adamw = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2)))
    lion_cell = next(c for c in cfg.cells() if c.optimizer == "lion")
    runs = [r for r in _rlion(cfg, 0.1, lion_diverges_at=0.1) if not (r.cell == lion_cell and r.lr == 0.01)]
    runs.append(Record(lion_cell, 0.01, 0, "crashed", None, "killed", 99, "w", "h"))
    measured, verdict = claims(cfg, adamw + runs)[RLION_STABLE]
    assert verdict == HOLDS and "Lion diverged in 1 of 4 runs" in measured and "linear lr 0.01 (Lion)" in measured


def test_rlion_against_an_adamw_median_of_zero_is_judged_by_its_spread(tmp_path):
    cfg = config(tmp_path, optimizers=("adamw", "rlion"))
    adamw = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.0, 0.2)))  # 0 on both seeds, as at Rosenbrock's minimum
    rlion = {**{(lr, s): result(0.5) for lr in (3.162e-5, 1e-4, 3.162e-4) for s in (0, 1)}, (1e-3, 0): result(0.05)}
    measured, verdict = claims(cfg, adamw + records(cfg, "rlion", rlion))[RLION_LR]
    assert verdict == FAILS and "linear 0.05 against AdamW's 0" in measured
    assert "no relative gap to AdamW's 0 on linear" in measured and "inf" not in measured


def test_each_claim_prints_the_band_its_verdict_is_judged_by(tmp_path):
    """"Halves" and "about half" are read as ranges: the measured text names them, so that 46 % holding and 44 %
    falling short follow from the printed words; more state reads as more, not as a negative saving."""
    cfg = config(tmp_path)
    adamw = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2), state_bytes=80))
    for lion_bytes, text, verdict in [(43, "keeps 46 % less", HOLDS), (45, "keeps 44 % less", SMALLER),
                                      (90, "keeps 12 % more", FAILS)]:
        lion = records(cfg, "lion", tuned(LION_GRID, (0.3, 0.1, 0.2), state_bytes=lion_bytes))
        measured, found = claims(cfg, adamw + lion)[MEMORY]
        assert found == verdict and text in measured and "claimed 50 %, read as 45–55 %" in measured
    steps = (0, 10, 20, 30, 40)
    adamw = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2), steps=steps, curve=(1.0, 0.5, 0.3, 0.2, 0.1)))
    adan = records(cfg, "adan", tuned(ADAMW_GRID, (0.29, 0.09, 0.39), steps=steps, curve=(1.0, 0.5, 0.09, 0.09, 0.09)))
    assert "claimed about 0.5, read as 0.40–0.60): median 0.50" in claims(cfg, adamw + adan)[ADAN][0]


def test_rlion_holding_far_from_adamws_median_says_it_was_inside_the_spread(tmp_path):
    """AdamW at 0.2 [0.1, 0.3]: RLion's 0.28 is 40 % behind its median but inside its seed spread, which is what
    "as well as AdamW" takes; a "holds" beside "-40.0 %" must say so."""
    cfg = config(tmp_path)
    adamw = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2), spread=0.2))
    measured, verdict = claims(cfg, adamw + _rlion(cfg, 0.28))[RLION_LR]
    assert verdict == HOLDS and "median -40.0 % over 1 task" in measured
    assert measured.endswith("inside AdamW's seed spread or within 10 % of its median on the one task")


def test_an_adan_that_diverged_at_every_lr_never_reaches_adamws_result(tmp_path):
    """No lr was chosen, so Adan has no finals: that is divergence (the claim does not hold), not a missing Adan."""
    cfg = config(tmp_path)
    adamw = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2)))
    adan = records(cfg, "adan", {(lr, 0): result(None) for lr in ADAMW_GRID})
    measured, verdict = claims(cfg, adamw + adan)[ADAN]
    assert verdict == FAILS and "median never (linear never (Adan diverged at every lr tried))" in measured


def test_the_lr_claim_names_a_task_where_lion_diverged_at_every_lr(tmp_path):
    cfg = config(tmp_path, tasks=(config(tmp_path).tasks[0], SECOND), budget="quick")
    recs = []
    for task in ("linear", "linear2"):
        recs += records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2)), task=task)
    recs += records(cfg, "lion", _lion(1e-4, lrs=(1e-5, 3.162e-5, 1e-4, 3.162e-4, 1e-3)))
    recs += records(cfg, "lion", {(lr, 0): result(None) for lr in LION_GRID}, task="linear2")
    measured, verdict = claims(cfg, recs)[LR]
    assert verdict == HOLDS and measured.endswith("(median of 1 task, 1 inside 3–10; linear 10); left out: linear2 "
                                                  "(lion without a result)")


def test_a_lion_as_fast_and_as_large_as_adamw_prints_no_negative_zero(tmp_path):
    """0.03 % slower and 0.01 % more state round to zero: "0.0 % less time" and "0 % less", never "-0.0 %"."""
    cfg = config(tmp_path)
    recs = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2), state_bytes=80000, opt_ms=1.0))
    recs += records(cfg, "lion", tuned(LION_GRID, (0.3, 0.1, 0.2), state_bytes=80008, opt_ms=1.0003))
    found = claims(cfg, recs)
    assert "-0" not in found[SPEED][0] and "takes 0.0 % less time" in found[SPEED][0]
    assert "-0" not in found[MEMORY][0] and "keeps 0 % less" in found[MEMORY][0]
