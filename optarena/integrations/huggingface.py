"""optarena optimizers in the Hugging Face ``transformers.Trainer``.

Two ways, both by registry name:

* ``Trainer(..., optimizer_cls_and_kwargs=optimizer_cls_and_kwargs("lion", lr=1e-4))``: the Trainer builds the
  optimizer over its own decay groups (``args.weight_decay`` on all but biases and LayerNorm weights) and its
  scheduler from ``args``. ``(optarena.Lion, {"lr": 1e-4})`` written by hand works the same.
* ``Trainer(..., optimizers=create_optimizer_and_scheduler(model, args, "lion", num_training_steps))``: optarena's
  factory (its decay exemptions, wrappers such as ``lookahead=True``) with the scheduler ``args`` describe.

Schedule-free optimizers (``schedulefree_adamw``, ``schedulefree_sgd``): the Trainer itself calls
``optimizer.train()`` in each training step and ``optimizer.eval()`` before evaluating (transformers >= 4.47), but
not before saving: call ``trainer.optimizer.eval()`` before ``trainer.save_model()`` for the averaged weights.
:func:`create_optimizer_and_scheduler` refuses a decaying ``lr_scheduler_type`` for them (use
``"constant_with_warmup"``).

The Trainer reloads ``optimizer.pt`` with ``torch.load(weights_only=True)``; optarena's state is tensors and plain
types, so checkpoints resume.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from transformers import TrainingArguments, get_scheduler

from ..registry import _filter_kwargs, base_optimizer_info, check_arguments, create_optimizer, get_optimizer_info

#: Scheduler types that do not decay: what schedule-free optimizers (OptimizerInfo.schedule "constant") accept.
CONSTANT_SCHEDULES = ("constant", "constant_with_warmup")


def optimizer_cls_and_kwargs(name: str, lr: float | None = None, **kwargs: Any) -> tuple[type[Optimizer],
                                                                                        dict[str, Any]]:
    """``(class, kwargs)`` for ``Trainer(optimizer_cls_and_kwargs=...)``: the registry's class, ``lr`` (``None``:
    its documented default), its fixed arguments and ``kwargs``, checked as :func:`optarena.create_optimizer`
    checks them. Weight decay comes from ``TrainingArguments.weight_decay`` (the Trainer sets it per group).

    Refused: optimizers that route parameters by module (``muon``: the Trainer hands over plain tensors, so the
    embeddings and the head would reach Muon) and schedule-free ones (the Trainer would pair them with its default
    decaying schedule): use :func:`create_optimizer_and_scheduler` for both."""
    info = get_optimizer_info(name)
    if info.group_params is not None or info.schedule == "constant":
        why = ("it routes parameters by module, and the Trainer passes plain tensors" if info.group_params is not None
               else "it is schedule-free, and the Trainer would add its decaying schedule")
        raise ValueError(f"Invalid optimizer: {name!r} through optimizer_cls_and_kwargs ({why}); build it with "
                         "optarena.integrations.huggingface.create_optimizer_and_scheduler and pass "
                         "Trainer(optimizers=...)")
    check_arguments(lr, kwargs)  # as create_optimizer: torch's SGD takes a NaN lr or momentum
    if "weight_decay" in kwargs:
        raise ValueError(f"Invalid weight_decay: {kwargs['weight_decay']!r} here (the Trainer overrides it per "
                         "parameter group); set TrainingArguments(weight_decay=...) instead")
    return info.cls, {"lr": info.default_lr if lr is None else lr, **_filter_kwargs(info, {**info.fixed_kwargs,
                                                                                           **kwargs})}


def create_optimizer_and_scheduler(model: nn.Module, args: TrainingArguments, name: str, num_training_steps: int,
                                   lr: float | None = None, **kwargs: Any) -> tuple[Optimizer, LRScheduler]:
    """``(optimizer, scheduler)`` for ``Trainer(optimizers=...)``: :func:`optarena.create_optimizer` with
    ``args.weight_decay`` (kept off biases and norm weights) and ``lr`` (``None``: ``args.learning_rate``), and
    the scheduler of ``args.lr_scheduler_type`` with ``args``' warm-up over ``num_training_steps``. ``kwargs`` go
    to the factory (optimizer arguments, ``lookahead``, ``accumulate``, ...)."""
    if isinstance(num_training_steps, bool) or not isinstance(num_training_steps, int) or num_training_steps < 1:
        raise ValueError(f"Invalid num_training_steps: {num_training_steps!r} (a positive integer)")
    scheduler_type = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    if base_optimizer_info(name).schedule == "constant" and scheduler_type not in CONSTANT_SCHEDULES:
        raise ValueError(f"Invalid lr_scheduler_type: {scheduler_type!r} for {name!r}, which is schedule-free (it "
                         "averages instead of decaying): set TrainingArguments(lr_scheduler_type="
                         "'constant_with_warmup')")
    optimizer = create_optimizer(model, name, lr=args.learning_rate if lr is None else lr,
                                 weight_decay=args.weight_decay, **kwargs)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer,
                              num_warmup_steps=args.get_warmup_steps(num_training_steps),
                              num_training_steps=num_training_steps,
                              scheduler_specific_kwargs=args.lr_scheduler_kwargs or {})
    return optimizer, scheduler


__all__ = ["create_optimizer_and_scheduler", "optimizer_cls_and_kwargs"]
