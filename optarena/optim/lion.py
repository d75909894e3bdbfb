"""Lion — Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms" (arXiv 2302.06675)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ._base import (
    OptarenaOptimizer,
    ParamsT,
    Scalar,
    add_scaled_,
    check_betas,
    check_number,
    is_nonzero,
    lerp_,
    mul_,
    zeros_state,
)

#: Maps the interpolated momentum ``c`` (a list of tensors) to the update direction, in place or not.
Direction = Callable[[list[Tensor]], list[Tensor]]


def sign_direction(c: list[Tensor]) -> list[Tensor]:
    torch._foreach_sign_(c)
    return c


def lion_update(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], *, lr: Scalar, beta1: Scalar,
                beta2: Scalar, weight_decay: Scalar, direction: Direction = sign_direction) -> None:
    """The Lion rule on lists of tensors (RLion is this rule with a bounded ``direction`` instead of sign)::

        θ ← θ·(1 − lr·wd);  c ← β1·m + (1 − β1)·g;  θ ← θ − lr·direction(c);  m ← β2·m + (1 − β2)·g
    """
    if is_nonzero(weight_decay):
        mul_(params, 1 - lr * weight_decay)
    c = torch._foreach_mul(exp_avgs, beta1)
    add_scaled_(c, grads, 1 - beta1)
    add_scaled_(params, direction(c), -lr)
    lerp_(exp_avgs, grads, 1 - beta2)


class Lion(OptarenaOptimizer):
    """Lion: the sign of an interpolated momentum, one state buffer (4 bytes/param in fp32), no eps.

    Args:
        params: parameters or parameter groups.
        lr: learning rate; 3–10× smaller than AdamW's (authors' guidance).
        betas: ``(β1, β2)``: β1 interpolates for the update, β2 is the momentum's EMA rate. The authors suggest
            (0.95, 0.98) for stability on language models.
        weight_decay: decoupled decay ``θ ← θ·(1 − lr·wd)``; 3–10× larger than AdamW's (keep lr·wd).
        maximize: ascend instead of descend.
        foreach: ``True`` for torch._foreach kernels over all tensors, ``False`` for a per-tensor loop,
            ``None`` for the device's faster default (loop on CPU, foreach on GPU).
        fused: ``True`` for one ``torch.compile``d kernel per step over all tensors (C++/OpenMP on CPU, Triton on
            GPU), generated from the same math; the first step compiles (10–60 s on a 2-core CPU, then cached by
            inductor across runs); lr and weight decay are passed as tensors, so schedules do not recompile.
            Falls back to foreach with one warning where compilation fails. ``None``: off (see README, "Speed").
        state_dtype: dtype of the state buffers: ``None`` (fp32 for fp32/bf16/fp16 params, fp64 for fp64) or
            ``torch.bfloat16`` (half the state memory; the math stays fp32).
        stochastic_rounding: round bf16 parameters stochastically when writing the fp32 result back.
    """

    counts_steps = False

    def __init__(self, params: ParamsT, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, *, maximize: bool = False, foreach: bool | None = None,
                 fused: bool | None = None, state_dtype: torch.dtype | None = None,
                 stochastic_rounding: bool = False) -> None:
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize, foreach=foreach,
                        fused=fused, state_dtype=state_dtype, stochastic_rounding=stochastic_rounding)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_number("lr", group["lr"])
        check_betas(group["betas"], 2)
        check_number("weight_decay", group["weight_decay"])

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        return {"exp_avg": zeros_state(p, group=group)}

    def _direction(self, group: dict[str, Any]) -> Direction:
        return sign_direction

    def _update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                states: list[dict[str, Tensor]]) -> None:
        beta1, beta2 = group["betas"]
        lion_update(params, grads, [s["exp_avg"] for s in states], lr=group["lr"], beta1=beta1, beta2=beta2,
                    weight_decay=group["weight_decay"], direction=self._direction(group))
