"""RLion — Rong et al., "A refined lion optimizer for deep learning", Scientific Reports 15 (2025)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..info import OptimizerInfo, Translation, register_optimizer
from ..validation import FLOAT32_MAX, check_choice, check_number
from . import ops
from .base import OptarenaOptimizer, ParamsT
from .lion import Direction, Lion

BOUNDS = ("arctan", "tanh")


def bounded_direction(alpha: float, bound: str) -> Direction:
    """``c ↦ (2/π)·arctan(α·c)`` or ``c ↦ tanh(α·c)``: continuous, odd, bounded by 1, → sign(c) as α → ∞."""

    def direction(c: list[Tensor]) -> list[Tensor]:
        ops.mul_(c, alpha)
        if bound == "arctan":
            ops.atan_(c)
            ops.mul_(c, 2 / math.pi)
        else:
            ops.tanh_(c)
        return c

    return direction


class RLion(Lion):
    """RLion: Lion with ``sign`` replaced by a continuous bounded map of ``α·c``.

    The paper's abstract says only "a non-linear continuous bounded function that maps the product of momentum
    and a scaling factor"; it names neither the function nor the scale. We follow the independent
    implementations that cite it: ``u = (2/π)·arctan(α·c)`` (``bound="arctan"``, default) or ``tanh(α·c)``,
    with Lion's decoupled decay and momentum, and no bias correction of ``c``.

    Unlike sign, the map is not scale-invariant: where ``α·|c| ≪ 1`` the step is SGD-with-momentum-like
    (``lr·(2α/π)·c``), where ``α·|c| ≫ 1`` it is Lion's. The defaults ``alpha=300`` and ``lr=3e-3`` come from a
    sweep on the digits demo (README, "Choosing RLion's α"; median |g| there is 9e-4): α ≤ 10 barely trains at
    Lion-sized lr, α ≥ 3000 behaves like Lion (and collapses like Lion at lr 3e-2), and α = 300 has the widest
    plateau (≥ 94 % accuracy for lr 3e-3…3e-2). The best α scales inversely with the model's gradient
    magnitude, so on another model tune it together with lr; the default is evidence from one small task.

    Args:
        params, lr, betas, weight_decay, maximize, foreach, fused, state_dtype, stochastic_rounding,
            skip_nonfinite: as :class:`Lion`.
        alpha: the scale α applied to the momentum before the bounded map (> 0, up to float32's largest).
        bound: ``"arctan"`` or ``"tanh"``.
    """

    def __init__(self, params: ParamsT, lr: float = 3e-3, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, *, alpha: float = 300.0, bound: str = "arctan", maximize: bool = False,
                 foreach: bool | None = None, fused: bool | None = None,
                 state_dtype: torch.dtype | None = None, stochastic_rounding: bool = False,
                 skip_nonfinite: bool = False) -> None:
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, alpha=alpha, bound=bound,
                        maximize=maximize, foreach=foreach,
                        fused=fused, state_dtype=state_dtype, stochastic_rounding=stochastic_rounding,
                        skip_nonfinite=skip_nonfinite)
        OptarenaOptimizer.__init__(self, params, defaults)  # Lion's would fix the defaults without α and bound

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        # beyond float32, α is inf in the math: 0·inf = NaN wherever the momentum c is 0 (a gradient entry never
        # nonzero yet), every path
        check_number("alpha", group["alpha"], low=0.0, low_open=True, high=FLOAT32_MAX)
        check_choice("bound", group["bound"], BOUNDS)

    @classmethod
    def _direction(cls, group: dict[str, Any]) -> Direction:
        return bounded_direction(group["alpha"], group["bound"])


register_optimizer(OptimizerInfo(
    "rlion", RLion, 3e-3, num_betas=2, state_bytes_per_param=4, elementwise=True, int8_state=True, stress=True,
    step_bytes=20, step_bytes_bf16_state=16, fused_packed_below=1024,
    description="Lion with a bounded arctan/tanh map (Rong et al. 2025)",
    translation=Translation(
        3.0, (1.0, 10.0), 1 / 3,
        "Rong et al. 2025 claim RLion tolerates AdamW-sized learning rates without warm-up; optarena's digits "
        "sweep (alpha=300) found a plateau from 3x to 30x AdamW's default lr. Weight decay keeps lr·wd.")))
