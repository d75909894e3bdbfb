"""Schedule-free AdamW and SGD (Defazio et al. 2024) from the ``schedulefree`` package, with what it lacks of
torch.optim's conventions checked; stand-ins that name the install command where the package is missing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.optim import Optimizer

from ..validation import check_betas, check_group_now, check_number
from .checkpoint import check_param_count, check_saved_form

SCHEDULEFREE_REQUIREMENT = "schedulefree==1.4.1"


def _missing(name: str) -> type:
    """A stand-in class for an optional package's optimizer: building it raises ImportError with the fix."""
    def __init__(self: Any, params: Any, *args: Any, **kwargs: Any) -> None:
        raise ImportError(f"{name!r} needs the schedulefree package: pip install {SCHEDULEFREE_REQUIREMENT} "
                          "(in optarena's arena extra)")
    return type(f"Missing_{name}", (), {"__init__": __init__})


class _CheckedScheduleFree(Optimizer):
    """What the schedulefree package's optimizers lack of torch.optim's conventions (they check lr and weight decay
    at construction only): each group's values checked when added and before each step, a step in eval() mode
    refused with the fix, and ``load_state_dict`` refusing another optimizer's or model's state (AdamW's loaded
    silently, then the step failed with ``KeyError: 'train_mode'``)."""

    #: The package's class this one checks; :func:`~optarena.info.info_for` finds the entry from it too.
    adapts: type
    state_keys: frozenset[str]
    #: What the package's step reads from a group (its constructor's defaults, less foreach).
    group_keys = frozenset({"lr", "r", "k", "warmup_steps", "train_mode", "weight_sum", "lr_max", "scheduled_lr",
                            "weight_lr_power", "weight_decay"})

    def _check_group(self, group: Mapping[str, Any]) -> None:
        for key in ("lr", "weight_decay", "r", "weight_lr_power") + (("eps",) if "eps" in group else ()):
            check_number(key, group[key])
        if "betas" in group:
            check_betas(group["betas"], 2)
        if "momentum" in group:
            check_number("momentum", group["momentum"], high=1.0, high_open=True)
        if isinstance(group["warmup_steps"], bool) or not isinstance(group["warmup_steps"], int) \
                or group["warmup_steps"] < 0:
            raise ValueError(f"Invalid warmup_steps: {group['warmup_steps']!r} (an integer >= 0)")

    def _checked(self, where: str, group: Mapping[str, Any], index: int) -> None:
        try:
            self._check_group(group)
        except ValueError as err:
            raise ValueError(f"{type(self).__name__}.{where}: param group {index}: {err}") from None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        try:
            self._checked("add_param_group", self.param_groups[-1], len(self.param_groups) - 1)
        except ValueError:
            self.param_groups.pop()
            raise

    def step(self, closure: Any = None) -> Any:
        for group in self.param_groups:
            if not group["train_mode"]:
                raise RuntimeError(f"{type(self).__name__}.step: the optimizer is in eval() mode (the parameters "
                                   "hold the average x); call optimizer.train() before training steps and "
                                   "optimizer.eval() before evaluating or saving (optarena.set_optimizer_mode)")
            check_group_now(self, group, self._check_group, "step")
        # the package's own step, not torch's hook-running wrapper of it, which torch puts on the package's class
        # once a plain instance exists: this class's step is wrapped already (hooks ran twice)
        package_step = self.adapts.step
        if getattr(package_step, "hooked", False):  # torch's mark of its wrapper
            package_step = package_step.__wrapped__
        return package_step(self, closure)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        where = f"{type(self).__name__}.load_state_dict"
        check_saved_form(where, dict(state_dict) if isinstance(state_dict, Mapping) else state_dict, self)
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            missing = sorted(self.group_keys - set(saved))
            if missing:
                raise ValueError(f"{where}: param group {i} lacks {', '.join(missing)}: this state_dict was saved "
                                 f"from another optimizer than {type(self).__name__}")
            check_param_count(where, i, saved, group)
            self._checked("load_state_dict", {**group, **saved}, i)
            for position, (key, p) in enumerate(zip(saved["params"], group["params"])):
                entry = saved_state.get(key) or {}  # train() before a first step leaves empty entries
                at = f"{where}: the state of parameter {position} of group {i} (shape {tuple(p.shape)})"
                if entry and set(entry) != self.state_keys:
                    raise ValueError(f"{at} has {', '.join(sorted(entry))}, where {type(self).__name__} keeps "
                                     f"{', '.join(sorted(self.state_keys))}: it was saved from another optimizer")
                for name, value in entry.items():
                    if isinstance(value, torch.Tensor) and value.shape != p.shape:
                        raise ValueError(f"{at} has {name} of shape {tuple(value.shape)}: this state_dict was "
                                         "saved for another model")
        super().load_state_dict(state_dict)


try:
    import schedulefree

    class AdamWScheduleFree(_CheckedScheduleFree, schedulefree.AdamWScheduleFree):
        adapts, state_keys = schedulefree.AdamWScheduleFree, frozenset({"z", "exp_avg_sq"})
        group_keys = _CheckedScheduleFree.group_keys | {"betas", "eps"}

    class SGDScheduleFree(_CheckedScheduleFree, schedulefree.SGDScheduleFree):
        adapts, state_keys = schedulefree.SGDScheduleFree, frozenset({"z"})
        group_keys = _CheckedScheduleFree.group_keys | {"momentum"}
except ImportError:
    AdamWScheduleFree, SGDScheduleFree = _missing("schedulefree_adamw"), _missing("schedulefree_sgd")
