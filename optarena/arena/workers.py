"""The worker processes of a comparison, and the supervisor that keeps the comparison going around them.

Every run happens in a worker process, never in the process the user started: a run that kills its worker (a
signal, the OOM killer, ``os._exit``), or that hangs past the per-run time limit, is recorded as ``crashed`` or
``timed out`` by the supervisor, which starts a new worker, and the comparison goes on. Workers report each run they
start and end through a pipe; a second pipe, which only the supervisor holds open, closes when the supervisor dies
(even by ``kill -9``), and the workers then exit at once. Ctrl-C and SIGTERM (a batch scheduler's kill, ``timeout``)
stop the comparison alike: the runs in progress are recorded as interrupted and left open for the next command.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import torch

from .config import CompareConfig
from .plan import Cell, Point, point_key
from .runner import train_once
from .storage import HEARTBEAT_SECONDS, ArenaStorage
from .storage_urls import StorageError

POLL_SECONDS = 1.0
#: Worker deaths outside any run (a task that fails to import, a worker killed between runs) before the supervisor
#: stops replacing such deaths; deaths during runs are recorded and always replaced.
MAX_IDLE_DEATHS = 3
#: Seconds the supervisor waits, after an interruption, for its workers to record their interrupted runs.
INTERRUPT_GRACE_SECONDS = 10.0


class WorkersLost(RuntimeError):
    """The worker processes ended before the comparison was complete (they kept dying outside any run)."""


class TaskChanged(RuntimeError):
    """A worker process loaded a task whose definition differs from the one its command loaded (its file was edited
    while the comparison ran): its runs would land in other studies than the ones the command reports."""


class Terminated(KeyboardInterrupt):
    """SIGTERM: stops the comparison as Ctrl-C does (a ``KeyboardInterrupt`` everywhere), and the command exits 143."""


#: ``report(event, trial_id)``: a worker tells its supervisor that it has loaded its tasks ("loaded", no trial), or
#: that it starts ("start") or has recorded ("end") a run.
Report = Callable[[str, int | None], None]
#: Task spec -> (name, fingerprint) as the command loaded it.
Fingerprints = Mapping[str, tuple[str, str]]


def fingerprints(config: CompareConfig) -> dict[str, tuple[str, str]]:
    return {spec: (task.name, task.fingerprint) for spec, task in config.load_tasks().items()}


def _check_unchanged(config: CompareConfig, expected: Fingerprints) -> None:
    """Raise :class:`TaskChanged` naming the tasks this process loaded differently from ``expected``."""
    changed = [f"{expected[spec][0]!r} ({spec})" for spec, (_, mark) in fingerprints(config).items()
               if expected[spec][1] != mark]
    if changed:
        raise TaskChanged(f"the task {', '.join(changed)} changed while the comparison ran: its file was edited "
                          "after the command loaded it (or its function builds a different Task in each process), so "
                          "a worker process that loaded it anew made no run. Finished runs are stored; run the same "
                          "command again to compare the new definition")


def _configure_process(config: CompareConfig) -> None:
    torch.set_num_threads(config.threads_per_worker)
    torch.set_flush_denormal(True)  # subnormal second moments would slow AdamW 4x and fake a speed win


def _run_point(store: ArenaStorage, config: CompareConfig, cell: Cell, trial_id: int, point: Point,
               report: Report) -> None:
    lr, seed, wd = point
    task = config.load_tasks()[cell.task]
    broken: list[StorageError] = []
    stop = threading.Event()

    def beat() -> None:  # a thread, not the training loop: a long evaluation takes no steps but is alive
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                store.heartbeat(trial_id)
            except StorageError as err:
                broken.append(err)
                return

    def heartbeat() -> None:  # called by the run after each step: a storage that broke stops it there
        if broken:
            raise broken[0]

    report("start", trial_id)
    beating = threading.Thread(target=beat, name="optarena-heartbeat", daemon=True)
    beating.start()
    try:
        result = train_once(task, cell.optimizer, lr, seed, cell.batch_size, device=config.device,
                            heartbeat=heartbeat, weight_decay=wd, out=config.out)
    except Exception:  # the task's own code failed: record it, do not retry it forever
        store.fail(trial_id, traceback.format_exc())
    except SystemExit as exit_:  # the task's code asked the process to end: this run is over, the others are not
        store.fail(trial_id, f"{traceback.format_exc()}the task's code called sys.exit({exit_.code!r})", "crashed")
    except KeyboardInterrupt:  # Ctrl-C: leave the point open for the next run
        store.abandon(trial_id, "interrupted")
        raise
    except BaseException:  # CancelledError, GeneratorExit, a test framework's outcome: the task's code, too
        store.fail(trial_id, traceback.format_exc())
    else:
        store.finish(trial_id, result)
    finally:
        stop.set()
        beating.join()
    report("end", trial_id)


def work(config: CompareConfig, report: Report = lambda event, trial_id: None,
         expected: Fingerprints | None = None) -> None:
    """Run points until every cell is complete; safe to run in many processes and on many machines at once.
    ``expected``: the tasks as the command loaded them; a task this process loads differently raises
    :class:`TaskChanged` before any run."""
    _configure_process(config)
    store = config.open_storage()
    cells = config.cells()  # loads the tasks anew: the file may have changed since the command read it
    if expected is not None:
        _check_unchanged(config, expected)
    report("loaded", None)
    while True:
        progressed = waiting = False
        for cell in cells:
            while True:
                trials = store.trials(cell)
                plan = config.plan(cell, store.finished(cell, trials))
                if plan.complete:
                    break
                running = store.running_keys(cell, trials)
                todo = [p for p in plan.missing if point_key(*p) not in running]
                if not todo:  # the rest is running elsewhere; come back to this cell later
                    waiting = True
                    break
                trial_id = store.claim(cell, *todo[0])
                if trial_id is not None:
                    _run_point(store, config, cell, trial_id, todo[0], report)
                    progressed = True
        if not waiting:
            return
        if not progressed:
            time.sleep(POLL_SECONDS)


def describe_exit(code: int | None) -> str:
    """A worker's end in words: the signal that killed it or its exit code."""
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown"
        return f"the worker process was killed by signal {-code} ({name})"
    return f"the worker process exited with code {code}"


def _exit_with_parent(lifeline: Connection) -> None:
    """In a worker: end the process as soon as the supervisor's end of ``lifeline`` closes (it never writes)."""
    def watch() -> None:
        try:
            lifeline.recv()
        except (EOFError, OSError):
            pass
        os._exit(70)  # the supervisor is gone: nobody would record this worker's results as its invocation's

    threading.Thread(target=watch, name="optarena-lifeline", daemon=True).start()


def _interrupt_once(signum: int, frame: Any) -> None:
    """SIGINT or SIGTERM in a worker: the first interrupts; later ones are ignored, so that the supervisor passing on
    an interruption the worker got from the terminal (or a scheduler's group kill) too cannot cut short the recording
    of the interrupted run."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


def _worker_main(config: CompareConfig, expected: Fingerprints, environ: dict[str, str], status: Connection,
                 lifeline: Connection) -> None:
    _exit_with_parent(lifeline)
    signal.signal(signal.SIGINT, _interrupt_once)
    signal.signal(signal.SIGTERM, _interrupt_once)
    os.environ.clear()  # the supervisor's environment now (the fork server was started with an older one)
    os.environ.update(environ)
    try:
        work(config, report=lambda event, trial_id: status.send((event, trial_id)), expected=expected)
    except BaseException as err:
        # ending anyway: an interruption the supervisor passes on now (after another worker's changed task, say)
        # must not cut the message short with a traceback
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if isinstance(err, KeyboardInterrupt):
            status.send(("interrupted", isinstance(err, Terminated)))
        elif isinstance(err, TaskChanged):
            status.send(("changed", str(err)))
        elif isinstance(err, StorageError):  # nothing more can be recorded: the supervisor stops with this message
            status.send(("storage", str(err)))
        else:  # outside any run (a task that fails to load here): the supervisor names it
            status.send(("failed", traceback.format_exception_only(type(err), err)[-1].strip()))
        sys.exit(1)


@dataclass
class _Worker:
    process: Any
    status: Connection
    lifeline: Connection
    born: float
    """When it was started (monotonic): it must have loaded its tasks within the run timeout."""
    loaded: bool = False
    trial: int | None = None
    started: float = 0.0
    error: str | None = None
    """What ended the worker outside any run, as it reported it."""

    def drain(self) -> None:
        """Read the worker's messages: the run it started or ended; an interruption or a storage failure, which
        end the comparison, are raised here."""
        while self.status.poll():
            try:
                event, value = self.status.recv()
            except (EOFError, OSError):
                return
            if event == "loaded":
                self.loaded = True
            elif event == "start":
                self.trial, self.started = value, time.monotonic()
            elif event == "end":
                self.trial = None
            elif event == "failed":
                self.error = value
            elif event == "interrupted":
                raise Terminated if value else KeyboardInterrupt
            elif event == "storage":
                raise StorageError(value)
            elif event == "changed":
                raise TaskChanged(value)


@dataclass
class Supervision:
    """What the supervisor saw: runs it recorded as crashed or timed out, and workers lost between runs."""

    crashed: int = 0
    timed_out: int = 0
    idle_deaths: int = 0
    last_error: str | None = None
    """How the last worker that died outside a run ended: its error, or its exit."""


def _context() -> Any:
    """Fork server: workers start in milliseconds from a process that has imported optarena once, and without the
    threads torch may have started in the supervisor (which make a plain fork unsafe)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["optarena.arena.workers", "optarena.arena.forkserver"])
    return context


def _start(context: Any, config: CompareConfig, expected: Fingerprints) -> _Worker:
    status_reader, status_writer = context.Pipe(duplex=False)
    lifeline_reader, lifeline_writer = context.Pipe(duplex=False)
    process = context.Process(target=_worker_main, daemon=True, name="optarena-worker",
                              args=(config, expected, dict(os.environ), status_writer, lifeline_reader))
    process.start()
    status_writer.close()  # the worker holds these ends now: EOF on status means it is gone
    lifeline_reader.close()
    return _Worker(process, status_reader, lifeline_writer, time.monotonic())


def supervise(config: CompareConfig, store: ArenaStorage, workers: int, refresh: Callable[[], None]) -> Supervision:
    """Run ``workers`` worker processes until the comparison is complete, replacing any that die or hang."""
    context = _context()
    seen = Supervision()
    expected = fingerprints(config)
    pool = [_start(context, config, expected) for _ in range(workers)]
    try:
        while pool:
            multiprocessing.connection.wait([w.status for w in pool] + [w.process.sentinel for w in pool],
                                            timeout=POLL_SECONDS)
            for worker in list(pool):
                worker.drain()
                timed_out = (config.run_timeout and worker.trial is not None
                             and time.monotonic() - worker.started > config.run_timeout)
                # a worker waiting for runs held elsewhere has loaded: only one stuck before that is hung
                hung = config.run_timeout and not worker.loaded and time.monotonic() - worker.born > config.run_timeout
                if hung and worker.process.is_alive():
                    worker.process.kill()
                    worker.process.join()
                    seen.idle_deaths += 1
                    seen.last_error = (f"the worker process hung loading the tasks (no run started within the "
                                       f"per-run limit of {config.run_timeout:g} s, --run-timeout) and was stopped")
                elif timed_out:
                    worker.process.kill()
                    worker.process.join()
                    store.fail(worker.trial, f"the run took longer than the per-run limit of {config.run_timeout:g} s "
                                             "(--run-timeout) and its worker was stopped", "timed out")
                    seen.timed_out += 1
                elif worker.process.is_alive():
                    continue
                else:
                    worker.process.join()
                    worker.drain()  # messages sent just before it ended
                    if worker.trial is not None:  # whatever its exit code (os._exit(0) too): the run did not end
                        store.fail(worker.trial, f"{describe_exit(worker.process.exitcode)} during this run",
                                   "crashed")
                        seen.crashed += 1
                    elif worker.process.exitcode != 0:
                        seen.idle_deaths += 1
                        seen.last_error = worker.error or describe_exit(worker.process.exitcode)
                pool.remove(worker)
                worker.lifeline.close()
                during_run = timed_out or worker.trial is not None
                if during_run or (worker.process.exitcode != 0 and seen.idle_deaths < MAX_IDLE_DEATHS):
                    pool.append(_start(context, config, expected))  # the rest of the work still needs it
            refresh()
    except (KeyboardInterrupt, TaskChanged) as err:
        # pass the signal on (it may have reached this process alone) and let the workers record their runs in
        # progress as interrupted; after a changed task too, so that none is left running
        passed = signal.SIGTERM if isinstance(err, Terminated) else signal.SIGINT
        for worker in pool:
            if worker.process.is_alive():
                os.kill(worker.process.pid, passed)
        deadline = time.monotonic() + INTERRUPT_GRACE_SECONDS
        for worker in pool:
            worker.process.join(max(0.0, deadline - time.monotonic()))
        raise
    finally:
        for worker in pool:
            if worker.process.is_alive():
                worker.process.kill()
            worker.lifeline.close()
    return seen
