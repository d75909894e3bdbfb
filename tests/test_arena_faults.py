"""``optarena compare`` under faults: a run that kills its worker, hangs, or exits; Ctrl-C; ``kill -9`` of the
command itself; a task changed between invocations. Every finished result is kept, what went wrong is recorded,
the comparison goes on and the report is written."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from optarena.arena import CompareConfig
from optarena.arena.storage import ArenaStorage

ROOT = Path(__file__).resolve().parent.parent
USER_TASKS = str(ROOT / "tests" / "arena_user_tasks.py")
MISBEHAVING = f"{USER_TASKS}:misbehaving"


def _command(out: Path, *extra: str, tasks: tuple[str, ...] = (MISBEHAVING,)) -> list[str]:
    task_args = [arg for task in tasks for arg in ("--task", task)]
    return [sys.executable, "-m", "optarena", "compare", *task_args, "--optimizers", "adamw,lion", "--budget", "tiny",
            "--seeds", "2", "--out", str(out), "--workers", "1", *extra]


def _env(counter: Path, action: str = "", at: int = 0, pace: float = 0.0) -> dict[str, str]:
    return {**os.environ, "OPTARENA_TEST_COUNTER": str(counter), "OPTARENA_TEST_ACTION": action,
            "OPTARENA_TEST_ACT_AT": str(at), "OPTARENA_TEST_PACE": str(pace)}


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def _started(counter: Path) -> list[int]:
    return [int(pid) for pid in counter.read_text().split()] if counter.exists() else []


def _finished(out: Path) -> int:
    store = ArenaStorage(f"sqlite:///{out / 'arena.db'}")
    config = CompareConfig(optimizers=("adamw", "lion"), tasks=(MISBEHAVING,), budget="tiny", seeds=2, out=out)
    return sum(len(store.finished(cell)) for cell in config.cells())


@pytest.mark.parametrize("action, state, reason", [
    ("kill", "crashed", "killed by signal 9 (SIGKILL)"),
    ("exit", "crashed", "called sys.exit(3)"),
    ("hang", "timed out", "per-run limit of 3 s"),
])
def test_a_run_that_kills_its_worker_hangs_or_exits_is_recorded_and_the_rest_goes_on(tmp_path, action, state,
                                                                                    reason):
    out, counter = tmp_path / "out", tmp_path / "count"
    done = subprocess.run(_command(out, "--run-timeout", "3", tasks=(MISBEHAVING, f"{USER_TASKS}:linear")),
                          env=_env(counter, action, at=3), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr  # runs failed: not a success
    assert f"1 {state}" in done.stderr and "Traceback" not in done.stderr
    rows = _rows(out)
    failed = [r for r in rows if r["state"] != "complete"]
    assert [r["state"] for r in failed] == [state] and reason in failed[0]["error"]
    assert {(r["task"], r["optimizer"]) for r in rows if r["state"] == "complete"} == {
        (task, optimizer) for task in ("misbehaving", "linear") for optimizer in ("adamw", "lion")}
    config = CompareConfig(optimizers=("adamw", "lion"), tasks=(MISBEHAVING, f"{USER_TASKS}:linear"), budget="tiny",
                           seeds=2, out=out)
    store = ArenaStorage(config.storage, invocation="a later one")
    assert all(config.plan(cell, store.finished(cell)).complete or cell.task == MISBEHAVING
               for cell in config.cells())  # the failed run stays open for a later invocation, the rest is done
    assert state in (out / "report.md").read_text()


def test_ctrl_c_in_a_worker_stops_the_command_and_it_resumes(tmp_path):
    out, counter = tmp_path / "out", tmp_path / "count"
    interrupted = subprocess.run(_command(out), env=_env(counter, "int", at=5), capture_output=True, text=True,
                                 timeout=300)
    assert interrupted.returncode == 130, interrupted.stderr
    assert "Run the same command again to resume" in interrupted.stdout
    finished_before = _finished(out)
    assert finished_before == 4  # runs 1-4 finished and were stored at once; run 5 was interrupted
    counter.unlink()
    resumed = subprocess.run(_command(out), env=_env(counter), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert len(_started(counter)) == len(_rows(out)) - finished_before  # nothing finished ran again


def test_kill_9_of_the_command_ends_its_workers_and_it_resumes(tmp_path):
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
    counter.unlink()
    resumed = subprocess.run(_command(out), env=_env(counter), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert len(_started(counter)) == len(_rows(out)) - finished_before


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
