"""Small tensors stepped as one: a pack copies them into scratch buffers around a single kernel call."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..step import runs_of

#: Elements per pack of small tensors: a plan's two scratch buffers hold at most this many each (2 MiB for fp32).
#: Smaller packs cost a kernel call and three foreach calls more per step (benchmarks/NOTES.md, "pack size").
PACK_ELEMENTS = 1 << 18


def slice_shape(shape: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
    """The last two dims, over which non-elementwise algorithms reduce per slice (none for 0-d and 1-D tensors)."""
    return tuple(shape[-2:]) if len(shape) >= 2 else ()


def views_of(flat: Tensor, like: list[Tensor]) -> list[Tensor]:
    """Consecutive views of ``flat`` shaped like ``like``."""
    views, offset = [], 0
    for t in like:
        views.append(flat[offset:offset + t.numel()].view(t.shape))
        offset += t.numel()
    return views


def pack_runs(params: list[Tensor], members: list[int], flat: bool) -> list[list[int]]:
    """``members`` split, in order, into packs of at most PACK_ELEMENTS elements (or one tensor). A segmented pack
    of one member would specialise its kernel to that count: it joins the pack before."""
    runs = runs_of(members, lambda i: params[i].numel(), PACK_ELEMENTS)
    if not flat and len(runs) > 1 and len(runs[-1]) == 1:
        runs[-2].extend(runs.pop())
    return runs


class Pack:
    """Small tensors stepped as one by a single kernel call.

    Elementwise algorithms see them as one flat tensor (any shapes); others see tensors with the same last two
    dims packed along dim 0, with their ``Segments`` (see :mod:`optarena.optim.segments`). Their state lives in
    buffers laid out so, each state entry a view of one (``state_dict`` and the other paths still see one tensor
    per parameter and key), with the step counts in one float64 vector; a pack only joins tensors whose counts are
    equal, so that its kernel reads one count and writes it back to all. Each step copies the gradients and
    parameters into two scratch buffers and the parameters back around one kernel call: for small enough tensors
    C++ copies cost less than the Python work around a call that takes each tensor (benchmarks/NOTES.md, "packs").
    """

    def __init__(self, params: list[Tensor], states: list[dict[str, Tensor]], members: list[int],
                 keys: tuple[str, ...], scratch_params: Tensor, scratch_grads: Tensor, segmented: bool) -> None:
        self.members = members
        self.params = [params[i] for i in members]
        self.param_views = [p.view(-1) for p in self.params]
        self.numel = sum(p.numel() for p in self.params)
        shape = slice_shape(self.params[0].shape) if segmented else ()
        self.flat_param = scratch_params[:self.numel].view(-1, *shape)
        self.flat_grad = scratch_grads[:self.numel].view(-1, *shape)
        self.param_slots = views_of(scratch_params, self.params)
        self.grad_slots = views_of(scratch_grads, self.params)
        self.flat_state = []
        for key in keys:
            values = [states[i][key] for i in members]
            flat = torch.empty(sum(v.numel() for v in values), dtype=values[0].dtype, device=values[0].device)
            views = views_of(flat, values)
            torch._foreach_copy_(views, values)
            for i, view in zip(members, views):
                states[i][key] = view
            self.flat_state.append(flat.view(-1, *slice_shape(values[0].shape)) if segmented else flat)
        self.segments = self._segments(shape) if segmented else None
        self.steps: list[Tensor] = []
        if "step" in states[members[0]]:
            counts = torch.stack([states[i]["step"] for i in members]).to(torch.float64)
            for j, i in enumerate(members):
                states[i]["step"] = counts[j]
            self.steps = [counts]

    def _segments(self, shape: tuple[int, ...]) -> tuple[Tensor, ...]:
        """The fields of the pack's ``Segments`` (passed to the kernel as tensors)."""
        device = self.flat_param.device
        numels = torch.tensor([p.numel() for p in self.params], device=device)
        slices = [p.numel() // math.prod(shape) for p in self.params]
        lengths = torch.tensor(slices, device=device)
        # blocks that no member boundary splits keep the running sum short (1×1 conv weights and vectors have one
        # element per slice)
        blocks = lengths // math.gcd(*slices)
        member = torch.arange(len(self.members), device=device)
        return member.repeat_interleave(lengths), member.repeat_interleave(blocks), blocks.cumsum(0), numels

    def load(self) -> list[Tensor]:
        """Copy the gradients and parameters into the scratch buffers; the gradient argument of the kernel."""
        torch._foreach_copy_(self.grad_slots, [p.grad for p in self.params])
        torch.cat(self.param_views, out=self.flat_param.view(-1))  # cheaper per tensor than a copy_
        return [self.flat_grad]

    def store(self) -> None:
        torch._foreach_copy_(self.params, self.param_slots)
