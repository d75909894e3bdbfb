"""Amos — Tian & Parikh 2022, "Amos: An Adam-style Optimizer with Adaptive Weight Decay towards Model-Oriented
Scale" (arXiv 2210.11693); the rule of the authors' reference, google-research/jestimator ``amos.py``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..info import OptimizerInfo, Translation, register_optimizer
from ..validation import EPS_RANGE, FLOAT32_MAX, check_number
from . import ops
from .base import OptarenaOptimizer, ParamsT
from .ops import Scalar
from .step import math_dtype, state_dtype_for, step_counter, zeros_state

#: State kept per tensor (one number each, or one per member of a fused pack), always in the math dtype: the
#: decay accumulator b grows by γ·(1 + b) with γ ≈ lr² ≪ 2⁻⁸, which bf16 would round away.
SCALAR_STATE = ("exp_avg_sq", "decay", "shape_eta")


def default_eta(shape: Sequence[int]) -> float:
    """The expected scale η of a tensor's entries from its shape (PyTorch's ``(out, in, *kernel)`` layout):
    ``sqrt(2/fan_in)`` for ≥ 2-D weights (He initialisation's scale, the reference's examples for hidden kernels),
    0.5 for 0-D and 1-D tensors (biases and norm gains, as the reference's examples)."""
    if len(shape) < 2:
        return 0.5
    return math.sqrt(2 / max(1, math.prod(shape[1:])))


#: The largest lr: the decay accumulator's first value γ₁ = lr² must be a float32 (larger, it is infinite and every
#: parameter NaN after one step). Any lr above 2 already expands the weights at the first step: θ·(1 − lr²/2).
MAX_LR = math.sqrt(torch.finfo(torch.float32).max)


def amos_update(params: list[Tensor], grads: list[Tensor], exp_avg_sqs: list[Tensor], decays: list[Tensor],
                etas: list[Scalar], exp_avgs: list[Tensor] | None, *, steps: list[Scalar], lr: Scalar, beta: float,
                zeta: float, eps: float, weight_decay: Scalar, momentum: float) -> None:
    """The Amos rule on lists of tensors, with one second moment ``v`` and one decay accumulator ``b`` per tensor
    (0-d tensors; vectors over the members of a fused pack), ξ = lr and η from ``etas``::

        v ← β·v + (1 − β)·mean(g²);   r = (1 − β^t)/max(v, eps)
        c = 1/sqrt(1 + ζ·sqrt(ξ)·b);   d = 1/(1 + ζ·sqrt(ξ·η)·b);   γ = c·ξ²·r·mean(g²)
        Δ = −d·(ξ·η·sqrt(r)·g + ½·γ·θ);   b ← b + γ·(1 + b)
        θ ← θ + Δ,  or with momentum μ:  m ← μ·m + (1 − μ)·Δ;  θ ← θ + m

    preceded by a decoupled ``θ ← θ·(1 − lr·wd)`` when weight_decay > 0 (not part of Amos: its γ is the decay).
    """
    if ops.is_nonzero(weight_decay):
        ops.mul_(params, 1 - lr * weight_decay)
    sqrt_lr = ops.scalar_fn(lr, torch.sqrt, math.sqrt)
    grad_scales, shrinks = [], []
    for g2, v, b, eta, t in zip(ops.mean_squares(grads), exp_avg_sqs, decays, etas, steps):
        v.mul_(beta).add_(g2 * (1 - beta))
        r = (1 - beta**t) / v.clamp(min=eps)
        init_lr = lr * eta
        # r·g² first: it is at most 1/(1 − β) (v ≥ (1 − β)·g²), where r alone reaches 1/eps for a tensor whose
        # gradient is all zero, and lr²·r overflowed (lr ≥ 3: 0·inf, a NaN parameter)
        gamma = lr * lr * (r * g2) / (1 + zeta * sqrt_lr * b).sqrt()
        d = 1 / (1 + zeta * ops.scalar_fn(init_lr, torch.sqrt, math.sqrt) * b)
        grad_scales.append(-d * init_lr * r.sqrt())
        shrinks.append(-0.5 * d * gamma)
        # after c and d, which take b before this step. b grows without bound (like exp(lr²·t) with zeta = 0): it
        # saturates at the largest float instead of overflowing, where c and d stay what they tend to (1 with
        # zeta = 0, else 0) and 0·inf made a NaN
        b.add_(gamma * (1 + b)).clamp_(max=torch.finfo(b.dtype).max)
    if ops.compiling():
        grad_scales, shrinks = ops.hoisted(grad_scales, shrinks)
    updates = ops.scaled(grads, grad_scales)
    torch._foreach_add_(updates, ops.scaled(params, shrinks))  # Δ, from θ before this step's change
    if exp_avgs is not None:
        ops.lerp_(exp_avgs, updates, 1 - momentum)
        updates = exp_avgs
    torch._foreach_add_(params, updates)


class Amos(OptarenaOptimizer):
    """Amos: Adam-style steps of size ``lr·η`` per tensor (η: the expected scale of its entries), an adaptive weight
    decay γ towards that scale and an implicit lr decay, with no schedule to set; two numbers of state per tensor
    (plus a full-size momentum buffer with ``momentum > 0``).

    Its second moment is one number per tensor (the mean of g², as the reference's examples for most variables and
    pytorch-optimizer's ``Amos``), so it is not elementwise: ``Lazy`` refuses it, and the fused step keeps shapes.

    Args:
        params: parameters or parameter groups.
        lr: the global learning rate ξ. The authors: about ``1/sqrt(N)`` for N batches in the training data (0.01 in
            their PTB example, 1/sqrt(60000/32) ≈ 0.023 on MNIST); ``lr·η`` is the per-element step, where AdamW's is
            its lr. May follow a warm-up; Amos decays it itself. Above 2 the first step expands the weights,
            θ·(1 − lr²/2); above ``MAX_LR`` (≈ 1.8e19, where lr² overflows float32) it is refused.
        beta: EMA rate of the second moment; ``1 − beta`` of the order of lr (the authors).
        eta: the expected scale η of every tensor of the group. ``None`` (default): per tensor from its shape,
            ``sqrt(2/fan_in)`` for ≥ 2-D weights (fan_in = ``prod(shape[1:])``), 0.5 for biases and other 0-D/1-D
            tensors (:func:`default_eta`). Give embeddings, output heads or other tensors whose scale the heuristic
            misses a param group with their own ``eta`` (e.g. their initialisation std).
        momentum: EMA rate μ of the updates (0: none, the default; the reference's optional momentum).
        weight_decay: an extra decoupled decay ``θ ← θ·(1 − lr·wd)``; 0 (default) is Amos as published, whose γ is
            the weight decay. (pytorch-optimizer's ``extra_l2`` is not offered: it *grows* θ, see README.)
        zeta: ζ, the speed of the implicit decays c and d (0.25 in the paper).
        eps: floor of ``v`` (the reference's 2⁻¹²⁵, the smallest normal float32 but one).
        maximize, foreach, fused, state_dtype, stochastic_rounding, skip_nonfinite: as :class:`optarena.Lion`.
            ``state_dtype`` applies to the momentum buffer; the per-tensor numbers stay in the math dtype.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-2, beta: float = 0.999, eta: float | None = None,
                 momentum: float = 0.0, weight_decay: float = 0.0, *, zeta: float = 0.25, eps: float = 2.0**-125,
                 maximize: bool = False, foreach: bool | None = None, fused: bool | None = None,
                 state_dtype: torch.dtype | None = None, stochastic_rounding: bool = False,
                 skip_nonfinite: bool = False) -> None:
        defaults = dict(lr=lr, beta=beta, eta=eta, momentum=momentum, weight_decay=weight_decay, zeta=zeta, eps=eps,
                        maximize=maximize, foreach=foreach, fused=fused, state_dtype=state_dtype,
                        stochastic_rounding=stochastic_rounding, skip_nonfinite=skip_nonfinite)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_number("lr", group["lr"], high=MAX_LR)
        check_number("beta", group["beta"], high=1.0, high_open=True)
        if group["eta"] is not None:
            check_number("eta", group["eta"], low=0.0, low_open=True)
        check_number("momentum", group["momentum"], high=1.0, high_open=True)
        check_number("weight_decay", group["weight_decay"], high=FLOAT32_MAX)
        check_number("zeta", group["zeta"], high=FLOAT32_MAX)  # beyond: inf·b = NaN while b = 0
        check_number("eps", group["eps"], low=EPS_RANGE[0], high=EPS_RANGE[1])

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        state = {"step": step_counter(), "exp_avg_sq": zeros_state(p, ()), "decay": zeros_state(p, ()),
                 "shape_eta": torch.tensor(default_eta(p.shape), dtype=math_dtype(p), device=p.device)}
        if group["momentum"] > 0:
            state["exp_avg"] = zeros_state(p, group=group)
        return state

    squared_gradient_span = 1.0  # g² into v

    def _optional_state(self, group: dict[str, Any]) -> set[str]:
        return {"exp_avg"}  # made by state_for when momentum is switched on after some steps

    def state_for(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        state = super().state_for(p, group)
        if group["momentum"] > 0 and "exp_avg" not in state:
            state["exp_avg"] = zeros_state(p, group=group)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # the base casts all floating state to the state dtype; the per-tensor numbers stay in the math dtype
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p, {})
                for key in SCALAR_STATE:
                    if key in state and state[key].dtype != math_dtype(p):
                        state[key] = state[key].to(math_dtype(p))
                if "exp_avg" in state and state["exp_avg"].dtype != state_dtype_for(p, group):
                    state["exp_avg"] = state["exp_avg"].to(state_dtype_for(p, group))

    @classmethod
    def _update(cls, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                states: list[dict[str, Tensor]]) -> None:
        eta = group["eta"]
        momentum = group["momentum"]
        amos_update(params, grads, [s["exp_avg_sq"] for s in states], [s["decay"] for s in states],
                    [s["shape_eta"] if eta is None else eta for s in states],
                    # the fused kernels take a nonzero momentum as a tensor input
                    [s["exp_avg"] for s in states] if isinstance(momentum, Tensor) or momentum > 0 else None,
                    steps=ops.step_values(states),
                    lr=group["lr"], beta=group["beta"], zeta=group["zeta"], eps=group["eps"],
                    weight_decay=group["weight_decay"], momentum=momentum)


register_optimizer(OptimizerInfo(
    # no betas (its one beta is not Adam's β2 in meaning: it is tied to lr), no Adam-style eps
    "amos", Amos, 1e-2, state_bytes_per_param=0, has_momentum=True,
    schedule="constant",  # its decay is built in (the c and d factors); jestimator runs it at a constant lr
    # mean(g²) reads g once before θ is written; params 8 + grad 4 + 4 (read again for the update)
    step_bytes=16, step_bytes_bf16_state=16, fused_chunks=(4, 1),
    description="adaptive decay towards a per-tensor scale, no schedule (Tian & Parikh 2022)",
    translation=Translation(
        10.0, (3.0, 30.0), 0.0,
        "Tian & Parikh: lr·η is the per-element step where AdamW's is lr, so lr ≈ AdamW's lr/η (η = sqrt(2/fan_in) "
        "≈ 0.03–0.1 for hidden weights: 10–30x); their rule of thumb is lr ≈ 1/sqrt(batches in the training "
        "data). No weight decay: Amos decays adaptively towards η, and decays its own step (no lr schedule).")))
