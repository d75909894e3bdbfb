"""optarena optimizers under torch.distributed: ZeRO by registry name, and sharded checkpoints.

The optimizers need nothing special for DDP (every rank steps the same averaged gradient) or for FSDP2's
``fully_shard`` (Lion, RLion, Adan and AdaX are elementwise and run on each rank's shard of a DTensor; Adan's
global-norm clipping reduces the per-shard norms; Adafactor refuses sharded parameters because its factored
moments need whole rows and columns). What this module adds:

* :func:`zero_redundancy_optimizer`: ``ZeroRedundancyOptimizer`` (each rank keeps the state of its share of the
  parameters) built from a registry name, with the factory's default lr and weight-decay groups.
* :func:`save_checkpoint` / :func:`load_checkpoint`: model and optimizer through ``torch.distributed.checkpoint``
  (each rank writes and reads its own shards; loads into any sharding of the same model).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.optim import Optimizer

from ..registry import check_arguments, get_optimizer_info, groups_and_kwargs, set_optimizer_mode
from ..wrappers import OptimizerWrapper


def zero_redundancy_optimizer(model_or_params: nn.Module | Iterable[Any], name: str, lr: float | None = None,
                              weight_decay: float = 0.0, *, no_weight_decay: Iterable[str] = (),
                              **kwargs: Any) -> ZeroRedundancyOptimizer:
    """``ZeroRedundancyOptimizer`` around the registry optimizer ``name`` (e.g. ``"lion"``), with the parameter groups
    and argument handling of :func:`optarena.create_optimizer` (decay kept off biases and norm weights; ``"muon"``
    routes embeddings and the head to AdamW; ``betas``/``eps``/``momentum`` dropped with a warning where the
    optimizer has none). ``kwargs`` go to ``ZeroRedundancyOptimizer`` (``process_group``,
    ``parameters_as_bucket_view``, ``overlap_with_ddp``) and the rest to the optimizer.

    Adan's ``max_grad_norm`` is refused here: each rank would clip by the norm of its own share of the parameters.
    Clip the full gradient before ``step()`` instead (``torch.nn.utils.clip_grad_norm_``).
    """
    info = get_optimizer_info(name)
    if info.train_eval_modes:  # ZeRO copies its own groups (train_mode included) over the optimizer's before each step
        raise ValueError(f"Invalid optimizer: {name!r} under ZeroRedundancyOptimizer ({info.name!r} is schedule-free: "
                         "its train()/eval() would switch only this rank's share of the parameters, and ZeRO resets "
                         "the mode from its own param_groups before every step); use it with DDP")
    check_arguments(lr, kwargs)  # as create_optimizer: torch's SGD takes a NaN lr or momentum
    if kwargs.get("max_grad_norm", 0):
        raise ValueError(f"Invalid max_grad_norm: {kwargs['max_grad_norm']!r} under ZeroRedundancyOptimizer (each "
                         "rank sees only its share of the gradients, so the norm would not be global); use "
                         "torch.nn.utils.clip_grad_norm_ on the model before step()")
    zero_kwargs = {k: kwargs.pop(k) for k in ZERO_ARGS if k in kwargs}
    # each rank builds the optimizer on its share of every group: the groups must be the optimizer's own, one to
    # one (muon's factory groups are, in MuonAdamW's order), or the ranks' group lists would differ
    groups, kwargs = groups_and_kwargs(info, model_or_params, weight_decay, no_weight_decay, kwargs)
    return ZeroRedundancyOptimizer(groups, optimizer_class=info.cls, lr=info.default_lr if lr is None else lr,
                                   **zero_kwargs, **kwargs)


#: ZeroRedundancyOptimizer's own keyword arguments (the others go to the optimizer).
ZERO_ARGS = tuple(n for n, p in inspect.signature(ZeroRedundancyOptimizer).parameters.items()
                  if p.kind is p.POSITIONAL_OR_KEYWORD and n not in ("params", "optimizer_class"))


def save_checkpoint(checkpoint_id: str | os.PathLike, model: nn.Module, optimizer: Optimizer,
                    extra: Mapping[str, Any] | None = None) -> None:
    """Save ``model`` and ``optimizer`` (sharded or not) with ``torch.distributed.checkpoint``; collective: call it
    on every rank. ``extra``: more entries (tensors and plain types), restored by :func:`load_checkpoint`."""
    _refuse_wrappers("save_checkpoint", optimizer)
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state, **(extra or {})}, checkpoint_id=checkpoint_id)


def load_checkpoint(checkpoint_id: str | os.PathLike, model: nn.Module, optimizer: Optimizer,
                    extra: dict[str, Any] | None = None) -> None:
    """Load what :func:`save_checkpoint` wrote into ``model`` and ``optimizer`` (built as before: same optimizer
    class and parameter groups); collective. ``extra`` is filled in place (its values give the types).
    A schedule-free optimizer comes back in the mode it was saved in (its ``train_mode``, with the weights of
    that mode)."""
    _refuse_wrappers("load_checkpoint", optimizer)
    # torch creates missing state with one step at lr 0, which schedule-free optimizers take in train mode only;
    # their train() before any step leaves empty entries that torch would take for state (and then load none)
    if set_optimizer_mode(optimizer, True):
        for p in [p for p, s in optimizer.state.items() if not s]:
            del optimizer.state[p]
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state, **(extra or {})}
    dcp.load(state, checkpoint_id=checkpoint_id)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    if extra is not None:
        extra.update({k: state[k] for k in extra})


def _refuse_wrappers(where: str, optimizer: Optimizer) -> None:
    """torch.distributed.checkpoint keeps an optimizer's ``state`` and ``param_groups`` only (and initialises missing
    state by calling ``step()``, a micro-step of a GradientAccumulation): a wrapper's own state would be lost. ZeRO
    keeps each rank's share in an inner optimizer that ``get_state_dict`` does not see."""
    if isinstance(optimizer, OptimizerWrapper):
        raise TypeError(f"{where}: {type(optimizer).__name__}'s own state ({optimizer.state_key!r}) is not kept by "
                        "torch.distributed.checkpoint, which saves an optimizer's state and param_groups only; "
                        "checkpoint an unwrapped optimizer")
    if isinstance(optimizer, ZeroRedundancyOptimizer):  # its state is only whole after consolidate_state_dict(to=r)
        raise TypeError(f"{where}: ZeroRedundancyOptimizer's state is split by ZeRO's own rule, which "
                        "torch.distributed.checkpoint does not read (it failed with 'Optimizer state has not been "
                        "consolidated on this rank'); call optimizer.consolidate_state_dict(to=0) on every rank, "
                        "save optimizer.state_dict() on rank 0 and restore it with optimizer.load_state_dict()")


__all__ = ["load_checkpoint", "save_checkpoint", "zero_redundancy_optimizer"]
