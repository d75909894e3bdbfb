"""The contracts the optimizer machinery keeps for the algorithms written on it.

A new elementwise optimizer is its math (a function over lists of tensors in ``optarena.optim.ops``), its class
(arguments, state, ``_update``) and its registry entry; everything else (paths, dtypes, checkpoints, wrappers, the
factory) comes from the machinery. The algorithm's ``_update`` reads nothing but its arguments: the fused step
compiles it once per configuration for every instance.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from torch import Tensor

import optarena
from optarena.info import OptimizerInfo, list_optimizers, register_optimizer
from optarena.optim import OptarenaOptimizer, base, ops
from optarena.optim.step import zeros_state
from optarena.speed import peak_extra_bytes
from optarena.wrappers import Lazy


# --- the shortest elementwise optimizer (the README's Layout example) -------------------------------------------
def signum_update(params: list[Tensor], grads: list[Tensor], momenta: list[Tensor], *, lr: ops.Scalar,
                  beta: ops.Scalar) -> None:
    """Signum (Bernstein et al. 2018): m ← β·m + (1 − β)·g;  θ ← θ − lr·sign(m)."""
    ops.lerp_(momenta, grads, 1 - beta)
    directions = ops.scaled(momenta, 1.0)
    ops.sign_(directions)
    ops.add_scaled_(params, directions, -lr)


class Signum(OptarenaOptimizer):
    def __init__(self, params: Any, lr: float = 1e-3, beta: float = 0.9, *, maximize: bool = False,
                 foreach: bool | None = None, fused: bool | None = None, state_dtype: torch.dtype | None = None,
                 stochastic_rounding: bool = False) -> None:
        super().__init__(params, dict(lr=lr, beta=beta, maximize=maximize, foreach=foreach, fused=fused,
                                      state_dtype=state_dtype, stochastic_rounding=stochastic_rounding))

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        return {"momentum": zeros_state(p, group=group)}

    @classmethod
    def _update(cls, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                states: list[dict[str, Tensor]]) -> None:
        signum_update(params, grads, [s["momentum"] for s in states], lr=group["lr"], beta=group["beta"])


@pytest.fixture
def signum():
    register_optimizer(OptimizerInfo("signum", Signum, 1e-3, elementwise=True, state_bytes_per_param=4))
    yield
    from optarena import info

    del info._REGISTRY["signum"]


def make_params(dtype: torch.dtype = torch.float32) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in [(5, 6), (7,), (), (40, 3)]]


def set_grads(params: list[Tensor], step: int) -> None:
    gen = torch.Generator().manual_seed(step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)


def test_a_new_elementwise_optimizer_needs_only_its_math_class_and_entry(signum) -> None:
    """Signum, defined above in 30 lines, runs on every path with maximize, bf16 state, checkpoints, the factory and
    Lazy, and equals its rule written out by hand."""
    runs = {}
    for path in ({"foreach": False}, {"foreach": True, "maximize": True}, {"fused": True}):
        params = make_params()
        opt = optarena.create_optimizer(params, "signum", lr=0.1, **path)
        for step in range(3):
            set_grads(params, step)
            if path.get("maximize"):
                for p in params:
                    p.grad.neg_()
            opt.step()
        runs[str(path)] = params
    expected = make_params()
    momenta = [torch.zeros_like(p) for p in expected]
    with torch.no_grad():
        for step in range(3):
            set_grads(expected, step)
            for p, m in zip(expected, momenta):
                m.mul_(0.9).add_(0.1 * p.grad)
                p.sub_(0.1 * torch.sign(m))
    for params in runs.values():
        for got, want in zip(params, expected):
            torch.testing.assert_close(got, want)
    resumed = Signum(make_params(), lr=0.1)
    resumed.load_state_dict(opt.state_dict())
    Lazy(Signum(make_params()))  # elementwise by its entry: Lazy accepts it
    low = make_params(torch.bfloat16)
    set_grads(low, 0)
    Signum(low, state_dtype=torch.bfloat16).step()


@pytest.mark.parametrize("name", list_optimizers("optarena"))
def test_update_is_a_classmethod(name: str) -> None:
    """``_update`` cannot read an instance: the kernels compiled from it serve every instance of the class."""
    cls = optarena.get_optimizer_info(name).cls
    assert isinstance(inspect.getattr_static(cls, "_update"), classmethod)


def test_foreach_temporaries_are_bounded_per_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 state is up-cast, and the algorithm's temporaries made, a chunk of tensors at a time: Adan's peak extra
    memory on 40 tensors of 64K elements is a few buffers of one chunk, not of the whole bucket."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(64, 1024, generator=gen)) for _ in range(40)]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    opt = optarena.Adan(params, foreach=True, state_dtype=torch.bfloat16)
    opt.step()
    chunk = 4 * 64 * 1024
    monkeypatch.setitem(base.FOREACH_ELEMENTS, "cpu", chunk)
    bounded = peak_extra_bytes(opt.step)
    monkeypatch.setitem(base.FOREACH_ELEMENTS, "cpu", 1 << 40)
    whole = peak_extra_bytes(opt.step)
    assert bounded <= 12 * chunk * 4  # fp32 copies of the 4 state buffers and Adan's temporaries, one chunk
    assert whole >= 5 * bounded  # the bound is what the chunks bring (observed: 10x)


def test_adan_clipping_reads_no_tensor_into_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """The global norm stays a tensor: no host synchronisation per parameter (or at all) on an accelerator."""
    params = make_params()
    set_grads(params, 0)
    opt = optarena.Adan(params, max_grad_norm=0.5)
    reads = []
    for method in ("__float__", "item", "tolist"):
        original = getattr(Tensor, method)
        monkeypatch.setattr(Tensor, method, lambda self, *a, _o=original, **k: reads.append(1) or _o(self, *a, **k))
    scale = opt._grad_scale(params)
    assert not reads
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    torch.testing.assert_close(scale.float(), torch.clamp(0.5 / (total + 1e-8), max=1.0))


def test_create_optimizer_drops_an_adam_style_eps_for_adafactor() -> None:
    """Adafactor's eps is a pair with other meanings: a sweep's portable ``eps=1e-8`` is dropped with a warning."""
    model = torch.nn.Linear(3, 2)
    with pytest.warns(UserWarning, match="eps as a pair"):
        opt = optarena.create_optimizer(model, "adafactor", eps=1e-8)
    assert opt.param_groups[0]["eps"] == (None, 1e-3)
    opt = optarena.create_optimizer(model, "adafactor", eps=(1e-30, 1e-3))
    assert opt.param_groups[0]["eps"] == (1e-30, 1e-3)


def test_create_optimizer_refuses_a_model_without_parameters() -> None:
    with pytest.raises(ValueError, match="ReLU has no trainable parameters"):
        optarena.create_optimizer(torch.nn.ReLU(), "lion")
