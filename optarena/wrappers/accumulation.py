"""Gradient accumulation: one base update per N micro-batches, on their mean gradient (Su Jianlin, 2019)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..optim.step import math_dtype
from ..validation import check_choice, check_positive_int
from ._base import OptimizerWrapper, Setting, eager_under_compile, refuse_closure_only


class GradientAccumulation(OptimizerWrapper):
    """Large-batch updates at small-batch memory: call ``step()`` after every micro-batch as usual
    (``loss.backward(); opt.step(); opt.zero_grad()``); every ``steps``-th call updates with the mean gradient.

    Each call adds every ``p.grad`` that is not None into ``state[p]["grad_sum"]`` (fp32, or fp64 for fp64
    params). On the N-th call the base optimizer steps once on ``grad_sum / N``, cast to the param's dtype, and the
    sums are dropped. A parameter without a gradient in some micro-steps counts zeros there (the mean still divides
    by N); one without a gradient in all N keeps ``p.grad = None`` for the base step, as if it had none.

    Exact, unlike the Keras original, which froze the inner optimizer leakily: between updates neither the base
    nor its state is touched, so its step counts (bias correction) count real updates only. The user's ``p.grad``
    tensors are only read: the base sees the mean through temporarily swapped-in ``p.grad`` objects, and the
    originals are put back afterwards, also if the base raises.

    LR schedulers: call ``scheduler.step()`` only when :attr:`did_update` is True, so that the schedule counts
    updates, not micro-batches::

        opt.step(); opt.zero_grad()
        if opt.did_update:
            scheduler.step()

    Args:
        base: the optimizer making the updates (any ``torch.optim.Optimizer`` or optarena wrapper).
        steps: N, micro-batches per update; ``steps=1`` is the base alone.
        skip_nonfinite: if True, an update whose accumulated gradient holds any inf or NaN is skipped: the sums are
            dropped, the base is untouched, :attr:`did_update` is False and :attr:`skipped_updates` grows. The
            check costs one device synchronisation per update. If False, such gradients reach the base.

    Attributes:
        did_update: whether the last ``step()`` ran the base optimizer.
        micro_step: micro-batches accumulated since the last update (or skipped update), 0 ≤ micro_step < N.
        skipped_updates: updates skipped for non-finite gradients so far.

    ``micro_step``, ``skipped_updates``, the sums and the settings (``steps``, ``skip_nonfinite``) are in the
    ``state_dict``, so a run resumed mid-accumulation continues identically. As torch.optim's hyper-parameters in
    ``param_groups``, loading restores the saved settings over the constructor's (a checkpoint saved before they were
    stored keeps the constructor's); to resume with another ``steps``, assign it after loading, which is refused
    while the cycle already holds that many micro-steps.
    """

    state_key = "gradient_accumulation"
    counters = ("micro_step", "skipped_updates")

    def _fits_cycle(self, steps: int) -> None:
        if steps <= self.micro_step:  # the next call would end the cycle and divide more sums than N by N
            raise ValueError(f"Invalid steps: {steps!r} (this cycle holds {self.micro_step} micro-steps already; "
                             "expected more, or change it when micro_step is 0)")

    steps = Setting("N, micro-batches per update.", check_positive_int, int, now=_fits_cycle)
    skip_nonfinite = Setting("Whether an update whose accumulated gradient is not finite is skipped.",
                             functools.partial(check_choice, choices=(False, True)))

    def __init__(self, base: Optimizer, steps: int, *, skip_nonfinite: bool = False) -> None:
        self._updated = False
        self.micro_step = 0
        self.skipped_updates = 0
        self.steps = steps
        self.skip_nonfinite = skip_nonfinite
        refuse_closure_only("GradientAccumulation", base, "steps it on the mean of gradients already computed")
        super().__init__(base)

    def __repr__(self) -> str:
        return (f"GradientAccumulation(steps={self.steps}, skip_nonfinite={self.skip_nonfinite}, "
                f"base={self.base!r})")

    def _check_extra_state(self, extra: dict[str, Any]) -> None:
        micro_step, steps = int(extra["micro_step"]), int(extra.get("steps", self.steps))
        if micro_step >= steps:
            raise ValueError(f"GradientAccumulation.load_state_dict: the checkpoint was saved after {micro_step} "
                             f"micro-steps of a cycle, which steps={steps} cannot continue")

    # -- the algorithm --------------------------------------------------------------------------------------------
    @eager_under_compile
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Accumulate this micro-batch's gradients; on every N-th call update the base with their mean.
        ``closure`` (if given) is evaluated on every call and its loss returned; the base gets no closure."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._updated = False
        self._accumulate()
        self.micro_step += 1
        if self.micro_step < self.steps:
            return loss
        self.micro_step = 0
        with_sums = [p for p in self._params() if "grad_sum" in self.state[p]]
        sums = [self.state[p].pop("grad_sum") for p in with_sums]  # the cycle ends here, whatever happens next
        if self.skip_nonfinite and sums and not self._all_finite(sums):
            self.skipped_updates += 1
            return loss
        self._step_base_on_mean(with_sums, sums)
        self._updated = True
        return loss

    @property
    def did_update(self) -> bool:
        """Whether the last ``step()`` ran the base optimizer (and the base reached the real one)."""
        return self._updated and super().did_update

    @torch.no_grad()
    def _accumulate(self) -> None:
        for p in self._params():
            grad = p.grad
            if grad is None:
                continue
            if grad.is_sparse:
                raise RuntimeError(f"GradientAccumulation does not support sparse gradients (got one for a "
                                   f"parameter of shape {tuple(p.shape)}); use dense gradients")
            state = self.state[p]
            if "grad_sum" in state:
                state["grad_sum"].add_(grad)
            else:  # first gradient of the cycle: a copy, never the user's tensor
                state["grad_sum"] = grad.detach().to(dtype=math_dtype(p), copy=True)

    @staticmethod
    @torch.no_grad()
    def _all_finite(sums: list[Tensor]) -> bool:
        # one flag per tensor, gathered on one device: a single host sync for the whole update
        flags = [torch.isfinite(s).all() for s in sums]
        return bool(torch.stack([f.to(flags[0].device) for f in flags]).all())

    def _step_base_on_mean(self, params: list[Tensor], sums: list[Tensor]) -> None:
        all_params = self._params()
        originals = [p.grad for p in all_params]
        try:
            with torch.no_grad():
                for p in all_params:
                    p.grad = None
                if sums:  # a cycle without any gradient still steps the base (which then skips every param)
                    torch._foreach_div_(sums, float(self.steps))
                for p, mean in zip(params, sums):
                    p.grad = mean if mean.dtype == p.dtype else mean.to(p.dtype)
            self._base_step(None)
        finally:
            for p, grad in zip(all_params, originals):
                p.grad = grad
