"""The base of every optarena optimizer: validation, checkpoints, and the choice of execution path.

An algorithm supplies its arguments and their checks (``_check_group``), its state (``_init_state``) and its math
(``_update``, a classmethod over lists of tensors written in :mod:`.ops`); its facts for everyone else live in its
:class:`~optarena.info.OptimizerInfo`. This class forms the lists: one per (device, dtype) bucket for
``foreach=True`` (in chunks of bounded size), one per parameter for the per-tensor loop, compiled kernels over
flat views for ``fused=True``; every path runs :func:`.step.step_tensors`, so the math and its dtype rules are
written once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, TypeAlias

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..info import info_for
from ..validation import check_choice, check_group_now
from . import fused, quant
from .checkpoint import MACHINERY, check_state_dict
from .ops import Scalar
from .step import INT8, group_by_device_and_dtype, math_dtype, runs_of, step_counter, step_tensors

ParamsT: TypeAlias = Iterable[Tensor] | Iterable[dict[str, Any]]
#: The machinery's keys in a fixed order (a group's values of them are checked once per combination).
MACHINERY_KEYS = tuple(sorted(MACHINERY))

#: Elements per call of the foreach path on CPU: its up-cast copies (bf16 state or parameters) and the algorithm's
#: temporaries are a few buffers of this size, not of the whole bucket, and stay in cache (2–4× faster than one call
#: per bucket: benchmarks/NOTES.md, "foreach chunks"). On accelerators, where each call is a kernel launch, chunks
#: are larger and only bound the temporaries.
FOREACH_ELEMENTS = {"cpu": 1 << 18, "other": 1 << 24}


def default_to_foreach(params: Iterable[Tensor]) -> bool:
    """``foreach=None`` resolves like torch.optim: foreach on accelerators, the per-tensor loop on CPU, where a loop
    keeps each tensor in cache while foreach streams every tensor through memory once per op."""
    return all(p.device.type != "cpu" for p in params)


def add_step_count(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state``, given a step count (in place) if it holds 8-bit codes and none: the seed of their dither
    (``quant.dither_rows``), which Lion's and RLion's math does not keep."""
    if quant.STEP not in state and any(quant.is_codes(state, key) for key in state):
        state[quant.STEP] = step_counter()
    return state


def foreach_chunks(indices: list[int], params: list[Tensor]) -> list[list[int]]:
    """``indices`` (of one device) in order, cut into runs of at most FOREACH_ELEMENTS elements (or one larger
    tensor)."""
    limit = FOREACH_ELEMENTS["cpu" if params[indices[0]].device.type == "cpu" else "other"]
    return runs_of(indices, lambda i: params[i].numel(), limit)


class OptarenaOptimizer(Optimizer):
    """Base of every optarena optimizer: validation, closure, maximize, path choice, fp32 math, checkpoints."""

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        #: Seconds spent compiling fused kernels by this optimizer (0 when they came from an earlier optimizer).
        self.fused_compile_seconds = 0.0
        self.fused_kernels_made = 0
        #: Steps skipped by ``skip_nonfinite`` since this optimizer was made.
        self.skipped_steps = 0
        #: Whether the last ``step()`` changed the parameters (False: skipped by ``skip_nonfinite``); wrappers read it
        #: (Lookahead does not count a skipped step as an inner step).
        self.did_update = True
        self._reset_fused()
        super().__init__(params, defaults)

    def _reset_fused(self) -> None:
        self._fused_plans: dict[int, fused.FusedPlan] = {}  # id(group) → its fused step, reused while it serves
        self._fused_failures: dict[int, tuple[Any, ...]] = {}  # id(group) → the configuration that failed to compile

    @property
    def fused_scratch_bytes(self) -> int:
        """Bytes of the scratch buffers that the fused step keeps for packed small tensors."""
        return sum(plan.scratch_bytes for plan in self._fused_plans.values())

    #: The largest multiple of max|g| that the math squares (None: it squares no gradient), for ``_grad_limit``.
    squared_gradient_span: ClassVar[float | None] = None

    # -- what an algorithm supplies ------------------------------------------------------------------------------
    def _check_group(self, group: dict[str, Any]) -> None:
        """Raise ``ValueError`` for an out-of-range hyper-parameter of ``group`` (also for added groups, loaded
        checkpoints and, before each step, values set since: keep it cheap, per group and not per parameter)."""

    def _check_params(self, group: dict[str, Any]) -> None:
        """Raise ``ValueError`` for a parameter of a new ``group`` this optimizer cannot step (beyond the dtype
        checks every optimizer makes)."""

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        """The state of a parameter before its first step; a ``"step"`` counter (``step_counter()``) if the math
        reads step counts."""
        raise NotImplementedError

    @classmethod
    def _update(cls, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                states: list[dict[str, Tensor]]) -> None:
        """The algorithm's math on same-device, same-dtype fp32/fp64 tensors (see ``step.Update``)."""
        raise NotImplementedError

    def _optional_state(self, group: dict[str, Any]) -> set[str]:
        """State keys a checkpoint may lack because ``state_for`` makes them when they are first needed."""
        return set()

    @classmethod
    def _grad_limit(cls, dtype: torch.dtype) -> float:
        """The largest gradient magnitude the math handles in ``dtype``; ``skip_nonfinite`` skips steps beyond it:
        where the math squares gradients, one whose square would overflow (a second moment infinite for good, a
        frozen weight; NaN with 8-bit state)."""
        span = cls.squared_gradient_span
        # no square: a moment is a mix of gradients, so one beyond the dtype's range overflows it (an fp64 parameter
        # with float32 or 8-bit state)
        return torch.finfo(dtype).max if span is None else math.sqrt(torch.finfo(dtype).max) / span

    def _grad_scale(self, params: list[Tensor]) -> Tensor | None:
        """A factor for every gradient of this step (``params``: all with a grad, over all groups), or None;
        Adan's global-norm clipping overrides it."""
        return None

    # -- torch.optim.Optimizer API ------------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._check_group(group)
            self._check_machinery(group)
            self._check_params(group)
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

    def _check_settings(self, group: dict[str, Any]) -> None:
        """A group's checks before each step: its hyper-parameters, and its machinery (``state_dtype`` set to one this
        optimizer cannot keep made int8 codes of Adafactor's variance, or failed deep inside) where it differs from
        every combination already checked (~1.2 µs a group and step instead of ~5)."""
        self._check_group(group)
        try:
            # with their types: 1 == True, and the check refuses foreach=1
            machinery = tuple((type(value), value) for value in map(group.get, MACHINERY_KEYS))
            known = machinery in self.__dict__.setdefault("_machinery_checked", set())
        except TypeError:  # an unhashable value: the check names it
            machinery, known = None, False
        if not known:
            self._check_machinery(dict(group))  # a copy: it fills in a missing skip_nonfinite
            if machinery is not None:
                self._machinery_checked.add(machinery)

    def _check_machinery(self, group: dict[str, Any]) -> None:
        """The checks of the arguments every optarena optimizer takes."""
        check_choice("maximize", group["maximize"], (False, True))
        check_choice("foreach", group["foreach"], (None, False, True))
        check_choice("fused", group["fused"], (None, False, True))
        if group["fused"] and group["foreach"]:
            raise ValueError("Invalid fused=True with foreach=True: choose one execution path")
        check_choice("state_dtype", group["state_dtype"], (None, torch.float32, torch.bfloat16, INT8))
        info = info_for(type(self))
        if group["state_dtype"] == INT8 and not (info is not None and info.int8_state):
            raise ValueError(f"Invalid state_dtype: {INT8!r} ({type(self).__name__} does not keep its state in 8 "
                             "bits; Lion, RLion, Adan, AdaX and AdEMAMix do)")
        if group["state_dtype"] == INT8:
            # 8-bit codes and block scales are plain tensors: a step mixing them with DTensors (FSDP2, tensor
            # parallel) failed deep inside torch ("got mixed torch.Tensor and DTensor")
            dtensor = next((p for p in group["params"] if hasattr(p, "placements") and quant.quantizes(p)), None)
            if dtensor is not None:
                raise ValueError(f"Invalid state_dtype: {INT8!r} for a DTensor parameter (shape "
                                 f"{tuple(dtensor.shape)}, placements {tuple(dtensor.placements)}: FSDP2 or tensor "
                                 "parallel); 8-bit state is for plain tensors (DDP, one process): use "
                                 "state_dtype=torch.bfloat16 under fully_shard")
        check_choice("stochastic_rounding", group["stochastic_rounding"], (False, True))
        skip = group.setdefault("skip_nonfinite", self.defaults.setdefault("skip_nonfinite", False))
        check_choice("skip_nonfinite", skip, (False, True))
        if skip != self.defaults["skip_nonfinite"]:
            raise ValueError(f"Invalid skip_nonfinite in a param group: {skip!r} (a step is skipped or made for all "
                             "groups at once; set it once in the constructor)")

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Also runs at the end of load_state_dict and after deepcopy/unpickling: groups saved by an older version
        # get the newer keys' defaults. torch's base adds "differentiable" to the defaults, which no optarena
        # optimizer takes: it is dropped, so that state_dict() and later groups are the same after a reload.
        super().__setstate__(state)
        self.defaults.pop("differentiable", None)
        for name, value in (("fused_compile_seconds", 0.0), ("fused_kernels_made", 0), ("skipped_steps", 0),
                            ("did_update", True)):
            self.__dict__.setdefault(name, value)  # absent after unpickling: torch pickles only the state
        self._reset_fused()
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        self._count_steps_of_codes()  # pickled before 8-bit state counted steps

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch.optim, but state keeps the group's state dtype: fp32 for bf16/fp16 parameters (torch would round
        it to the param's dtype, silently losing the moments' precision on every resume), bf16 with
        ``state_dtype=torch.bfloat16``; step counts become float64 CPU tensors, whatever they were saved as.

        Refuses, before changing anything, a state dict saved from another optimizer or model, or whose
        hyper-parameters the constructor would refuse (``ValueError`` naming the group, parameter and key)."""
        check_state_dict(self, state_dict)
        super().load_state_dict(state_dict)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        owners = [(p, g) for g in self.param_groups for p in g["params"]]
        for saved_id, (p, group) in zip(saved_ids, owners):
            saved = state_dict["state"].get(saved_id)
            if saved is None:
                continue
            # each float buffer in the dtype a fresh state has: torch casts floats to the parameter's dtype, and even
            # 8-bit codes to it; the saved values, not torch's casts, are converted (a round trip is bitwise). Codes
            # and floats are never cast into each other (state made before state_dtype changed keeps its dtype).
            expected = self.state_template(p, group)
            state = self.state[p]
            for key, value in saved.items():
                if key == "step":
                    # torch casts "step" to float32 on the param's device for groups with fused=True (its own
                    # fused kernels' convention); a hand-made checkpoint may hold a number
                    state[key] = torch.tensor(float(value), dtype=torch.float64)  # its own, not the caller's
                elif isinstance(value, Tensor):
                    fresh = expected.get(key, value)
                    codes = value.dtype in quant.CODE_DTYPES or fresh.dtype in quant.CODE_DTYPES
                    dtype = value.dtype if codes else fresh.dtype
                    if state[key].dtype != dtype:
                        state[key] = value.to(device=p.device, dtype=dtype)
        self._count_steps_of_codes()  # again: torch cast the codes to floats before it called __setstate__

    def _count_steps_of_codes(self) -> None:
        """Give 8-bit state saved before it counted steps (its dither's seed) a count: without one its dither never
        changed (stuck moments again), and Lazy's and Lookahead's re-encoding failed."""
        for state in self.state.values():
            add_step_count(state)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step. ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with_grads = [(group, [p for p in group["params"] if p.grad is not None]) for group in self.param_groups]
        for group, params in with_grads:
            if params:
                check_group_now(self, group, self._check_settings, "step")
        all_params = [p for _, params in with_grads for p in params]
        self._check_grads(all_params)
        if self.skips_step(all_params):
            return loss
        scale = self._grad_scale(all_params)
        for group, params in with_grads:
            if params:
                self._step_group(group, params, scale)
        return loss

    # -- for wrappers that step chosen tensors (Lazy) ------------------------------------------------------------
    def skips_step(self, params: list[Tensor]) -> bool:
        """Whether ``skip_nonfinite=True`` skips the step whose gradients are those of ``params`` (dense or
        sparse): then it is counted in ``skipped_steps`` and ``did_update`` is False."""
        self.did_update = not (self.defaults.get("skip_nonfinite") and not self._grads_in_range(params))
        self.skipped_steps += not self.did_update
        return not self.did_update

    def new_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        """The state of ``p`` before its first step: the algorithm's, with the block scales of 8-bit buffers (and
        then a step count, :func:`add_step_count`)."""
        return add_step_count(quant.add_scales(self._init_state(p, group)))

    def state_template(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        """What ``new_state`` would make for ``p``, on the meta device (shapes and dtypes, no memory)."""
        return self.new_state(torch.empty_like(p, device="meta"), group)

    def state_for(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        """``p``'s state, created as before its first step if it has none yet."""
        state = self.state[p]
        if not state:
            state.update(self.new_state(p, group))
        return state

    def apply_update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                     states: list[dict[str, Tensor]]) -> None:
        """One step of this optimizer's rule on explicit tensors (same device and dtype), as ``step()`` would make
        it on the per-tensor loop: step counts advanced, ``maximize`` and fp32 math applied, ``grads`` only read.
        ``states`` may be gathered copies; they are updated in place. No gradient scale (Adan's clipping) is
        applied: that needs every gradient of the step."""
        check_group_now(self, group, self._check_settings, "step")
        step_tensors(type(self)._update, group, params, grads, states)

    @torch.no_grad()
    def step_parameters(self, params: list[Tensor], group: dict[str, Any]) -> None:
        """The step of ``params`` (all of ``group``) alone, as ``step()`` would make it (``optarena.step_in_backward``
        calls it as soon as their gradients are complete). No step-wide work: no gradient scale, no
        ``skip_nonfinite``. On the fused path the set gets a plan of its own, named by its first parameter (the
        kernels are shared; a set that changes gets a new plan)."""
        if not params:
            raise ValueError("step_parameters: params is empty (pass the parameters whose gradients are complete)")
        members = {id(p) for p in group["params"]}
        for p in params:
            if id(p) not in members:
                raise ValueError(f"step_parameters: a parameter of shape {tuple(p.shape)} is not in the given group")
            if p.grad is None:
                raise ValueError(f"step_parameters: a parameter of shape {tuple(p.shape)} has no gradient (grad is "
                                 "None)")
        check_group_now(self, group, self._check_settings, "step")
        self._check_grads(params)
        self._step_group(group, params, None, plan_key=id(params[0]))

    # -- the paths ----------------------------------------------------------------------------------------------
    def _check_grads(self, params: list[Tensor]) -> None:
        for p in params:
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients (got one for a "
                                   f"parameter of shape {tuple(p.shape)}); use dense gradients, e.g. "
                                   "nn.Embedding(sparse=False)")

    def _range_dtype(self, p: Tensor, group: dict[str, Any]) -> torch.dtype:
        """The narrowest float type ``p``'s math and state pass through: its math dtype, or its state's where that
        overflows first (bf16 buffers, the float32 block scales of 8-bit codes): an fp64 parameter with 8-bit state
        turned a block NaN at gradients near 1e25. The state it has (which keeps its dtype when the group's
        ``state_dtype`` changes), else the one the group will give it."""
        state = {k: v for k, v in self.state.get(p, {}).items() if k != "step" and isinstance(v, Tensor)}
        if state:
            kinds = {torch.float32 if v.dtype in quant.CODE_DTYPES else v.dtype for v in state.values()}
        else:
            state_dtype = group.get("state_dtype")
            if state_dtype == INT8:
                state_dtype = torch.float32 if quant.quantizes(p) else None
            kinds = {state_dtype} if state_dtype is not None else set()
        dtype = math_dtype(p)
        for kind in kinds:
            if kind.is_floating_point and torch.finfo(kind).max < torch.finfo(dtype).max:
                dtype = kind
        return dtype

    def _grads_in_range(self, params: list[Tensor]) -> bool:
        """Whether every gradient entry is finite and within ``_grad_limit``: one reduction, one host sync."""
        grads = [p.grad if p.grad.layout == torch.strided else p.grad.coalesce().values() for p in params]  # Lazy's
        params, grads = [p for p, g in zip(params, grads) if g.numel()], [g for g in grads if g.numel()]
        if not grads:  # none, or all empty (a sparse gradient without rows, a zero-size parameter)
            return True
        largest = torch.stack([n.to(torch.float64) for n in torch._foreach_norm(grads, math.inf)])
        groups = {id(q): g for g in self.param_groups for q in g["params"]}
        limits = torch.tensor([self._grad_limit(self._range_dtype(p, groups.get(id(p), self.defaults)))
                               for p in params], dtype=torch.float64, device=largest.device)
        return bool((largest.isfinite() & (largest <= limits)).all())

    def _step_group(self, group: dict[str, Any], params: list[Tensor], scale: Scalar | None,
                    plan_key: int | None = None) -> None:
        """``params`` of ``group`` through the group's path; ``plan_key`` names their fused plan (default: the
        group's, for a whole step)."""
        states = [self.state_for(p, group) for p in params]
        if fused.resolve_fused(group, params) and fused.fused_step(self, group, params, states, scale, plan_key):
            return
        # the step counts of a pack may diverge on the other paths; the fused step, if it comes back, repacks
        self._fused_plans.pop(id(group) if plan_key is None else plan_key, None)
        foreach = group["foreach"]
        if foreach is None:
            foreach = default_to_foreach(params)
        if foreach or group["fused"]:  # fused=True that could not compile runs foreach
            runs = [run for bucket in group_by_device_and_dtype(params) for run in foreach_chunks(bucket, params)]
        else:
            runs = [[i] for i in range(len(params))]
        self._step_runs(group, params, states, runs, scale)

    def _step_runs(self, group: dict[str, Any], params: list[Tensor], states: list[dict[str, Tensor]],
                   runs: Iterable[list[int]], scale: Scalar | None) -> None:
        """``step_tensors`` eagerly on each run of indices."""
        for run in runs:
            step_tensors(type(self)._update, group, [params[i] for i in run], [params[i].grad for i in run],
                         [states[i] for i in run], scale)
