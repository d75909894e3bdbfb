"""Adan — Xie et al., "Adan: Adaptive Nesterov Momentum Algorithm" (arXiv 2208.06677, TPAMI 2024)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..info import OptimizerInfo, Translation, register_optimizer
from ..validation import EPS_RANGE, FLOAT32_MAX, check_betas, check_choice, check_number
from . import ops
from .base import OptarenaOptimizer, ParamsT
from .ops import Scalar
from .step import math_dtype, step_counter, zeros_state


def adan_update(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_diffs: list[Tensor],
                exp_avg_sqs: list[Tensor], prev_grads: list[Tensor], *, steps: list[Scalar], lr: Scalar,
                beta1: Scalar, beta2: Scalar, beta3: Scalar, eps: float, weight_decay: Scalar, no_prox: bool) -> None:
    """The Adan rule on lists of tensors; ``steps`` holds each tensor's step count t (already advanced)::

        diff ← g − g_prev  (0 at t = 1);   m ← β1·m + (1−β1)·g;   d ← β2·d + (1−β2)·diff
        n ← β3·n + (1−β3)·(g + β2·diff)²;  denom ← sqrt(n)/sqrt(1−β3^t) + eps
        step ← lr/(1−β1^t)·m/denom + lr·β2/(1−β2^t)·d/denom
        θ ← (θ − step)/(1 + lr·wd)   or, with no_prox,   θ ← θ·(1 − lr·wd) − step;      g_prev ← g

    1/denom is taken once and multiplied, as is 1/(1 + lr·wd): one division per element instead of four (divisions
    bound the compiled 8-bit step: benchmarks/NOTES.md, "One division per element").
    """
    ops.copy_at_first_step_(prev_grads, grads, steps)
    diffs = torch._foreach_sub(grads, prev_grads)
    ops.lerp_(exp_avgs, grads, 1 - beta1)
    ops.lerp_(exp_avg_diffs, diffs, 1 - beta2)
    nesterov_grads = diffs  # reuse the buffers: diffs are no longer needed
    ops.mul_(nesterov_grads, beta2)
    torch._foreach_add_(nesterov_grads, grads)
    ops.mul_(exp_avg_sqs, beta3)
    ops.addcmul_(exp_avg_sqs, nesterov_grads, nesterov_grads, 1 - beta3)

    inv_sqrt_bias3, step1, step2 = ops.hoisted(
        [ops.rsqrt(1 - beta3**t) for t in steps],
        [-lr / (1 - beta1**t) for t in steps], [-lr * beta2 / (1 - beta2**t) for t in steps])
    inv_denoms = torch._foreach_sqrt(exp_avg_sqs)  # the denominators, inverted in place below
    ops.mul_(inv_denoms, inv_sqrt_bias3)
    ops.add_(inv_denoms, eps)
    torch._foreach_reciprocal_(inv_denoms)
    if no_prox and ops.is_nonzero(weight_decay):
        ops.mul_(params, 1 - lr * weight_decay)
    ops.addcmul_(params, exp_avgs, inv_denoms, step1)
    ops.addcmul_(params, exp_avg_diffs, inv_denoms, step2)
    if not no_prox and ops.is_nonzero(weight_decay):
        ops.mul_(params, 1 / (1 + lr * weight_decay))
    ops.copy_(prev_grads, grads)


class Adan(OptarenaOptimizer):
    """Adan: Nesterov-style momentum on gradients and gradient differences; four buffers (16 bytes/param fp32).

    Betas follow the official code: ``(0.98, 0.92, 0.99)`` is the paper's ``(0.02, 0.08, 0.01)``.

    Args:
        params: parameters or parameter groups.
        lr: learning rate. The authors report tolerating a peak lr 5–10× larger than Adam/AdamW.
        betas: ``(β1, β2, β3)`` for the gradient, gradient-difference and squared-term EMAs.
        eps: added to the bias-corrected ``sqrt(n)`` (a normal float32, ~1.2e-38 to 3.4e38: with 0, a zero
            gradient divides 0 by 0). lr and weight_decay up to float32's largest, ~3.4e38.
        weight_decay: the authors use 0.02. Applied as a proximal step ``θ/(1 + lr·wd)`` by default, as
            decoupled decay ``θ·(1 − lr·wd)`` with ``no_prox=True``.
        no_prox: use AdamW-style decoupled decay instead of the proximal form.
        max_grad_norm: if > 0, every gradient is scaled by ``min(1, max_grad_norm/(‖g‖ + eps))`` where ``‖g‖``
            is the global norm over all parameter groups (as the official code; ``p.grad`` is not modified).
        maximize, foreach, fused, state_dtype, stochastic_rounding, skip_nonfinite: as :class:`optarena.Lion`.

    Step counts are kept per parameter (the official code keeps one per group); they differ only for parameters
    that miss gradients on some steps. :meth:`restart` resets all state (the official ``restart_opt``).
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple[float, float, float] = (0.98, 0.92, 0.99),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, no_prox: bool = False, max_grad_norm: float = 0.0,
                 maximize: bool = False, foreach: bool | None = None, fused: bool | None = None,
                 state_dtype: torch.dtype | None = None, stochastic_rounding: bool = False,
                 skip_nonfinite: bool = False) -> None:
        # max_grad_norm is global (one norm over every group), so it is checked once here, not per group.
        check_number("max_grad_norm", max_grad_norm)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, no_prox=no_prox,
                        max_grad_norm=max_grad_norm, maximize=maximize, foreach=foreach,
                        fused=fused, state_dtype=state_dtype, stochastic_rounding=stochastic_rounding,
                        skip_nonfinite=skip_nonfinite)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_number("lr", group["lr"], high=FLOAT32_MAX)
        check_betas(group["betas"], 3)
        check_number("eps", group["eps"], low=EPS_RANGE[0], high=EPS_RANGE[1])  # 0 would make 0/0 where g = 0
        check_number("weight_decay", group["weight_decay"], high=FLOAT32_MAX)
        check_choice("no_prox", group["no_prox"], (False, True))
        if group["max_grad_norm"] != self.defaults["max_grad_norm"]:
            raise ValueError(f"Invalid max_grad_norm in a param group: {group['max_grad_norm']!r} (the clipping norm "
                             "is global over all groups; set it once in the Adan constructor)")

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        return {"step": step_counter(), "exp_avg": zeros_state(p, group=group),
                "exp_avg_diff": zeros_state(p, group=group),
                "exp_avg_sq": zeros_state(p, group=group, nonnegative=True), "prev_grad": zeros_state(p, group=group)}

    @torch.no_grad()
    def restart(self) -> None:
        """Forget all moments and step counts: the next step is a first step again."""
        self.state.clear()

    def _grad_scale(self, params: list[Tensor]) -> Tensor | None:
        max_norm = self.defaults["max_grad_norm"]
        if max_norm <= 0 or not params:
            return None
        norms = torch._foreach_norm([p.grad.to(math_dtype(p)) for p in params])
        # a DTensor's norm (FSDP2) is partial, each rank's shard: full_tensor() reduces it to the global norm
        norms = [n.full_tensor() if hasattr(n, "full_tensor") else n for n in norms]
        device = params[0].device  # params may lie on several devices
        total = torch.linalg.vector_norm(torch.stack([n.to(device, torch.float64) for n in norms]))  # no host sync
        return (max_norm / (total + self.defaults["eps"])).clamp(max=1.0)

    squared_gradient_span = 3.0  # (g + β2·(g − g_prev))², up to (3·max|g|)², into n

    @classmethod
    def _update(cls, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                states: list[dict[str, Tensor]]) -> None:
        beta1, beta2, beta3 = group["betas"]
        adan_update(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_diff"] for s in states],
                    [s["exp_avg_sq"] for s in states], [s["prev_grad"] for s in states],
                    steps=ops.step_values(states), lr=group["lr"], beta1=beta1, beta2=beta2,
                    beta3=beta3, eps=group["eps"], weight_decay=group["weight_decay"], no_prox=group["no_prox"])


register_optimizer(OptimizerInfo(
    "adan", Adan, 1e-3, num_betas=3, eps="number", state_bytes_per_param=16, elementwise=True, int8_state=True,
    step_bytes=44, step_bytes_bf16_state=28, fused_chunks=(16, 4, 1),
    description="adaptive Nesterov momentum (Xie et al. 2022)",
    translation=Translation(
        5.0, (1.0, 10.0), 1 / 5,
        "Xie et al.: Adan tolerates a peak lr 5–10x larger than Adam/AdamW; weight decay (proximal, 0.02 in the "
        "authors' runs) scaled to keep lr·wd.")))
