"""The arena's definition side, as a user meets it: a Task's declared direction, metric and batch sizes are checked
where it is made, ``--batch-sizes`` passes by a task without data (or is refused where no task has any), and
``CompareConfig`` names what it takes where a single string or a Task object is handed to it."""

from __future__ import annotations

import itertools
import re

import numpy
import pytest
import torch
from torch import nn

from optarena.arena import CompareConfig, Task, train_once
from optarena.arena.catalog import BUILTIN_TASKS
from optarena.cli import main


def _task(**kw) -> Task:
    args = dict(name="t", make_model=lambda: nn.Linear(2, 1), make_batches=lambda g, b: itertools.repeat(None),
                loss=lambda m, b: m.weight.sum(), evaluate=lambda m: 0.0)
    return Task(**{**args, **kw})


def _config(tmp_path, **kw) -> CompareConfig:
    kw.setdefault("optimizers", ("adamw", "lion"))
    return CompareConfig(out=tmp_path / "out", budget="tiny", workers=1, **kw)


# --- --batch-sizes and tasks without data ---------------------------------------------------------------------------

def test_batch_sizes_pass_by_a_task_without_data(tmp_path):
    config = _config(tmp_path, tasks=("rosenbrock", "noisy_quadratic"), batch_sizes=(16, 256))
    tasks = config.load_tasks()
    assert config.batch_sizes_for(tasks["rosenbrock"]) == (1,)  # not "batch 16" for a run that has no batches
    assert config.batch_sizes_for(tasks["noisy_quadratic"]) == (16, 256)
    sizes = {(c.task_name, c.batch_size) for c in config.cells()}
    assert sizes == {("rosenbrock", 1), ("noisy_quadratic", 16), ("noisy_quadratic", 256)}


def test_the_two_dimensional_tasks_are_not_batched():
    assert [name for name, make in BUILTIN_TASKS.items() if not make("tiny").batched] == ["rosenbrock", "rastrigin"]


def test_batch_sizes_with_no_batched_task_are_refused_before_anything_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--batch-sizes", "16", "--tasks", "rosenbrock,rastrigin", "--optimizers", "adamw,lion",
              "--budget", "tiny", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Invalid --batch-sizes: '16' (no task compared here has data to batch: rosenbrock, rastrigin" in err
    assert not (tmp_path / "out").exists()


# --- a Task's own declarations --------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["False", "no", 0, 1, None])
def test_a_direction_that_is_not_a_bool_is_refused(value):
    # "False" is truthy: the plan would pick the lr with the highest loss
    with pytest.raises(ValueError, match=rf"Invalid higher_is_better of task 't': {value!r} \(True or False\)"):
        _task(higher_is_better=value)


def test_numpys_bool_is_taken_as_a_bool():
    task = _task(metric="score", higher_is_better=numpy.bool_(True))
    assert task.higher_is_better is True


@pytest.mark.parametrize("metric, higher", [("val_accuracy", False), ("top1_acc", False), ("val_mAP50-95", False),
                                            ("val_loss", True), ("eval_mse", True), ("mean_squared_error", True),
                                            # a review's: f1 with its digit, Lightning's _epoch/_step names, err
                                            ("eval_f1", False), ("val_acc_epoch", False), ("train_loss_step", True),
                                            ("top5_err", True), ("metrics/mAP50-95(B)", False)])
def test_a_direction_against_the_metrics_name_is_refused(metric, higher):
    # the Task's default is lower-is-better: metric="val_accuracy" alone chose the lr of the worst accuracy
    with pytest.raises(ValueError, match=rf"Invalid higher_is_better of task 't': {higher} for metric "
                                         rf"'{re.escape(metric)}', "
                                         rf"whose name says {'lower' if higher else 'higher'} is better \(set "
                                         rf"higher_is_better={not higher}"):
        _task(metric=metric, higher_is_better=higher)


@pytest.mark.parametrize("metric, higher", [("val_accuracy", True), ("val_loss", False), ("neg_mse", True),
                                            ("accuracy_drop", False), ("val_score", True), ("val_score", False),
                                            # a review's names: turned around, or a word beside the direction word
                                            ("1-accuracy", False), ("-val_loss", True), ("acc_std", False),
                                            ("val_map_l1", False), ("loss_improvement", True),
                                            ("mae_probe_top1", True), ("100-accuracy", False), ("1/loss", True),
                                            ("f1_score_std", False)])
def test_a_direction_the_name_agrees_with_or_does_not_decide_is_taken(metric, higher):
    assert _task(metric=metric, higher_is_better=higher).higher_is_better is higher


@pytest.mark.parametrize("value", [None, "", "  ", 3])
def test_a_metric_without_a_name_is_refused(value):
    with pytest.raises(ValueError, match=r"Invalid metric of task 't'"):
        _task(metric=value)


def test_batch_sizes_must_be_a_collection_and_are_kept_as_a_tuple():
    with pytest.raises(ValueError, match=r"Invalid batch_sizes of task 't': 16 \(a tuple of positive integers"):
        _task(batch_sizes=16)
    assert _task(batch_sizes=[16, 32]).batch_sizes == (16, 32)


def test_a_task_without_data_has_no_batch_size_sweep():
    with pytest.raises(ValueError, match=r"Invalid batch_sizes of task 't': \(16, 64\) \(the task is not batched"):
        _task(batched=False, batch_sizes=(16, 64))


def test_a_user_tasks_wrong_direction_is_named_when_it_loads(tmp_path):
    from optarena.arena.catalog import load_task

    path = tmp_path / "mytask.py"
    path.write_text("import itertools\nfrom torch import nn\nfrom optarena.arena import Task\n\n"
                    "def make():\n"
                    "    return Task(name='mine', make_model=lambda: nn.Linear(2, 1),\n"
                    "                make_batches=lambda g, b: itertools.repeat(None),\n"
                    "                loss=lambda m, b: m.weight.sum(),\n"
                    "                evaluate=lambda m: 0.0, metric='val_loss', higher_is_better='False')\n")
    with pytest.raises(ValueError, match=r"Invalid higher_is_better of task 'mine': 'False'"):
        load_task(f"{path}:make", "tiny")


# --- CompareConfig's collections ------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, message", [
    ("tasks", "rosenbrock", r"Invalid tasks: 'rosenbrock' \(a tuple of specs"),
    ("optimizers", "adamw", r"Invalid optimizers: 'adamw' \(a tuple of names"),
    ("tasks", (_task(),), r"Invalid tasks: \(Task\(.*which every worker process loads"),
    ("batch_sizes", 16, r"Invalid batch_sizes: 16 \(a tuple of positive integers"),
    ("tasks", None, r"Invalid tasks: None \(a tuple of specs"),
])
def test_compare_config_names_a_collection_given_as_one_value(tmp_path, field, value, message):
    kw = {"tasks": ("rosenbrock",), field: value}
    with pytest.raises(TypeError, match=message):
        _config(tmp_path, **kw)


def test_compare_config_takes_lists(tmp_path):
    config = _config(tmp_path, tasks=["rosenbrock"], optimizers=["adamw"], batch_sizes=[16])
    assert config.tasks == ("rosenbrock",) and config.optimizers == ("adamw",) and config.batch_sizes == (16,)
    config = _config(tmp_path, tasks=iter(["rosenbrock"]), optimizers=(n for n in ["adamw", "lion"]))
    assert config.tasks == ("rosenbrock",) and config.optimizers == ("adamw", "lion")  # read once, all kept


# --- what a failing task function is told --------------------------------------------------------------------------

def test_the_arguments_hint_is_given_only_where_the_arguments_were_wrong(tmp_path):
    from optarena.arena.catalog import load_task

    path = tmp_path / "factories.py"
    path.write_text("import itertools\nfrom torch import nn\nfrom optarena.arena import Task\n\n"
                    "def no_loss():\n"
                    "    return Task(name='x', make_model=lambda: nn.Linear(2, 1), make_batches=lambda g, b: None,\n"
                    "                loss=None, evaluate=lambda m: 0.0)\n\n"
                    "def needs(x):\n    return None\n")
    hint = "the function takes no arguments, or only budget"
    with pytest.raises(ValueError, match="loss must be callable, got None") as refused:
        load_task(f"{path}:no_loss", "tiny")
    assert hint not in str(refused.value)  # the function's arguments were fine: its Task was not
    with pytest.raises(ValueError, match=rf"needs\(\) missing 1 required positional argument: 'x'; {hint}"):
        load_task(f"{path}:needs", "tiny")


# --- batch sizes above a task's data -------------------------------------------------------------------------------

def test_a_batch_size_above_a_tasks_examples_runs_as_its_full_batch(tmp_path):
    config = _config(tmp_path, tasks=("modular_add", "noisy_quadratic"), batch_sizes=(256, 512, 1024))
    tasks = config.load_tasks()
    assert tasks["modular_add"].train_examples == 480
    # 512 and 1024 were the same full-batch run of 480 pairs, reported as "batch 512" and "batch 1024"
    assert config.batch_sizes_for(tasks["modular_add"]) == (256, 480)
    assert config.batch_sizes_for(tasks["noisy_quadratic"]) == (256, 512, 1024)  # drawn without end


def test_a_tasks_own_batch_size_above_its_examples_is_refused():
    with pytest.raises(ValueError, match=r"Invalid batch size of task 't': 600 \(more than its 480 training"):
        _task(batch_size=600, train_examples=480)
    with pytest.raises(ValueError, match=r"Invalid train_examples of task 't': 0"):
        _task(train_examples=0)


def _user_task(**changes: object) -> Task:
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))

    def batches(generator: torch.Generator, batch_size: int):
        while True:
            yield x[torch.randint(0, 64, (batch_size,), generator=generator)]

    fields = dict(name="user", make_model=lambda: nn.Linear(4, 1), make_batches=batches,
                  loss=lambda model, batch: model(batch).pow(2).mean(), evaluate=lambda model: model(x).pow(2).mean(),
                  metric="val_mse", steps=3, batch_size=8)
    return Task(**{**fields, **changes})


@pytest.mark.parametrize(("changes", "message"), [
    (dict(make_model=lambda: None), r"make_model\(\) must return an nn.Module, got NoneType"),
    (dict(loss=lambda model, batch: model(batch).pow(2)), r"loss\(model, batch\) must return a scalar tensor, got a "
                                                          r"tensor of shape \(8, 1\) \(reduce it"),
    (dict(loss=lambda model, batch: 0.5), r"loss\(model, batch\) must return a scalar tensor, got float$"),
    (dict(loss=lambda model, batch: model(batch).detach().mean()), r"loss\(model, batch\) returned a tensor that does "
                                                                   "not depend on the model's parameters"),
    (dict(evaluate=lambda model: model(torch.ones(3, 4))), r"evaluate\(model\) must return a number, got a tensor "
                                                            r"of shape \(3, 1\)"),
])
def test_a_task_function_returning_the_wrong_thing_is_named(changes: dict, message: str) -> None:
    # every run failed with torch's words: "grad can be implicitly created only for scalar outputs", "'NoneType'
    # object has no attribute 'to'", "only one element tensors can be converted to Python scalars"
    with pytest.raises(TypeError, match=f"Task 'user': {message}"):
        train_once(_user_task(**changes), "adamw", 1e-3, seed=0)
    train_once(_user_task(), "adamw", 1e-3, seed=0)
