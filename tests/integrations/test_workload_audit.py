"""Workload specs that are wrong fail up front with one line naming the spec and what is wrong; a workload's
metric direction comes from what the user declared; a workload run warms its own optimizer up, as the runner
does, so that its one-time costs are charged to no run."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("lightning")

import optarena.arena.runner as runner  # noqa: E402
from optarena.arena.catalog import load_task  # noqa: E402
from optarena.arena.runner import train_once  # noqa: E402

MODULES = "arena_workload_modules"
LIGHTNING = f"lightning:{MODULES}:Classifier:Blobs"

USER_CODE = '''
def needs_args(x):
    return None


def raises():
    raise RuntimeError("boom in factory")


def refuses():
    raise ValueError("--load_best_model_at_end requires the save and eval strategy to match")
'''


@pytest.mark.parametrize("prefix", ["lightning", "hf"])
def test_bad_user_code_is_a_one_line_invalid_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 prefix: str) -> None:
    (tmp_path / f"audit_{prefix}_user.py").write_text(USER_CODE)
    (tmp_path / f"audit_{prefix}_broken.py").write_text("raise RuntimeError('module-level failure')\n")
    (tmp_path / f"audit_{prefix}_syntax.py").write_text("def f(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cases = {f"audit_{prefix}_broken:f": r"importing 'audit_\w+_broken' failed: RuntimeError: module-level failure",
             f"audit_{prefix}_syntax:f": r"importing 'audit_\w+_syntax' failed: SyntaxError: .*line 1",
             f"audit_{prefix}_user:needs_args": r"calling it failed: TypeError: .*takes no arguments, or "
                                                r"only budget",
             f"audit_{prefix}_user:raises": r"calling it failed: RuntimeError: boom in factory",
             # a ValueError of the user's code (TrainingArguments raises them) named the spec too
             f"audit_{prefix}_user:refuses": r"calling it failed: ValueError: --load_best_model_at_end requires"}
    for spec, message in cases.items():
        with pytest.raises(ValueError, match=rf"^Invalid task: '{prefix}:{spec}' \({message}"):
            load_task(f"{prefix}:{spec}", "tiny")


@pytest.mark.parametrize(("spec", "message"), [
    (f"{LIGHTNING}:steps=abc", "steps='abc' is not a positive integer"),
    (f"{LIGHTNING}:steps=0", "steps=0 is not a positive integer"),  # was silently the budget's default
    (f"{LIGHTNING}:evals=2.5", "evals=2.5 is not a positive integer"),
    (f"{LIGHTNING}:weight_decay=.nan", "weight_decay=nan is not a finite number >= 0"),
    (f"{LIGHTNING}:higher_is_better=max", "higher_is_better='max' is not true or false"),  # was read as true
    (f"{LIGHTNING}:target=high", "target='high' is not a finite number"),  # was a TypeError in every run
    (f"hf:{MODULES}:tiny_gpt2:steps=many", "steps='many' is not a positive integer"),
    (f"hf:{MODULES}:tiny_gpt2:higher_is_better=1", "higher_is_better=1 is not true or false"),
    (f"hf:{MODULES}:tiny_gpt2:target=high", "target='high' is not a finite number"),
    ("ultralytics:yolov8n.yaml:coco8.yaml:target=high", "target='high' is not a finite number"),
])
def test_bad_workload_options_are_refused_naming_the_option(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=rf"^Invalid task: '{spec}' \({message}\)$"):
        load_task(spec, "tiny")


def test_numbers_in_exponent_notation_are_numbers() -> None:
    # YAML reads 1e-4 (no dot) as a string: the checks refused what float() had taken before them
    assert load_task(f"{LIGHTNING}:weight_decay=1e-4:target=9e-1", "tiny").target == 0.9
    assert load_task(f"hf:{MODULES}:tiny_gpt2:target=2e0", "tiny").target == 2.0


def test_hf_metric_and_direction_come_from_the_training_arguments() -> None:
    """metric_for_best_model / greater_is_better are how a Trainer user declares them: maximising the accuracy
    must not be read as minimising it (or as the eval loss)."""
    task = load_task(f"hf:{MODULES}:tiny_gpt2_declared", "tiny")
    assert task.metric == "eval_next_token_acc" and task.higher_is_better
    explicit = load_task(f"hf:{MODULES}:tiny_gpt2_declared:metric=loss", "tiny")  # another metric: not its direction
    assert explicit.metric == "eval_loss" and not explicit.higher_is_better


def test_a_workload_run_warms_its_own_optimizer_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the runner's loop does: the optimizer's first-use costs (imports, first step) go to a throwaway run
    before the memory baseline, not to the first run of that optimizer in a worker."""
    monkeypatch.setattr(runner, "_warmed_up", set())
    result = train_once(load_task(f"{LIGHTNING}:metric=val_acc:higher_is_better=true:steps=2:evals=1", "tiny"),
                        "lion", 1e-4, 0)
    assert result.steps == 2 and ("cpu", "lion") in runner._warmed_up


def test_ultralytics_step_time_is_the_optimizers_own_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ultralytics' optimizer_step also clips and updates the EMA, the same for every optimizer: the reported step
    ms is the optimizer's step() alone (as on every other task), the EMA stays in the training seconds. A fake
    clock makes every EMA update take 1 s, and nothing else any time."""
    pytest.importorskip("ultralytics")
    from ultralytics.utils.torch_utils import ModelEMA

    import optarena.arena.workloads.ultralytics as yolo
    from optarena.arena.workloads.shapes import dataset

    clock = [0.0]

    def perf_counter() -> float:
        clock[0] += 1e-6
        return clock[0]

    update = ModelEMA.update

    def slow_update(self, model):
        clock[0] += 1.0
        return update(self, model)

    monkeypatch.setattr(yolo, "time", type("FakeTime", (), {"perf_counter": staticmethod(perf_counter)}))
    monkeypatch.setattr(ModelEMA, "update", slow_update)
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    data = dataset(16, 8, 32, root=tmp_path / "cache")
    task = load_task(f"ultralytics:yolov8n.yaml:{data}:epochs=1:imgsz=32:batch=8:nbs=8:name=clock", "tiny")
    result = train_once(task, "adamw", 1e-3, 0, out=tmp_path / "out")
    assert result.steps == 2 and not result.diverged
    assert result.opt_step_ms < 1.0 and result.fwd_bwd_ms < 1.0  # ms: the EMA's 1 s is in neither
    assert result.train_seconds >= 2.0  # but in the training time, for every optimizer alike


def test_an_ultralytics_run_warms_its_optimizer_up_before_its_memory_baseline(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The optimizer's first use in a process (imports, compiled code) happens before the run's memory baseline, as
    the runner's loop does for built-in tasks."""
    pytest.importorskip("ultralytics")
    import optarena.arena.workloads.ultralytics as yolo
    from optarena.arena.workloads.shapes import dataset

    seen = []

    class Baseline(runner._PeakMemory):
        def __init__(self, *args, **kwargs) -> None:
            seen.append(("cpu", "lion") in runner._warmed_up)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(yolo, "_PeakMemory", Baseline)
    monkeypatch.setattr(runner, "_warmed_up", set())
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    data = dataset(16, 8, 32, root=tmp_path / "cache")
    task = load_task(f"ultralytics:yolov8n.yaml:{data}:epochs=1:imgsz=32:batch=8:name=warm", "tiny")
    assert not train_once(task, "lion", 1e-4, 0, out=tmp_path / "out").diverged
    assert seen == [True]
