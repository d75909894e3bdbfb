"""What ``load_state_dict`` checks before it changes anything: that the state dict was saved by this optimizer (not
another optarena optimizer, torch's, or another model's), and that its hyper-parameters pass the same checks as the
constructor's arguments."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch.optim import Optimizer

from ..info import get_optimizer_info, list_optimizers
from . import quant
from .step import INT8

#: Group keys every optarena optimizer has (later versions may add more; an older checkpoint gets their defaults).
MACHINERY = frozenset({"maximize", "foreach", "fused", "state_dtype", "stochastic_rounding", "skip_nonfinite"})
#: Keys that tell no optimizer from another: create_optimizer gives every group a weight decay.
COMMON = frozenset({"lr", "weight_decay"})
#: The state_dict keys optarena's wrappers add (each wrapper class registers its own): an optimizer without that
#: wrapper refuses a state dict holding one, whose wrapper state it would silently drop.
WRAPPER_STATE_KEYS: set[str] = set()
#: The attribute by which a base optimizer knows the wrapper around it (a weak reference, which neither copies nor
#: pickles: a wrapper that is gone no longer counts, and a copied wrapper marks its copied base again).
WRAPPED_BY = "_optarena_wrapped_by"


def check_no_wrapper_state(where: str, state_dict: dict[str, Any]) -> None:
    """Refuse a state dict saved through a wrapper this optimizer does not have."""
    extra = sorted(WRAPPER_STATE_KEYS & set(state_dict))
    if extra:
        raise ValueError(f"{where}: the state dict holds {', '.join(map(repr, extra))} state of a wrapper this "
                         "optimizer does not have: load it into the same chain of wrappers it was saved from")


def check_saved_form(where: str, state_dict: Any, opt: Optimizer | None = None) -> None:
    """Refuse what is no optimizer's state dict (a dict with ``state`` and ``param_groups``), one saved through a
    wrapper this optimizer does not have, and, given ``opt``, one with another number of param groups."""
    if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
        raise ValueError(f"{where}: expected a dict with 'state' and 'param_groups' (an optimizer's state_dict()), "
                         f"got {type(state_dict).__name__}")
    check_no_wrapper_state(where, state_dict)
    if opt is not None and len(state_dict["param_groups"]) != len(opt.param_groups):
        raise ValueError(f"{where}: the state_dict has {len(state_dict['param_groups'])} param groups, this optimizer "
                         f"{len(opt.param_groups)}: it was saved for another model or optimizer")


def check_param_count(where: str, index: int, saved: dict[str, Any], group: dict[str, Any]) -> None:
    """Refuse a saved param group with another number of parameters than ``group``."""
    if len(saved["params"]) != len(group["params"]):
        raise ValueError(f"{where}: param group {index} holds {len(saved['params'])} parameters, this optimizer's "
                         f"{len(group['params'])}: it was saved for another model")


def own_hyperparameters(cls: type) -> set[str]:
    """The hyper-parameters of the algorithm itself: its constructor's arguments but the machinery's."""
    return {name for name in inspect.signature(cls.__init__).parameters if name not in ("self", "params")} - MACHINERY


@functools.cache
def torch_hyperparameters() -> frozenset[str]:
    """The group keys of torch.optim's own optimizers: torch's Adam, AdamW and RAdam keep AdaX's state keys (step,
    exp_avg, exp_avg_sq), and only their ``amsgrad`` or ``capturable`` tell their state dicts from AdaX's.
    ``differentiable`` is left out: torch's base adds it to every optimizer's defaults."""
    classes = [c for c in vars(torch.optim).values()
               if isinstance(c, type) and issubclass(c, Optimizer) and c is not Optimizer]
    return frozenset(set().union(*map(own_hyperparameters, classes)) - {"differentiable"})


def check_state_dict(opt: Optimizer, state_dict: Any) -> None:
    """Raise ``ValueError``, naming the group, parameter and key, unless ``state_dict`` can load into ``opt`` (an
    ``OptarenaOptimizer``: its ``_check_group``, ``_check_machinery``, ``new_state`` and ``_optional_state``)."""
    name = type(opt).__name__
    where = f"{name}.load_state_dict"
    check_saved_form(where, state_dict)
    own = own_hyperparameters(type(opt))
    others = set().union(*(own_hyperparameters(get_optimizer_info(n).cls) for n in list_optimizers("optarena")))
    others = (others | torch_hyperparameters()) - own - COMMON
    groups = state_dict["param_groups"]
    for index, saved in enumerate(groups):
        # strict, also for a key the live group holds: AdaX built from torch Adam's groups has "amsgrad" too, and
        # Adam's state would load as AdaX's (a group given another optimizer's key, "nesterov", cannot reload)
        alien, missing = sorted(set(saved) & others), sorted(own - set(saved))
        if alien or missing:
            found = f"has {', '.join(alien)}" if alien else f"lacks {', '.join(missing)}"
            raise ValueError(f"{where}: param group {index} {found}, which {name}'s groups "
                             f"{'do not have' if alien else 'always have'}: this state_dict was saved from another "
                             "optimizer")
        group = {**opt.defaults, **{k: v for k, v in saved.items() if k != "params"}, "params": []}
        try:
            opt._check_group(group)
            opt._check_machinery(group)
        except ValueError as err:
            raise ValueError(f"{where}: param group {index}: {err}") from None
    for index, (saved_group, group) in enumerate(zip(groups, opt.param_groups)):  # torch pairs them in order
        hyper = {**group, **{k: v for k, v in saved_group.items() if k != "params"}}
        for position, (saved_id, p) in enumerate(zip(saved_group["params"], group["params"])):
            saved = state_dict["state"].get(saved_id)
            if saved:
                _check_param_state(opt, saved, p, hyper, f"{where}: the state of parameter {position} of group "
                                                         f"{index} (shape {tuple(p.shape)})")


def _check_param_state(opt: Optimizer, saved: dict[str, Any], p: torch.Tensor, group: dict[str, Any],
                       where: str) -> None:
    expected = opt.state_template(p, group)
    # what a setting switched on or off mid-run leaves or lacks: the optional buffers (Adafactor's beta1, Amos's
    # momentum) and the block scales (state_dtype changed: the state keeps the dtype it was made in)
    loose = opt._optional_state(group) | {k for k in (*saved, *expected) if k.endswith(quant.SCALE_SUFFIX)}
    if quant.STEP not in opt._init_state(torch.empty_like(p, device="meta"), group):
        loose.add(quant.STEP)  # the step count only 8-bit state keeps (its dither's seed), not the math
    unexpected = sorted(set(saved) - set(expected) - loose)
    missing = sorted(set(expected) - set(saved) - loose)
    missing += [key + quant.SCALE_SUFFIX for key, value in saved.items()  # 8-bit codes need their scales
                if isinstance(value, torch.Tensor) and value.dtype in quant.CODE_DTYPES
                and key + quant.SCALE_SUFFIX not in saved]
    if unexpected or missing:
        found = f"has {', '.join(unexpected)}" if unexpected else f"lacks {', '.join(missing)}"
        raise ValueError(f"{where} {found}; {type(opt).__name__} keeps {', '.join(sorted(expected))}: this state_dict "
                         "was saved from another optimizer")
    for key, value in saved.items():
        if key in expected:
            want = expected[key].shape
        elif key.endswith(quant.SCALE_SUFFIX):  # one scale per block
            want = (-(-p.numel() // quant.BLOCK),)
        else:  # an optional buffer: the parameter's shape
            want = p.shape
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else ()
        if key != "step" and tuple(shape) != tuple(want):
            raise ValueError(f"{where} has {key} of shape {shape}, where {tuple(want)} belongs: this state_dict was "
                             "saved for another model")
    _check_codes(opt, saved, p, group, where)


def _check_codes(opt: Optimizer, saved: dict[str, Any], p: torch.Tensor, group: dict[str, Any], where: str) -> None:
    """Refuse 8-bit buffers that are not what the step wrote: a buffer with block scales holds codes of its 8-bit
    dtype, and its scales are floats. Loaded, codes cast to floats became the moment itself (values up to 127),
    uint8 codes read as int8 made a second moment negative (NaN at the next step), integer scales were truncated."""
    owners = [key.removesuffix(quant.SCALE_SUFFIX) for key in saved if key.endswith(quant.SCALE_SUFFIX)]
    if not owners:
        return
    # the dtypes of the 8-bit state, whatever the group's state_dtype says now (state keeps the dtype it was made
    # in); a tensor too small to quantise asks a larger stand-in, so that codes saved under a lower MIN_QUANTIZED load
    shape = p.shape if quant.quantizes(p) else (quant.MIN_QUANTIZED,)
    codes = {key: value.dtype for key, value in opt.state_template(
        torch.empty(shape, dtype=p.dtype, device="meta"), {**group, "state_dtype": INT8}).items()
        if value.dtype in quant.CODE_DTYPES}
    for key in owners:
        scales, value = saved[key + quant.SCALE_SUFFIX], saved.get(key)
        if key not in codes:
            raise ValueError(f"{where} has {key}{quant.SCALE_SUFFIX}, block scales of no 8-bit buffer "
                             f"{type(opt).__name__} keeps (its 8-bit buffers: {', '.join(sorted(codes)) or 'none'}): "
                             "this state_dict was saved from another optimizer or altered")
        dtype = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
        if dtype != codes[key]:
            raise ValueError(f"{where} has {key} of dtype {dtype} beside its block scales {key}{quant.SCALE_SUFFIX}, "
                             f"where 8-bit codes of dtype {codes[key]} belong: this state_dict was altered (its "
                             "codes cast)")
        if not (isinstance(scales, torch.Tensor) and scales.is_floating_point()):
            dtype = scales.dtype if isinstance(scales, torch.Tensor) else type(scales).__name__
            raise ValueError(f"{where} has {key}{quant.SCALE_SUFFIX} of dtype {dtype}, where floating-point block "
                             "scales belong: this state_dict was altered (its scales cast)")
