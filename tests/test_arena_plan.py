"""The fair protocol's planning: grid, edge extension, seeds at the chosen lr, stress runs."""

from __future__ import annotations

import pytest

from optarena.arena.plan import BUDGET_PRESETS, Cell, Outcome, default_lr, grid_lr, plan_cell, point_key, search_points

QUICK = BUDGET_PRESETS["quick"]


def _cell(optimizer: str = "adamw", higher: bool = True) -> Cell:
    return Cell("t", "t", 32, optimizer, "quick", higher)


def _finish(finished: dict, lr: float, seed: int, metric: float | None) -> None:
    finished[point_key(lr, seed)] = Outcome(lr, seed, metric)


def test_grid_points_are_half_decades_around_the_default():
    assert [grid_lr(1e-3, k) for k in (-2, -1, 0, 1, 2)] == [1e-4, 3.162e-4, 1e-3, 3.162e-3, 1e-2]


def test_a_fresh_cell_plans_its_tuning_grid_on_seed_zero_and_waits_for_it():
    plan = plan_cell(_cell(), QUICK, seeds=3, finished={}, stress=False)
    assert plan.missing == [(3.162e-4, 0, None), (1e-3, 0, None), (3.162e-3, 0, None)]
    assert plan.blocked and not plan.complete and plan.chosen_lr is None


@pytest.mark.parametrize("higher", [True, False])
def test_after_tuning_the_best_lr_is_repeated_over_the_other_seeds(higher: bool):
    finished: dict = {}
    metrics = {3.162e-4: 0.5, 1e-3: 0.9, 3.162e-3: 0.7}
    for lr, m in metrics.items():
        _finish(finished, lr, 0, m if higher else -m)
    plan = plan_cell(_cell(higher=higher), QUICK, seeds=3, finished=finished, stress=False)
    assert plan.chosen_lr == 1e-3 and not plan.at_edge
    assert plan.missing == [(1e-3, 1, None), (1e-3, 2, None)]
    _finish(finished, 1e-3, 1, 0.8)
    _finish(finished, 1e-3, 2, 0.8)
    assert plan_cell(_cell(higher=higher), QUICK, seeds=3, finished=finished, stress=False).complete


def test_a_best_point_on_the_edge_grows_the_grid_one_step_at_a_time_up_to_the_budgets_radius():
    finished: dict = {}
    for lr, m in {3.162e-4: 0.1, 1e-3: 0.2, 3.162e-3: 0.3}.items():
        _finish(finished, lr, 0, m)
    plan = plan_cell(_cell(), QUICK, seeds=2, finished=finished, stress=False)
    assert plan.missing == [(1e-2, 0, None)] and plan.blocked
    for k in range(2, QUICK.max_radius + 1):  # still improving at every step: grow until the radius, 1000x
        _finish(finished, grid_lr(1e-3, k), 0, 0.2 + 0.1 * k)
    plan = plan_cell(_cell(), QUICK, seeds=2, finished=finished, stress=False)
    assert plan.chosen_lr == 1.0 and plan.at_edge and plan.missing == [(1.0, 1, None)]
    assert plan.tuning_lrs[0] == 3.162e-4 and len(plan.tuning_lrs) == 3 + QUICK.max_radius - 1

    finished = {}
    for lr, m in {3.162e-4: 0.3, 1e-3: 0.2, 3.162e-3: 0.1}.items():  # best on the low edge: grow downwards
        _finish(finished, lr, 0, m)
    assert plan_cell(_cell(), QUICK, seeds=2, finished=finished, stress=False).missing == [(1e-4, 0, None)]


def test_diverged_runs_never_win_and_all_diverged_means_no_seed_runs():
    finished: dict = {}
    for lr in (3.162e-4, 1e-3, 3.162e-3):
        _finish(finished, lr, 0, None)
    plan = plan_cell(_cell(), QUICK, seeds=3, finished=finished, stress=False)
    assert plan.complete and plan.chosen_lr is None and plan.missing == []
    _finish(finished, 1e-3, 0, None)
    finished[point_key(3.162e-4, 0, None)] = Outcome(3.162e-4, 0, 0.1)
    plan = plan_cell(_cell(), QUICK, seeds=2, finished=finished, stress=False)
    assert plan.missing == [(1e-4, 0, None)]  # the only finite point is the low edge: look one step lower


def test_lion_and_rlion_also_run_at_adamw_sized_learning_rates():
    plan = plan_cell(_cell("lion"), QUICK, seeds=2, finished={}, stress=True)
    assert {(1e-3, 0, None), (3.162e-3, 0, None), (1e-2, 0, None)} <= set(plan.missing)
    assert plan_cell(_cell("adan"), QUICK, seeds=2, finished={}, stress=True).missing == [
        (grid_lr(1e-3, k), 0, None) for k in (-1, 0, 1)]
    # a stress lr that is also a grid lr runs once
    plan = plan_cell(_cell("lion"), BUDGET_PRESETS["full"], seeds=2, finished={}, stress=True)
    assert len(plan.missing) == len(set(plan.missing))


def test_ties_go_to_the_point_nearest_the_default_and_never_grow_the_grid():
    finished: dict = {}
    for lr in (3.162e-4, 1e-3, 3.162e-3):
        _finish(finished, lr, 0, 1.0)  # a saturated accuracy: every lr ties
    plan = plan_cell(_cell(), QUICK, seeds=2, finished=finished, stress=False)
    assert plan.chosen_lr == 1e-3 and not plan.at_edge and plan.missing == [(1e-3, 1, None)]


def test_tuning_weight_decay_spends_the_same_fixed_budget_on_every_optimizer():
    plans = {name: plan_cell(_cell(name), QUICK, seeds=3, finished={}, stress=False, tune=("lr", "weight_decay"),
                             base_wd=0.1) for name in ("adamw", "lion")}
    for name, plan in plans.items():
        points = [(lr, wd) for lr, seed, wd in plan.missing]
        assert len(points) == QUICK.search_trials and plan.blocked and plan.tuning_lrs == []
        assert points[0] == (default_lr(name), 0.1)  # the defaults first
        for lr, wd in points:  # inside the declared space
            assert default_lr(name) * 10 ** -1.5 * 0.999 <= lr <= default_lr(name) * 10 ** 1.5 * 1.001
            assert 0.01 * 0.999 <= wd <= 1.0 * 1.001
    # the same points relative to each optimizer's default lr
    assert [lr / default_lr("lion") for lr, _, _ in plans["lion"].missing] == pytest.approx(
        [lr / default_lr("adamw") for lr, _, _ in plans["adamw"].missing], rel=1e-3)
    assert [wd for *_, wd in plans["lion"].missing] == [wd for *_, wd in plans["adamw"].missing]


def test_after_the_search_the_best_lr_and_weight_decay_are_repeated_over_the_seeds():
    space = search_points(1e-3, 0.1, QUICK.search_trials)
    finished = {point_key(lr, 0, wd): Outcome(lr, 0, 0.5 + 0.01 * i, wd) for i, (lr, wd) in enumerate(space)}
    best_lr, best_wd = space[4]
    finished[point_key(best_lr, 0, best_wd)] = Outcome(best_lr, 0, 0.9, best_wd)  # higher is better
    plan = plan_cell(_cell(), QUICK, seeds=3, finished=finished, stress=False, tune=("lr", "weight_decay"),
                     base_wd=0.1)
    assert (plan.chosen_lr, plan.chosen_wd) == (best_lr, best_wd)
    assert plan.missing == [(best_lr, 1, best_wd), (best_lr, 2, best_wd)]
    # the lr-only plan of the same cell does not see these runs, not even the one at the default lr and decay
    finished[point_key(1e-3, 0, 0.1)] = Outcome(1e-3, 0, 0.9, 0.1)
    grid = [(grid_lr(1e-3, k), 0, None) for k in (-1, 0, 1)]
    assert plan_cell(_cell(), QUICK, seeds=3, finished=finished, stress=False).missing == grid
