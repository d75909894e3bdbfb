"""Lion — Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms" (arXiv 2302.06675)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..info import OptimizerInfo, Translation, register_optimizer
from ..validation import FLOAT32_MAX, check_betas, check_number
from . import ops
from .base import OptarenaOptimizer, ParamsT
from .ops import Scalar
from .step import zeros_state

#: Maps the interpolated momentum ``c`` (a list of tensors, which it may overwrite) to the update direction.
Direction = Callable[[list[Tensor]], list[Tensor]]


def sign_direction(c: list[Tensor]) -> list[Tensor]:
    ops.sign_(c)
    return c


def lion_update(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], *, lr: Scalar, beta1: Scalar,
                beta2: Scalar, weight_decay: Scalar, direction: Direction = sign_direction) -> None:
    """The Lion rule on lists of tensors (RLion is this rule with a bounded ``direction`` instead of sign)::

        θ ← θ·(1 − lr·wd);  c ← β1·m + (1 − β1)·g;  θ ← θ − lr·direction(c);  m ← β2·m + (1 − β2)·g
    """
    if ops.is_nonzero(weight_decay):
        ops.mul_(params, 1 - lr * weight_decay)
    c = ops.scaled(exp_avgs, beta1)
    ops.add_scaled_(c, grads, 1 - beta1)
    ops.add_scaled_(params, direction(c), -lr)
    ops.lerp_(exp_avgs, grads, 1 - beta2)


class Lion(OptarenaOptimizer):
    """Lion: the sign of an interpolated momentum, one state buffer (4 bytes/param in fp32), no eps.

    Args:
        params: parameters or parameter groups.
        lr: learning rate; 3–10× smaller than AdamW's (authors' guidance).
        betas: ``(β1, β2)``: β1 interpolates for the update, β2 is the momentum's EMA rate. The authors suggest
            (0.95, 0.98) for stability on language models.
        weight_decay: decoupled decay ``θ ← θ·(1 − lr·wd)``; 3–10× larger than AdamW's (keep lr·wd). lr and
            weight_decay up to float32's largest, ~3.4e38.
        maximize: ascend instead of descend.
        foreach: ``True`` for torch._foreach kernels over all tensors, ``False`` for a per-tensor loop,
            ``None`` for the device's faster default (loop on CPU, foreach on GPU).
        fused: ``True`` for a few ``torch.compile``d kernels per step over all tensors (C++/OpenMP on CPU, Triton
            on GPU), generated from the same math; the first step compiles (10–60 s on a 2-core CPU, then cached by
            inductor across runs); lr, betas and weight decay are kernel inputs, so schedules do not recompile.
            Falls back to foreach with one warning where compilation fails. ``None``: off (see README, "Speed").
        state_dtype: dtype of the state buffers: ``None`` (fp32 for fp32/bf16/fp16 params, fp64 for fp64) or
            ``torch.bfloat16`` (half the state memory; the math stays fp32).
        stochastic_rounding: round bf16 parameters stochastically when writing the fp32 result back (draws from
            torch's global random generator). 8-bit state's codes are always rounded without bias, by a
            deterministic dither (README, "8-bit state").
        skip_nonfinite: skip the whole step (every group; ``skipped_steps`` counts them) when a gradient holds a
            NaN or infinity, as ``torch.amp.GradScaler`` does; for the optimizers that square gradients (Adan, AdaX,
            AdEMAMix, Adafactor, Amos) also an entry whose square overflows the math dtype (beyond ~1.8e19 in
            float32; Adan's ~6e18), which would leave the second moment infinite: a weight frozen for good, as in
            torch's Adam. Without it a non-finite gradient entry reaches its parameter (the next loss shows it), as
            in torch.optim: Lion's sign keeps a NaN a NaN.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, *, maximize: bool = False, foreach: bool | None = None,
                 fused: bool | None = None, state_dtype: torch.dtype | None = None,
                 stochastic_rounding: bool = False, skip_nonfinite: bool = False) -> None:
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize, foreach=foreach,
                        fused=fused, state_dtype=state_dtype, stochastic_rounding=stochastic_rounding,
                        skip_nonfinite=skip_nonfinite)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_number("lr", group["lr"], high=FLOAT32_MAX)
        check_betas(group["betas"], 2)
        check_number("weight_decay", group["weight_decay"], high=FLOAT32_MAX)

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        return {"exp_avg": zeros_state(p, group=group)}

    @classmethod
    def _direction(cls, group: dict[str, Any]) -> Direction:
        return sign_direction

    @classmethod
    def _update(cls, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                states: list[dict[str, Tensor]]) -> None:
        beta1, beta2 = group["betas"]
        lion_update(params, grads, [s["exp_avg"] for s in states], lr=group["lr"], beta1=beta1, beta2=beta2,
                    weight_decay=group["weight_decay"], direction=cls._direction(group))


register_optimizer(OptimizerInfo(
    "lion", Lion, 1e-4, num_betas=2, state_bytes_per_param=4, elementwise=True, int8_state=True,
    int8_local_buffers=True, int8_fused_chunks=(8, 4, 1), fused_packed_below=1024, stress=True, step_bytes=20,
    step_bytes_bf16_state=16,
    description="sign of interpolated momentum (Chen et al. 2023)",
    translation=Translation(
        1 / 5, (1 / 10, 1 / 3), 5.0,
        "Chen et al. 2023: lr 3–10x smaller than AdamW's and weight decay 3–10x larger, keeping lr·wd (the "
        "decay's strength); betas (0.95, 0.98) for language models; prefers larger batches.")))
