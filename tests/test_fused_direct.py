"""Flat fused kernels call inductor's compiled graph without dynamo's frame (``codegen.compile_kernel``): the call
computes exactly what dynamo's does, is adopted only after it reproduced it on the stand-ins, and gradients reach the
kernel contiguous."""

from __future__ import annotations

import pytest
import torch

import optarena
from optarena.optim.fused import codegen, kernels


def kernels_of(opt: torch.optim.Optimizer) -> list[kernels.Kernel]:
    return [call.kernel for plan in opt._fused_plans.values() for bucket in plan.buckets for call in bucket.calls]


@pytest.mark.parametrize("state_dtype", [None, "int8"], ids=["fp32-state", "int8-state"])
@pytest.mark.parametrize("name", ["lion", "adan"])
def test_the_direct_call_steps_exactly_as_dynamos(name: str, state_dtype: str | None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Each step is made twice from the same parameters and state: by the direct call, then through dynamo's
    compiled function; every tensor ends equal. 256×256 is a chunked kernel (and whole 8-bit blocks)."""
    if not codegen.adjusted():
        pytest.skip("the adjustment is made on the tested torch only")
    monkeypatch.setattr(kernels, "_KERNELS", {})  # compiled here, whatever earlier tests compiled
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(256, 256, generator=gen))
    opt = optarena.create_optimizer([p], name, lr=1e-3, fused=True, state_dtype=state_dtype)
    for _ in range(3):
        p.grad = torch.randn(256, 256, generator=gen)
        before = [p.detach().clone(), *(t.clone() for t in opt.state[p].values())] if opt.state[p] else None
        opt.step()
        assert kernels_of(opt) and all(k.direct is not None for k in kernels_of(opt))
        direct = [p.detach().clone(), *(t.clone() for t in opt.state[p].values())]
        if before is None:  # the first step made the state: nothing to replay it from
            continue
        with torch.no_grad():
            for tensor, value in zip([p, *opt.state[p].values()], before, strict=True):
                tensor.copy_(value)
        with monkeypatch.context() as patch:
            for kernel in kernels_of(opt):
                patch.setattr(kernel, "direct", None)
            opt.step()
        for tensor, value in zip([p.detach(), *opt.state[p].values()], direct, strict=True):
            assert torch.equal(tensor, value)


def test_strided_gradients_reach_the_kernel_contiguous() -> None:
    """A gradient already in the kernel's shape but strided (``p.grad = g[::2]``) is copied; read in place, the
    kernel (which assumes unit strides) would step with the wrong elements."""
    gen = torch.Generator().manual_seed(0)
    fused_p = torch.nn.Parameter(torch.randn(1 << 16, generator=gen))
    loop_p = torch.nn.Parameter(fused_p.detach().clone())
    fused = optarena.Lion([fused_p], lr=1e-2, fused=True)
    loop = optarena.Lion([loop_p], lr=1e-2, foreach=False)
    for _ in range(2):
        wide = torch.randn(2 << 16, generator=gen)
        fused_p.grad, loop_p.grad = wide[::2], wide[::2].clone()
        assert not fused_p.grad.is_contiguous()
        fused.step()
        loop.step()
        torch.testing.assert_close(fused_p, loop_p, rtol=0, atol=1e-6)


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
