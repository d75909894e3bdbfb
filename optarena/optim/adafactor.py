"""Adafactor — Shazeer & Stern 2018, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost"."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..info import OptimizerInfo, Translation, register_optimizer
from ..validation import FLOAT32_MAX, check_choice, check_number
from . import ops
from .base import OptarenaOptimizer, ParamsT
from .ops import Scalar
from .step import step_counter, zeros_state


def relative_step_size(t: Scalar, lr: Scalar, relative_step: bool, warmup_init: bool) -> Scalar:
    """ρ_t: ``min(lr, 1/sqrt(t))`` (also ``≤ 1e-6·t`` with warm-up), or the constant ``lr``."""
    if not relative_step:
        return lr
    rho = ops.smin(lr, 1 / ops.scalar_fn(t, torch.sqrt, math.sqrt))
    return ops.smin(rho, 1e-6 * t) if warmup_init else rho


def floor_of_moments(eps1: float | None, dtype: torch.dtype) -> float:
    """eps1 as the math uses it in ``dtype``: the machine eps for None; otherwise within [sqrt(smallest normal),
    sqrt(largest)], so that eps1², 1/eps1² and 1/eps1 are normal numbers there. Outside, the floor eps1² of V
    underflowed to 0 (HF's eps1 = 1e-30 in float32: rsqrt(0)·0 = NaN wherever a gradient entry was 0) or the
    conversion to ``dtype`` failed deep in the step."""
    info = torch.finfo(dtype)
    return info.eps if eps1 is None else min(max(eps1, math.sqrt(info.tiny)), math.sqrt(info.max))


def adafactor_update(params: list[Tensor], grads: list[Tensor], row_vars: list[Tensor | None],
                     col_vars: list[Tensor | None], variances: list[Tensor | None], exp_avgs: list[Tensor | None],
                     *, steps: list[Scalar], lr: Scalar, beta2_decay: float, eps1: float | None, eps2: float,
                     clip_threshold: float, weight_decay: Scalar, beta1: float | None, relative_step: bool,
                     scale_parameter: bool, warmup_init: bool) -> None:
    """The Adafactor rule on lists of tensors. Second moments are factored over the last two dims of tensors
    with ≥ 2 dims (``row_vars``/``col_vars``), kept whole otherwise (``variances``)::

        β̂ ← 1 − t^beta2_decay;   V ← β̂·V + (1 − β̂)·g²  (factored: row and column means of g²)
        U ← g/sqrt(max(V, eps1²));  Û ← U/max(1, RMS(U)/clip_threshold)
        m ← beta1·m + (1 − beta1)·Û  (if beta1);   θ ← θ·(1 − lr·wd) − α_t·(m or Û)
        α_t = ρ_t·max(eps2, RMS(θ)) with scale_parameter, else ρ_t

    The per-tensor reductions run in a loop; the elementwise work over all tensors uses foreach ops.
    """
    param_rms = ops.tensor_rms(params) if scale_parameter else [1.0] * len(params)
    step_sizes = [relative_step_size(t, lr, relative_step, warmup_init) * (ops.smax(eps2, r) if scale_parameter
                                                                           else 1)
                  for t, r in zip(steps, param_rms)]
    if ops.is_nonzero(weight_decay):
        ops.mul_(params, 1 - lr * weight_decay)

    # second moments, and for factored ones the row and column factors of rsqrt(V̂):
    # rsqrt(max(r_i·c_j/mean(r), tiny²)) = min(rsqrt(r_i/mean(r))·rsqrt(c_j), 1/tiny), so that the rsqrt and
    # divisions run on R + C numbers and the element loop does two products
    tiny = floor_of_moments(eps1, grads[0].dtype)  # the lists share one (math) dtype
    factors = []
    (new_weights,) = ops.hoisted([t**beta2_decay for t in steps])  # 1 − β̂_t
    for grad, row_var, col_var, variance, new_weight in zip(grads, row_vars, col_vars, variances, new_weights):
        if variance is None:
            ops.lerp_([row_var], [ops.row_square_means(grad)], new_weight)
            ops.lerp_([col_var], [ops.column_square_means(grad)], new_weight)
            row_mean = ops.mean_of(row_var.sum(dim=-2, keepdim=True), row_var.size(-2)).clamp_(min=tiny)
            factors += [row_var.div(row_mean).rsqrt_(), col_var.rsqrt()]
        else:
            ops.lerp_([variance], [grad * grad], new_weight)
    factors_left = iter(ops.stored(factors))
    updates = []
    for grad, variance in zip(grads, variances):
        if variance is None:
            scale = (next(factors_left) * next(factors_left)).clamp_(max=1 / tiny)
        else:
            scale = variance.clamp(min=tiny * tiny).rsqrt_()
        updates.append(scale.mul_(grad))

    clip_divisors = [ops.smax(1.0, r / clip_threshold) for r in ops.tensor_rms(updates)]
    if beta1 is not None:
        clip_divisors, steps_down = ops.hoisted(clip_divisors, [-a for a in step_sizes])
        ops.div_(updates, clip_divisors)
        torch._foreach_lerp_(exp_avgs, updates, 1 - beta1)
        updates = ops.scaled(exp_avgs, steps_down)
    else:
        (steps_down,) = ops.hoisted([-a / c for a, c in zip(step_sizes, clip_divisors)])
        ops.mul_(updates, steps_down)
    torch._foreach_add_(params, updates)


class Adafactor(OptarenaOptimizer):
    """Adafactor: factored second moments, relative step sizes and update clipping; for an R×C matrix the state
    is R + C numbers instead of R·C (plus R·C with ``beta1``).

    With ``beta1=None, relative_step=True, scale_parameter=True, warmup_init=False`` (the defaults) this is
    numerically :class:`torch.optim.Adafactor` (``clip_threshold`` is its ``d``). The extra switches follow the
    paper and Hugging Face's ``Adafactor``:

    Args:
        params: parameters or parameter groups.
        lr: with ``relative_step`` the cap of the relative step ``ρ_t = min(lr, 1/sqrt(t))`` (the paper's 1e-2);
            without, the constant step size.
        beta2_decay: ``β̂2_t = 1 − t^beta2_decay`` (−0.8 in the paper); must be ≤ 0.
        eps: ``(eps1, eps2)``: eps1 floors the second moment at eps1² (``None``: the math dtype's machine eps,
            float32's for bf16/fp16 params; an eps1 below ~1.1e-19 in float32 acts as 1.1e-19, so that eps1² is
            a normal float: Hugging Face's 1e-30 is taken); eps2 floors RMS(θ) in the parameter scale.
        clip_threshold: ``d``: updates are scaled down to RMS ≤ d.
        weight_decay: decoupled ``θ ← θ·(1 − lr·wd)`` with the group's ``lr`` (as torch.optim.Adafactor).
        beta1: momentum on the clipped update (``None``: no first moment, the memory-saving default). The EMA is of
            the lr-free update; Hugging Face's folds the step size into it — identical for a constant step.
        relative_step: use ``ρ_t``; ``False`` uses ``lr`` as is.
        scale_parameter: multiply the step by ``max(eps2, RMS(θ))``.
        warmup_init: the paper's warm-up, ``ρ_t = min(lr, 1e-6·t, 1/sqrt(t))``; needs ``relative_step``.
        maximize, foreach, fused, state_dtype, stochastic_rounding, skip_nonfinite: as :class:`optarena.Lion`.
            For Adafactor a gradient entry whose square overflows (above ~1.8e19 in float32) counts as non-finite:
            it would make the factored second moment infinite and the whole tensor's update NaN.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-2, beta2_decay: float = -0.8,
                 eps: tuple[float | None, float] = (None, 1e-3), clip_threshold: float = 1.0,
                 weight_decay: float = 0.0, *, beta1: float | None = None, relative_step: bool = True,
                 scale_parameter: bool = True, warmup_init: bool = False, maximize: bool = False,
                 foreach: bool | None = None, fused: bool | None = None,
                 state_dtype: torch.dtype | None = None, stochastic_rounding: bool = False,
                 skip_nonfinite: bool = False) -> None:
        defaults = dict(lr=lr, beta2_decay=beta2_decay, eps=eps, clip_threshold=clip_threshold,
                        weight_decay=weight_decay, beta1=beta1, relative_step=relative_step,
                        scale_parameter=scale_parameter, warmup_init=warmup_init, maximize=maximize, foreach=foreach,
                        fused=fused, state_dtype=state_dtype, stochastic_rounding=stochastic_rounding,
                        skip_nonfinite=skip_nonfinite)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_number("lr", group["lr"], high=FLOAT32_MAX)  # beyond it, a NaN weight (relative_step=False)
        check_number("beta2_decay", group["beta2_decay"], low=-math.inf, high=0.0)
        eps = group["eps"]
        if not isinstance(eps, (tuple, list)) or len(eps) != 2:
            raise ValueError(f"Invalid eps: {eps!r} (expected a tuple (eps1 or None, eps2))")
        if eps[0] is not None:  # 0 would make rsqrt(V̂) infinite wherever a gradient entry is 0: 0·inf = NaN
            check_number("eps[0]", eps[0], low=0.0, low_open=True)
        # with scale_parameter, eps2 floors the step of a parameter at 0: 0 would leave it at 0 for ever
        check_number("eps[1]", eps[1], low=0.0, low_open=group["scale_parameter"] is True, high=FLOAT32_MAX)
        check_number("clip_threshold", group["clip_threshold"], low=0.0, low_open=True)
        check_number("weight_decay", group["weight_decay"], high=FLOAT32_MAX)
        if group["beta1"] is not None:
            check_number("beta1", group["beta1"], low=0.0, high=1.0, high_open=True)
        for flag in ("relative_step", "scale_parameter", "warmup_init"):
            check_choice(flag, group[flag], (False, True))
        if group["warmup_init"] and not group["relative_step"]:
            raise ValueError("Invalid warmup_init: True needs relative_step=True (the warm-up is of the relative "
                             "step size)")

    def _check_params(self, group: dict[str, Any]) -> None:
        for p in group["params"]:
            # a sharded DTensor (FSDP2, tensor parallel) holds part of the rows or columns whose means the factored
            # moments and RMS(θ) need; refuse rather than compute per-shard statistics silently
            if any(not placement.is_replicate() for placement in getattr(p, "placements", ())):
                raise ValueError(f"Adafactor does not support sharded DTensor parameters (got one of shape "
                                 f"{tuple(p.shape)} with placements {tuple(p.placements)}): its factored second "
                                 "moment and RMS(θ) need whole rows and columns. Use it with DDP or "
                                 "ZeroRedundancyOptimizer, or use Lion, RLion, Adan or AdaX under fully_shard")

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        state = {"step": step_counter()}
        if p.dim() >= 2:
            state["row_var"] = zeros_state(p, (*p.shape[:-1], 1), group)
            state["col_var"] = zeros_state(p, (*p.shape[:-2], 1, p.shape[-1]), group)
        else:
            state["variance"] = zeros_state(p, group=group)
        if group["beta1"] is not None:
            state["exp_avg"] = zeros_state(p, group=group)
        return state

    squared_gradient_span = 1.0  # g²

    def _optional_state(self, group: dict[str, Any]) -> set[str]:
        return {"exp_avg"}  # made by state_for when beta1 is switched on after some steps

    def state_for(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        state = super().state_for(p, group)
        if group["beta1"] is not None and "exp_avg" not in state:  # beta1 switched on after some steps
            state["exp_avg"] = zeros_state(p, group=group)
        return state

    @classmethod
    def _update(cls, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                states: list[dict[str, Tensor]]) -> None:
        eps1, eps2 = group["eps"]
        adafactor_update(
            params, grads, [s.get("row_var") for s in states], [s.get("col_var") for s in states],
            [s.get("variance") for s in states], [s.get("exp_avg") for s in states],
            steps=ops.step_values(states), lr=group["lr"], beta2_decay=group["beta2_decay"],
            eps1=eps1, eps2=eps2, clip_threshold=group["clip_threshold"], weight_decay=group["weight_decay"],
            beta1=group["beta1"], relative_step=group["relative_step"], scale_parameter=group["scale_parameter"],
            warmup_init=group["warmup_init"])


register_optimizer(OptimizerInfo(
    # its state is O(R + C), but three whole-tensor reductions come first (the factors from g², RMS(θ), and the RMS
    # of the update, which needs the factors): g is read three times and θ twice before θ is written
    "adafactor", Adafactor, 1e-2, eps="pair", state_bytes_per_param=4, step_bytes=24, step_bytes_bf16_state=24,
    # compile time grows with the tensors per kernel and the math per tensor, and each chunk size is a kernel of
    # its own per class of shapes (benchmarks/NOTES.md, "Adafactor chunks")
    fused_chunks=(4, 1), description="factored second moment, relative steps (Shazeer & Stern 2018)",
    translation=Translation(
        1.0, (1.0, 1.0), 1.0,
        "Shazeer & Stern: relative step sizes, lr is the cap 1e-2 of ρ_t = min(lr, 1/sqrt(t)) scaled by RMS(θ), "
        "not comparable to AdamW's lr; weight decay set so that lr·wd equals AdamW's.",
        absolute_lr=1e-2)))
