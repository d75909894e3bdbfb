"""The user's own training as arena workloads: ultralytics (on the yolo_shapes generator), Lightning and the
Hugging Face Trainer, each compared end to end in worker processes, then resumed."""

from __future__ import annotations

import csv
from pathlib import Path

import optuna
import pytest
import torch

pytest.importorskip("ultralytics")

import arena_workload_modules as modules  # noqa: E402

import optarena.arena.workers as workers  # noqa: E402
from optarena.arena import CompareConfig, run_compare  # noqa: E402
from optarena.arena.catalog import default_tasks, load_task  # noqa: E402
from optarena.arena.runner import train_once  # noqa: E402
from optarena.arena.workloads import split_spec  # noqa: E402
from optarena.arena.workloads.shapes import dataset  # noqa: E402
from optarena.cli import build_parser, workload_specs  # noqa: E402

MODULES = "arena_workload_modules"  # by module name, so that this process shares its LOGGED with the task's


def compare(out: Path, spec: str, optimizers: tuple[str, ...]):
    config = CompareConfig(optimizers=optimizers, tasks=(spec,), budget="tiny", seeds=1, out=out, workers=1,
                           threads=1)
    return config, run_compare(config, show_progress=False)


def check_fair_and_resumable(config: CompareConfig, results, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every run finished, every optimizer started from the seed's weights, and a rerun runs nothing."""
    records = results.records
    assert records and all(r.state == "complete" for r in records), [r.error for r in records if r.error]
    assert {r.cell.optimizer for r in records} == set(config.optimizers)
    digests = {r.result.init_digest for r in records}
    assert len(digests) == 1 and None not in digests
    assert all(r.result.steps > 0 and r.result.eval_metric for r in records)

    trials = sum(s.n_trials for s in optuna.get_all_study_summaries(config.storage))
    monkeypatch.setattr(workers, "_start", lambda *a: pytest.fail("a worker started with nothing left to run"))
    again = run_compare(CompareConfig(optimizers=config.optimizers, tasks=config.tasks, budget="tiny", seeds=1,
                                      out=config.out, workers=1, threads=1), show_progress=False)
    assert sum(s.n_trials for s in optuna.get_all_study_summaries(config.storage)) == trials
    assert len(again.records) == len(records)


def test_ultralytics_workload_on_yolo_shapes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = dataset(16, 8, 32, root=tmp_path / "cache")
    spec = f"ultralytics:yolov8n.yaml:{data}:epochs=1:imgsz=32:batch=8:name=shapes"
    # lion is built by optarena over ultralytics' groups, MuSGD by ultralytics itself
    config, results = compare(tmp_path / "out", spec, ("lion", "musgd"))
    check_fair_and_resumable(config, results, monkeypatch)
    for record in results.records:  # the metric is ultralytics' validator's, as in its results.csv
        run = tmp_path / "out" / "ultralytics" / "shapes" / f"{record.cell.optimizer}-lr{record.lr:.4g}-seed0"
        rows = list(csv.DictReader((run / "results.csv").open()))
        assert float(rows[-1]["metrics/mAP50-95(B)"].strip()) == pytest.approx(record.result.final_metric)
        assert record.result.opt_step_ms > 0 and record.result.state_bytes > 0


def test_yolo_shapes_is_in_the_full_suite_only_and_its_data_is_cached(tmp_path: Path) -> None:
    assert "yolo_shapes" in default_tasks("full") and "yolo_shapes" not in default_tasks("quick")
    task = load_task("yolo_shapes", "quick")
    assert task.run is not None and task.higher_is_better and task.fingerprint
    first = dataset(4, 2, 32, root=tmp_path)
    assert dataset(4, 2, 32, root=tmp_path) == first
    assert len(list((first.parent / "images" / "train").glob("*.png"))) == 4
    assert all(line.split()[0] in "01" for f in (first.parent / "labels" / "train").glob("*.txt")
               for line in f.read_text().splitlines())


def test_lightning_workload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = f"lightning:{MODULES}:Classifier:Blobs:metric=val_acc:higher_is_better=true:steps=16:evals=4"
    config, results = compare(tmp_path / "out", spec, ("adamw", "adan"))
    check_fair_and_resumable(config, results, monkeypatch)

    task = load_task(spec, "tiny")  # in this process: the stored number is the one the module logged
    modules.LOGGED.clear()
    result = train_once(task, "adamw", 1e-2, 0)
    assert result.final_metric == pytest.approx(modules.LOGGED[-1]) and result.final_metric > 0.5
    assert result.steps == 16 and result.eval_steps[-1] == 16


def test_huggingface_workload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = f"hf:{MODULES}:tiny_gpt2"
    config, results = compare(tmp_path / "out", spec, ("adamw", "adan"))
    check_fair_and_resumable(config, results, monkeypatch)

    task = load_task(spec, "tiny")
    assert task.metric == "eval_next_token_acc" and task.higher_is_better and task.steps == 12
    modules.LOGGED.clear()
    result = train_once(task, "adamw", 3e-3, 0, out=tmp_path / "direct")
    assert result.final_metric == pytest.approx(modules.LOGGED[-1])


def test_a_diverging_workload_run_is_recorded_as_diverged(tmp_path: Path) -> None:
    spec = f"lightning:{MODULES}:Classifier:Blobs:metric=val_acc:higher_is_better=true:steps=8"
    result = train_once(load_task(spec, "tiny"), "sgd", 1e30, 0)
    assert result.diverged and result.final_metric is None and "non-finite" in result.diverged_because


def test_workload_specs_and_options(tmp_path: Path) -> None:
    assert split_spec("ultralytics:m.yaml:d.yaml:epochs=3:imgsz=64") == (
        "ultralytics", ["m.yaml", "d.yaml"], {"epochs": 3, "imgsz": 64})
    args = build_parser().parse_args(["compare", "--task", "ultralytics:m.yaml:d.yaml:epochs=3", "--epochs", "5",
                                      "--imgsz", "96", "--task", f"lightning:{MODULES}:Classifier",
                                      "--metric", "val_acc", "--higher-is-better"])
    assert workload_specs(args) == ("ultralytics:m.yaml:d.yaml:epochs=3:imgsz=96",
                                    f"lightning:{MODULES}:Classifier:metric=val_acc:higher_is_better=true")
    with pytest.raises(ValueError, match="the arena sets lr0"):
        load_task("ultralytics:m.yaml:d.yaml:lr0=0.1", "tiny")
    with pytest.raises(ValueError, match="unknown options"):
        load_task(f"lightning:{MODULES}:Classifier:bogus=1", "tiny")
    with pytest.raises(ValueError, match="built by ultralytics' trainer only"):
        train_once(load_task("noisy_quadratic", "tiny"), "musgd", 0.01, 0)
    assert torch.get_num_threads() >= 1


def test_a_killed_workload_comparison_resumes_without_rerunning_finished_runs(tmp_path: Path) -> None:
    """kill -9 of the whole command in the middle of a Lightning workload comparison: what finished stays, and the
    next command runs only what is missing."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from optarena.arena.storage import ArenaStorage

    out = tmp_path / "out"
    spec = f"lightning:{MODULES}:Classifier:Blobs:metric=val_acc:higher_is_better=true:steps=16:evals=4"
    command = [sys.executable, "-m", "optarena", "compare", "--task", spec, "--optimizers", "adamw", "--budget",
               "tiny", "--seeds", "2", "--out", str(out), "--workers", "1", "--threads", "1"]
    config = CompareConfig(optimizers=("adamw",), tasks=(spec,), budget="tiny", seeds=2, out=out)

    def finished(during: bool = False) -> dict[str, int]:
        if not (out / "arena.db").exists():  # not before the command makes it: this process would create it
            return {}
        try:
            store = ArenaStorage(config.storage)
            return {f"{r.lr:.4g}|{r.seed}": r.trial_number for r in store.records(config.cells())
                    if r.state == "complete"}
        except Exception:  # noqa: BLE001 - while the command creates the database and its studies
            if during:
                return {}
            raise

    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not finished(during=True) and process.poll() is None and time.monotonic() < deadline:  # 4+ runs to go
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = finished()
    assert before and process.returncode == -signal.SIGKILL, (process.returncode, process.stderr.read())

    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    after = finished()
    store = ArenaStorage(config.storage)
    assert all(config.plan(cell, store.finished(cell)).complete for cell in config.cells())
    assert len(after) > len(before) and all(after[key] == number for key, number in before.items())  # not rerun


def test_pairs_a_framework_cannot_train_are_left_out_and_named(tmp_path: Path) -> None:
    config = CompareConfig(optimizers=("adamw", "schedulefree_adamw", "musgd"), tasks=("yolo_shapes", "rosenbrock"),
                           budget="quick", out=tmp_path / "out")
    assert [(spec, name) for spec, name, _ in config.not_run()] == [("yolo_shapes", "schedulefree_adamw"),
                                                                     ("rosenbrock", "musgd")]
    assert {(c.task, c.optimizer) for c in config.cells()} == {
        ("yolo_shapes", "adamw"), ("yolo_shapes", "musgd"), ("rosenbrock", "adamw"),
        ("rosenbrock", "schedulefree_adamw")}
