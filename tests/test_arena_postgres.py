"""Two ``optarena compare`` processes share one comparison through a real PostgreSQL server on loopback.

The server is started here (initdb + pg_ctl in a temporary folder). Without PostgreSQL binaries the test skips,
unless OPTARENA_REQUIRE_POSTGRES=1 (set by .ci/run, which installs them) turns that into a failure.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from optarena.arena import CompareConfig
from optarena.arena.storage import ArenaStorage

ROOT = Path(__file__).resolve().parent.parent
USER_TASKS = str(ROOT / "tests" / "arena_user_tasks.py")


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))[::-1]), None)
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        if os.environ.get("OPTARENA_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL binaries (initdb, pg_ctl) not found but OPTARENA_REQUIRE_POSTGRES=1")
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not installed")
    root = Path(tempfile.mkdtemp(prefix="optarena-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: hand the folder to an unprivileged user
        user = "postgres" if _has_user("postgres") else "nobody"
        os.chmod(root, 0o777)
        shutil.chown(root, user)
        as_user = ["runuser", "-u", user, "--"]
    data, port = root / "data", _free_port()
    subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "optarena", "--no-sync"],
                   check=True, capture_output=True)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"],
                   check=True, capture_output=True)
    try:
        _create_database("127.0.0.1", port, "optarena", "arena")
        yield f"postgresql://optarena@127.0.0.1:{port}/arena"  # the README's form
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _create_database(host: str, port: int, user: str, name: str) -> None:
    import psycopg

    # autocommit: CREATE DATABASE cannot run inside a transaction
    with psycopg.connect(host=host, port=port, user=user, dbname="postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _outputs_within(processes: list[subprocess.Popen], seconds: float) -> list[tuple[str, str]]:
    """Each process's (stdout, stderr). Fails, with every output and the stacks of the processes still running (their
    workers included: SIGABRT to each session), if one runs past ``seconds`` or one fails while another still runs
    (the other would wait at the rendezvous for a partner that is gone)."""
    deadline = time.monotonic() + seconds
    outputs: list[tuple[str, str] | None] = [None] * len(processes)
    while None in outputs and time.monotonic() < deadline and all(p.returncode in (None, 0) for p in processes):
        for i, p in enumerate(processes):
            if outputs[i] is None:
                with contextlib.suppress(subprocess.TimeoutExpired):  # a later call still gets all the output
                    outputs[i] = p.communicate(timeout=0.5)
    if None not in outputs:
        return outputs  # type: ignore[return-value]
    for i, p in enumerate(processes):
        if outputs[i] is None:
            with contextlib.suppress(ProcessLookupError):  # it may have ended just now
                os.killpg(p.pid, signal.SIGABRT)
            outputs[i] = p.communicate(timeout=60)
    pytest.fail(f"optarena compare failed or hung: exit codes {[p.returncode for p in processes]} (-6: stopped by "
                f"this test, after {seconds} s or a partner's failure); outputs (stacks on stderr): {outputs}")


def test_two_machines_share_one_study_through_postgresql(postgres_url, tmp_path):
    args = ["--task", f"{USER_TASKS}:rendezvous", "--optimizers", "adamw,lion,adan", "--budget", "tiny",
            "--seeds", "2", "--workers", "1", "--storage", postgres_url]
    # two independent invocations, as on two machines, each with its own output folder
    env = {**os.environ, "OPTARENA_TEST_RENDEZVOUS": str(tmp_path / "pids"),  # each waits for the other's first run
           "PYTHONFAULTHANDLER": "1"}  # a process still running at the deadline prints its threads' stacks (below)
    processes = [subprocess.Popen([sys.executable, "-m", "optarena", "compare", *args, "--out", str(tmp_path / m)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                  start_new_session=True)
                 for m in ("a", "b")]
    outputs = _outputs_within(processes, seconds=300)
    assert [p.returncode for p in processes] == [0, 0], outputs

    config = CompareConfig(optimizers=("adamw", "lion", "adan"), tasks=(f"{USER_TASKS}:rendezvous",), budget="tiny",
                           seeds=2, storage=postgres_url, out=tmp_path / "check")
    store = ArenaStorage(postgres_url)
    records = store.records(config.cells())
    assert all(config.plan(cell, store.finished(cell)).complete for cell in config.cells())
    assert len({r.worker for r in records}) == 2  # both processes did part of the work
    trials = [t for cell in config.cells() for t in store.trials(cell)]
    # the only extra trials are claims that stepped back because the other machine held the run
    assert len([t for t in trials if "duplicate" not in t.user_attrs]) == len(records)
    for out in ("a", "b"):  # both wrote the full report from the shared study
        assert len((tmp_path / out / "results.csv").read_text().splitlines()) == len(records) + 1


_OPEN_STORAGE = """
import multiprocessing
import sys
import traceback

from optarena.arena.storage import ArenaStorage

barrier = multiprocessing.get_context("fork").Barrier(4, timeout=120)


def open_each() -> None:  # a new database each round, opened by every process at once
    try:
        for url in sys.argv[1:]:
            barrier.wait()
            ArenaStorage(url)
    except BaseException:
        traceback.print_exc()
        barrier.abort()  # the others stop waiting for this one
        raise SystemExit(1)


# forked after the one import of torch: four processes, four connections, one import's start-up cost
processes = [multiprocessing.get_context("fork").Process(target=open_each) for _ in range(4)]
for p in processes:
    p.start()
for p in processes:
    p.join()
print("exit codes", [p.exitcode for p in processes])
raise SystemExit(max(p.exitcode != 0 for p in processes))
"""


def test_machines_starting_together_on_a_new_database_all_connect(postgres_url):
    """Optuna creates its tables on first contact; processes doing so at one moment race (PostgreSQL: a unique
    violation, or DuplicateTable once the winner has committed), and each must retry rather than stop. Two rounds,
    each on a new database, by the same 4 processes, which start each round together at a barrier (forked from one
    process after its import of torch, which would cost more than the rest of the test four times over)."""
    import sqlalchemy

    url = sqlalchemy.engine.make_url(postgres_url)
    fresh = []
    for attempt in range(2):
        database = f"fresh{attempt}"
        _create_database(url.host, url.port, url.username, database)
        fresh.append(url.set(database=database).render_as_string(hide_password=False))
    process = subprocess.run([sys.executable, "-c", _OPEN_STORAGE, *fresh], capture_output=True, text=True,
                             timeout=300)
    assert process.returncode == 0, (process.stdout, process.stderr)
    assert "exit codes [0, 0, 0, 0]" in process.stdout


def test_a_server_that_dropped_its_connections_is_reconnected_to(postgres_url, tmp_path):
    """The server ends every session (a restart, a failover, an idle-session limit) while a run is in progress: the
    worker's next heartbeat and its result reach the server through a new connection, instead of stopping the
    comparison with "terminating connection due to administrator command" although the server is back."""
    import psycopg
    import sqlalchemy

    url = sqlalchemy.engine.make_url(postgres_url)
    _create_database(url.host, url.port, url.username, "dropped")
    dropped = url.set(database="dropped").render_as_string(hide_password=False)
    config = CompareConfig(optimizers=("adamw",), tasks=(f"{USER_TASKS}:linear",), budget="tiny", seeds=1,
                           storage=dropped, out=tmp_path)
    cell = config.cells()[0]
    store = ArenaStorage(dropped, invocation="now")
    trial = store.claim(cell, 1e-3, 0)
    with psycopg.connect(host=url.host, port=url.port, user=url.username, dbname="postgres",
                         autocommit=True) as connection:
        # with a timeout (ms), each call returns once that session has ended (PostgreSQL 14 and later)
        ended = connection.execute("SELECT pg_terminate_backend(pid, 30000) FROM pg_stat_activity "
                                   "WHERE datname = 'dropped'").fetchall()
    assert ended and all(row[0] for row in ended), f"the store's sessions did not end: {ended}"
    store.heartbeat(trial)
    store.finish(trial, _linear_result())
    assert [(r.state, r.metric) for r in store.records([cell])] == [("complete", 0.25)]


def _linear_result():
    from optarena.arena.runner import RunResult

    return RunResult(final_metric=0.25, best_metric=0.25, diverged=False, diverged_at=None, steps=30,
                     steps_to_target=None, seconds_to_target=None, train_seconds=0.1, opt_step_ms=1.0,
                     fwd_bwd_ms=1.0, state_bytes=80, params=9, peak_memory_mb=0.0)
