"""Authors' starting points for moving a tuned AdamW (or Adam) configuration to another optimizer.

A translation is a starting point for a sweep, not a tuned value: the arena tunes lr on a log grid around it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .registry import get_optimizer_info


@dataclass(frozen=True)
class Translation:
    """How an optimizer's hyper-parameters relate to AdamW's, with the authors' reasoning."""

    lr_factor: float
    #: The authors' range for the lr ratio to AdamW's, for a sweep.
    lr_range: tuple[float, float]
    wd_factor: float
    note: str
    extra: tuple[tuple[str, Any], ...] = ()
    #: If set, lr is this absolute value and wd is chosen so that the per-step decay lr·wd is AdamW's.
    absolute_lr: float | None = None


TRANSLATIONS: dict[str, Translation] = {
    "adamw": Translation(1.0, (1.0, 1.0), 1.0, "identity"),
    "lion": Translation(
        1 / 5, (1 / 10, 1 / 3), 5.0,
        "Chen et al. 2023: lr 3–10x smaller than AdamW's and weight decay 3–10x larger, keeping lr·wd (the "
        "decay's strength); betas (0.95, 0.98) for language models; prefers larger batches."),
    "rlion": Translation(
        3.0, (1.0, 10.0), 1 / 3,
        "Rong et al. 2025 claim RLion tolerates AdamW-sized learning rates without warm-up; optarena's digits "
        "sweep (alpha=300) found a plateau from 3x to 30x AdamW's default lr. Weight decay keeps lr·wd."),
    "adan": Translation(
        5.0, (1.0, 10.0), 1 / 5,
        "Xie et al.: Adan tolerates a peak lr 5–10x larger than Adam/AdamW; weight decay (proximal, 0.02 in the "
        "authors' runs) scaled to keep lr·wd."),
    "adax": Translation(
        5.0, (1.0, 5.0), 0.5,
        "Li et al.'s CIFAR configs: AdamW lr 1e-3, wd 0.1 against AdaX-W lr 5e-3, wd 0.05 (decoupled decay).",
        extra=(("decoupled_weight_decay", True),)),
    "adafactor": Translation(
        1.0, (1.0, 1.0), 1.0,
        "Shazeer & Stern: relative step sizes, lr is the cap 1e-2 of ρ_t = min(lr, 1/sqrt(t)) scaled by RMS(θ), "
        "not comparable to AdamW's lr; weight decay set so that lr·wd equals AdamW's.",
        absolute_lr=1e-2),
}
TRANSLATIONS["adam"] = TRANSLATIONS["adamw"]
SOURCES = ("adamw", "adam")


def translate_hparams(name: str, from_: str = "adamw", *, lr: float, weight_decay: float = 0.0) -> dict[str, Any]:
    """Keyword arguments for ``name`` that start where a tuned AdamW (``from_``) configuration would.

    >>> translate_hparams("lion", from_="adamw", lr=1e-3, weight_decay=0.01)
    {'lr': 0.0002, 'weight_decay': 0.05}

    The result can be passed on: ``create_optimizer(model, "lion", **translate_hparams("lion", lr=..., ...))``.
    See :data:`TRANSLATIONS` (and :func:`lr_range`) for each rule's source and the range worth sweeping.
    """
    target = get_optimizer_info(name).name
    if from_.lower() not in SOURCES:
        raise ValueError(f"Invalid from_: {from_!r} (translations start from one of {', '.join(SOURCES)})")
    if target not in TRANSLATIONS:
        raise ValueError(f"No published rule translates AdamW hyper-parameters to {name!r}; tune its lr from its "
                         f"default {get_optimizer_info(name).default_lr:g} (rules exist for "
                         f"{', '.join(sorted(TRANSLATIONS))})")
    if not lr > 0:
        raise ValueError(f"Invalid lr: {lr!r} (must be > 0)")
    if not weight_decay >= 0:
        raise ValueError(f"Invalid weight_decay: {weight_decay!r} (must be >= 0)")
    rule = TRANSLATIONS[target]
    if rule.absolute_lr is not None:
        new_lr = rule.absolute_lr
        new_wd = weight_decay * lr / new_lr
    else:
        new_lr = lr * rule.lr_factor
        new_wd = weight_decay * rule.wd_factor
    return {"lr": _round(new_lr), "weight_decay": _round(new_wd), **dict(rule.extra)}


def lr_range(name: str, adamw_lr: float) -> tuple[float, float]:
    """The authors' range of learning rates for ``name`` given AdamW's, for a sweep."""
    rule = TRANSLATIONS[get_optimizer_info(name).name]
    if rule.absolute_lr is not None:
        return (rule.absolute_lr, rule.absolute_lr)
    return (_round(adamw_lr * rule.lr_range[0]), _round(adamw_lr * rule.lr_range[1]))


def _round(x: float) -> float:
    """Drop binary noise (1e-3/5 → 0.0002, not 0.00019999999999999998)."""
    return float(f"{x:.12g}")
