"""``optarena compare`` end to end on tiny budgets: report, claims from stored results, divergence, errors,
resume after a kill or Ctrl-C, several workers, and clear errors for bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import optuna
import pytest

from optarena.arena import CompareConfig, run_compare
from optarena.arena.catalog import BUILTIN_TASKS
from optarena.arena.claims import FAILS, HOLDS, UNMEASURED, VERDICTS, evaluate_claims
from optarena.arena.results import ResultSet
from optarena.cli import main

ROOT = Path(__file__).resolve().parent.parent
USER_TASKS = str(ROOT / "tests" / "arena_user_tasks.py")


def _config(tmp_path: Path, tasks: tuple[str, ...], optimizers: tuple[str, ...], **kw) -> CompareConfig:
    return CompareConfig(optimizers=optimizers, tasks=tasks, budget="tiny", out=tmp_path / "out", workers=1, threads=1,
                         **kw)


def _keys(out: Path) -> list[tuple[str, str, str, str]]:
    with open(out / "results.csv") as f:
        return [(r["task"], r["batch_size"], r["optimizer"], f"{float(r['lr']):.4g}|{r['seed']}")
                for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def builtin_run(tmp_path_factory):
    """Every built-in task, AdamW against Adan, one seed: the report must cover all of them. (Adan, not Lion: Lion would
    add five stress runs per task; the stress runs' report is covered on a user task below.)"""
    out = tmp_path_factory.mktemp("builtin")
    config = CompareConfig(optimizers=("adamw", "adan"), budget="tiny", seeds=1, out=out / "out", workers=1, threads=1)
    return config, run_compare(config, show_progress=False)


@pytest.mark.xdist_group("builtin_run")  # one worker runs the module's comparison for both tests
def test_report_covers_every_task_and_optimizer(builtin_run):
    config, results = builtin_run
    out = config.out
    for name in ("report.html", "report.md", "results.csv", "time_memory.png"):
        assert (out / name).stat().st_size > 0
    markdown, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    rows = list(csv.DictReader(open(out / "results.csv")))
    for task in BUILTIN_TASKS:
        assert (out / f"curves_{task}.png").exists() and (out / f"lr_{task}.png").exists()
        assert {r["optimizer"] for r in rows if r["task"] == task} == {"adamw", "adan"}
        assert f"| {task} |" in markdown and f"<td>{task}</td>" in page
    assert (out / "trajectory_rosenbrock.png").exists() and (out / "trajectory_rastrigin.png").exists()
    assert (out / "batch_noisy_quadratic.png").exists()
    # the 2-D surfaces have no data to batch: a dash, not the batch size 1 their runs are stored under
    assert "| rosenbrock | – | adamw |" in markdown and "| rastrigin | – | adan |" in markdown
    assert "rosenbrock: curves (median and range over seeds, chosen lr, no data to batch)" in markdown
    assert "data:image/png;base64," in page and "src='curves_" not in page  # self-contained
    for claim in evaluate_claims(results):
        assert claim.claim in markdown and claim.verdict in VERDICTS
    assert markdown.startswith("# optarena compare\n\n**Pick ") and (out / "profile.png").exists()
    # every run is a trial of an Optuna study in the output folder
    studies = optuna.get_all_study_summaries(config.storage)
    assert sum(s.n_trials for s in studies) >= len(rows) and len(studies) == len(config.cells())


@pytest.mark.xdist_group("builtin_run")
def test_rerunning_a_finished_comparison_runs_nothing(builtin_run, monkeypatch):
    config, results = builtin_run
    import optarena.arena.workers as workers

    trials_before = sum(s.n_trials for s in optuna.get_all_study_summaries(config.storage))
    monkeypatch.setattr(workers, "_start", lambda *a: pytest.fail("a worker started with nothing left to run"))
    again = run_compare(CompareConfig(optimizers=config.optimizers, budget="tiny", seeds=1, out=config.out, workers=1,
                                      threads=1), show_progress=False)
    assert sum(s.n_trials for s in optuna.get_all_study_summaries(config.storage)) == trials_before
    assert len(again.records) == len(results.records)


def test_claims_are_computed_from_the_stored_results(tmp_path):
    config = _config(tmp_path, (f"{USER_TASKS}:linear",), ("adamw", "lion", "rlion", "adan"))
    results = run_compare(config, show_progress=False)
    claims = {c.claim: c for c in evaluate_claims(results)}
    memory = claims["Lion halves optimizer memory vs AdamW"]
    lion = results.summary(f"{USER_TASKS}:linear", "lion")
    adamw = results.summary(f"{USER_TASKS}:linear", "adamw")
    assert memory.verdict == HOLDS and f"{lion.state_bytes_per_param:.2f}" in memory.measured
    assert f"{adamw.state_bytes_per_param:.2f}" in memory.measured
    assert claims["Lion trails AdamW below batch size 64, not above it (a batch-size effect)"].verdict == UNMEASURED

    # change what is stored and the verdicts follow: Lion's state larger than AdamW's, its step 3x slower
    for record in results.records:
        if record.cell.optimizer == "lion" and record.result is not None:
            record.result.state_bytes = 3 * record.result.params * 4
            record.result.opt_step_ms = 3 * adamw.opt_step_ms
    tampered = {c.claim: c for c in evaluate_claims(ResultSet(config, results.records))}
    assert tampered["Lion halves optimizer memory vs AdamW"].verdict == FAILS
    assert tampered["Lion's step is 2–15 % faster than AdamW's"].verdict == FAILS
    assert "200.0 % more time" in tampered["Lion's step is 2–15 % faster than AdamW's"].measured


def test_tuning_weight_decay_runs_the_same_search_for_every_optimizer(tmp_path):
    config = _config(tmp_path, (f"{USER_TASKS}:linear",), ("adamw", "lion"), seeds=2, tune=("lr", "weight_decay"))
    results = run_compare(config, show_progress=False)
    for optimizer in ("adamw", "lion"):
        summary = results.summary(f"{USER_TASKS}:linear", optimizer)
        tuning = [r for r in results.records_of(summary.cell) if r.seed == 0 and r.wd is not None]
        assert len(tuning) == 4 and summary.plan.chosen_wd is not None and summary.runs == 2
        assert {r.wd for r in summary.finals} == {summary.plan.chosen_wd}
    rows = list(csv.DictReader(open(config.out / "results.csv")))
    assert all(r["weight_decay"] for r in rows if r["optimizer"] == "adamw")  # Lion's stress runs keep the task's
    assert "lr,weight_decay" in (config.out / "report.md").read_text()


def test_a_diverging_optimizer_is_recorded_not_fatal(tmp_path):
    config = _config(tmp_path, (f"{USER_TASKS}:exploding",), ("sgd", "adamw"))
    results = run_compare(config, show_progress=False)
    sgd = results.summary(f"{USER_TASKS}:exploding", "sgd")
    adamw = results.summary(f"{USER_TASKS}:exploding", "adamw")
    assert sgd.tuning_diverged == 3 and sgd.plan.chosen_lr is None and sgd.plan.complete
    assert adamw.metric_median is not None and adamw.tuning_diverged == 0
    states = {r["state"] for r in csv.DictReader(open(config.out / "results.csv")) if r["optimizer"] == "sgd"}
    assert states == {"diverged"}
    assert "diverged" in (config.out / "report.md").read_text()


def test_a_task_that_raises_is_recorded_as_an_error(tmp_path):
    config = _config(tmp_path, (f"{USER_TASKS}:broken",), ("adamw",), seeds=1)
    results = run_compare(config, show_progress=False)
    assert results.records and all(r.state == "error" for r in results.records)
    assert "user evaluation failed" in results.records[0].error
    assert "Runs that failed" in (config.out / "report.md").read_text()


def test_two_workers_share_one_comparison(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTARENA_TEST_RENDEZVOUS", str(tmp_path / "pids"))
    config = _config(tmp_path, (f"{USER_TASKS}:rendezvous",), ("adamw", "lion", "adan"))
    config.workers = 2
    results = run_compare(config, show_progress=False)
    assert len({r.worker for r in results.records}) == 2
    keys = [(r.cell.study_name, r.lr, r.seed) for r in results.records]
    assert len(keys) == len(set(keys)) and all(s.plan.complete for s in results.summaries.values())
    trials = [t for c in config.cells() for t in config.open_storage().trials(c)]
    # no run ran twice: the only extra trials are claims that stepped back because the other worker held the run
    assert len([t for t in trials if "duplicate" not in t.user_attrs]) == len(keys)


@pytest.mark.parametrize("argv, message", [
    (["compare", "--optimizers", "adamw,lino"], "lino"),
    (["compare", "--tasks", "digits_mpl"], "digits_mpl"),
    (["compare", "--task", "no_such_module_xyz:make"], "no_such_module_xyz"),
    (["compare", "--task", f"{USER_TASKS}:missing"], "missing"),
    (["compare", "--task", f"{USER_TASKS}:not_a_task"], "not optarena.arena.Task"),
    (["compare", "--seeds", "0", "--tasks", "rosenbrock"], "seeds"),
    (["compare", "--batch-sizes", "16,x"], "16,x"),
    (["compare", "--device", "gpu", "--tasks", "rosenbrock"], "gpu"),
    (["compare", "--threads", "-2", "--tasks", "rosenbrock"], "threads"),
    (["compare", "--stale-after", "5", "--tasks", "rosenbrock"], "stale_after"),
    (["compare", "--task", f"{USER_TASKS}:linear", "--task", f"{USER_TASKS}:renamed_linear"], "both named"),
    (["compare", "--storage", "postgresql://me:hunter2@127.0.0.1:1/x", "--tasks", "rosenbrock"], "***"),
    (["compare", "--storage", "postgresql://me:hunter2@127.0.0.1:port/x", "--tasks", "rosenbrock"],
     "its port is not a number"),
    (["compare", "--storage", "postgresql://me@127.0.0.1:1/x?password=hunter2", "--tasks", "rosenbrock"],
     "password=***"),
    (["compare", "--storage", "postgres ql://me:hunter2@@127.0.0.1/x", "--tasks", "rosenbrock"], "Could not parse"),
    (["compare", "--storage", "postgresql+psycopg2://me:hunter2@127.0.0.1/x", "--tasks", "rosenbrock"],
     "no module named 'psycopg2'"),
    (["compare", "--workers", "100000", "--tasks", "rosenbrock"], "at most 256"),
    (["compare", "--device", "meta", "--tasks", "rosenbrock"], "meta tensors hold no data"),
    (["compare", "--tasks", ""], "Invalid --tasks: ''"),
    (["compare", "--run-timeout", "-1", "--tasks", "rosenbrock"], "run_timeout"),
    (["compare", "--tune", "weight_decay", "--tasks", "rosenbrock"], "Invalid tune: 'weight_decay'"),
    (["compare", "--tune", "lr,momentum", "--tasks", "rosenbrock"], "Invalid tune: 'lr,momentum'"),
    (["compare", "--storage", "postgresql://u:p@127.0.0.1:1/x", "--tasks", "rosenbrock"], "port 1 failed"),
    (["compare", "--optimizers", "musgd", "--tasks", "rosenbrock"], "nothing can run (musgd on rosenbrock: only"),
    (["compare", "--steps", "0", "--tasks", "rosenbrock"], "argument --steps: expected a positive integer, got '0'"),
    (["compare", "--metric", "val:acc", "--tasks", "rosenbrock"], "a metric name without ':'"),
])
def test_bad_input_gets_a_clear_error(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "hunter2" not in err
    assert not (tmp_path / "out").exists()  # nothing ran: no folder left behind


@pytest.mark.parametrize("make, message", [
    (lambda out: out.write_text("a file"), "is an existing file, not a folder"),
    (lambda out: (out.parent / "file").write_text("x"), "which is a file"),
    (lambda out: out.mkdir(), "is not writable"),
])
def test_an_out_that_cannot_be_a_report_folder_is_refused_before_anything_runs(make, message, tmp_path, capsys,
                                                                              monkeypatch):
    import optarena.arena.config as config_module

    out = tmp_path / "out"
    make(out)
    target = tmp_path / "file" / "report" if "which is a file" in message else out
    if "writable" in message:  # as root every folder is writable: stand in for a read-only one
        monkeypatch.setattr(config_module.os, "access", lambda path, mode: Path(path) != out)
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--tasks", "rosenbrock", "--out", str(target)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Invalid --out" in err and message in err and "Traceback" not in err


def test_a_corrupt_storage_file_is_named_with_the_cause(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "arena.db").write_bytes(b"not a database" * 100)
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--tasks", "rosenbrock", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "arena.db' (DatabaseError: file is not a database)" in err and "Traceback" not in err


def test_no_arguments_runs_the_quick_comparison_with_the_default_roster(monkeypatch, tmp_path):
    import optarena.arena as arena

    seen = []
    monkeypatch.setattr(arena, "run_compare", lambda config: seen.append(config))
    monkeypatch.chdir(tmp_path)
    assert main([]) == 0
    (config,) = seen
    assert config.budget == "quick"
    assert config.optimizers == ("adamw", "lion", "rlion", "adan", "muon", "schedulefree_adamw")
    assert config.tasks == tuple(BUILTIN_TASKS) and config.out == Path("optarena-report")
    assert config.storage == f"sqlite:///{tmp_path / 'optarena-report' / 'arena.db'}"


def test_tasks_command_lists_every_builtin_task(capsys):
    assert main(["tasks"]) == 0
    printed = capsys.readouterr().out
    for name in BUILTIN_TASKS:
        assert name in printed


def test_the_readme_user_task_example_is_the_shipped_file_and_runs():
    from optarena.arena import load_task, train_once

    example = (ROOT / "examples" / "user_task.py").read_text()
    assert example.split('"""', 2)[2].strip() in (ROOT / "README.md").read_text()
    task = load_task(f"{ROOT / 'examples' / 'user_task.py'}:make_task", "tiny")
    result = train_once(task, "adamw", 3e-3, seed=0)
    assert result.steps == 20 and not result.diverged and 0.0 <= result.final_metric <= 1.0
