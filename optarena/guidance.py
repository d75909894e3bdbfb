"""Authors' starting points for moving a tuned AdamW (or Adam) configuration to another optimizer.

A translation is a starting point for a sweep, not a tuned value: the arena tunes lr on a log grid around it.
"""

from __future__ import annotations

from typing import Any

from .info import Translation, get_optimizer_info, list_optimizers
from .validation import check_number

SOURCES = ("adamw", "adam")


def translation_for(name: str) -> Translation | None:
    """The published rule that moves a tuned AdamW configuration to ``name`` (its ``OptimizerInfo.translation``)."""
    return get_optimizer_info(name).translation


def translate_hparams(name: str, from_: str = "adamw", *, lr: float, weight_decay: float = 0.0) -> dict[str, Any]:
    """Keyword arguments for ``name`` that start where a tuned AdamW (``from_``) configuration would.

    >>> translate_hparams("lion", from_="adamw", lr=1e-3, weight_decay=0.01)
    {'lr': 0.0002, 'weight_decay': 0.05}

    The result can be passed on: ``create_optimizer(model, "lion", **translate_hparams("lion", lr=..., ...))``.
    Each optimizer's rule and its source are its ``OptimizerInfo.translation`` (see :func:`lr_range` for the range
    worth sweeping).
    """
    if not isinstance(from_, str) or from_.lower() not in SOURCES:
        raise ValueError(f"Invalid from_: {from_!r} (translations start from one of {', '.join(SOURCES)})")
    check_number("lr", lr, low_open=True)  # finite: an inf lr would come back as an inf (or NaN) starting point
    check_number("weight_decay", weight_decay)
    rule = translation_for(name)
    if rule is None:
        known = [n for n in list_optimizers() if translation_for(n) is not None]
        raise ValueError(f"No published rule translates AdamW hyper-parameters to {name!r}; tune its lr from its "
                         f"default {get_optimizer_info(name).default_lr:g} (rules exist for {', '.join(known)})")
    if rule.absolute_lr is not None:
        new_lr = rule.absolute_lr
        new_wd = weight_decay * lr / new_lr
    else:
        new_lr = lr * rule.lr_factor
        new_wd = weight_decay * rule.wd_factor
    return {"lr": _round(new_lr), "weight_decay": _round(new_wd), **dict(rule.extra)}


def lr_range(name: str, adamw_lr: float) -> tuple[float, float]:
    """The authors' range of learning rates for ``name`` given AdamW's, for a sweep."""
    check_number("adamw_lr", adamw_lr, low_open=True)
    rule = translation_for(name)
    if rule is None:
        raise ValueError(f"No published rule gives {name!r} a learning-rate range relative to AdamW's")
    if rule.absolute_lr is not None:
        return (rule.absolute_lr, rule.absolute_lr)
    return (_round(adamw_lr * rule.lr_range[0]), _round(adamw_lr * rule.lr_range[1]))


def _round(x: float) -> float:
    """Drop binary noise (1e-3/5 → 0.0002, not 0.00019999999999999998)."""
    return float(f"{x:.12g}")
