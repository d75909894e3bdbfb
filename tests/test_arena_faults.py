"""``optarena compare`` under faults: a run that kills its worker, hangs, or exits; a task that hangs loading in
the workers; Ctrl-C and SIGTERM; ``kill -9`` of the command itself; a task changed between invocations or while
one runs. Every finished result is kept, what went wrong is recorded, the comparison goes on and the report is
written (or the command stops, saying why)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from optarena.arena import CompareConfig
from optarena.arena.plan import point_key
from optarena.arena.storage import ArenaStorage

ROOT = Path(__file__).resolve().parent.parent
USER_TASKS = str(ROOT / "tests" / "arena_user_tasks.py")
MISBEHAVING = f"{USER_TASKS}:misbehaving"


def _command(out: Path, *extra: str, tasks: tuple[str, ...] = (MISBEHAVING,)) -> list[str]:
    task_args = [arg for task in tasks for arg in ("--task", task)]
    return [sys.executable, "-m", "optarena", "compare", *task_args, "--optimizers", "adamw,lion", "--budget", "tiny",
            "--seeds", "2", "--out", str(out), "--workers", "1", *extra]


def _env(counter: Path, actions: str = "", pace: float = 0.0) -> dict[str, str]:
    return {**os.environ, "OPTARENA_TEST_COUNTER": str(counter), "OPTARENA_TEST_ACTIONS": actions,
            "OPTARENA_TEST_PACE": str(pace)}


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def _started(counter: Path) -> list[int]:
    return [int(pid) for pid in counter.read_text().split()] if counter.exists() else []


def _finished(out: Path) -> int:
    store = ArenaStorage(f"sqlite:///{out / 'arena.db'}")
    config = CompareConfig(optimizers=("adamw", "lion"), tasks=(MISBEHAVING,), budget="tiny", seeds=2, out=out)
    return sum(len(store.finished(cell)) for cell in config.cells())


def test_runs_that_kill_their_worker_hang_or_exit_are_recorded_and_the_rest_goes_on(tmp_path):
    """Run 3 SIGKILLs its worker (as the OOM killer would), run 6 calls sys.exit(3), run 9 hangs past --run-timeout
    (10 s: a healthy run takes well under 1 s, but a loaded CI machine must not time it out), run 11 ends its worker
    with os._exit(0) (a clean exit code, but the run never ended) and run 12 raises asyncio.CancelledError (a
    BaseException that is not an Exception: once its worker restarted for ever on the same run):
    each is recorded with what happened, a healthy task beside them completes, the report is written and the
    command exits 1 saying how many runs failed."""
    out, counter = tmp_path / "out", tmp_path / "count"
    done = subprocess.run(_command(out, "--run-timeout", "10", tasks=(MISBEHAVING, f"{USER_TASKS}:linear")),
                          env=_env(counter, "3:kill,6:exit,9:hang,11:exit0,12:cancel"), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1, done.stderr  # runs failed: not a success
    assert "5 of" in done.stderr and "1 raised, 3 crashed, 1 timed out" in done.stderr
    assert "Traceback" not in done.stderr
    rows = _rows(out)
    failed = {r["error"].strip(): r["state"] for r in rows if r["state"] != "complete"}
    assert failed == {"the worker process was killed by signal 9 (SIGKILL) during this run": "crashed",
                      "the task's code called sys.exit(3)": "crashed",
                      "the run took longer than the per-run limit of 10 s (--run-timeout) and its worker was stopped":
                          "timed out",
                      "the worker process exited with code 0 during this run": "crashed",
                      "asyncio.exceptions.CancelledError: cancelled in the task's code": "error"}
    assert {(r["task"], r["optimizer"]) for r in rows if r["state"] == "complete"} == {
        (task, optimizer) for task in ("misbehaving", "linear") for optimizer in ("adamw", "lion")}
    config = CompareConfig(optimizers=("adamw", "lion"), tasks=(MISBEHAVING, f"{USER_TASKS}:linear"), budget="tiny",
                           seeds=2, out=out)
    store = ArenaStorage(config.storage, invocation="a later one")
    assert all(config.plan(cell, store.finished(cell)).complete or cell.task == MISBEHAVING
               for cell in config.cells())  # the failed runs stay open for a later invocation, the rest is done
    report = (out / "report.md").read_text()
    assert "Runs that failed" in report and "timed out" in report and "crashed" in report


def test_workers_that_keep_dying_outside_runs_stop_the_command_with_their_error(tmp_path):
    """A task that loads in the command but not in its workers: no run can start; the command says why, with the
    workers' own error, and exits 1 (it once gave up silently and exited 0)."""
    out = tmp_path / "out"
    done = subprocess.run(_command(out, tasks=(f"{USER_TASKS}:loads_in_the_command_only",)), env=_env(tmp_path / "c"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "kept dying outside any run (3 times; the last: ValueError: Invalid task:" in done.stderr, done.stderr
    assert "RuntimeError: this task cannot load in a worker" in done.stderr
    assert "Traceback" not in done.stderr


def test_sigint_to_the_command_alone_reaches_its_workers(tmp_path):
    """``kill -INT`` of the command's pid (not a terminal's Ctrl-C, which reaches the whole group): the command
    passes it on, so its worker stops at once and records its run as interrupted rather than being killed
    with the run left open."""
    out, counter = tmp_path / "out", tmp_path / "count"
    command = _command(out)
    command[1:3] = ["-c", "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                          "runpy.run_module('optarena', run_name='__main__', alter_sys=True)"]
    process = subprocess.Popen(command, env=_env(counter, pace=0.05), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(_started(counter)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Run the same command again to resume" in stdout
    store = ArenaStorage(f"sqlite:///{out / 'arena.db'}")
    cells = CompareConfig(optimizers=("adamw", "lion"), tasks=(MISBEHAVING,), budget="tiny", seeds=2, out=out).cells()
    attrs = [t.user_attrs for cell in cells for t in store.trials(cell)]
    assert sum("interrupted" in a for a in attrs) == 1 and not any(
        "result" not in a and "interrupted" not in a and "error" not in a for a in attrs)


def test_a_worker_that_hangs_loading_its_tasks_is_stopped_and_the_command_ends(tmp_path):
    """A task factory that hangs in the workers (a download, a lock): --run-timeout covers the loading too, so the
    command ends, naming the hang, instead of waiting for ever with no run started."""
    done = subprocess.run(_command(tmp_path / "out", "--run-timeout", "0.5",
                                   tasks=(f"{USER_TASKS}:hangs_loading_in_workers",)),
                          env=_env(tmp_path / "c"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "kept dying outside any run (3 times; the last: the worker process hung loading the tasks" in done.stderr


def test_a_task_edited_while_the_comparison_runs_stops_it_before_any_run_of_the_new_definition(tmp_path):
    """Run 3 kills its worker, and the task's file is "edited" meanwhile (OPTARENA_TEST_EDIT_AFTER): the new worker
    loads another definition than the command did, whose runs the report would ignore (the old definition's rest
    never ran). It runs nothing; the command names the task and exits 1, keeping the finished runs."""
    out, counter = tmp_path / "out", tmp_path / "count"
    done = subprocess.run(_command(out), env={**_env(counter, "3:kill"), "OPTARENA_TEST_EDIT_AFTER": "3"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert f"optarena: the task 'misbehaving' ({MISBEHAVING}) changed while the comparison ran" in done.stderr
    assert "run the same command again to compare the new definition." in done.stderr
    assert "Traceback" not in done.stderr
    assert len(_started(counter)) == 3 and _finished(out) == 2  # runs 1-2 kept; no run after the crash of run 3


@pytest.mark.parametrize("group", [True, False], ids=["process group", "command alone"])
def test_sigterm_stops_the_command_as_ctrl_c_does(tmp_path, group):
    """A batch scheduler's kill or `timeout` (SIGTERM to the whole process group, the workers' fork server too),
    or `kill PID` of the command alone (it passes the signal on): the run in progress is recorded as interrupted,
    not left running, and stays open for the next command; one line says so and the exit status is 143. The run
    takes a moment to clean up: the command waits for it (a fork server killed too once made it think its workers
    had ended, and exit under them)."""
    out, counter = tmp_path / "out", tmp_path / "count"
    env = {**_env(counter, pace=0.05), "OPTARENA_TEST_CLEANUP": "0.5"}
    process = subprocess.Popen(_command(out), env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(_started(counter)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    (os.killpg if group else os.kill)(process.pid, signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert stderr.splitlines() == ["optarena: terminated (SIGTERM); the runs in progress were recorded as interrupted "
                                   "and finished runs are stored. Run the same command again to resume."]
    config = CompareConfig(optimizers=("adamw", "lion"), tasks=(MISBEHAVING,), budget="tiny", seeds=2, out=out)
    store, later = ArenaStorage(config.storage), ArenaStorage(config.storage, invocation="a later one")
    trials = [(cell, t) for cell in config.cells() for t in store.trials(cell)]
    assert all("result" in t.user_attrs or "interrupted" in t.user_attrs for _, t in trials)  # none left running
    [(cell, run)] = [(cell, t) for cell, t in trials if "interrupted" in t.user_attrs]
    open_points = {point_key(*point) for point in config.plan(cell, later.finished(cell)).missing}
    assert point_key(run.params["lr"], run.params["seed"]) in open_points


def _resume(out: Path, counter: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """Run the same comparison again (in this process, which is quicker than a command), with a fresh run counter;
    the number of runs it made."""
    from optarena.arena import run_compare

    counter.unlink()
    monkeypatch.setenv("OPTARENA_TEST_COUNTER", str(counter))
    results = run_compare(CompareConfig(optimizers=("adamw", "lion"), tasks=(MISBEHAVING,), budget="tiny", seeds=2,
                                        out=out, workers=1, threads=1), show_progress=False)
    assert all(r.state == "complete" for r in results.records)
    return len(_started(counter))


def test_ctrl_c_in_a_worker_stops_the_command_and_it_resumes(tmp_path, monkeypatch):
    out, counter = tmp_path / "out", tmp_path / "count"
    # The task sends SIGINT to the command's process group, as a terminal's Ctrl-C does: a group of its own. An
    # ignored SIGINT is inherited through exec, and Python then keeps ignoring it: Lightning's trainer ignores it
    # for good after a KeyboardInterrupt, so a test before this one in the same xdist worker made the command deaf
    # to it (it ran to the end, exit 0). A shell's Ctrl-C reaches a command that has the default handler.
    command = _command(out)
    command[1:3] = ["-c", "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                          "runpy.run_module('optarena', run_name='__main__', alter_sys=True)"]
    interrupted = subprocess.run(command, env=_env(counter, "5:int"), capture_output=True, text=True,
                                 timeout=300, start_new_session=True)
    assert interrupted.returncode == 130, interrupted.stderr
    assert "Run the same command again to resume" in interrupted.stdout
    finished_before = _finished(out)
    assert finished_before == 4  # runs 1-4 finished and were stored at once; run 5 was interrupted
    assert _resume(out, counter, monkeypatch) == len(_rows(out)) - finished_before  # nothing finished ran again


def test_kill_9_of_the_command_ends_its_workers_and_it_resumes(tmp_path, monkeypatch):
    """The workers notice that their supervisor is gone and exit; the next invocation runs only what was not
    finished (the run that was going on when the command died is taken over: its process no longer exists)."""
    out, counter = tmp_path / "out", tmp_path / "count"
    command = subprocess.Popen(_command(out, "--workers", "2"), env=_env(counter, pace=0.02),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(_started(counter)) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = set(_started(counter))
    assert len(workers) == 2 and command.poll() is None
    command.kill()
    command.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in workers)
    finished_before = _finished(out)
    assert _resume(out, counter, monkeypatch) == len(_rows(out)) - finished_before


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is gone for this purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


TASK_FILE = """
import torch
from torch import nn
from optarena.arena import Task

X = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
Y = X.sum(1, keepdim=True)


def make(budget="quick"):
    return Task(name="edited", make_model=lambda: nn.Linear(4, 1),
                make_batches=lambda g, b: iter(lambda: (X, Y), None),
                loss=lambda m, batch: nn.functional.mse_loss(m(batch[0]), batch[1]),
                evaluate=lambda m: nn.functional.mse_loss(m(X), Y).item(), steps=STEPS)
"""


def test_a_changed_task_runs_anew(tmp_path):
    """Runs are stored under the task's fingerprint: after an edit (here its steps, 20 -> 40) a re-run makes new
    runs, and the report shows only those, never results of the old definition beside the new task table."""
    from optarena.arena import run_compare
    from optarena.arena.catalog import load_tasks

    source = tmp_path / "edited_task.py"
    config = dict(optimizers=("adamw",), tasks=(f"{source}:make",), budget="tiny", seeds=1, out=tmp_path / "out",
                  workers=1, threads=1)
    steps_seen = []
    for steps in (20, 40):
        source.write_text(TASK_FILE.replace("STEPS", str(steps)))
        load_tasks.cache_clear()  # as a new invocation would load it
        results = run_compare(CompareConfig(**config), show_progress=False)
        steps_seen.append({int(r["steps"]) for r in _rows(tmp_path / "out")})
        assert results.records and all(r.result.steps == steps for r in results.records)
    assert steps_seen == [{20}, {40}]
    assert "| edited | val_loss" in (tmp_path / "out" / "report.md").read_text()


def test_a_non_finite_gradient_is_a_divergence_and_a_zero_starting_loss_is_not(tmp_path):
    from optarena.arena import run_compare

    config = CompareConfig(optimizers=("lion",), tasks=(f"{USER_TASKS}:nan_gradient", f"{USER_TASKS}:zero_start"),
                           budget="tiny", seeds=1, out=tmp_path / "out", workers=1, threads=1)
    results = run_compare(config, show_progress=False)
    nan_runs = [r for r in results.records if r.cell.task_name == "nan_gradient"]
    assert nan_runs and all(r.state == "diverged" and r.result.diverged_because == "non-finite gradient"
                            and r.result.diverged_at == 1 for r in nan_runs)
    zero_runs = [r for r in results.records if r.cell.task_name == "zero_start"]
    assert zero_runs and all(r.state == "complete" for r in zero_runs)


def test_report_shows_markup_in_names_and_errors_as_text(tmp_path):
    from optarena.arena import run_compare

    config = CompareConfig(optimizers=("adamw",), tasks=(f"{USER_TASKS}:hostile_names",), budget="tiny", seeds=1,
                           out=tmp_path / "out", workers=1, threads=1)
    run_compare(config, show_progress=False)
    for name in ("report.md", "report.html"):
        text = (tmp_path / "out" / name).read_text()
        assert "&lt;script&gt;" in text and "&lt;b&gt;hostile" in text
        for markup in ("<script>", "<svg onload", "<img src=x", "<b>hostile"):
            assert markup not in text, (name, markup)


def test_a_report_file_is_replaced_whole_or_not_at_all(tmp_path):
    from optarena.atomic import write_atomically

    target = tmp_path / "report.md"
    target.write_text("the previous report")

    def fails_halfway(partial: Path) -> None:
        partial.write_text("half a rep")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomically(target, fails_halfway)
    assert target.read_text() == "the previous report" and list(tmp_path.iterdir()) == [target]
    write_atomically(target, lambda partial: partial.write_text("the new report"))
    assert target.read_text() == "the new report"


def test_a_storage_that_fails_while_running_names_itself_and_the_cause(tmp_path, monkeypatch):
    import optuna
    import sqlalchemy

    from optarena.arena.storage_urls import StorageError

    store = ArenaStorage(f"sqlite:///{tmp_path / 'arena.db'}")
    cell = CompareConfig(optimizers=("adamw",), tasks=(f"{USER_TASKS}:linear",), budget="tiny",
                         out=tmp_path).cells()[0]
    trial = store.claim(cell, 1e-3, 0)

    def full(*args, **kwargs):
        raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from \
            sqlalchemy.exc.OperationalError("COMMIT", None, Exception("database or disk is full"))

    monkeypatch.setattr(store.storage, "set_trial_user_attr", full)
    with pytest.raises(StorageError, match=r"arena.db' failed while recording a failed run: Exception: database or "
                                           r"disk is full \(is the disk full\?\)"):
        store.fail(trial, "boom")
