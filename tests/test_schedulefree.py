"""Schedule-free AdamW/SGD (the optional ``schedulefree`` package): registry facts, the arena's train()/eval()
handling and schedule, and the integrations' checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import optarena
from optarena.arena import runner
from optarena.arena.tasks import make_digits_mlp
from optarena.optim.schedule_free import _missing

schedulefree = pytest.importorskip("schedulefree")


def test_registry_facts_and_factory() -> None:
    info = optarena.get_optimizer_info("schedulefree_adamw")
    assert info.train_eval_modes and info.schedule == "constant"
    assert issubclass(info.cls, schedulefree.AdamWScheduleFree)  # the package's class, checked (optim/schedule_free.py)
    assert issubclass(optarena.get_optimizer_info("schedulefree_sgd").cls, schedulefree.SGDScheduleFree)
    assert optarena.info.info_for(schedulefree.AdamWScheduleFree) is info  # built from the package directly too
    opt = optarena.create_optimizer(nn.Linear(3, 2), "schedulefree_sgd", lr=None)
    assert opt.param_groups[0]["lr"] == 1.0
    assert optarena.translate_hparams("schedulefree_adamw", lr=1e-3) == {"lr": 2.5e-3, "weight_decay": 0.0}
    with pytest.raises(ValueError, match="Invalid lookahead"):
        optarena.create_optimizer(nn.Linear(3, 2), "lookahead_schedulefree_adamw")
    with pytest.raises(ValueError, match="Invalid lazy"):
        optarena.create_optimizer(nn.Linear(3, 2), "schedulefree_adamw", lazy=True)


def test_missing_package_names_the_install_command() -> None:
    with pytest.raises(ImportError, match="pip install schedulefree==1.4.1"):
        _missing("schedulefree_adamw")([torch.zeros(1)], lr=1.0)


def test_set_optimizer_mode_switches_the_points() -> None:
    model = nn.Linear(3, 2)
    opt = optarena.create_optimizer(model, "schedulefree_adamw", lr=0.1, accumulate=1)
    assert optarena.set_optimizer_mode(opt, True) and opt.param_groups[0]["train_mode"]
    for _ in range(3):  # after one step x = z = y
        opt.zero_grad()
        model(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
    y = model.weight.detach().clone()
    optarena.set_optimizer_mode(opt, False)
    assert not opt.param_groups[0]["train_mode"] and not torch.equal(model.weight, y)
    assert not optarena.set_optimizer_mode(torch.optim.SGD(model.parameters(), lr=0.1), False)


def test_arena_schedule_is_warmup_then_constant() -> None:
    constant, cosine = runner.lr_multiplier("schedulefree_adamw", 100), runner.lr_multiplier("adamw", 100)
    assert [constant(s) for s in (0, 4, 50, 99)] == [0.2, 1.0, 1.0, 1.0]
    assert cosine(0) == 1.0 and cosine(100) == 0.0


def _run(monkeypatch: pytest.MonkeyPatch) -> tuple[runner.RunResult, list[bool]]:
    """A tiny digits run of schedulefree_adamw; also the optimizer's train_mode at each evaluation."""
    task = make_digits_mlp("tiny")
    made, modes = [], []
    create = runner.create_optimizer

    def recording_create(*args, **kwargs):
        made.append(create(*args, **kwargs))
        return made[-1]

    def evaluate(model: nn.Module, inner=task.evaluate) -> float:
        modes.append(made[-1].param_groups[0]["train_mode"])  # the run's (a warm-up run may come first)
        return inner(model)

    monkeypatch.setattr(runner, "create_optimizer", recording_create)
    task.evaluate = evaluate
    return runner.train_once(task, "schedulefree_adamw", 2.5e-3, seed=0), modes


def test_arena_evaluates_at_the_eval_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    result, modes = _run(monkeypatch)
    assert modes and not any(modes)  # every evaluation in eval() mode: the parameters hold x
    # the test fails if eval() is skipped: the metrics (at y instead of x) differ
    monkeypatch.setattr(schedulefree.AdamWScheduleFree, "eval", lambda self: None)
    skipped, _ = _run(monkeypatch)
    assert skipped.eval_metric[1:] != result.eval_metric[1:]


def _trained(name: str, model: nn.Module, steps: int = 2) -> torch.optim.Optimizer:
    opt = optarena.create_optimizer(model, name)
    opt.train()
    for _ in range(steps):
        opt.zero_grad()
        model(torch.ones(2, 3)).pow(2).sum().backward()
        opt.step()
    return opt


@pytest.mark.parametrize("name", ["schedulefree_adamw", "schedulefree_sgd"])
def test_bad_values_eval_mode_steps_and_foreign_state_are_refused(name: str) -> None:
    model = nn.Linear(3, 2)
    if name == "schedulefree_adamw":  # the package checks lr, weight decay (and SGD's momentum) only
        for kwargs, match in (({"betas": (1.5, 0.9)}, r"betas\[0\]: 1.5"), ({"eps": -1.0}, "eps: -1.0")):
            with pytest.raises(ValueError, match=match):
                optarena.create_optimizer(model, name, **kwargs)
    with pytest.raises(RuntimeError, match=r"eval\(\) mode.*optimizer.train\(\)"):
        optarena.create_optimizer(model, name).step()  # built in eval() mode, as the package builds it
    opt = _trained(name, model)
    saved = opt.state_dict()
    before = model.weight.detach().clone()
    opt.param_groups[0]["lr"] = float("nan")  # mid-run: every weight became NaN
    with pytest.raises(ValueError, match=r"step: param group 0 \(set after construction\): Invalid lr: nan"):
        opt.step()
    assert torch.equal(model.weight, before)
    adamw = torch.optim.AdamW(model.parameters())
    model(torch.ones(2, 3)).sum().backward()
    adamw.step()
    other = "schedulefree_sgd" if name == "schedulefree_adamw" else "schedulefree_adamw"
    for foreign in (adamw.state_dict(), _trained(other, nn.Linear(3, 2)).state_dict()):
        with pytest.raises(ValueError, match="param group 0 lacks .*another optimizer"):  # was KeyError at step
            opt.load_state_dict(foreign)
    with pytest.raises(ValueError, match=r"shape \(4, 3\).*another model"):
        opt.load_state_dict(_trained(name, nn.Linear(3, 4)).state_dict())
    with pytest.raises(ValueError, match="param group 0: Invalid lr: -5.0"):
        opt.load_state_dict({**saved, "param_groups": [{**g, "lr": -5.0} for g in saved["param_groups"]]})
    fresh = optarena.create_optimizer(model, name)
    fresh.load_state_dict(saved)  # its own state still loads, and steps
    fresh.step()
    assert fresh.state_dict()["param_groups"][0]["k"] == saved["param_groups"][0]["k"] + 1


def test_step_hooks_run_once_per_step() -> None:
    """The registry's class wraps the package's: torch also wraps the package's step with its hook runner once a
    plain instance exists, and calling that from the registry's step ran every hook twice."""
    schedulefree = pytest.importorskip("schedulefree")
    schedulefree.AdamWScheduleFree([nn.Parameter(torch.zeros(1))])  # torch wraps the package's class's step now
    param = nn.Parameter(torch.zeros(3))
    opt = optarena.create_optimizer([param], "schedulefree_adamw", lr=1e-2)
    calls = []
    opt.register_step_pre_hook(lambda *args: calls.append("pre"))
    opt.register_step_post_hook(lambda *args: calls.append("post"))
    opt.train()
    param.grad = torch.ones(3)
    opt.step()
    assert calls == ["pre", "post"]
