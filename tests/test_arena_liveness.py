"""Arena runs that look dead but are not, and stored runs that no longer count: a live worker in a long evaluation
is never taken over, its heartbeat goes on without steps; failures outside the current plan are not counted; the
default database lands inside ``--out`` whatever its name; a short batch iterator is named."""

from __future__ import annotations

import csv
import os
import threading
import time

import pytest
from synthetic import LINEAR
from synthetic import config as _config
from synthetic import result as _result
from torch import nn

from optarena.arena import CompareConfig, Task, run_compare, train_once
from optarena.arena import workers as arena_workers
from optarena.arena.compare import failure_summary
from optarena.arena.plan import point_key
from optarena.arena.storage import ArenaStorage, _process_start


def test_a_live_worker_on_this_machine_is_never_stale_but_a_reused_pid_is(tmp_path):
    """A run in a long final evaluation sends no step heartbeat; its worker process is alive here, so another
    worker must not take the run over (it once did after --stale-after). A pid now held by another process (its
    start time differs) is a dead worker, however fresh the heartbeat."""
    url = f"sqlite:///{tmp_path / 'arena.db'}"
    cell = _config(tmp_path, storage=url).cells()[0]
    holder, other = ArenaStorage(url, stale_after=60), ArenaStorage(url, stale_after=60)
    trial = holder.claim(cell, 1e-3, 0)
    parent = os.getppid()  # a live process on this machine standing in for the worker
    holder.storage.set_trial_user_attr(trial, "pid", parent)
    holder.storage.set_trial_user_attr(trial, "started", _process_start(parent))
    holder.storage.set_trial_user_attr(trial, "heartbeat", time.time() - 3600)  # no heartbeat for an hour
    assert other.running_keys(cell) == {point_key(1e-3, 0)} and other.claim(cell, 1e-3, 0) is None

    holder.storage.set_trial_user_attr(trial, "heartbeat", time.time())
    holder.storage.set_trial_user_attr(trial, "started", _process_start(parent) + 1)  # the pid was reused
    assert other.running_keys(cell) == set() and other.claim(cell, 1e-3, 0) is not None


class _Beats:
    """A storage that counts heartbeats; ``arrived`` is set by the second."""

    def __init__(self) -> None:
        self.beats, self.arrived, self.finished = 0, threading.Event(), []

    def heartbeat(self, trial_id: int) -> None:
        self.beats += 1
        if self.beats >= 2:
            self.arrived.set()

    def finish(self, trial_id: int, result) -> None:
        self.finished.append(result)


def test_the_heartbeat_goes_on_while_a_run_takes_no_steps(tmp_path, monkeypatch):
    """The run below never calls its step heartbeat (as during a long evaluation): the worker still beats, so
    other machines see it alive."""
    store = _Beats()
    monkeypatch.setattr(arena_workers, "HEARTBEAT_SECONDS", 0.01)

    def evaluating(*args, **kwargs):
        assert store.arrived.wait(30), "no heartbeat while the run took no steps"
        return _result(0.5)

    monkeypatch.setattr(arena_workers, "train_once", evaluating)
    config = _config(tmp_path)
    arena_workers._run_point(store, config, config.cells()[0], 7, (1e-3, 0, None), lambda event, trial: None)
    assert store.finished and store.beats >= 2


def test_failures_outside_the_plan_are_not_counted_and_the_database_stays_inside_out(tmp_path):
    """A seed an earlier command ran with more --seeds failed there; this command (1 seed) plans no such run, so
    its failure counts nowhere: not in the exit status's summary, not in "Runs that failed"; results.csv keeps
    the row, marked as outside the plan. The --out name holds URL syntax ('?', '%41'): the database is
    OUT/arena.db all the same."""
    out = tmp_path / "pct%41b?x=1"
    config = CompareConfig(optimizers=("adamw",), tasks=(LINEAR,), budget="tiny", seeds=1, out=out, workers=1,
                           threads=1)
    out.mkdir()
    earlier = ArenaStorage(config.storage, invocation="earlier")
    cell = config.cells()[0]
    earlier.fail(earlier.claim(cell, 1e-3, 3), "Traceback\nRuntimeError: seed 3 failed")
    results = run_compare(config, show_progress=False)
    assert (out / "arena.db").is_file() and sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    assert failure_summary(results) is None and results.failures == []
    assert "Runs that failed" not in (out / "report.md").read_text()
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["seed"], r["state"], r["planned"]) for r in rows if r["state"] == "error"] == [("3", "error", "False")]
    assert all(r["planned"] == "True" for r in rows if r["state"] != "error")


def test_a_batch_iterator_shorter_than_the_run_is_named():
    task = Task(name="short", make_model=lambda: nn.Linear(2, 1), make_batches=lambda g, b: iter([None] * 3),
                loss=lambda m, b: m.weight.sum(), evaluate=lambda m: 0.0, steps=5)
    with pytest.raises(RuntimeError, match="make_batches yielded only 3 batches for 5 steps"):
        train_once(task, "adamw", 1e-3, 0)


def _finished_comparison(tmp_path):
    """A comparison (adamw on the linear task, 1 seed) whose whole plan is stored: a command only writes the report."""
    out = tmp_path / "out"
    config = CompareConfig(optimizers=("adamw",), tasks=(LINEAR,), budget="tiny", seeds=1, out=out, workers=1)
    out.mkdir()
    store = ArenaStorage(config.storage)
    cell = config.cells()[0]
    for lr, metric in ((3.162e-4, 0.3), (1e-3, 0.1), (3.162e-3, 0.2)):
        store.finish(store.claim(cell, lr, 0), _result(metric))
    return config, store, cell


def test_a_report_that_cannot_be_written_is_one_line_and_the_runs_stay_stored(tmp_path, monkeypatch, capsys):
    """Every run finished and stored, then the disk fills while the report is written: the command names the folder
    and the system's reason and exits 1, without a traceback; the runs are kept for the next command's report."""
    import errno

    from optarena import cli
    from optarena.arena import report

    config, store, cell = _finished_comparison(tmp_path)
    out = config.out

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / ".report.html.partial"))

    monkeypatch.setattr(report, "write_report", full_disk)
    code = cli.main(["compare", "--task", LINEAR, "--optimizers", "adamw", "--budget", "tiny", "--seeds", "1",
                     "--workers", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert f"The report could not be written to {str(out)!r} (No space left on device: " in err
    assert "finished runs are stored" in err and len(store.records([cell])) == 3


def test_commands_sharing_an_out_folder_write_the_report_one_at_a_time(tmp_path, monkeypatch):
    """Two commands on one --out finish together (the last run ends both) and write the report at once: they shared
    its temporary file, so one lost it (FileNotFoundError) and the report could mix both writes. A second command's
    attempt to write meets the first's lock and waits."""
    import fcntl

    from optarena.arena import report

    config, _, _ = _finished_comparison(tmp_path)
    real, second_waits = report.write_report, []

    def writing(results, out, **kwargs):
        with open(out / ".report.lock", "a") as other:  # what another command's report lock meets now
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                second_waits.append(True)
            else:
                second_waits.append(False)
        return real(results, out, **kwargs)

    monkeypatch.setattr(report, "write_report", writing)
    run_compare(config, show_progress=False)
    assert second_waits == [True] and (config.out / "report.html").is_file()
