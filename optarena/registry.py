"""One registry of every optimizer optarena can build, with the metadata a factory needs (after timm's).

``create_optimizer(model, "lion", lr=None, weight_decay=0.05)`` builds any registered optimizer by name, puts
biases, normalisation weights and other 1-D parameters (and whatever ``model.no_weight_decay()`` names) in a group
without weight decay, fills in the optimizer's documented default lr, and drops or refuses arguments it does not
take.
"""

from __future__ import annotations

import inspect
import numbers
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from . import optim as _own  # noqa: F401  (importing it registers optarena's own optimizers)
from .info import (
    LOOKAHEAD_PREFIX,
    OptimizerInfo,
    Translation,
    base_optimizer_info,
    get_optimizer_info,
    info_for,
    list_optimizers,
    register_optimizer,
)
from .optim.schedule_free import AdamWScheduleFree, SGDScheduleFree
from .validation import FLOAT32_MAX, check_number
from .wrappers import GradientAccumulation, LayerAdaptation, Lazy, Lookahead

#: Arguments many optimizers share that a sweep may pass to all of them: dropped, with a warning, where unknown.
PORTABLE_ARGS = ("betas", "eps", "momentum")


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(name == pat or name.startswith(pat + ".") for pat in patterns)


def param_groups_for_weight_decay(model_or_params: nn.Module | Iterable[Any], weight_decay: float,
                                  no_weight_decay: Iterable[str] = ()) -> list[dict[str, Any]] | list[Any]:
    """Split parameters into a decayed group and a ``weight_decay=0`` group.

    Not decayed: 1-D and 0-d parameters (biases, normalisation weights, scales), names ending in ``.bias``, and
    names (or module prefixes) listed in ``no_weight_decay`` or returned by ``model.no_weight_decay()``.
    Parameter-group dicts given by the caller are used as given, with ``weight_decay`` where they set none.
    Frozen parameters are left out.
    """
    # checked here, not left to the optimizer: torch.optim checks only its constructor's weight_decay, and the
    # value goes into the groups (a NaN or negative decay was taken, a NaN made every weight NaN)
    check_number("weight_decay", weight_decay, high=FLOAT32_MAX)
    names = [no_weight_decay] if isinstance(no_weight_decay, str) else no_weight_decay  # one name or many
    names = list(names) if isinstance(names, Iterable) else None
    if names is None or not all(isinstance(n, str) for n in names):
        raise ValueError(f"Invalid no_weight_decay: {no_weight_decay!r} (parameter names or module prefixes)")
    if isinstance(model_or_params, nn.Module):
        named = [(n, p) for n, p in model_or_params.named_parameters() if p.requires_grad]
        unmatched = [pat for pat in names if not any(_matches(n, [pat]) for n, _ in named)]
        if unmatched:  # a typo would leave the weight decayed without a word
            raise ValueError(f"Invalid no_weight_decay: {unmatched[0]!r} names no parameter or module of "
                             f"{type(model_or_params).__name__}")
        skip = set(names)
        if hasattr(model_or_params, "no_weight_decay"):
            skip |= set(model_or_params.no_weight_decay())
    else:
        items = list(model_or_params)
        if names:
            raise ValueError(f"Invalid no_weight_decay: {names!r} names parameters, which a list of tensors has "
                             "not: pass the model (an nn.Module)")
        dicts = [isinstance(item, Mapping) for item in items]
        if any(dicts) and not all(dicts):
            raise ValueError(f"Invalid params: {sum(dicts)} param-group dicts among {len(items) - sum(dicts)} tensors "
                             "(give tensors or param-group dicts, not both)")
        if any(dicts):
            return [_given_group(group, weight_decay, i) for i, group in enumerate(items)]
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


def _given_group(group: Mapping[str, Any], weight_decay: float, index: int) -> dict[str, Any]:
    """A caller's param group with the factory's ``weight_decay`` where it sets none (the factory passes no
    weight_decay to the constructor, so the optimizer's own default, AdamW's 0.01 or Muon's 0.1, applied without a
    word), its lr and weight decay checked (torch.optim checks its constructor's arguments only)."""
    for key in ("lr", "weight_decay"):
        if key in group:
            check_number(f"{key} of param group {index}", group[key], high=FLOAT32_MAX)
    return {"weight_decay": weight_decay, **group}


def _filter_kwargs(info: OptimizerInfo, kwargs: dict[str, Any], stacklevel: int = 3) -> dict[str, Any]:
    accepted = set(info.accepted_args())
    out = {}
    for key, value in kwargs.items():
        if key == "eps" and info.eps == "pair" and isinstance(value, numbers.Real):
            # a portable eps is Adam's (added to sqrt(v)); a pair's entries mean something else
            warnings.warn(f"create_optimizer: {info.name!r} takes eps as a pair (eps1, eps2) with another meaning "
                          f"than Adam's; ignoring eps={value!r}", stacklevel=stacklevel)
        elif key in accepted:
            if key == "betas" and value is not None and (not isinstance(value, tuple | list)
                                                         or len(value) != info.num_betas):
                raise ValueError(f"Invalid betas for {info.name!r}: {value!r} (it takes {info.num_betas} betas)")
            out[key] = value
        elif key in PORTABLE_ARGS:
            warnings.warn(f"create_optimizer: {info.name!r} takes no {key}; ignoring {key}={value!r}",
                          stacklevel=stacklevel)
        else:
            raise TypeError(f"create_optimizer: {info.name!r} does not take the argument {key!r}; it takes "
                            f"{', '.join(sorted(accepted))}")
    return out


def create_optimizer(model_or_params: nn.Module | Iterable[Any], name: str, lr: float | None = None,
                     weight_decay: float = 0.0, *, no_weight_decay: Iterable[str] = (),
                     lookahead: bool | Mapping[str, Any] = False, accumulate: int = 1, lazy: bool = False,
                     layer_adaptation: bool | Mapping[str, Any] = False, **kwargs: Any) -> Optimizer:
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
        layer_adaptation: wrap in :class:`~optarena.wrappers.LayerAdaptation` (``"adam"`` with it is LAMB-like):
            ``True`` or a dict of its arguments (``exclude``).
        **kwargs: passed to the optimizer (or to its own grouping: ``adamw_params=`` for ``"muon"``). ``betas``,
            ``eps`` and ``momentum`` are dropped with a warning for an optimizer without them; any other unknown
            argument raises ``TypeError`` listing the accepted ones.

    Wrappers compose inside out as base → Lazy → LayerAdaptation → GradientAccumulation → Lookahead: the adapted
    step sees the accumulated mean gradient, and Lookahead counts real updates, not micro-batches.
    """
    if isinstance(name, str) and name.lower().startswith(LOOKAHEAD_PREFIX):
        name, lookahead = name[len(LOOKAHEAD_PREFIX):], lookahead or True
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise ValueError(f"Invalid accumulate: {accumulate!r} (an integer >= 1 micro-batches per update)")
    for argument, value in (("lookahead", lookahead), ("layer_adaptation", layer_adaptation)):
        if not isinstance(value, bool | Mapping):
            raise ValueError(f"Invalid {argument}: {value!r} (True, False or a dict of the wrapper's arguments)")
    if not isinstance(lazy, bool):
        raise ValueError(f"Invalid lazy: {lazy!r} (True or False)")
    check_arguments(lr, kwargs)
    info = get_optimizer_info(name)
    _check_wrappers(info, lookahead, lazy, layer_adaptation)
    groups, kwargs = groups_and_kwargs(info, model_or_params, weight_decay, no_weight_decay, kwargs)
    optimizer = info.cls(groups, lr=info.default_lr if lr is None else lr, **kwargs)

    if lazy:
        optimizer = Lazy(optimizer)
    if layer_adaptation is not False:  # True, or a dict of its arguments (an empty one too)
        optimizer = LayerAdaptation(optimizer, **({} if layer_adaptation is True else dict(layer_adaptation)))
    if accumulate > 1:
        optimizer = GradientAccumulation(optimizer, steps=accumulate)
    if lookahead is not False:
        optimizer = Lookahead(optimizer, **({} if lookahead is True else dict(lookahead)))
    return optimizer


def check_arguments(lr: float | None, kwargs: Mapping[str, Any]) -> None:
    """What torch.optim's constructors take and then train to NaN weights on: schedule-free's and SGD's a NaN lr,
    SGD's a NaN or infinite momentum or dampening (it checks ``momentum < 0`` only); beyond float32's range, "cannot
    be converted to type float" in ``step()``. optarena's own optimizers check these (more strictly) too."""
    if lr is not None:
        check_number("lr", lr, high=FLOAT32_MAX)
    for key in ("momentum", "dampening"):
        if key in kwargs:
            check_number(key, kwargs[key], high=FLOAT32_MAX)


def groups_and_kwargs(info: OptimizerInfo, model_or_params: nn.Module | Iterable[Any], weight_decay: float,
                      no_weight_decay: Iterable[str], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """The factory's parameter groups and optimizer arguments for ``info`` (what :func:`create_optimizer` passes
    to ``info.cls``; ``ZeroRedundancyOptimizer`` reuses it). Warns from its caller's caller."""
    kwargs = dict(kwargs)
    grouping: dict[str, Any] = {}
    if info.group_params is not None:  # factory options of the optimizer's own grouping (muon's adamw_params)
        options = [n for n, p in inspect.signature(info.group_params).parameters.items() if p.kind is p.KEYWORD_ONLY]
        grouping = {k: kwargs.pop(k) for k in options if k in kwargs}
    kwargs = _filter_kwargs(info, {**info.fixed_kwargs, **kwargs}, stacklevel=4)
    groups = (info.group_params or param_groups_for_weight_decay)(model_or_params, weight_decay, no_weight_decay,
                                                                  **grouping)
    if not any(g["params"] if isinstance(g, dict) else True for g in groups):
        raise ValueError(f"create_optimizer: {type(model_or_params).__name__} has no trainable parameters to "
                         f"optimize with {info.name!r}")
    return groups, kwargs


def _check_wrappers(info: OptimizerInfo, lookahead: Any, lazy: bool, layer_adaptation: Any) -> None:
    wrappers = [n for n, on in (("lookahead", lookahead), ("lazy", lazy), ("layer_adaptation", layer_adaptation))
                if on is not False]
    if info.train_eval_modes and wrappers:
        raise ValueError(f"Invalid {wrappers[0]}: {info.name!r} keeps the parameters at an interpolation of its own "
                         f"sequences (train()/eval() switch them), which {wrappers[0]} would move behind its back; "
                         "only accumulate= wraps it")


def set_optimizer_mode(optimizer: Optimizer, training: bool) -> bool:
    """Call ``train()`` (``training``) or ``eval()`` on every optimizer in the wrapper chain whose registry entry has
    ``train_eval_modes`` (schedule-free: the parameters then hold the training point y, or the evaluation point x);
    returns whether any did. Call it with ``True`` before training steps, ``False`` before evaluating or saving."""
    switched = False
    while optimizer is not None:
        info = info_for(type(optimizer))
        if info is not None and info.train_eval_modes:
            optimizer.train() if training else optimizer.eval()
            switched = True
        optimizer = getattr(optimizer, "base", None)
    return switched


def _register_torch_optimizers() -> None:
    """torch.optim's classic family; optarena's own register in their modules."""
    identity = Translation(1.0, (1.0, 1.0), 1.0, "identity")
    optim = torch.optim
    classic = [
        OptimizerInfo("sgd", optim.SGD, 0.1, has_momentum=True, elementwise=True, ultralytics_name="SGD",
                      description="plain SGD"),
        OptimizerInfo("momentum", optim.SGD, 0.01, has_momentum=True, state_bytes_per_param=4, elementwise=True,
                      fixed_kwargs={"momentum": 0.9}, description="SGD with heavy-ball momentum 0.9"),
        OptimizerInfo("nesterov", optim.SGD, 0.01, has_momentum=True, state_bytes_per_param=4, elementwise=True,
                      fixed_kwargs={"momentum": 0.9, "nesterov": True}, description="SGD with Nesterov momentum 0.9"),
        OptimizerInfo("adagrad", optim.Adagrad, 1e-2, eps="number", state_bytes_per_param=4, elementwise=True,
                      description="sum of squared gradients (Duchi et al. 2011)"),
        OptimizerInfo("adadelta", optim.Adadelta, 1.0, eps="number", state_bytes_per_param=8, elementwise=True,
                      description="unit-corrected AdaGrad (Zeiler 2012)"),
        OptimizerInfo("rmsprop", optim.RMSprop, 1e-3, eps="number", has_momentum=True, state_bytes_per_param=4,
                      elementwise=True, ultralytics_name="RMSProp",
                      description="EMA of squared gradients (Hinton 2012)"),
        OptimizerInfo("adam", optim.Adam, 1e-3, num_betas=2, eps="number", state_bytes_per_param=8,
                      elementwise=True, translation=identity, ultralytics_name="Adam",
                      description="Adam with L2 weight decay (Kingma & Ba 2015)"),
        OptimizerInfo("adamw", optim.AdamW, 1e-3, num_betas=2, eps="number", state_bytes_per_param=8,
                      elementwise=True, translation=identity, step_bytes=28, ultralytics_name="AdamW",
                      description="Adam with decoupled weight decay (Loshchilov & Hutter 2019)"),
        OptimizerInfo("nadam", optim.NAdam, 2e-3, num_betas=2, eps="number", state_bytes_per_param=8,
                      elementwise=True, ultralytics_name="NAdam",
                      description="Adam with Nesterov momentum (Dozat 2016)"),
        OptimizerInfo("radam", optim.RAdam, 1e-3, num_betas=2, eps="number", state_bytes_per_param=8,
                      elementwise=True, ultralytics_name="RAdam", description="rectified Adam (Liu et al. 2020)"),
        OptimizerInfo("adamax", optim.Adamax, 2e-3, num_betas=2, eps="number", state_bytes_per_param=8,
                      elementwise=True, ultralytics_name="Adamax",
                      description="Adam with an infinity norm (Kingma & Ba 2015)"),
    ]
    for info in classic:
        register_optimizer(replace(info, source="torch.optim"))


_register_torch_optimizers()

def _register_schedulefree() -> None:
    """Defazio et al. 2024's schedule-free AdamW and SGD from the ``schedulefree`` package, checked as above
    (optional: without it the names stay registered and building one raises ImportError naming ``pip install
    schedulefree``)."""
    adamw, sgd = AdamWScheduleFree, SGDScheduleFree
    modal = dict(source="schedulefree", train_eval_modes=True, schedule="constant")
    register_optimizer(OptimizerInfo(
        "schedulefree_adamw", adamw, 2.5e-3, num_betas=2, eps="number", state_bytes_per_param=8, **modal,
        description="schedule-free AdamW: averaging replaces the lr decay (Defazio et al. 2024)",
        translation=Translation(
            2.5, (1.0, 10.0), 1.0,
            "Defazio et al. 2024 (schedulefree README): lr 1-10x AdamW's with a schedule (the package default "
            "2.5e-3), the same weight decay, warm-up and no decay; optimizer.train()/eval() around training")))
    register_optimizer(OptimizerInfo(
        "schedulefree_sgd", sgd, 1.0, has_momentum=True, state_bytes_per_param=4, **modal,
        description="schedule-free SGD with momentum 0.9 (Defazio et al. 2024)"))


_register_schedulefree()


class UltralyticsOnly:
    """Stands for an optimizer that only ultralytics' trainer builds (it needs ultralytics' parameter groups)."""

    name = "musgd"

    def __init__(self, params: Any, *args: Any, **kwargs: Any) -> None:
        raise ValueError(f"Invalid optimizer: {self.name!r} is built by ultralytics' trainer only (its Muon groups "
                         "come from ultralytics' build_optimizer); use it on an ultralytics workload")


def _register_ultralytics() -> None:
    """ultralytics' MuSGD (Muon on conv and linear weights, SGD with Nesterov momentum on the rest; what its
    ``optimizer=auto`` picks for long runs) as a roster name for ultralytics workloads: ultralytics builds it."""
    register_optimizer(OptimizerInfo(
        "musgd", UltralyticsOnly, 0.01, has_momentum=True, state_bytes_per_param=4, source="ultralytics",
        ultralytics_name="MuSGD", description="ultralytics' Muon+SGD hybrid (ultralytics workloads only)"))


_register_ultralytics()


def state_bytes(optimizer: Optimizer) -> int:
    """Bytes held in ``optimizer.state`` tensors, measured (not the registry's nominal figure). Nested containers
    count (heavyball keeps one dict per view of a parameter), and a tensor subclass counts its inner tensors
    (torchao's 8-bit state reports a float dtype but holds codes and scales); a tensor held twice counts once. A
    wrapper counts with what it wraps (Lookahead's slow weights and its base's moments)."""
    seen: set[int] = set()

    def size(value: Any) -> int:
        if isinstance(value, Mapping):
            return sum(size(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return sum(size(v) for v in value)
        if not isinstance(value, torch.Tensor) or id(value) in seen:
            return 0
        seen.add(id(value))
        if type(value) is not torch.Tensor and hasattr(value, "__tensor_flatten__"):
            names, _ = value.__tensor_flatten__()
            return sum(size(getattr(value, n)) for n in names)
        return value.numel() * value.element_size()

    total = 0
    while optimizer is not None:
        total += sum(size(s) for s in optimizer.state.values())
        optimizer = getattr(optimizer, "base", None)
    return total


__all__ = ["LOOKAHEAD_PREFIX", "OptimizerInfo", "Translation", "base_optimizer_info", "create_optimizer",
           "get_optimizer_info", "list_optimizers", "param_groups_for_weight_decay", "register_optimizer",
           "set_optimizer_mode", "state_bytes"]
