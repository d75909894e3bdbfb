"""Where the members of a fused pack lie, so that per-tensor reductions stay per member.

The fused step packs small tensors of non-elementwise algorithms (Adafactor) end to end along dim 0, as slices of
their last two dims: a 64×32×3×3 and a 16×16×3×3 weight become 2048 + 256 slices of 3×3 in one kernel call. While
such a pack is stepped, the fused body makes its :class:`Segments` the *layout* (:func:`laid_out`); the reductions
and per-tensor scalars of :mod:`optarena.optim.ops` then work per member, so the algorithm's math is the same
function on every path and never sees a pack.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import Tensor


class Segments(NamedTuple):
    """The members of a pack along its dim 0. Per-tensor reductions sum per block of slices (the block size
    divides every member's slice count), then per member; per-member values meet the elements through each
    slice's member index."""

    member_of: Tensor  #: the member of each slice (int64)
    block_member: Tensor  #: the member of each block of slices (int64; its length is the block count)
    block_ends: Tensor  #: the blocks up to each member's end (int64)
    numels: Tensor  #: elements per member (int64)

    def rms(self, x: Tensor) -> Tensor:
        """Each member's root mean square of its slices of ``x`` (one value per member)."""
        # per slice first: summed over the blocks' flat index, the loop divides every element's index by the
        # slice and block sizes (benchmarks/NOTES.md, "Adafactor packs")
        per_slice = x.square().sum(dim=tuple(range(1, x.dim()))) if x.dim() > 1 else x.square()
        per_block = per_slice.view(self.block_member.shape[0], -1).sum(-1)
        # member sums as differences of a float64 running sum over the blocks: its rounding, relative to the sum
        # up to the member, is below float32's
        zero = per_block.new_zeros(1, dtype=torch.float64)
        running = torch.cat([zero, per_block.to(torch.float64).cumsum(0)])[self.block_ends]
        sums = running.diff(prepend=zero)
        return (sums / self.numels).sqrt().to(x.dtype)

    def spread(self, value: Tensor, x: Tensor) -> Tensor:
        """A per-member vector (as from ``rms``) repeated over each member's slices, shaped to broadcast against
        ``x``."""
        return value[self.member_of].to(x.dtype).view(-1, *[1] * (x.dim() - 1))


_LAYOUT: list[Segments] = []


@contextmanager
def laid_out(segments: Segments | None) -> Iterator[None]:
    """Make ``segments`` the layout of the tensors being stepped (nothing for None). Traceable: dynamo follows the
    list's append and pop while it compiles the fused body."""
    if segments is None:
        yield
        return
    _LAYOUT.append(segments)
    try:
        yield
    finally:
        _LAYOUT.pop()


def layout() -> Segments | None:
    """The layout being stepped, if the tensors are packs."""
    return _LAYOUT[-1] if _LAYOUT else None

