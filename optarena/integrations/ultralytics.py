"""optarena optimizers in ultralytics (YOLOv8 and later) without editing ultralytics' ``trainer.py``.

``import optarena.integrations.ultralytics`` and then ``YOLO("yolov8n.yaml").train(..., optimizer="Lion",
lr0=1e-4)``: any optarena registry name ultralytics does not know itself ("Lion", "RLion", "Adan", "AdaX",
"Adafactor", "lookahead_lion", "momentum", "adagrad", ...) is built by :func:`optarena.create_optimizer` over
ultralytics' own parameter groups (conv/linear weights with decay; norm weights and biases without). Names
ultralytics knows (SGD, Adam, AdamW, ..., auto) keep ultralytics' behaviour. Importing patches
``BaseTrainer.build_optimizer`` and ``BaseTrainer.save_model`` (:func:`unpatch` undoes it); passing
``trainer=OptarenaDetectionTrainer`` to ``YOLO.train`` does the same for one run without relying on the patch.

``momentum``: ultralytics' warm-up ramps ``momentum`` from ``warmup_momentum`` to ``args.momentum`` in every parameter
group that has the key. Where ``momentum`` is the heavy-ball coefficient that ultralytics' own SGD, RMSProp and MuSGD
take from ``args.momentum`` (torch's SGD: "momentum" and "nesterov", replacing their registry 0.9; Muon's half of
"muon"), it is ``args.momentum``, warm-up included. ``lookahead_`` + a name ultralytics builds wraps the optimizer
ultralytics builds (SGD: ``args.momentum`` with Nesterov; RMSProp: ``args.momentum``; Adam family: ``betas=
(args.momentum, 0.999)``). Every other optimizer keeps its own defaults: Amos' optional momentum (0) is restored
before each step and ``state_dict()``, so the warm-up cannot switch it on.

"muon": ultralytics' groups are split by Muon's routing rule (2-D weights to Muon except the head and embeddings;
conv kernels, norm weights and biases to AdamW). Detection models have no 2-D weights: there it is AdamW, with a
warning.

Amos decays its lr itself (``OptimizerInfo.schedule`` "constant"): ultralytics' decay to ``lr0 * lrf`` would come on
top, so with ultralytics' default ``lrf=0.01`` it gets ``lrf=1.0`` (warm-up, then constant) with a warning, and any
other ``lrf`` below 1 is refused.

Schedule-free optimizers are refused: ultralytics validates and saves its EMA of the weights (``ModelEMA``), which
would average schedule-free's training point y, and calls no ``optimizer.train()``/``eval()``.

Checkpoints: ultralytics rounds float32 optimizer state to fp16 in ``last.pt`` except the keys ``step``,
``exp_avg``, ``exp_avg_sq`` and ``square_avg``. Adan's ``exp_avg_diff``/``prev_grad`` and Adafactor's factored
second moments (means of g², often below fp16's smallest subnormal 6e-8) would lose precision or flush to zero,
so for optarena optimizers the state is saved as is: fp32 moments and float64 step counts resume exactly.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Any

from torch import nn, optim
from torch.optim import Optimizer
from ultralytics.engine import trainer as trainer_module
from ultralytics.engine.trainer import BaseTrainer
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils import DEFAULT_CFG, LOGGER
from ultralytics.utils.torch_utils import unwrap_model

from ..guidance import lr_range, translate_hparams
from ..info import LOOKAHEAD_PREFIX, OptimizerInfo, base_optimizer_info, list_optimizers
from ..optim.muon import MUON_KEY, MuonAdamW, muon_router, split_groups
from ..registry import create_optimizer
from ..wrappers import chain

#: Names ultralytics' own ``build_optimizer`` handles that are not in optarena's registry (the others are the
#: registry entries with an ``ultralytics_name``).
ULTRALYTICS_ONLY = frozenset({"musgd", "auto"})
#: ultralytics' documented lr0 for AdamW (default.yaml: "SGD=1e-2, Adam/AdamW=1e-3"): the reference from which the
#: authors' lr ratios (optarena.guidance) give each optimizer's recommended lr0 range.
ADAMW_LR0 = 1e-3
#: Classes whose ``momentum`` is what ultralytics' ``momentum``/``warmup_momentum`` set in its SGD, RMSProp, MuSGD.
ULTRALYTICS_MOMENTUM = (optim.SGD, optim.RMSprop, MuonAdamW)

_ORIGINAL: dict[str, Any] = {}


def is_optarena_name(name: str) -> bool:
    """Whether ``optimizer=name`` is built by optarena: a registry name (``lookahead_`` prefix allowed) that
    ultralytics does not build itself."""
    lowered = str(name).lower()
    if lowered in ULTRALYTICS_ONLY or lowered.removeprefix(LOOKAHEAD_PREFIX) not in list_optimizers():
        return False
    return lowered.startswith(LOOKAHEAD_PREFIX) or base_optimizer_info(lowered).ultralytics_name is None


def check_lr0(name: str, lr0: float) -> None:
    """Warn when ``lr0`` is ultralytics' SGD default or outside the authors' range for ``name`` (nothing for a name
    optarena does not know)."""
    if str(name).lower().removeprefix(LOOKAHEAD_PREFIX) not in list_optimizers():
        return
    info = base_optimizer_info(name)
    rule = info.translation
    if rule is None:
        return
    low, high = lr_range(info.name, ADAMW_LR0)
    is_default = lr0 == DEFAULT_CFG.lr0
    if low <= lr0 <= high and not (is_default and rule.absolute_lr is None):
        return
    why = (f"lr0={lr0:g} is ultralytics' default, tuned for SGD" if is_default
           else f"lr0={lr0:g} is outside the recommended range")
    start = translate_hparams(info.name, lr=ADAMW_LR0)["lr"]
    warnings.warn(f"optarena: {why}; for {info.cls.__name__} the recommended lr0 is {low:g} to {high:g} (the "
                  f"authors' ratio to AdamW's lr0={ADAMW_LR0:g}); try lr0={start:g}", UserWarning, stacklevel=3)


@contextmanager
def _quiet_logger():
    disabled, LOGGER.disabled = LOGGER.disabled, True
    try:
        yield
    finally:
        LOGGER.disabled = disabled


def momentum_kwargs(name: str, momentum: float) -> dict[str, Any]:
    """The arguments ``name`` gets from ultralytics' ``momentum``: ultralytics' own for ``lookahead_`` + a name it
    builds (what ``optimizer=SGD`` etc. get), ``momentum`` for SGD-like classes, none for the others."""
    info = base_optimizer_info(name)
    own = {"SGD": {"momentum": momentum, "nesterov": True}, "RMSProp": {"momentum": momentum},
           "MuSGD": {}}.get(info.ultralytics_name or "", {"betas": (momentum, 0.999)})
    if info.ultralytics_name is not None:  # reached only with the lookahead_ prefix
        return own
    return {"momentum": momentum} if issubclass(info.cls, ULTRALYTICS_MOMENTUM) else {}


def keep_own_momentum(optimizer: Optimizer) -> float | None:
    """Restore the optimizer's own ``momentum`` in every group before each step and ``state_dict()``: ultralytics'
    warm-up writes ``warmup_momentum``..``args.momentum`` into each group with the key. Returns it (None: none)."""
    optimizer = chain(optimizer)[-1]  # wrappers share the base's groups
    own = optimizer.defaults.get("momentum")
    if own is None:
        return None

    def restore(opt: Optimizer, *_: Any) -> None:
        for group in opt.param_groups:
            if "momentum" in group:
                group["momentum"] = own

    optimizer.register_step_pre_hook(restore)
    optimizer.register_state_dict_pre_hook(restore)
    return own


def check_lrf(self: BaseTrainer, info: OptimizerInfo) -> None:
    """For optimizers that decay their own lr (Amos): ultralytics' default ``lrf`` becomes 1.0 (no decay on top),
    with a warning; an explicit decay (``lrf`` below 1) is refused."""
    if info.schedule != "constant" or self.args.lrf >= 1.0:
        return
    lrf = self.args.lrf
    if lrf != DEFAULT_CFG.lrf:
        raise ValueError(f"Invalid lrf: {lrf!r} for {info.name!r}, which decays its lr itself; ultralytics would "
                         "decay lr0 to lr0*lrf on top: set lrf=1.0 (warm-up, then a constant lr0)")
    warnings.warn(f"optarena: {info.name} decays its lr itself; setting lrf=1.0 instead of ultralytics' default "
                  f"{lrf:g} (warm-up, then a constant lr0)", UserWarning, stacklevel=3)
    self.args.lrf = 1.0


def muon_groups(model: nn.Module, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ultralytics' groups split by Muon's routing rule (2-D weights to Muon, except the head and embeddings)."""
    split = split_groups(groups, muon_router(unwrap_model(model)))
    if not any(g[MUON_KEY] for g in split):
        warnings.warn("optarena: muon here is plain AdamW: no parameter goes to Muon, which takes 2-D weights "
                      "(nn.Linear, except the head and embeddings); conv kernels (4-D), norm weights and biases go "
                      "to AdamW", UserWarning, stacklevel=3)
    return split


def build_optimizer(self: BaseTrainer, model: nn.Module, name: str = "auto", lr: float = 0.001,
                    momentum: float = 0.9, decay: float = 1e-5, iterations: float = 1e5) -> Optimizer:
    """``BaseTrainer.build_optimizer`` that builds optarena names with ultralytics' own parameter groups."""
    original = _ORIGINAL.get("build_optimizer", BaseTrainer.build_optimizer)
    if not is_optarena_name(name):
        self._optarena_optimizer = False
        return original(self, model, name, lr, momentum, decay, iterations)
    info = base_optimizer_info(name)
    if info.train_eval_modes:
        raise ValueError(f"Invalid optimizer: {name!r} is schedule-free (optimizer.train()/eval() around training "
                         "and evaluation), which ultralytics' trainer cannot drive: it validates and saves an EMA of "
                         "the training weights; use another optimizer, or a training loop that calls them")
    check_lrf(self, info)
    # Reuse ultralytics' grouping (weights with decay, norm weights and biases without, "param_group" tags that its
    # warm-up reads) by letting it build SGD, and keep only the groups.
    with _quiet_logger():
        template = original(self, model, "SGD", lr, momentum, decay, iterations)
    groups = [{"params": g["params"], "weight_decay": g["weight_decay"], "param_group": g["param_group"]}
              for g in template.param_groups]
    summary = ", ".join(f"{len(g['params'])} {g['param_group']}(decay={g['weight_decay']:g})" for g in groups)
    if info.cls is MuonAdamW:
        groups = muon_groups(model, groups)
    check_lr0(name, lr)
    if self.args.warmup_bias_lr > lr:
        # ultralytics starts the bias lr of its warm-up at 0.1 (an SGD value: 1000x Lion's lr); its optimizer=auto
        # sets 0 for AdamW, and so does this
        LOGGER.warning(f"optarena: warmup_bias_lr={self.args.warmup_bias_lr:g} > lr0={lr:g}; starting the bias "
                       "warm-up at 0 as ultralytics does for optimizer=auto")
        self.args.warmup_bias_lr = 0.0
    kwargs = momentum_kwargs(name, momentum)
    optimizer = create_optimizer(groups, name, lr=lr, **kwargs)
    own = None if kwargs else keep_own_momentum(optimizer)
    self._optarena_optimizer = True
    if info.cls is MuonAdamW:
        summary += f"; {sum(len(g['params']) for g in groups if g[MUON_KEY])} of them to Muon"
    if "betas" in kwargs:
        uses = f"betas=({momentum:g}, 0.999) as ultralytics' own"
    elif own is not None:
        uses = f"ultralytics' momentum={momentum:g} is not used (its own momentum={own:g} is kept through the warm-up)"
    elif any("momentum" in g for g in optimizer.param_groups):  # not in muon's AdamW-only groups
        uses = f"momentum={momentum:g} (ultralytics' warm-up ramps it up from warmup_momentum)"
    else:
        uses = f"ultralytics' momentum={momentum:g} is not used (the optimizer's own defaults are)"
    LOGGER.info(f"optimizer: optarena {name} -> {type(optimizer).__name__}(lr={lr:g}) with parameter groups "
                f"{summary}; {uses}")
    return optimizer


def save_model(self: BaseTrainer) -> Any:
    """``BaseTrainer.save_model`` that keeps an optarena optimizer's state at full precision in the checkpoint."""
    original = _ORIGINAL.get("save_model", BaseTrainer.save_model)
    if not getattr(self, "_optarena_optimizer", False):
        return original(self)
    convert = trainer_module.convert_optimizer_state_dict_to_fp16
    trainer_module.convert_optimizer_state_dict_to_fp16 = lambda state_dict: state_dict
    try:
        return original(self)
    finally:
        trainer_module.convert_optimizer_state_dict_to_fp16 = convert


class OptarenaTrainerMixin:
    """Mix into any ultralytics trainer: ``class MyTrainer(OptarenaTrainerMixin, SegmentationTrainer)``."""

    build_optimizer = build_optimizer
    save_model = save_model


class OptarenaDetectionTrainer(OptarenaTrainerMixin, DetectionTrainer):
    """ultralytics' detection trainer with optarena optimizers: ``model.train(trainer=OptarenaDetectionTrainer)``."""


def patch() -> None:
    """Route optarena names through every ultralytics trainer (idempotent; done on import)."""
    if _ORIGINAL:
        return
    _ORIGINAL["build_optimizer"] = BaseTrainer.build_optimizer
    _ORIGINAL["save_model"] = BaseTrainer.save_model
    BaseTrainer.build_optimizer = build_optimizer
    BaseTrainer.save_model = save_model


def unpatch() -> None:
    """Restore ultralytics' own ``build_optimizer`` and ``save_model``."""
    if _ORIGINAL:
        BaseTrainer.build_optimizer = _ORIGINAL.pop("build_optimizer")
        BaseTrainer.save_model = _ORIGINAL.pop("save_model")


patch()

__all__ = ["OptarenaDetectionTrainer", "OptarenaTrainerMixin", "build_optimizer", "check_lr0", "is_optarena_name",
           "patch", "save_model", "unpatch"]
