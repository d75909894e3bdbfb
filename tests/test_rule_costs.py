"""What a rule costs per element where that decides the compiled step's speed: the 8-bit kernels are compute-bound, and
a vector division is the slowest instruction in them beside the square root (benchmarks/NOTES.md, "One division per
element")."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import optarena

#: Element-wise divisions each rule needs per element: one for the adaptive denominators, none for the sign rules.
DIVISIONS_PER_ELEMENT = {"Adan": 1, "AdEMAMix": 1, "AdaX": 1, "Lion": 0, "RLion": 0}
NUMEL = 4096


class DivisionCounter(TorchDispatchMode):
    """Counts the division ops (``div``, ``addcdiv``, ``reciprocal`` and their foreach and in-place forms) that run
    on a tensor of :data:`NUMEL` elements."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.overloadpacket.__name__.strip("_").removeprefix("foreach_")
        full_size = any(isinstance(t, torch.Tensor) and t.numel() == NUMEL for t in tree_leaves((args, kwargs)))
        if name in ("div", "addcdiv", "reciprocal") and full_size:
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name", sorted(DIVISIONS_PER_ELEMENT))
def test_rule_divides_no_more_than_it_needs(name: str, foreach: bool) -> None:
    """A second step (past first-step special cases), with weight decay (Adan's proximal decay divided by 1 + lr·wd):
    Adan divided four times per element and AdEMAMix twice until they multiplied by reciprocals."""
    param = torch.nn.Parameter(torch.randn(64, 64))
    opt = getattr(optarena, name)([param], lr=1e-3, weight_decay=0.02, foreach=foreach)
    for _ in range(2):
        param.grad = torch.randn(64, 64)
        counter = DivisionCounter()
        with counter:
            opt.step()
    assert len(counter.ops) == DIVISIONS_PER_ELEMENT[name], counter.ops
