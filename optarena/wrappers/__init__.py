"""Wrappers that add one idea to any base optimizer (Su Jianlin's "derived optimizers"); they compose in any order.
"""

from ._base import OptimizerWrapper
from .accumulation import GradientAccumulation
from .layer_adaptation import LayerAdaptation
from .lazy import Lazy
from .lookahead import Lookahead

__all__ = ["GradientAccumulation", "LayerAdaptation", "Lazy", "Lookahead", "OptimizerWrapper"]
