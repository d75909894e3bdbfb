"""What the arena trains: the :class:`Task` contract, and how a task is found from a name or ``module:function``.

A task owns everything except the optimizer: the model, the data and its order, the loss and the validation metric.
The runner calls ``make_model`` right after seeding torch, Python's ``random`` and NumPy with the run's seed, and hands
``make_batches`` a generator seeded from the same seed, so every optimizer starts from the same weights and sees the
same batches in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..validation import check_number, check_positive_int

BUDGETS = ("tiny", "quick", "full")
"""``tiny`` exists for tests and smoke runs; ``quick`` is the default suite; ``full`` is the longer one."""


@dataclass
class Task:
    """One workload. Built-in tasks live in :mod:`optarena.arena.tasks`; user tasks return one of these.

    Attributes:
        name: short identifier, used in study names, file names and tables.
        make_model: builds the model; called after ``torch.manual_seed(seed)`` (and ``random.seed``,
            ``numpy.random.seed``), so it must draw its initial weights from those global generators (torch's is
            the default for ``nn`` layers).
        make_batches: ``(generator, batch_size) -> iterator`` of training batches, endless or at least
            ``steps`` long. All randomness in the data order must come from ``generator``.
        loss: ``(model, batch) -> scalar tensor`` for one training step.
        evaluate: ``model -> float``, the validation metric (called under ``torch.no_grad()`` in eval mode).
        metric: the metric's name, e.g. ``"val_accuracy"``.
        higher_is_better: direction of ``metric``.
        target: the metric value that counts as "solved", for steps- and seconds-to-target (``None``: none).
        steps: optimizer steps per run.
        batch_size: default batch size.
        batch_sizes: extra batch sizes to sweep (the batch-size claims); empty for none.
        weight_decay: decoupled weight decay at AdamW scale; other optimizers get their published translation.
        eval_every: evaluate this often (default: about 20 points per run).
        surface: for 2-D problems, ``(x, y) -> z`` on tensors, drawn under the optimizer trajectories.
        position: for 2-D problems, ``model -> (x, y)``; the runner records it after every step.
        description: one line for ``optarena tasks`` and the report.
        run: a workload that trains through its own framework (ultralytics, Lightning, the Hugging Face Trainer;
            see :mod:`optarena.arena.workloads`): ``(optimizer, lr, seed, batch_size, *, device, heartbeat, out)
            -> RunResult`` replaces the runner's loop, and ``make_model``/``make_batches``/``loss``/``evaluate``
            are not called.
        schedule: for a workload with its framework's own lr schedule, what that schedule is.
        fingerprint: set when the task is loaded by name or ``module:function`` (see ``load_task``).

    The runner moves the model and each batch (tensors, or lists/tuples/dicts of them) to the comparison's device;
    ``loss`` and ``evaluate`` get the model there, so fixed data they hold must follow it (``x.to(device)``).
    """

    name: str
    make_model: Callable[[], nn.Module]
    make_batches: Callable[[torch.Generator, int], Iterator[Any]]
    loss: Callable[[nn.Module, Any], Tensor]
    evaluate: Callable[[nn.Module], float]
    metric: str = "val_loss"
    higher_is_better: bool = False
    target: float | None = None
    steps: int = 200
    batch_size: int = 64
    batch_sizes: tuple[int, ...] = ()
    weight_decay: float = 0.0
    eval_every: int | None = None
    surface: Callable[[Tensor, Tensor], Tensor] | None = None
    position: Callable[[nn.Module], tuple[float, float]] | None = None
    description: str = ""
    run: Callable[..., Any] | None = None
    #: How a workload schedules the lr where it does not use the arena's (said in the report's protocol).
    schedule: str = ""
    #: The framework a workload trains through ("ultralytics", "lightning", "hf"); "" for the arena's own loop.
    framework: str = ""
    #: What fixes a workload's batch size where its run cannot take the arena's (a Lightning DataModule builds its
    #: own loaders); "" where ``--batch-sizes`` applies.
    batch_size_owner: str = ""
    #: Set by the loader (``load_task``): a hash of the definition (the fields above that shape a run, and the
    #: source file of the factory). Runs are stored under it, so a task changed between invocations runs anew.
    fingerprint: str = field(default="", init=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in "/\\: "):
            raise ValueError(f"Invalid task name: {self.name!r} (non-empty, no '/', '\\', ':' or spaces)")
        for attr in ("make_model", "make_batches", "loss", "evaluate"):
            if not callable(getattr(self, attr)):
                raise TypeError(f"Task {self.name!r}: {attr} must be callable, got {getattr(self, attr)!r}")
        check_positive_int(f"steps of task {self.name!r}", self.steps)
        for bs in (self.batch_size, *self.batch_sizes):
            check_positive_int(f"batch size of task {self.name!r}", bs)
        if self.eval_every is None:
            self.eval_every = max(1, self.steps // 20)
        check_positive_int(f"eval_every of task {self.name!r}", self.eval_every)
        check_number(f"weight_decay of task {self.name!r}", self.weight_decay)
        if self.target is not None:
            check_number(f"target of task {self.name!r}", self.target, low=-math.inf)

    @property
    def all_batch_sizes(self) -> tuple[int, ...]:
        return tuple(sorted({self.batch_size, *self.batch_sizes}))
