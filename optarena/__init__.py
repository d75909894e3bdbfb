"""optarena: modern PyTorch optimizers and the arena that picks between them."""

from .guidance import translate_hparams
from .optim import Adafactor, Adan, AdaX, Lion, RLion
from .registry import (
    OptimizerInfo,
    create_optimizer,
    get_optimizer_info,
    list_optimizers,
    param_groups_for_weight_decay,
    register_optimizer,
    state_bytes,
)

__version__ = "0.1.0"

__all__ = [
    "Adafactor", "AdaX", "Adan", "Lion", "OptimizerInfo", "RLion", "__version__", "create_optimizer",
    "get_optimizer_info", "list_optimizers", "param_groups_for_weight_decay", "register_optimizer", "state_bytes",
    "translate_hparams",
]
