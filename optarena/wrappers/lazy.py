"""Lazy optimization: embedding rows without a gradient stay still (Su Jianlin's "derived optimizer" no. 6).

The original trick masked only the parameter change, so the moments of absent rows still decayed. Here, as in
:class:`torch.optim.SparseAdam`, an absent row is not touched at all: its parameter and every per-element state
buffer keep their exact values, and the base's math runs on the present rows only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..info import get_optimizer_info, info_for, list_optimizers
from ..optim import quant
from ..optim.adan import Adan
from ..optim.base import OptarenaOptimizer
from ._base import OptimizerWrapper

#: Elementwise torch.optim classes Lazy still refuses: Adagrad builds full-size state in its constructor, which the
#: short-lived per-step optimizer of the gathered rows would pay every step (and it takes sparse gradients itself).
UNSUPPORTED: tuple[type[Optimizer], ...] = (torch.optim.Adagrad,)


def nonzero_rows(x: Tensor) -> Tensor:
    """Which rows of a 2-d tensor hold a nonzero (or NaN) entry. Two reductions: on CPU 5× faster than
    ``x.any(dim=1)``, with no full-size temporary."""
    if x.shape[1] == 0:
        return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    if x.is_complex():  # amax/amin have no complex kernels (a bare NotImplementedError); torch's bases take complex
        x = torch.view_as_real(x).flatten(1)
    return x.amax(dim=1).ne(0).logical_or_(x.amin(dim=1).ne(0))


def present_rows(grad: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The indices of the rows of a 2-d gradient that hold a nonzero entry, and those rows' gradient.

    A sparse COO gradient is coalesced first (duplicate indices summed, as ``nn.Embedding(sparse=True)`` needs);
    rows it lists whose values are all zero (e.g. masked-out tokens) count as absent, so a sparse gradient and its
    dense equivalent select the same rows. For a sparse gradient the work is proportional to the rows it lists.
    ``mask`` may pass a dense gradient's ``nonzero_rows(grad)`` when it is already known.
    """
    if grad.layout == torch.strided:
        rows = (nonzero_rows(grad) if mask is None else mask).nonzero().squeeze(1)
        return rows, grad.index_select(0, rows)
    if grad.layout != torch.sparse_coo:
        raise RuntimeError(f"Lazy: unsupported gradient layout {grad.layout} (expected dense or sparse COO)")
    grad = grad.coalesce()  # a new tensor unless already coalesced: p.grad itself is never changed
    indices, values = grad.indices(), grad.values()
    if grad.sparse_dim() == 1:  # hybrid COO (nn.Embedding): one index per row, values (nnz, D)
        rows = indices[0]
    else:  # plain COO: one index pair per element; coalesced, so the pairs are unique
        rows, inverse = torch.unique(indices[0], return_inverse=True)
        values = values.new_zeros((rows.numel(), grad.shape[1])).index_put_((inverse, indices[1]), values)
    keep = nonzero_rows(values)
    if not bool(keep.all()):
        rows, values = rows[keep], values[keep]
    return rows, values


def _is_per_element(value: Any, shape: torch.Size) -> bool:
    return isinstance(value, Tensor) and value.shape == shape


class Lazy(OptimizerWrapper):
    """Lazy updates for 2-d parameters (embeddings): rows whose gradient is all zero, or which a sparse gradient
    does not list, are neither moved nor have their optimizer state changed (no momentum decay, no weight decay).

    For each 2-d parameter with a gradient, the present rows are gathered and the base's own per-algorithm math
    runs on them (optarena bases: ``apply_update``, so ``maximize`` and bf16-via-fp32 behave as in the base;
    torch.optim bases: a short-lived optimizer of the same class over the gathered rows,
    with the group's hyper-parameters and the gathered state); then rows and state are scattered back. A dense
    gradient whose rows are all present goes to the base unchanged, as do parameters that are not 2-d. Sparse
    gradients (``nn.Embedding(sparse=True)``) are supported for any listed base; the step's work is then
    proportional to the rows present, with no full-size temporaries. ``p.grad`` is never modified.

    Step counts stay per parameter, as in :class:`torch.optim.SparseAdam`: they advance on every step where any
    row is present, and a row that returns after absent steps gets the parameter's current bias correction. The
    same holds for every per-parameter scalar of the base (NAdam's ``mu_product``). A row's first appearance after
    the parameter's first step starts from zero state: Adan's previous gradient is then 0 (its first difference is
    the gradient itself) and SGD's momentum buffer ``0·μ + (1 − dampening)·g`` (torch's first-step ``clone(g)``
    only when ``dampening = 0``).

    Args:
        base: an optimizer whose registry entry is elementwise (``OptimizerInfo.elementwise``): optarena ``Lion``,
            ``RLion``, ``Adan`` (without ``max_grad_norm``: a global norm couples all rows), ``AdaX``; torch.optim
            ``Adam``, ``AdamW``, ``SGD``, ``Adadelta``, ``Adamax``, ``NAdam``, ``RAdam``, ``RMSprop`` (not
            ``Adagrad``). Not a wrapper: wrap other wrappers around Lazy.
    """

    state_key = "lazy"

    def __init__(self, base: Optimizer) -> None:
        super().__init__(base)  # raises TypeError for a base that is not an optimizer
        _check_base(base)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step. ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:  # evaluated here: the grads it makes must be split before the base sees them
            with torch.enable_grad():
                loss = closure()
        base = self.base
        # the base's skip_nonfinite check must see the lazy rows too (hidden from it below): it skips the whole step
        if isinstance(base, OptarenaOptimizer) and base.skips_step(
                [p for g in self.param_groups for p in g["params"] if p.grad is not None]):
            return loss
        lazy: list[tuple[dict[str, Any], Tensor, Tensor, Tensor | None]] = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None or p.ndim != 2:
                    continue
                mask = nonzero_rows(p.grad) if p.grad.layout == torch.strided else None
                if mask is not None and bool(mask.all()):
                    continue  # every row present: the base's own (faster) path makes the same step
                lazy.append((group, p, p.grad, mask))
        for _, p, _, _ in lazy:  # hide the lazy params from the base; the same grad objects come back afterwards
            p.grad = None
        try:
            self.base.step()
        finally:
            for _, p, grad, _ in lazy:
                p.grad = grad
        for group, p, grad, mask in lazy:
            rows, grad_rows = present_rows(grad, mask)
            if rows.numel() == 0:
                continue
            param_rows = p.index_select(0, rows)
            if isinstance(self.base, OptarenaOptimizer):
                self._optarena_rows(group, p, rows, param_rows, grad_rows)
            else:
                self._torch_rows(group, p, rows, param_rows, grad_rows)
            p.index_copy_(0, rows, param_rows)
        return loss

    def _optarena_rows(self, group: dict[str, Any], p: Tensor, rows: Tensor, param_rows: Tensor,
                       grad_rows: Tensor) -> None:
        base = self.base
        assert isinstance(base, OptarenaOptimizer)
        state = base.state_for(p, group)
        # 8-bit buffers (state_dtype="int8") are decoded whole, their rows stepped, and encoded again: a block's
        # scale spans rows, so absent rows sharing a block with present ones are re-rounded to its new scale
        full = quant.decoded(state)
        per_element = [k for k, v in full.items() if _is_per_element(v, p.shape)]
        sub_state = {k: v.index_select(0, rows) if k in per_element else v for k, v in full.items()}
        base.apply_update(group, [param_rows], [grad_rows], [sub_state])  # the step count advances in place
        for k, v in sub_state.items():
            if k in per_element:
                full[k].index_copy_(0, rows, v)
            else:
                state[k] = v
        quant.encode_(state, full)

    def _torch_rows(self, group: dict[str, Any], p: Tensor, rows: Tensor, param_rows: Tensor,
                    grad_rows: Tensor) -> None:
        state = self.base.state.get(p, {})  # .get: SGD without momentum keeps no state, so make no entry
        per_element = [k for k, v in state.items() if _is_per_element(v, p.shape)]
        param_rows.grad = grad_rows
        # A fresh optimizer costs ~8 µs; its group is a copy of the real one, so LR schedules reach it.
        shadow = type(self.base)([{**{k: v for k, v in group.items() if k != "params"}, "params": [param_rows]}])
        if state:
            shadow.state[param_rows] = {k: v.index_select(0, rows) if k in per_element else v
                                        for k, v in state.items()}
        # the class's step under torch's hook wrapper: global step hooks (register_optimizer_step_post_hook) saw
        # every shadow as one more optimizer step, of an optimizer the user never made
        getattr(type(shadow).step, "__wrapped__", type(shadow).step)(shadow)
        param_rows.grad = None
        new_state = shadow.state.get(param_rows, {})
        if new_state and not state:
            state = self.base.state[p]
        for k, v in new_state.items():
            if k in per_element or (k not in state and _is_per_element(v, param_rows.shape)):
                if k not in state:  # a buffer new to this parameter (its first step): full size, as the base's
                    state[k] = torch.zeros(p.shape, dtype=v.dtype, device=v.device)
                state[k].index_copy_(0, rows, v)
            else:
                state[k] = v


def _check_base(base: Optimizer) -> None:
    """Refuse, with the reason, a base whose math is not elementwise or that Lazy cannot run on gathered rows."""
    name = type(base).__name__
    if isinstance(base, OptimizerWrapper):
        raise ValueError(f"Lazy: the base must be an optimizer, not the wrapper {name}: Lazy runs the base's own "
                         "math on the present rows; put other wrappers around Lazy instead")
    info = info_for(type(base))
    # a subclass of a torch.optim class may change its math; one of optarena's keeps the contract of _update
    known = info is not None and (isinstance(base, OptarenaOptimizer) or info.cls is type(base))
    if not known or not info.elementwise or isinstance(base, UNSUPPORTED):
        if not known:
            why = f"{name} is not elementwise as far as optarena's registry knows"
        elif not info.elementwise:
            why = f"{name} is not elementwise (its update mixes elements of a tensor, e.g. over rows and columns)"
        else:
            why = f"Lazy cannot run {name} on gathered rows"
        infos = [get_optimizer_info(n) for n in list_optimizers()]
        supported = sorted({i.cls.__name__ for i in infos if i.elementwise and not issubclass(i.cls, UNSUPPORTED)})
        raise ValueError(f"Lazy: unsupported base {name}: {why} (supported: {', '.join(supported)})")
    if isinstance(base, Adan) and base.defaults["max_grad_norm"] > 0:
        raise ValueError(f"Lazy: Adan with max_grad_norm={base.defaults['max_grad_norm']!r} is not elementwise: "
                         "the clipping norm is global over all rows; use max_grad_norm=0")
