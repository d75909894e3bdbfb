"""The report's edges on made-up stored runs: an optimizer that cannot run every task, user text that would be
markup, and the translation helpers' refusals of bad input."""

from __future__ import annotations

import math
import re

import pytest
from synthetic import ADAMW_GRID, LINEAR, USER_TASKS, config, records, tuned

from optarena.arena.report import Table, tasks_table
from optarena.arena.results import ResultSet
from optarena.guidance import lr_range, translate_hparams


def _yolo_like(tmp_path) -> str:
    """A task spec whose framework is ultralytics, which schedule-free optimizers cannot run."""
    path = tmp_path / "framework_task.py"
    path.write_text(f"import dataclasses, sys\nsys.path.insert(0, {str(USER_TASKS.rsplit('/', 1)[0])!r})\n"
                    "from arena_user_tasks import linear\n\n\ndef yolo_like(budget='quick'):\n"
                    "    return dataclasses.replace(linear(budget), name='yolo_like', framework='ultralytics')\n")
    return f"{path}:yolo_like"


def test_step_time_bars_stand_over_their_own_task_when_an_optimizer_skips_one(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from optarena.arena.plots import _time_memory

    cfg = config(tmp_path, tasks=(_yolo_like(tmp_path), LINEAR), optimizers=("schedulefree_adamw", "adamw"))
    sf_cell = next(c for c in cfg.cells() if c.optimizer == "schedulefree_adamw")
    sf_grid = tuple(ResultSet(cfg, []).summaries[sf_cell.study_name].plan.tuning_lrs)
    recs = records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2), opt_ms=5.0), task="yolo_like")
    recs += records(cfg, "adamw", tuned(ADAMW_GRID, (0.3, 0.1, 0.2), opt_ms=1.0), task="linear")
    recs += records(cfg, "schedulefree_adamw", tuned(sf_grid, (0.3, 0.1, 0.2), opt_ms=2.0), task="linear")
    results = ResultSet(cfg, recs)
    figures = []
    _time_memory(results, results.headline_cells(), {"adamw": "C0", "schedulefree_adamw": "C1"}, plt,
                 lambda fig, name, title: figures.append(fig))
    ax = figures[0].axes[0]
    ticks = {label.get_text(): label.get_position()[0] for label in ax.get_xticklabels()}
    assert set(ticks) == {"yolo_like", "linear"}
    nearest = {bar.get_height(): min(ticks, key=lambda t: abs(ticks[t] - bar.get_x() - bar.get_width() / 2))
               for bar in ax.patches}
    assert nearest == {5.0: "yolo_like", 1.0: "linear", 2.0: "linear"}
    plt.close("all")


def test_a_multi_line_description_stays_in_its_markdown_table_row(tmp_path):
    cfg = config(tmp_path, optimizers=("adamw",))
    results = ResultSet(cfg, [])
    task = next(iter(results.tasks.values()))
    task.description = "least squares\n    in 8-D | with <b>tags</b>"
    table = tasks_table(results).markdown().splitlines()
    assert len(table) == 3 and table[2].endswith("| least squares in 8-D \\| with &lt;b&gt;tags&lt;/b&gt; |")
    assert Table(["a"], [["x\ny"]]).html() == "<table><thead><tr><th>a</th></tr></thead><tbody><tr><td>x\ny</td></tr>" \
                                              "</tbody></table>"


@pytest.mark.parametrize("kwargs, message", [
    ({"lr": math.inf}, "Invalid lr: inf"), ({"lr": True}, "Invalid lr: True"),
    ({"lr": "1e-3"}, "Invalid lr: '1e-3'"),
    ({"lr": 0}, "Invalid lr: 0"), ({"lr": 1e-3, "weight_decay": math.inf}, "Invalid weight_decay: inf"),
    ({"lr": 1e-3, "weight_decay": -0.1}, "Invalid weight_decay: -0.1"),
    ({"lr": 1e-3, "from_": None}, "Invalid from_: None"),
])
def test_translate_hparams_names_the_bad_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        translate_hparams("lion", **kwargs)


@pytest.mark.parametrize("adamw_lr", [-1e-3, 0.0, math.nan, math.inf, "1e-3"])
def test_lr_range_refuses_a_learning_rate_that_is_not_positive_and_finite(adamw_lr):
    with pytest.raises(ValueError, match=re.escape(f"Invalid adamw_lr: {adamw_lr!r} (")):
        lr_range("lion", adamw_lr)
    assert lr_range("lion", 1e-3) == pytest.approx((1e-4, 1e-3 / 3))
