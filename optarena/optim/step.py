"""The one step body every path runs, and the dtype rules around it.

:func:`step_tensors` advances the step counts, folds ``maximize`` and a gradient scale into the gradients, runs the
algorithm's math in float32 (or better) on up-cast copies of low-precision parameters, gradients and state, and
writes the results back (bf16 parameters stochastically rounded on request, 8-bit codes dithered). The loop and
foreach paths call it eagerly on real tensors; the fused path compiles it over flat views. Each of those concerns
therefore exists once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import torch
from torch import Tensor

from . import ops, quant

#: ``update(group, params, grads, states)``: an algorithm's math on same-dtype fp32/fp64 tensors, updating params
#: and state tensors in place. It must not read anything but its arguments (it is compiled once per configuration,
#: for every instance of the class), nor add keys to the states.
Update: TypeAlias = Callable[[dict[str, Any], list[Tensor], list[Tensor], list[dict[str, Tensor]]], None]

LOW_PRECISION = (torch.float16, torch.bfloat16)


def math_dtype(p: Tensor) -> torch.dtype:
    """The dtype in which an optimizer does its arithmetic for parameter ``p``."""
    return torch.float32 if p.dtype in LOW_PRECISION else p.dtype


def state_dtype_for(p: Tensor, group: dict[str, Any] | None = None) -> torch.dtype:
    """The dtype of ``p``'s floating-point state buffers: the group's ``state_dtype``, or the math dtype when it is
    ``None`` or ``"int8"`` (whose codes are integers; their block scales and small tensors' state are float)."""
    chosen = None if group is None else group.get("state_dtype")
    return math_dtype(p) if chosen is None or chosen == INT8 else chosen


#: ``state_dtype`` of 8-bit blockwise-quantised state (:mod:`.quant`): codes, not a dtype of its own.
INT8 = "int8"


def zeros_state(p: Tensor, shape: Sequence[int] | None = None, group: dict[str, Any] | None = None,
                nonnegative: bool = False) -> Tensor:
    """A zero buffer for ``p``'s optimizer state, in the group's state dtype. With ``state_dtype="int8"`` a large
    tensor's buffer is 8-bit codes (signed, or unsigned for a ``nonnegative`` moment); the optimizer adds their
    block scales (``quant.add_scales``)."""
    if group is not None and group.get("state_dtype") == INT8 and quant.quantizes(p):
        return quant.zeros_codes(p, None if shape is None else tuple(shape), nonnegative)
    dtype = state_dtype_for(p, group)
    if shape is None:
        return torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
    return torch.zeros(shape, dtype=dtype, device=p.device)


def step_counter() -> Tensor:
    """Per-parameter step count. float64 counts exactly to 2**53 (float32 would stall at 2**24 ≈ 16.8M steps)."""
    return torch.zeros((), dtype=torch.float64)


def group_by_device_and_dtype(tensors: Sequence[Tensor]) -> list[list[int]]:
    """Indices of ``tensors`` bucketed by (device, dtype), in first-seen order: each bucket can be one foreach call."""
    buckets: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        buckets[(t.device, t.dtype)].append(i)
    return list(buckets.values())


def stochastic_round_to_bf16(x: Tensor) -> Tensor:
    """fp32 → bf16 rounding that keeps the mean: add uniform noise below the 16 dropped mantissa bits, truncate."""
    bits = x.contiguous().view(torch.int32)
    noise = torch.randint_like(bits, 0, 1 << 16)
    return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)


def round_into(dst: list[Tensor], src: list[Tensor], stochastic: bool = False) -> None:
    """Write fp32 ``src`` into low-precision ``dst``: round to nearest, or for bf16 with ``stochastic`` round up
    with probability equal to the dropped fraction, so that updates below a bf16 ulp still move on average."""
    if stochastic and dst[0].dtype == torch.bfloat16:
        ops.copy_(dst, [stochastic_round_to_bf16(s) for s in src])
    else:
        ops.copy_(dst, src)


def _as(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` in ``dtype``: itself when it is so (``Tensor.to`` costs ~1.5 µs even then, per tensor per step)."""
    return x if x.dtype == dtype else x.to(dtype)


def runs_of(indices: Sequence[int], size: Callable[[int], int], limit: int) -> list[list[int]]:
    """``indices`` in order, cut into runs whose sizes add up to at most ``limit``; a larger item is a run of its
    own."""
    runs: list[list[int]] = []
    total = 0
    for i in indices:
        if not runs or total + size(i) > limit:
            runs.append([])
            total = 0
        runs[-1].append(i)
        total += size(i)
    return runs


def step_tensors(update: Update, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                 states: list[dict[str, Tensor]], scale: ops.Scalar | None = None,
                 new_scales: list[dict[str, Tensor]] | None = None) -> Tensor | None:
    """One step of ``update`` on same-dtype ``params`` (updated in place), their read-only ``grads`` and their
    ``states`` (updated in place; a ``"step"`` entry is advanced first). ``scale`` multiplies every gradient
    (Adan's clipping); ``group["maximize"]`` flips its sign. With ``new_scales`` (one dict per state), 8-bit
    buffers' new block scales go there by the codes' key instead of into the state (the fused kernels' outputs).
    Returns the dither rows of the 8-bit encodings (None without 8-bit state)."""
    work_dtype = math_dtype(params[0])
    grads = [_as(g, work_dtype) for g in grads]
    factor = -1.0 if group["maximize"] else None
    if scale is not None:
        if isinstance(scale, Tensor) and scale.device != params[0].device:  # params on several devices
            scale = scale.to(params[0].device)
        factor = -scale if factor is not None else scale
    if factor is not None:
        grads = ops.scaled(grads, factor)
    # one foreach call: torch 2.13's compiled code drops an in-place add_ on a 0-d float64 CPU tensor (the
    # counters), so under torch.compile(opt.step) they stayed at 1; _foreach_add_ is kept
    steps = [state["step"] for state in states if "step" in state]
    if steps:
        torch._foreach_add_(steps, 1)
    work_states = [_work_state(s, work_dtype) for s in states]
    work = [_as(p, work_dtype) for p in params]
    update(group, work, grads, work_states)
    if work[0] is not params[0]:
        round_into(params, work, group["stochastic_rounding"])
    dst, src = [], []
    dithers = None
    for i, (s, w) in enumerate(zip(states, work_states)):
        for k, value in w.items():
            if value is s[k]:
                continue
            if quant.is_codes(s, k):
                if dithers is None:  # one computation for all tensors (a state without codes gets an unused row)
                    steps = [state.get(quant.STEP, _NO_STEP) for state in states]
                    dithers = quant.dither_rows(steps, params[0].device)
                scales = s[k + quant.SCALE_SUFFIX]
                if new_scales is None:
                    quant.quantize_(s[k], scales, value, dithers[i])
                else:
                    new_scales[i][k] = quant.encode_blocks_(s[k], value, scales.numel(), dithers[i])
            else:
                dst.append(s[k])
                src.append(value)
    if dst:
        ops.copy_(dst, src)
    return dithers


#: The step count of a state without codes, which needs no dither (one with codes has a count:
#: base.add_step_count).
_NO_STEP = torch.zeros((), dtype=torch.float64)


def _work_state(state: dict[str, Tensor], work_dtype: torch.dtype) -> dict[str, Tensor]:
    """What the update sees of ``state``: the step count, and every buffer in the math dtype (8-bit codes decoded;
    their block scales left out)."""
    return {k: v if k == "step" else _as(v, work_dtype) for k, v in quant.decoded(state).items()}
