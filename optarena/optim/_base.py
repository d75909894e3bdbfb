"""Machinery every optarena optimizer shares: argument checks, the step loop and the choice of execution path.

An algorithm supplies three things: ``_check_group`` (its hyper-parameter ranges), ``_init_state`` (its buffers)
and ``_update`` (a call into its one functional core, which works on *lists* of tensors with ``torch._foreach_*``
ops). The base class decides how those lists are formed: one list per (device, dtype) bucket for ``foreach=True``,
one single-tensor list per parameter for the per-tensor loop. The math is therefore written once and both paths
run it. Low-precision parameters are up-cast to float32 around the core, so the math is always fp32 or better.
"""

from __future__ import annotations

import math
import numbers
import operator
import types
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, TypeAlias

import torch
from torch import Tensor
from torch.optim import Optimizer

ParamsT: TypeAlias = Iterable[Tensor] | Iterable[dict[str, Any]]

LOW_PRECISION = (torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------------------------- argument checks
def check_number(name: str, value: Any, *, low: float = 0.0, high: float = math.inf,
                 low_open: bool = False, high_open: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` and ``value`` unless ``value`` is a real number in range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"Invalid {name}: {value!r} (expected a finite real number)")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"Invalid {name}: {value!r} (must be in {left}{low}, {high}{right})")


def check_betas(betas: Any, count: int, *, name: str = "betas") -> None:
    """Each beta must lie in [0, 1); ``betas`` must hold exactly ``count`` of them."""
    if not isinstance(betas, Sequence) or isinstance(betas, str) or len(betas) != count:
        raise ValueError(f"Invalid {name}: {betas!r} (expected a tuple of {count} numbers)")
    for i, beta in enumerate(betas):
        check_number(f"{name}[{i}]", beta, low=0.0, high=1.0, high_open=True)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    # compare types too: 1 == True and 0 == False, but foreach=1 is a mistake worth reporting
    if not any(type(value) is type(c) and value == c for c in choices):
        raise ValueError(f"Invalid {name}: {value!r} (expected one of {', '.join(map(repr, choices))})")


# --------------------------------------------------------------------------------------------- tensor helpers
def math_dtype(p: Tensor) -> torch.dtype:
    """The dtype in which an optimizer does its arithmetic (and keeps its state) for parameter ``p``."""
    return torch.float32 if p.dtype in LOW_PRECISION else p.dtype


def state_dtype_for(p: Tensor, group: dict[str, Any] | None = None) -> torch.dtype:
    """The dtype of ``p``'s state buffers: the group's ``state_dtype``, or the math dtype when it is ``None``."""
    chosen = None if group is None else group.get("state_dtype")
    return math_dtype(p) if chosen is None else chosen


def zeros_state(p: Tensor, shape: Sequence[int] | None = None, group: dict[str, Any] | None = None) -> Tensor:
    """A zero buffer for ``p``'s optimizer state, in the group's ``state_dtype`` (default: the math dtype, fp32
    for bf16/fp16 params)."""
    dtype = state_dtype_for(p, group)
    if shape is None:
        return torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
    return torch.zeros(shape, dtype=dtype, device=p.device)


def step_counter() -> Tensor:
    """Per-parameter step count. float64 counts exactly to 2**53 (float32 would stall at 2**24 ≈ 16.8M steps)."""
    return torch.zeros((), dtype=torch.float64)


def group_by_device_and_dtype(tensors: Sequence[Tensor]) -> list[list[int]]:
    """Indices of ``tensors`` bucketed by (device, dtype), in first-seen order: each bucket can be one foreach call."""
    buckets: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        buckets[(t.device, t.dtype)].append(i)
    return list(buckets.values())


def default_to_foreach(params: Sequence[Tensor]) -> bool:
    """``foreach=None`` resolves like torch.optim: foreach on accelerators, the per-tensor loop on CPU, where a loop
    keeps each tensor in cache while foreach streams every tensor through memory once per op (pytorch-optimizer's
    Lion took 21 ms with foreach off against 28 ms on, 200 tensors, on this project's 2-core CPU)."""
    return all(p.device.type != "cpu" for p in params)


# --------------------------------------------------------------------------------------------- the base class
class OptarenaOptimizer(Optimizer):
    """Base of every optarena optimizer: validation, closure, maximize, path choice, fp32 math, checkpoints."""

    #: Whether the algorithm keeps a per-parameter ``state["step"]`` (advanced before ``_update`` runs).
    counts_steps: bool = True
    #: Whether the math is elementwise, so that the fused step may see every tensor as 1-D (one kernel serves all
    #: shapes); Adafactor's factored moments need the real shapes.
    fused_flatten: bool = True
    #: Tensors per compiled call of the fused step, largest first. A kernel is compiled once per chunk size and
    #: configuration, so compile work is bounded by the chunk sizes however many tensors the model has. Compile time
    #: grows faster than the tensors per kernel and with the math per tensor, fastest for the OpenMP-parallel loops
    #: of large tensors; algorithms with more math use smaller chunks. (With ``fused_flatten``, tensors under
    #: SMALL_TENSOR elements are not chunked but packed: see ``_Pack``.)
    fused_chunks: tuple[int, ...] = (32, 4, 1)

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        #: Seconds spent compiling fused kernels by this optimizer (0 when they came from an earlier optimizer).
        self.fused_compile_seconds = 0.0
        self._fused_kernels_made = 0
        self._fused_plans: dict[int, _FusedPlan] = {}  # id(group) → its fused step, reused while it serves
        super().__init__(params, defaults)

    @property
    def fused_scratch_bytes(self) -> int:
        """Bytes of the scratch buffers that the fused step keeps for packed small tensors (at most two of
        PACK_ELEMENTS elements per parameter group and dtype)."""
        return sum(plan.scratch_bytes for plan in self._fused_plans.values())

    # -- hooks for the algorithms -------------------------------------------------------------------------------
    def _check_group(self, group: dict[str, Any]) -> None:
        """Raise ``ValueError`` for an out-of-range hyper-parameter of ``group`` (also for added groups)."""

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        raise NotImplementedError

    def _update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                states: list[dict[str, Tensor]]) -> None:
        """Apply one step to ``params`` (same device and dtype, fp32/fp64). ``grads`` are read-only. Algorithms with
        ``fused_flatten = False`` also take ``segments: Segments | None``: the fused step may pass several tensors
        packed end to end along dim 0, their per-tensor reductions then per member (see ``Segments``)."""
        raise NotImplementedError

    def _grad_scale(self, params: list[Tensor]) -> float:
        """A factor for every gradient of this step (``params``: all with a grad, over all groups); Adan's
        global-norm clipping overrides it."""
        return 1.0

    # -- torch.optim.Optimizer API ------------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._check_group(group)
            check_choice("maximize", group["maximize"], (False, True))
            check_choice("foreach", group["foreach"], (None, False, True))
            check_choice("fused", group["fused"], (None, False, True))
            if group["fused"] and group["foreach"]:
                raise ValueError("Invalid fused=True with foreach=True: choose one execution path")
            check_choice("state_dtype", group["state_dtype"], (None, torch.float32, torch.bfloat16))
            check_choice("stochastic_rounding", group["stochastic_rounding"], (False, True))
            for p in group["params"]:
                if p.is_complex():
                    raise ValueError(
                        f"{type(self).__name__} does not support complex parameters (got one of dtype {p.dtype} "
                        f"and shape {tuple(p.shape)}); optimize torch.view_as_real(param) instead")
                if not p.is_floating_point():
                    raise ValueError(f"{type(self).__name__} can only optimize floating-point parameters, got one "
                                     f"of dtype {p.dtype}")
        except ValueError:
            self.param_groups.pop()
            raise

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Also runs at the end of load_state_dict: groups saved by an older version get the newer keys' defaults.
        super().__setstate__(state)
        self._fused_plans = {}
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch.optim, but state keeps the group's state dtype: fp32 for bf16/fp16 parameters (torch would round
        it to the param's dtype, silently losing the moments' precision on every resume), bf16 with
        ``state_dtype=torch.bfloat16``."""
        super().load_state_dict(state_dict)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        owners = [(p, g) for g in self.param_groups for p in g["params"]]
        for saved_id, (p, group) in zip(saved_ids, owners):
            saved = state_dict["state"].get(saved_id)
            if saved is None:
                continue
            dtype = state_dtype_for(p, group)
            for key, value in saved.items():
                if key == "step" and isinstance(value, Tensor):
                    # torch casts "step" to float32 on the param's device for groups with fused=True (its own
                    # fused kernels' convention); ours stays a float64 CPU count
                    self.state[p][key] = value.to(device="cpu", dtype=torch.float64)
                elif isinstance(value, Tensor) and value.is_floating_point():
                    if self.state[p][key].dtype != dtype:
                        self.state[p][key] = value.to(device=p.device, dtype=dtype)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step. ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with_grads = [(group, [p for p in group["params"] if p.grad is not None]) for group in self.param_groups]
        all_params = [p for _, params in with_grads for p in params]
        self._check_grads(all_params)
        scale = self._grad_scale(all_params)
        for group, params in with_grads:
            if params:
                self._step_group(group, params, scale)
        return loss

    def _check_grads(self, params: list[Tensor]) -> None:
        for p in params:
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients (got one for a "
                                   f"parameter of shape {tuple(p.shape)}); use dense gradients, e.g. "
                                   "nn.Embedding(sparse=False)")

    # -- the machinery ------------------------------------------------------------------------------------------
    def _step_group(self, group: dict[str, Any], params: list[Tensor], scale: float) -> None:
        states = []
        for p in params:
            state = self.state[p]
            if not state:
                state.update(self._init_state(p, group))
            states.append(state)

        if resolve_fused(group, params) and _fused_step(self, group, params, states, scale):
            return  # the compiled kernel also advanced the step counters
        # the step counts of a pack may diverge on the other paths; the fused step, if it comes back, repacks
        self._fused_plans.pop(id(group), None)
        if self.counts_steps:
            for state in states:
                state["step"] += 1
        foreach = group["foreach"]
        if foreach is None:
            foreach = default_to_foreach(params)
        if foreach or group["fused"]:  # fused=True that could not compile runs foreach
            for bucket in group_by_device_and_dtype(params):
                self._run([params[i] for i in bucket], [states[i] for i in bucket], group, scale)
        else:
            for p, state in zip(params, states):
                self._run([p], [state], group, scale)

    def _run(self, params: list[Tensor], states: list[dict[str, Tensor]], group: dict[str, Any],
             scale: float) -> None:
        """Run the algorithm's core on same-dtype ``params``: through fp32 copies for bf16/fp16 parameters and
        bf16 state, and on effective gradients (maximize's sign and the gradient scale folded in, the user's
        ``p.grad`` untouched)."""
        work_dtype = math_dtype(params[0])
        grads = [p.grad if p.grad.dtype == work_dtype else p.grad.to(work_dtype) for p in params]
        factor = -scale if group["maximize"] else scale
        if factor != 1.0:
            grads = torch._foreach_mul(grads, factor)
        work_states = states
        if any(k != "step" and v.dtype != work_dtype for s in states for k, v in s.items()):
            work_states = [{k: v if k == "step" else v.to(work_dtype) for k, v in s.items()} for s in states]
        work = params if params[0].dtype == work_dtype else [p.to(work_dtype) for p in params]
        self._update(group, work, grads, work_states)
        if work is not params:
            round_into(params, work, group.get("stochastic_rounding", False))
        if work_states is not states:
            dst, src = [], []
            for state, work_state in zip(states, work_states):
                for key, value in work_state.items():
                    if key not in state:  # created by _update (Adafactor's late exp_avg)
                        state[key] = value.to(state_dtype_for(params[0], group))
                    elif state[key] is not value:
                        dst.append(state[key])
                        src.append(value)
            torch._foreach_copy_(dst, src)


def round_into(dst: list[Tensor], src: list[Tensor], stochastic: bool = False) -> None:
    """Write fp32 ``src`` into low-precision ``dst``: round to nearest, or for bf16 with ``stochastic`` round up
    with probability equal to the dropped fraction, so that updates smaller than a bf16 ulp still move the
    parameter on average."""
    if not stochastic or dst[0].dtype != torch.bfloat16:
        torch._foreach_copy_(dst, src)
        return
    for d, s in zip(dst, src):
        d.copy_(stochastic_round_to_bf16(s))


def stochastic_round_to_bf16(x: Tensor) -> Tensor:
    """fp32 → bf16 rounding that keeps the mean: add uniform noise below the 16 dropped mantissa bits, truncate."""
    bits = x.contiguous().view(torch.int32)
    noise = torch.randint_like(bits, 0, 1 << 16)
    return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)


# --------------------------------------------------------------------------------------------- traceable scalars
# The cores run eagerly with Python-number hyper-parameters (torch._foreach_* ops take those) and, inside the
# compiled fused step, with 0-d tensors for lr, betas, weight decay and step counts (so that a schedule does not
# recompile). These helpers take either: Python numbers go to the foreach kernels unchanged (so the eager paths keep
# their exact results), tensors to per-tensor ops, which the compiler fuses into one loop anyway.
Scalar: TypeAlias = float | Tensor
Scalars: TypeAlias = Scalar | list[float] | list[Tensor]


def _traced(value: Any) -> bool:
    return isinstance(value, Tensor) or (isinstance(value, list) and bool(value) and isinstance(value[0], Tensor))


def _each(value: Scalars, n: int) -> list[Scalar]:
    return value if isinstance(value, list) else [value] * n


def is_nonzero(value: Scalar) -> bool:
    """``value != 0`` for a Python number; always True for a tensor (the fused step passes decay as a tensor only
    when it is nonzero)."""
    return isinstance(value, Tensor) or value != 0


def scalar_fn(value: Scalar, tensor_fn: Callable[[Tensor], Tensor], number_fn: Callable[[float], float]) -> Scalar:
    return tensor_fn(value) if isinstance(value, Tensor) else number_fn(value)


def norms(xs: list[Tensor]) -> list[Tensor]:
    """Each tensor's 2-norm: one foreach kernel eagerly. Inside the compiled step per-tensor reductions, which
    inductor parallelises and fuses with the loops that produce their input (``_foreach_norm`` is opaque to it: a
    single-threaded call, with its input written out in full first); a matrix's rows are summed first, so that its
    row sums share the kernel's OpenMP region (a reduction to one number opens a region of its own per tensor;
    Adafactor's step on 200 tensors of 256×320 went from 26.3 to 25.3 ms, on one of 4096² from 20.4–23.3 to
    18.3–19.6 ms)."""
    if torch.compiler.is_compiling():
        return [_row_sums_total(x).sqrt() if x.dim() >= 2 else torch.linalg.vector_norm(x) for x in xs]
    return torch._foreach_norm(xs)


def _row_sums_total(x: Tensor) -> Tensor:
    """Σx² by rows, then over the rows. Where the loops stay scalar (``_scalar_loops``: a conv weight's 3×3), the total
    is summed in float64: a float32 sum over more than 4096 rows takes inductor's cascade summation, a call per
    row in a scalar loop (Adafactor's RMS kernel on four 128×128×3×3 weights: 0.64 -> 0.39 ms). Vectorised loops
    keep float32, whose cascade runs per vector (float64 took Adafactor's 200x82K step from 1.88 to 2.13× AdamW)."""
    rows = x.square().sum(-1)
    return rows.sum(dtype=torch.float64).to(x.dtype) if _scalar_loops(x.shape) else rows.sum()


def as_number(value: Tensor) -> Scalar:
    """A 0-d result as a Python float eagerly; the tensor itself inside the compiled step (no device sync)."""
    return value if torch.compiler.is_compiling() else float(value)


def smin(a: Scalar, b: Scalar) -> Scalar:
    """``min`` for numbers or 0-d tensors."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return torch.minimum(a, b)
    if isinstance(a, Tensor):
        return a.clamp(max=b)
    return b.clamp(max=a) if isinstance(b, Tensor) else min(a, b)


def smax(a: Scalar, b: Scalar) -> Scalar:
    """``max`` for numbers or 0-d tensors."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return torch.maximum(a, b)
    if isinstance(a, Tensor):
        return a.clamp(min=b)
    return b.clamp(min=a) if isinstance(b, Tensor) else max(a, b)


def mul_(xs: list[Tensor], value: Scalars) -> None:
    """xs ← xs·value."""
    if not _traced(value):
        torch._foreach_mul_(xs, value)
        return
    for x, v in zip(xs, _each(value, len(xs))):
        x.mul_(v)


def div_(xs: list[Tensor], value: Scalars) -> None:
    """xs ← xs/value."""
    if not _traced(value):
        torch._foreach_div_(xs, value)
        return
    for x, v in zip(xs, _each(value, len(xs))):
        x.div_(v)


def add_scaled_(xs: list[Tensor], ys: list[Tensor], value: Scalar) -> None:
    """xs ← xs + value·ys."""
    if not _traced(value):
        torch._foreach_add_(xs, ys, alpha=value)
        return
    for x, y in zip(xs, ys):
        x.add_(y * value)


def lerp_(xs: list[Tensor], ys: list[Tensor], weight: Scalar) -> None:
    """xs ← xs + weight·(ys − xs)."""
    if not _traced(weight):
        torch._foreach_lerp_(xs, ys, weight)
        return
    for x, y in zip(xs, ys):
        # lerp's own formula switches at weight 0.5 on the weight's value: a select in every loop of the kernel
        x.add_((y - x) * weight)


def addcmul_(xs: list[Tensor], a: list[Tensor], b: list[Tensor], value: Scalars) -> None:
    """xs ← xs + value·a·b."""
    if not _traced(value):
        torch._foreach_addcmul_(xs, a, b, value)
        return
    for x, u, w, v in zip(xs, a, b, _each(value, len(xs))):
        x.add_(u * w * v)


def addcdiv_(xs: list[Tensor], a: list[Tensor], b: list[Tensor], value: Scalars) -> None:
    """xs ← xs + value·a/b."""
    if not _traced(value):
        torch._foreach_addcdiv_(xs, a, b, value)
        return
    for x, u, w, v in zip(xs, a, b, _each(value, len(xs))):
        x.add_(u / w * v)


# An opaque op for inductor (it cannot see inside an op it does not lower) that claims to update its tensors in
# place and does nothing: inductor must store them before the call and read them back after it. In place, inductor
# passes its own buffers; an op returning copies (used before) cost a second buffer and a copy per tensor
# (Adafactor's 3×3 conv weights: their row and column factors, 2/3 of the weight). Defined through the low-level
# Library API: a call costs ~4 µs against ~14 µs for a torch.library.custom_op, and the fused step makes one or two
# per kernel call. The composite kernel also serves fake tensors while tracing.
_LIBRARY = torch.library.Library("optarena", "DEF")
_LIBRARY.define("keep_(Tensor(a!)[] values) -> ()")
_LIBRARY.impl("keep_", lambda values: None, "CompositeExplicitAutograd")
_keep = torch.ops.optarena.keep_.default


def hoisted(*lists: list[Scalar]) -> tuple[list[Scalar], ...]:
    """Per-tensor scalars (bias corrections, step sizes), computed once per call of the fused step.

    Eagerly they are Python numbers and come back unchanged. Inside the compiled step inductor would otherwise inline
    their ``pow``/``exp`` into every iteration of the element loop (libm calls set errno, so the C++ compiler may not
    hoist them): Adan's step ran 3× slower so. Passing them through one opaque op makes inductor store them first.
    """
    if not lists or not lists[0] or not isinstance(lists[0][0], Tensor):
        return lists
    # one table (a pack's per-member vectors and scalars broadcast together): one opaque op, one buffer
    cells = torch.broadcast_tensors(*(torch.as_tensor(v, dtype=torch.float64) for values in lists for v in values))
    (table,) = stored([torch.stack(cells)])
    rows = iter(table.unbind())
    return tuple([next(rows) for _ in values] for values in lists)


def stored(tensors: list[Tensor]) -> list[Tensor]:
    """``tensors`` themselves; inside the compiled step, small tensors (per-row or per-column factors) that inductor
    stores, all in one opaque call, before the element loops that broadcast them, instead of recomputing them in
    every iteration (see ``hoisted``)."""
    if tensors and torch.compiler.is_compiling():
        _keep(tensors)
    return tensors


def step_values(states: list[dict[str, Tensor]]) -> list[Scalar]:
    """Each state's step count: a Python float eagerly, the 0-d tensor itself inside the compiled fused step."""
    if torch.compiler.is_compiling():
        return [s["step"] for s in states]
    return [float(s["step"]) for s in states]


# --------------------------------------------------------------------------------------------- the fused step
#: Options of every fused kernel: no per-call size asserts (their cost grows with the tensor count and the inputs
#: are checked here once); ``hoisted``'s table written by one loop (on CPU inductor otherwise writes each of its
#: cells into its own alias of the table, one Python ``reinterpret_tensor`` call per cell per kernel call: 48 for
#: Adan's 16-tensor kernel, a quarter of its 126 µs of fixed cost per call).
_INDUCTOR_OPTIONS: dict[str, Any] = {"size_asserts": False, "force_pointwise_cat": True}
_kernels: dict[tuple[Any, ...], Callable[..., None]] = {}
#: Tensors with fewer elements are updated by serial loops: a parallel region per tiny tensor costs more than it
#: saves. Larger ones are compiled on large stand-in sizes, so that inductor emits OpenMP-parallel loops.
SMALL_TENSOR = 1 << 15
#: Elements per pack of small tensors (see ``_Pack``): the two scratch buffers of a plan hold at most this many each
#: (2 MiB for fp32). Smaller packs cost a kernel call and three foreach calls more per step: a prototype Lion step on
#: 2000 tensors of 1K took 21, 10, 8.7 and 7.4 ms in packs of 8K, 32K, 64K and 256K elements, and 7.4 ms in one pack.
PACK_ELEMENTS = 1 << 18
#: Fewest small tensors with the same last two dims that Adafactor-like algorithms pack together (a lone one is
#: chunked: a pack of one would specialise the kernel to one member).
MIN_SEGMENTED = 2
#: A guarded kernel (real shapes) is compiled for the sizes below this among its tensors' last two dims, and keyed by
#: them. Inductor vectorises along the last dim: a symbolic one (a conv weight's 3×3) got masked 16-lane vectors for 3
#: elements per row and vector-at-a-time reductions; compiled in, its row sums unroll. Adafactor on 4 weights of
#: 128×128×3×3: 5.9 -> 3.7 ms per step, against 0.45 for torch's fused AdamW.
STATIC_SIZE = 16


def _static_sizes(shape: Sequence[int]) -> tuple[int | None, ...]:
    """The sizes among the last two of ``shape`` that a guarded kernel is compiled for (None: symbolic)."""
    return tuple(size if size < STATIC_SIZE else None for size in shape[-2:])


def _guarded_class(shape: Sequence[int]) -> tuple[int, tuple[int | None, ...]]:
    """What a guarded kernel's chunks have in common besides the configuration: the dim count and small sizes."""
    return len(shape), _static_sizes(shape)


def _scalar_loops(shape: Sequence[int]) -> bool:
    """Whether a guarded kernel on tensors of ``shape`` should leave its loops scalar: with a small last dim inductor
    vectorises along it anyway, in masked vectors of that many lanes, and gcc's scalar loops ran 3× faster (the
    update θ − α·g·r·c over a 128×128×3×3 weight: 0.24 -> 0.08 ms)."""
    return len(shape) > 0 and 1 < shape[-1] < STATIC_SIZE


#: Hyper-parameters the fused kernels take as tensor inputs, because schedules change them between steps: every LR
#: scheduler the lr, OneCycleLR and CyclicLR (``cycle_momentum``, on by default) ``betas[0]``. A nonzero weight decay
#: is an input too; the other hyper-parameters are compiled in.
SCHEDULED = ("lr", "betas")

_compile_error: list[str] = []  # the first failure, if torch.compile cannot work here


def default_to_fused(params: Sequence[Tensor]) -> bool:
    """``fused=None`` resolves to False everywhere. On this project's CPU the fused step is 2–10× faster per step,
    but its first step compiles for 11–22 s cold on 200 tensors, which only pays off after hundreds of steps; no GPU
    was measured."""
    return False


def resolve_fused(group: dict[str, Any], params: Sequence[Tensor]) -> bool:
    fused = group["fused"]
    if fused is None:
        fused = default_to_fused(params)
    return bool(fused) and not _compile_error


def _fused_body(update: Callable[..., None], consts: dict[str, Any], keys: tuple[str, ...], work_dtype: torch.dtype,
                counts_steps: bool, stochastic: bool) -> Callable[..., None]:
    """The step that ``torch.compile`` fuses: casts in, the algorithm's own ``_update``, casts and copies out."""

    def fused_step(params: list[Tensor], grads: list[Tensor], buffers: list[list[Tensor]], steps: list[Tensor],
                   lr: Tensor, weight_decay: Tensor | None, factor: Tensor | None, betas: list[Tensor] | None,
                   segments: tuple[Tensor, ...] | None = None) -> None:
        group = dict(consts)
        group["lr"] = lr
        if weight_decay is not None:
            group["weight_decay"] = weight_decay
        if betas is not None:
            group["betas"] = tuple(beta[0] for beta in betas)
        work = [p.to(work_dtype) for p in params]
        work_grads = [g.to(work_dtype) for g in grads]
        if factor is not None:
            work_grads = [g * factor for g in work_grads]
        states = []
        for i in range(len(params)):
            state = {key: buffers[j][i].to(work_dtype) for j, key in enumerate(keys)}
            if counts_steps:
                state["step"] = steps[i][0] + 1
            states.append(state)
        if segments is None:
            update(group, work, work_grads, states)
        else:
            update(group, work, work_grads, states, segments=Segments(*segments))
        for p, w in zip(params, work):
            p.copy_(stochastic_round_to_bf16(w) if stochastic else w)
        for j, key in enumerate(keys):
            for i in range(len(params)):
                buffers[j][i].copy_(states[i][key])
        if counts_steps:
            for i in range(len(params)):
                steps[i].copy_(states[i]["step"])

    return fused_step


#: The guards that a kernel with real shapes keeps: on its tensors (dtype, device, static sizes, strides), on the
#: relations between their sizes (duck sizing, divisibility) and on its lists' lengths. A shape the kernel was not
#: compiled for must still fail them and compile anew. The others (constants, closures, globals, global modes) are
#: pinned by the kernel's key, as for the flat kernels that drop all guards; checked on every call, they cost
#: Adafactor's YOLOv8n step 0.8–1.0 ms of 13–14 (27 calls).
_SHAPE_GUARDS = frozenset({"TENSOR_MATCH", "SHAPE_ENV", "SEQUENCE_LENGTH", "DUPLICATE_INPUT"})


def _shape_guards_only(guards: list[Any]) -> list[bool]:
    return [guard.guard_type in _SHAPE_GUARDS for guard in guards]


def _kernel(opt: OptarenaOptimizer, key: tuple[Any, ...], consts: dict[str, Any], keys: tuple[str, ...],
            work_dtype: torch.dtype, stochastic: bool, flatten: bool, scalar: bool = False) -> Callable[..., None]:
    kernel = _kernels.get(key)
    if kernel is None:
        from . import _codegen
        # an uninitialised instance: the kernel needs the class's math, not this optimizer (nor to keep it alive)
        bare = object.__new__(type(opt))
        body = _fused_body(bare._update, consts, keys, work_dtype, opt.counts_steps, stochastic)
        # Dynamo caches (and limits recompiles) per code object: each key gets its own copy of the body.
        code = body.__code__.replace(co_name=f"fused_step_{len(_kernels)}")
        body = types.FunctionType(code, body.__globals__, code.co_name, body.__defaults__, body.__closure__)
        # the thread count is compiled into the C++ kernel; naming it keeps inductor's on-disk cache from handing a
        # kernel built for another thread count (e.g. a 1-thread test run) to this process. CACHE_KEY does the same
        # for kernels generated without ``_codegen``'s adjustments.
        options = {**_INDUCTOR_OPTIONS, "cpp.threads": torch.get_num_threads(),
                   "post_grad_custom_post_pass": _codegen.CACHE_KEY}
        if flatten:
            # Guards would cost ~1 µs per tensor per call. Safe to drop: ``key`` pins everything they would check
            # (count, dtypes, device, constants), shapes are dynamic 1-D and the kernel was compiled on distinct odd
            # sizes, so no size was specialised (the other inputs are 0-d, or a pack's step vector of length 3).
            options["guard_filter_fn"] = torch.compiler.skip_all_guards_unsafe
            # Each tensor's last < 32 elements take a scalar loop: a vectorised tail restates the whole body with
            # masks, which doubled gcc's time (Adan's 16-tensor kernel with bf16 state: 10.4–11.7 -> 4.2–4.3 s).
            options["cpp.enable_loop_tail_vec"] = False
        else:
            options["guard_filter_fn"] = _shape_guards_only
        if scalar:
            options["cpp.simdlen"] = 1
        kernel = torch.compile(body, fullgraph=True, dynamic=True, options=options)
        _kernels[key] = kernel
        opt._fused_kernels_made += 1
        if opt._fused_kernels_made == 32:
            warnings.warn(f"{type(opt).__name__}(fused=True) has compiled 32 kernels: a hyper-parameter other than lr, "
                          "betas and weight_decay (e.g. eps) seems to change between steps, and each new value "
                          "compiles again; keep it constant or use fused=False", RuntimeWarning, stacklevel=5)
    return kernel


def slice_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """The last two dims, over which Adafactor-like algorithms reduce per slice (none for 0-d and 1-D tensors)."""
    return tuple(shape[-2:]) if len(shape) >= 2 else ()


class Segments(NamedTuple):
    """Where the members of a pack lie along its dim 0. A pack for algorithms with per-tensor reductions holds its
    members end to end as slices of their last two dims (``slice_shape``; a 1-D pack holds their elements), so that
    tensors of different shapes share one kernel call: a 64×32×3×3 and a 16×16×3×3 weight are 2048 + 256 slices of
    3×3. Per-tensor reductions sum per block of slices (the block size divides every member's slice count), then
    per member; per-member values meet the elements through each slice's member index."""

    member_of: Tensor  #: the member of each slice (int64)
    block_member: Tensor  #: the member of each block of slices (int64; its length is the block count)
    block_ends: Tensor  #: the blocks up to each member's end (int64)
    numels: Tensor  #: elements per member (int64)

    def rms(self, x: Tensor) -> Tensor:
        """Each member's root mean square of its slices of ``x`` (one value per member)."""
        # per slice first: summed over the blocks' flat index, the loop divided every element's index by the slice
        # and block sizes (a pack of six 64×64×3×3 weights: 1.2 ms, 0.11 ms so)
        per_slice = x.square().sum(dim=tuple(range(1, x.dim()))) if x.dim() > 1 else x.square()
        per_block = per_slice.view(self.block_member.shape[0], -1).sum(-1)
        # member sums as differences of a float64 running sum over the blocks (torch.segment_reduce took 115 µs per
        # call on YOLOv8n's packs); its rounding, relative to the sum up to the member, is below float32's
        zero = per_block.new_zeros(1, dtype=torch.float64)
        running = torch.cat([zero, per_block.to(torch.float64).cumsum(0)])[self.block_ends]
        sums = running.diff(prepend=zero)
        return (sums / self.numels).sqrt().to(x.dtype)

    def spread(self, values: list[Tensor], xs: list[Tensor]) -> list[Tensor]:
        """Per-member values (vectors, as from ``rms``) repeated over each member's slices, shaped to broadcast
        against ``xs``."""
        return [v[self.member_of].to(x.dtype).view(-1, *[1] * (x.dim() - 1)) for v, x in zip(values, xs)]


class _Pack:
    """Small tensors stepped as one by a single kernel call.

    Elementwise algorithms see them as one flat tensor (any shapes); algorithms with per-tensor reductions
    (Adafactor) see tensors with the same last two dims packed along dim 0, with their ``Segments``. Their state
    lives in buffers laid out so, each state entry a view of one (``state_dict`` and the other paths still see one
    tensor per parameter and key), with the step counts in one float64 vector; a pack only joins tensors whose
    counts are equal, so that its kernel reads one count and writes it back to all. Each step copies the gradients
    and parameters into two scratch buffers and the parameters back (C++ ops, ~0.4–1 µs per tensor) around one
    kernel call, against ~3.5 µs of Python and dynamo per tensor around a compiled call that takes the tensors
    themselves (2000 tensors of 1K: Adan's step 15 against 28 ms, Adafactor's 15 against 64 ms).
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
        self.param_slots = _segments(scratch_params, self.params)
        self.grad_slots = _segments(scratch_grads, self.params)
        self.flat_state = []
        for key in keys:
            values = [states[i][key] for i in members]
            flat = torch.empty(sum(v.numel() for v in values), dtype=values[0].dtype, device=values[0].device)
            views = _segments(flat, values)
            torch._foreach_copy_(views, values)
            for i, view in zip(members, views):
                states[i][key] = view
            self.flat_state.append(flat.view(-1, *slice_shape(values[0].shape)) if segmented else flat)
        self.segments: tuple[Tensor, ...] | None = None
        if segmented:
            device = self.flat_param.device
            numels = torch.tensor([p.numel() for p in self.params], device=device)
            slices = [p.numel() // math.prod(shape) for p in self.params]
            lengths = torch.tensor(slices, device=device)
            # blocks that no member boundary splits keep the running sum short (1×1 conv weights and vectors have
            # one element per slice)
            blocks = lengths // math.gcd(*slices)
            member = torch.arange(len(members), device=device)
            self.segments = (member.repeat_interleave(lengths), member.repeat_interleave(blocks), blocks.cumsum(0),
                             numels)
        self.steps: list[Tensor] = []
        if "step" in states[members[0]]:
            counts = torch.stack([states[i]["step"] for i in members]).to(torch.float64)
            for j, i in enumerate(members):
                states[i]["step"] = counts[j]
            self.steps = [counts]

    def load(self) -> list[Tensor]:
        """Copy the gradients and parameters into the scratch buffers; the gradient argument of the kernel."""
        torch._foreach_copy_(self.grad_slots, [p.grad for p in self.params])
        torch.cat(self.param_views, out=self.flat_param.view(-1))  # 0.4 µs per tensor against 0.65 for a copy_
        return [self.flat_grad]

    def store(self) -> None:
        torch._foreach_copy_(self.params, self.param_slots)


def _segments(flat: Tensor, like: list[Tensor]) -> list[Tensor]:
    """Consecutive views of ``flat`` shaped like ``like``."""
    views, offset = [], 0
    for t in like:
        views.append(flat[offset:offset + t.numel()].view(t.shape))
        offset += t.numel()
    return views


class _FusedPlan:
    """A group's fused step, kept between steps: which kernel runs on which tensors, with the 1-D views of the
    parameters and state that it takes. Building it costs several µs per tensor (views, grouping, packing); reusing
    it leaves only a check that nothing was replaced and one view per gradient (gradients are new tensors every step
    after ``zero_grad()``)."""

    def __init__(self, key: tuple[Any, ...], params: list[Tensor], states: list[dict[str, Tensor]]) -> None:
        self.key = key
        self.params = params
        self.states = states
        self.data_ptrs = [p.data_ptr() for p in params]
        self.state_tensors: list[Tensor] = []  # set once packing has put its views into the states
        #: per (device, math dtype): the calls, each ``(kernel, indices, param views, state views, step views, pack
        #: or None)``
        self.buckets: list[tuple[torch.device, torch.dtype, list[tuple[Any, ...]]]] = []
        self.eager: list[int] = []  # non-contiguous and DTensor params: the per-tensor loop
        #: per (device, math dtype): the kernels' lr, weight decay, gradient factor and betas, refilled each step
        self.inputs: dict[tuple[torch.device, torch.dtype], tuple[Any, ...]] = {}
        self.scratch_bytes = 0

    def serves(self, key: tuple[Any, ...], params: list[Tensor], states: list[dict[str, Tensor]]) -> bool:
        """Whether this plan is still right: same configuration, parameters, state dicts and state tensors, and no
        parameter re-pointed (``p.data = ...``) since it was made."""
        return (key == self.key and len(params) == len(self.params)
                and all(map(operator.is_, params, self.params)) and all(map(operator.is_, states, self.states))
                and list(map(Tensor.data_ptr, params)) == self.data_ptrs
                and all(map(operator.is_, (t for s in states for t in s.values()), self.state_tensors)))


def _fused_step(opt: OptarenaOptimizer, group: dict[str, Any], params: list[Tensor], states: list[dict[str, Tensor]],
                scale: float) -> bool:
    """Run the group's step through compiled kernels; False (nothing changed) if it cannot, after one warning."""
    factor = -scale if group["maximize"] else scale
    wd = group.get("weight_decay", 0.0)
    consts = {k: v for k, v in group.items() if k not in ("params", *SCHEDULED)}
    # a nonzero weight decay is a kernel input too: its value is not part of the kernel's identity
    const_key = tuple((k, repr(v)) for k, v in sorted(consts.items()) if k != "weight_decay")
    key = (const_key, wd != 0, factor != 1.0, torch.get_num_threads())
    values = (group["lr"], wd if wd != 0 else None, factor if factor != 1.0 else None, group.get("betas"))
    plan = opt._fused_plans.get(id(group))
    if plan is None or not plan.serves(key, params, states):
        plan = _make_plan(opt, key, consts, values, params, states)
        if plan is None:
            return False
        opt._fused_plans[id(group)] = plan
    flatten = opt.fused_flatten
    for device, work_dtype, calls in plan.buckets:
        hyper = plan.inputs[(device, work_dtype)]
        _refill(hyper, values)
        for kernel, idx, ps, bufs, steps, pack in calls:
            if pack is not None:
                kernel(ps, pack.load(), bufs, steps, *hyper, pack.segments)
                pack.store()
                continue
            # a strided grad is copied by ravel (it is only read)
            gs = [params[i].grad.ravel() for i in idx] if flatten else [params[i].grad for i in idx]
            kernel(ps, gs, bufs, steps, *hyper)
    if plan.eager:
        if opt.counts_steps:
            for i in plan.eager:
                states[i]["step"] += 1
        for i in plan.eager:
            opt._run([params[i]], [states[i]], group, scale)
    return True


def _make_plan(opt: OptarenaOptimizer, key: tuple[Any, ...], consts: dict[str, Any], values: tuple[Any, ...],
               params: list[Tensor], states: list[dict[str, Tensor]]) -> _FusedPlan | None:
    """Assign the tensors to kernels (compiling those not yet made) and pack the small ones; None if compilation
    fails."""
    const_key, with_wd, with_factor, threads = key
    flatten = opt.fused_flatten
    plan = _FusedPlan(key, params, states)
    groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for i, p in enumerate(params):
        if (flatten and not p.is_contiguous()) or hasattr(p, "placements") or p.numel() == 0:
            # a strided view cannot be flattened without a copy; a DTensor's shard is local; an empty tensor has
            # nothing to compute (and would specialise a kernel to size 0)
            plan.eager.append(i)
            continue
        state = states[i]
        step = float(state["step"]) if "step" in state else None
        # small tensors are packed; the others are chunked by size class (for flat ones: whether inductor should
        # emit OpenMP-parallel loops)
        small = p.numel() < SMALL_TENSOR and p.is_contiguous()
        kind = (("flat", step) if flatten else ("segmented", slice_shape(p.shape), step)) if small else (
            "chunked", p.numel() >= SMALL_TENSOR if flatten else _guarded_class(p.shape))
        state_dtypes = tuple((k, v.dtype) for k, v in state.items() if k != "step")
        groups[(p.device, p.dtype, tuple(state), state_dtypes, kind)].append(i)
    for group_key in list(groups):
        if group_key[-1][0] == "segmented" and len(groups[group_key]) < MIN_SEGMENTED:
            for i in groups.pop(group_key):
                groups[(*group_key[:-1], ("chunked", _guarded_class(params[i].shape)))].append(i)
    buckets: dict[tuple[torch.device, torch.dtype], list[tuple[Any, ...]]] = defaultdict(list)
    packs: list[tuple[Any, ...]] = []  # made once the scratch size is known
    for (device, dtype, state_keys, state_dtypes, kind), members in groups.items():
        work_dtype = torch.float32 if dtype in LOW_PRECISION else dtype
        keys = tuple(k for k in state_keys if k != "step")
        stochastic = bool(consts.get("stochastic_rounding")) and dtype == torch.bfloat16
        config = (type(opt), device, dtype, state_dtypes, const_key, with_wd, with_factor, stochastic, threads)
        calls = buckets[(device, work_dtype)]
        if kind[0] != "chunked":
            packs.extend((calls, config, keys, work_dtype, stochastic, run)
                         for run in _pack_runs(params, members, flatten))
            continue
        # A guarded kernel (real shapes) compiles again for each pattern of equal sizes among its tensors, so its
        # chunks are cut from tensors of one shape (64 Adafactor tensors of 12 shapes, cold: a 118 s first step in
        # mixed chunks, 56 s so)
        same_shape: dict[Any, list[int]] = defaultdict(list)
        for i in members:
            same_shape[None if flatten else params[i].shape].append(i)
        for run in same_shape.values():
            start = 0
            for chunk in opt.fused_chunks:
                while len(run) - start >= chunk:
                    idx = run[start:start + chunk]
                    start += chunk
                    kernel = _kernel(opt, (*config, chunk, kind), consts, keys, work_dtype, stochastic, flatten,
                                     scalar=not flatten and _scalar_loops(params[idx[0]].shape))
                    calls.append((kernel, idx, *_fused_args(params, states, idx, keys, flatten), None))
    # one pair of scratch buffers per (device, dtype), sized for the largest pack
    sizes: dict[tuple[torch.device, torch.dtype], int] = {}
    for *_, run in packs:
        where = (params[run[0]].device, params[run[0]].dtype)
        sizes[where] = max(sizes.get(where, 0), sum(params[i].numel() for i in run))
    scratch = {(device, dtype): [torch.empty(n, dtype=dtype, device=device) for _ in range(2)]
               for (device, dtype), n in sizes.items()}
    plan.scratch_bytes = sum(2 * n * dtype.itemsize for (_, dtype), n in sizes.items())
    for calls, config, keys, work_dtype, stochastic, run in packs:
        pack = _Pack(params, states, run, keys, *scratch[(params[run[0]].device, params[run[0]].dtype)],
                     segmented=not flatten)
        slices = pack.flat_param.shape[1:]
        size_class = ("packed", pack.numel >= SMALL_TENSOR, pack.flat_param.dim(),
                      None if flatten else _static_sizes(slices))
        kernel = _kernel(opt, (*config, 1, size_class), consts, keys, work_dtype, stochastic, flatten,
                         scalar=not flatten and _scalar_loops(slices))
        calls.append((kernel, run, [pack.flat_param], [[flat] for flat in pack.flat_state], pack.steps, pack))
    plan.buckets = [(device, work_dtype, calls) for (device, work_dtype), calls in buckets.items()]
    plan.state_tensors = [t for s in states for t in s.values()]
    try:  # compile everything first, so that a failure leaves this step to the foreach path untouched
        for (device, work_dtype, calls) in plan.buckets:
            hyper = plan.inputs[(device, work_dtype)] = _kernel_inputs(values, device, work_dtype)
            for kernel, idx, ps, bufs, steps, pack in calls:
                # A kernel without guards runs whatever it was compiled on; one that keeps them (real shapes) is
                # run on stand-ins of each new shape, so that a shape it was not compiled for compiles here, not in
                # the step.
                segments = pack.segments if pack is not None else None
                shapes = None if flatten else (*(p.shape for p in ps), segments and segments[0].shape)
                if shapes not in kernel.__dict__.setdefault("_optarena_shapes", set()):
                    gs = [pack.flat_grad] if pack is not None else [params[i].grad for i in idx]
                    _compile(opt, kernel, (ps, gs, bufs, steps, segments), hyper, flatten, pack is not None)
                    kernel._optarena_shapes.add(shapes)
    except Exception as err:  # noqa: BLE001 - whatever the compiler raised, foreach still works
        _compile_error.append(f"{type(err).__name__}: {err}")
        warnings.warn(f"{type(opt).__name__}(fused=True): torch.compile failed ({_compile_error[0][:500]}); "
                      "using foreach instead", RuntimeWarning, stacklevel=5)
        return None
    return plan


def _kernel_inputs(values: tuple[Any, ...], device: torch.device, work_dtype: torch.dtype) -> tuple[Any, ...]:
    """Tensors for the values a schedule may change between steps (``SCHEDULED``, a nonzero weight decay and the
    gradient factor; None stays None: compiled in). Distinct tensors: one passed twice would compile as aliased.
    Betas are float64, like the Python floats of the other paths (1 − β and β^t are exact to double before they meet
    fp32), in vectors of length 1 (dynamo compiles a length of 1 in; a longer one could be taken for another size of
    the same value, and the kernels have no guards to tell). Not 0-d: dynamo gives a 0-d float64 input a symbolic
    float for its value, which the graph never uses, and then traces the whole kernel again to make it a constant
    (remembered by the symbol's name for the rest of the process, so only the first kernel a process compiled paid:
    AdaX's 16-tensor kernel 13.7 -> 9.7 s cold, Adan's 26.7 -> 16.5 s, Lion's 7.2 -> 5.6 s). A kernel from
    inductor's on-disk cache skips that pass."""
    lr, wd, factor, betas = values

    def scalar(value: float | None, dtype: torch.dtype) -> Tensor | None:
        return None if value is None else torch.tensor(value, dtype=dtype, device=device)

    return (scalar(lr, work_dtype), scalar(wd, work_dtype), scalar(factor, work_dtype),
            None if betas is None else [torch.tensor([b], dtype=torch.float64, device=device) for b in betas])


def _refill(inputs: tuple[Any, ...], values: tuple[Any, ...]) -> None:
    """Put this step's values into the tensors of ``_kernel_inputs`` (nothing is allocated per step)."""
    *scalars, betas = inputs
    *numbers, beta_values = values
    for tensor, value in zip((*scalars, *(betas or ())), (*numbers, *(beta_values or ()))):
        if tensor is not None:
            tensor.fill_(value)


def _pack_runs(params: list[Tensor], members: list[int], flat: bool) -> list[list[int]]:
    """``members`` split, in order, into packs of at most PACK_ELEMENTS elements (or one tensor). A segmented pack
    of one member would specialise its kernel to that count: it joins the pack before (exceeding PACK_ELEMENTS by
    less than SMALL_TENSOR)."""
    runs: list[list[int]] = [[]]
    total = 0
    for i in members:
        n = params[i].numel()
        if runs[-1] and total + n > PACK_ELEMENTS:
            runs.append([])
            total = 0
        runs[-1].append(i)
        total += n
    if not flat and len(runs) > 1 and len(runs[-1]) == 1:
        runs[-2].extend(runs.pop())
    return runs


def _fused_args(params: list[Tensor], states: list[dict[str, Tensor]], idx: list[int], keys: tuple[str, ...],
                flatten: bool) -> tuple[list[Tensor], list[list[Tensor]], list[Tensor]]:
    """The kernel's parameter, state and step arguments for ``params[idx]`` (the gradients are added per step)."""
    if flatten:
        ps = [params[i].view(-1) for i in idx]
        bufs = [[states[i][k].view(-1) for i in idx] for k in keys]
    else:
        ps = [params[i].detach() for i in idx]  # a plain tensor, as the stand-ins (guards check types)
        bufs = [[states[i][k] for i in idx] for k in keys]
    # 1-element views: torch 2.13's compiled code drops in-place updates of 0-d float64 CPU inputs
    steps = [states[i]["step"].view(1) for i in idx] if "step" in states[idx[0]] else []
    return ps, bufs, steps


def _compile(opt: OptarenaOptimizer, kernel: Callable[..., None], args: tuple[Any, ...],
             hyper: tuple[Any, ...], flatten: bool, packed: bool) -> None:
    """Compile ``kernel`` on stand-in tensors (the real ones stay untouched if compilation fails). A 1-D kernel's
    are of distinct odd sizes, so that no size is specialised to 0, 1 or another tensor's size (the sizes are
    inductor's hints for whether to parallelise, so they are large for the large-tensor kernels); a kernel with real
    shapes gets clones of its arguments, with their small trailing sizes (``STATIC_SIZE``) compiled in."""
    import time

    from . import _codegen

    ps, gs, bufs, steps, segments = args
    start = time.perf_counter()
    if flatten:
        base = 37 if all(p.numel() < SMALL_TENSOR for p in ps) else SMALL_TENSOR * 2 + 1
        sizes = [base + 2 * i for i in range(len(ps))]
        fake = [torch.randn(n, dtype=p.dtype, device=p.device) for n, p in zip(sizes, ps)]
        fake_grads = [torch.randn(n, dtype=g.dtype, device=g.device) for n, g in zip(sizes, gs)]
        fake_bufs = [[torch.rand(n, dtype=b.dtype, device=b.device) for n, b in zip(sizes, row)] for row in bufs]
    else:
        fake = [p.detach().clone() for p in ps]
        fake_grads = [g.detach().clone() for g in gs]
        fake_bufs = [[b.detach().clone() for b in row] for row in bufs]
        first = 1 if packed else 0  # a pack's dim 0 counts its members' slices: symbolic
        for t in (*fake, *fake_grads, *(b for row in fake_bufs for b in row)):
            for dim in range(max(first, t.dim() - 2), t.dim()):
                if t.shape[dim] < STATIC_SIZE:
                    torch._dynamo.mark_static(t, dim)
    # A flat pack's step vector has one entry per member: 3 so that its length is not specialised to 1. Guarded
    # kernels get the real lengths: a stand-in length equal to some size of the stand-ins by chance (dynamo then
    # assumes they are equal) would fail a guard on the first real step.
    fake_steps = [torch.zeros(3 if packed and flatten else s.numel(), dtype=s.dtype, device=s.device) for s in steps]
    # Dynamo would first trace the group's floats (eps, RLion's α) as symbolic inputs, find that they must be
    # constants and trace again from the start (a quarter of a cold compile); they are constants of the kernel's key
    # anyway.
    with torch._dynamo.config.patch(specialize_float=True), _codegen.adjusted_codegen():
        kernel(fake, fake_grads, fake_bufs, fake_steps, *hyper, segments)
    opt.fused_compile_seconds += time.perf_counter() - start
