"""An adjustment to inductor's CPU code generation for the fused step (torch 2.13).

Kept apart from ``_base`` because it reaches into inductor's internals and imports inductor (~2.4 s), which only the
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
    kernels generated under ``low_precision_tiling`` and kernels generated without it never stand in for each other
    (a kernel cached by an older optarena would otherwise keep its slower loops)."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        pass

    def uuid(self) -> str:
        return "optarena: low-precision tiling, version 1"


CACHE_KEY = _CacheKey()


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
