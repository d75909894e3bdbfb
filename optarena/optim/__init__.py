"""optarena's optimizers: one module per algorithm, each a functional core, a torch.optim.Optimizer and its
registry entry; :mod:`.base`, :mod:`.step`, :mod:`.ops` and :mod:`.fused` are what they share."""

from .adafactor import Adafactor
from .adan import Adan
from .adax import AdaX
from .ademamix import AdEMAMix
from .amos import Amos
from .base import OptarenaOptimizer
from .lion import Lion
from .muon import MuonAdamW
from .rlion import RLion

__all__ = ["AdEMAMix", "Adafactor", "AdaX", "Adan", "Amos", "Lion", "MuonAdamW", "OptarenaOptimizer", "RLion"]
