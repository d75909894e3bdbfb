"""What every wrapper shares: it adds one idea to a base optimizer and forwards the rest (after optax).

- ``param_groups`` and ``defaults`` *are* the base's objects, so an LR scheduler built on the outermost wrapper
  drives the innermost optimizer, and ``add_param_group`` reaches the base. ``param_groups`` is read from the base
  each time: the base's ``load_state_dict`` replaces its list, and a copy taken once would go stale.
- ``train()`` / ``eval()`` reach the base (schedule-free optimizers switch their parameters between two points).
- The wrapper's own per-parameter state lives in ``self.state`` (keyed by parameter, like torch.optim); its
  scalar bookkeeping is returned by ``_extra_state``.
- ``state_dict()`` is the base's state_dict (top-level ``state`` and ``param_groups`` unchanged, so tools that read
  them keep working) plus one key, ``state_key``, holding the wrapper's state indexed by parameter position. It
  loads into a fresh process and nests: ``Lookahead(GradientAccumulation(Lion(...)))`` adds two keys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer


class OptimizerWrapper(Optimizer):
    """Base class of optarena's wrappers. Subclasses implement ``step`` and may override ``_extra_state`` /
    ``_load_extra_state`` (plain Python values and tensors only) and ``_init_param_state``."""

    #: The key under which ``state_dict()`` stores this wrapper's state.
    state_key: ClassVar[str]

    def __init__(self, base: Optimizer) -> None:
        if not isinstance(base, Optimizer):
            raise TypeError(f"{type(self).__name__}: base must be a torch.optim.Optimizer (or an optarena "
                            f"wrapper), got {type(base).__name__}")
        self.base = base
        # Optimizer.__init__ sets up hooks and step patching; the groups it would build are the base's already
        self._initialising = True
        super().__init__([p for g in base.param_groups for p in g["params"]], base.defaults)
        self._initialising = False
        self.defaults = base.defaults
        for p in self._params():
            self._init_param_state(p)

    # -- hooks ----------------------------------------------------------------------------------------------------
    def _init_param_state(self, p: Tensor) -> None:
        """Create the wrapper's state for a parameter as soon as the parameter is known (default: none)."""

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        pass

    # -- forwarding -----------------------------------------------------------------------------------------------
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.base.param_groups

    @param_groups.setter
    def param_groups(self, groups: list[dict[str, Any]]) -> None:
        """Ignored: Optimizer.__init__ and __setstate__ assign lists of their own; the groups are the base's."""

    def train(self) -> None:
        """Forward ``train()`` (schedule-free optimizers: the parameters hold the training point)."""
        _switch(self.base, "train")

    def eval(self) -> None:
        """Forward ``eval()`` (schedule-free optimizers: the parameters hold the evaluation point)."""
        _switch(self.base, "eval")

    @property
    def did_update(self) -> bool:
        """Whether the last ``step()`` reached the real optimizer: False between GradientAccumulation's updates,
        whatever wraps it (``Lookahead(GradientAccumulation(...)).did_update`` is what a scheduler loop checks, and
        what Lookahead counts as its inner steps by)."""
        return getattr(self.base, "did_update", True)

    def _params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self.__dict__.get("_initialising", False):
            return  # Optimizer.__init__ adding the base's own parameters: they are in the base's groups already
        self.base.add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            self._init_param_state(p)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base!r})"

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state_dict = self.base.state_dict()
        if self.state_key in state_dict:
            raise RuntimeError(f"two wrappers store their state under {self.state_key!r}; wrap only once")
        index = {id(p): i for i, p in enumerate(self._params())}
        own = {index[id(p)]: dict(s) for p, s in self.state.items() if id(p) in index}
        state_dict[self.state_key] = {"state": own, **self._extra_state()}
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        if self.state_key not in state_dict:
            raise ValueError(f"{type(self).__name__}.load_state_dict: the checkpoint has no {self.state_key!r} "
                             f"entry; it was not saved from a {type(self).__name__} (keys: {sorted(state_dict)})")
        own = state_dict.pop(self.state_key)
        self.base.load_state_dict(state_dict)
        params = self._params()
        self.state.clear()
        for index, saved in own["state"].items():
            p = params[int(index)]
            self.state[p] = {k: v.to(device=p.device) if isinstance(v, Tensor) else v for k, v in saved.items()}
        self._load_extra_state({k: v for k, v in own.items() if k != "state"})

    def _base_step(self, closure: Callable[[], Any] | None) -> Any:
        return self.base.step(closure) if closure is not None else self.base.step()


@torch.no_grad()
def clone_params(params: list[Tensor]) -> list[Tensor]:
    return [p.detach().clone() for p in params]


def _switch(optimizer: Optimizer, mode: str) -> None:
    method = getattr(optimizer, mode, None)
    if callable(method):
        method()
