"""The reused optimizers (MuonAdamW over torch's Muon + AdamW; schedule-free AdamW/SGD from ``schedulefree``) keep
torch.optim's conventions where the reused code does not: p.grad untouched, maximize refused rather than ignored by
half the model, errors naming the argument given, groups added mid-run, and a warning for a decaying lr."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import optarena
from optarena.arena import runner
from optarena.optim.muon import MuonAdamW

SCHEDULE_FREE = ["schedulefree_adamw", "schedulefree_sgd"]


def _backward(model: nn.Module, seed: int = 0) -> None:
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(seed))
    model(x).pow(2).sum().backward()


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("name", SCHEDULE_FREE)
def test_schedulefree_step_leaves_p_grad_as_backward_left_it(name: str, foreach: bool) -> None:
    pytest.importorskip("schedulefree")
    torch.manual_seed(0)
    ours, theirs = nn.Linear(3, 2), nn.Linear(3, 2)
    theirs.load_state_dict(ours.state_dict())
    opt = optarena.create_optimizer(ours, name, lr=0.1, weight_decay=0.1, foreach=foreach)
    package = opt.adapts([{"params": [theirs.weight]}, {"params": [theirs.bias], "weight_decay": 0.0}], lr=0.1,
                         weight_decay=0.1, foreach=foreach)  # the factory's groups: no decay on the bias
    opt.train()
    package.train()
    for step in range(3):
        for model, o in ((ours, opt), (theirs, package)):
            o.zero_grad()
            _backward(model, step)
        grads = [p.grad.clone() for p in ours.parameters()]
        opt.step()
        package.step()
        assert all(torch.equal(g, p.grad) for g, p in zip(grads, ours.parameters()))  # was divided / decayed
        assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters()))  # same math

    def closure() -> torch.Tensor:
        opt.zero_grad()
        _backward(ours, 9)
        return torch.tensor(1.0)

    assert opt.step(closure).item() == 1.0
    opt.zero_grad()
    _backward(ours, 9)
    expected = [p.grad.clone() for p in ours.parameters()]
    opt.step(closure)
    assert all(torch.equal(g, p.grad) for g, p in zip(expected, ours.parameters()))


@pytest.mark.parametrize("name", SCHEDULE_FREE)
def test_schedulefree_refuses_maximize_it_would_ignore_and_a_non_bool_foreach(name: str) -> None:
    pytest.importorskip("schedulefree")
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="param group 0: Invalid foreach: 'no'"):  # was taken as True
        optarena.create_optimizer(model, name, foreach="no")
    with pytest.raises(ValueError, match="param group 0: Invalid maximize: True"):
        optarena.create_optimizer([{"params": list(model.parameters()), "maximize": True}], name)
    opt = optarena.create_optimizer(model, name)
    opt.train()
    opt.param_groups[0]["maximize"] = True
    _backward(model)
    before = model.weight.detach().clone()
    with pytest.raises(ValueError, match=r"step: param group 0 \(set after construction\): Invalid maximize: True"):
        opt.step()
    assert torch.equal(model.weight, before)


def test_muon_refuses_maximize_that_only_its_adamw_half_would_apply() -> None:
    hidden, bias = nn.Parameter(torch.randn(4, 4)), nn.Parameter(torch.randn(4))
    with pytest.raises(ValueError, match="Invalid maximize: True"):
        MuonAdamW([{"params": [hidden, bias], "maximize": True}])
    opt = MuonAdamW([hidden, bias], lr=0.1)
    saved = opt.state_dict()
    hidden.grad, bias.grad = torch.ones(4, 4), torch.ones(4)
    opt.param_groups[1]["maximize"] = True  # the AdamW half honoured it, torch's Muon has no maximize
    before = [hidden.detach().clone(), bias.detach().clone()]
    with pytest.raises(ValueError, match=r"step: param group 1 \(AdamW\).*Invalid maximize: True"):
        opt.step()
    assert torch.equal(hidden, before[0]) and torch.equal(bias, before[1])
    with pytest.raises(ValueError, match="param group 1: Invalid maximize: True"):
        opt.load_state_dict({**saved, "param_groups": [saved["param_groups"][0],
                                                       {**saved["param_groups"][1], "maximize": True}]})


@pytest.mark.parametrize("lr", [None, float("inf"), "1e-3"])
def test_muon_bad_lr_is_reported_as_lr(lr: object) -> None:
    # adamw_lr defaults to lr, and was checked first: the message named an argument the caller never gave
    with pytest.raises(ValueError, match=f"^Invalid lr: {lr!r}"):
        MuonAdamW([nn.Parameter(torch.randn(4, 4))], lr=lr)


@pytest.mark.parametrize("name", SCHEDULE_FREE)
def test_schedulefree_group_added_mid_run_joins_the_training_mode(name: str) -> None:
    pytest.importorskip("schedulefree")
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    opt = optarena.create_optimizer(list(model[1].parameters()), name, lr=0.01)
    opt.train()
    for step in range(2):
        opt.zero_grad()
        _backward(model, step)
        opt.step()
    opt.add_param_group({"params": list(model[0].parameters())})  # layers unfrozen mid-run
    assert [g["train_mode"] for g in opt.param_groups] == [True, True]
    before = model[0].weight.detach().clone()
    for step in (2, 3):
        opt.zero_grad()
        _backward(model, step)
        opt.step()  # was: RuntimeError "in eval() mode" although train() had been called
    assert not torch.equal(model[0].weight, before)
    opt.eval()  # the new group moves to x with the others
    assert not opt.param_groups[1]["train_mode"]
    assert not torch.equal(model[0].weight, opt.state[model[0].weight]["z"])
    built = optarena.create_optimizer([{"params": [model[0].weight]}, {"params": [model[0].bias]}], name)
    assert [g["train_mode"] for g in built.param_groups] == [False, False]  # built in eval() mode, as the package


@pytest.mark.parametrize("name", SCHEDULE_FREE)
def test_schedulefree_warns_once_when_a_scheduler_decays_the_lr(name: str) -> None:
    pytest.importorskip("schedulefree")
    steps = 20

    def run(make_scheduler) -> list[warnings.WarningMessage]:
        model = nn.Linear(3, 2)
        opt = optarena.create_optimizer(model, name, lr=0.01)
        scheduler = make_scheduler(opt)
        opt.train()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for step in range(steps):
                opt.zero_grad()
                _backward(model, step)
                opt.step()
                scheduler.step()
        return [w for w in caught if "constant lr" in str(w.message)]

    decaying = run(lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps))
    assert len(decaying) == 1 and "param group 0's lr fell from its peak 0.01" in str(decaying[0].message)
    # the arena's schedule for it, warm-up then constant, does not warn
    assert run(lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, runner.lr_multiplier(name, steps))) == []
    assert run(lambda opt: torch.optim.lr_scheduler.ConstantLR(opt, 1.0)) == []
    # nor an lr one rounding below its peak (a chained warm-up's last multiplication)
    assert run(lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 - 1e-12 * (k % 2))) == []
