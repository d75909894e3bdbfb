"""optarena optimizers in Lightning: the ``configure_optimizers`` return value from a registry name.

    def configure_optimizers(self):
        return optimizer_config(self, "lion", lr=1e-4, weight_decay=0.1, schedule={100: 1.0, 10_000: 0.1})

Lightning then checkpoints and restores the optimizer and scheduler (``Trainer.fit(ckpt_path=...)``) and
accumulates gradients with ``Trainer(accumulate_grad_batches=N)``; ``accumulate=N`` here uses optarena's
:class:`~optarena.GradientAccumulation` instead (fp32 sums, the update every N-th step) with the same result.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ..registry import create_optimizer
from ..schedules import piecewise_linear


def optimizer_config(model: nn.Module, name: str, lr: float | None = None, weight_decay: float = 0.0, *,
                     schedule: Mapping[int, float] | None = None, **kwargs: Any) -> dict[str, Any]:
    """``{"optimizer": ..., "lr_scheduler": ...}`` for ``LightningModule.configure_optimizers``.

    The optimizer is :func:`optarena.create_optimizer` ``(model, name, lr, weight_decay, **kwargs)`` (decay kept off
    biases and norm weights; ``lookahead``, ``accumulate``, ... wrap it). ``schedule``: ``{step: multiplier}`` for
    :func:`optarena.piecewise_linear`, stepped once per optimizer update (every ``accumulate``-th
    ``step()`` call); ``None``: no scheduler.
    """
    optimizer = create_optimizer(model, name, lr=lr, weight_decay=weight_decay, **kwargs)
    config: dict[str, Any] = {"optimizer": optimizer}
    if schedule is not None:
        # Lightning steps a scheduler per optimizer.step() call; with optarena's accumulation only every N-th call
        # updates, so step the schedule on those (Lightning's own accumulate_grad_batches needs nothing)
        config["lr_scheduler"] = {"scheduler": piecewise_linear(optimizer, schedule), "interval": "step",
                                  "frequency": kwargs.get("accumulate", 1)}
    return config


__all__ = ["optimizer_config"]
