"""Wrappers that add one idea to any base optimizer (Su Jianlin's "derived optimizers")."""

from ._base import OptimizerWrapper

__all__ = ["OptimizerWrapper"]
