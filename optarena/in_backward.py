"""The step inside backward: each parameter steps as soon as its gradient is complete, and the gradient is freed, so
that the gradients of the whole model never exist at once (torch's ``register_post_accumulate_grad_hook``).

Only an update that needs nothing but its own parameter's gradient can run this way; whatever needs the whole step
(a global gradient norm, several backward passes, every parameter's update) is refused when the hooks are made.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.weak import WeakIdKeyDictionary

from .optim.base import OptarenaOptimizer
from .wrappers import GradientAccumulation, LayerAdaptation, Lazy, Lookahead
from .wrappers._base import wrapper_of

#: Why each wrapper cannot step one parameter at a time.
WRAPPER_REASONS = {
    GradientAccumulation: "it sums the gradients of several backward passes before one step, while the step inside "
                          "backward steps and frees each gradient during every backward pass",
    LayerAdaptation: "its trust ratio needs the whole update of step() (the base optimizer's new parameters) before "
                     "it rescales it",
    Lookahead: "it counts step() calls and pulls every parameter back to the slow weights every k of them",
    Lazy: "it splits gradients into present rows and hides them from the base optimizer around step()",
}

#: Parameters under this many elements step in buckets of at most as many elements (when the next would not fit,
#: or at the end of backward): a step costs 25–60 µs of fixed overhead per call on CPU, more than a small tensor's
#: arithmetic (benchmarks/NOTES.md, "Train step and memory placement"); a bucket's gradients, at most 1 MiB in fp32
#: per param group, are the only ones alive beside the one just completed.
BUCKET_ELEMENTS = 1 << 18

#: The attribute that marks an optimizer whose steps run inside backward (one set of hooks per optimizer).
ACTIVE = "_optarena_step_in_backward"

#: Each hooked parameter → a weak reference to the live handle whose hook steps it. A second handle over it (another
#: optimizer: a new one for the next phase) is refused: the first hook frees the gradient, so the second optimizer
#: never stepped.
_CLAIMED: WeakIdKeyDictionary = WeakIdKeyDictionary()


class StepInBackward:
    """The hooks made by :func:`step_in_backward`; ``remove()`` restores the usual ``backward(); step()``."""

    def __init__(self, optimizer: OptarenaOptimizer, handles: list[Any], params: list[Tensor] | None = None) -> None:
        self.optimizer = optimizer
        self._handles = handles
        self._params = [] if params is None else params  # the hooked ones (claimed in _CLAIMED)

    @staticmethod
    def of(p: Tensor) -> StepInBackward | None:
        """The live handle whose hook steps ``p``, or None: to remove one whose handle was not kept."""
        ref = _CLAIMED.get(p)
        return None if ref is None else ref()

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def remove(self) -> None:
        """Remove the hooks: gradients accumulate again and ``optimizer.step()`` steps them. Idempotent."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for p in self._params:
            if StepInBackward.of(p) is self:
                del _CLAIMED[p]
        self._params = []
        if getattr(self.optimizer, ACTIVE, None) is self:
            delattr(self.optimizer, ACTIVE)

    def __enter__(self) -> StepInBackward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


@dataclass
class _Bucket:
    """Small parameters of one group whose gradients are complete and wait to step together."""

    group: dict[str, Any]
    params: list[Tensor] = field(default_factory=list)
    elements: int = 0


def _check_unwrapped(optimizer: Optimizer, since: str = "") -> None:
    """Refuse an optimizer that is the base of a live wrapper (also one wrapped after its hooks were made)."""
    wrapper = wrapper_of(optimizer)
    if wrapper is not None:
        raise TypeError(f"step_in_backward cannot run this {type(optimizer).__name__}: it is the base of a "
                        f"{type(wrapper).__name__}{since}, whose step() would never run (the wrapper would do "
                        "nothing); use the base alone, or the usual backward(); step()")


def _check(optimizer: Optimizer) -> OptarenaOptimizer:
    """``optimizer`` if its step can run per parameter; otherwise the error that says why not."""
    for cls, reason in WRAPPER_REASONS.items():
        if isinstance(optimizer, cls):
            raise TypeError(f"step_in_backward cannot run {cls.__name__}: {reason}")
    _check_unwrapped(optimizer)
    if not isinstance(optimizer, OptarenaOptimizer):
        raise TypeError(f"step_in_backward runs optarena's optimizers, got {type(optimizer).__name__}: its step() "
                        "is one call over all parameters that optarena cannot split per parameter (for torch.optim "
                        "classes, make one optimizer per parameter and step it from "
                        "Tensor.register_post_accumulate_grad_hook, as torch's tutorial shows)")
    if getattr(optimizer, ACTIVE, None) is not None:
        raise ValueError(f"step_in_backward: this {type(optimizer).__name__} already steps inside backward; remove() "
                         "the first handle before making another")
    if optimizer.defaults.get("max_grad_norm", 0) > 0:
        raise ValueError(f"step_in_backward cannot run {type(optimizer).__name__} with "
                         f"max_grad_norm={optimizer.defaults['max_grad_norm']!r}: its clipping scale is the global "
                         "norm of every gradient, known only after the whole backward pass (use max_grad_norm=0)")
    if optimizer.defaults.get("skip_nonfinite"):
        raise ValueError("step_in_backward cannot run with skip_nonfinite=True: it skips or makes the step of every "
                         "parameter at once, after seeing all gradients; inside backward the first parameters have "
                         "stepped before the last gradient exists")
    return optimizer


def _can_require_grad(p: Tensor) -> bool:
    """Whether ``p`` may ever get a gradient (only floating and complex tensors, not inference ones, can require
    grad)."""
    return p.requires_grad or ((p.is_floating_point() or p.is_complex()) and not p.is_inference())


def _given_parameters(items: Iterable[Any]) -> list[Tensor]:
    """The parameters of an iterable of parameters or of param groups (dicts with ``"params"``, as optimizers take
    them: ``optimizer.param_groups``), each once; anything else is refused by its type."""
    params: list[Any] = []
    for item in items:
        if isinstance(item, dict) and "params" in item:
            group = item["params"]
            params.extend([group] if isinstance(group, Tensor) else group)
        else:
            params.append(item)
    for q in params:
        if not isinstance(q, Tensor):
            raise TypeError("step_in_backward: model_or_params must be an nn.Module or an iterable of parameters "
                            f"(or of param groups), got an iterable holding {type(q).__name__}")
    return list(dict.fromkeys(params))


def step_in_backward(model_or_params: nn.Module | Iterable[Tensor], optimizer: Optimizer) -> StepInBackward:
    """Step each parameter of ``model_or_params`` (a module, parameters, or param groups such as
    ``optimizer.param_groups``) that ``optimizer`` holds as soon as backward has completed its gradient, then free
    that gradient (``p.grad = None``).

    One training step is then ``loss.backward()`` alone: it gives the same parameters and state as
    ``backward(); optimizer.step(); optimizer.zero_grad()`` (bitwise on the per-tensor loop path), with at most a
    bucket of small gradients per param group (:data:`BUCKET_ELEMENTS` elements) alive beside the one just
    completed: a tensor of at least that many elements steps at once, smaller ones together when the next would
    not fit in their bucket or when backward ends. A backward pass that raises leaves its waiting gradients in
    ``.grad``; the next pass adds to them and steps them. Frozen parameters get their hooks too and step once
    unfrozen; ones added to the model and the optimizer after this call get theirs at the end of the next backward
    pass and step from there.
    ``optimizer.step()`` must not be called (it finds no gradients); ``torch.nn.utils.clip_grad_norm_`` cannot be
    used (no moment has all gradients). LR schedulers, ``maximize``, ``state_dict``/``load_state_dict`` work as
    usual: the hooks read the param groups at each step.

    Refused (``TypeError``/``ValueError`` naming the reason): wrappers (GradientAccumulation, LayerAdaptation,
    Lookahead, Lazy) and the base of a live wrapper (one wrapped after this call: by its next backward pass, before
    anything steps), optimizers other than optarena's (torch.optim, MuonAdamW), Adan's ``max_grad_norm > 0`` and
    ``skip_nonfinite=True``, which all need every gradient of the step, and a parameter that another optimizer
    already steps inside backward (``StepInBackward.of(p)`` finds its handle). What a failed pass left waiting and
    ``zero_grad()`` then cleared does not step. Returns a handle whose ``remove()`` undoes it; a handle never removed
    keeps the model and the optimizer alive (torch's garbage collector does not see references held by tensor
    hooks).
    """
    opt = _check(optimizer)
    if not isinstance(model_or_params, nn.Module | Iterable) or isinstance(model_or_params, Tensor):
        raise TypeError(f"step_in_backward: model_or_params must be an nn.Module or an iterable of parameters, got "
                        f"{type(model_or_params).__name__}")
    module = model_or_params if isinstance(model_or_params, nn.Module) else None
    given = None if module is not None else _given_parameters(model_or_params)
    owner: dict[int, dict[str, Any]] = {}

    def candidates() -> list[Tensor]:
        return list(dict.fromkeys(module.parameters())) if module is not None else given

    def group_of(p: Tensor) -> dict[str, Any] | None:
        # looked up at step time: load_state_dict and add_param_group replace the group dicts
        group = owner.get(id(p))
        if group is None or not any(g is group for g in opt.param_groups):
            owner.clear()
            owner.update({id(q): g for g in opt.param_groups for q in g["params"]})
            group = owner.get(id(p))
        return group

    owned = {id(q) for g in opt.param_groups for q in g["params"]}
    # frozen ones too: a pass in which only parameters unfrozen since get gradients runs no hook, so nothing could
    # notice them (freeze the head, unfreeze the backbone: the backbone never stepped)
    params = [p for p in candidates() if id(p) in owned and _can_require_grad(p)]
    if not any(p.requires_grad for p in params):
        raise ValueError("step_in_backward: none of the given parameters requires grad and belongs to the "
                         f"{type(opt).__name__} (pass the model, or parameters, that the optimizer was built on)")
    for p in params:
        if not p.is_leaf:
            raise ValueError(f"step_in_backward: a parameter of shape {tuple(p.shape)} is not a leaf tensor; "
                             "post-accumulate-grad hooks exist only on leaves")
        other = StepInBackward.of(p)
        if other is not None:
            raise ValueError(f"step_in_backward: a parameter of shape {tuple(p.shape)} already steps inside backward "
                             f"with another {type(other.optimizer).__name__}, whose hook frees its gradient first "
                             "(this one would never step it); remove() that handle first "
                             "(StepInBackward.of(parameter) finds it)")

    pending: dict[int, _Bucket] = {}  # small parameters waiting, by group
    waiting: dict[int, int] = {}  # their ids → the backward pass (graph task id) whose hook last saw them
    queued: set[int] = set()  # the passes whose end steps what waits
    hooked: set[int] = set()
    # given parameters without hooks (not the optimizer's), looked at again at the end of each pass: one added to the
    # model and the optimizer since then gets its hook there
    unhooked: list[Tensor] = []
    listed: dict[str, Any] = {"sizes": None, "owned": set(), "outside": set()}  # as of the last listing

    def step(group: dict[str, Any], ready: list[Tensor]) -> None:
        for q in ready:
            waiting.pop(id(q), None)
        if not any(g is group for g in opt.param_groups) or any(q.grad is None for q in ready):
            # what a failed pass left waiting may since have been cleared (zero_grad: nothing to step, as step()
            # would skip it) or have new groups (load_state_dict: step with the loaded hyper-parameters)
            for q in ready:
                if q.grad is not None and group_of(q) is not None:
                    step(group_of(q), [q])
            return
        opt.step_parameters(ready, group)
        for q in ready:
            q.grad = None
        # torch's LR schedulers warn unless they saw optimizer.step() called; these steps are the optimizer's
        opt._opt_called = True  # type: ignore[attr-defined]

    def end_of_pass() -> None:
        # Everything waiting steps, also what a pass that raised left waiting (then added to by this pass, as
        # backward() after a failed backward() adds to .grad): the usual step() would step it too. A nested pass
        # (reentrant checkpointing) ending first steps its outer pass's waiting parameters early: their gradients
        # are complete once their hook ran.
        queued.clear()
        while pending:
            bucket = pending.popitem()[1]
            step(bucket.group, bucket.params)
        adopt_new_parameters()

    def adopt_new_parameters() -> None:
        # listed again only when the optimizer's or the model's parameter count changed (a pass costs no more)
        sizes = (sum(len(g["params"]) for g in opt.param_groups),
                 None if module is None else sum(1 for _ in module.parameters()))
        if sizes != listed["sizes"]:
            first = listed["sizes"] is None
            given_now = candidates()
            unhooked[:] = [p for p in given_now if id(p) not in hooked and p.is_leaf]
            listed["owned"] = {id(q) for g in opt.param_groups for q in g["params"]}
            mine = set(map(id, given_now))
            # given a part of the optimizer's parameters, the rest may be stepped by step(): said only of ones
            # added since
            outside = {id(q): q for g in opt.param_groups for q in g["params"] if id(q) not in mine}
            added = [q for i, q in outside.items() if i not in listed["outside"] and q.requires_grad]
            listed["sizes"], listed["outside"] = sizes, set(outside)
            if added and not first:
                shapes = ", ".join(str(tuple(q.shape)) for q in added)
                warnings.warn(f"step_in_backward: {len(added)} parameter(s) added to the {type(opt).__name__} "
                              f"(shapes {shapes}) are not among the parameters it was given: their gradients "
                              "accumulate unstepped (make the handle again with them, or step them with "
                              "optimizer.step())", RuntimeWarning, stacklevel=2)
        new = [p for p in unhooked if id(p) in listed["owned"] and _can_require_grad(p)
               and StepInBackward.of(p) is None]
        if not new:
            return
        hook_onto(new)
        unhooked[:] = [p for p in unhooked if id(p) not in hooked]
        late: dict[int, _Bucket] = {}  # their gradients of this pass, complete without a hook
        for p in new:
            if p.requires_grad and p.grad is not None:
                group = group_of(p)
                late.setdefault(id(group), _Bucket(group)).params.append(p)
        for bucket in late.values():
            step(bucket.group, bucket.params)

    def hook(p: Tensor) -> None:
        group = group_of(p)
        if group is None:  # no longer the optimizer's (a load_state_dict into other groups): left as usual
            return
        task = torch._C._current_graph_task_id()
        if task not in queued:  # this pass's end steps what waits and looks for new parameters
            # a wrapper made around the optimizer after this call: refused before anything of the pass steps
            _check_unwrapped(opt, " made after step_in_backward")
            torch.autograd.Variable._execution_engine.queue_callback(end_of_pass)
            queued.add(task)
        if p.numel() >= BUCKET_ELEMENTS:
            step(group, [p])
            return
        if id(p) in waiting:  # left waiting by a pass that raised: its gradient now holds this pass's too
            waiting[id(p)] = task
            return
        bucket = pending.setdefault(id(group), _Bucket(group))
        if bucket.elements + p.numel() > BUCKET_ELEMENTS:  # at most BUCKET_ELEMENTS wait
            # what this pass completed steps; what a failed pass left, and this one has not reached yet, waits on
            ready = [q for q in bucket.params if waiting[id(q)] == task]
            left = [q for q in bucket.params if waiting[id(q)] != task]
            if ready:
                step(group, ready)
            bucket = pending[id(group)] = _Bucket(group, left, sum(q.numel() for q in left))
        bucket.params.append(p)
        bucket.elements += p.numel()
        waiting[id(p)] = task

    handles: list[Any] = []
    claimed: list[Tensor] = []

    def hook_onto(new: list[Tensor]) -> None:
        for p in new:
            # torch registers hooks only on tensors that require grad; the hook stays through later freezing and
            # unfreezing, so a frozen one requires grad for the registration alone
            frozen = not p.requires_grad
            if frozen:
                p.requires_grad_(True)
            try:
                handles.append(p.register_post_accumulate_grad_hook(hook))
            finally:
                if frozen:
                    p.requires_grad_(False)
            _CLAIMED[p] = weakref.ref(handle)
            claimed.append(p)
        hooked.update(map(id, new))

    handle = StepInBackward(opt, handles, claimed)
    hook_onto(params)
    adopt_new_parameters()  # lists the unhooked ones
    setattr(opt, ACTIVE, handle)
    return handle
