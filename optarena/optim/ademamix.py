"""AdEMAMix — Pagliardini, Ablin & Grangier 2024, "The AdEMAMix Optimizer: Better, Faster, Older" (arXiv 2409.03137)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..info import OptimizerInfo, Translation, register_optimizer
from ..validation import EPS_RANGE, FLOAT32_MAX, check_betas, check_number, check_positive_int
from . import ops
from .base import OptarenaOptimizer, ParamsT
from .ops import Scalar
from .step import step_counter, zeros_state


def alpha_at(t: Scalar, alpha: float, warmup: int | None) -> Scalar:
    """The paper's linear warm-up of α: ``α_t = min(t·α/T_α, α)`` (α itself without warm-up)."""
    if warmup is None:
        return alpha
    return alpha * ops.smin(t / warmup, 1.0)


def beta3_at(t: Scalar, beta1: Scalar, beta3: Scalar, warmup: int | None) -> Scalar:
    """The paper's β3 warm-up, linear in the half-life 1/ln(1/β) from β1's to β3's::

        β3_t = min(exp(ln β1·ln β3 / ((1 − t/T)·ln β3 + (t/T)·ln β1)), β3)

    (a linear warm-up of β3 itself would give the slow EMA a half-life of a few steps until very late). Past T the
    expression exceeds β3 and the min keeps β3, so no branch on t is needed (t may be a tensor).
    """
    if warmup is None:
        return beta3
    log1, log3 = (ops.scalar_fn(b, torch.log, math.log) for b in (beta1, beta3))
    a = t / warmup
    return ops.smin(ops.scalar_fn(log1 * log3 / ((1 - a) * log3 + a * log1), torch.exp, math.exp), beta3)


def ademamix_update(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_slows: list[Tensor],
                    exp_avg_sqs: list[Tensor], *, steps: list[Scalar], lr: Scalar, beta1: Scalar, beta2: Scalar,
                    beta3: Scalar, alpha: float, alpha_warmup: int | None, beta3_warmup: int | None, eps: float,
                    weight_decay: Scalar) -> None:
    """The AdEMAMix rule on lists of tensors; ``steps`` holds each tensor's step count t (already advanced)::

        θ ← θ·(1 − lr·wd);  m1 ← β1·m1 + (1−β1)·g;  m2 ← β3_t·m2 + (1−β3_t)·g;  ν ← β2·ν + (1−β2)·g²
        θ ← θ − lr·(m1/(1−β1^t) + α_t·m2)/(sqrt(ν)/sqrt(1−β2^t) + eps)

    The slow EMA m2 is not bias-corrected (the paper: its bias is what the α and β3 warm-ups tame). sqrt(ν) is
    multiplied by 1/sqrt(1−β2^t), not divided by its root: one division per element (benchmarks/NOTES.md, "One
    division per element").
    """
    if ops.is_nonzero(weight_decay):
        ops.mul_(params, 1 - lr * weight_decay)
    # m̂1 + α·m2 = (m1 + α·(1 − β1^t)·m2)/(1 − β1^t): one per-tensor factor per list, no per-tensor alpha= argument
    bias1 = [1 - beta1**t for t in steps]
    slow_weights, mixes, inv_sqrt_bias2, step_sizes = ops.hoisted(
        [1 - beta3_at(t, beta1, beta3, beta3_warmup) for t in steps],
        [alpha_at(t, alpha, alpha_warmup) * b for t, b in zip(steps, bias1)],
        [ops.rsqrt(1 - beta2**t) for t in steps],
        [-lr / b for b in bias1])
    ops.lerp_(exp_avgs, grads, 1 - beta1)
    ops.lerp_(exp_avg_slows, grads, slow_weights)
    ops.mul_(exp_avg_sqs, beta2)
    ops.addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    numerators = ops.scaled(exp_avg_slows, mixes)
    torch._foreach_add_(numerators, exp_avgs)
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    ops.mul_(denoms, inv_sqrt_bias2)
    ops.add_(denoms, eps)
    ops.addcdiv_(params, numerators, denoms, step_sizes)


class AdEMAMix(OptarenaOptimizer):
    """AdEMAMix: Adam whose numerator mixes in a second, slow EMA of the gradient (β3 ≈ 0.9999, weight α), so that
    gradients thousands of steps old still count; three buffers (12 bytes/param fp32).

    Args:
        params: parameters or parameter groups.
        lr: learning rate; the paper uses AdamW's.
        betas: ``(β1, β2, β3)``: the fast EMA, the squared-gradient EMA and the slow EMA (the order of the paper's
            code and pytorch-optimizer). The paper: (0.9, 0.999, 0.9999); β3 0.9999 for runs of ≥ 100k steps,
            smaller (0.999) for short ones.
        alpha: weight of the slow EMA; the paper uses 5–8 (4–10 work).
        alpha_warmup: ``T_α``: α rises linearly from 0 over this many steps (``None``: no warm-up). The paper sets
            ``T_α = T_β3`` = the whole run; with a large α and β3 a run without warm-ups can diverge early.
        beta3_warmup: ``T_β3``: β3 rises from β1 to β3 over this many steps, linearly in the EMA's half-life
            (``None``: no warm-up).
        eps: added to the bias-corrected ``sqrt(ν)`` (a normal float32, ~1.2e-38 to 3.4e38). lr, alpha and
            weight_decay up to float32's largest, ~3.4e38.
        weight_decay: decoupled decay ``θ ← θ·(1 − lr·wd)``, as AdamW (the paper's code).
        maximize, foreach, fused, state_dtype, stochastic_rounding, skip_nonfinite: as :class:`optarena.Lion`.

    Step counts, and so the warm-ups, are kept per parameter (the paper's code keeps them per parameter too).
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3,
                 betas: tuple[float, float, float] = (0.9, 0.999, 0.9999), alpha: float = 5.0,
                 eps: float = 1e-8, weight_decay: float = 0.0, *, alpha_warmup: int | None = None,
                 beta3_warmup: int | None = None, maximize: bool = False, foreach: bool | None = None,
                 fused: bool | None = None, state_dtype: torch.dtype | None = None,
                 stochastic_rounding: bool = False, skip_nonfinite: bool = False) -> None:
        defaults = dict(lr=lr, betas=betas, alpha=alpha, eps=eps, weight_decay=weight_decay,
                        alpha_warmup=alpha_warmup, beta3_warmup=beta3_warmup, maximize=maximize, foreach=foreach,
                        fused=fused, state_dtype=state_dtype, stochastic_rounding=stochastic_rounding,
                        skip_nonfinite=skip_nonfinite)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_number("lr", group["lr"], high=FLOAT32_MAX)
        check_betas(group["betas"], 3)
        check_number("alpha", group["alpha"], high=FLOAT32_MAX)
        check_number("eps", group["eps"], low=EPS_RANGE[0], high=EPS_RANGE[1])  # 0 would make 0/0 where g = 0
        check_number("weight_decay", group["weight_decay"], high=FLOAT32_MAX)
        for name in ("alpha_warmup", "beta3_warmup"):
            if group[name] is not None:
                check_positive_int(name, group[name])
        if group["beta3_warmup"] is not None:  # the schedule interpolates ln β1 and ln β3
            beta1, _, beta3 = group["betas"]
            if not (beta1 > 0 and beta3 > 0):
                raise ValueError(f"Invalid betas: {tuple(group['betas'])!r} (beta3_warmup needs betas[0] > 0 and "
                                 "betas[2] > 0: β3 is warmed up from β1 in log space)")

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        return {"step": step_counter(), "exp_avg": zeros_state(p, group=group),
                "exp_avg_slow": zeros_state(p, group=group),
                "exp_avg_sq": zeros_state(p, group=group, nonnegative=True)}

    squared_gradient_span = 1.0  # g² into ν

    @classmethod
    def _update(cls, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                states: list[dict[str, Tensor]]) -> None:
        beta1, beta2, beta3 = group["betas"]
        ademamix_update(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_slow"] for s in states],
                        [s["exp_avg_sq"] for s in states], steps=ops.step_values(states), lr=group["lr"],
                        beta1=beta1, beta2=beta2, beta3=beta3, alpha=group["alpha"],
                        alpha_warmup=group["alpha_warmup"], beta3_warmup=group["beta3_warmup"], eps=group["eps"],
                        weight_decay=group["weight_decay"])


register_optimizer(OptimizerInfo(
    "ademamix", AdEMAMix, 1e-3, num_betas=3, eps="number", state_bytes_per_param=12, elementwise=True,
    run_length_kwargs=("alpha_warmup", "beta3_warmup"), int8_state=True,
    # params 8 + grad 4 + three buffers read and written (24, or 12 in bf16)
    step_bytes=36, step_bytes_bf16_state=24, fused_chunks=(16, 4, 1),
    description="Adam with a slow second momentum mixed in (Pagliardini et al. 2024)",
    translation=Translation(
        1.0, (1.0, 1.0), 1.0,
        "Pagliardini et al.: AdEMAMix keeps AdamW's lr, weight decay, β1, β2 and eps; add β3 = 0.9999 and α = 5–8, "
        "with α and β3 warmed up over the whole run (alpha_warmup = beta3_warmup = total steps) to avoid early "
        "instability.")))
