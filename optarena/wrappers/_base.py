"""What every wrapper shares: it adds one idea to a base optimizer and forwards the rest (after optax).

- ``param_groups`` and ``defaults`` *are* the base's objects, so an LR scheduler built on the outermost wrapper
  drives the innermost optimizer, and ``add_param_group`` reaches the base. ``param_groups`` is read from the base
  each time: the base's ``load_state_dict`` replaces its list, and a copy taken once would go stale.
- ``train()`` / ``eval()`` reach the base (schedule-free optimizers switch their parameters between two points).
- The wrapper's own per-parameter state lives in ``self.state`` (keyed by parameter, like torch.optim); its
  counters are named in ``counters`` and its settings are ``Setting``s (both saved with it, checked on load).
- ``state_dict()`` is the base's state_dict (top-level ``state`` and ``param_groups`` unchanged, so tools that read
  them keep working) plus one key, ``state_key``, holding the wrapper's state indexed by parameter position. It
  loads into a fresh process and nests: ``Lookahead(GradientAccumulation(Lion(...)))`` adds two keys. The
  ``state_dict`` / ``load_state_dict`` hooks registered on a wrapper run as torch.optim's do.
- A public attribute of an inner wrapper or the base is read and set through the outer ones (``opt.steps = 8``).
"""

from __future__ import annotations

import functools
import inspect
import numbers
import warnings
import weakref
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..info import info_for
from ..optim.checkpoint import WRAPPED_BY, WRAPPER_STATE_KEYS, check_no_wrapper_state


class Setting:
    """A wrapper's checked setting (``Lookahead.k``), declared once: assigning it runs ``check(name, value)`` (one of
    ``validation``'s) and stores ``convert(value)`` as ``_<name>``; ``state_dict()`` saves it, and ``load_state_dict``
    checks the saved value with the same ``check`` before restoring it. ``now(wrapper, value)`` runs on assignment
    only: it checks against the wrapper's current state, which a checkpoint replaces (GradientAccumulation's cycle)."""

    def __init__(self, doc: str, check: Callable[[str, Any], None], convert: Callable[[Any], Any] = lambda v: v,
                 now: Callable[[Any, Any], None] | None = None) -> None:
        self.__doc__, self.check, self.convert, self.now = doc, check, convert, now

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.slot = name, f"_{name}"

    def __get__(self, wrapper: Any, owner: type | None = None) -> Any:
        return self if wrapper is None else getattr(wrapper, self.slot)

    def __set__(self, wrapper: Any, value: Any) -> None:
        self.check(self.name, value)
        if self.now is not None:
            self.now(wrapper, value)
        wrapper.__dict__[self.slot] = self.convert(value)


def settings(wrapper: Any) -> list[str]:
    """The names of ``wrapper``'s settings, in the order its class declares them."""
    names = dict.fromkeys(name for cls in reversed(type(wrapper).__mro__) for name, v in vars(cls).items()
                          if isinstance(v, Setting))
    # once each, and only where the class attribute that wins is still a Setting (a subclass may replace one)
    return [name for name in names if isinstance(getattr(type(wrapper), name, None), Setting)]


class OptimizerWrapper(Optimizer):
    """Base class of optarena's wrappers. Subclasses implement ``step`` and may override ``_extra_state`` /
    ``_load_extra_state`` (plain Python values and tensors only) and ``_init_param_state``."""

    #: The key under which ``state_dict()`` stores this wrapper's state.
    state_key: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "state_key" in cls.__dict__:
            WRAPPER_STATE_KEYS.add(cls.state_key)

    def __init__(self, base: Optimizer) -> None:
        if not isinstance(base, Optimizer):
            raise TypeError(f"{type(self).__name__}: base must be a torch.optim.Optimizer (or an optarena "
                            f"wrapper), got {type(base).__name__}")
        for inner in chain(base)[:-1]:
            if inner.state_key == self.state_key:
                raise ValueError(f"{type(self).__name__}: the base is already wrapped in a {type(inner).__name__}; "
                                 "wrap once (its arguments set how much)")
        self.base = base
        mark_wrapped(base, self)
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

    #: The wrapper's counters (integers ≥ 0: ``inner_steps``, ``micro_step``): saved in the state dict beside its
    #: settings, checked before anything loads, restored on load.
    counters: ClassVar[tuple[str, ...]] = ()

    def _extra_state(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.counters}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        for name in self.counters:
            setattr(self, name, int(extra[name]))

    # -- forwarding -----------------------------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        """A public attribute the wrapper lacks is its base's (``micro_step`` through a Lookahead): after optax, a
        wrapper adds one idea and forwards the rest. Private ones are not forwarded (torch's machinery probes them)."""
        base = self.__dict__.get("base")
        # a property of the wrapper that raised AttributeError lands here too: that error is its own, not the base's
        if base is not None and not name.startswith("_") and not hasattr(type(self), name):
            try:
                return getattr(base, name)
            except AttributeError:
                pass
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        """A public attribute that an inner wrapper or the base holds is set there, as it is read there
        (``opt.steps = 8`` on a Lookahead around a GradientAccumulation): set on the outer object, it was ignored
        while reading back the new value. Only once constructed: torch's ``__init__`` sets ``state`` and ``defaults``
        of the wrapper's own."""
        base = self.__dict__.get("base")
        if (base is not None and not name.startswith("_") and not self.__dict__.get("_initialising", True)
                and name not in self.__dict__ and not hasattr(type(self), name) and hasattr(base, name)):
            setattr(base, name, value)
            return
        super().__setattr__(name, value)

    def __getstate__(self) -> dict[str, Any]:
        """Everything, the base included (torch's keeps defaults, state and groups: a copy or a pickle without its
        base failed at its first step), but what torch leaves out too: the hooks, and the ``step`` an LR scheduler
        patched onto this object (it would step the original)."""
        return {k: v for k, v in self.__dict__.items()
                if k not in ("step", "_opt_called", WRAPPED_BY) and not k.startswith("_optimizer_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a pickle made before a setting (GradientAccumulation.steps, Lookahead.k) became a checked property holds
        # it under its public name, which the property would hide
        for name in [k for k in state if isinstance(getattr(type(self), k, None), property | Setting)]:
            state[f"_{name}"] = state.pop(name)
        had = "differentiable" in state["defaults"]
        super().__setstate__(state)  # new hook dicts; it also adds "differentiable" to the defaults it shares
        if not had:
            self.defaults.pop("differentiable", None)
        mark_wrapped(self.base, self)

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
        # the hooks registered on this object run as torch.optim's do (they were ignored: only the base's ran)
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        state_dict = self.base.state_dict()
        index = {id(p): i for i, p in enumerate(self._params())}
        own = {index[id(p)]: dict(s) for p, s in self.state.items() if id(p) in index}
        own_settings = {name: getattr(self, name) for name in settings(self)}
        state_dict[self.state_key] = {"state": own, **self._extra_state(), **own_settings}
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load the base's state and this wrapper's, after checking this wrapper's against the parameters (and,
        at the innermost wrapper, that no other wrapper's state is left over): a refused checkpoint changes nothing
        here."""
        where = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, Mapping):
            raise ValueError(f"{where}: expected a dict (an optimizer's state_dict()), got {type(state_dict).__name__}")
        state_dict = dict(state_dict)
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = dict(result)
        if self.state_key not in state_dict:
            raise ValueError(f"{where}: the checkpoint has no {self.state_key!r} entry; it was not saved from a "
                             f"{type(self).__name__} (keys: {sorted(state_dict)})")
        own = state_dict.pop(self.state_key)
        if not isinstance(self.base, OptimizerWrapper):
            check_no_wrapper_state(where, state_dict)
        params = self._params()
        per_param = self._checked_param_state(where, own, params)
        extra = {k: v for k, v in own.items() if k != "state"}
        self._check_saved_counters(where, extra)
        self._check_saved_settings(extra)
        self._check_extra_state(extra)
        self.base.load_state_dict(state_dict)
        self.state.clear()
        for p, saved in per_param.items():
            self.state[p] = {k: v.to(device=p.device) if isinstance(v, Tensor) else v for k, v in saved.items()}
        self._load_extra_state(extra)
        restore_settings(self, extra)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _checked_param_state(self, where: str, own: Any, params: list[Tensor]) -> dict[Tensor, dict[str, Any]]:
        """The saved per-parameter state by parameter; every tensor in it must have its parameter's shape."""
        if not isinstance(own, dict) or not isinstance(own.get("state"), dict):
            raise ValueError(f"{where}: its {self.state_key!r} entry has no per-parameter 'state' dict")
        out = {}
        for position, saved in own["state"].items():
            index = int(position) if isinstance(position, int) or str(position).isdigit() else -1
            if not 0 <= index < len(params):
                raise ValueError(f"{where}: saved state for parameter {position!r}, but this optimizer has "
                                 f"{len(params)} parameters: it was saved for another model")
            p = params[index]
            for key, value in saved.items():
                if isinstance(value, Tensor) and value.shape != p.shape:
                    raise ValueError(f"{where}: {key!r} of parameter {index} has shape {tuple(value.shape)}, the "
                                     f"parameter {tuple(p.shape)}: it was saved for another model")
            out[p] = saved
        return out

    def _check_extra_state(self, extra: dict[str, Any]) -> None:
        """Raise ``ValueError`` if the wrapper's scalar state cannot load (before anything is loaded), beyond the
        checks of each counter and setting."""

    def _check_saved_counters(self, where: str, extra: dict[str, Any]) -> None:
        missing = sorted(set(self.counters) - set(extra))
        if missing:
            raise ValueError(f"{where}: its entry lacks {', '.join(missing)}")
        for name in self.counters:
            value = extra[name]
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"{where}: invalid {name} {value!r} in the checkpoint (expected an integer >= 0)")

    def _check_saved_settings(self, extra: dict[str, Any]) -> None:
        """Check the settings a checkpoint saved as assigning them does (a checkpoint saved before the settings were
        stored has none: the constructor's hold)."""
        try:
            for name in settings(self):
                if name in extra:
                    getattr(type(self), name).check(name, extra[name])
        except ValueError as err:
            raise ValueError(f"{type(self).__name__}.load_state_dict: the checkpoint's setting: {err}") from None

    def _base_step(self, closure: Callable[[], Any] | None) -> Any:
        return self.base.step(closure) if closure is not None else self.base.step()


def eager_under_compile(step: Callable[..., Any]) -> Callable[..., Any]:
    """``step`` (a wrapper's) run eagerly inside ``torch.compile(opt.step)``, the base's step still compiled: traced,
    the wrappers' counters lost their increments (GradientAccumulation never stepped its base, silently). Dynamo's
    ``disable`` is made on the first compiled call, not at import: importing it costs ~1.3 s."""
    disabled: list[Callable[..., Any]] = []

    @functools.wraps(step)
    def run(self: Any, closure: Callable[[], Any] | None = None) -> Any:
        if torch.compiler.is_compiling():
            if not disabled:
                disabled.append(torch.compiler.disable(step, recursive=False))
            return disabled[0](self, closure)
        return step(self, closure)

    return run


def restore_settings(wrapper: Optimizer, saved: dict[str, Any]) -> None:
    """Set the settings that a checkpoint saved, as torch.optim restores a group's hyper-parameters; where one
    replaces a different constructor value, say so (a run resumed with half the accumulation on twice the GPUs
    would otherwise keep the checkpoint's silently). A checkpoint without them keeps the constructor's."""
    names = settings(wrapper)
    changed = [f"{name}={saved[name]!r} (constructed with {getattr(wrapper, name)!r})" for name in names
               if name in saved and saved[name] != getattr(wrapper, name)]
    if changed:
        warnings.warn(f"{type(wrapper).__name__}.load_state_dict: the checkpoint's {', '.join(changed)} replace the "
                      "constructor's; set them after loading to change them", UserWarning, stacklevel=3)
    for name in names:
        if name in saved:
            setattr(wrapper, name, saved[name])


def mark_wrapped(base: Optimizer, wrapper: Optimizer) -> None:
    base.__dict__[WRAPPED_BY] = weakref.ref(wrapper)  # not in torch's __getstate__: a copy is marked by its wrapper


def wrapper_of(optimizer: Optimizer) -> Optimizer | None:
    """The live wrapper whose base ``optimizer`` is, if any."""
    ref = optimizer.__dict__.get(WRAPPED_BY)
    return None if ref is None else ref()


def chain(optimizer: Optimizer) -> list[Optimizer]:
    """``optimizer`` and every base under it, outermost first."""
    out = [optimizer]
    while isinstance(out[-1], OptimizerWrapper):
        out.append(out[-1].base)
    return out


def refuse_schedule_free(wrapper: str, base: Optimizer) -> None:
    """Refuse a schedule-free base: it keeps the parameters at an interpolation of its own sequences, which a
    wrapper moving them (Lookahead's pull-back, LayerAdaptation's rescaled step) would change behind its back."""
    inner = chain(base)[-1]
    info = info_for(type(inner))
    if info is not None and info.train_eval_modes:
        raise ValueError(f"{wrapper}: {type(inner).__name__} keeps the parameters at an interpolation of its own "
                         f"sequences (train()/eval() switch them), which {wrapper} would move behind its back; only "
                         "GradientAccumulation wraps it")


def refuse_closure_only(wrapper: str, base: Optimizer, why: str) -> None:
    """Refuse a base whose ``step`` cannot run without a closure (``LBFGS`` re-evaluates the loss within a step):
    this wrapper steps it without one, which failed inside the base's step with a bare ``TypeError``."""
    inner = chain(base)[-1]
    if not isinstance(inner, Optimizer):
        return  # OptimizerWrapper.__init__ names it
    closure = inspect.signature(type(inner).step).parameters.get("closure")
    if closure is not None and closure.default is inspect.Parameter.empty:
        raise ValueError(f"{wrapper}: {type(inner).__name__}.step needs a closure, which it re-evaluates during the "
                         f"step; {wrapper} {why}, so it cannot give one")


@torch.no_grad()
def clone_params(params: list[Tensor]) -> list[Tensor]:
    return [p.detach().clone() for p in params]


def _switch(optimizer: Optimizer, mode: str) -> None:
    method = getattr(optimizer, mode, None)
    if callable(method):
        method()
