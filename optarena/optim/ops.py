"""The operations an algorithm's math is written in: lists of tensors in, in-place updates out.

Every path runs the same math function: eagerly with Python-number hyper-parameters, which go to ``torch._foreach_*``
kernels unchanged (so the loop and foreach paths keep their exact results), and inside the compiled fused step with
0-d tensors for lr, betas, weight decay and step counts (so that a schedule does not recompile), which go to
per-tensor ops that inductor fuses into one loop. Where the compiled step needs other code than the eager one for
speed, the choice is made here, once: an algorithm written in these ops needs no knowledge of the compiler.

Per-tensor values (bias corrections, step sizes, RMS) are a number or 0-d tensor per tensor; while the fused step
steps a pack of small tensors (:mod:`.segments`), they are a vector per member, which these ops spread over the
members' slices where they meet the elements.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import torch
from torch import Tensor

from .segments import layout

Scalar: TypeAlias = float | Tensor
Scalars: TypeAlias = Scalar | list[float] | list[Tensor]

#: Sizes below this among a tensor's last two dims are compiled into the fused kernels of non-elementwise
#: algorithms (a conv weight's 3×3): inductor vectorises along the last dim, and a symbolic small one got masked
#: vectors (benchmarks/NOTES.md, "static sizes").
STATIC_SIZE = 16


def compiling() -> bool:
    return torch.compiler.is_compiling()


def scalar_loops(shape: Sequence[int]) -> bool:
    """Whether compiled loops over ``shape`` should stay scalar: with a small last dim inductor vectorises along it
    anyway, in masked vectors of that many lanes, which gcc's scalar loops beat."""
    return len(shape) > 0 and 1 < shape[-1] < STATIC_SIZE


# ------------------------------------------------------------------------------------------ scalars
def _traced(value: Any) -> bool:
    return isinstance(value, Tensor) or (isinstance(value, list) and bool(value) and isinstance(value[0], Tensor))


def _each(value: Scalars, n: int) -> list[Scalar]:
    return value if isinstance(value, list) else [value] * n


def _against(value: Scalar, x: Tensor) -> Scalar:
    """A per-tensor value where it meets ``x``'s elements: in ``x``'s dtype (as a Python number would be; a 0-d
    float64 tensor would promote a 0-d ``x``), spread over the members of a pack."""
    if not isinstance(value, Tensor):
        return value
    segments = layout()
    if segments is not None and value.dim() == 1:
        return segments.spread(value, x)
    return value.to(x.dtype)


def is_nonzero(value: Scalar) -> bool:
    """``value != 0`` for a Python number; always True for a tensor (the fused step passes decay as a tensor only
    when it is nonzero)."""
    return isinstance(value, Tensor) or value != 0


def scalar_fn(value: Scalar, tensor_fn: Callable[[Tensor], Tensor], number_fn: Callable[[float], float]) -> Scalar:
    return tensor_fn(value) if isinstance(value, Tensor) else number_fn(value)


def rsqrt(value: Scalar) -> Scalar:
    """``1/sqrt(value)`` for a number or a tensor: a factor to multiply by where dividing by the root would cost a
    division per element."""
    return scalar_fn(value, torch.rsqrt, lambda x: 1 / math.sqrt(x))


def smin(a: Scalar, b: Scalar) -> Scalar:
    """``min`` for numbers or tensors."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return torch.minimum(a, b)
    if isinstance(a, Tensor):
        return a.clamp(max=b)
    return b.clamp(max=a) if isinstance(b, Tensor) else min(a, b)


def smax(a: Scalar, b: Scalar) -> Scalar:
    """``max`` for numbers or tensors."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return torch.maximum(a, b)
    if isinstance(a, Tensor):
        return a.clamp(min=b)
    return b.clamp(min=a) if isinstance(b, Tensor) else max(a, b)


def step_values(states: list[dict[str, Tensor]]) -> list[Scalar]:
    """Each state's step count (already advanced for this step): a Python float eagerly, a 0-d tensor inside the
    compiled step (where a pack's count is a vector of equal counts)."""
    if compiling():
        return [s["step"].reshape(-1)[0] for s in states]
    return [float(s["step"]) for s in states]


_LIBRARY = torch.library.Library("optarena", "DEF")
# An op opaque to inductor that claims to update its tensors in place and does nothing: inductor must store them
# before the call and read them back after it. The low-level Library API is the cheapest per call (NOTES.md,
# "opaque op"); its composite kernel also serves fake tensors while tracing.
_LIBRARY.define("keep_(Tensor(a!)[] values) -> ()")
_LIBRARY.impl("keep_", lambda values: None, "CompositeExplicitAutograd")
_keep = torch.ops.optarena.keep_.default


def stored(tensors: list[Tensor]) -> list[Tensor]:
    """``tensors`` themselves. Compiled, small tensors (per-row or per-column factors) that inductor writes out,
    all in one opaque call, before the element loops that broadcast them, instead of recomputing them in every
    iteration."""
    if tensors and compiling():
        _keep(tensors)
    return tensors


def hoisted(*lists: list[Scalar]) -> tuple[list[Scalar], ...]:
    """Per-tensor scalars (bias corrections, step sizes), computed once per call of the compiled step.

    Eagerly they are Python numbers and come back unchanged. Compiled, inductor would inline their ``pow``/``exp``
    into every iteration of the element loop (libm calls set errno, so gcc may not hoist them: NOTES.md, "hoisted
    scalars"): they pass through ``stored`` as one table (a pack's per-member vectors and scalars broadcast
    together).
    """
    if not lists or not lists[0] or not isinstance(lists[0][0], Tensor):
        return lists
    cells = torch.broadcast_tensors(*(torch.as_tensor(v, dtype=torch.float64) for values in lists for v in values))
    (table,) = stored([torch.stack(cells)])
    rows = iter(table.unbind())
    return tuple([next(rows) for _ in values] for values in lists)


# ------------------------------------------------------------------------------------------ list ops
def mul_(xs: list[Tensor], value: Scalars) -> None:
    """xs ← xs·value."""
    if not _traced(value):
        torch._foreach_mul_(xs, value)
        return
    for x, v in zip(xs, _each(value, len(xs))):
        x.mul_(_against(v, x))


def scaled(xs: list[Tensor], value: Scalars) -> list[Tensor]:
    """xs·value, new tensors."""
    if not _traced(value):
        return torch._foreach_mul(xs, value)
    if isinstance(value, Tensor) and value.dim() == 0 and not compiling():  # one call for Adan's clipping scale
        return torch._foreach_mul(xs, value.to(xs[0].dtype))
    return [x * _against(v, x) for x, v in zip(xs, _each(value, len(xs)))]


def div_(xs: list[Tensor], value: Scalars) -> None:
    """xs ← xs/value."""
    if not _traced(value):
        torch._foreach_div_(xs, value)
        return
    for x, v in zip(xs, _each(value, len(xs))):
        x.div_(_against(v, x))


def add_(xs: list[Tensor], value: float) -> None:
    """xs ← xs + value (a constant, such as eps)."""
    torch._foreach_add_(xs, value)


def add_scaled_(xs: list[Tensor], ys: list[Tensor], value: Scalar) -> None:
    """xs ← xs + value·ys."""
    if not _traced(value):
        torch._foreach_add_(xs, ys, alpha=value)
        return
    for x, y in zip(xs, ys):
        x.add_(y * _against(value, x))


def add_scaled(xs: list[Tensor], ys: list[Tensor], value: Scalar) -> list[Tensor]:
    """xs + value·ys, new tensors."""
    if not _traced(value):
        return torch._foreach_add(xs, ys, alpha=value)
    return [x + _against(value, x) * y for x, y in zip(xs, ys)]


def lerp_(xs: list[Tensor], ys: list[Tensor], weight: Scalars) -> None:
    """xs ← xs + weight·(ys − xs)."""
    if not _traced(weight):
        torch._foreach_lerp_(xs, ys, weight)
        return
    for x, y, w in zip(xs, ys, _each(weight, len(xs))):
        # lerp's own formula switches at weight 0.5 on the weight's value: a select in every loop of the kernel
        x.add_((y - x) * _against(w, x))


def addcmul_(xs: list[Tensor], a: list[Tensor], b: list[Tensor], value: Scalars) -> None:
    """xs ← xs + value·a·b."""
    if not _traced(value):
        torch._foreach_addcmul_(xs, a, b, value)
        return
    for x, u, w, v in zip(xs, a, b, _each(value, len(xs))):
        x.add_(u * w * _against(v, x))


def addcdiv_(xs: list[Tensor], a: list[Tensor], b: list[Tensor], value: Scalars) -> None:
    """xs ← xs + value·a/b."""
    if not _traced(value):
        torch._foreach_addcdiv_(xs, a, b, value)
        return
    for x, u, w, v in zip(xs, a, b, _each(value, len(xs))):
        x.add_(u / w * _against(v, x))


def sign_(xs: list[Tensor]) -> None:
    """xs ← sign(xs), but a NaN stays NaN: ``torch.sign(nan)`` is 0, which would silently freeze a weight whose
    gradient is NaN. Computed as x clamped to ±tiny times 1/tiny (both powers of two: exactly ±1 for every normal
    number, 0 for 0; a subnormal x gives x/tiny, within a subnormal of the sign)."""
    tiny = torch.finfo(xs[0].dtype).tiny
    for x in xs:
        x.clamp_(-tiny, tiny).mul_(1 / tiny)


def _unary_(xs: list[Tensor], op: str) -> None:
    """xs ← op(xs): compiled per tensor, so that inductor fuses the op into the loop (``_foreach_atan_`` and the
    like are fallback calls to it)."""
    if compiling():
        for x in xs:
            getattr(x, f"{op}_")()
    else:
        getattr(torch, f"_foreach_{op}_")(xs)


def atan_(xs: list[Tensor]) -> None:
    _unary_(xs, "atan")


def tanh_(xs: list[Tensor]) -> None:
    _unary_(xs, "tanh")


def copy_(dst: list[Tensor], src: list[Tensor]) -> None:
    """dst ← src. Per tensor where ``_foreach_copy_`` cannot go: compiled, and for DTensors (FSDP2), which have no
    sharding rule for it."""
    if compiling() or hasattr(dst[0], "placements"):
        for d, s in zip(dst, src):
            d.copy_(s)
    else:
        torch._foreach_copy_(dst, src)


def copy_at_first_step_(dst: list[Tensor], src: list[Tensor], steps: list[Scalar]) -> None:
    """dst ← src for the tensors whose step count is 1 (without branching on a tensor's value when compiled)."""
    for d, s, t in zip(dst, src, steps):
        if isinstance(t, Tensor):
            d.copy_(torch.where(t == 1, s, d))
        elif t == 1:
            d.copy_(s)


# ------------------------------------------------------------------------------------------ reductions
def as_number(value: Tensor) -> Scalar:
    """A 0-d result as a Python float eagerly; the tensor itself when compiled (no device sync)."""
    return value if compiling() else float(value)


def norms(xs: list[Tensor]) -> list[Tensor]:
    """Each tensor's 2-norm: one foreach kernel eagerly. Compiled, per-tensor reductions, which inductor
    parallelises and fuses with the loops that produce their input (``_foreach_norm`` is opaque to it); a matrix's
    rows are summed first, so that its row sums share the kernel's OpenMP region (NOTES.md, "norms in the compiled
    step")."""
    if compiling():
        return [_row_sums_total(x).sqrt() if x.dim() >= 2 else torch.linalg.vector_norm(x) for x in xs]
    return torch._foreach_norm(xs)


def _row_sums_total(x: Tensor) -> Tensor:
    """Σx² by rows, then over the rows: in float64 where the loops stay scalar (a float32 sum over many rows takes
    inductor's cascade summation, a call per row in a scalar loop); float32 where they are vectorised."""
    rows = x.square().sum(-1)
    return rows.sum(dtype=torch.float64).to(x.dtype) if scalar_loops(x.shape) else rows.sum()


def tensor_rms(xs: list[Tensor]) -> list[Scalar]:
    """Each tensor's root mean square (an empty one's: 0); for a pack, a vector of its members'."""
    segments = layout()
    if segments is not None:
        return [segments.rms(x) for x in xs]
    return [as_number(n) / math.sqrt(max(1, x.numel())) for n, x in zip(norms(xs), xs)]


def mean_squares(xs: list[Tensor]) -> list[Tensor]:
    """Each tensor's mean of squares as a tensor (0-d; for a pack, a vector of its members'): unlike
    ``tensor_rms``, never read into Python, for math that keeps it in state (Amos's per-tensor second moment)."""
    segments = layout()
    if segments is not None:
        return [segments.rms(x).square() for x in xs]
    return [n.square() / max(1, x.numel()) for n, x in zip(norms(xs), xs)]


def mean_of(total: Tensor, count: int) -> Tensor:
    """``total / count`` in place; compiled, a product with ``1/count`` (gcc keeps a division by a constant a
    division, and scalar loops over 3×3 factors were bound by divisions). An empty mean is 0, not NaN (the column
    means of a (0, n) parameter: its state stays finite)."""
    count = max(count, 1)
    return total.mul_(1 / count) if compiling() else total.div_(count)


def row_square_means(x: Tensor) -> Tensor:
    """The mean of x² over the last dim, keeping it: eagerly ‖x‖²/n without materialising x²; compiled, a sum of
    squares inside the loop."""
    if compiling():
        sums = x.square().sum(-1, keepdim=True)
    else:
        sums = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_()
    return mean_of(sums, x.size(-1))


def column_square_means(x: Tensor) -> Tensor:
    """The mean of x² over dim −2, keeping it; summed in blocks of rows so that ``x`` is read in row-major order (a
    plain reduction over dim −2 strides through memory: NOTES.md, "column means")."""
    rows, cols = x.shape[-2:]
    block = next(b for b in (64, 32, 16, 8, 4, 2, 1) if rows % b == 0)
    blocks = x.reshape(*x.shape[:-2], rows // block, block, cols)
    return mean_of(blocks.square().sum(dim=-2).sum(dim=-2, keepdim=True), rows)
