"""The arena: a fair, resumable side-by-side comparison of optimizers on built-in or user tasks.

``optarena compare`` is the command; :func:`run_compare` with a :class:`CompareConfig` is the same from Python, and a
user task is any function returning a :class:`Task`.
"""

from .compare import CompareConfig, run_compare
from .runner import RunResult, train_once
from .task import Task, load_task

__all__ = ["CompareConfig", "RunResult", "Task", "load_task", "run_compare", "train_once"]
