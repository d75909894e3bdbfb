"""AdaX — Li et al., "AdaX: Adaptive Gradient Descent with Exponential Long Term Memory" (arXiv 2004.09740)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..info import OptimizerInfo, Translation, register_optimizer
from ..validation import EPS_RANGE, FLOAT32_MAX, check_betas, check_choice, check_number
from . import ops
from .base import OptarenaOptimizer, ParamsT
from .ops import Scalar
from .step import step_counter, zeros_state


def adax_new_weight(t: Scalar, beta2: Scalar) -> Scalar:
    """Weight of g² in the bias-corrected second moment at step t: ``β2 / ((1 + β2)^t − 1)``.

    AdaX's raw moment ``v ← (1 + β2)·v + β2·g²`` grows like ``(1 + β2)^t`` and overflows float32 near t ≈ 9e5;
    its corrected value ``v̂ = v/((1 + β2)^t − 1)`` obeys ``v̂ ← (1 − w)·v̂ + w·g²`` with this ``w``. Written with
    ``exp(−x)`` (x = t·log1p(β2)) it never overflows: at t = 1 it is exactly 1, for huge t it underflows to 0.
    """
    x = t * ops.scalar_fn(beta2, torch.log1p, math.log1p)
    return beta2 * ops.scalar_fn(-x, torch.exp, math.exp) / -ops.scalar_fn(-x, torch.expm1, math.expm1)


def adax_update(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor], *,
                steps: list[Scalar], lr: Scalar, beta1: Scalar, beta2: Scalar, eps: float, weight_decay: Scalar,
                decoupled_weight_decay: bool) -> None:
    """The AdaX rule on lists of tensors, with ``exp_avg_sqs`` holding the bias-corrected ``v̂``::

        g ← g + wd·θ (L2)   or   θ ← θ·(1 − lr·wd) (decoupled)
        m ← β1·m + (1 − β1)·g;   v̂ ← (1 − w_t)·v̂ + w_t·g²;   θ ← θ − lr·m/(sqrt(v̂) + eps)
    """
    if ops.is_nonzero(weight_decay):
        if decoupled_weight_decay:
            ops.mul_(params, 1 - lr * weight_decay)
        else:
            grads = ops.add_scaled(grads, params, weight_decay)
    ops.lerp_(exp_avgs, grads, 1 - beta1)
    weights = [adax_new_weight(t, beta2) for t in steps]
    keeps, weights = ops.hoisted([1 - w for w in weights], weights)
    ops.mul_(exp_avg_sqs, keeps)
    ops.addcmul_(exp_avg_sqs, grads, grads, weights)
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    ops.add_(denoms, eps)
    ops.addcdiv_(params, exp_avgs, denoms, -lr)


class AdaX(OptarenaOptimizer):
    """AdaX: Adam with an exponentially *growing* long-term memory of squared gradients; 8 bytes/param fp32.

    Overflow-safe: the bias-corrected second moment is stored directly, so it stays finite for any step count
    (tested at t = 1e7 and beyond), where the official code's raw moment overflows float32 near t ≈ 9e5.

    ``eps`` is added to the *corrected* ``sqrt(v̂)`` (as in Adam and the paper's algorithm box). The official
    code adds it to the uncorrected ``sqrt(v)``, which equals an eps of ``eps/sqrt((1 + β2)^t − 1)`` here: an
    eps that shrinks to 0 as t grows, and 0/0 for a parameter whose gradient is always 0.

    Args:
        params: parameters or parameter groups.
        lr: learning rate; the official code uses 1.5e-3 with L2 decay 5e-4 (AdaX) and 5e-3 with decoupled decay
            5e-2 (AdaX-W, the authors' recommendation).
        betas: ``(β1, β2)``; β2 > 0 is the growth rate of the long-term memory (default 1e-4).
        eps: added to ``sqrt(v̂)`` (a normal float32, ~1.2e-38 to 3.4e38: with 0, a zero gradient divides 0 by
            0). The official code's default is 1e-12 on the raw ``sqrt(v)``, an eps of 1e-10 on ``sqrt(v̂)`` at
            t = 1 shrinking to ~8e-13 at t = 1e4: 1e-8 here is Adam's. lr and weight_decay up to float32's
            largest, ~3.4e38.
        weight_decay: L2 penalty added to the gradient, or decoupled decay with ``decoupled_weight_decay``.
        decoupled_weight_decay: AdaX-W: ``θ ← θ·(1 − lr·wd)`` instead of L2.
        maximize, foreach, fused, state_dtype, stochastic_rounding, skip_nonfinite: as :class:`optarena.Lion`.
    """

    def __init__(self, params: ParamsT, lr: float = 1.5e-3, betas: tuple[float, float] = (0.9, 1e-4),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, decoupled_weight_decay: bool = False,
                 maximize: bool = False, foreach: bool | None = None, fused: bool | None = None,
                 state_dtype: torch.dtype | None = None, stochastic_rounding: bool = False,
                 skip_nonfinite: bool = False) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize, foreach=foreach,
                        fused=fused, state_dtype=state_dtype, stochastic_rounding=stochastic_rounding,
                        skip_nonfinite=skip_nonfinite)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_number("lr", group["lr"], high=FLOAT32_MAX)
        check_betas(group["betas"], 2)
        check_number("betas[1]", group["betas"][1], low=0.0, low_open=True, high=1.0, high_open=True)
        check_number("eps", group["eps"], low=EPS_RANGE[0], high=EPS_RANGE[1])  # 0 would make 0/0 where g = 0
        check_number("weight_decay", group["weight_decay"], high=FLOAT32_MAX)
        check_choice("decoupled_weight_decay", group["decoupled_weight_decay"], (False, True))

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        return {"step": step_counter(), "exp_avg": zeros_state(p, group=group),
                "exp_avg_sq": zeros_state(p, group=group, nonnegative=True)}

    squared_gradient_span = 1.0  # g² into v

    @classmethod
    def _update(cls, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                states: list[dict[str, Tensor]]) -> None:
        beta1, beta2 = group["betas"]
        adax_update(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                    steps=ops.step_values(states), lr=group["lr"], beta1=beta1, beta2=beta2,
                    eps=group["eps"], weight_decay=group["weight_decay"],
                    decoupled_weight_decay=group["decoupled_weight_decay"])


register_optimizer(OptimizerInfo(
    "adax", AdaX, 1.5e-3, num_betas=2, eps="number", state_bytes_per_param=8, elementwise=True, int8_state=True,
    step_bytes=28, step_bytes_bf16_state=20, fused_chunks=(16, 4, 1),
    description="exponential long-term memory of g² (Li et al. 2020)",
    translation=Translation(
        5.0, (1.0, 5.0), 0.5,
        "Li et al.'s CIFAR configs: AdamW lr 1e-3, wd 0.1 against AdaX-W lr 5e-3, wd 0.05 (decoupled decay).",
        extra=(("decoupled_weight_decay", True),))))
