"""The optimizers under bad input: non-finite gradients, checkpoints of another optimizer or model, out-of-range
loaded hyper-parameters, Tensor hyper-parameters."""

from __future__ import annotations

import pytest
import torch
from cases import CASES, build

import optarena

PATHS = [dict(foreach=False), dict(foreach=True), dict(fused=True)]


def make_params(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in [(4, 5), (5,), ()]]


def set_grads(params: list[torch.Tensor], seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)


def trained(cls: type, params: list[torch.nn.Parameter], **kwargs) -> dict:
    opt = cls(params, **kwargs)
    for seed in range(2):
        set_grads(params, seed)
        opt.step()
    return opt.state_dict()


@pytest.mark.parametrize("path", PATHS, ids=str)
@pytest.mark.parametrize("case", ["lion", "rlion-arctan", "adan", "adax", "adafactor"])
def test_a_nan_gradient_entry_shows_in_its_parameter(case: str, path: dict) -> None:
    """Never a silent freeze: torch.sign(nan) is 0, so Lion would keep a NaN momentum and an unchanged weight for
    ever; every optarena optimizer lets the NaN reach the parameter, as torch.optim's do."""
    params = make_params()
    opt = build(case, params, **path)
    set_grads(params, 0)
    params[0].grad[1, 2] = float("nan")
    opt.step()
    assert params[0][1, 2].isnan()


@pytest.mark.parametrize("path", PATHS, ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_skip_nonfinite_skips_the_whole_step(case: str, path: dict) -> None:
    params, reference = make_params(), make_params()
    opt = build(case, params, skip_nonfinite=True, **path)
    ref = build(case, reference, **path)
    for seed in range(3):
        set_grads(params, seed)
        set_grads(reference, seed)
        opt.step()
        ref.step()
        set_grads(params, 10 + seed)
        params[seed].grad.view(-1)[0] = (float("nan"), float("inf"), -float("inf"))[seed]
        opt.step()  # skipped: parameters, state and step counts untouched
    assert opt.skipped_steps == 3
    for a, b in zip(params, reference):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(params, reference):
        for key, value in ref.state[b].items():
            assert torch.equal(opt.state[a][key], value), key


def test_skip_nonfinite_counts_an_overflowing_square_for_adafactor() -> None:
    """One gradient entry of 1e20 is finite, but its square is not in float32: Adafactor's factored moment would turn
    the whole tensor NaN. skip_nonfinite skips that step; Lion takes it."""
    for cls, skipped in ((optarena.Adafactor, 1), (optarena.Lion, 0)):
        params = make_params()
        opt = cls(params, skip_nonfinite=True)
        set_grads(params, 0)
        params[0].grad[0, 0] = 1e20
        opt.step()
        assert opt.skipped_steps == skipped
        assert all(torch.isfinite(p).all() for p in params)


def test_skip_nonfinite_is_one_setting_for_all_groups() -> None:
    p, q = make_params()[:2]
    with pytest.raises(ValueError, match="Invalid skip_nonfinite in a param group: True"):
        optarena.Lion([{"params": [p]}, {"params": [q], "skip_nonfinite": True}])
    with pytest.raises(ValueError, match="Invalid skip_nonfinite: 1"):
        optarena.Lion([p], skip_nonfinite=1)


@pytest.mark.parametrize("source, target, match", [
    (optarena.AdaX, optarena.Lion, "has decoupled_weight_decay, eps, which Lion's groups do not have"),
    (optarena.Lion, optarena.RLion, "lacks alpha, bound, which RLion's groups always have"),
    (optarena.RLion, optarena.Lion, "has alpha, bound, which Lion's groups do not have"),
    (optarena.Lion, optarena.Adan, "lacks eps, max_grad_norm, no_prox"),
    (optarena.Adan, optarena.AdaX, "has max_grad_norm, no_prox"),
    (torch.optim.AdamW, optarena.Lion, "saved from another optimizer"),
])
def test_a_state_dict_of_another_optimizer_is_refused(source: type, target: type, match: str) -> None:
    saved = trained(source, make_params())
    params = make_params(1)
    opt = target(params)
    before = opt.state_dict()
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(saved)
    assert opt.state_dict() == before  # nothing changed


def test_state_of_another_model_or_with_wrong_keys_is_refused() -> None:
    saved = trained(optarena.Lion, make_params())
    other_model = [torch.nn.Parameter(torch.zeros(6, 5)), *make_params()[1:]]
    with pytest.raises(ValueError, match=r"parameter 0 of group 0 \(shape \(6, 5\)\) has exp_avg of shape \(4, 5\)"):
        optarena.Lion(other_model).load_state_dict(saved)
    saved = trained(optarena.AdaX, make_params())
    del saved["state"][0]["step"]
    with pytest.raises(ValueError, match="parameter 0 of group 0 .* lacks step; AdaX keeps exp_avg, exp_avg_sq, step"):
        optarena.AdaX(make_params()).load_state_dict(saved)


@pytest.mark.parametrize("key, value, match", [
    ("lr", -5, r"param group 0: Invalid lr: -5"),
    ("betas", (0.9, 1.5), r"param group 0: Invalid betas\[1\]: 1.5"),
    ("weight_decay", float("nan"), "param group 0: Invalid weight_decay: nan"),
    ("foreach", "yes", "param group 0: Invalid foreach: 'yes'"),
])
def test_loaded_hyperparameters_are_checked_as_the_constructor_checks_them(key: str, value, match: str) -> None:
    saved = trained(optarena.Lion, make_params())
    saved["param_groups"][0][key] = value
    with pytest.raises(ValueError, match=match):
        optarena.Lion(make_params()).load_state_dict(saved)


def test_a_checkpoint_missing_the_newer_keys_still_loads() -> None:
    saved = trained(optarena.Adan, make_params())
    for group in saved["param_groups"]:
        del group["skip_nonfinite"], group["stochastic_rounding"]
    opt = optarena.Adan(make_params())
    opt.load_state_dict(saved)
    assert opt.param_groups[0]["skip_nonfinite"] is False


def test_a_tensor_lr_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="Invalid lr: a Tensor .*pass a Python float"):
        optarena.Lion(make_params(), lr=torch.tensor(1e-3))


@pytest.mark.parametrize("cls", [optarena.Adan, optarena.AdaX])
def test_eps_zero_is_refused(cls: type) -> None:
    """With eps = 0 a parameter whose gradient is 0 would get 0/0 = NaN."""
    with pytest.raises(ValueError, match=r"Invalid eps: 0 \(must be in \[1.1754943508222875e-38, "):
        cls(make_params(), eps=0)
