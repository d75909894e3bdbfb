"""``fused=True``: each step as a few ``torch.compile``d kernels generated from the algorithm's own math.

The step body (:func:`optarena.optim.step.step_tensors`) is compiled over flat views of the parameters and state
(for elementwise algorithms: one kernel serves every shape) or over the real shapes (others), a few tensors per
call (``OptimizerInfo.fused_chunks``), the smallest tensors packed into one call (:mod:`.pack`). lr, betas, a nonzero
weight decay and a gradient scale are kernel inputs, so schedules do not recompile; the other hyper-parameters are
compiled in, and kernels are shared by every optimizer with the same configuration.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ...info import DEFAULT_FUSED_CHUNKS, info_for
from ..step import INT8
from . import codegen
from .kernels import SCHEDULED, StepValues, refill
from .plan import FusedPlan, Request, make_plan

__all__ = ["FusedPlan", "default_to_fused", "fused_step", "resolve_fused"]


#: Group keys that choose what happens around the kernels, not in them: groups that differ only there share kernels.
NOT_IN_KERNELS = ("foreach", "fused", "skip_nonfinite")


def default_to_fused(params: Sequence[Tensor]) -> bool:
    """``fused=None`` resolves to False everywhere: on CPU a cold compile pays off only after hundreds of steps, and
    no GPU was measured (README, "Speed")."""
    return False


def resolve_fused(group: dict[str, Any], params: Sequence[Tensor]) -> bool:
    fused = group["fused"]
    return bool(default_to_fused(params) if fused is None else fused)


def check_state_fits(opt: Any, group: dict[str, Any], params: list[Tensor], states: list[dict[str, Tensor]]) -> None:
    """Refuse state that does not fit its parameter (one re-pointed by ``p.data = ...`` to another size): a kernel
    would read and write past its buffers, where the loop path raises a size mismatch."""
    for p, state in zip(params, states):
        for key, want in opt.state_template(p, group).items():
            have = state.get(key)
            if isinstance(have, Tensor) and have.shape != want.shape:
                raise ValueError(f"{type(opt).__name__}: the state {key!r} of a parameter of shape {tuple(p.shape)} "
                                 f"has shape {tuple(have.shape)}, made for another shape (was p.data replaced?)")


def _as_view(grad: Tensor, view: Tensor) -> Tensor:
    """``grad`` shaped as a flat kernel's view of its parameter (1-D, or blocks for 8-bit state) and contiguous, as
    the kernel reads it; a strided one is copied (it is only read). ``reshape(view.shape)`` cost 2.1 µs a tensor,
    ``reshape(-1)`` 0.9, ``ravel()`` 0.7, the checks that usually make it unneeded 0.2 (benchmarks/NOTES.md,
    "calling the graph directly" and "8-bit Lion on 200×82K, where the time goes")."""
    if grad.shape == view.shape and grad.is_contiguous():
        return grad
    if view.dim() == 1:
        return grad.ravel()  # contiguous: a copy only where grad is strided
    return grad.reshape(-1, view.shape[-1]).contiguous()


def fused_step(opt: Any, group: dict[str, Any], params: list[Tensor], states: list[dict[str, Tensor]],
               scale: Tensor | None, plan_key: int | None = None) -> bool:
    """Run the group's step through compiled kernels; False (nothing changed) if they cannot be compiled, after one
    warning per optimizer. A configuration that failed is not tried again until it changes. ``plan_key`` names the
    plan (default: the group's id; one parameter's id when its step runs alone, inside backward)."""
    plan_key = id(group) if plan_key is None else plan_key
    wd = group.get("weight_decay", 0.0)
    # a nonzero momentum (Amos's; OneCycleLR and CyclicLR cycle it) is an input; zero, it is compiled in (no buffer)
    momentum = group.get("momentum") or None
    scheduled = (*SCHEDULED, "momentum") if momentum is not None else SCHEDULED
    consts = {k: v for k, v in group.items() if k not in ("params", *scheduled, *NOT_IN_KERNELS)}
    # a nonzero weight decay is a kernel input: its value is not part of the kernel's identity
    const_key = tuple((k, repr(v)) for k, v in sorted(consts.items()) if k != "weight_decay")
    key = (const_key, wd != 0, scale is not None, torch.get_num_threads(), codegen.adjusted())
    if opt._fused_failures.get(plan_key) == key:
        return False
    values = StepValues(group["lr"], wd if wd != 0 else None, scale, momentum, group.get("betas"))
    plan = opt._fused_plans.get(plan_key)
    if plan is None or not plan.serves(key, params, states):
        check_state_fits(opt, group, params, states)
        info = info_for(type(opt))
        # an unregistered algorithm may mix elements: its kernels keep real shapes, which is right for any math
        flat = info is not None and info.elementwise
        int8 = group.get("state_dtype") == INT8
        chunks = DEFAULT_FUSED_CHUNKS if info is None else info.int8_fused_chunks if int8 else info.fused_chunks
        # 8-bit groups keep packing their fp32-state tensors below 32K: their calls take few tensors (int8_fused_chunks)
        packed_below = info.fused_packed_below if flat and not int8 else None
        try:
            plan = make_plan(Request(opt, key, consts, values, flat, chunks, packed_below), params, states)
        except Exception as err:  # noqa: BLE001 - whatever the compiler raised, foreach still works
            first = not opt._fused_failures
            opt._fused_failures[plan_key] = key
            opt._fused_plans.pop(plan_key, None)
            if first:
                warnings.warn(f"{type(opt).__name__}(fused=True): torch.compile failed ({str(err)[:500]}); using "
                              "foreach instead", RuntimeWarning, stacklevel=4)
            return False
        # a parameter follows one plan: another that packs it with others would read a pack whose step counts this
        # one let diverge (inside backward, buckets are plans of their own and may change membership)
        mine = set(map(id, params))
        overlapping = [k for k, other in opt._fused_plans.items()
                       if k != plan_key and not mine.isdisjoint(map(id, other.params))]
        for k in overlapping:
            del opt._fused_plans[k]
        opt._fused_plans[plan_key] = plan
    for bucket in plan.buckets:
        refill(bucket.inputs, values)
        for call in bucket.calls:
            if call.pack is not None:
                call.kernel(call.params, call.pack.load(), call.buffers, call.steps, *bucket.inputs,
                            call.pack.segments)
                call.pack.store()
                continue
            grads = ([_as_view(params[i].grad, view) for i, view in zip(call.indices, call.params)] if plan.flat
                     else [params[i].grad for i in call.indices])
            call.kernel(call.params, grads, call.buffers, call.steps, *bucket.inputs)
    if plan.eager:
        opt._step_runs(group, params, states, ([i] for i in plan.eager), scale)
    return True
