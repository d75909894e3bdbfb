"""What the arena gives each optimizer for a run, whatever trains it (its own loop or a workload's framework): the
weight decay, the arguments that take the run's length, the learning-rate schedule, and the refusal of an optimizer
only one framework builds."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ..guidance import translate_hparams
from ..registry import base_optimizer_info, get_optimizer_info


def arena_weight_decay(optimizer: str, task_weight_decay: float) -> dict[str, Any]:
    """Weight-decay kwargs for ``optimizer`` given a task's AdamW-scale decay: the published translation where one
    exists (Lion's decay is 5× AdamW's because its lr is smaller), otherwise the same value."""
    base = base_optimizer_info(optimizer)
    if task_weight_decay == 0 or base.translation is None:
        return {"weight_decay": task_weight_decay}
    translated = translate_hparams(base.name, lr=get_optimizer_info("adamw").default_lr, weight_decay=task_weight_decay)
    translated.pop("lr")
    return translated


def run_length_kwargs(optimizer_name: str, steps: int) -> dict[str, int]:
    """The constructor arguments that take the run's length (AdEMAMix's warm-ups), set to ``steps``."""
    return {name: steps for name in base_optimizer_info(optimizer_name).run_length_kwargs}


def lr_multiplier(optimizer_name: str, steps: int) -> Callable[[int], float]:
    """The arena's schedule: cosine decay from the peak lr to 0, no warm-up; for optimizers designed for a constant
    lr (``OptimizerInfo.schedule == "constant"``: schedule-free) a linear warm-up over 5% of the steps, then
    constant."""
    if base_optimizer_info(optimizer_name).schedule == "constant":
        warmup = max(1, steps // 20)
        return lambda step: min(1.0, (step + 1) / warmup)
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))


def ultralytics_only(optimizer_name: str) -> None:
    """Refuse, naming the argument, an optimizer only ultralytics' trainer builds (``musgd``) outside it."""
    if base_optimizer_info(optimizer_name).source == "ultralytics":
        raise ValueError(f"Invalid optimizer: {optimizer_name!r} is built by ultralytics' trainer only; compare it on "
                         "an ultralytics workload (yolo_shapes or ultralytics:MODEL.yaml:DATA.yaml)")
