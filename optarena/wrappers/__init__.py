"""Wrappers that add one idea to any base optimizer (Su Jianlin's "derived optimizers"). They compose, inside out,
as base → Lazy → LayerAdaptation → GradientAccumulation → Lookahead (the factory's order); GradientAccumulation and
Lookahead also nest the other way round. The orders that cannot work are refused with the reason: Lazy takes no
wrapper as its base, LayerAdaptation none that accumulates or pulls back, no wrapper comes twice, and a schedule-free
base takes GradientAccumulation only.
"""

from ._base import OptimizerWrapper, chain
from .accumulation import GradientAccumulation
from .layer_adaptation import LayerAdaptation
from .lazy import Lazy
from .lookahead import Lookahead

__all__ = ["GradientAccumulation", "LayerAdaptation", "Lazy", "Lookahead", "OptimizerWrapper", "chain"]
