"""optarena optimizers in timm's optimizer registry: ``timm.optim.create_optimizer_v2(model, "optarena_lion", ...)``.

``import optarena.integrations.timm`` registers ``optarena_<name>`` for each of optarena's own optimizers (lion,
rlion, adan, adax, adafactor, ademamix, amos; timm has its own "lion", "adan", "adafactor", hence the prefix).
timm's grouping (``filter_bias_and_bn``, ``layer_decay``, ``no_weight_decay``), its ``lookahead_`` prefix and
``timm.optim.list_optimizers()`` then work as for timm's own entries.

timm's ``create_optimizer`` takes the text after the last underscore as the optimizer's name (that is how
"lookahead_adamw" works), which would turn "optarena_lion" into timm's own "lion". So registering also wraps
``OptimizerRegistry.create_optimizer`` to pass an underscore-free alias ("optarena-lion") for these names and
``get_optimizer_info`` to resolve it; every other name goes through untouched. An ``optarena_`` name that is not
registered raises ``ValueError`` listing the registered ones (timm would otherwise build its own optimizer of the
name after the prefix).

``momentum``: timm passes 0.9 to every optimizer that has a momentum unless told otherwise; an optarena optimizer
keeps its own default instead (Amos: 0, no momentum buffer) unless ``momentum=`` is passed. (Registering replaces
the 0.9 default of ``create_optimizer_v2``'s ``momentum`` by a marker that the wrapper turns back into 0.9 for
timm's own optimizers.)
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from timm.optim import _optim_factory
from timm.optim._optim_factory import OptimInfo, OptimizerRegistry

from ..registry import get_optimizer_info, list_optimizers

PREFIX = "optarena_"
#: timm's default momentum for optimizers that have one
TIMM_MOMENTUM = 0.9
#: underscore-free alias timm's name parsing keeps whole → registered name
_ALIASES: dict[str, str] = {}


def timm_name(name: str) -> str:
    """The timm registry name of optarena's ``name``: ``"lion"`` → ``"optarena_lion"``."""
    return PREFIX + get_optimizer_info(name).name


class _Unset:
    """``create_optimizer_v2``'s momentum default once registered: tells "not passed" from an explicit 0.9."""

    def __repr__(self) -> str:
        return str(TIMM_MOMENTUM)


_UNSET = _Unset()


def _alias(opt: str) -> str:
    """``"[lookahead_]optarena_lion"`` → ``"[lookahead_]optarena-lion"``; other names unchanged; an unregistered
    ``optarena_`` name raises."""
    lowered = opt.lower()
    lookahead = lowered.startswith("lookahead_")
    base = lowered[len("lookahead_"):] if lookahead else lowered
    if base.replace("_", "-") not in _ALIASES:
        if base.startswith((PREFIX, PREFIX.replace("_", "-"))):  # timm would build its own optimizer of the rest
            own = base[len(PREFIX):]
            why = ""
            if own in list_optimizers():
                why = f" ({own!r} is in optarena's registry but not optarena's own: build it with create_optimizer)"
            raise ValueError(f"Invalid optimizer: {opt!r}{why}; the optarena names registered in timm are "
                             f"{', '.join(sorted(_ALIASES.values()))}")
        return opt
    return ("lookahead_" if lookahead else "") + base.replace("_", "-")


def _own_momentum(opt: str) -> float | None:
    """The default momentum of the optarena optimizer ``opt`` names (``None``: not one, or it has none)."""
    name = _ALIASES.get(_alias(opt).lower().removeprefix("lookahead_"))
    if name is None:
        return None
    parameter = inspect.signature(get_optimizer_info(name[len(PREFIX):]).cls).parameters.get("momentum")
    return None if parameter is None else parameter.default


def _patch_registry() -> None:
    if getattr(OptimizerRegistry.create_optimizer, "_optarena", False):
        return
    create, get_info = OptimizerRegistry.create_optimizer, OptimizerRegistry.get_optimizer_info

    @functools.wraps(create)
    def create_optimizer(self: OptimizerRegistry, model_or_params: Any, opt: str, *args: Any, **kwargs: Any) -> Any:
        if len(args) < 3 and kwargs.get("momentum", _UNSET) is _UNSET:  # not passed: the optimizer's own default
            own = _own_momentum(opt)
            kwargs["momentum"] = TIMM_MOMENTUM if own is None else own
        return create(self, model_or_params, _alias(opt), *args, **kwargs)

    @functools.wraps(get_info)
    def get_optimizer_info(self: OptimizerRegistry, name: str) -> OptimInfo:
        return get_info(self, _ALIASES.get(name.lower(), name))

    create_optimizer._optarena = True
    OptimizerRegistry.create_optimizer = create_optimizer
    OptimizerRegistry.get_optimizer_info = get_optimizer_info
    v2 = _optim_factory.create_optimizer_v2  # the same function object users imported: patch its default
    with_defaults = [n for n, p in inspect.signature(v2).parameters.items()
                     if p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty]
    defaults = list(v2.__defaults__)
    defaults[with_defaults.index("momentum")] = _UNSET
    v2.__defaults__ = tuple(defaults)


def register_timm_optimizers(registry: OptimizerRegistry | None = None) -> list[str]:
    """Register ``optarena_<name>`` for optarena's own optimizers in ``registry`` (timm's default one); returns
    the registered names. Idempotent."""
    registry = registry or _optim_factory.default_registry
    _patch_registry()
    names = []
    for name in list_optimizers(source="optarena"):
        info = get_optimizer_info(name)
        registry.register(OptimInfo(name=timm_name(name), opt_class=info.cls, description=f"optarena: "
                                    f"{info.description}", has_eps=info.has_eps, has_momentum=info.has_momentum,
                                    has_betas=info.num_betas > 0, num_betas=info.num_betas))
        _ALIASES[timm_name(name).replace("_", "-")] = timm_name(name)
        names.append(timm_name(name))
    return names


register_timm_optimizers()

__all__ = ["register_timm_optimizers", "timm_name"]
