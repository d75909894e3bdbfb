"""Where tasks come from: the built-in ones by name, a user's from ``package.module:function`` or
``path/to/file.py:function`` (which imports, and so runs, that file's code)."""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import importlib
import importlib.util
import inspect
import os
import random
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from .runner import global_generators_restored
from .task import BUDGETS, Task
from .tasks import (
    make_char_lm,
    make_digits_cnn,
    make_digits_mlp,
    make_modular_add,
    make_noisy_quadratic,
    make_rastrigin,
    make_rosenbrock,
)

BUILTIN_TASKS: dict[str, Callable[..., Task]] = {
    "noisy_quadratic": make_noisy_quadratic,
    "rosenbrock": make_rosenbrock,
    "rastrigin": make_rastrigin,
    "digits_mlp": make_digits_mlp,
    "digits_cnn": make_digits_cnn,
    "char_lm": make_char_lm,
    "modular_add": make_modular_add,
}
"""Task name → factory ``(budget="quick") -> Task``, in the order the suite runs them."""

#: Built-in workloads that train through a framework (see :mod:`optarena.arena.workloads`): loaded by name like
#: the tasks above, and in the default suite only of the budgets listed.
WORKLOAD_TASKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "yolo_shapes": ("optarena.arena.workloads.shapes:make_yolo_shapes", ("full",)),
}


def default_tasks(budget: str) -> tuple[str, ...]:
    """The suite a comparison runs when no task is named: every built-in task, and the workloads of ``budget``."""
    return tuple(BUILTIN_TASKS) + tuple(name for name, (_, budgets) in WORKLOAD_TASKS.items() if budget in budgets
                                        and importlib.util.find_spec("ultralytics") is not None)


def _import_factory(spec: str) -> Callable[..., Task]:
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ValueError(f"Invalid task: {spec!r} (expected a built-in name or 'package.module:function')")
    try:
        if module_name.endswith(".py") or os.sep in module_name:
            path = Path(module_name).resolve()
            if not path.is_file():
                raise FileNotFoundError(path)
            if path.suffix != ".py":  # importlib finds no loader for another suffix
                raise ImportError(f"{str(path)!r} is not a Python file (.py)")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:  # as `python -m` does: a module next to the user is importable
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_name)
    except (ImportError, FileNotFoundError) as err:
        raise ValueError(f"Invalid task: {spec!r} (cannot import {module_name!r}: {err})") from None
    except Exception as err:  # the file's own code: a SyntaxError, or anything it raises at import
        raise ValueError(f"Invalid task: {spec!r} (importing {module_name!r} failed: {_exception_line(err)})") \
            from err
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"Invalid task: {spec!r} ({module_name!r} has no callable {attr!r})")
    return factory


def _exception_line(err: BaseException) -> str:
    """``err`` in one line, as a traceback's last line says it (with the file and line of a SyntaxError)."""
    if isinstance(err, SyntaxError):
        return f"{type(err).__name__}: {err.msg} ({err.filename}, line {err.lineno})"
    return traceback.format_exception_only(type(err), err)[-1].strip()


def call_factory(spec: str, factory: Callable[..., Any], budget: str, returns: str = "optarena.arena.Task",
                 keep_value_errors: bool = False) -> Any:
    """What ``factory(budget=...)`` (the keyword if it takes it) or ``factory()`` returns; its failures (a factory
    that needs arguments, a Task built wrong, an error in its code) named as the spec's, in one line.
    ``keep_value_errors``: a ValueError passes as it is (a Task's own checks name the field)."""
    try:
        signature: inspect.Signature | None = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin without a signature: call it as it is
        signature = None
    kwargs = {"budget": budget} if signature is not None and "budget" in signature.parameters else {}
    try:
        return factory(**kwargs)
    except Exception as err:
        if keep_value_errors and isinstance(err, ValueError):  # "Invalid steps of task 'x': 0"
            raise
        # the hint only where the call's arguments were the trouble: a TypeError from inside the function (a Task
        # given loss=None, say) is about something else
        hint = (f"; the function takes no arguments, or only budget, and returns {returns}"
                if isinstance(err, TypeError) and not _binds(signature, kwargs) else "")
        raise ValueError(f"Invalid task: {spec!r} (calling it failed: {_exception_line(err)}{hint})") from err


def _binds(signature: inspect.Signature | None, kwargs: dict[str, Any]) -> bool:
    """Whether a function of ``signature`` can be called with ``kwargs`` (unknown: no)."""
    if signature is None:
        return False
    try:
        signature.bind(**kwargs)
    except TypeError:
        return False
    return True


@contextlib.contextmanager
def _fixed_global_generators(seed: int = 0) -> Iterator[None]:
    """Torch's (CPU), Python's and NumPy's global generators seeded with ``seed``, and given back their states after:
    data a task draws from them at load (a synthetic data set, a random split) is then the same in every worker
    process and on every machine (Python's ``random`` is reseeded from the OS in each forked worker), and the
    caller's random state does not move."""
    try:
        import numpy
    except ImportError:
        numpy = None
    with global_generators_restored([]):
        torch.random.default_generator.manual_seed(seed)
        random.seed(seed)
        if numpy is not None:
            numpy.random.seed(seed)
        yield


def load_task(spec: str, budget: str = "quick") -> Task:
    """A built-in task by name (``"digits_mlp"``) or a user task from ``"package.module:function"`` or
    ``"path/to/file.py:function"``. The function may take a ``budget`` keyword; it must return a :class:`Task`.
    It runs with torch's, Python's and NumPy's global generators seeded (see :func:`_fixed_global_generators`)."""
    if budget not in BUDGETS:
        raise ValueError(f"Invalid budget: {budget!r} (expected one of {', '.join(BUDGETS)})")
    with _fixed_global_generators():
        return _load_task(spec, budget)


def _load_task(spec: str, budget: str) -> Task:
    from .workloads import is_workload, load_workload

    if is_workload(spec):  # ultralytics:..., lightning:..., hf:...: fingerprinted by the workload itself
        return load_workload(spec, budget)
    if spec in WORKLOAD_TASKS:
        factory = _import_factory(WORKLOAD_TASKS[spec][0])
    elif ":" not in spec:
        if spec not in BUILTIN_TASKS:
            known = [*BUILTIN_TASKS, *WORKLOAD_TASKS]
            close = difflib.get_close_matches(spec, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"Invalid task: {spec!r} (built-in tasks: {', '.join(known)}{hint}; "
                             "a user task is 'package.module:function'; a workload 'ultralytics:MODEL.yaml:DATA.yaml', "
                             "'lightning:module:Class[:DataModule]' or 'hf:module:function')")
        factory = BUILTIN_TASKS[spec]
    else:
        factory = _import_factory(spec)
    task = call_factory(spec, factory, budget, keep_value_errors=True)
    if not isinstance(task, Task):
        raise ValueError(f"Invalid task: {spec!r} returned {type(task).__name__}, not optarena.arena.Task")
    task.fingerprint = fingerprint(task, factory)
    return task


#: The fields of a Task that shape its runs: a change to any of them (or to the factory's source file) is a new task.
FINGERPRINTED = ("name", "metric", "higher_is_better", "target", "steps", "batch_size", "batch_sizes",
                 "weight_decay", "eval_every")


def fingerprint(task: Task, factory: Callable[..., Task]) -> str:
    """A short hash of ``task``'s definition: the fields that shape a run and the source of the factory's file
    (its data and model code live there; what it imports from elsewhere is not covered)."""
    digest = hashlib.sha256(repr([getattr(task, name) for name in FINGERPRINTED]).encode())
    try:
        digest.update(Path(inspect.getsourcefile(factory) or "").read_bytes())
    except (OSError, TypeError):  # a factory without a source file (built in C, made at run time)
        digest.update(getattr(factory, "__qualname__", repr(factory)).encode())
    return digest.hexdigest()[:12]


@functools.cache
def load_tasks(specs: tuple[str, ...], budget: str) -> dict[str, Task]:
    """``load_task`` for each spec, once per process (every worker process loads its own); two tasks may not share
    a name, which keys their studies. ``load_tasks.cache_clear()`` forgets them."""
    tasks = {spec: load_task(spec, budget) for spec in specs}
    names: dict[str, str] = {}
    for spec, task in tasks.items():
        if names.setdefault(task.name, spec) != spec:
            raise ValueError(f"Invalid tasks: {names[task.name]!r} and {spec!r} are both named {task.name!r}")
    return tasks
