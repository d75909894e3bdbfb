"""optarena's optimizers: one module per algorithm, each a functional core plus a torch.optim.Optimizer."""

from .adafactor import Adafactor
from .adan import Adan
from .adax import AdaX
from .lion import Lion
from .rlion import RLion

__all__ = ["Adafactor", "AdaX", "Adan", "Lion", "RLion"]
