"""Results live in Optuna studies: one study per cell, one trial per run, written the moment a run finishes.

Any SQLAlchemy URL Optuna accepts works: SQLite in the output folder by default, PostgreSQL (or MySQL) when several
machines share one comparison. Each run is a trial whose user attribute ``key`` names its (lr, seed) point, so
workers on different machines agree on what is done:

* a worker *claims* a point by creating a RUNNING trial that carries the key from the start. Optuna numbers trials
  under a lock on the study, so of two claims the later one always sees the earlier and steps back (marked FAIL,
  ``duplicate``);
* a finished run is COMPLETE (value = final validation metric) or PRUNED (diverged: the run blew up), and is never
  run again. A run whose task code raised is FAIL with an ``error`` attribute: not retried by an ``optarena
  compare`` invocation that was running when it failed (on any machine), retried once by the next one (the task
  may have been fixed); so is a run whose worker process died (``crashed``, with the signal or exit code) or that
  ran past the per-run time limit (``timed out``);
* a RUNNING trial whose worker is gone — on the same machine (hostname and boot id) its process no longer exists
  (a live process there is never stale, however long it goes without a heartbeat), elsewhere no heartbeat for
  ``stale_after`` seconds (a thread sends one every ``HEARTBEAT_SECONDS`` while the run lasts, evaluations
  included) — is marked FAIL (``stale``) and its point is run again. A worker
  that finds its own trial marked stale drops its result: the point belongs to whoever took it over. Ctrl-C
  marks the running trial FAIL (``interrupted``) on the way out.

Of several finished trials for one key (possible only after a stale takeover), the lowest-numbered counts.
"""

from __future__ import annotations

import math
import os
import random
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import optuna
import sqlalchemy
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from .plan import Cell, Outcome, point_key
from .runner import RunResult
from .storage_urls import explain, redact, storage_call

LR_DISTRIBUTION = FloatDistribution(1e-9, 1e3, log=True)
SEED_DISTRIBUTION = IntDistribution(0, 2**31 - 1)
WD_DISTRIBUTION = FloatDistribution(1e-12, 1e6, log=True)
HEARTBEAT_SECONDS = 30.0
"""A running trial's heartbeat is refreshed this often; ``stale_after`` must be at least twice as long."""

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot; Linux), or None where that cannot be read: with the pid
    it tells a worker from a later process that reuses its pid. 0 for a process that has ended (a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return 0 if fields[0] == "Z" else int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _machine_id() -> str:
    """Hostname plus boot id: containers that share a hostname do not share process ids."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f"{socket.gethostname()}/{f.read().strip()}"
    except OSError:
        return socket.gethostname()


#: How a run that produced no result ended: its task's code raised, its worker process died (a signal, an exit),
#: or it ran past the per-run time limit. Each is final for every command running when it was recorded (on any
#: machine) and retried once by the next.
FAILURES = ("error", "crashed", "timed out")


@dataclass
class Record:
    """One finished run, as read back from storage."""

    cell: Cell
    lr: float
    seed: int
    state: str
    """``"complete"``, ``"diverged"`` or one of ``FAILURES``."""
    result: RunResult | None
    error: str | None
    trial_number: int
    worker: str
    host: str
    wd: float | None = None
    """The AdamW-scale weight decay where it was tuned (``--tune lr,weight_decay``); None: the task's."""

    @property
    def metric(self) -> float | None:
        return self.result.final_metric if self.result is not None and self.state == "complete" else None


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _lost_creation_race(err: Exception) -> bool:
    """Whether ``err`` is another process creating Optuna's tables (or their first rows) at the same moment: a unique
    violation, or a table that exists by the time this one's ``CREATE TABLE`` runs (PostgreSQL's DuplicateTable, a
    ProgrammingError: of three processes starting together on a new database, one failed so in 2 of 10 tries)."""
    return isinstance(err, sqlalchemy.exc.IntegrityError) or (
        isinstance(err, sqlalchemy.exc.DBAPIError) and "already exists" in str(err.orig))


class ArenaStorage:
    """The arena's view of an Optuna storage.

    ``invocation`` identifies one ``optarena compare`` command (shared by its worker processes): runs that raised
    count as finished for the invocation that recorded them, and are retried by a later one. ``started`` (epoch
    seconds) is when that command began: a failure recorded after it, by any machine, is final for it too, so that
    machines sharing one comparison do not each run again a run that failed (or timed out) on one of them.
    """

    def __init__(self, url: str, *, stale_after: float = 600.0, invocation: str | None = None,
                 started: float | None = None) -> None:
        engine_kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            # several local worker processes write to one file: wait for the lock instead of failing
            engine_kwargs["connect_args"] = {"timeout": 120}
        else:
            # a database server that restarted (or ended idle sessions) leaves dead connections in the pool: test
            # each before use and reconnect, or every machine's comparison stops although the server is back
            engine_kwargs["pool_pre_ping"] = True
        for attempt in range(5):
            try:
                self.storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
                self.storage.get_all_studies()  # a file that is not a database fails here, not in a worker
                break
            except Exception as err:  # SQLAlchemy raises several types for a bad URL or an unreachable server
                if _lost_creation_race(err):
                    # machines starting together race to create Optuna's tables; the loser retries and finds them
                    if attempt == 4:
                        raise
                    time.sleep(0.5 + random.random())
                    continue
                raise ValueError(f"Invalid storage: {redact(url)!r} ({redact(explain(err), url)})") from None
        if url.startswith("sqlite"):
            # WAL lets readers run beside the writer, and NORMAL syncs at checkpoints, not at every commit:
            # a commit drops from ~10 ms to well under 1 ms; a power cut may lose the last runs, a crash cannot.
            sqlalchemy.event.listen(self.storage.engine, "connect", _sqlite_pragmas)
            self.storage.engine.dispose()
        self.url = url
        self.stale_after = stale_after
        self.invocation = invocation
        self.started = math.inf if started is None else started
        self.host = _machine_id()
        self.worker_id = uuid.uuid4().hex[:12]
        self._study_ids: dict[str, int] = {}

    # ------------------------------------------------------------------------------------------------ studies
    @storage_call("opening a study")
    def study_id(self, cell: Cell) -> int:
        if cell.study_name not in self._study_ids:
            study = optuna.create_study(storage=self.storage, study_name=cell.study_name, load_if_exists=True,
                                        direction="maximize" if cell.higher_is_better else "minimize")
            if not study.user_attrs:
                for key, value in vars(cell).items():
                    study.set_user_attr(key, value)
            self._study_ids[cell.study_name] = self.storage.get_study_id_from_name(cell.study_name)
        return self._study_ids[cell.study_name]

    @storage_call("reading runs")
    def trials(self, cell: Cell) -> list[FrozenTrial]:
        return self.storage.get_all_trials(self.study_id(cell), deepcopy=False)

    # ---------------------------------------------------------------------------------------- reading results
    def _kind(self, trial: FrozenTrial, any_invocation: bool = False) -> str | None:
        """How a trial finished, or ``None`` if its point is still open (running, stale, interrupted, duplicate,
        or an error recorded before this invocation started, which it retries)."""
        if trial.state == TrialState.COMPLETE:
            return "complete"
        if trial.state == TrialState.PRUNED:
            return "diverged"
        attrs = trial.user_attrs
        if trial.state == TrialState.FAIL and "error" in attrs and (
                any_invocation or attrs.get("invocation") == self.invocation
                or attrs.get("failed_at", -math.inf) >= self.started):
            return attrs.get("failure", "error")
        return None

    def _by_key(self, trials: list[FrozenTrial], any_invocation: bool = False) -> dict[str, tuple[str, FrozenTrial]]:
        """Per key, the trial that stands for it: the lowest-numbered completed or diverged one, else the latest
        error (a retried run that raised again replaces the older error)."""
        chosen: dict[str, tuple[str, FrozenTrial]] = {}
        for trial in sorted(trials, key=lambda t: t.number):
            kind, key = self._kind(trial, any_invocation), trial.user_attrs.get("key")
            if kind is not None and key is not None and chosen.get(key, ("error",))[0] in FAILURES:
                chosen[key] = (kind, trial)
        return chosen

    def finished(self, cell: Cell, trials: list[FrozenTrial] | None = None) -> dict[str, Outcome]:
        """The finished points of ``cell`` by key, as this invocation sees them."""
        by_key = self._by_key(self.trials(cell) if trials is None else trials)
        return {key: Outcome(t.params["lr"], t.params["seed"], t.value if kind == "complete" else None,
                             t.params.get("wd")) for key, (kind, t) in by_key.items()}

    def records(self, cells: Iterable[Cell]) -> list[Record]:
        """Every finished run of ``cells``; errors from any invocation are included, so the report shows them."""
        records = []
        for cell in cells:
            for kind, trial in self._by_key(self.trials(cell), any_invocation=True).values():
                raw = trial.user_attrs.get("result")
                records.append(Record(cell, trial.params["lr"], trial.params["seed"], kind,
                                      RunResult.from_dict(raw) if raw else None, trial.user_attrs.get("error"),
                                      trial.number, trial.user_attrs.get("worker", ""),
                                      trial.user_attrs.get("host", ""), trial.params.get("wd")))
        return records

    # ----------------------------------------------------------------------------------------- claiming work
    def _alive(self, trial: FrozenTrial) -> bool:
        attrs = trial.user_attrs
        if attrs.get("host") == self.host and os.name == "posix":
            pid = attrs.get("pid")
            if pid == os.getpid():
                return attrs.get("worker") == self.worker_id
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            except (PermissionError, TypeError):
                pass  # someone else's process, or no pid recorded: fall back to the heartbeat
            else:  # a live worker here is never stale (a long evaluation takes no steps), unless its pid was reused
                started, now = attrs.get("started"), _process_start(pid)
                if now is not None:  # else no /proc (not Linux): the heartbeat tells
                    return now != 0 and (started is None or started == now)
        return time.time() - attrs.get("heartbeat", 0.0) < self.stale_after

    def running_keys(self, cell: Cell, trials: list[FrozenTrial] | None = None) -> set[str]:
        """Keys held by live RUNNING trials; stale ones are marked FAIL on the way (their points run again)."""
        keys = set()
        for trial in self.trials(cell) if trials is None else trials:
            if trial.state != TrialState.RUNNING:
                continue
            if self._alive(trial):
                keys.add(trial.user_attrs.get("key"))
            else:
                self.abandon(self._trial_id(cell, trial.number), "stale")
        return keys

    def _trial_id(self, cell: Cell, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id(cell), number)

    @storage_call("claiming a run")
    def claim(self, cell: Cell, lr: float, seed: int, wd: float | None = None) -> int | None:
        """Create a RUNNING trial for the point; ``None`` if another live or finished trial holds it already."""
        key = point_key(lr, seed, wd)
        params, distributions = {"lr": lr, "seed": seed}, {"lr": LR_DISTRIBUTION, "seed": SEED_DISTRIBUTION}
        if wd is not None:
            params["wd"], distributions["wd"] = wd, WD_DISTRIBUTION
        template = FrozenTrial(
            number=-1, state=TrialState.RUNNING, value=None, datetime_start=None, datetime_complete=None,
            params=params, distributions=distributions,
            user_attrs={"key": key, "host": self.host, "pid": os.getpid(), "started": _process_start(os.getpid()),
                        "worker": self.worker_id, "invocation": self.invocation, "heartbeat": time.time()},
            system_attrs={}, intermediate_values={}, trial_id=-1)
        trial_id = self.storage.create_new_trial(self.study_id(cell), template_trial=template)
        number = self.storage.get_trial_number_from_id(trial_id)
        for trial in self.trials(cell):
            if trial.number == number or trial.user_attrs.get("key") != key:
                continue
            if self._kind(trial) is not None or (trial.state == TrialState.RUNNING and trial.number < number
                                                 and self._alive(trial)):
                self.abandon(trial_id, "duplicate")
                return None
        return trial_id

    # ------------------------------------------------------------------------------- writing a trial's end
    # Each of these is a no-op on a trial that is finished already: another worker judged it stale and took the
    # point over, so this result is dropped rather than crashing the worker.
    @storage_call("recording a heartbeat")
    def heartbeat(self, trial_id: int) -> None:
        try:
            self.storage.set_trial_user_attr(trial_id, "heartbeat", time.time())
        except UpdateFinishedTrialError:
            pass

    @storage_call("recording a finished run")
    def finish(self, trial_id: int, result: RunResult) -> None:
        try:
            self.storage.set_trial_user_attr(trial_id, "result", result.to_dict())
            if result.diverged:
                self.storage.set_trial_state_values(trial_id, TrialState.PRUNED)
            else:
                self.storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [result.final_metric])
        except UpdateFinishedTrialError:
            pass

    @storage_call("recording a failed run")
    def fail(self, trial_id: int, error: str, failure: str = "error") -> None:
        """FAIL with the traceback or reason, as one of ``FAILURES``: finished for every command running now (on any
        machine sharing the storage: ``failed_at`` against their start, so their clocks must agree to within the
        time between commands), retried once by a command started later."""
        try:
            self.storage.set_trial_user_attr(trial_id, "error", error[-4000:])
            self.storage.set_trial_user_attr(trial_id, "failure", failure)
            self.storage.set_trial_user_attr(trial_id, "failed_at", time.time())
            self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            pass

    @storage_call("releasing a run")
    def abandon(self, trial_id: int, reason: str) -> None:
        """FAIL without an ``error``: the point stays open and will be run again."""
        try:
            self.storage.set_trial_user_attr(trial_id, reason, True)
            self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            pass
