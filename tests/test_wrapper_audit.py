"""Findings of the wrappers' audit against torch.optim conventions, each with the behaviour it fixed."""

from __future__ import annotations

import copy

import pytest
import torch

from optarena.wrappers.lookahead import Lookahead


def _pretrained_after_construction(**kwargs) -> tuple[torch.nn.Linear, Lookahead]:
    """A model whose weights are replaced after its Lookahead was built (fine with torch.optim); lr 0: θ never moves."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = Lookahead(torch.optim.SGD(model.parameters(), lr=0.0), k=2, alpha=0.5, **kwargs)
    model.load_state_dict({"weight": torch.full((1, 4), 5.0), "bias": torch.full((1,), 5.0)})
    return model, opt


def test_weights_loaded_after_construction_are_theta0() -> None:
    """φ captured at construction pulled pretrained weights loaded afterwards halfway back to the random init at the
    first sync (5.0 → ~2.5 with lr 0): φ is taken again just before the first step."""
    model, opt = _pretrained_after_construction(pullback="pullback")
    with opt.slow_weights():  # before any step too: the loaded weights, not the init
        assert torch.equal(model.weight, torch.full((1, 4), 5.0))
    assert torch.equal(opt.state_dict()["lookahead"]["state"][0]["slow"], torch.full((1, 4), 5.0))
    for _ in range(2):  # one cycle: the sync
        opt.zero_grad()
        model(torch.randn(3, 4)).sum().backward()
        opt.step()
    assert torch.equal(model.weight, torch.full((1, 4), 5.0)) and torch.equal(model.bias, torch.full((1,), 5.0))


def test_a_checkpoints_slow_weights_are_kept_at_the_first_step_after_loading() -> None:
    """Only φ captured by construction is taken again: a resumed checkpoint's φ is the run's, not the current θ."""
    model, opt = _pretrained_after_construction()
    opt.zero_grad()
    model(torch.randn(3, 4)).sum().backward()
    opt.step()  # inner step 1 of 2: φ = 5
    saved = copy.deepcopy(opt.state_dict())
    _, resumed = _pretrained_after_construction()
    resumed.load_state_dict(saved)
    params = resumed._params()
    with torch.no_grad():
        for p in params:
            p.fill_(7.0)  # the fast weights differ from φ, as they do mid-cycle
        for p in params:
            p.grad = torch.zeros_like(p)
    resumed.step()  # the sync: 5 + 0.5·(7 − 5)
    assert all(torch.equal(p, torch.full_like(p, 6.0)) for p in params)


def test_weights_loaded_after_a_first_step_that_raised_are_theta0() -> None:
    # φ was marked taken before the base stepped: a first step that raised (here its closure) left φ at the init,
    # and weights loaded afterwards were pulled halfway back to it (5.0 → ~2.5 with lr 0)
    model = torch.nn.Linear(4, 1)
    opt = Lookahead(torch.optim.SGD(model.parameters(), lr=0.0), k=1)

    def failing() -> torch.Tensor:
        raise RuntimeError("data loader failed")

    with pytest.raises(RuntimeError, match="data loader failed"):
        opt.step(failing)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(5.0)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()  # k=1: this step syncs
    assert torch.equal(model.weight, torch.full((1, 4), 5.0))
