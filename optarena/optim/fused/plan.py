"""Which kernel steps which tensors: a group's fused plan, made once and reused while nothing changes.

Making a plan takes four steps: *classify* each tensor (left to the eager loop, packed with other small ones, or
chunked), *chunk* the others into calls of ``fused_chunks`` tensors, *pack* the small ones, and *precompile* every
kernel on stand-ins, so that a compiler failure leaves the step to the foreach path untouched.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .. import quant
from ..ops import STATIC_SIZE, scalar_loops
from ..step import math_dtype
from .kernels import Kernel, StepValues, compile_on_stand_ins, kernel_for, kernel_inputs, stand_in_shapes
from .pack import Pack, pack_runs, slice_shape

#: Kernels with real shapes pack tensors with fewer elements; flat kernels those below
#: ``OptimizerInfo.fused_packed_below`` (8-bit groups those below this), and 8-bit state is always chunked. A pack
#: or an 8-bit chunk below it is compiled on small stand-in sizes (serial loops: a parallel region per tiny tensor
#: costs more than it saves), other calls on large sizes, so that inductor emits OpenMP-parallel loops.
SMALL_TENSOR = 1 << 15
#: Fewest small tensors with the same last two dims that a non-elementwise algorithm packs together (a lone one is
#: chunked: a pack of one would specialise the kernel to one member).
MIN_SEGMENTED = 2


@dataclass
class Call:
    """One kernel call of the step: the kernel, the indices of its parameters, and the views it takes (the
    gradients are added per step)."""

    kernel: Kernel
    indices: list[int]
    params: list[Tensor]
    buffers: list[list[Tensor]]
    steps: list[Tensor]
    pack: Pack | None = None
    #: The kernel's size class: compiled on small stand-in sizes (serial loops).
    small: bool = False


@dataclass
class Bucket:
    """The calls on one device and math dtype, with the tensors that carry this step's lr, decay, scale, betas."""

    device: torch.device
    work_dtype: torch.dtype
    calls: list[Call] = field(default_factory=list)
    inputs: tuple[Any, ...] = ()


@dataclass
class FusedPlan:
    """A group's fused step. Making it costs several µs per tensor; reusing it leaves only a check that nothing
    was replaced and one view per gradient (gradients are new tensors every step after ``zero_grad()``)."""

    key: tuple[Any, ...]
    params: list[Tensor]
    states: list[dict[str, Tensor]]
    flat: bool
    layout: list[list[Any]] = field(default_factory=list)  # the params' data pointers, sizes and strides
    state_tensors: list[Tensor] = field(default_factory=list)
    buckets: list[Bucket] = field(default_factory=list)
    eager: list[int] = field(default_factory=list)  # strided views, DTensors and empty tensors: the eager loop
    scratch_bytes: int = 0

    def serves(self, key: tuple[Any, ...], params: list[Tensor], states: list[dict[str, Tensor]]) -> bool:
        """Whether this plan is still right: same configuration, parameters, state dicts and state tensors, and no
        parameter re-pointed (``p.data = ...``) since it was made, not even to a view at the same address."""
        tensors = [t for s in states for t in s.values()]
        return (key == self.key and len(params) == len(self.params) and len(tensors) == len(self.state_tensors)
                and all(map(operator.is_, params, self.params)) and all(map(operator.is_, states, self.states))
                and layout_of(params) == self.layout
                and all(map(operator.is_, tensors, self.state_tensors)))


def layout_of(params: list[Tensor]) -> list[list[Any]]:
    """Where and how ``params`` lie: a re-pointed parameter changes it (~0.2 µs a parameter)."""
    return [list(map(Tensor.data_ptr, params)), list(map(Tensor.size, params)), list(map(Tensor.stride, params))]


@dataclass
class Request:
    """What a plan is made for: the optimizer, its group's configuration and this step's values."""

    opt: Any
    key: tuple[Any, ...]
    consts: dict[str, Any]
    values: StepValues
    flat: bool
    chunks: tuple[int, ...]
    #: Flat kernels: ``OptimizerInfo.fused_packed_below``; None: ``SMALL_TENSOR``.
    packed_below: int | None = None

    def kernel(self, config: tuple[Any, ...], keys: tuple[str, ...], params: list[Tensor], small: bool,
               scalar: bool = False) -> Kernel:
        """The kernel of ``config`` for a call on ``params`` of size class ``small``. A flat kernel's cache key names
        its stand-ins' shapes (``config`` fixes them). A kernel with real shapes serves every shape its guards pass
        within its size class (``config`` holds it; so does the cache key), and the shapes of its first compile choose
        its parallel loops, in this process as from inductor's cache (benchmarks/NOTES.md, "Compile sizes and tensors
        per call")."""
        if self.flat:
            sizes = ", ".join(map(str, stand_in_shapes(params, stand_in_size(small))))
        else:
            sizes = f"real shapes, {'under' if small else 'at least'} {SMALL_TENSOR} elements"
        return kernel_for(self.opt, config, self.consts, keys, self.flat, sizes, scalar)


def stand_in_size(small: bool) -> int:
    """The elements of a flat kernel's first stand-in for a call of size class ``small``: odd, and large where
    inductor should emit parallel loops (it parallelises a loop from the size hints it is compiled on)."""
    return 37 if small else SMALL_TENSOR * 2 + 1


def _small(params: list[Tensor]) -> bool:
    """Whether ``params`` are all small (below ``SMALL_TENSOR``)."""
    return all(p.numel() < SMALL_TENSOR for p in params)


def _chunked(p: Tensor, flat: bool, quantized: bool) -> tuple[Any, ...]:
    """The kind of a chunked tensor: whether it is large (inductor parallelises the loops of a kernel compiled on
    large sizes only, and a kernel with real shapes serves the shapes of its guarded class: one first compiled on a
    lone small matrix stepped large ones on one thread), and for a kernel with real shapes its guarded class. A flat
    kernel chunks small fp32 tensors only from ``OptimizerInfo.fused_packed_below`` elements on; they share the large
    tensors' kernels, which step them as fast as kernels of their own did (YOLOv8n's Lion; those cost 12 s more of
    cold compiling; benchmarks/NOTES.md, "packs")."""
    small = _small([p]) and (quantized or not flat)
    return "chunked", not small, None if flat else _guarded_class(p.shape)


def _guarded_class(shape: tuple[int, ...] | torch.Size) -> tuple[int, tuple[int | None, ...]]:
    """What a kernel with real shapes has in common with others besides the configuration: the dim count and the
    small sizes compiled in."""
    return len(shape), static_sizes(shape)


def static_sizes(shape: tuple[int, ...] | torch.Size) -> tuple[int | None, ...]:
    """The sizes among the last two of ``shape`` that a kernel with real shapes is compiled for (None: symbolic)."""
    return tuple(size if size < STATIC_SIZE else None for size in shape[-2:])


def classify(params: list[Tensor], states: list[dict[str, Tensor]], flat: bool,
             packed_below: int | None) -> tuple[list[int], dict[tuple[Any, ...], list[int]]]:
    """The tensors left to the eager loop, and the others by class: device, dtype, state keys and dtypes, and kind
    (packed, those below ``packed_below`` elements: with the step count, and for non-elementwise algorithms the slice
    shape; chunked: a size class, and for non-elementwise algorithms the guarded class)."""
    packed_below = SMALL_TENSOR if packed_below is None else packed_below
    eager: list[int] = []
    classes: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for i, p in enumerate(params):
        if (flat and not p.is_contiguous()) or hasattr(p, "placements") or p.numel() == 0:
            # a strided view cannot be flattened without a copy; a DTensor's shard is local; an empty tensor has
            # nothing to compute (and would specialise a kernel to size 0)
            eager.append(i)
            continue
        state = states[i]
        step = float(state["step"]) if "step" in state else None
        quantized = any(v.dtype in quant.CODE_DTYPES for v in state.values())
        if quantized and not quant.whole_blocks(p.numel()):
            # a partial last block is padded, which a kernel compiled for whole blocks does not do
            eager.append(i)
            continue
        # small 8-bit tensors are chunked, not packed: a pack has no block scales of its own
        if p.numel() < packed_below and p.is_contiguous() and not quantized:
            kind = ("flat", step) if flat else ("segmented", slice_shape(p.shape), step)
        else:
            kind = _chunked(p, flat, quantized)
        state_dtypes = tuple((k, v.dtype) for k, v in state.items() if k != "step")
        classes[(p.device, p.dtype, tuple(state), state_dtypes, kind)].append(i)
    for class_key in list(classes):
        if class_key[-1][0] == "segmented" and len(classes[class_key]) < MIN_SEGMENTED:
            for i in classes.pop(class_key):
                classes[(*class_key[:-1], _chunked(params[i], flat, False))].append(i)
    return eager, classes


def chunk(request: Request, params: list[Tensor], states: list[dict[str, Tensor]], members: list[int],
          config: tuple[Any, ...], keys: tuple[str, ...], kind: tuple[Any, ...]) -> list[Call]:
    """Calls of ``fused_chunks`` tensors each. A kernel with real shapes compiles again for each pattern of equal
    sizes among its tensors, so its chunks are cut from tensors of one shape."""
    same_shape: dict[Any, list[int]] = defaultdict(list)
    for i in members:
        same_shape[None if request.flat else params[i].shape].append(i)
    calls = []
    for run in same_shape.values():
        start = 0
        for size in request.chunks:
            while len(run) - start >= size:
                idx = run[start:start + size]
                start += size
                views = _views(params, states, idx, keys, request.flat)
                kernel = request.kernel((*config, size, kind), keys, views[0], not kind[1],
                                        scalar=not request.flat and scalar_loops(params[idx[0]].shape))
                calls.append(Call(kernel, idx, *views, small=not kind[1]))
    return calls


def _views(params: list[Tensor], states: list[dict[str, Tensor]], idx: list[int], keys: tuple[str, ...],
           flat: bool) -> tuple[list[Tensor], list[list[Tensor]], list[Tensor]]:
    """The kernel's parameter, state and step arguments for ``params[idx]``."""
    if flat:
        # plain tensors, as the stand-ins (guards check grads); with 8-bit state (B, 256) blocks, so that inductor
        # runs each block's update, scale and encoding in one loop over blocks
        shape = (-1, quant.BLOCK) if any(states[idx[0]][k].dtype in quant.CODE_DTYPES for k in keys) else (-1,)
        ps = [params[i].detach().view(shape) for i in idx]
        bufs = [[states[i][k].view(shape if states[i][k].numel() == params[i].numel() else (-1,)) for i in idx]
                for k in keys]
    else:
        ps = [params[i].detach() for i in idx]  # a plain tensor, as the stand-ins (guards check types)
        bufs = [[states[i][k] for i in idx] for k in keys]
    # 1-element views: torch 2.13's compiled code drops in-place updates of 0-d float64 CPU inputs
    steps = [states[i]["step"].view(1) for i in idx] if "step" in states[idx[0]] else []
    return ps, bufs, steps


def pack(request: Request, params: list[Tensor], states: list[dict[str, Tensor]],
         runs: list[tuple[Bucket, tuple[Any, ...], tuple[str, ...], list[int]]]) -> int:
    """Pack each run of small tensors into one call, with one pair of scratch buffers per (device, dtype) sized for
    the largest pack; the scratch bytes."""
    sizes: dict[tuple[torch.device, torch.dtype], int] = {}
    for *_, run in runs:
        where = (params[run[0]].device, params[run[0]].dtype)
        sizes[where] = max(sizes.get(where, 0), sum(params[i].numel() for i in run))
    scratch = {where: [torch.empty(n, dtype=where[1], device=where[0]) for _ in range(2)]
               for where, n in sizes.items()}
    for bucket, config, keys, run in runs:
        where = (params[run[0]].device, params[run[0]].dtype)
        packed = Pack(params, states, run, keys, *scratch[where], segmented=not request.flat)
        slices = packed.flat_param.shape[1:]
        small = _small([packed.flat_param])
        size_class = ("packed", not small, packed.flat_param.dim(), None if request.flat else static_sizes(slices))
        kernel = request.kernel((*config, 1, size_class), keys, [packed.flat_param], small,
                                scalar=not request.flat and scalar_loops(slices))
        bucket.calls.append(Call(kernel, run, [packed.flat_param], [[flat] for flat in packed.flat_state],
                                 packed.steps, packed, small))
    return sum(2 * n * dtype.itemsize for (_, dtype), n in sizes.items())


def precompile(request: Request, plan: FusedPlan) -> None:
    """Compile every kernel the plan has not seen compiled for these shapes, on stand-ins. A kernel without guards
    runs whatever it was compiled on; one with real shapes compiles per shape signature here, not in the step."""
    for bucket in plan.buckets:
        bucket.inputs = kernel_inputs(request.values, bucket.device, bucket.work_dtype)
        for call in bucket.calls:
            segments = call.pack.segments if call.pack is not None else None
            shapes = None if request.flat else (*(p.shape for p in call.params), segments and segments[0].shape)
            if call.kernel.failure is not None:  # a pack's kernel that failed for an earlier plan
                raise RuntimeError(call.kernel.failure)
            if shapes in call.kernel.compiled_for:
                continue
            grads = [call.pack.flat_grad] if call.pack is not None else [plan.params[i].grad for i in call.indices]
            try:
                compile_on_stand_ins(request.opt, call.kernel, (call.params, grads, call.buffers, call.steps,
                                                                segments), bucket.inputs, call.pack is not None,
                                     stand_in_size(call.small))
            except Exception as err:  # noqa: BLE001 - whatever the compiler raised, foreach still works
                call.kernel.failure = f"{type(err).__name__}: {err}"
                raise RuntimeError(call.kernel.failure) from err
            call.kernel.compiled_for.add(shapes)


def make_plan(request: Request, params: list[Tensor], states: list[dict[str, Tensor]]) -> FusedPlan:
    """The plan for ``params``; raises (naming the cause) where a kernel cannot be made or compiled."""
    plan = FusedPlan(request.key, params, states, request.flat, layout_of(params))
    plan.eager, classes = classify(params, states, request.flat, request.packed_below)
    buckets: dict[tuple[torch.device, torch.dtype], Bucket] = {}
    small: list[tuple[Bucket, tuple[Any, ...], tuple[str, ...], list[int]]] = []
    for (device, dtype, state_keys, state_dtypes, kind), members in classes.items():
        work_dtype = math_dtype(params[members[0]])
        bucket = buckets.setdefault((device, work_dtype), Bucket(device, work_dtype))
        keys = tuple(k for k in state_keys if k != "step")
        config = (type(request.opt), device, dtype, state_dtypes, *request.key)
        if kind[0] == "chunked":
            bucket.calls += chunk(request, params, states, members, config, keys, kind)
        else:
            small += [(bucket, config, keys, run) for run in pack_runs(params, members, request.flat)]
    failed = [c.kernel.failure for b in buckets.values() for c in b.calls if c.kernel.failure]
    if failed:  # known before any state is packed
        raise RuntimeError(failed[0])
    plan.scratch_bytes = pack(request, params, states, small)
    plan.buckets = list(buckets.values())
    plan.state_tensors = [t for s in states for t in s.values()]
    precompile(request, plan)
    return plan
