"""Layer adaptation: the base picks each parameter's direction, the trust ratio its length (Su Jianlin's "derived
optimizer" no. 2; LAMB — You et al. 2019, arXiv 1904.00962 — when the base is Adam/AdamW)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..optim.step import LOW_PRECISION, group_by_device_and_dtype
from ._base import OptimizerWrapper, chain, clone_params, refuse_closure_only, refuse_schedule_free
from .accumulation import GradientAccumulation
from .lookahead import Lookahead


def default_exclude(p: Tensor) -> bool:
    """LAMB's default: biases and normalization gains (ndim ≤ 1) keep the base's step."""
    return p.ndim <= 1


def trust_ratio_update_(params: list[Tensor], olds: list[Tensor], lrs: list[float]) -> None:
    """``θ ← θ_old + r·Δ`` in place, with ``Δ = θ − θ_old`` (``params`` hold θ, the base's result) and
    ``r = ‖θ_old‖/‖Δ/lr‖``, or 1 when either norm (or lr) is 0. Same device and dtype, fp32 or better.
    ``olds`` are read only. Ratios stay on the device: no host synchronisation."""
    old_norms = torch._foreach_norm(olds)
    torch._foreach_sub_(params, olds)  # params now hold Δ
    step_norms = torch._foreach_norm(params)
    ratios = []
    for old_norm, step_norm, lr in zip(old_norms, step_norms, lrs):
        # ‖θ‖/‖Δ/lr‖ = lr·‖θ‖/‖Δ‖: the adapted step has norm lr·‖θ‖ (LAMB), whatever the base's step size
        usable = (old_norm > 0) & (step_norm > 0) & (lr != 0)
        ratios.append(torch.where(usable, lr * old_norm / step_norm, torch.ones_like(old_norm)))
    torch._foreach_mul_(params, ratios)
    torch._foreach_add_(params, olds)


class LayerAdaptation(OptimizerWrapper):
    """Scale each parameter's step by a trust ratio, so that it moves by ``lr·‖θ‖`` in the base's direction::

        Δ = θ_new − θ_old  (the base's step);   r = ‖θ_old‖ / ‖Δ/lr‖  (1 when either norm is 0)
        θ ← θ_old + r·Δ

    ``Δ/lr`` is the base's update per unit learning rate (as in Su's original); with AdamW (decoupled decay
    ``wd``) it is Adam's ``m̂/(√v̂ + ε) + wd·θ``, so ``LayerAdaptation(AdamW(...))`` is LAMB without a bound on
    ``‖θ‖``. ``lr`` is the parameter's group ``lr``, read at every step (LR schedules apply).

    Parameters in ``exclude`` keep the base's step. Parameters without a gradient are left to the base. The step
    costs one extra copy of the adapted parameters; bf16/fp16 parameters are combined in fp32 and rounded once.

    Args:
        base: any ``torch.optim.Optimizer`` or optarena wrapper.
        exclude: a callable ``param → bool`` (True: leave unscaled) or an iterable of parameters to leave
            unscaled; ``None`` excludes parameters with ``ndim ≤ 1`` (biases, norm gains), as LAMB does.
    """

    state_key = "layer_adaptation"

    def __init__(self, base: Optimizer, exclude: Callable[[Tensor], bool] | Iterable[Tensor] | None = None) -> None:
        refuse_schedule_free("LayerAdaptation", base)
        refuse_closure_only("LayerAdaptation", base, "evaluates the closure once itself, to see which parameters "
                            "have a gradient, and steps the base without it")
        outer = [type(w).__name__ for w in chain(base) if isinstance(w, GradientAccumulation | Lookahead)]
        if outer:
            # its step is chosen by this call's gradients and rescales whatever the base moved: an accumulated
            # update (made when the micro-batch's grads are gone) or Lookahead's pull-back would be scaled wrongly
            raise ValueError(f"LayerAdaptation: the base holds a {outer[0]}; put LayerAdaptation inside it "
                             f"({outer[0]}(LayerAdaptation(...)), as create_optimizer does)")
        if isinstance(exclude, torch.nn.Module) and not isinstance(exclude, torch.nn.ParameterList):
            raise ValueError(f"Invalid exclude: a {type(exclude).__name__} module (pass module.parameters() to leave "
                             "its parameters unscaled, or a callable param → bool)")
        super().__init__(base)
        if exclude is None:
            self._exclude: Callable[[Tensor], bool] = default_exclude
        elif callable(exclude):
            self._exclude = exclude
        elif isinstance(exclude, Iterable) and not isinstance(exclude, Tensor | str):
            excluded = list(exclude)
            for item in excluded:
                if not isinstance(item, Tensor):
                    raise ValueError(f"Invalid exclude: it holds a {type(item).__name__} (expected parameters)")
            self._excluded = frozenset(excluded)  # tensors hash by identity; a copy maps them to the copy's
            self._exclude = self._in_excluded
        else:
            raise ValueError(f"Invalid exclude: {exclude!r} (expected None, a callable param → bool, or an iterable "
                             "of parameters)")

    def _in_excluded(self, p: Tensor) -> bool:
        return p in self._excluded

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step. ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:  # evaluated here: which params have a grad is known only after it
            with torch.enable_grad():
                loss = closure()
        adapted, lrs = [], []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and not self._exclude(p):
                    adapted.append(p)
                    lrs.append(float(group["lr"]))
        olds = clone_params(adapted)
        self.base.step()
        for bucket in group_by_device_and_dtype(adapted):
            params = [adapted[i] for i in bucket]
            bucket_olds, bucket_lrs = [olds[i] for i in bucket], [lrs[i] for i in bucket]
            if params[0].dtype not in LOW_PRECISION:
                trust_ratio_update_(params, bucket_olds, bucket_lrs)
                continue
            for p, old, lr in zip(params, bucket_olds, bucket_lrs):  # one tensor at a time: small fp32 temporaries
                work = p.float()
                trust_ratio_update_([work], [old.float()], [lr])
                p.copy_(work)
        return loss
