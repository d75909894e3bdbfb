"""Extreme but valid hyper-parameters and gradients, and values set in param groups after construction: a clear
error naming the argument and the value, or finite results; never a silent NaN, a frozen weight or a deep traceback.
Loop and foreach paths (the fused path runs the same math and checks)."""

from __future__ import annotations

import fractions
import re
from typing import Any

import pytest
import torch

import optarena

PATHS = [dict(foreach=False), dict(foreach=True)]


def finite(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> bool:
    states = [v for p in params for v in optimizer.state[p].values() if v.is_floating_point()]
    return all(bool(t.isfinite().all()) for t in [*params, *states])


@pytest.mark.parametrize("path", PATHS, ids=str)
def test_amos_refuses_an_lr_whose_square_overflows_float32(path: dict) -> None:
    """γ₁ = lr²: from lr ≈ 1.8e19 on, every parameter was NaN after one step, silently."""
    params = [torch.nn.Parameter(torch.randn(4, 5))]
    with pytest.raises(ValueError, match=r"Invalid lr: 1e\+38 \(must be in \[0.0, 1.84"):
        optarena.Amos(params, lr=1e38, **path)
    amos = optarena.Amos(params, lr=1e19, **path)  # the largest accepted order of magnitude still steps
    params[0].grad = torch.randn(4, 5)
    amos.param_groups[0]["lr"] = 1e38  # set later, as a scheduler would
    before = params[0].detach().clone()
    with pytest.raises(ValueError, match=r"param group 0 \(set after construction\): Invalid lr: 1e\+38"):
        amos.step()
    assert torch.equal(params[0], before) and not amos.state[params[0]]


@pytest.mark.parametrize("path", PATHS, ids=str)
def test_amos_tensor_whose_gradient_is_all_zero_stays_finite_at_large_lr(path: dict) -> None:
    """Its v is 0, so r = 1/eps ≈ 4e37; lr²·r overflowed for lr ≥ 3 (an lr the arena's grid reaches) and 0·inf made
    the parameter NaN. r·g² is bounded by 1/(1 − β), so it is computed first."""
    used, unused = torch.nn.Parameter(torch.randn(4, 5)), torch.nn.Parameter(torch.randn(3))
    amos = optarena.Amos([used, unused], lr=3.0, beta=0.9, **path)
    start = unused.detach().clone()
    for _ in range(30):  # 1 − β^t → 1
        used.grad, unused.grad = torch.randn(4, 5), torch.zeros(3)
        amos.step()
    assert finite(amos, [used, unused])
    assert torch.equal(unused, start)  # no gradient, no decay yet (b = 0): the step is exactly 0


@pytest.mark.parametrize("zeta", [0.0, 0.25])
@pytest.mark.parametrize("path", PATHS, ids=str)
def test_amos_decay_accumulator_saturates_instead_of_turning_nan(path: dict, zeta: float) -> None:
    """b grows like exp(lr²·t) with zeta = 0 (no implicit decay): at lr = 1 it overflowed after ~130 steps and
    0·inf made b, then every parameter, NaN. It now stays at the largest float, where c and d are their limits."""
    param = torch.nn.Parameter(torch.randn(4, 5))
    amos = optarena.Amos([param], lr=1.0, zeta=zeta, **path)
    param.grad = torch.randn(4, 5)
    amos.step()
    amos.state[param]["decay"].fill_(torch.finfo(torch.float32).max / 4)  # where ~130 steps of zeta = 0 bring it
    for _ in range(3):
        param.grad = torch.randn(4, 5)
        before = param.detach().clone()
        amos.step()
        assert finite(amos, [param])
        assert (zeta == 0) != torch.equal(param, before)  # zeta = 0: c = d = 1, it moves; else d ≈ 0, it rests


@pytest.mark.parametrize("eps", [1e-45, 1e39])
def test_amos_refuses_an_eps_outside_float32s_normal_range(eps: float) -> None:
    """A subnormal eps made r = 1/eps infinite (a NaN parameter where the gradient was all zero); one beyond
    float32 failed deep in the step ("value cannot be converted to type float without overflow")."""
    with pytest.raises(ValueError, match=rf"Invalid eps: {re.escape(repr(eps))} \(must be in"):
        optarena.Amos([torch.zeros(3, requires_grad=True)], eps=eps)


@pytest.mark.parametrize("eps1", [1e-30, 1e-45, 1e39])
@pytest.mark.parametrize("path", PATHS, ids=str)
def test_adafactor_eps1_of_any_size_keeps_zero_gradient_entries_finite(path: dict, eps1: float) -> None:
    """Hugging Face's Adafactor takes eps1 = 1e-30; its square underflowed float32, so a bias whose gradient had a
    zero entry got rsqrt(0)·0 = NaN. Tiny or huge eps1 failed deep in the step."""
    weight, bias = torch.nn.Parameter(torch.randn(4, 5)), torch.nn.Parameter(torch.randn(5))
    opt = optarena.Adafactor([weight, bias], eps=(eps1, 1e-3), **path)
    for _ in range(3):
        weight.grad, bias.grad = torch.randn(4, 5), torch.randn(5)
        weight.grad[0], bias.grad[0] = 0.0, 0.0
        opt.step()
    assert finite(opt, [weight, bias])


@pytest.mark.parametrize("path", PATHS, ids=str)
@pytest.mark.parametrize("cls", [optarena.Adan, optarena.AdaX, optarena.AdEMAMix])
def test_skip_nonfinite_skips_a_gradient_whose_square_overflows(cls: type, path: dict) -> None:
    """A finite 1e20 in float32 made the second moment infinite for good: every later update of the tensor was
    m/inf = 0, a weight frozen for ever, although skip_nonfinite was asked to guard the state."""
    param = torch.nn.Parameter(torch.randn(4, 5))
    opt = cls([param], skip_nonfinite=True, **path)
    param.grad = torch.randn(4, 5)
    opt.step()
    before = param.detach().clone()
    param.grad = torch.randn(4, 5)
    param.grad[1, 1] = 1e20
    opt.step()
    assert opt.skipped_steps == 1 and torch.equal(param, before) and finite(opt, [param])
    param.grad = torch.randn(4, 5)
    opt.step()
    assert not torch.equal(param, before)


@pytest.mark.parametrize("state_dtype", ["int8", torch.bfloat16])
@pytest.mark.parametrize(("cls", "huge"), [(optarena.Adan, 1e25), (optarena.AdaX, 1e25), (optarena.AdEMAMix, 1e25),
                                           (optarena.Lion, 1e41), (optarena.RLion, 1e41)])
def test_skip_nonfinite_limits_float64_parameters_by_their_narrower_state(cls: type, huge: float,
                                                                         state_dtype: Any) -> None:
    """An fp64 parameter was checked against float64's limit, which a 1e25 gradient is far inside, while its squared
    gradient lands in float32 block scales (8-bit state: 255 weights NaN at the next step) or bf16 (a moment infinite
    for good, a frozen weight); Lion's and RLion's momentum, which squares nothing, had no limit at all (1e41: a block
    NaN). Fp64 state keeps float64's limit."""
    gen = torch.Generator().manual_seed(0)
    param = torch.nn.Parameter(torch.randn(64, 80, dtype=torch.float64, generator=gen))  # quantised: 8-bit codes
    opt = cls([param], skip_nonfinite=True, state_dtype=state_dtype)
    param.grad = torch.randn(64, 80, dtype=torch.float64, generator=gen)
    opt.step()
    before = param.detach().clone()
    param.grad = torch.randn(64, 80, dtype=torch.float64, generator=gen)
    param.grad[0, 0] = huge
    opt.step()
    assert opt.skipped_steps == 1 and torch.equal(param, before)
    for _ in range(2):
        param.grad = torch.randn(64, 80, dtype=torch.float64, generator=gen)
        opt.step()
    assert finite(opt, [param]) and not torch.equal(param, before)
    wide = cls([param], skip_nonfinite=True)
    param.grad[0, 0] = huge
    wide.step()
    assert wide.skipped_steps == 0 and finite(wide, [param])


def test_skip_nonfinite_reads_the_state_a_parameter_has_after_state_dtype_changes() -> None:
    """State keeps the dtype it was made in: bf16 moments of an fp64 parameter stay bf16 after the group switches to
    state_dtype=None, and a 1e25 gradient still overflows them (an infinite second moment, a frozen weight)."""
    param = torch.nn.Parameter(torch.randn(64, 80, dtype=torch.float64))
    opt = optarena.AdaX([param], skip_nonfinite=True, state_dtype=torch.bfloat16)
    param.grad = torch.randn_like(param)
    opt.step()
    opt.param_groups[0]["state_dtype"] = None
    param.grad = torch.randn_like(param)
    param.grad[0, 0] = 1e25
    opt.step()
    assert opt.skipped_steps == 1 and finite(opt, [param])


MID_RUN = [
    # (class, key, value set after construction, the message's argument name)
    (optarena.Lion, "lr", float("nan"), "lr"),
    (optarena.Lion, "lr", "1e-3", "lr"),
    (optarena.Lion, "betas", (1.0, 0.99), r"betas\[0\]"),
    (optarena.RLion, "alpha", None, "alpha"),
    (optarena.Adan, "eps", None, "eps"),
    (optarena.Adan, "betas", (True, 0.92, 0.99), r"betas\[0\]"),
    (optarena.AdaX, "weight_decay", float("inf"), "weight_decay"),
    (optarena.AdEMAMix, "alpha", -1.0, "alpha"),
    (optarena.Adafactor, "clip_threshold", 0.0, "clip_threshold"),
    (optarena.Amos, "lr", -0.1, "lr"),
    (optarena.Amos, "zeta", torch.tensor(0.25), "zeta"),
]


@pytest.mark.parametrize("path", PATHS, ids=str)
@pytest.mark.parametrize(("cls", "key", "value", "name"), MID_RUN,
                         ids=[f"{c.__name__}-{k}-{v!r}" for c, k, v, _ in MID_RUN])
def test_a_value_set_after_construction_is_refused_before_anything_moves(cls, key, value, name, path) -> None:
    """A NaN lr made every parameter NaN silently; a string or None failed deep in the math (TypeError from
    torch._foreach_*); True counted as 1. The constructor's checks now run on each step's groups."""
    params = [torch.nn.Parameter(torch.randn(4, 5)), torch.nn.Parameter(torch.randn(5))]
    opt = cls(params, **path)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    opt.param_groups[0][key] = value
    before = [p.detach().clone() for p in params]
    state = [{k: v.clone() for k, v in opt.state[p].items()} for p in params]
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.step: param group 0 \(set after construction\): "
                                         rf"Invalid {name}: "):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert all(torch.equal(opt.state[p][k], v) for p, s in zip(params, state) for k, v in s.items())


def test_values_set_after_construction_are_checked_on_the_other_entry_points() -> None:
    """step_parameters (step_in_backward) and apply_update (Lazy) step without step()."""
    param = torch.nn.Parameter(torch.randn(4, 5))
    lion = optarena.Lion([param])
    param.grad = torch.randn(4, 5)
    lion.param_groups[0]["lr"] = float("nan")
    with pytest.raises(ValueError, match=r"Invalid lr: nan"):
        lion.step_parameters([param], lion.param_groups[0])
    with pytest.raises(ValueError, match=r"Invalid lr: nan"):
        group = lion.param_groups[0]
        lion.apply_update(group, [param.detach()], [param.grad], [lion.state_for(param, group)])
    lazy = optarena.Lazy(optarena.Lion([param]))
    lazy.param_groups[0]["weight_decay"] = "0.1"
    with pytest.raises(ValueError, match=r"Invalid weight_decay: '0.1'"):
        lazy.step()
    assert param.isfinite().all()


@pytest.mark.parametrize("value", [fractions.Fraction(1, 10), 2**1100], ids=["Fraction", "int-beyond-float"])
def test_a_number_torch_cannot_take_is_refused_up_front(value) -> None:
    """Real numbers that are no float failed deep inside the step: a Fraction (TypeError from torch._foreach_add_),
    an int beyond float range (OverflowError)."""
    with pytest.raises(ValueError, match=r"Invalid lr: .* \(expected a finite real number: a float or an int\)"):
        optarena.Lion([torch.zeros(3, requires_grad=True)], lr=value)


@pytest.mark.parametrize(("name", "kwargs", "match"), [
    ("adamw", dict(weight_decay=float("nan")), r"Invalid weight_decay: nan"),
    ("adamw", dict(weight_decay=-0.1), r"Invalid weight_decay: -0.1"),
    ("sgd", dict(lr=float("nan")), r"Invalid lr: nan"),
    ("momentum", dict(weight_decay=None), r"Invalid weight_decay: None"),
])
def test_the_factory_checks_lr_and_weight_decay_for_torchs_optimizers_too(name: str, kwargs: dict, match: str) -> None:
    """torch.optim checks only its constructor's weight_decay, but the factory puts it in the groups: a NaN decay was
    taken (every weight NaN after a step), a negative one too; SGD takes a NaN lr."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match=match):
        optarena.create_optimizer(model, name, **kwargs)



@pytest.mark.parametrize("name", ["lion", "adan", "adafactor", "muon"])
def test_a_scheduler_that_sets_a_tensor_lr_still_steps_and_a_nan_one_is_refused(name: str) -> None:
    """A LambdaLR whose lambda returns a 0-d tensor sets a tensor lr: it trained before the per-step checks and must
    still (the constructor refuses a tensor lr; a schedule may set one); a NaN tensor is refused by name."""
    model = torch.nn.Linear(4, 3)
    opt = optarena.create_optimizer(model, name, lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: torch.tensor(0.5 ** step))
    for _ in range(3):
        model(torch.randn(2, 4)).square().sum().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    assert isinstance(opt.param_groups[0]["lr"], torch.Tensor)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    opt.param_groups[0]["lr"] = torch.tensor(float("nan"))
    model(torch.randn(2, 4)).square().sum().backward()
    with pytest.raises(ValueError, match=r"param group 0.*\(set after construction\): Invalid lr: nan"):
        opt.step()


BEYOND_FLOAT32 = [
    # (class, keyword, value): each failed deep in the step (RuntimeError "value cannot be converted to type float
    # without overflow") or left every weight inf or NaN after a few steps, silently
    *[(cls, key, 1e39) for cls in (optarena.Lion, optarena.RLion, optarena.Adan, optarena.AdaX, optarena.AdEMAMix)
      for key in ("lr", "weight_decay")],
    (optarena.AdEMAMix, "alpha", 1e39),
    (optarena.RLion, "alpha", 1e39),  # inf in float32: 0·inf = NaN where the momentum is 0
    # Adafactor: NaN weights (lr with relative_step=False, decay); Amos: NaN weights (decay; zeta: inf·b, b = 0)
    *[(optarena.Adafactor, key, 1e39) for key in ("lr", "weight_decay")],
    (optarena.Amos, "weight_decay", 1e39), (optarena.Amos, "zeta", 1e39),
    # an eps that float32 rounds to 0 gave 0/0 = NaN where a gradient entry was 0; one beyond it froze every weight
    *[(cls, "eps", eps) for cls in (optarena.Adan, optarena.AdaX, optarena.AdEMAMix) for eps in (1e-46, 1e39)],
]


@pytest.mark.parametrize(("cls", "key", "value"), BEYOND_FLOAT32,
                         ids=[f"{c.__name__}-{k}-{v!r}" for c, k, v in BEYOND_FLOAT32])
def test_a_hyper_parameter_beyond_float32_is_refused_up_front(cls: type, key: str, value: float) -> None:
    params = [torch.nn.Parameter(torch.randn(4, 5))]
    extra = dict(relative_step=False) if cls is optarena.Adafactor and key == "lr" else {}
    with pytest.raises(ValueError, match=rf"Invalid {key}: {re.escape(repr(value))} \(must be in"):
        cls(params, **{key: value}, **extra)
    opt = cls(params, **extra)  # set later, as a scheduler would: refused before anything moves
    params[0].grad = torch.randn(4, 5)
    opt.param_groups[0][key] = value
    with pytest.raises(ValueError, match=rf"param group 0 \(set after construction\): Invalid {key}: "):
        opt.step()


def test_adafactor_refuses_an_eps2_beyond_float32() -> None:
    """eps2 = 1e39 floors RMS(θ) at inf in float32: every weight NaN after one step."""
    with pytest.raises(ValueError, match=r"Invalid eps\[1\]: 1e\+39 \(must be in"):
        optarena.Adafactor([torch.nn.Parameter(torch.randn(4, 5))], eps=(None, 1e39))


@pytest.mark.parametrize("cls", [optarena.Adan, optarena.AdaX, optarena.AdEMAMix])
def test_the_float32_range_edges_still_step_finitely(cls: type) -> None:
    """The largest lr and decay and the smallest eps accepted: a zero gradient entry stays finite (eps is a normal
    float32, not 0), and so does every weight after a step with a tiny lr·wd (AdaX: decoupled; its L2 form adds
    wd·θ to the gradient, whose square then overflows like any gradient beyond ~1.8e19)."""
    param = torch.nn.Parameter(torch.randn(4, 5))
    extra = dict(decoupled_weight_decay=True) if cls is optarena.AdaX else {}
    opt = cls([param], eps=torch.finfo(torch.float32).tiny, weight_decay=3e38, lr=1e-39, **extra)
    param.grad = torch.randn(4, 5)
    param.grad[0] = 0.0
    opt.step()
    assert finite(opt, [param])


@pytest.mark.parametrize(("cls", "key", "value"), [
    (optarena.Lion, "state_dtype", torch.float16), (optarena.Lion, "state_dtype", "INT8"),
    (optarena.Adafactor, "state_dtype", "int8"), (optarena.Adan, "foreach", "yes")])
def test_machinery_set_after_construction_is_checked_before_a_step(cls: type, key: str, value: object) -> None:
    """state_dtype and the path keys set in a group mid-run are checked like the constructor's (Adafactor kept its
    variance as int8 codes, Lion fp16 state; 'INT8' failed deep inside); a valid change still steps."""
    params = [torch.nn.Parameter(torch.randn(300, 256))]
    opt = cls(params)
    params[0].grad = torch.randn(300, 256)
    opt.step()
    before = params[0].detach().clone()
    opt.param_groups[0][key] = value
    with pytest.raises(ValueError, match=rf"param group 0 \(set after construction\): Invalid {key}: "):
        opt.step()
    assert torch.equal(params[0], before)
    opt.param_groups[0][key] = cls([torch.nn.Parameter(torch.zeros(1))]).param_groups[0][key]  # back as it was
    opt.step()
    opt.param_groups[0]["maximize"] = 0  # equal to False, which was checked, but refused by type as at construction
    with pytest.raises(ValueError, match="Invalid maximize: 0"):
        opt.step()
    opt.param_groups[0]["maximize"] = False
    if cls is optarena.Lion:  # a valid change steps: new state in 8 bits
        opt.param_groups[0]["state_dtype"] = "int8"
        opt.state.clear()
        opt.step()
        assert opt.state[params[0]]["exp_avg"].dtype == torch.int8
