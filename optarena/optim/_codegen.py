"""Two adjustments to inductor's CPU code generation for the fused step (torch 2.13): kernels that mix float32 with
a 16-bit float type are vectorised at the 16-bit width, and float32 arctan takes Sleef's faster variant.

Kept apart from ``_base`` because they reach into inductor's internals and import inductor (~2.4 s), which only the
fused path needs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass


class _CacheKey(CustomGraphPass):
    """A post-grad pass that changes nothing. Inductor puts its ``uuid`` into the key of its on-disk cache, so that
    kernels generated under ``adjusted_codegen`` and kernels generated without it never stand in for each other
    (a kernel cached by an older optarena would otherwise keep its slower loops)."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        pass

    def uuid(self) -> str:
        return "optarena: low-precision tiling, fast float32 arctan; version 2"


CACHE_KEY = _CacheKey()


@contextlib.contextmanager
def adjusted_codegen() -> Iterator[None]:
    """Both adjustments, while a fused kernel compiles."""
    with low_precision_tiling(), fast_arctan():
        yield


@contextlib.contextmanager
def fast_arctan() -> Iterator[None]:
    """Vectorised float32 arctan with Sleef's 3.5-ulp variant instead of inductor's 1-ulp one, on AVX-512.

    RLion's arctan made its step compute-bound: over 16M elements a scaled arctan took 9.9 ms with the 1-ulp variant
    and 5.7 ms with the 3.5-ulp one (a scaled copy: 4.0 ms); the two differ by at most 2.4e-7 relative, far below
    what a step of lr·arctan/(π/2) can resolve. Other dtypes and instruction sets keep inductor's code.
    """
    try:
        from torch._inductor.codegen import cpp
        from torch._inductor.virtualized import V

        original = cpp.CppVecOverrides.__dict__["atan"]
        avx512 = cpp.cpu_vec_isa.pick_vec_isa().bit_width() == 512
    except (ImportError, AttributeError, KeyError):
        yield
        return

    def atan(x: Any) -> str:
        if not avx512 or getattr(x, "dtype", None) != torch.float32:
            return original.__func__(x)
        vectors = V.kernel._get_num_vectors(torch.float32)
        if vectors == 1:
            return f"at::vec::Vectorized<float>(Sleef_atanf16_u35({x}))"
        # a VectorizedN<float, n> (the 16-bit width of a mixed kernel): each of its vectors
        return (f"[&]() {{ auto r = {x}; for (int i = 0; i < {vectors}; i++) "
                f"r[i] = at::vec::Vectorized<float>(Sleef_atanf16_u35(r[i])); return r; }}()")

    cpp.CppVecOverrides.atan = staticmethod(atan)
    try:
        yield
    finally:
        cpp.CppVecOverrides.atan = original


@contextlib.contextmanager
def low_precision_tiling() -> Iterator[None]:
    """While compiling, vectorise a CPU kernel that mixes float32 with one 16-bit float type by the 16-bit type's
    width in all of its loops (32 lanes with AVX-512).

    Inductor does so only where every loop of the kernel touches the 16-bit type, and a fused step's loop that copies
    float32 parameters back does not: the whole kernel then ran 16 lanes wide and moved its bf16 state by half-width
    masked loads and stores, which cost more than the bytes they save (Lion with bf16 state on one 16M tensor:
    11.9 ms, against 7.0 ms with 32 lanes and 7.7 ms with fp32 state). The width only changes how the loops are
    vectorised, not what they compute. Where these internals are missing, nothing changes.
    """
    try:
        from torch._inductor.codegen import cpp

        original = cpp.TilingSelect.select_tiling
        find_low_precision = cpp.get_loop_body_lowp_fp
        loop_bodies = cpp._get_loop_body
    except (ImportError, AttributeError):
        yield
        return

    def select_tiling(self: Any, fn_list: Any, var_sizes_list: Any) -> Any:
        found = {find_low_precision(body)[0] for body in loop_bodies(fn_list)} - {None}
        if len(found) != 1:
            return original(self, fn_list, var_sizes_list)
        (dtype,) = found

        # inductor picks the 16-bit width only if every loop reports that type; the float32-only loops report none
        def as_low_precision(body: Any) -> tuple[torch.dtype, bool]:
            own, all_low_precision = find_low_precision(body)
            return own or dtype, all_low_precision

        cpp.get_loop_body_lowp_fp = as_low_precision
        try:
            return original(self, fn_list, var_sizes_list)
        finally:
            cpp.get_loop_body_lowp_fp = find_low_precision

    cpp.TilingSelect.select_tiling = select_tiling
    try:
        yield
    finally:
        cpp.TilingSelect.select_tiling = original
