"""Which loops of a fused kernel run in parallel: inductor decides it from the sizes a kernel is compiled on, so those
sizes must suit the tensors the kernel will step, and a kernel compiled on other sizes must not be reused."""

from __future__ import annotations

import re

import pytest
import torch

import optarena
from optarena.optim.fused import codegen, kernels

pytestmark = pytest.mark.skipif(not codegen.adjusted(), reason="the cache key and stand-ins are those of the tested "
                                                               "torch's adjusted kernels")


@pytest.fixture(autouse=True)
def two_threads():
    """Kernels compiled for two threads (the tests run on one, for which inductor parallelises nothing)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def step_code(shapes: list[tuple[int, ...]], state_dtype: str | None, monkeypatch: pytest.MonkeyPatch) -> str:
    """The C++ of the kernels of one fused Lion step on fresh parameters of ``shapes`` (kernels made anew, through
    inductor's on-disk cache, which serves the code of a graph it has seen)."""
    from torch._inductor.utils import run_and_get_code

    monkeypatch.setattr(kernels, "_KERNELS", {})
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = optarena.Lion(params, lr=1e-3, fused=True, state_dtype=state_dtype)
    _, code = run_and_get_code(opt.step)
    assert code and opt.fused_kernels_made == 1
    return "\n".join(code)


def test_a_kernel_compiled_on_small_tensors_does_not_serve_large_ones(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path) -> None:
    """Small tensors' kernel (a pack: tensors below Lion's ``fused_packed_below``) first, then one 64K-element
    tensor's, whose graph is the same: the large one's loop is parallel, not the small one's code from inductor's
    cache (which keys on the graph, not the sizes: without the sizes in optarena's key, a 16M-element Lion step ran on
    one thread after any small-tensor step on the machine)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # an empty cache, which both compiles fill
    small = step_code([(512,)] * 3, None, monkeypatch)
    assert "#pragma omp for" not in small
    large = step_code([(1 << 16,)], None, monkeypatch)
    assert large.count("for(int64_t x0=") == 1 and "#pragma omp for" in large


def test_a_kernel_with_real_shapes_compiled_on_a_small_matrix_does_not_step_large_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Adafactor's kernels keep real shapes: a lone small matrix (400 elements a thread: serial loops) and a large one
    both took the 1-tensor kernel of their guarded class (2-D, no small sizes), and dynamo's shape guards let one graph
    serve both (their row counts are multiples of 4, not of 8: the column means' block guard passes). Compiled on the
    small one first, it stepped the large one on one thread (Adafactor on 4100×4096: 25.0 against 20.5 ms); the size
    class is now part of the kernel's key (and of the cache key)."""
    from torch._inductor.utils import run_and_get_code

    monkeypatch.setattr(kernels, "_KERNELS", {})
    codes = []
    for shape in [(20, 40), (260, 320)]:
        param = torch.nn.Parameter(torch.randn(shape))
        param.grad = torch.randn_like(param)
        _, code = run_and_get_code(optarena.Adafactor([param], fused=True).step)
        codes.append("\n".join(code))
    assert codes[0] and "#pragma omp for" not in codes[0]
    assert "#pragma omp for" in codes[1]
    assert len(kernels._KERNELS) == 2  # one per size class (not only the cache key: also with inductor's cache off)


def test_every_loop_of_an_8bit_call_is_parallel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lion's 8-bit calls take 8 tensors, compiled on stand-ins of at least as many blocks as the smallest 8-bit
    tensor has and as inductor needs to parallelise a loop: all 8 loops are parallel (a first stand-in of 3 blocks
    left the first tensor of each call to one thread). (Two more loops: the step counts, the dither rows.)"""
    code = step_code([(4096,)] * 8, "int8", monkeypatch)
    pragmas = re.findall(r"(#pragma omp for\s+)?for\(int64_t x0=[^;]*; x0<static_cast<int64_t>\(ks\d+\)", code)
    assert len(pragmas) == 8 and all(pragmas)
