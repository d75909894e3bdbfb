"""Wrappers compose in any order, resume from a checkpoint in a fresh process, and come out of the factory."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from compose_worker import build as build_two_level
from fresh_process import continue_in_fresh_process

import optarena
from optarena.wrappers import GradientAccumulation, LayerAdaptation, Lazy, Lookahead

N, K = 3, 2  # micro-batches per update, updates per Lookahead sync


def params64(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in [(4, 3), (3,), ()]]


def micro_grads(params, updates, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params] for _ in range(updates * N)]


def feed(optimizer, params, grads_per_call):
    for grads in grads_per_call:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()


def reference_run(updates):
    """Lookahead over Lion, fed the mean of each N micro-gradients: what both compositions must equal."""
    params = params64()
    grads = micro_grads(params, updates)
    means = [[sum(grads[u * N + i][j] for i in range(N)) / N for j in range(len(params))] for u in range(updates)]
    feed(Lookahead(optarena.Lion(params, lr=1e-2, weight_decay=0.1), k=K), params, means)
    return params


@pytest.mark.parametrize("order", ["lookahead(accumulate(lion))", "accumulate(lookahead(lion))"])
def test_compositions_in_either_order_equal_the_reference(order: str) -> None:
    updates = 5
    params = params64()
    lion = optarena.Lion(params, lr=1e-2, weight_decay=0.1)
    if order == "lookahead(accumulate(lion))":
        optimizer = Lookahead(GradientAccumulation(lion, steps=N), k=K)
    else:
        optimizer = GradientAccumulation(Lookahead(lion, k=K), steps=N)
    feed(optimizer, params, micro_grads(params, updates))
    for got, want in zip(params, reference_run(updates)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_two_level_composition_resumes_in_a_fresh_process(tmp_path: Path) -> None:
    params = params64()
    grads = micro_grads(params, 6)
    optimizer = build_two_level(params)
    cut = 7  # inside an accumulation window and a Lookahead cycle
    feed(optimizer, params, grads[:cut])
    payload = {"params": [p.detach().clone() for p in params],
               "state_dict": copy.deepcopy(optimizer.state_dict()), "grads": grads[cut:]}
    feed(optimizer, params, grads[cut:])
    resumed = continue_in_fresh_process("compose_worker.py", payload, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(params, resumed))


def test_scheduler_on_the_outer_wrapper_drives_the_base() -> None:
    params = params64()
    lion = optarena.Lion(params, lr=1e-2)
    optimizer = Lookahead(GradientAccumulation(lion, steps=N))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    feed(optimizer, params, micro_grads(params, 1)[:1])
    scheduler.step()
    assert lion.param_groups[0]["lr"] == pytest.approx(5e-3)


@pytest.mark.parametrize("order", ["lookahead(accumulate(lion))", "accumulate(lookahead(lion))"])
def test_the_outermost_wrapper_says_whether_the_real_optimizer_stepped(order: str) -> None:
    """The README's loop steps the scheduler when ``opt.did_update``: true every N-th micro-batch whatever wraps the
    accumulation (a Lookahead outside it once reported True on every micro-batch)."""
    params = params64()
    lion = optarena.Lion(params, lr=1e-2)
    optimizer = (Lookahead(GradientAccumulation(lion, steps=N), k=K) if order.startswith("lookahead") else
                 GradientAccumulation(Lookahead(lion, k=K), steps=N))
    updates = []
    for grads in micro_grads(params, 3):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()
        updates.append(optimizer.did_update)
    assert updates == [(t + 1) % N == 0 for t in range(3 * N)]


def test_factory_builds_wrapped_optimizers() -> None:
    model = torch.nn.Sequential(torch.nn.Embedding(20, 4), torch.nn.Linear(4, 2))
    optimizer = optarena.create_optimizer(model, "lookahead_lion", lr=1e-3, accumulate=4,
                                          lookahead={"k": 6, "alpha": 0.8})
    assert isinstance(optimizer, Lookahead) and isinstance(optimizer.base, GradientAccumulation)
    assert isinstance(optimizer.base.base, optarena.Lion)
    lamb = optarena.create_optimizer(model, "adamw", weight_decay=0.01, layer_adaptation=True, lazy=True)
    assert isinstance(lamb, LayerAdaptation) and isinstance(lamb.base, Lazy)
    assert isinstance(lamb.base.base, torch.optim.AdamW)
    model(torch.tensor([1, 2])).sum().backward()
    lamb.step()
    with pytest.raises(ValueError, match="Invalid accumulate: 0"):
        optarena.create_optimizer(model, "lion", accumulate=0)
    with pytest.raises(ValueError, match="Did you mean 'lion'"):
        optarena.create_optimizer(model, "lookahead_lino")


@pytest.mark.parametrize("name", ["adamw", "muon", "lion"])
def test_a_scheduler_drives_the_real_optimizer_after_load_state_dict(name):
    """The base's load_state_dict replaces its group list: the wrappers must keep reading the live one."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    optimizer = optarena.create_optimizer(model, name, lr=0.01, accumulate=2, lookahead=True)
    optimizer.load_state_dict(optimizer.state_dict())
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.1)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    inner = optimizer
    while hasattr(inner, "base"):
        inner = inner.base
    assert inner.param_groups[0]["lr"] == pytest.approx(1e-3) and optimizer.param_groups is inner.param_groups


def test_wrappers_forward_train_and_eval_to_a_schedule_free_base():
    pytest.importorskip("schedulefree")
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = optarena.create_optimizer([param], "schedulefree_adamw", lr=0.1, accumulate=2)
    optimizer.train()
    for _ in range(4):
        param.grad = torch.ones(3)
        optimizer.step()
    trained = param.detach().clone()
    optimizer.eval()  # the parameters move to the averaged point x
    assert not torch.equal(param.detach(), trained)
    optimizer.train()
    assert torch.allclose(param.detach(), trained)
