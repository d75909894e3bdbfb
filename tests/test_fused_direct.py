"""Flat fused kernels call inductor's compiled graph without dynamo's frame (``codegen.compile_kernel``): the call
computes exactly what dynamo's does, is adopted only after it reproduced it on the stand-ins, and gradients reach the
kernel contiguous."""

from __future__ import annotations

import pytest
import torch

import optarena
from optarena.optim.fused import codegen, kernels

try:
    from cases import kernels_of
except ImportError:  # tests/ is a package
    from tests.cases import kernels_of


#: Two chunked tensors of different sizes (whole 8-bit blocks) and small ones that flat packs take.
SHAPES = [(256, 256), (128, 512), (320,), (7, 5), (9,), ()]


def tensors_of(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t for p in params for t in (p.detach(), *opt.state[p].values())]


@pytest.mark.parametrize("state_dtype", [None, "int8"], ids=["fp32-state", "int8-state"])
@pytest.mark.parametrize("name", ["lion", "adan"])
def test_the_direct_call_steps_exactly_as_dynamos(name: str, state_dtype: str | None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Each step is made twice from the same parameters and state: by the direct calls (every kernel has one:
    chunks and packs), then through dynamo's compiled functions; every tensor ends equal."""
    if not codegen.adjusted():
        pytest.skip("the adjustment is made on the tested torch only")
    monkeypatch.setattr(kernels, "_KERNELS", {})  # compiled here, whatever earlier tests compiled
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]
    opt = optarena.create_optimizer(params, name, lr=1e-3, fused=True, state_dtype=state_dtype)
    for step in range(3):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        before = [t.clone() for t in tensors_of(opt, params)]
        opt.step()
        assert len(kernels_of(opt)) >= 2 and all(k.direct is not None for k in kernels_of(opt))
        direct = [t.clone() for t in tensors_of(opt, params)]
        if step == 0:  # the first step made the state: nothing to replay it from
            continue
        with torch.no_grad():
            for tensor, value in zip(tensors_of(opt, params), before, strict=True):
                tensor.copy_(value)
        with monkeypatch.context() as patch:
            for kernel in kernels_of(opt):
                patch.setattr(kernel, "direct", None)
            opt.step()
        for tensor, value in zip(tensors_of(opt, params), direct, strict=True):
            assert torch.equal(tensor, value)


@pytest.mark.parametrize("shape, state_dtype", [((1 << 16,), None), ((256, 256), "int8")], ids=["1-D", "8-bit"])
def test_strided_gradients_reach_the_kernel_contiguous(shape: tuple[int, ...], state_dtype: str | None) -> None:
    """A gradient already in the kernel's shape but strided (``p.grad = g[..., ::2]``; an 8-bit kernel's view of a
    256×256 parameter is 256 blocks of 256) is copied: read in place, the kernel, which assumes unit strides, would
    step with the wrong elements. The same step with a contiguous copy of the gradient is the reference."""
    gen = torch.Generator().manual_seed(0)
    strided_p = torch.nn.Parameter(torch.randn(shape, generator=gen))
    dense_p = torch.nn.Parameter(strided_p.detach().clone())
    strided = optarena.Lion([strided_p], lr=1e-2, fused=True, state_dtype=state_dtype)
    dense = optarena.Lion([dense_p], lr=1e-2, fused=True, state_dtype=state_dtype)
    for _ in range(2):
        wide = torch.randn(*shape[:-1], 2 * shape[-1], generator=gen)
        strided_p.grad, dense_p.grad = wide[..., ::2], wide[..., ::2].contiguous()
        assert not strided_p.grad.is_contiguous()
        strided.step()
        dense.step()
        assert kernels_of(strided) and torch.equal(strided_p, dense_p)


def test_a_direct_call_that_differs_or_fails_is_not_adopted() -> None:
    kernel = kernels.Kernel(flat=True)

    def dynamo(params: list[torch.Tensor], *rest: object) -> list[torch.Tensor]:
        params[0].add_(1)
        return []

    def another(params: list[torch.Tensor], *rest: object) -> list[torch.Tensor]:
        params[0].add_(2)
        return []

    def failing(params: list[torch.Tensor], *rest: object) -> list[torch.Tensor]:
        raise NameError("an input dynamo reads from elsewhere")

    kernel.fn = dynamo
    after = ([torch.zeros(3)],)
    kernel(*after)
    for wrong in (another, failing):
        kernel.offer_direct(wrong)
        kernel.check_direct(([torch.zeros(3)],), after)
        assert kernel.direct is None and kernel.offered is None
    kernel.offer_direct(dynamo)
    kernel.check_direct(([torch.zeros(3)],), after)
    assert kernel.direct is dynamo
    kernel.offer_direct(None)  # the body compiled again: dynamo's cache decides which graph runs
    assert kernel.direct is None


@pytest.mark.parametrize("state_dtype", [None, "int8"], ids=["fp32-state", "int8-state"])
def test_the_direct_call_counts_its_writes_as_in_place_updates(state_dtype: str | None) -> None:
    """Past AOT autograd's wrappers, the direct call bumps the version of every tensor the kernel wrote, as they did:
    a backward through a graph that saved the parameter before the step refuses, and the state's versions move."""
    if not codegen.adjusted():
        pytest.skip("the adjustment is made on the tested torch only")
    p = torch.nn.Parameter(torch.randn(256, 256))
    opt = optarena.Lion([p], lr=1e-3, fused=True, state_dtype=state_dtype)
    p.grad = torch.randn_like(p)
    opt.step()
    assert all(k.direct is not None for k in kernels_of(opt))
    saved = (p * p).sum()
    versions = [t._version for t in (p, *opt.state[p].values())]
    p.grad = torch.randn_like(p)
    opt.step()
    assert all(t._version > v for t, v in zip((p, *opt.state[p].values()), versions, strict=True))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        saved.backward()


def test_the_direct_call_is_inductors_graph_past_the_wrappers() -> None:
    if not codegen.adjusted():
        pytest.skip("the adjustment is made on the tested torch only")
    from torch._inductor.output_code import CompiledFxGraph

    p = torch.nn.Parameter(torch.randn(1 << 16))
    opt = optarena.Lion([p], lr=1e-3, fused=True)
    p.grad = torch.randn_like(p)
    opt.step()
    assert kernels_of(opt) and all(isinstance(k.direct.graph, CompiledFxGraph) for k in kernels_of(opt))
    assert codegen.inductor_graph(lambda x: x) is None
