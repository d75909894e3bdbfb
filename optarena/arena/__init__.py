"""The arena: a fair, resumable side-by-side comparison of optimizers on built-in or user tasks.

``optarena compare`` is the command; :func:`run_compare` with a :class:`CompareConfig` is the same from Python, and a
user task is any function returning a :class:`Task`. Importing this package (for :class:`Task`) does not import
Optuna, matplotlib or rich; the names that need them load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .task import Task

_LAZY = {"CompareConfig": ".config", "run_compare": ".compare", "RunResult": ".runner", "train_once": ".runner",
         "load_task": ".catalog"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CompareConfig", "RunResult", "Task", "load_task", "run_compare", "train_once"]
