"""Machinery every optarena optimizer shares: argument checks, the step loop and the choice of execution path.

An algorithm supplies three things: ``_check_group`` (its hyper-parameter ranges), ``_init_state`` (its buffers)
and ``_update`` (a call into its one functional core, which works on *lists* of tensors with ``torch._foreach_*``
ops). The base class decides how those lists are formed: one list per (device, dtype) bucket for ``foreach=True``,
one single-tensor list per parameter for the per-tensor loop. The math is therefore written once and both paths
run it. Low-precision parameters are up-cast to float32 around the core, so the math is always fp32 or better.
"""

from __future__ import annotations

import math
import numbers
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeAlias

import torch
from torch import Tensor
from torch.optim import Optimizer

ParamsT: TypeAlias = Iterable[Tensor] | Iterable[dict[str, Any]]

LOW_PRECISION = (torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------------------------- argument checks
def check_number(name: str, value: Any, *, low: float = 0.0, high: float = math.inf,
                 low_open: bool = False, high_open: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` and ``value`` unless ``value`` is a real number in range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"Invalid {name}: {value!r} (expected a finite real number)")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"Invalid {name}: {value!r} (must be in {left}{low}, {high}{right})")


def check_betas(betas: Any, count: int, *, name: str = "betas") -> None:
    """Each beta must lie in [0, 1); ``betas`` must hold exactly ``count`` of them."""
    if not isinstance(betas, Sequence) or isinstance(betas, str) or len(betas) != count:
        raise ValueError(f"Invalid {name}: {betas!r} (expected a tuple of {count} numbers)")
    for i, beta in enumerate(betas):
        check_number(f"{name}[{i}]", beta, low=0.0, high=1.0, high_open=True)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    # compare types too: 1 == True and 0 == False, but foreach=1 is a mistake worth reporting
    if not any(type(value) is type(c) and value == c for c in choices):
        raise ValueError(f"Invalid {name}: {value!r} (expected one of {', '.join(map(repr, choices))})")


# --------------------------------------------------------------------------------------------- tensor helpers
def math_dtype(p: Tensor) -> torch.dtype:
    """The dtype in which an optimizer does its arithmetic (and keeps its state) for parameter ``p``."""
    return torch.float32 if p.dtype in LOW_PRECISION else p.dtype


def zeros_state(p: Tensor, shape: Sequence[int] | None = None) -> Tensor:
    """A zero buffer for ``p``'s optimizer state, in the math dtype (fp32 for bf16/fp16 params)."""
    if shape is None:
        return torch.zeros_like(p, dtype=math_dtype(p), memory_format=torch.preserve_format)
    return torch.zeros(shape, dtype=math_dtype(p), device=p.device)


def step_counter() -> Tensor:
    """Per-parameter step count. float64 counts exactly to 2**53 (float32 would stall at 2**24 ≈ 16.8M steps)."""
    return torch.zeros((), dtype=torch.float64)


def group_by_device_and_dtype(tensors: Sequence[Tensor]) -> list[list[int]]:
    """Indices of ``tensors`` bucketed by (device, dtype), in first-seen order: each bucket can be one foreach call."""
    buckets: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        buckets[(t.device, t.dtype)].append(i)
    return list(buckets.values())


def default_to_foreach(params: Sequence[Tensor]) -> bool:
    """``foreach=None`` resolves like torch.optim: foreach on accelerators, the per-tensor loop on CPU, where a loop
    keeps each tensor in cache while foreach streams every tensor through memory once per op (pytorch-optimizer's
    Lion took 21 ms with foreach off against 28 ms on, 200 tensors, on this project's 2-core CPU)."""
    return all(p.device.type != "cpu" for p in params)


# --------------------------------------------------------------------------------------------- the base class
class OptarenaOptimizer(Optimizer):
    """Base of every optarena optimizer: validation, closure, maximize, path choice, fp32 math, checkpoints."""

    #: Whether the algorithm keeps a per-parameter ``state["step"]`` (advanced before ``_update`` runs).
    counts_steps: bool = True

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)

    # -- hooks for the algorithms -------------------------------------------------------------------------------
    def _check_group(self, group: dict[str, Any]) -> None:
        """Raise ``ValueError`` for an out-of-range hyper-parameter of ``group`` (also for added groups)."""

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        raise NotImplementedError

    def _update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                states: list[dict[str, Tensor]]) -> None:
        """Apply one step to ``params`` (same device and dtype, fp32/fp64). ``grads`` are read-only."""
        raise NotImplementedError

    def _grad_scale(self, params: list[Tensor]) -> float:
        """A factor for every gradient of this step (``params``: all with a grad, over all groups); Adan's
        global-norm clipping overrides it."""
        return 1.0

    # -- torch.optim.Optimizer API ------------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._check_group(group)
            check_choice("maximize", group["maximize"], (False, True))
            check_choice("foreach", group["foreach"], (None, False, True))
            for p in group["params"]:
                if p.is_complex():
                    raise ValueError(
                        f"{type(self).__name__} does not support complex parameters (got one of dtype {p.dtype} "
                        f"and shape {tuple(p.shape)}); optimize torch.view_as_real(param) instead")
                if not p.is_floating_point():
                    raise ValueError(f"{type(self).__name__} can only optimize floating-point parameters, got one "
                                     f"of dtype {p.dtype}")
        except ValueError:
            self.param_groups.pop()
            raise

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Also runs at the end of load_state_dict: groups saved by an older version get the newer keys' defaults.
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch.optim, but state of bf16/fp16 parameters stays in fp32 (torch would round it to the param's
        dtype, silently losing the moments' precision on every resume)."""
        super().load_state_dict(state_dict)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, p in zip(saved_ids, params):
            saved = state_dict["state"].get(saved_id)
            if saved is None or p.dtype not in LOW_PRECISION:
                continue
            for key, value in saved.items():
                if key != "step" and isinstance(value, Tensor) and value.is_floating_point():
                    self.state[p][key] = value.to(device=p.device, dtype=math_dtype(p))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step. ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with_grads = [(group, [p for p in group["params"] if p.grad is not None]) for group in self.param_groups]
        all_params = [p for _, params in with_grads for p in params]
        self._check_grads(all_params)
        scale = self._grad_scale(all_params)
        for group, params in with_grads:
            if params:
                self._step_group(group, params, scale)
        return loss

    def _check_grads(self, params: list[Tensor]) -> None:
        for p in params:
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients (got one for a "
                                   f"parameter of shape {tuple(p.shape)}); use dense gradients, e.g. "
                                   "nn.Embedding(sparse=False)")

    # -- the machinery ------------------------------------------------------------------------------------------
    def _step_group(self, group: dict[str, Any], params: list[Tensor], scale: float) -> None:
        states = []
        for p in params:
            state = self.state[p]
            if not state:
                state.update(self._init_state(p, group))
            if self.counts_steps:
                state["step"] += 1
            states.append(state)

        foreach = group["foreach"]
        if foreach is None:
            foreach = default_to_foreach(params)
        if foreach:
            for bucket in group_by_device_and_dtype(params):
                self._run([params[i] for i in bucket], [states[i] for i in bucket], group, scale)
        else:
            for p, state in zip(params, states):
                self._run([p], [state], group, scale)

    def _run(self, params: list[Tensor], states: list[dict[str, Tensor]], group: dict[str, Any],
             scale: float) -> None:
        """Run the algorithm's core on same-dtype ``params``: through an fp32 copy for bf16/fp16 parameters, and on
        effective gradients (maximize's sign and the gradient scale folded in, the user's ``p.grad`` untouched)."""
        work_dtype = math_dtype(params[0])
        grads = [p.grad if p.grad.dtype == work_dtype else p.grad.to(work_dtype) for p in params]
        factor = -scale if group["maximize"] else scale
        if factor != 1.0:
            grads = torch._foreach_mul(grads, factor)
        if params[0].dtype == work_dtype:
            self._update(group, params, grads, states)
            return
        work = [p.to(work_dtype) for p in params]
        self._update(group, work, grads, states)
        torch._foreach_copy_(params, work)

