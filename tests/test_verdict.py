"""The arena's answer on made-up stored runs: each figure and sentence changes when the runs change."""

from __future__ import annotations

import math

import pytest
from synthetic import ADAMW_GRID, LION_GRID, SECOND, USER_TASKS, config, records, result, tuned

from optarena.arena.plan import default_lr, search_points
from optarena.arena.report import TERMINAL_WIDTH, summary_table, tasks_verdict_table, terminal_summary, write_report
from optarena.arena.results import ResultSet
from optarena.arena.storage import Record
from optarena.arena.verdict import compute_verdict, lr_plateau, plateau_width, profile, score, task_verdict


def _two(tmp_path, lion_metric: float, lion_spread: float = 0.0, **lion_kw):
    """AdamW at 0.1 [0.1, 0.12] (lower is better) against Lion at ``lion_metric`` on the linear task."""
    cfg = config(tmp_path, optimizers=("adamw", "lion"))
    recs = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2), spread=0.02, state_bytes=80))
    lion_kw.setdefault("state_bytes", 40)
    recs += records(cfg, "lion", tuned(LION_GRID, (lion_metric + 0.2, lion_metric, lion_metric + 0.3),
                                       spread=lion_spread, **lion_kw))
    return ResultSet(cfg, recs)


def test_a_difference_inside_the_seed_spread_is_a_tie_and_beyond_it_a_win(tmp_path):
    results = _two(tmp_path, 0.115)  # Lion 0.115, inside AdamW's [0.1, 0.12]
    tie = task_verdict(results, next(iter(results.tasks)))
    assert tie.winner == "adamw" and tie.is_tie and tie.tied == ["adamw", "lion"]
    assert "tie between adamw, lion" in tie.sentence() and "inside the seed spread" in tie.sentence()
    results = _two(tmp_path, 0.05)
    win = task_verdict(results, next(iter(results.tasks)))
    assert win.winner == "lion" and not win.is_tie and win.margin == pytest.approx(0.06 / 0.11)
    assert "lion best: lion 0.05 vs adamw 0.11 (+54.5 %), beyond the seed spread" in win.sentence()


def test_the_gap_is_to_the_runner_up_and_a_wide_third_is_named_apart(tmp_path):
    cfg = config(tmp_path, optimizers=("adamw", "lion", "adan"), seeds=3)
    recs = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2), seeds=3))  # 0.1, no spread
    recs += records(cfg, "lion", tuned(LION_GRID, (0.3, 0.11, 0.2), seeds=3))  # 0.11, no spread
    adan = tuned(ADAMW_GRID, (0.3, 0.09, 0.4), seeds=3)
    adan[(1e-3, 1)], adan[(1e-3, 2)] = result(0.13), result(0.2)  # median 0.13 over [0.09, 0.2]
    recs += records(cfg, "adan", adan)
    verdict = task_verdict(ResultSet(cfg, recs), cfg.tasks[0])
    assert verdict.runner_up == "lion" and not verdict.is_tie and verdict.tied == ["adamw", "adan"]
    assert ("adamw best: adamw 0.1 vs lion 0.11 (+9.1 %), beyond the seed spread; adan also within the seed spread "
            "of adamw") in verdict.sentence()


def test_one_seed_or_one_result_is_said_so(tmp_path):
    cfg = config(tmp_path, optimizers=("adamw", "lion"), seeds=1)
    recs = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2), seeds=1))
    recs += records(cfg, "lion", tuned(LION_GRID, (0.3, 0.11, 0.2), seeds=1))
    verdict = task_verdict(ResultSet(cfg, recs), cfg.tasks[0])
    assert verdict.difference == "one seed: no spread measured" and "no spread measured" in verdict.sentence()
    diverged = records(cfg, "lion", {(lr, 0): result(None) for lr in LION_GRID})
    alone = task_verdict(ResultSet(cfg, recs[:3] + diverged), cfg.tasks[0])
    assert "adamw 0.1, the only result; no result: lion (diverged)" in alone.sentence()


def test_results_printed_alike_tie_whatever_their_spread(tmp_path):
    cfg = config(tmp_path, optimizers=("adamw", "lion"))  # no seed spread, as on the 2-D functions
    recs = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2)))
    recs += records(cfg, "lion", tuned(LION_GRID, (0.3, 0.10003, 0.2)))
    verdict = compute_verdict(ResultSet(cfg, recs))
    task = verdict.tasks[0]
    assert task.is_tie and "tie between adamw, lion: adamw 0.1 vs lion 0.1 (+0.0 %), equal as printed" in (
        task.sentence())
    assert tasks_verdict_table(verdict).rows[0][3:] == ["tie (equal as printed)", "adamw, lion"]
    assert verdict.standings["lion"].first == 1 and "Level with it: lion." in verdict.pick


def test_one_seed_is_said_in_the_table_and_the_pick_too(tmp_path):
    cfg = config(tmp_path, optimizers=("adamw", "lion"), seeds=1)
    recs = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.11, 0.2), seeds=1))
    recs += records(cfg, "lion", tuned(LION_GRID, (0.3, 0.1, 0.2), seeds=1))
    verdict = compute_verdict(ResultSet(cfg, recs))
    assert tasks_verdict_table(verdict).rows[0][3] == "one seed: no spread measured"
    assert "beaten beyond the seed spread" not in verdict.pick
    assert "Ahead of AdamW where a result stands on one seed (no spread measured): lion on linear." in verdict.pick
    assert "picked for its speed" not in verdict.pick  # no target was reached: no speed to pick it for


def test_a_diverged_seed_counts_in_the_median_as_worse_than_any_result(tmp_path):
    cfg = config(tmp_path, optimizers=("adamw", "adan"), seeds=3)
    adamw = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2), seeds=3))
    adan = tuned(ADAMW_GRID, (0.29, 0.09, 0.39), seeds=3)
    adan[(1e-3, 1)] = adan[(1e-3, 2)] = result(None)  # diverged on two of three seeds: no median result
    results = ResultSet(cfg, adamw + records(cfg, "adan", adan))
    verdict = compute_verdict(results)
    assert "adamw 0.1, the only result; no result: adan (diverged)" in verdict.tasks[0].sentence()
    assert verdict.pick.startswith("Pick adamw") and summary_table(results).rows[1][4] == "diverged"
    assert verdict.standings["adan"].plateau_decades is None  # no result on the task: no lr plateau there either
    adan[(1e-3, 1)] = result(0.095)  # one diverged seed of three: the median is the worse of the other two
    results = ResultSet(cfg, adamw + records(cfg, "adan", adan))
    assert summary_table(results).rows[1][4:7] == ["0.095 [0.09, 0.095]", "3", "1/3 (tuning 0)"]
    assert "adan best: adan 0.095 vs adamw 0.1 (+5.0 %), beyond the seed spread" in task_verdict(
        results, cfg.tasks[0]).sentence()


def test_no_range_is_printed_where_one_seed_has_a_result(tmp_path):
    from optarena.arena.storage import Record

    cfg = config(tmp_path, optimizers=("adamw", "lion"))
    recs = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2), seeds=1))
    recs.append(Record(recs[0].cell, 1e-3, 1, "error", None, "boom", 99, "w", "h"))  # the second seed failed
    recs += records(cfg, "lion", tuned(LION_GRID, (0.3, 0.11, 0.2), spread=0.01))
    results = ResultSet(cfg, recs)
    assert summary_table(results).rows[0][4] == "0.1" and summary_table(results).rows[1][4] == "0.115 [0.11, 0.12]"
    assert task_verdict(results, cfg.tasks[0]).difference == "one seed: no spread measured"


def test_one_seed_is_said_even_where_the_results_tie_within_float_noise(tmp_path):
    cfg = config(tmp_path, optimizers=("adamw", "lion"), seeds=1)
    recs = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.12345, 0.2), seeds=1, state_bytes=72))
    recs += records(cfg, "lion", tuned(LION_GRID, (0.3, 0.1234499, 0.2), seeds=1, state_bytes=36))
    assert task_verdict(ResultSet(cfg, recs), cfg.tasks[0]).difference == "one seed: no spread measured"
    recs = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2), seeds=1, state_bytes=72))
    recs += records(cfg, "lion", tuned(LION_GRID, (0.3, 0.11, 0.2), seeds=1, state_bytes=36))
    pick = compute_verdict(ResultSet(cfg, recs)).pick  # adamw ahead on its one seed: lion is not "never beaten"
    assert "No optimizer that adamw never beats keeps less state than its 8.00" in pick


def test_plateau_widths_split_by_one_rounded_grid_step_have_one_median():
    assert plateau_width([0.0, 0.49996]) == plateau_width([0.0, 0.50004]) == plateau_width([0.0, 0.5])


def test_the_pick_compares_scores_and_state_as_printed(tmp_path):
    cfg = config(tmp_path, tasks=(config(tmp_path).tasks[0], SECOND), optimizers=("adamw", "lion"), seeds=3)
    recs = []
    for task, lion_steps in (("linear", 100), ("linear2", 101)):  # lion's score 0.9989 prints as 1.00
        recs += records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2), seeds=3, spread=0.01, to_target=100),
                        task=task)
        recs += records(cfg, "lion", tuned(LION_GRID, (0.3, 0.1, 0.2), seeds=3, to_target=lion_steps), task=task)
    pick = compute_verdict(ResultSet(cfg, recs)).pick
    assert "score 1.00 in steps" in pick and "Level with it on both counts: lion." in pick
    cfg = config(tmp_path, optimizers=("adamw", "lion"))
    recs = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2), spread=0.01, to_target=100, seconds=5.0))
    recs += records(cfg, "lion", tuned(LION_GRID, (0.3, 0.1, 0.2), spread=0.01, to_target=200, seconds=1.0))
    pick = compute_verdict(ResultSet(cfg, recs)).pick
    assert pick.startswith("Pick adamw: the fastest to the tasks' targets in steps (AlgoPerf-style score 1.00 in "
                           "steps, 0.00 in seconds, where lion scores higher (up to 1.00)")
    # 8.00 B/param against 8.000008 (a step counter): one figure as printed, so nothing keeps less state
    recs = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2), spread=0.02, state_bytes=72.00008))
    recs += records(cfg, "lion", tuned(LION_GRID, (0.3, 0.105, 0.2), state_bytes=72))
    pick = compute_verdict(ResultSet(cfg, recs)).pick
    assert "No optimizer that adamw never beats keeps less state than its 8.00" in pick


def test_a_zero_runner_up_gets_no_relative_margin(tmp_path):
    cfg = config(tmp_path, optimizers=("adamw", "lion"))
    recs = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.0, 0.2)))
    recs += records(cfg, "lion", tuned(LION_GRID, (0.3, -0.5, 0.2)))
    verdict = task_verdict(ResultSet(cfg, recs), cfg.tasks[0])
    assert verdict.margin is None and "(no relative margin: adamw at 0)" in verdict.sentence()


def test_the_pick_follows_the_runs(tmp_path):
    tie = compute_verdict(_two(tmp_path, 0.115))
    assert tie.pick.startswith("Pick adamw: best or tied for best final result on 1 of 1 tasks. No optimizer "
                               "reached any task's target")
    assert "no optimizer beats the AdamW baseline beyond the seed spread on any task." in tie.pick
    assert "Cheapest in memory among those adamw never beats: lion (4.44" in tie.pick
    same_memory = compute_verdict(_two(tmp_path, 0.115, state_bytes=80)).pick
    assert "No optimizer that adamw never beats keeps less state than its 8.89" in same_memory
    better = compute_verdict(_two(tmp_path, 0.05))
    assert "AdamW is beaten beyond the seed spread by lion on linear" in better.pick
    assert better.standings["lion"].beats_adamw == ["linear"] and better.standings["adamw"].beats_adamw == []


def _scored(tmp_path, lion_hits: tuple[int | None, ...]):
    cfg = config(tmp_path, tasks=(config(tmp_path).tasks[0], SECOND), optimizers=("adamw", "lion"), seeds=3)
    recs = []
    for task in ("linear", "linear2"):
        runs = tuned(ADAMW_GRID, (0.3, 0.1, 0.2), seeds=3, to_target=100)
        recs += records(cfg, "adamw", runs, task=task)
        lion = tuned(LION_GRID, (0.3, 0.1, 0.2), seeds=3, to_target=200)
        if task == "linear2":  # per seed: its steps to target, None for a miss
            for seed, hit in enumerate(lion_hits):
                lion[(1e-4, seed)] = result(0.1, to_target=hit)
        recs += records(cfg, "lion", lion, task=task)
    return compute_verdict(ResultSet(cfg, recs))


def test_algoperf_scores_from_times_to_target_with_misses_as_infinite(tmp_path):
    verdict = _scored(tmp_path, (None, None, 400))  # lion misses linear2's target on two of three seeds
    assert verdict.ratios_steps == {"linear": {"adamw": 1.0, "lion": 2.0},
                                    "linear2": {"adamw": 1.0, "lion": math.inf}}
    assert profile(verdict.ratios_steps, "lion", 1.99) == 0.0 and profile(verdict.ratios_steps, "lion", 2.0) == 0.5
    assert score(verdict.ratios_steps, "adamw") == 1.0
    assert score(verdict.ratios_steps, "lion") == pytest.approx((4 - 2) / (3 * 2))
    assert verdict.standings["lion"].score_steps == pytest.approx(1 / 3)
    assert verdict.pick.startswith("Pick adamw: the fastest to the tasks' targets (AlgoPerf-style score 1.00 in steps")
    # one miss in three: the median over seeds is the slower hit
    assert _scored(tmp_path, (100, None, 300)).ratios_steps["linear2"]["lion"] == 3.0


def test_the_lr_plateau_is_the_run_of_grid_points_within_the_seed_spread(tmp_path):
    cfg = config(tmp_path, optimizers=("adamw",))
    wide = ResultSet(cfg, records(cfg, "adamw", tuned(ADAMW_GRID, (0.11, 0.1, 0.2), spread=0.02)))
    plateau = lr_plateau(wide, wide.summaries[wide.cells[0].study_name])
    assert plateau.points == 2 and plateau.decades == pytest.approx(0.5, abs=1e-3) and plateau.open_ended
    narrow = ResultSet(cfg, records(cfg, "adamw", tuned(ADAMW_GRID, (0.11, 0.1, 0.2), spread=0.0)))
    assert lr_plateau(narrow, narrow.summaries[narrow.cells[0].study_name]).decades == 0.0


def test_plateaus_equal_to_the_printed_tenth_of_a_decade_are_equally_robust(tmp_path):
    """AdamW's plateau reaches up one grid step (log10(3.162e-3 / 1e-3) = 0.49996 decades), Lion's down one
    (log10(1e-4 / 3.162e-5) = 0.50004): both are printed as 0.5, and the verdict names both as the most robust."""
    cfg = config(tmp_path, optimizers=("adamw", "lion"))
    recs = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.11), spread=0.02))
    recs += records(cfg, "lion", tuned(LION_GRID, (0.11, 0.1, 0.3), spread=0.02))
    results = ResultSet(cfg, recs)
    widths = [lr_plateau(results, s).decades for s in results.summaries.values()]
    assert widths[0] != widths[1] and widths == pytest.approx([0.5, 0.5], abs=1e-3)
    verdict = compute_verdict(results)
    assert [s.plateau_decades for s in verdict.standings.values()] == [0.5, 0.5]
    assert "Most robust to the learning rate: adamw, lion (" in verdict.pick


def test_stress_runs_count_in_the_lr_plateau_only_beyond_the_grid(tmp_path):
    """RLion's grid (≈9.5e-4, 3e-3, 9.5e-3) sits 0.02 decades from the stress lrs 1e-3 and 3.16e-3: a worse single
    run there must not cut the plateau between grid points; the stress runs past the grid's top extend it."""
    cfg = config(tmp_path, optimizers=("rlion",))
    grid = tuple(ResultSet(cfg, []).summaries[cfg.cells()[0].study_name].plan.tuning_lrs)
    runs = tuned(grid, (0.5, 0.1, 0.11), spread=0.02)  # the top two grid lrs within the chosen lr's seed spread
    runs.update({(1e-3, 0): result(0.5), (3.162e-3, 0): result(0.5), (1e-2, 0): result(0.11),
                 (3.162e-2, 0): result(None)})
    results = ResultSet(cfg, records(cfg, "rlion", runs))
    plateau = lr_plateau(results, results.summaries[cfg.cells()[0].study_name])
    assert plateau.points == 3 and not plateau.open_ended
    assert plateau.decades == pytest.approx(math.log10(1e-2 / grid[1]), abs=1e-3)


def test_an_optimizer_that_never_left_the_untrained_models_result_is_named(tmp_path):
    cfg = config(tmp_path, optimizers=("adamw", "lion"))
    recs = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2)))
    recs += records(cfg, "lion", {(lr, s): result(1.0, curve=(1.0, 1.0)) for lr in LION_GRID for s in (0, 1)})
    verdict = compute_verdict(ResultSet(cfg, recs))
    assert verdict.standings["lion"].never_learned == ["linear"] and verdict.standings["adamw"].never_learned == []


def test_a_plateau_of_never_learning_is_not_robustness(tmp_path):
    cfg = config(tmp_path, optimizers=("adamw", "lion"))
    recs = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2), spread=0.02))
    recs += records(cfg, "lion", {(lr, s): result(1.0, curve=(1.0, 1.0)) for lr in LION_GRID for s in (0, 1)})
    verdict = compute_verdict(ResultSet(cfg, recs))
    assert verdict.standings["lion"].plateau_decades is None and "Most robust" not in verdict.pick


def test_the_table_names_every_optimizer_tied_with_the_best(tmp_path):
    cfg = config(tmp_path, optimizers=("adamw", "lion", "adan"), seeds=3)
    recs = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2), seeds=3))
    recs += records(cfg, "lion", tuned(LION_GRID, (0.3, 0.11, 0.2), seeds=3))  # the runner-up, beyond the spread
    adan = tuned(ADAMW_GRID, (0.3, 0.09, 0.4), seeds=3)
    adan[(1e-3, 1)], adan[(1e-3, 2)] = result(0.13), result(0.2)  # third, but its spread holds adamw's 0.1
    verdict = compute_verdict(ResultSet(cfg, recs + records(cfg, "adan", adan)))
    assert tasks_verdict_table(verdict).rows[0][3:] == ["beyond the seed spread", "adamw, adan"]
    assert verdict.standings["adan"].first == 1


def test_the_report_and_the_terminal_open_with_the_verdict(tmp_path):
    results = _two(tmp_path, 0.05)
    paths = write_report(results, tmp_path / "report")
    markdown = paths["markdown"].read_text()
    assert markdown.index("**Pick lion") < markdown.index("## Verdict per task") < markdown.index("## Summary")
    assert (tmp_path / "report" / "profile.png").exists() and "Performance profiles" in markdown
    text = terminal_summary(results, paths)
    assert text.startswith("Pick lion") and "lion best" in text
    assert max(len(line) for line in text.splitlines() if not line.startswith("report: ")) <= TERMINAL_WIDTH


def test_the_terminal_stays_within_80_columns_with_long_names_and_tiny_numbers(tmp_path):
    cfg = config(tmp_path, optimizers=("adamw", "schedulefree_adamw"), tune=("lr", "weight_decay"), seeds=3)
    recs = []
    for optimizer in cfg.optimizers:
        points = search_points(default_lr(optimizer), 0.01, 4)  # the linear task has no decay: base 0.01
        runs = {(lr, 0, wd): result(1.234567e-5 + i * 1e-7) for i, (lr, wd) in enumerate(points)}
        runs.update({(*points[0][:1], s, points[0][1]): result(1.3e-5 + s * 1e-7) for s in (1, 2)})
        recs += records(cfg, optimizer, runs)
    results = ResultSet(cfg, recs)
    text = terminal_summary(results, write_report(results, tmp_path / "report"))
    assert max(len(line) for line in text.splitlines() if not line.startswith("report: ")) <= TERMINAL_WIDTH
    assert "schedulefree_adamw" in text and ", wd " in text


def test_no_crash_and_no_score_when_targets_are_met_at_step_zero_or_never(tmp_path):
    cfg = config(tmp_path, optimizers=("adamw", "lion"), seeds=3)
    recs = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2), seeds=3, to_target=0))
    recs += records(cfg, "lion", tuned(LION_GRID, (0.3, 0.1, 0.2), seeds=3, to_target=40))
    verdict = compute_verdict(ResultSet(cfg, recs))
    assert verdict.ratios_steps == {"linear": {"adamw": 1.0, "lion": math.inf}}


def test_diverged_is_not_never_learned_and_worse_than_untrained_is(tmp_path):
    cfg = config(tmp_path, optimizers=("adamw", "lion"))
    worse = {(lr, s): result(2.0, curve=(1.0, 1.5, 2.0)) for lr in ADAMW_GRID for s in (0, 1)}  # ends above start
    recs = records(cfg, "adamw", worse) + records(cfg, "lion", {(lr, 0): result(None) for lr in LION_GRID})
    standings = compute_verdict(ResultSet(cfg, recs)).standings
    assert standings["adamw"].never_learned == ["linear"] and standings["lion"].never_learned == []


def test_adamw_alone_gets_no_baseline_sentence(tmp_path):
    cfg = config(tmp_path, optimizers=("adamw",))
    pick = compute_verdict(ResultSet(cfg, records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2))))).pick
    assert pick.startswith("Pick adamw") and "AdamW baseline" not in pick


def test_the_protocol_says_which_optimizers_the_decay_search_cannot_move(tmp_path):
    from optarena.arena.report import protocol

    searched = protocol(ResultSet(config(tmp_path, optimizers=("adamw", "amos"), tune=("lr", "weight_decay")), []))
    assert "quasi-random points" in searched and "amos translates every decay to 0" in searched
    assert "every decay to 0" not in protocol(
        ResultSet(config(tmp_path, optimizers=("adamw", "lion"), tune=("lr", "weight_decay")), []))
    assert "quasi-random" not in protocol(ResultSet(config(tmp_path, optimizers=("adamw", "amos")), []))


def test_an_adamw_that_failed_or_has_not_run_is_beaten_by_nobody(tmp_path):
    """No result because AdamW's runs raised (or are still to come) is no evidence: only a diverged AdamW is beaten
    by a result."""
    cfg = config(tmp_path, optimizers=("adamw", "lion"))
    lion = records(cfg, "lion", tuned(LION_GRID, (0.3, 0.1, 0.2), spread=0.01))
    adamw_cell = next(c for c in cfg.cells() if c.optimizer == "adamw")
    failed = [Record(adamw_cell, lr, 0, "error", None, "boom", 9 + i, "w", "h") for i, lr in enumerate(ADAMW_GRID)]
    for adamw, why in (([], "not run yet"), (failed, "error")):
        verdict = compute_verdict(ResultSet(cfg, lion + adamw))
        assert verdict.standings["lion"].beats_adamw == [] and "beaten" not in verdict.pick
        assert verdict.pick.endswith(f"No AdamW result to compare with on linear ({why}).")
    diverged = records(cfg, "adamw", {(lr, 0): result(None) for lr in ADAMW_GRID})
    assert "AdamW is beaten beyond the seed spread by lion on linear." in compute_verdict(
        ResultSet(cfg, lion + diverged)).pick
    cfg = config(tmp_path, tasks=(config(tmp_path).tasks[0], SECOND), optimizers=("adamw", "lion"))
    recs = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2), spread=0.02))
    recs += records(cfg, "lion", tuned(LION_GRID, (0.3, 0.11, 0.2)))  # a tie with AdamW on linear
    recs += records(cfg, "lion", tuned(LION_GRID, (0.3, 0.1, 0.2)), task="linear2")
    failed = [Record(next(c for c in cfg.cells() if c.optimizer == "adamw" and c.task_name == "linear2"), lr, 0,
                     "crashed", None, "killed", 9 + i, "w", "h") for i, lr in enumerate(ADAMW_GRID)]
    pick = compute_verdict(ResultSet(cfg, recs + failed)).pick
    assert pick.endswith("On the final metric, no optimizer beats the AdamW baseline beyond the seed spread on any "
                         "task where AdamW has a result. No AdamW result to compare with on linear2 (crashed).")


def test_without_any_target_the_pick_says_no_task_has_one(tmp_path):
    cfg = config(tmp_path, tasks=(f"{USER_TASKS}:exploding",), optimizers=("adamw", "lion"))
    recs = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2)), task="exploding")
    recs += records(cfg, "lion", tuned(LION_GRID, (0.3, 0.2, 0.4)), task="exploding")
    pick = compute_verdict(ResultSet(cfg, recs)).pick
    assert "No task has a target, so there is no AlgoPerf-style score." in pick and "reached" not in pick


def test_a_win_whose_margin_rounds_to_zero_prints_its_digits(tmp_path):
    """1.2345 against 1.2346 on both seeds (no spread, as on the 2-D functions) is a win printed 1.234 vs 1.235: its
    margin must not read +0.0 %, which says there is none; a tie keeps +0.0 %."""
    cfg = config(tmp_path, optimizers=("adamw", "lion"))
    recs = records(cfg, "adamw", tuned(ADAMW_GRID, (3.0, 1.2346, 2.0)))
    recs += records(cfg, "lion", tuned(LION_GRID, (3.0, 1.2345, 2.0)))
    verdict = compute_verdict(ResultSet(cfg, recs))
    assert "lion best: lion 1.234 vs adamw 1.235 (+0.0081 %), beyond the seed spread" in verdict.tasks[0].sentence()
    assert tasks_verdict_table(verdict).rows[0][2] == "+0.0081 % vs adamw"
    recs = records(cfg, "adamw", tuned(ADAMW_GRID, (3.0, 1.2346, 2.0)))
    recs += records(cfg, "lion", tuned(LION_GRID, (3.0, 1.23, 2.0), spread=0.009))  # 1.2345 [1.23, 1.239]
    assert "lion 1.234 vs adamw 1.235 (+0.0 %), inside the seed spread" in task_verdict(
        ResultSet(cfg, recs), cfg.tasks[0]).sentence()


def test_a_median_printed_on_the_printed_edge_of_the_others_range_is_a_tie(tmp_path):
    """AdamW at 0.123456 on both seeds prints 0.1235; Lion's range [0.12346, 0.17346] prints [0.1235, 0.1735]: the
    printed AdamW median sits on Lion's printed lower edge, so the report may not call Lion beaten beyond the spread."""
    cfg = config(tmp_path, optimizers=("adamw", "lion"))
    recs = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.123456, 0.2)))
    recs += records(cfg, "lion", tuned(LION_GRID, (0.3, 0.12346, 0.2), spread=0.05))
    verdict = compute_verdict(ResultSet(cfg, recs))
    task = verdict.tasks[0]
    assert task.is_tie and "inside the seed spread" in task.sentence(), task.sentence()
    assert "beaten beyond the seed spread" not in verdict.pick


def test_a_chosen_setting_with_a_seed_that_did_not_learn_reads_no_plateau(tmp_path):
    """Lion's seed 1 at its chosen lr stays at the untrained level: every grid lr is then "no worse than its worst
    seed", which read as the widest plateau and named Lion the most robust (yolo_shapes: RLion at 0.0006–0.215)."""
    cfg = config(tmp_path, optimizers=("adamw", "lion"))
    recs = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2), spread=0.02))
    lion = tuned(LION_GRID, (0.5, 0.1, 0.6))
    results = ResultSet(cfg, recs + records(cfg, "lion", lion))
    assert compute_verdict(results).standings["lion"].plateau_decades == 0.0  # every seed learned: counted
    lion[(LION_GRID[1], 1)] = result(1.04, curve=(1.05, 1.04))  # seed 1 never left the untrained level
    results = ResultSet(cfg, recs + records(cfg, "lion", lion))
    lion_summary = next(s for s in results.summaries.values() if s.cell.optimizer == "lion")
    assert lr_plateau(results, lion_summary).decades > 0.9  # the grid reads as one plateau
    verdict = compute_verdict(results)
    assert verdict.standings["lion"].plateau_decades is None and verdict.standings["lion"].never_learned == []
    assert "Most robust" not in verdict.pick  # was: "Most robust to the learning rate: lion (1.0 decades"


def test_without_an_untrained_result_no_plateau_is_read(tmp_path):
    """Workloads evaluate only after training: whether a seed learned cannot be judged, so no plateau (and no "most
    robust") leans on it; with the step-0 evaluation the same runs read one."""
    cfg = config(tmp_path, optimizers=("adamw",))

    def runs(steps):
        return {key: result(r.final_metric, steps=steps) for key, r in
                tuned(ADAMW_GRID, (0.11, 0.1, 0.2), spread=0.02).items()}

    with_start = compute_verdict(ResultSet(cfg, records(cfg, "adamw", runs((0, 10, 20, 30)))))
    assert with_start.standings["adamw"].plateau_decades == 0.5 and "Most robust" in with_start.pick
    without = compute_verdict(ResultSet(cfg, records(cfg, "adamw", runs((10, 20, 30)))))
    assert without.standings["adamw"].plateau_decades is None and "Most robust" not in without.pick
    assert without.standings["adamw"].never_learned == []  # nor is "never learned" claimed
