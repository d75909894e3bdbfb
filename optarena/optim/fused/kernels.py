"""The compiled kernels of the fused step: the traced body, the cache of kernels, their compilation on stand-ins,
and the tensors through which a schedule's values reach them."""

from __future__ import annotations

import itertools
import time
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ...info import info_for
from .. import quant
from ..ops import STATIC_SIZE
from ..segments import Segments, laid_out
from ..step import INT8, Update, step_tensors
from . import codegen

#: Options of every fused kernel: no per-call size asserts (their cost grows with the tensor count, and the inputs
#: are checked here once); ``hoisted``'s table written by one loop (otherwise one Python call per cell per kernel
#: call on CPU).
INDUCTOR_OPTIONS: dict[str, Any] = {"size_asserts": False, "force_pointwise_cat": True}
#: 8-bit kernels: recompute the values that the block maximum and the encoding both read. Inductor's defaults
#: store some in full-size temporaries, which cost more (Adan 85 → 33 ms on 16M: benchmarks/NOTES.md, "8-bit state").
INT8_RECOMPUTE: dict[str, Any] = {"realize_reads_threshold": 64, "realize_opcount_threshold": 1000,
                                  "realize_acc_reads_threshold": 64}
#: 8-bit kernels of ``OptimizerInfo.int8_local_buffers``: store a value of 8+ operations read twice (the new
#: moment), which outer-loop fusion keeps in a per-block buffer; the parameter update then joins the first loop.
INT8_LOCAL_BUFFERS: dict[str, Any] = {"realize_reads_threshold": 4, "realize_opcount_threshold": 8,
                                      "realize_acc_reads_threshold": 8}
#: Hyper-parameters the kernels take as tensor inputs, because schedules change them between steps: every LR
#: scheduler the lr, OneCycleLR and CyclicLR ``betas[0]`` (or a nonzero ``momentum``: Amos's). A nonzero weight decay
#: and a gradient scale are inputs too; the other hyper-parameters are compiled in.
SCHEDULED = ("lr", "betas")
#: After this many kernels one optimizer warns: a hyper-parameter that is compiled in seems to change every step.
KERNELS_WARNING = 32


class StepValues(NamedTuple):
    """This step's values of the kernel inputs (None: not an input of this kernel)."""

    lr: float
    weight_decay: float | None
    scale: Any  # a 0-d tensor or None
    momentum: float | None
    betas: tuple[float, ...] | None


def code_keys(keys: tuple[str, ...]) -> list[str]:
    """The keys among a kernel's state ``keys`` that hold 8-bit codes (their block scales are keys too)."""
    return [key for key in keys if key + quant.SCALE_SUFFIX in keys]


def make_body(update: Update, consts: dict[str, Any], keys: tuple[str, ...]) -> Callable[..., list[Tensor]]:
    """The function a kernel compiles: the group's values in, then the one step body on flat views (or packs);
    it returns the new block scales of 8-bit buffers (tensor-major, keys in order), which :class:`Kernel` copies
    into the state, and then their dither rows."""
    coded = code_keys(keys)

    def fused_step(params: list[Tensor], grads: list[Tensor], buffers: list[list[Tensor]], steps: list[Tensor],
                   lr: Tensor, weight_decay: Tensor | None, scale: Tensor | None, momentum: Tensor | None,
                   betas: list[Tensor] | None, segments: tuple[Tensor, ...] | None = None) -> list[Tensor]:
        group = dict(consts)
        group["lr"] = lr
        if weight_decay is not None:
            group["weight_decay"] = weight_decay
        if momentum is not None:
            group["momentum"] = momentum[0]
        if betas is not None:
            group["betas"] = tuple(beta[0] for beta in betas)
        states = [{key: buffers[j][i] for j, key in enumerate(keys)} for i in range(len(params))]
        for state, step in zip(states, steps):
            state["step"] = step
        new_scales: list[dict[str, Tensor]] = [{} for _ in params]
        with laid_out(None if segments is None else Segments(*segments)):
            dithers = step_tensors(update, group, params, grads, states, scale, new_scales if coded else None)
        # the dither rows an output, so that inductor computes them once into a buffer that the encodings read: left
        # to itself, it computed them again for every element (Adan's 8-bit step was 10 % slower)
        return [new[key] for new in new_scales for key in coded] + ([dithers] if dithers is not None else [])

    return fused_step


@dataclass
class Kernel:
    """One compiled step function, shared by every optimizer whose configuration has its key."""

    flat: bool
    #: Rows of the state buffers argument that hold block scales, in the order of the kernel's outputs per tensor.
    scale_rows: tuple[int, ...] = ()
    #: The shape signatures it was compiled for on stand-ins (kernels with real shapes compile per signature).
    compiled_for: set[Any] = field(default_factory=set)
    #: Why compiling it failed, if it did: a later plan that needs it falls back at once.
    failure: str | None = None
    #: The compiled body (``torch.compile``), set by ``kernel_for``.
    fn: Callable[..., list[Tensor]] | None = None
    #: The compiled graph called without dynamo or AOT autograd (``codegen.direct_call``), once it computed on the
    #: stand-ins exactly what ``fn`` did; ``offered`` is the one waiting for that check.
    direct: Callable[..., list[Tensor]] | None = None
    offered: Callable[..., list[Tensor]] | None = None

    def offer_direct(self, call: Callable[..., list[Tensor]] | None) -> None:
        self.offered = call
        if call is None:  # compiled a second time: only dynamo's cache knows which graph serves a call
            self.direct = None

    def check_direct(self, before: tuple[Any, ...], after: tuple[Any, ...]) -> None:
        """Adopt the offered direct call if, run on ``before`` (the stand-ins as they were before ``fn`` stepped
        them into ``after``), it leaves every tensor equal (``torch.equal``) to what ``fn`` left. One that fails or
        differs is dropped: dynamo's call still works."""
        offered, self.offered = self.offered, None
        if offered is None:
            return
        try:
            self._run(offered, *before)
        except Exception:  # noqa: BLE001 - an input dynamo reads in a way the direct call does not
            return
        if all(torch.equal(x, y) for x, y in zip(_tensors(before), _tensors(after), strict=True)):
            self.direct = offered

    def __call__(self, *args: Any) -> None:
        fn = self.direct or self.fn
        assert fn is not None, "a kernel is called before kernel_for compiled it"
        self._run(fn, *args)

    def _run(self, fn: Callable[..., list[Tensor]], *args: Any) -> None:
        outputs = fn(*args)
        if outputs:  # 8-bit state's new block scales, written here, not in the kernel (see quant.encode_blocks_),
            new_scales, buffers = outputs[:-1], args[2]  # and the dither rows
            torch._foreach_copy_([buffers[j][i] for i in range(len(args[0])) for j in self.scale_rows], new_scales)


_KERNELS: dict[tuple[Any, ...], Kernel] = {}
#: Numbers the kernels' code objects: a name is never reused, even where the cache above is replaced (tests do), since
#: dynamo keeps what it learned about a frame's sizes (automatic dynamic shapes) under its code's name and line.
_NAMES = itertools.count()


def kernel_for(opt: Any, key: tuple[Any, ...], consts: dict[str, Any], keys: tuple[str, ...], flat: bool,
               sizes: str, scalar: bool = False) -> Kernel:
    """The kernel of ``key`` (made on first use; compiled later, on stand-ins of ``sizes``, which its cache key names).
    ``scalar``: leave the loops scalar."""
    kernel = _KERNELS.get(key)
    if kernel is not None:
        return kernel
    body = make_body(type(opt)._update, consts, keys)
    # dynamo caches (and limits recompiles) per code object: each key gets its own copy of the body
    code = body.__code__.replace(co_name=f"fused_step_{next(_NAMES)}")
    body = types.FunctionType(code, body.__globals__, code.co_name, body.__defaults__, body.__closure__)
    # the thread count is compiled into the C++ kernel; naming it keeps inductor's on-disk cache from handing a
    # kernel built for another thread count to this process
    options = {**INDUCTOR_OPTIONS, "cpp.threads": torch.get_num_threads()}
    if codegen.adjusted():
        options["post_grad_custom_post_pass"] = codegen.cache_key(sizes)
    if flat:
        # each tensor's last < 32 elements take a scalar loop: a vectorised tail restates the whole body with masks
        # and doubled gcc's time
        options["cpp.enable_loop_tail_vec"] = False
    if scalar:
        options["cpp.simdlen"] = 1
    if consts.get("state_dtype") == INT8:
        info = info_for(type(opt))
        # each 8-bit buffer's block scale is a reduction over its new values, which the encoding reads again; the
        # per-block buffers need codegen.outer_loop_fusion (without it they become full-size temporaries)
        local = info is not None and info.int8_local_buffers and codegen.adjusted()
        options.update(INT8_LOCAL_BUFFERS if local else INT8_RECOMPUTE)
    scale_rows = tuple(keys.index(k + quant.SCALE_SUFFIX) for k in code_keys(keys))
    kernel = _KERNELS[key] = Kernel(flat, scale_rows)
    # a flat kernel keeps no guards (its key pins every input's kind), so it may skip dynamo's frame on each call
    kernel.fn = codegen.compile_kernel(body, codegen.inductor_options(options),
                                       codegen.guard_filter("none" if flat else "shapes"),
                                       kernel.offer_direct if flat else None)
    opt.fused_kernels_made += 1
    if opt.fused_kernels_made == KERNELS_WARNING:
        warnings.warn(f"{type(opt).__name__}(fused=True) has compiled {KERNELS_WARNING} kernels: a hyper-parameter "
                      "other than lr, betas and weight_decay (e.g. eps) seems to change between steps, and each new "
                      "value compiles again; keep it constant or use fused=False", RuntimeWarning, stacklevel=6)
    return kernel


def kernel_inputs(values: StepValues, device: torch.device, work_dtype: torch.dtype) -> tuple[Any, ...]:
    """Tensors for the values a schedule may change between steps (None stays None: compiled in). Distinct tensors:
    one passed twice would compile as aliased. Betas and momentum are float64, like the Python floats of the other
    paths (1 − β and β^t are exact to double before they meet fp32), in vectors of length 1: a 0-d float64 input made
    dynamo trace the kernel twice (benchmarks/NOTES.md, "betas as vectors")."""
    def scalar(value: Any, dtype: torch.dtype) -> Tensor | None:
        return None if value is None else torch.tensor(float(value), dtype=dtype, device=device)

    def vector(value: Any) -> Tensor:
        return torch.tensor([value], dtype=torch.float64, device=device)

    return (scalar(values.lr, work_dtype), scalar(values.weight_decay, work_dtype), scalar(values.scale, work_dtype),
            None if values.momentum is None else vector(values.momentum),
            None if values.betas is None else [vector(b) for b in values.betas])


def refill(inputs: tuple[Any, ...], values: StepValues) -> None:
    """Put this step's values into the tensors of ``kernel_inputs`` (nothing is allocated per step)."""
    *scalars, betas = inputs
    *numbers, beta_values = values
    for tensor, value in zip((*scalars, *(betas or ())), (*numbers, *(beta_values or ()))):
        if tensor is not None:
            tensor.fill_(value)


def _stand_in(shape: tuple[int, ...], param: Tensor, buffer: Tensor) -> Tensor:
    """A stand-in for a state buffer of a flat kernel's parameter of ``shape``: of that shape, or one element per
    8-bit block (the block scales: one per row of a blocked view)."""
    shape = shape if buffer.dim() == param.dim() else (shape[0],)
    if buffer.dtype in quant.CODE_DTYPES:
        return torch.randint(-127 if buffer.dtype == torch.int8 else 0, 128, shape, dtype=buffer.dtype,
                             device=buffer.device)
    return torch.rand(shape, dtype=buffer.dtype, device=buffer.device)


def _tensors(args: Any) -> list[Tensor]:
    """The tensors in ``args`` (nested lists and tuples), in order."""
    if isinstance(args, Tensor):
        return [args]
    if isinstance(args, (list, tuple)):
        return [t for arg in args for t in _tensors(arg)]
    return []


def _copied(args: Any) -> Any:
    """``args`` with every tensor cloned, the lists and tuples rebuilt."""
    if isinstance(args, Tensor):
        return args.clone()
    if isinstance(args, (list, tuple)):
        return type(args)(_copied(arg) for arg in args)
    return args


def stand_in_shapes(params: list[Tensor], stand_in_size: int) -> list[tuple[int, ...]]:
    """The shapes of a flat kernel's stand-ins for a call on ``params`` (1-D, or 8-bit state's blocks)."""
    if params[0].dim() == 2:  # 8-bit state: (blocks, BLOCK) views, the block size compiled in
        # odd (never the block size), and no fewer blocks than the smallest 8-bit tensor has, nor than inductor needs
        # to parallelise a loop (2 per thread: cpp.min_chunk_size 512 elements a thread), so that every loop of a
        # call is parallel (YOLOv8n's 8-bit Lion: 0.88–0.91× → 0.84–0.86× with the first tensor no longer serial)
        rows = max(stand_in_size // quant.BLOCK, quant.MIN_QUANTIZED // quant.BLOCK, 2 * torch.get_num_threads()) | 1
        return [(rows + 2 * i, quant.BLOCK) for i in range(len(params))]
    return [(stand_in_size + 2 * i,) for i in range(len(params))]


def compile_on_stand_ins(opt: Any, kernel: Kernel, args: tuple[Any, ...], hyper: tuple[Any, ...],
                         packed: bool, stand_in_size: int) -> None:
    """Compile ``kernel`` on stand-in tensors (the real ones stay untouched if compilation fails).

    A flat kernel's stand-ins are of distinct odd sizes from ``stand_in_size`` on, so that no size is specialised to
    0, 1 or another tensor's size (the sizes are inductor's hints for whether to parallelise, so they are large for
    the large-tensor kernels). A kernel with real shapes gets clones of its arguments, with their small trailing sizes
    (``ops.STATIC_SIZE``) compiled in.
    """
    ps, gs, bufs, steps, segments = args
    start = time.perf_counter()
    if kernel.flat:
        shapes = stand_in_shapes(ps, stand_in_size)
        fake = [torch.randn(s, dtype=p.dtype, device=p.device) for s, p in zip(shapes, ps)]
        fake_grads = [torch.randn(s, dtype=g.dtype, device=g.device) for s, g in zip(shapes, gs)]
        fake_bufs = [[_stand_in(s, p, b) for s, p, b in zip(shapes, ps, row)] for row in bufs]
        for t in (*fake, *fake_grads, *(b for row in fake_bufs for b in row)):
            if t.dim() == 2:
                torch._dynamo.mark_static(t, 1)
    else:
        fake = [p.detach().clone() for p in ps]
        fake_grads = [g.detach().clone() for g in gs]
        fake_bufs = [[b.detach().clone() for b in row] for row in bufs]
        first = 1 if packed else 0  # a pack's dim 0 counts its members' slices: symbolic
        for t in (*fake, *fake_grads, *(b for row in fake_bufs for b in row)):
            for dim in range(max(first, t.dim() - 2), t.dim()):
                if t.shape[dim] < STATIC_SIZE:
                    torch._dynamo.mark_static(t, dim)
    # A flat pack's step vector has one entry per member: 3 so that its length is not specialised to 1. Kernels
    # with real shapes get the real lengths: a stand-in length equal to some size of the stand-ins by chance (dynamo
    # then assumes they are equal) would fail a guard on the first real step.
    fake_steps = [torch.zeros(3 if packed and kernel.flat else s.numel(), dtype=s.dtype, device=s.device)
                  for s in steps]
    stand_ins = (fake, fake_grads, fake_bufs, fake_steps, *hyper, segments)
    # what the kernel writes, as it was, to check a direct call on (gradients and hyper-parameters are only read)
    copies = ((_copied(fake), fake_grads, _copied(fake_bufs), _copied(fake_steps), *hyper, segments)
              if kernel.flat and codegen.adjusted() else None)
    # Dynamo would first trace the group's floats (eps, RLion's α) as symbolic inputs, find that they must be
    # constants and trace again; they are constants of the kernel's key anyway.
    with torch._dynamo.config.patch(specialize_float=True), codegen.adjusted_codegen():
        kernel(*stand_ins)
    if copies is not None:
        kernel.check_direct(copies, stand_ins)
    opt.fused_compile_seconds += time.perf_counter() - start
