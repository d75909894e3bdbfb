"""Muon for a model's hidden matrices and AdamW for everything else, as ONE ``torch.optim.Optimizer``.

``torch.optim.Muon`` (Jordan et al. 2024; shipped with torch) takes 2-D parameters only, so every real model pairs
it with AdamW. :class:`MuonAdamW` holds one of each (torch's own classes, not a re-implementation): its
``param_groups`` is the union of both halves' groups (the same dict objects, so an LR scheduler drives both), its
``state_dict`` one torch-style dict over both. Each group carries ``use_muon`` (True: Muon's, False: AdamW's).

Muon's half uses ``adjust_lr_fn="match_rms_adamw"`` (Liu et al. 2025, "Muon is Scalable for LLM Training"): the
update is scaled to AdamW's typical RMS (0.2·√max(A, B)), so AdamW's lr and weight decay carry over and one ``lr``
serves both halves (``adamw_lr`` sets the AdamW half apart).

Momentum: a Muon group keeps ``betas`` too, with ``betas[0]`` standing for its ``momentum`` (the second entry is
unused there), so a scheduler that cycles Adam's beta1 in every group (``OneCycleLR``, ``CyclicLR`` with
``cycle_momentum=True``) drives Muon's momentum as well as AdamW's beta1. ``step()`` reconciles the two keys: the one
changed since the last step wins (``momentum`` when both changed or the group is new or loaded).

Routing (:func:`muon_param_groups`, what ``create_optimizer(model, "muon")`` uses) — to AdamW: every parameter
that is not 2-D (biases, norm weights, scales; conv kernels, see benchmarks/NOTES.md "Muon and conv weights"), the
parameters of ``nn.Embedding``/``nn.EmbeddingBag``, 2-D parameters whose own name contains ``emb``, ``pos`` or
``token`` (positional embeddings, class tokens held as raw parameters), and the output head; to Muon: every other
2-D parameter. The head is ``adamw_params`` when given (parameter names or module prefixes; ``()``: none);
otherwise the ``nn.Linear`` modules named ``head``, ``lm_head``, ``classifier``, ``fc`` or ``output``, or failing
those the last ``nn.Linear`` the model registers. Given parameters without names (a list of tensors) the split is
by shape alone: 2-D to Muon, the rest to AdamW — an embedding table or head there goes to Muon unless passed in a
group with ``use_muon=False``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ..info import OptimizerInfo, Translation, register_optimizer
from ..validation import check_betas, check_choice, check_group_now, check_number, check_positive_int
from .checkpoint import WRAPPED_BY, check_param_count, check_saved_form

MUON_KEY = "use_muon"
HEAD_NAMES = ("head", "lm_head", "classifier", "fc", "output")
EMBEDDING_HINTS = ("emb", "pos", "token")
ADJUST_LR_FNS = ("match_rms_adamw", "original", None)
#: What each half keeps per parameter (AdamW with amsgrad adds max_exp_avg_sq).
HALF_STATE = {True: {"momentum_buffer"}, False: {"step", "exp_avg", "exp_avg_sq"}}


def _names_matching(names: Iterable[str], patterns: Iterable[str]) -> set[str]:
    return {n for n in names if any(n == pat or n.startswith(pat + ".") for pat in patterns)}


def adamw_parameter_names(model: nn.Module, adamw_params: Iterable[str] | str | None = None) -> set[str]:
    """Names of ``model``'s parameters that the routing rule (module docstring) sends to AdamW."""
    named = dict(model.named_parameters())
    to_adamw = {n for n, p in named.items() if p.ndim != 2}
    to_adamw |= {n for n in named if any(h in n.rsplit(".", 1)[-1].lower() for h in EMBEDDING_HINTS)}
    for prefix, module in model.named_modules():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            to_adamw |= _names_matching(named, [prefix] if prefix else list(named))
    if adamw_params is None:
        linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.weight.requires_grad]
        heads = [n for n, _ in linears if n.rsplit(".", 1)[-1] in HEAD_NAMES] or [n for n, _ in linears[-1:]]
        to_adamw |= _names_matching(named, heads)
    else:
        if not isinstance(adamw_params, str | Iterable):
            raise ValueError(f"Invalid adamw_params: {adamw_params!r} (parameter names or module prefixes)")
        patterns = [adamw_params] if isinstance(adamw_params, str) else list(adamw_params)
        for pat in patterns:
            if not isinstance(pat, str) or not _names_matching(named, [pat]):
                raise ValueError(f"Invalid adamw_params: {pat!r} names no parameter or module of "
                                 f"{type(model).__name__} (parameters: {', '.join(list(named)[:8])}...)")
        to_adamw |= _names_matching(named, patterns)
    return to_adamw


def muon_param_groups(model_or_params: nn.Module | Iterable[Any], weight_decay: float,
                      no_weight_decay: Iterable[str] = (), *,
                      adamw_params: Iterable[str] | str | None = None) -> list[Any]:
    """The factory's groups for ``"muon"``: its usual decay groups, each split into a ``use_muon=True`` and a
    ``use_muon=False`` part by the routing rule (given tensors or group dicts without ``use_muon``: by shape; group
    dicts with it pass unchanged). The Muon groups come first (:func:`split_groups`), so each group given is one of
    the optimizer's (what ``ZeroRedundancyOptimizer`` needs of its partitions)."""
    from ..registry import param_groups_for_weight_decay  # the registry imports this package

    groups = param_groups_for_weight_decay(model_or_params, weight_decay, no_weight_decay)
    if isinstance(model_or_params, nn.Module):
        goes_to_muon = muon_router(model_or_params, adamw_params)
    elif adamw_params is not None:
        raise ValueError(f"Invalid adamw_params: {adamw_params!r} (names need a model; given parameters, pass "
                         f"groups with {MUON_KEY}=False instead)")
    else:
        goes_to_muon = lambda p: p.ndim == 2  # noqa: E731
    return split_groups(groups, goes_to_muon)


def muon_router(model: nn.Module, adamw_params: Iterable[str] | str | None = None) -> Callable[[Tensor], bool]:
    """Whether a parameter of ``model`` goes to Muon by the routing rule (the module docstring)."""
    to_adamw = {id(p) for n, p in model.named_parameters() if n in adamw_parameter_names(model, adamw_params)}
    return lambda p: id(p) not in to_adamw


def split_groups(groups: list[Any], goes_to_muon: Callable[[Tensor], bool]) -> list[Any]:
    """Each group without ``use_muon`` split into its Muon and AdamW parts (empty parts dropped); groups with it
    pass unchanged. The Muon groups come first, in :class:`MuonAdamW`'s ``param_groups`` order."""
    halves: dict[bool, list[Any]] = {True: [], False: []}
    for group in groups:
        if MUON_KEY in group:  # the caller's choice (MuonAdamW refuses a wrong one)
            halves[group[MUON_KEY] is True].append(group)
            continue
        params = [group["params"]] if isinstance(group["params"], Tensor) else list(group["params"])
        for use_muon in (True, False):
            part = [p for p in params if goes_to_muon(p) is use_muon]
            if part:
                halves[use_muon].append({**group, "params": part, MUON_KEY: use_muon})
    return halves[True] + halves[False]


class _JointState(MutableMapping):
    """``optimizer.state`` over both halves: reads and writes reach the half that owns the parameter."""

    def __init__(self, owner: MuonAdamW) -> None:
        self._owner = owner

    def _state(self, p: Tensor) -> MutableMapping:
        return self._owner._half_of(p).state

    def __getitem__(self, p: Tensor) -> Any:
        return self._state(p)[p]

    def __setitem__(self, p: Tensor, value: Any) -> None:
        self._state(p)[p] = value

    def __delitem__(self, p: Tensor) -> None:
        del self._state(p)[p]

    def __iter__(self) -> Iterator[Tensor]:
        return (p for half in self._owner._halves() for p in half.state)

    def __len__(self) -> int:
        return sum(len(half.state) for half in self._owner._halves())


class MuonAdamW(Optimizer):
    """``torch.optim.Muon`` on the groups with ``use_muon=True`` (or, without the key, the 2-D parameters) and
    ``torch.optim.AdamW`` on the rest; steps, checkpoints and schedules as one optimizer.

    Args:
        params: tensors or group dicts (a group may set ``use_muon``; see :func:`muon_param_groups`).
        lr: Muon's lr at AdamW scale (``match_rms_adamw``), and AdamW's unless ``adamw_lr`` is given.
        weight_decay: decoupled, both halves (Muon's default, 0.1, as in Liu et al. 2025).
        adamw_lr: the AdamW half's lr (``None``: ``lr``).
        momentum, nesterov, ns_coefficients, ns_steps, muon_eps, adjust_lr_fn: Muon's (torch's defaults but
            ``adjust_lr_fn``).
        betas, eps: AdamW's (a Muon group's ``betas[0]`` mirrors its ``momentum``, see the module docstring).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, weight_decay: float = 0.1, *,
                 adamw_lr: float | None = None, momentum: float = 0.95, nesterov: bool = True,
                 ns_coefficients: tuple[float, float, float] = (3.4445, -4.775, 2.0315), ns_steps: int = 5,
                 muon_eps: float = 1e-7, adjust_lr_fn: str | None = "match_rms_adamw",
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        if isinstance(params, dict | Tensor):  # torch's own message for these; a dict would iterate its keys
            raise TypeError(f"MuonAdamW: params must be an iterable of tensors or of param-group dicts, got "
                            f"{type(params).__name__}")
        for name, value, length in (("ns_coefficients", ns_coefficients, 3), ("betas", betas, 2)):
            if not isinstance(value, tuple | list) or len(value) != length:
                raise ValueError(f"Invalid {name}: {value!r} (expected {length} numbers)")
        defaults = dict(lr=lr, weight_decay=weight_decay, adamw_lr=lr if adamw_lr is None else adamw_lr,
                        momentum=momentum, nesterov=nesterov, ns_coefficients=tuple(ns_coefficients),
                        ns_steps=ns_steps, muon_eps=muon_eps, adjust_lr_fn=adjust_lr_fn,
                        betas=tuple(float(b) if isinstance(b, int) and not isinstance(b, bool) else b for b in betas),
                        eps=eps)
        self.muon: torch.optim.Muon | None = None
        self.adamw: torch.optim.AdamW | None = None
        self._check_defaults(defaults)
        self._ready = False
        super().__init__(params, defaults)  # calls add_param_group per group, before _ready: groups kept aside
        pending, self.param_groups = self.param_groups, []
        self._ready = True
        for group in pending:
            self.add_param_group(group)
        self.state = _JointState(self)  # type: ignore[assignment]

    def _check_defaults(self, d: dict[str, Any]) -> None:
        check_number("lr", d["lr"])  # first: adamw_lr defaults to it, and a bad lr was reported as adamw_lr's
        check_number("adamw_lr", d["adamw_lr"])
        check_number("muon_eps", d["muon_eps"], low_open=True)  # by its argument's name; a group calls it eps
        for use_muon in (True, False):
            self._check_group({**self._half_defaults(use_muon, d), MUON_KEY: use_muon})

    # -- the halves -------------------------------------------------------------------------------------------------
    def _halves(self) -> list[Optimizer]:
        return [h for h in (self.muon, self.adamw) if h is not None]

    def _half_of(self, p: Tensor) -> Optimizer:
        # a lookup table rebuilt when a tensor is missing from it (a new group, a copy of this optimizer): every
        # state lookup goes through here, and a scan per lookup made a pass over all parameters quadratic
        entry = self.__dict__.get("_owners", {}).get(id(p))
        if entry is None or entry[0] is not p:
            self._owners = {id(q): (q, half) for half in self._halves() for g in half.param_groups
                            for q in g["params"]}
            entry = self._owners.get(id(p))
        if entry is None or entry[0] is not p:
            raise KeyError(f"{type(self).__name__}: a tensor of shape {tuple(p.shape)} that it does not optimize")
        return entry[1]

    def _sync(self) -> None:
        self.param_groups = [g for half in self._halves() for g in half.param_groups]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Split ``param_group`` by ``use_muon`` (absent: 2-D to Muon) and add each part to its half."""
        if not self._ready:  # Optimizer.__init__: keep the group as given, without this class's defaults
            self.param_groups.append(param_group)
            return
        group = dict(param_group)
        params = group.pop("params")
        params = [params] if isinstance(params, Tensor) else list(params)
        flag = group.pop(MUON_KEY, None)
        check_choice(MUON_KEY, flag, (True, False, None))
        known = {id(p) for g in self.param_groups for p in g["params"]}
        for p in params:
            if id(p) in known:
                raise ValueError("some parameters appear in more than one parameter group")
            if flag and p.ndim != 2:
                raise ValueError(f"Invalid parameter of shape {tuple(p.shape)} in a group with {MUON_KEY}=True "
                                 "(Muon takes 2-D matrices; conv kernels and vectors go to AdamW)")
        d = self.defaults
        parts = []
        for use_muon in (True, False):
            part = [p for p in params if (p.ndim == 2 if flag is None else flag) is use_muon]
            if not part and flag is not use_muon:  # an empty group given as such stays (ZeRO's partitions)
                continue
            new = {**group, "params": part, MUON_KEY: use_muon}
            try:  # the group's own values, with the half's defaults for the rest, before either half takes it
                self._check_group({**self._half_defaults(use_muon), **new})
            except ValueError as err:
                raise ValueError(f"{type(self).__name__}: a param group ({'Muon' if use_muon else 'AdamW'} "
                                 f"part): {err}") from None
            parts.append((use_muon, new))
        for use_muon, new in parts:
            if use_muon and self.muon is None:
                self.muon = torch.optim.Muon([new], lr=d["lr"], weight_decay=d["weight_decay"],
                                             momentum=d["momentum"], nesterov=d["nesterov"],
                                             ns_coefficients=d["ns_coefficients"], eps=d["muon_eps"],
                                             ns_steps=d["ns_steps"], adjust_lr_fn=d["adjust_lr_fn"])
            elif not use_muon and self.adamw is None:
                self.adamw = torch.optim.AdamW([new], lr=d["adamw_lr"], betas=d["betas"], eps=d["eps"],
                                               weight_decay=d["weight_decay"])
            else:
                (self.muon if use_muon else self.adamw).add_param_group(new)
        self._sync()
        self._sync_momentum()

    def _half_defaults(self, use_muon: bool, d: dict[str, Any] | None = None) -> dict[str, Any]:
        """A half's defaults: its optimizer's, or before it exists those ``d`` (default: this one's) gives it."""
        half = self.muon if use_muon else self.adamw
        if half is not None:
            return dict(half.defaults)
        d = self.defaults if d is None else d
        if use_muon:
            return {k: d[k] for k in ("lr", "weight_decay", "momentum", "nesterov", "ns_coefficients", "ns_steps",
                                      "adjust_lr_fn")} | {"eps": d["muon_eps"], "betas": d["betas"]}
        return {"lr": d["adamw_lr"], "weight_decay": d["weight_decay"], "betas": d["betas"], "eps": d["eps"]}

    @staticmethod
    def _check_group(group: dict[str, Any]) -> None:
        """The constructor's checks of one half's group (torch's Muon and AdamW check their constructors' arguments
        only: a momentum of 2 or a NaN lr set on a group made every weight NaN without a word)."""
        for key in ("lr", "weight_decay"):
            check_number(key, group[key])
        check_number("eps", group["eps"], low_open=True)
        if group.get("maximize", False) is not False:  # torch's Muon has none: only the AdamW half maximised
            raise ValueError(f"Invalid maximize: {group['maximize']!r} (torch's Muon has none; negate the loss)")
        if group[MUON_KEY]:  # betas[0] mirrors momentum (synced before this check), betas[1] unused
            check_number("momentum", group["momentum"], high=1.0, high_open=True)
            check_choice("nesterov", group["nesterov"], (True, False))
            coefficients = group["ns_coefficients"]
            if not isinstance(coefficients, tuple | list) or len(coefficients) != 3:
                raise ValueError(f"Invalid ns_coefficients: {coefficients!r} (expected 3 numbers)")
            for i, c in enumerate(coefficients):
                check_number(f"ns_coefficients[{i}]", c, low=-float("inf"))
            check_positive_int("ns_steps", group["ns_steps"])
            if group["ns_steps"] >= 100:
                raise ValueError(f"Invalid ns_steps: {group['ns_steps']!r} (must be below 100)")
            check_choice("adjust_lr_fn", group["adjust_lr_fn"], ADJUST_LR_FNS)
        else:
            check_betas(group["betas"], 2)

    def _check_groups_now(self, where: str) -> None:
        """Every group's values before a step moves anything: a scheduler or a user may have set them since."""
        for group in self.param_groups:
            check_group_now(self, group, self._check_group, where, f" ({'Muon' if group[MUON_KEY] else 'AdamW'})")

    def _sync_momentum(self) -> None:
        """Make each Muon group's ``betas[0]`` and ``momentum`` agree, keeping the one changed since the last call
        (a beta1-cycling scheduler writes ``betas``; ultralytics' warm-up or a user writes ``momentum``)."""
        seen = self.__dict__.setdefault("_momenta", {})
        for group in self.muon.param_groups if self.muon is not None else ():
            momentum, betas = group["momentum"], group.get("betas") or (None, *self.defaults["betas"][1:])
            record = seen.get(id(group))
            if betas[0] != momentum:
                if record is not None and record[0] is group and record[1] == momentum:  # betas changed
                    momentum = group["momentum"] = betas[0]
                else:
                    group["betas"] = (momentum, *betas[1:])
            seen[id(group)] = (group, momentum)

    # -- stepping -----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._sync_momentum()
        self._check_groups_now("step")
        for half in self._halves():
            half.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for half in self._halves():
            half.zero_grad(set_to_none)

    # -- checkpoints --------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """One torch-style state dict: groups and parameter indices in ``param_groups`` order."""
        self._sync_momentum()
        state: dict[int, Any] = {}
        groups: list[dict[str, Any]] = []
        offset = 0
        for sd in (half.state_dict() for half in self._halves()):
            state.update({offset + i: s for i, s in sd["state"].items()})
            groups += [{**g, "params": [offset + i for i in g["params"]]} for g in sd["param_groups"]]
            offset += sum(len(g["params"]) for g in sd["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Refuses (``ValueError``, before changing anything) a state dict of another optimizer or model."""
        where = f"{type(self).__name__}.load_state_dict"
        check_saved_form(where, state_dict, self)
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if saved.get(MUON_KEY) is not group[MUON_KEY]:
                found = f"{MUON_KEY}={saved[MUON_KEY]!r}" if MUON_KEY in saved else f"no {MUON_KEY}"
                raise ValueError(f"{where}: param group {i} has {found}, where this optimizer's has "
                                 f"{MUON_KEY}={group[MUON_KEY]}: this state_dict was saved from another optimizer")
            check_param_count(where, i, saved, group)
            try:  # keys an older checkpoint lacks keep this optimizer's values, as torch's loading does not
                self._check_group({**group, **{k: v for k, v in saved.items() if k != "params"}})
            except ValueError as err:
                raise ValueError(f"{where}: param group {i}: {err}") from None
            for position, (saved_id, p) in enumerate(zip(saved["params"], group["params"])):
                entry = saved_state.get(saved_id, {})
                self._check_param_state(entry, p, group[MUON_KEY], f"{where}: the state of parameter {position} "
                                                                   f"of group {i} (shape {tuple(p.shape)})")
        first = 0
        for half in self._halves():
            # split by the saved groups' own keys, as torch maps them: integers from state_dict(), parameter names
            # from torch.distributed.checkpoint's set_state_dict
            groups = saved_groups[first:first + len(half.param_groups)]
            keys = [k for g in groups for k in g["params"]]
            half.load_state_dict({"state": {k: saved_state[k] for k in keys if k in saved_state},
                                  "param_groups": groups})
            first += len(half.param_groups)
        self._sync()
        self._sync_momentum()
        self.state = _JointState(self)  # type: ignore[assignment]

    @staticmethod
    def _check_param_state(entry: dict[str, Any], p: Tensor, use_muon: bool, where: str) -> None:
        if not entry:
            return
        expected = HALF_STATE[use_muon]
        unexpected = sorted(set(entry) - expected - ({"max_exp_avg_sq"} if not use_muon else set()))
        missing = sorted(expected - set(entry))
        if unexpected or missing:
            found = f"has {', '.join(unexpected)}" if unexpected else f"lacks {', '.join(missing)}"
            raise ValueError(f"{where} {found}; {'Muon' if use_muon else 'AdamW'} keeps {', '.join(sorted(expected))}"
                             ": this state_dict was saved from another optimizer")
        for key, value in entry.items():
            if key != "step" and isinstance(value, Tensor) and tuple(value.shape) != tuple(p.shape):
                raise ValueError(f"{where} has {key} of shape {tuple(value.shape)}, where {tuple(p.shape)} belongs: "
                                 "this state_dict was saved for another model")

    def __getstate__(self) -> dict[str, Any]:  # deepcopy and pickle keep both halves (not a wrapper's mark)
        return {k: v for k, v in self.__dict__.items() if k != WRAPPED_BY}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(muon={self.muon!r}, adamw={self.adamw!r})"


register_optimizer(OptimizerInfo(
    "muon", MuonAdamW, 1e-3, num_betas=2, eps="number", has_momentum=True, state_bytes_per_param=4,
    source="torch.optim", group_params=muon_param_groups,
    description="torch's Muon on hidden matrices, AdamW on the rest (Jordan et al. 2024; Liu et al. 2025)",
    translation=Translation(
        1.0, (1.0, 1.0), 1.0,
        "Liu et al. 2025 (Moonlight): with the update scaled to AdamW's RMS (adjust_lr_fn='match_rms_adamw') "
        "Muon reuses AdamW's tuned lr and weight decay; the rest of the model is AdamW itself.")))
