"""Every constructor argument out of range raises ValueError naming the argument and the value."""

from __future__ import annotations

import re

import pytest
import torch

import optarena

BAD_ARGUMENTS = [
    # (class, keyword arguments, the argument's name as the message must show it)
    *[(cls, {"lr": -1e-3}, "lr") for cls in (optarena.Lion, optarena.RLion, optarena.Adan, optarena.AdaX,
                                             optarena.Adafactor)],
    *[(cls, {"lr": float("nan")}, "lr") for cls in (optarena.Lion, optarena.Adan)],
    *[(cls, {"weight_decay": -0.1}, "weight_decay") for cls in (optarena.Lion, optarena.RLion, optarena.Adan,
                                                                optarena.AdaX, optarena.Adafactor)],
    (optarena.Lion, {"betas": (1.0, 0.99)}, "betas[0]"),
    (optarena.Lion, {"betas": (0.9, -0.1)}, "betas[1]"),
    (optarena.Lion, {"betas": (0.9, 0.99, 0.9)}, "betas"),
    (optarena.Lion, {"maximize": "yes"}, "maximize"),
    (optarena.Lion, {"foreach": 1}, "foreach"),
    (optarena.RLion, {"alpha": 0.0}, "alpha"),
    (optarena.RLion, {"alpha": float("inf")}, "alpha"),
    (optarena.RLion, {"bound": "sigmoid"}, "bound"),
    (optarena.Adan, {"betas": (0.98, 0.92)}, "betas"),
    (optarena.Adan, {"betas": (0.98, 0.92, 1.5)}, "betas[2]"),
    (optarena.Adan, {"eps": -1e-8}, "eps"),
    (optarena.Adan, {"max_grad_norm": -1.0}, "max_grad_norm"),
    (optarena.AdaX, {"betas": (0.9, 0.0)}, "betas[1]"),
    (optarena.AdaX, {"betas": (-0.1, 1e-4)}, "betas[0]"),
    (optarena.AdaX, {"eps": -1.0}, "eps"),
    (optarena.Adafactor, {"beta2_decay": 0.5}, "beta2_decay"),
    (optarena.Adafactor, {"eps": (None, -1e-3)}, "eps[1]"),
    (optarena.Adafactor, {"eps": (-1e-30, 1e-3)}, "eps[0]"),
    (optarena.Adafactor, {"eps": (0.0, 1e-3)}, "eps[0]"),
    (optarena.Adafactor, {"eps": 1e-3}, "eps"),
    (optarena.Adafactor, {"clip_threshold": 0.0}, "clip_threshold"),
    (optarena.Adafactor, {"beta1": 1.0}, "beta1"),
    (optarena.Adafactor, {"relative_step": False, "warmup_init": True}, "warmup_init"),
    (optarena.Adafactor, {"scale_parameter": None}, "scale_parameter"),
    (optarena.AdEMAMix, {"betas": (0.9, 0.999)}, "betas"),
    (optarena.AdEMAMix, {"betas": (0.9, 0.999, 1.0)}, "betas[2]"),
    (optarena.AdEMAMix, {"alpha": -1.0}, "alpha"),
    (optarena.AdEMAMix, {"alpha": float("nan")}, "alpha"),
    (optarena.AdEMAMix, {"eps": 0.0}, "eps"),
    (optarena.AdEMAMix, {"alpha_warmup": 0}, "alpha_warmup"),
    (optarena.AdEMAMix, {"beta3_warmup": 10.5}, "beta3_warmup"),
    (optarena.AdEMAMix, {"betas": (0.0, 0.999, 0.9999), "beta3_warmup": 100}, "betas"),
    (optarena.Amos, {"beta": 1.0}, "beta"),
    (optarena.Amos, {"eta": 0.0}, "eta"),
    (optarena.Amos, {"eta": "auto"}, "eta"),
    (optarena.Amos, {"momentum": 1.0}, "momentum"),
    (optarena.Amos, {"zeta": -0.25}, "zeta"),
    (optarena.Amos, {"eps": 0.0}, "eps"),
    (optarena.Amos, {"weight_decay": -0.1}, "weight_decay"),
]


@pytest.mark.parametrize(("cls", "kwargs", "name"), BAD_ARGUMENTS,
                         ids=[f"{c.__name__}-{'-'.join(k)}" for c, k, _ in BAD_ARGUMENTS])
def test_out_of_range_argument_names_itself_and_its_value(cls, kwargs, name) -> None:
    params = [torch.zeros(3, requires_grad=True)]
    with pytest.raises(ValueError) as info:
        cls(params, **kwargs)
    message = str(info.value)
    assert f"Invalid {name}:" in message
    value = kwargs[name.split("[")[0]]
    shown = value[int(name[-2])] if name.endswith("]") else value
    if name not in ("warmup_init",):  # that message names the conflicting flag instead of a number
        assert re.search(re.escape(repr(shown)), message), message


def test_bad_hyper_parameter_in_an_added_group_is_refused_and_not_kept() -> None:
    optimizer = optarena.Lion([torch.zeros(3, requires_grad=True)])
    with pytest.raises(ValueError, match=r"Invalid lr: -1"):
        optimizer.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "lr": -1})
    assert len(optimizer.param_groups) == 1


def test_adan_max_grad_norm_is_global_not_per_group() -> None:
    with pytest.raises(ValueError, match="max_grad_norm in a param group: 1.0"):
        optarena.Adan([{"params": [torch.zeros(3, requires_grad=True)], "max_grad_norm": 1.0}])


def test_integer_params_are_refused() -> None:
    with pytest.raises(ValueError, match="floating-point.*int64"):
        optarena.Lion([torch.zeros(3, dtype=torch.long)])


def test_arguments_an_audit_found_accepted_silently_or_failing_deep() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    params = list(model.parameters())
    cases = [
        (lambda: optarena.Adan(params, no_prox=None), ValueError, "Invalid no_prox: None"),
        (lambda: optarena.AdaX(params, decoupled_weight_decay=1), ValueError, "Invalid decoupled_weight_decay: 1"),
        # eps2 = 0 with scale_parameter: a parameter at 0 would never move
        (lambda: optarena.Adafactor([torch.zeros(3, 4, requires_grad=True)], eps=(None, 0.0)), ValueError,
         r"Invalid eps\[1\]: 0.0"),
        (lambda: optarena.create_optimizer(model, "muon", betas=None), ValueError, "Invalid betas: None"),
        (lambda: optarena.create_optimizer(model, "muon", adamw_params=3), ValueError, "Invalid adamw_params: 3"),
        (lambda: optarena.MuonAdamW({"params": params}), TypeError, "params must be an iterable .* got dict"),
        (lambda: optarena.create_optimizer(params, "lion", weight_decay=0.1, no_weight_decay=["0"]), ValueError,
         "Invalid no_weight_decay: .* pass the model"),
        (lambda: optarena.create_optimizer(model, "lion", weight_decay=0.1, no_weight_decay=["0.wieght"]),
         ValueError, "Invalid no_weight_decay: '0.wieght' names no parameter or module of Sequential"),
        (lambda: optarena.create_optimizer(model, "lion", no_weight_decay=None), ValueError,
         "Invalid no_weight_decay: None"),
        (lambda: optarena.step_in_backward(None, optarena.Lion(params)), TypeError,
         "model_or_params must be an nn.Module or an iterable of parameters, got NoneType"),
    ]
    for make, error, message in cases:
        with pytest.raises(error, match=message):
            make()
    muon = optarena.create_optimizer(model, "muon", betas=(0, 0.99))  # integers, as every other optimizer takes
    assert muon.defaults["betas"] == (0.0, 0.99)
    model(torch.randn(2, 3)).sum().backward()
    for path in (dict(foreach=False), dict(foreach=True), dict(fused=True)):  # fused: lr is a kernel input there
        amos = optarena.Amos(params, lr=0.01, weight_decay=0.1, **path)
        amos.param_groups[0]["lr"] = -0.1  # a schedule gone wrong: a clear error, not "math domain error" or NaN
        before = [p.detach().clone() for p in params]
        with pytest.raises(ValueError, match=r"Amos.step: param group 0 \(set after construction\): Invalid lr: -0.1"):
            amos.step()
        assert all(torch.equal(p, b) for p, b in zip(params, before)), path  # refused before the decay
