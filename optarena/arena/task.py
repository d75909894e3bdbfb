"""What the arena trains: the :class:`Task` contract, and how a task is found from a name or ``module:function``.

A task owns everything except the optimizer: the model, the data and its order, the loss and the validation metric.
The runner calls ``make_model`` right after seeding torch, Python's ``random`` and NumPy with the run's seed, and hands
``make_batches`` a generator seeded from the same seed, so every optimizer starts from the same weights and sees the
same batches in the same order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..validation import check_number, check_positive_int

BUDGETS = ("tiny", "quick", "full")
"""``tiny`` exists for tests and smoke runs; ``quick`` is the default suite; ``full`` is the longer one."""

#: Words of a metric's name that say its direction beyond doubt, and words that say nothing of it (a split, an
#: average, ultralytics' "metrics/...(B)"). A name with any other word (``acc_std``, ``loss_improvement``,
#: ``val_map_l1``) or turned around by a leading ``-`` or ``1-`` says no direction.
HIGHER_IS_BETTER_WORDS = frozenset({"accuracy", "acc", "auc", "auroc", "f1", "map", "bleu", "rouge", "precision",
                                   "recall", "iou", "psnr", "ssim"})
LOWER_IS_BETTER_WORDS = frozenset({"loss", "error", "err", "mse", "mae", "rmse", "nll", "perplexity", "ppl", "wer",
                                  "cer"})
_NEUTRAL_WORDS = frozenset({"", "val", "valid", "validation", "eval", "test", "train", "metrics", "b", "top", "mean",
                           "avg", "macro", "micro", "weighted", "squared", "absolute", "root", "epoch", "step",
                           "score"})


def metric_direction(metric: str) -> bool | None:
    """Whether ``metric``'s name says higher is better (True), lower (False), or nothing sure (None):
    ``val_accuracy``, ``mAP50-95`` and ``top1_acc`` are higher-is-better; ``val_loss``, ``val_mse`` lower."""
    if re.match(r"\s*(\d+\s*)?[-/]", metric):  # -val_loss, 1-accuracy, 100-accuracy, 1/loss
        return None
    known = HIGHER_IS_BETTER_WORDS | LOWER_IS_BETTER_WORDS | _NEUTRAL_WORDS
    words = set()
    for token in re.findall(r"[a-z0-9]+", metric.lower()):  # a word as it is (f1) or without its digits (map50, top5)
        word = next((w for w in (token, token.rstrip("0123456789")) if w in known), None)
        if word is None:  # acc_std, loss_improvement: a word that may turn the name around
            return None
        words.add(word)
    higher, lower = bool(words & HIGHER_IS_BETTER_WORDS), bool(words & LOWER_IS_BETTER_WORDS)
    return higher if higher != lower else None


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
        higher_is_better: direction of ``metric``; a name that says its direction (``val_accuracy``, ``val_loss``:
            see :func:`metric_direction`) must agree, or the lr of the worst result would be chosen.
        target: the metric value that counts as "solved", for steps- and seconds-to-target (``None``: none).
        steps: optimizer steps per run.
        batch_size: default batch size.
        batch_sizes: extra batch sizes to sweep (the batch-size claims); empty for none.
        batched: ``False`` where the batch size changes nothing (no data: the 2-D test functions' batches are
            dummies); such a task runs once, at ``batch_size``, whatever ``--batch-sizes`` says.
        train_examples: how many training examples ``make_batches`` draws from, where they are finite: a larger
            batch is all of them, so ``--batch-sizes`` stops there (``None``: data drawn without end).
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
    #: False for a task without data: a sweep over batch sizes would repeat one run (and "batch 16" would be shown
    #: for a run that has no batches), so ``CompareConfig.batch_sizes_for`` passes it by.
    batched: bool = True
    #: A batch above it would repeat the full-batch run under another label ("batch 1024" on 480 examples).
    train_examples: int | None = None
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
        # ValueErrors all (a loader names them as the task's): higher_is_better="False" is truthy and would rank
        # every run the wrong way round; metric=None would label the report with nothing
        if not isinstance(self.metric, str) or not self.metric.strip():
            raise ValueError(f"Invalid metric of task {self.name!r}: {self.metric!r} (a non-empty name, e.g. "
                             "'val_accuracy')")
        for flag in ("higher_is_better", "batched"):
            value = getattr(self, flag)
            if type(value).__name__ not in ("bool", "bool_"):  # NumPy's bool (from a config, say) is one too
                raise ValueError(f"Invalid {flag} of task {self.name!r}: {value!r} (True or False)")
            setattr(self, flag, bool(value))
        named = metric_direction(self.metric)
        if named is not None and named != self.higher_is_better:  # the lr would be chosen for the worst result
            raise ValueError(f"Invalid higher_is_better of task {self.name!r}: {self.higher_is_better} for metric "
                             f"{self.metric!r}, whose name says {'higher' if named else 'lower'} is better (set "
                             f"higher_is_better={named}; --higher-is-better on a workload)")
        if isinstance(self.batch_sizes, (str, bytes)) or not isinstance(self.batch_sizes, Iterable):
            raise ValueError(f"Invalid batch_sizes of task {self.name!r}: {self.batch_sizes!r} (a tuple of positive "
                             "integers, e.g. (16, 64, 256); () for none)")
        self.batch_sizes = tuple(self.batch_sizes)
        if self.train_examples is not None:
            check_positive_int(f"train_examples of task {self.name!r}", self.train_examples)
        for bs in (self.batch_size, *self.batch_sizes):
            check_positive_int(f"batch size of task {self.name!r}", bs)
            if self.train_examples is not None and bs > self.train_examples:
                raise ValueError(f"Invalid batch size of task {self.name!r}: {bs!r} (more than its "
                                 f"{self.train_examples} training examples)")
        if not self.batched and self.batch_sizes:
            raise ValueError(f"Invalid batch_sizes of task {self.name!r}: {self.batch_sizes!r} (the task is not "
                             "batched: every batch size would repeat one run)")
        if self.eval_every is None:
            self.eval_every = max(1, self.steps // 20)
        check_positive_int(f"eval_every of task {self.name!r}", self.eval_every)
        check_number(f"weight_decay of task {self.name!r}", self.weight_decay)
        if self.target is not None:
            check_number(f"target of task {self.name!r}", self.target, low=-math.inf)

    @property
    def all_batch_sizes(self) -> tuple[int, ...]:
        return tuple(sorted({self.batch_size, *self.batch_sizes}))


# What a task's own functions return, checked where the run first uses it: otherwise every run failed with torch's
# words ("grad can be implicitly created only for scalar outputs", "'NoneType' object has no attribute 'to'").
def checked_model(task: Task, model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"Task {task.name!r}: make_model() must return an nn.Module, got {type(model).__name__}")
    return model


def check_loss(task: Task, loss: Any) -> None:
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        got = (f"a tensor of shape {tuple(loss.shape)} (reduce it, e.g. with .mean())" if isinstance(loss, Tensor)
               else type(loss).__name__)
        raise TypeError(f"Task {task.name!r}: loss(model, batch) must return a scalar tensor, got {got}")
    if not loss.requires_grad:
        raise TypeError(f"Task {task.name!r}: loss(model, batch) returned a tensor that does not depend on the "
                        "model's parameters (computed under torch.no_grad() or detached)")


def metric_value(task: Task, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):  # float() of a multi-element tensor raises RuntimeError
        got = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, Tensor) else repr(value)[:80]
        raise TypeError(f"Task {task.name!r}: evaluate(model) must return a number, got {got}") from None
