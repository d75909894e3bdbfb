"""optarena: modern PyTorch optimizers and the arena that picks between them."""

from .guidance import translate_hparams
from .in_backward import StepInBackward, step_in_backward
from .optim import Adafactor, Adan, AdaX, AdEMAMix, Amos, Lion, MuonAdamW, RLion
from .registry import (
    OptimizerInfo,
    create_optimizer,
    get_optimizer_info,
    list_optimizers,
    param_groups_for_weight_decay,
    register_optimizer,
    set_optimizer_mode,
    state_bytes,
)
from .schedules import ema_model, piecewise_linear
from .wrappers import GradientAccumulation, LayerAdaptation, Lazy, Lookahead

__version__ = "0.1.0"

__all__ = [
    "AdEMAMix", "Adafactor", "AdaX", "Adan", "Amos", "GradientAccumulation", "LayerAdaptation", "Lazy", "Lion",
    "Lookahead", "MuonAdamW", "OptimizerInfo", "RLion", "StepInBackward", "__version__", "create_optimizer",
    "ema_model",
    "get_optimizer_info", "list_optimizers", "param_groups_for_weight_decay", "piecewise_linear", "register_optimizer",
    "set_optimizer_mode", "state_bytes", "step_in_backward", "translate_hparams",
]
