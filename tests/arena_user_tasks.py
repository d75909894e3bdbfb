"""User tasks for the arena tests, loaded the way a user's would be: ``--task tests/arena_user_tasks.py:linear``."""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

import torch
from torch import nn

from optarena.arena import Task

_X = torch.randn(256, 8, generator=torch.Generator().manual_seed(123))
_Y = _X @ torch.linspace(-1, 1, 8) + 0.3


def _batches(generator: torch.Generator, batch_size: int):
    while True:
        for index in torch.randperm(len(_X), generator=generator).split(batch_size):
            yield _X[index], _Y[index]


def _loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x).squeeze(-1), y)


def _val(model: nn.Module) -> float:
    return nn.functional.mse_loss(model(_X).squeeze(-1), _Y).item()


def linear(budget: str = "quick") -> Task:
    """Least squares in 8-D: the 20-line example of a user task."""
    return Task(name="linear", make_model=lambda: nn.Linear(8, 1), make_batches=_batches, loss=_loss, evaluate=_val,
                metric="val_mse", target=0.05, steps=30 if budget == "tiny" else 200, batch_size=32,
                description="linear regression")


def exploding(budget: str = "quick") -> Task:
    """A loss that grows without bound when the step is large: high learning rates diverge."""
    def loss(model: nn.Module, batch) -> torch.Tensor:
        w = model.weight
        return (w ** 2).sum() * 1e4 + (w ** 4).sum() * 1e6
    return Task(name="exploding", make_model=lambda: nn.Linear(4, 1), make_batches=lambda g, b: itertools.repeat(None),
                loss=loss, evaluate=lambda m: float((m.weight ** 2).sum()), steps=20)


def broken(budget: str = "quick") -> Task:
    """The task's own code raises on evaluation after training."""
    def evaluate(model: nn.Module) -> float:
        if model.weight.abs().sum() > 0 and not model.training and _broken_calls():
            raise RuntimeError("user evaluation failed")
        return 0.0
    return Task(name="broken", make_model=lambda: nn.Linear(2, 1), make_batches=lambda g, b: itertools.repeat(None),
                loss=lambda m, b: m.weight.sum(), evaluate=evaluate, steps=4, eval_every=2)


_calls = itertools.count()


def _broken_calls() -> bool:
    return next(_calls) >= 1  # in a fresh process the evaluation before training passes; every later one raises


def misbehaving(budget: str = "quick") -> Task:
    """Like ``linear``, but while building the model of some runs (counted in the file OPTARENA_TEST_COUNTER, which
    also gets each run's process id) the process misbehaves as OPTARENA_TEST_ACTIONS says, e.g. "3:kill,5:exit":
    "kill" (SIGKILL, as the OOM killer would), "int" (SIGINT to the process group, as Ctrl-C; start the command
    in a session of its own), "exit" (sys.exit(3)), "exit0" (os._exit(0)), "cancel" (asyncio.CancelledError, a
    BaseException that is not an Exception) or "hang" (sleeps for an hour).
    OPTARENA_TEST_PACE adds that many seconds to every step, OPTARENA_TEST_CLEANUP that many to an interrupted one.
    With OPTARENA_TEST_EDIT_AFTER=N, a process that loads the task once N runs have started gets one more step, as if
    its file had been edited meanwhile."""
    task = linear(budget)
    task.name = "misbehaving"
    edit_after = os.environ.get("OPTARENA_TEST_EDIT_AFTER")
    if edit_after and len(_read_counter()) >= int(edit_after):
        task.steps += 1
    make_model, loss = task.make_model, task.loss

    def counting_make_model() -> nn.Module:
        with open(os.environ["OPTARENA_TEST_COUNTER"], "a") as f:
            f.write(f"{os.getpid()}\n")
        count = len(_read_counter())
        actions = dict(item.split(":") for item in os.environ.get("OPTARENA_TEST_ACTIONS", "").split(",") if item)
        action = actions.get(str(count))
        if action is not None:
            if action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif action == "int":  # as Ctrl-C at a terminal: the whole process group, the command included
                os.killpg(os.getpgrp(), signal.SIGINT)
            elif action == "exit":
                sys.exit(3)
            elif action == "exit0":
                os._exit(0)
            elif action == "cancel":
                raise asyncio.CancelledError("cancelled in the task's code")
            elif action == "hang":
                time.sleep(3600)
        return make_model()

    def paced_loss(model: nn.Module, batch) -> torch.Tensor:
        try:
            time.sleep(float(os.environ.get("OPTARENA_TEST_PACE", "0")))
        except KeyboardInterrupt:  # a task that cleans up on its way out (a data loader's processes, say)
            time.sleep(float(os.environ.get("OPTARENA_TEST_CLEANUP", "0")))
            raise
        return loss(model, batch)

    task.make_model, task.loss = counting_make_model, paced_loss
    return task


def _read_counter() -> list[str]:
    """The pids OPTARENA_TEST_COUNTER lists, one per run started so far."""
    try:
        with open(os.environ["OPTARENA_TEST_COUNTER"]) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def rendezvous(budget: str = "quick") -> Task:
    """Like ``linear``, but a worker's first run waits (at most 120 s) until a second worker process has started
    one too (pids listed in the file OPTARENA_TEST_RENDEZVOUS), so two workers provably share the comparison."""
    task = linear(budget)
    task.name = "rendezvous"
    make_model = task.make_model

    def waiting_make_model() -> nn.Module:
        path = Path(os.environ["OPTARENA_TEST_RENDEZVOUS"])
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")
        deadline = time.monotonic() + 120
        while len(set(path.read_text().split())) < 2:
            if time.monotonic() > deadline:
                raise TimeoutError("no second worker started a run within 120 s")
            time.sleep(0.05)
        return make_model()

    task.make_model = waiting_make_model
    return task


def renamed_linear(budget: str = "quick") -> Task:
    """A different task that reuses the name ``linear``."""
    task = linear(budget)
    task.steps = 7
    return task


def not_a_task():
    return 42


def nan_gradient(budget: str = "quick") -> Task:
    """A finite loss whose gradient is NaN in one entry (sqrt(w − w) at 0): Lion would freeze that weight silently."""
    def loss(model: nn.Module, batch) -> torch.Tensor:
        w = model.weight
        return (w ** 2).sum() + torch.sqrt(w[0, 0] - w[0, 0])
    return Task(name="nan_gradient", make_model=lambda: nn.Linear(4, 1),
                make_batches=lambda g, b: itertools.repeat(None), loss=loss,
                evaluate=lambda m: float((m.weight ** 2).sum()), steps=10)


def zero_start(budget: str = "quick") -> Task:
    """A loss that is exactly 0 at the first step (the model starts at its first target) and small after."""
    targets = [torch.zeros(3)] + [torch.full((3,), 0.1)] * 1000

    class Point(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(3))

    return Task(name="zero_start", make_model=Point, make_batches=lambda g, b: iter(targets),
                loss=lambda m, target: ((m.w - target) ** 2).sum(), evaluate=lambda m: float(((m.w - 0.1) ** 2).sum()),
                steps=20)


def hostile_names(budget: str = "quick") -> Task:
    """Names and an error text that would be markup in a report: they must appear as text."""
    def evaluate(model: nn.Module) -> float:
        if not model.training and _broken_calls():
            raise RuntimeError("<script>alert('error')</script>")
        return 0.0
    return Task(name="<b>hostile<b>", make_model=lambda: nn.Linear(2, 1),
                make_batches=lambda g, b: itertools.repeat(None), loss=lambda m, b: m.weight.sum(),
                evaluate=evaluate, metric="<svg onload=alert(1)>", steps=4, eval_every=2,
                description="<img src=x onerror=alert(1)>")


def second_linear(budget: str = "quick") -> Task:
    """The same least squares under another name: a second task for the cross-task scores."""
    task = linear(budget)
    task.name = "linear2"
    return task


def loads_in_the_command_only(budget: str = "quick") -> Task:
    """Like ``linear`` in the command, but fails to load in every worker process: workers die outside any run."""
    if multiprocessing.parent_process() is not None:
        raise RuntimeError("this task cannot load in a worker")
    return linear(budget)


def hangs_loading_in_workers(budget: str = "quick") -> Task:
    """Like ``linear`` in the command, but never returns in a worker process (a download or a lock that hangs)."""
    if multiprocessing.parent_process() is not None:
        time.sleep(3600)
    return linear(budget)


def needs_an_argument(size):
    return linear()


def without_a_model(budget: str = "quick") -> Task:
    return Task(name="nomodel", make_model=None, make_batches=_batches, loss=_loss, evaluate=_val)
