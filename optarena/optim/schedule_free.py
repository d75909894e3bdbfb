"""Schedule-free AdamW and SGD (Defazio et al. 2024) from the ``schedulefree`` package, with what it lacks of
torch.optim's conventions checked; stand-ins that name the install command where the package is missing."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch.optim import Optimizer

from ..validation import check_betas, check_choice, check_group_now, check_number
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
    silently, then the step failed with ``KeyError: 'train_mode'``). Also: ``p.grad`` left as backward left it (the
    package's step divides and decays it in place; the step works on a copy, one gradient's size for the step's
    duration), ``maximize`` refused (the package ignores it), a group added mid-run in the others' train()/eval()
    mode, and one warning when a scheduler decays the lr (the method is built for warm-up, then a constant lr)."""

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
        check_choice("foreach", group.get("foreach"), (True, False, None))  # the package took any value as a bool
        if group.get("maximize", False) is not False:  # the package's step ignores it: it minimised silently
            raise ValueError(f"Invalid maximize: {group['maximize']!r} ({type(self).__name__} has no maximize; "
                             "minimise the negated objective)")

    def _checked(self, where: str, group: Mapping[str, Any], index: int) -> None:
        try:
            self._check_group(group)
        except ValueError as err:
            raise ValueError(f"{type(self).__name__}.{where}: param group {index}: {err}") from None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self.param_groups and "train_mode" not in param_group:
            # a group added mid-run (layers unfrozen) joins the others' mode: its parameters have no z yet, so they
            # are y and x at once; in the defaults' eval() mode its first step was refused after train()
            param_group = {**param_group, "train_mode": self.param_groups[0]["train_mode"]}
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
        self._warn_if_decaying()
        loss = None
        if closure is not None:  # here, not in the package's step, so that the copies below hold its gradients
            with torch.enable_grad():
                loss = closure()
        # the package's step changes p.grad in place (AdamW divides it by its denominator and adds the decay, SGD
        # adds the decay): it steps on copies, so the caller's gradients stay as backward left them
        given = [(p, p.grad) for group in self.param_groups if self._changes_grads(group)
                 for p in group["params"] if p.grad is not None]
        for p, grad in given:
            p.grad = grad.clone()
        # the package's own step, not torch's hook-running wrapper of it, which torch puts on the package's class
        # once a plain instance exists: this class's step is wrapped already (hooks ran twice)
        package_step = self.adapts.step
        if getattr(package_step, "hooked", False):  # torch's mark of its wrapper
            package_step = package_step.__wrapped__
        try:
            package_step(self, None)
        finally:
            for p, grad in given:
                p.grad = grad
        return loss

    def _changes_grads(self, group: Mapping[str, Any]) -> bool:
        return True

    def _warn_if_decaying(self) -> None:
        """Warn once when a group's lr falls below the peak it reached: schedule-free's averaging stands in for the
        decay, and the package and the paper assume warm-up then a constant lr (an LR scheduler that decays, or
        ReduceLROnPlateau, still runs, with results the method was not designed for)."""
        if self.__dict__.get("_warned_decay"):
            return
        for index, group in enumerate(self.param_groups):
            k, warmup = group["k"], group["warmup_steps"]
            lr = float(group["lr"]) * ((k + 1) / warmup if k < warmup else 1.0)  # what the package's step will use
            if lr < group["lr_max"] * (1 - 1e-6):  # not a chained scheduler's rounding at the end of its warm-up
                self._warned_decay = True
                warnings.warn(f"{type(self).__name__}: param group {index}'s lr fell from its peak "
                              f"{group['lr_max']:.6g} to {lr:.6g}; schedule-free optimizers are built for a "
                              "constant lr after warm-up (their averaging replaces the decay): use warm-up then "
                              "constant (warmup_steps= or an LR scheduler that never decays)", stacklevel=3)
                return

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

        def _changes_grads(self, group: Mapping[str, Any]) -> bool:
            return group["weight_decay"] != 0  # SGD's step adds the decay to p.grad, and does nothing else to it
except ImportError:
    AdamWScheduleFree, SGDScheduleFree = _missing("schedulefree_adamw"), _missing("schedulefree_sgd")
