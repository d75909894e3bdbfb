"""Optimizer configurations shared by the convention tests: every optarena optimizer, plus its notable modes."""

from __future__ import annotations

import optarena

CASES: dict[str, tuple[type, dict]] = {
    "lion": (optarena.Lion, dict(lr=1e-3, weight_decay=0.1)),
    "rlion-arctan": (optarena.RLion, dict(lr=1e-3, weight_decay=0.1)),
    "rlion-tanh": (optarena.RLion, dict(lr=1e-3, alpha=30.0, bound="tanh")),
    "adan": (optarena.Adan, dict(lr=1e-2, weight_decay=0.02)),
    "adan-clip-noprox": (optarena.Adan, dict(lr=1e-2, weight_decay=0.02, no_prox=True, max_grad_norm=0.5)),
    "adax": (optarena.AdaX, dict(lr=1e-2, weight_decay=1e-3)),
    "adaxw": (optarena.AdaX, dict(lr=1e-2, weight_decay=0.05, decoupled_weight_decay=True)),
    "adafactor": (optarena.Adafactor, dict(weight_decay=0.1)),
    "adafactor-momentum": (optarena.Adafactor, dict(lr=1e-3, beta1=0.9, relative_step=False, scale_parameter=False)),
    "ademamix": (optarena.AdEMAMix, dict(lr=1e-3, weight_decay=0.1)),
    "ademamix-warmup": (optarena.AdEMAMix, dict(lr=1e-3, alpha=8.0, alpha_warmup=4, beta3_warmup=6)),
    "amos": (optarena.Amos, dict(lr=1e-2)),
    "amos-momentum-eta": (optarena.Amos, dict(lr=3e-2, momentum=0.9, eta=0.1, weight_decay=0.01)),
}


def build(case: str, params, **overrides):
    cls, kwargs = CASES[case]
    return cls(params, **{**kwargs, **overrides})


def calls_of(opt) -> list:
    """The kernel calls of a fused optimizer's plans."""
    return [call for plan in opt._fused_plans.values() for bucket in plan.buckets for call in bucket.calls]


def kernels_of(opt) -> list:
    """The compiled kernels a fused optimizer's plans call."""
    return [call.kernel for call in calls_of(opt)]
