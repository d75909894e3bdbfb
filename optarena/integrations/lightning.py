"""optarena optimizers in Lightning: the ``configure_optimizers`` return value from a registry name.

    def configure_optimizers(self):
        return optimizer_config(self, "lion", lr=1e-4, weight_decay=0.1, schedule={100: 1.0, 10_000: 0.1})

Lightning then checkpoints and restores the optimizer and scheduler (``Trainer.fit(ckpt_path=...)``) and
accumulates gradients with ``Trainer(accumulate_grad_batches=N)``; ``accumulate=N`` here uses optarena's
:class:`~optarena.GradientAccumulation` instead (fp32 sums, the update every N-th step) with the same result.

Schedule-free optimizers (``schedulefree_adamw``, ``schedulefree_sgd``) need ``optimizer.train()`` before training
steps and ``optimizer.eval()`` before validating and saving; Lightning calls neither. ``optimizer_config`` adds the
:class:`ScheduleFreeModes` callback to the Trainer for them (or pass ``Trainer(callbacks=[ScheduleFreeModes()])``),
and refuses a decaying ``schedule`` (they want warm-up then a constant lr).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from ..registry import base_optimizer_info, create_optimizer, set_optimizer_mode
from ..schedules import piecewise_linear_lambda
from ..wrappers import GradientAccumulation, chain


class UpdateSteppedLR(LambdaLR):
    """``LambdaLR`` that counts only the ``step()`` calls after which ``accumulation`` updated (``did_update``).

    Lightning steps a scheduler per ``optimizer.step()`` call; its ``frequency`` counts the batch index within each
    epoch, while :class:`~optarena.GradientAccumulation` counts micro-batches across epochs, so a frequency of N
    falls behind whenever an epoch's batch count is not a multiple of N."""

    def __init__(self, optimizer: Optimizer, lr_lambda: Any, accumulation: GradientAccumulation) -> None:
        self._accumulation = None  # LRScheduler.__init__ takes its initial step() through here
        super().__init__(optimizer, lr_lambda)
        self._accumulation = accumulation

    def step(self, epoch: int | None = None) -> None:
        if self._accumulation is None or self._accumulation.did_update:
            super().step(epoch)

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in super().state_dict().items() if k != "_accumulation"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        accumulation = self._accumulation
        super().load_state_dict(state_dict)
        self._accumulation = accumulation


class ScheduleFreeModes(Callback):
    """Switches schedule-free optimizers (any with ``OptimizerInfo.train_eval_modes``) to ``train()`` before each
    training batch and to ``eval()`` at the end of each training epoch (before ``ModelCheckpoint``, which Lightning
    runs last, saves), before validation, testing and prediction, and when training ends (the model then holds the
    averaged weights x). Other optimizers are left alone."""

    @staticmethod
    def _switch(trainer: Any, training: bool) -> None:
        for optimizer in trainer.optimizers:
            set_optimizer_mode(optimizer, training)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._switch(trainer, True)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._switch(trainer, False)

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._switch(trainer, False)

    def on_test_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._switch(trainer, False)

    def on_predict_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._switch(trainer, False)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._switch(trainer, False)


def optimizer_config(model: nn.Module, name: str, lr: float | None = None, weight_decay: float = 0.0, *,
                     schedule: Mapping[int, float] | None = None, **kwargs: Any) -> dict[str, Any]:
    """``{"optimizer": ..., "lr_scheduler": ...}`` for ``LightningModule.configure_optimizers``.

    The optimizer is :func:`optarena.create_optimizer` ``(model, name, lr, weight_decay, **kwargs)`` (decay kept off
    biases and norm weights; ``lookahead``, ``accumulate``, ... wrap it). ``schedule``: ``{step: multiplier}`` for
    :func:`optarena.piecewise_linear`, stepped once per optimizer update (with ``accumulate``: on the ``step()``
    calls that update, see :class:`UpdateSteppedLR`); ``None``: no scheduler. For schedule-free optimizers it must
    not decay, and the :class:`ScheduleFreeModes` callback is added to the model's Trainer (when one is attached).
    """
    info = base_optimizer_info(name)
    # checked first: a list of pairs failed with AttributeError in the schedule-free check below
    lr_lambda = None if schedule is None else piecewise_linear_lambda(schedule, "schedule")
    if info.schedule == "constant" and schedule is not None:
        multipliers = [m for _, m in sorted(schedule.items())]
        if any(later < earlier for earlier, later in zip(multipliers, multipliers[1:])):  # any decrease is a decay
            raise ValueError(f"Invalid schedule: {dict(schedule)!r} ({info.name!r} is schedule-free: warm-up then "
                             "a constant lr, e.g. {100: 1.0}; it averages instead of decaying)")
    optimizer = create_optimizer(model, name, lr=lr, weight_decay=weight_decay, **kwargs)
    config: dict[str, Any] = {"optimizer": optimizer}
    trainer = getattr(model, "_trainer", None)
    if info.train_eval_modes and trainer is not None and not any(isinstance(c, ScheduleFreeModes)
                                                                 for c in trainer.callbacks):
        trainer.callbacks.append(ScheduleFreeModes())
    if schedule is not None:
        accumulation = next((o for o in chain(optimizer) if isinstance(o, GradientAccumulation)), None)
        if accumulation is None:
            scheduler = LambdaLR(optimizer, lr_lambda)  # what piecewise_linear(optimizer, schedule) builds
        else:  # only its updating step() calls count (Lightning's own accumulation: all)
            scheduler = UpdateSteppedLR(optimizer, lr_lambda, accumulation)
        config["lr_scheduler"] = {"scheduler": scheduler, "interval": "step"}
    return config


__all__ = ["ScheduleFreeModes", "UpdateSteppedLR", "optimizer_config"]
