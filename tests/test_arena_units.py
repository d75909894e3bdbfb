"""Arena pieces on synthetic data: the storage's claim/stale/retry protocol, the runner's divergence check and
seed-aligned curves (claims and verdicts: test_claims.py, test_verdict.py)."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
import torch
from synthetic import ADAMW_GRID, tuned
from synthetic import config as _config
from synthetic import records as _records
from synthetic import result as _result
from torch import nn

from optarena.arena import Task, train_once
from optarena.arena.plan import point_key
from optarena.arena.results import ResultSet
from optarena.arena.storage import ArenaStorage
from optarena.arena.storage_urls import redact


def test_median_curves_align_seeds_by_step(tmp_path):
    config = _config(tmp_path)
    runs = tuned(ADAMW_GRID, (0.3, 0.1, 0.2), seeds=3)
    runs[(1e-3, 1)] = _result(0.1, steps=(0, 5, 10, 15, 20, 25, 30), curve=(9, 9, 9, 9, 9, 9, 0.1))
    runs[(1e-3, 2)] = _result(None, steps=(0, 10), curve=(5.0,))  # diverged after its first evaluation
    config.seeds = 3
    records = _records(config, "adamw", runs)
    results = ResultSet(config, records)
    steps, mid, low, high = results.median_curve(records[0].cell, "eval_steps", "eval_metric")
    assert steps == [0, 5, 10, 15, 20, 25, 30]
    assert (mid[0], low[0], high[0]) == (5.0, 1.1, 9)  # three seeds at step 0
    assert (mid[1], low[1], high[1]) == (9, 9, 9)  # only the seed that evaluated at step 5


def _quadratic_with_spike(eval_every: int) -> Task:
    calls = itertools.count()

    def loss(model: nn.Module, _batch) -> torch.Tensor:
        base = (model.weight ** 2).sum() + 1.0
        return base * (30.0 if next(calls) == 12 else 1.0)  # one 30x spike: noise, not divergence

    return Task(name="spike", make_model=lambda: nn.Linear(3, 1), make_batches=lambda g, b: itertools.repeat(None),
                loss=loss, evaluate=lambda m: float((m.weight ** 2).sum()), steps=40, eval_every=eval_every)


@pytest.mark.parametrize("eval_every", [1, 5, 20])
def test_the_divergence_check_smooths_over_ten_steps_whatever_the_evaluation_interval(eval_every):
    result = train_once(_quadratic_with_spike(eval_every), "sgd", 1e-3, seed=0)
    assert not result.diverged and result.steps == 40


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_storage_claims_once_takes_over_dead_workers_and_drops_a_late_result(tmp_path):
    url = f"sqlite:///{tmp_path / 'arena.db'}"
    config = _config(tmp_path, storage=url)
    cell = config.cells()[0]
    first, second = ArenaStorage(url, invocation="a"), ArenaStorage(url, invocation="a")
    trial = first.claim(cell, 1e-3, 0)
    assert trial is not None
    first.storage.set_trial_user_attr(trial, "pid", 1)  # held by a live process (init) on this machine
    first.storage.set_trial_user_attr(trial, "started", None)  # (its start time unknown: no sign of a reused pid)
    assert second.claim(cell, 1e-3, 0) is None and second.running_keys(cell) == {point_key(1e-3, 0)}

    first.storage.set_trial_user_attr(trial, "pid", _dead_pid())  # its worker died
    assert second.running_keys(cell) == set() and second.finished(cell) == {}
    taken = second.claim(cell, 1e-3, 0)
    assert taken is not None
    first.finish(trial, _result(0.5))  # the presumed-dead worker finishes late: dropped, no crash
    second.finish(taken, _result(0.4))
    assert second.finished(cell)[point_key(1e-3, 0)].metric == 0.4


def test_a_run_that_raised_is_retried_once_by_the_next_invocation(tmp_path):
    url = f"sqlite:///{tmp_path / 'arena.db'}"
    cell = _config(tmp_path, storage=url).cells()[0]
    earlier = ArenaStorage(url, invocation="earlier")
    earlier.fail(earlier.claim(cell, 1e-3, 0), "Traceback: boom")
    assert earlier.finished(cell)[point_key(1e-3, 0)].metric is None  # done for the invocation that saw it
    later = ArenaStorage(url, invocation="later")
    assert later.finished(cell) == {}
    later.finish(later.claim(cell, 1e-3, 0), _result(0.2))
    (record,) = later.records([cell])
    assert record.state == "complete" and record.metric == 0.2


def test_storage_retries_when_another_machine_creates_the_tables_first(tmp_path, monkeypatch):
    """Processes starting together on a new database race to create Optuna's tables: the loser's error (PostgreSQL:
    a unique violation, or DuplicateTable, a ProgrammingError) means "created meanwhile", so it tries again."""
    import optuna
    import sqlalchemy

    from optarena.arena import storage as storage_module

    errors = [sqlalchemy.exc.ProgrammingError("CREATE TABLE", None, Exception('relation "studies" already exists')),
              sqlalchemy.exc.IntegrityError("INSERT INTO version_info", None, Exception("duplicate key value"))]
    attempts = []

    class Racing(optuna.storages.RDBStorage):
        def __init__(self, url, **kwargs):
            attempts.append(url)
            if errors:
                raise errors.pop(0)
            super().__init__(url, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", Racing)
    monkeypatch.setattr(storage_module.time, "sleep", lambda seconds: None)
    ArenaStorage(f"sqlite:///{tmp_path / 'arena.db'}").study_id(_config(tmp_path).cells()[0])
    assert len(attempts) == 3

    errors.append(sqlalchemy.exc.OperationalError("connect", None, Exception("connection refused")))  # not a race
    with pytest.raises(ValueError, match="Invalid storage: 'sqlite:///x.db' \\(Exception: connection refused\\)"):
        ArenaStorage("sqlite:///x.db")


def test_the_runner_gives_ademamix_its_warmups_and_amos_a_constant_lr(monkeypatch):
    import optarena.arena.runner as runner

    seen = {}
    real = runner.create_optimizer

    def spy(model, name, **kwargs):
        seen[name] = kwargs
        return real(model, name, **kwargs)

    monkeypatch.setattr(runner, "create_optimizer", spy)
    task = _quadratic_with_spike(5)
    train_once(task, "ademamix", 1e-3, seed=0)
    assert seen["ademamix"]["alpha_warmup"] == seen["ademamix"]["beta3_warmup"] == task.steps
    constant = runner.lr_multiplier("amos", 100)
    assert constant(50) == constant(99) == 1.0 and constant(0) < 1.0  # warm-up, then no decay


def test_a_password_with_an_unescaped_at_sign_is_hidden_whole():
    """``postgresql://u:hunter@2x9@host/db``: the URL parser takes the password to end at the first '@' and the
    rest of it (``2x9``) for part of the host, which the driver's message then quotes; neither part may show."""
    url = "postgresql://optarena:hunter@2x9@db.example:5432/arena"
    cause = "OperationalError: failed to resolve host '2x9@db.example': [Errno -2] Name or service not known"
    for text in (redact(url), redact(f"Invalid storage: {url!r} ({cause})", url), redact(cause, url)):
        assert "hunter" not in text and "2x9" not in text, text
    assert redact(url) == "postgresql://optarena:***@db.example:5432/arena"
    assert redact("postgresql://u:pw@h/db?x=a@b") == "postgresql://u:***@h/db?x=a@b"  # an '@' past the host stays


def test_a_storage_url_of_an_unknown_scheme_or_missing_driver_says_what_to_write():
    """``postgres://`` (what hosting services hand out) is no SQLAlchemy scheme: the refusal says to write
    ``postgresql://`` rather than quoting a plugin loader; ``+psycopg2`` without psycopg2 names that package."""
    import importlib.util

    with pytest.raises(ValueError, match=r"'postgres://u:\*\*\*@127.0.0.1:1/db' \(SQLAlchemy knows no database type "
                                         r"'postgres' .*; write postgresql://\)$"):
        ArenaStorage("postgres://u:pw@127.0.0.1:1/db")
    if importlib.util.find_spec("psycopg2") is None:
        with pytest.raises(ValueError, match="no module named 'psycopg2'; pip install psycopg2-binary, or write "
                                             "postgresql:// for psycopg 3"):
            ArenaStorage("postgresql+psycopg2://u:pw@127.0.0.1:1/db")


def test_a_run_that_failed_is_final_for_every_command_running_then_on_any_machine(tmp_path):
    """Two machines run one comparison; a run fails (or times out) on one of them: the other, running meanwhile,
    does not run it again (it did, once per machine: a run timing out at 600 s cost 600 s on each). A command
    started after the failure retries it once, as before."""
    import time

    url = f"sqlite:///{tmp_path / 'arena.db'}"
    cell = _config(tmp_path, storage=url).cells()[0]
    a, b = (ArenaStorage(url, invocation=name, started=time.time()) for name in ("machine a", "machine b"))
    a.fail(a.claim(cell, 1e-3, 0), "timed out after 600 s", "timed out")
    assert point_key(1e-3, 0) in b.finished(cell) and b.claim(cell, 1e-3, 0) is None
    later = ArenaStorage(url, invocation="the next command", started=time.time())
    assert later.finished(cell) == {} and later.claim(cell, 1e-3, 0) is not None


def test_a_password_with_an_at_sign_and_a_slash_is_hidden_whole():
    """``pa@ss/w0rd``: the URL parser reads ``ss`` as the host and ``w0rd@...`` as the database; no part may show,
    and a URL quoted beside another '@' token keeps its own host."""
    url = "postgresql://alice:pa@ss/w0rd@db.example.com/arena"
    text = redact(f"Invalid storage: {url!r} (OperationalError: failed to resolve host 'ss')", url)
    assert "pa@" not in text and "ss" not in text and "w0rd" not in text, text
    assert "postgresql://alice:***@db.example.com/arena" in text
    assert redact("storage=['postgresql://u:pw@dbhost','backup@example.com']") == (
        "storage=['postgresql://u:***@dbhost','backup@example.com']")
    assert redact("postgresql://u:pw@dbhost/arena?application_name=me@work") == (
        "postgresql://u:***@dbhost/arena?application_name=me@work")
