"""One registry of every optimizer optarena can build, with the metadata a factory needs (after timm's).

``create_optimizer(model, "lion", lr=None, weight_decay=0.05)`` builds any registered optimizer by name, puts
biases, normalisation weights and other 1-D parameters (and whatever ``model.no_weight_decay()`` names) in a group
without weight decay, fills in the optimizer's documented default lr, and drops or refuses arguments it does not
take.
"""

from __future__ import annotations

import difflib
import inspect
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from .optim import Adafactor, Adan, AdaX, Lion, RLion
from .wrappers import GradientAccumulation, LayerAdaptation, Lazy, Lookahead

#: Arguments many optimizers share that a sweep may pass to all of them: dropped, with a warning, where unknown.
PORTABLE_ARGS = ("betas", "eps", "momentum")


@dataclass(frozen=True)
class OptimizerInfo:
    """What the factory and the arena know about one optimizer."""

    name: str
    cls: type[Optimizer]
    default_lr: float
    #: How many betas the ``betas`` argument holds (0: it takes none).
    num_betas: int = 0
    has_eps: bool = False
    has_momentum: bool = False
    #: Bytes of optimizer state per fp32 parameter element (Adafactor: per element of a vector; a matrix costs
    #: only R + C numbers).
    state_bytes_per_param: float = 0.0
    #: Arguments always passed (``momentum=0.9`` for "momentum") unless the caller overrides them.
    fixed_kwargs: Mapping[str, Any] = field(default_factory=dict)
    source: str = "optarena"
    description: str = ""

    def accepted_args(self) -> list[str]:
        """Constructor arguments beyond ``params``."""
        return [n for n in inspect.signature(self.cls).parameters if n != "params"]


_REGISTRY: dict[str, OptimizerInfo] = {}


def register_optimizer(info: OptimizerInfo) -> None:
    """Add (or replace) an optimizer under ``info.name`` (lower case)."""
    _REGISTRY[info.name.lower()] = info


def list_optimizers(source: str | None = None) -> list[str]:
    """Names of the registered optimizers, optionally only those from ``source`` ("optarena" or "torch.optim")."""
    return sorted(n for n, i in _REGISTRY.items() if source is None or i.source == source)


def get_optimizer_info(name: str) -> OptimizerInfo:
    """The registry entry for ``name`` (case-insensitive); an unknown name lists the known ones."""
    key = name.lower() if isinstance(name, str) else name
    if key not in _REGISTRY:
        close = difflib.get_close_matches(str(key), list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown optimizer {name!r}.{hint} Known optimizers: {', '.join(list_optimizers())}")
    return _REGISTRY[key]


def base_optimizer_info(name: str) -> OptimizerInfo:
    """The entry behind a factory name, which may carry the ``lookahead_`` prefix (``"lookahead_lion"``)."""
    return get_optimizer_info(name.lower().removeprefix(LOOKAHEAD_PREFIX) if isinstance(name, str) else name)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(name == pat or name.startswith(pat + ".") for pat in patterns)


def param_groups_for_weight_decay(model_or_params: nn.Module | Iterable[Any], weight_decay: float,
                                  no_weight_decay: Iterable[str] = ()) -> list[dict[str, Any]] | list[Any]:
    """Split parameters into a decayed group and a ``weight_decay=0`` group.

    Not decayed: 1-D and 0-d parameters (biases, normalisation weights, scales), names ending in ``.bias``, and
    names (or module prefixes) listed in ``no_weight_decay`` or returned by ``model.no_weight_decay()``.
    Parameter-group dicts given by the caller are passed through unchanged. Frozen parameters are left out.
    """
    if isinstance(model_or_params, nn.Module):
        skip = set(no_weight_decay)
        if hasattr(model_or_params, "no_weight_decay"):
            skip |= set(model_or_params.no_weight_decay())
        named = [(n, p) for n, p in model_or_params.named_parameters() if p.requires_grad]
    else:
        items = list(model_or_params)
        if not items or isinstance(items[0], dict):
            return items
        skip = set()
        named = [("", p) for p in items if p.requires_grad]
    if weight_decay == 0:
        return [{"params": [p for _, p in named], "weight_decay": 0.0}]
    decay, no_decay = [], []
    for name, p in named:
        exempt = p.ndim <= 1 or name.endswith(".bias") or _matches(name, skip)
        (no_decay if exempt else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _filter_kwargs(info: OptimizerInfo, kwargs: dict[str, Any]) -> dict[str, Any]:
    accepted = set(info.accepted_args())
    out = {}
    for key, value in kwargs.items():
        if key in accepted:
            if key == "betas" and value is not None and len(value) != info.num_betas:
                raise ValueError(f"Invalid betas for {info.name!r}: {value!r} (it takes {info.num_betas} betas)")
            out[key] = value
        elif key in PORTABLE_ARGS:
            warnings.warn(f"create_optimizer: {info.name!r} takes no {key}; ignoring {key}={value!r}",
                          stacklevel=3)
        else:
            raise TypeError(f"create_optimizer: {info.name!r} does not take the argument {key!r}; it takes "
                            f"{', '.join(sorted(accepted))}")
    return out


LOOKAHEAD_PREFIX = "lookahead_"


def create_optimizer(model_or_params: nn.Module | Iterable[Any], name: str, lr: float | None = None,
                     weight_decay: float = 0.0, *, no_weight_decay: Iterable[str] = (),
                     lookahead: bool | Mapping[str, Any] = False, accumulate: int = 1, lazy: bool = False,
                     layer_adaptation: bool = False, **kwargs: Any) -> Optimizer:
    """Build the optimizer ``name`` for a model (or parameters, or parameter groups), optionally wrapped.

    Args:
        model_or_params: an ``nn.Module`` (decay exemptions by name and shape), an iterable of tensors (by shape)
            or of parameter-group dicts (used as given).
        name: a registered name, see :func:`list_optimizers` (case-insensitive); the prefix ``lookahead_``
            (``"lookahead_lion"``) is the same as ``lookahead=True``.
        lr: learning rate; ``None`` uses the optimizer's documented default.
        weight_decay: applied to ≥ 2-D weights only; see :func:`param_groups_for_weight_decay`.
        no_weight_decay: extra parameter names or module prefixes to exempt from decay.
        lookahead: wrap in :class:`~optarena.wrappers.Lookahead`: ``True`` or a dict of its arguments
            (``k``, ``alpha``, ``pullback``).
        accumulate: ``N > 1`` wraps in :class:`~optarena.wrappers.GradientAccumulation` (``steps=N``).
        lazy: wrap in :class:`~optarena.wrappers.Lazy`: embedding rows without gradient stay still.
        layer_adaptation: wrap in :class:`~optarena.wrappers.LayerAdaptation` (``"adam"`` with it is LAMB-like).
        **kwargs: passed to the optimizer. ``betas``, ``eps`` and ``momentum`` are dropped with a warning for an
            optimizer without them; any other unknown argument raises ``TypeError`` listing the accepted ones.

    Wrappers compose inside out as base → Lazy → LayerAdaptation → GradientAccumulation → Lookahead: the adapted
    step sees the accumulated mean gradient, and Lookahead counts real updates, not micro-batches.
    """
    if isinstance(name, str) and name.lower().startswith(LOOKAHEAD_PREFIX):
        name, lookahead = name[len(LOOKAHEAD_PREFIX):], lookahead or True
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise ValueError(f"Invalid accumulate: {accumulate!r} (an integer >= 1 micro-batches per update)")
    info = get_optimizer_info(name)
    kwargs = _filter_kwargs(info, {**info.fixed_kwargs, **kwargs})
    groups = param_groups_for_weight_decay(model_or_params, weight_decay, no_weight_decay)
    optimizer = info.cls(groups, lr=info.default_lr if lr is None else lr, **kwargs)

    if lazy:
        optimizer = Lazy(optimizer)
    if layer_adaptation:
        optimizer = LayerAdaptation(optimizer)
    if accumulate > 1:
        optimizer = GradientAccumulation(optimizer, steps=accumulate)
    if lookahead:
        optimizer = Lookahead(optimizer, **({} if lookahead is True else dict(lookahead)))
    return optimizer


def _register_builtins() -> None:
    own = [
        OptimizerInfo("lion", Lion, 1e-4, num_betas=2, state_bytes_per_param=4,
                      description="sign of interpolated momentum (Chen et al. 2023)"),
        OptimizerInfo("rlion", RLion, 3e-3, num_betas=2, state_bytes_per_param=4,
                      description="Lion with a bounded arctan/tanh map (Rong et al. 2025)"),
        OptimizerInfo("adan", Adan, 1e-3, num_betas=3, has_eps=True, state_bytes_per_param=16,
                      description="adaptive Nesterov momentum (Xie et al. 2022)"),
        OptimizerInfo("adax", AdaX, 1.5e-3, num_betas=2, has_eps=True, state_bytes_per_param=8,
                      description="exponential long-term memory of g² (Li et al. 2020)"),
        OptimizerInfo("adafactor", Adafactor, 1e-2, has_eps=True, state_bytes_per_param=4,
                      description="factored second moment, relative steps (Shazeer & Stern 2018)"),
    ]
    optim = torch.optim
    classic = [
        OptimizerInfo("sgd", optim.SGD, 0.1, has_momentum=True, description="plain SGD"),
        OptimizerInfo("momentum", optim.SGD, 0.01, has_momentum=True, state_bytes_per_param=4,
                      fixed_kwargs={"momentum": 0.9}, description="SGD with heavy-ball momentum 0.9"),
        OptimizerInfo("nesterov", optim.SGD, 0.01, has_momentum=True, state_bytes_per_param=4,
                      fixed_kwargs={"momentum": 0.9, "nesterov": True}, description="SGD with Nesterov momentum 0.9"),
        OptimizerInfo("adagrad", optim.Adagrad, 1e-2, has_eps=True, state_bytes_per_param=4,
                      description="sum of squared gradients (Duchi et al. 2011)"),
        OptimizerInfo("adadelta", optim.Adadelta, 1.0, has_eps=True, state_bytes_per_param=8,
                      description="unit-corrected AdaGrad (Zeiler 2012)"),
        OptimizerInfo("rmsprop", optim.RMSprop, 1e-3, has_eps=True, has_momentum=True, state_bytes_per_param=4,
                      description="EMA of squared gradients (Hinton 2012)"),
        OptimizerInfo("adam", optim.Adam, 1e-3, num_betas=2, has_eps=True, state_bytes_per_param=8,
                      description="Adam with L2 weight decay (Kingma & Ba 2015)"),
        OptimizerInfo("adamw", optim.AdamW, 1e-3, num_betas=2, has_eps=True, state_bytes_per_param=8,
                      description="Adam with decoupled weight decay (Loshchilov & Hutter 2019)"),
        OptimizerInfo("nadam", optim.NAdam, 2e-3, num_betas=2, has_eps=True, state_bytes_per_param=8,
                      description="Adam with Nesterov momentum (Dozat 2016)"),
        OptimizerInfo("radam", optim.RAdam, 1e-3, num_betas=2, has_eps=True, state_bytes_per_param=8,
                      description="rectified Adam (Liu et al. 2020)"),
        OptimizerInfo("adamax", optim.Adamax, 2e-3, num_betas=2, has_eps=True, state_bytes_per_param=8,
                      description="Adam with an infinity norm (Kingma & Ba 2015)"),
    ]
    for info in own:
        register_optimizer(info)
    for info in classic:
        register_optimizer(replace(info, source="torch.optim"))


_register_builtins()


def state_bytes(optimizer: Optimizer) -> int:
    """Bytes held in ``optimizer.state`` tensors, measured (not the registry's nominal figure)."""
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
               if isinstance(v, torch.Tensor))


__all__ = ["OptimizerInfo", "base_optimizer_info", "create_optimizer", "get_optimizer_info", "list_optimizers",
           "param_groups_for_weight_decay", "register_optimizer", "state_bytes"]
