"""Lookahead — Zhang, Lucas, Hinton, Ba 2019, "Lookahead Optimizer: k steps forward, 1 step back" (arXiv 1907.08610)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..optim import quant
from ..optim.step import group_by_device_and_dtype, math_dtype
from ..validation import check_choice, check_number, check_positive_int
from ._base import OptimizerWrapper, Setting, chain, eager_under_compile, refuse_schedule_free

PULLBACKS = ("none", "reset", "pullback")

#: The base-state keys treated as momentum by ``pullback``: optarena's and Adam's first moment, SGD's buffer.
MOMENTUM_KEYS = ("exp_avg", "momentum_buffer")


def innermost(optimizer: Optimizer) -> Optimizer:
    """The real optimizer under any number of wrappers (the one that owns the momentum buffers)."""
    return chain(optimizer)[-1]


class Lookahead(OptimizerWrapper):
    """Lookahead: the base optimizer explores k steps ahead with fast weights θ, then slow weights φ move part of
    the way towards them and the fast weights restart from there::

        φ ← θ₀ (the weights the first step starts from)
        every k-th inner step:  φ ← φ + α·(θ − φ);  θ ← φ

    Every parameter syncs, including those without a gradient (they belong to the model). φ is captured when a
    parameter becomes known (construction or ``add_param_group``), so the first cycle already pulls back, and taken
    again at the next ``step()`` (also by ``state_dict()`` and ``slow_weights()`` before it): weights loaded into the
    model after the optimizer was built (``model.load_state_dict(pretrained)``, fine with torch.optim) are θ₀, not
    the ones they replaced. A checkpoint's φ is kept as loaded. φ is kept
    in fp32 for bf16/fp16 parameters (the small per-cycle moves would round away otherwise), else in the param's
    dtype. φ (``state[p]["slow"]``), the inner-step counter and the settings (``k``, ``alpha``, ``pullback``) are
    in the ``state_dict``; as torch.optim's hyper-parameters in ``param_groups``, loading restores the saved settings
    over the constructor's (a checkpoint saved before they were stored keeps the constructor's). Assigning a setting
    later is checked as the constructor's argument is.

    Only calls that reached the real optimizer (``did_update``) count as inner steps: not GradientAccumulation's
    micro-steps between updates, nor a step that ``skip_nonfinite=True`` skipped.

    Args:
        base: the optimizer making the fast steps (any ``torch.optim.Optimizer`` or optarena wrapper).
        k: inner steps per sync.
        alpha: slow-weight step size, in (0, 1]; α = 1 keeps the fast weights (Lookahead off, apart from
            ``pullback``).
        pullback: what happens at each sync to the innermost optimizer's momentum, ``state[p]["exp_avg"]`` or
            ``state[p]["momentum_buffer"]`` (other buffers, e.g. second moments, Adan's ``exp_avg_diff`` and step
            counts, are never touched):

            - ``"none"``: kept as is (the paper's default).
            - ``"reset"``: zeroed in place. Adam-style bias correction keeps its step count, so the momentum
              restarts from zero without being corrected back up.
            - ``"pullback"``: interpolated like the weights, ``m ← α·m + (1 − α)·m_slow; m_slow ← m``, where
              ``m_slow`` (``state[p]["slow_momentum"]``, same dtype as ``m``) is the momentum after the previous
              sync. Before the first sync it is the base's momentum at the time φ was captured, or zeros when the
              base had none yet (a fresh optimizer's momentum starts at zero), so the first cycle pulls back too.

    Evaluate with the slow weights inside ``with lookahead.slow_weights(): ...``.
    """

    state_key = "lookahead"
    counters = ("inner_steps",)

    k = Setting("Inner steps per sync.", check_positive_int, int)
    alpha = Setting("The slow-weight step size, in (0, 1].",
                    functools.partial(check_number, low=0.0, high=1.0, low_open=True), float)
    pullback = Setting("What each sync does to the base's momentum: one of ``PULLBACKS``.",
                       functools.partial(check_choice, choices=PULLBACKS))

    def __init__(self, base: Optimizer, k: int = 5, alpha: float = 0.5, *, pullback: str = "none") -> None:
        self.k = k
        self.alpha = alpha
        self.pullback = pullback
        #: Inner steps since the last sync (0 ≤ inner_steps < k between calls).
        self.inner_steps = 0
        #: Parameters whose φ was captured but not yet stepped (not saved: a checkpoint's φ is kept as saved).
        self._unstepped: set[Tensor] = set()
        refuse_schedule_free("Lookahead", base)
        super().__init__(base)

    def __repr__(self) -> str:
        return f"Lookahead(k={self.k}, alpha={self.alpha}, pullback={self.pullback!r}, base={self.base!r})"

    # -- hooks ----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _init_param_state(self, p: Tensor) -> None:
        state = self.state[p]
        state["slow"] = p.detach().to(dtype=math_dtype(p), copy=True)
        state.pop("slow_momentum", None)  # taken again below, or zeros (absent) as for a fresh parameter
        if self.pullback == "pullback":
            base_state, key = self._momentum(p)
            if key is not None:
                state["slow_momentum"] = quant.decoded_entry(base_state, key).clone()
        self._unstepped.add(p)

    def _recapture_unstepped(self) -> None:
        """φ ← θ again for the parameters not stepped yet: between construction and the first step, θ may have been
        replaced (pretrained weights loaded), and φ captured at construction pulled them back towards the old ones."""
        for p in list(self._unstepped):
            self._init_param_state(p)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_unstepped", set())  # a pickle made before it existed: its φ stays as it was

    def _adopt_new_params(self) -> None:
        """Capture φ for parameters added to the base directly (``lookahead.base.add_param_group``), which the
        wrapper's ``add_param_group`` would have captured: their sync failed with a bare ``KeyError: 'slow'``."""
        if len(self.state) != sum(len(group["params"]) for group in self.param_groups):  # per group: cheap
            for p in self._params():
                if "slow" not in self.state.get(p, {}):
                    self._init_param_state(p)

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        super()._load_extra_state(extra)
        self._unstepped.clear()  # the checkpoint's φ is kept; only parameters it lacks are captured anew
        self._adopt_new_params()

    def state_dict(self) -> dict[str, Any]:
        self._recapture_unstepped()  # a checkpoint saved before the first step holds the θ₀ that step would take
        return super().state_dict()

    # -- the algorithm --------------------------------------------------------------------------------------------
    @eager_under_compile
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One inner step of the base; every k-th one is followed by the slow-weight sync."""
        self._adopt_new_params()
        self._recapture_unstepped()
        loss = self._base_step(closure)
        self._unstepped.clear()  # after the step: one that raised leaves θ₀ to be taken again at the next
        if not self.did_update:  # e.g. GradientAccumulation between updates: not an inner step
            return loss
        self.inner_steps += 1
        if self.inner_steps >= self.k:
            self.inner_steps = 0
            self._sync()
        return loss

    @torch.no_grad()
    def _sync(self) -> None:
        params = self._params()
        for bucket in group_by_device_and_dtype(params):
            fast = [params[i] for i in bucket]
            slow = [self.state[p]["slow"] for p in fast]
            # φ is fp32 for bf16/fp16 params: interpolate against an fp32 copy of θ, then round once into θ
            work = fast if fast[0].dtype == slow[0].dtype else [p.to(slow[0].dtype) for p in fast]
            torch._foreach_lerp_(slow, work, self.alpha)  # φ + α(θ − φ); exactly θ for α = 1
            torch._foreach_copy_(fast, slow)
        if self.pullback == "none":
            return
        for p in params:
            base_state, key = self._momentum(p)
            if key is None:
                continue  # no momentum yet (no gradient so far) or an optimizer without one
            if self.pullback == "reset":
                base_state[key].zero_()  # in place: the base keeps its own tensor (zero codes decode to zero)
                continue
            # 8-bit momentum (state_dtype="int8") is decoded for the interpolation and encoded again
            momentum = quant.decoded_entry(base_state, key)
            state = self.state[p]
            slow_momentum = state.get("slow_momentum")
            if slow_momentum is None:
                momentum.mul_(self.alpha)  # m_slow = 0
            else:
                momentum.lerp_(slow_momentum, 1 - self.alpha)  # α·m + (1 − α)·m_slow
            quant.encode_(base_state, {key: momentum})
            state["slow_momentum"] = momentum.clone()

    def _momentum(self, p: Tensor) -> tuple[dict[str, Any], str | None]:
        """The base's state of ``p`` and the key of its momentum (None: it has none)."""
        state = innermost(self.base).state.get(p, {})
        for key in MOMENTUM_KEYS:
            if isinstance(state.get(key), Tensor):
                return state, key
        return state, None

    # -- evaluation -----------------------------------------------------------------------------------------------
    @contextmanager
    def slow_weights(self) -> Iterator[None]:
        """Temporarily put the slow weights φ into the model's parameters (e.g. for evaluation); the fast weights
        are restored on exit, also when the block raises. Do not step the optimizer inside the block."""
        self._adopt_new_params()
        self._recapture_unstepped()
        params = self._params()
        with torch.no_grad():
            fast = [p.detach().clone() for p in params]
            for p in params:
                p.copy_(self.state[p]["slow"])
        try:
            yield
        finally:
            with torch.no_grad():
                for p, saved in zip(params, fast):
                    p.copy_(saved)
