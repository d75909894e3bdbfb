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
import sys
from optarena.arena.storage import ArenaStorage
print("ready", flush=True)
for url in sys.stdin:  # a new database each round, opened by every process at once
    ArenaStorage(url.strip())
    print("opened", flush=True)
"""


def test_machines_starting_together_on_a_new_database_all_connect(postgres_url):
    """Optuna creates its tables on first contact; processes doing so at one moment race (PostgreSQL: a unique
    violation, or DuplicateTable once the winner has committed), and each must retry rather than stop. Two rounds,
    each on a new database, by the same 4 processes (each start costs an import of torch)."""
    import sqlalchemy

    url = sqlalchemy.engine.make_url(postgres_url)
    processes = [subprocess.Popen([sys.executable, "-c", _OPEN_STORAGE], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]

    def expect(line: str) -> None:
        for p in processes:
            got = p.stdout.readline().strip()
            if got != line:  # it failed: end all, show their output
                for q in processes:
                    q.kill()
                pytest.fail(f"expected {line!r}, got {got!r}: {[q.communicate() for q in processes]}")

    try:
        expect("ready")  # all imported: then all go at once
        for attempt in range(2):
            database = f"fresh{attempt}"
            _create_database(url.host, url.port, url.username, database)
            fresh_url = url.set(database=database).render_as_string(hide_password=False)
            for p in processes:
                p.stdin.write(fresh_url + "\n")
                p.stdin.flush()
            expect("opened")
    finally:
        outputs = [p.communicate(timeout=120) for p in processes]  # closes their stdin: they exit
    assert [p.returncode for p in processes] == [0] * 4, outputs
