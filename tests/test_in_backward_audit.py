"""Audit of ``optarena.step_in_backward``: cases found stepping differently from the usual loop."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import optarena


def batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 6, generator=gen), torch.randn(8, 3, generator=gen)) for _ in range(n)]


def test_frozen_part_unfrozen_while_the_rest_is_frozen_steps_like_the_usual_loop() -> None:
    """Train the head with the backbone frozen, then swap: in the second phase no parameter that had a hook gets a
    gradient, so nothing noticed the unfrozen backbone: it never stepped and its gradient grew."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 3))
    model[0].requires_grad_(False)
    twin = copy.deepcopy(model)
    ref = optarena.Lion(model.parameters(), lr=1e-2, foreach=False)
    opt = optarena.Lion(twin.parameters(), lr=1e-2, foreach=False)
    with optarena.step_in_backward(twin, opt):
        for i, (x, y) in enumerate(batches(4)):
            if i == 2:
                for m in (model, twin):
                    m[2].requires_grad_(False)
                    m[0].requires_grad_(True)
            nn.functional.mse_loss(model(x), y).backward()
            ref.step()
            ref.zero_grad()
            nn.functional.mse_loss(twin(x), y).backward()
            assert all(p.grad is None for p in twin.parameters())
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
    assert all(not p.requires_grad for p in twin[2].parameters())  # the hooks left requires_grad as it was


def test_a_second_optimizer_over_hooked_parameters_is_refused_until_the_first_handle_is_removed() -> None:
    """A new optimizer for the next phase, made to step inside backward while the first one's hooks live: the first
    hook stepped with the old optimizer and freed the gradient, the new optimizer never stepped."""
    torch.manual_seed(0)
    model = nn.Linear(4, 4)
    optarena.step_in_backward(model, optarena.Lion(model.parameters(), lr=1e-1))  # its handle not kept
    opt = optarena.Lion(model.parameters(), lr=1e-4)
    with pytest.raises(ValueError, match=r"shape \(4, 4\) already steps inside backward with another Lion"):
        optarena.step_in_backward(model, opt)
    first = optarena.StepInBackward.of(model.weight)
    assert first is not None and first is optarena.StepInBackward.of(model.bias)
    first.remove()
    assert optarena.StepInBackward.of(model.weight) is None
    twin = copy.deepcopy(model)
    ref = optarena.Lion(twin.parameters(), lr=1e-4, foreach=False)
    opt = optarena.Lion(model.parameters(), lr=1e-4, foreach=False)
    with optarena.step_in_backward(model, opt):
        x = torch.randn(2, 4)
        model(x).sum().backward()
    twin(x).sum().backward()
    ref.step()
    assert torch.equal(model.weight, twin.weight) and len(opt.state) == 2
