"""AdaX stays finite for any step count: its stored second moment is the bias-corrected v̂."""

from __future__ import annotations

import math

import pytest
import torch

import optarena
from optarena.optim.adax import adax_new_weight


@pytest.mark.parametrize("beta2", [1e-4, 1e-3, 0.5])
def test_new_weight_equals_the_raw_formula_at_moderate_t(beta2: float) -> None:
    for t in (1, 2, 10, 1000, 5000):
        if t * math.log1p(beta2) > 700:  # the raw formula itself overflows
            continue
        raw = beta2 / ((1 + beta2) ** t - 1)
        assert adax_new_weight(t, beta2) == pytest.approx(raw, rel=1e-10)
    assert adax_new_weight(1, beta2) == pytest.approx(1.0, rel=1e-14)


@pytest.mark.parametrize("t", [9e5, 7.1e6, 1e7, 1e9, 1e15])
def test_new_weight_is_finite_where_the_raw_moment_overflows(t: float) -> None:
    # (1 + 1e-4)**t overflows float32 near t = 9e5 and Python floats near t = 7.1e6
    w = adax_new_weight(t, 1e-4)
    assert math.isfinite(w) and 0.0 <= w < 1e-30


def test_ten_million_steps_stay_finite() -> None:
    """Jump the state to step 1e7 (running 10 million steps would take minutes) and keep stepping: the moments
    and the parameter stay finite, and a parameter whose gradient is always 0 does not become NaN."""
    p = torch.ones(4, requires_grad=True)
    dead = torch.ones(2, requires_grad=True)
    optimizer = optarena.AdaX([p, dead], lr=1e-3)
    p.grad, dead.grad = torch.full((4,), 0.5), torch.zeros(2)
    optimizer.step()
    for state in optimizer.state.values():
        state["step"].fill_(1e7 - 1)
    for _ in range(20):
        p.grad = torch.randn(4)
        optimizer.step()
    for tensor in (p, dead, *optimizer.state[p].values(), *optimizer.state[dead].values()):
        assert torch.isfinite(tensor).all()
    assert float(optimizer.state[p]["step"]) == 1e7 + 19
    assert torch.equal(dead, torch.ones(2))
