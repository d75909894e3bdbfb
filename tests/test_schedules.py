"""piecewise_linear and the EMA-of-weights helper."""

from __future__ import annotations

import re

import pytest
import torch

import optarena
from optarena.schedules import ema_model, piecewise_linear, piecewise_linear_multiplier


def test_piecewise_linear_interpolates_with_an_implicit_warmup_from_zero() -> None:
    points = {1000: 1.0, 2000: 0.1}
    expected = {0: 0.0, 500: 0.5, 1000: 1.0, 1500: 0.55, 2000: 0.1, 5000: 0.1}
    for step, value in expected.items():
        assert piecewise_linear_multiplier(points, step) == pytest.approx(value)
    assert piecewise_linear_multiplier({0: 1.0, 10: 0.0}, 5) == pytest.approx(0.5)


def test_piecewise_linear_drives_the_optimizer_lr() -> None:
    optimizer = optarena.Lion([torch.zeros(2, requires_grad=True)], lr=1e-3)
    scheduler = piecewise_linear(optimizer, {4: 1.0, 8: 0.5})
    seen = []
    for _ in range(10):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0, 2.5e-4, 5e-4, 7.5e-4, 1e-3, 8.75e-4, 7.5e-4, 6.25e-4, 5e-4, 5e-4])


@pytest.mark.parametrize("points", [{}, {-1: 1.0}, {1.5: 1.0}, {10: -0.1}, {10: float("inf")}, {10: float("nan")},
                                    {10: "1"}])
def test_piecewise_linear_refuses_bad_points(points) -> None:
    optimizer = optarena.Lion([torch.zeros(2, requires_grad=True)])
    with pytest.raises(ValueError, match="Invalid"):
        piecewise_linear(optimizer, points)


def test_ema_model_follows_the_ema_rule() -> None:
    model = torch.nn.Linear(2, 1)
    ema = ema_model(model, decay=0.9)
    history = [model.weight.detach().clone()]
    for _ in range(3):
        with torch.no_grad():
            model.weight.add_(1.0)
        ema.update_parameters(model)
        history.append(model.weight.detach().clone())
    expected = history[1]  # AveragedModel's first update copies the weights, later ones average
    for w in history[2:]:
        expected = 0.9 * expected + 0.1 * w
    assert torch.allclose(ema.module.weight, expected)
    with pytest.raises(ValueError, match="Invalid decay: 1.0"):
        ema_model(model, decay=1.0)


def test_bad_points_and_decay_are_named_with_their_value() -> None:
    np = pytest.importorskip("numpy")
    optimizer = optarena.Lion([torch.zeros(2, requires_grad=True)], lr=1e-3)
    for points in ([(0, 1.0), (10, 0.1)], None):  # a list of pairs failed with AttributeError
        with pytest.raises(ValueError, match=rf"Invalid points: {re.escape(repr(points))}"):
            piecewise_linear(optimizer, points)
    scheduler = piecewise_linear(optimizer, {np.int64(2): np.float64(1.0)})  # numpy's steps were refused
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)
    for decay in ("0.9", float("nan"), torch.tensor(0.9)):  # a string failed inside a comparison
        with pytest.raises(ValueError, match="Invalid decay"):
            ema_model(torch.nn.Linear(2, 1), decay=decay)
