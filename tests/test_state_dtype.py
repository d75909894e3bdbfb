"""``state_dtype=torch.bfloat16``: half the state memory, fp32 math; and stochastic rounding of bf16 params."""

from __future__ import annotations

import pytest
import torch

import optarena
from optarena.demo import train_digits
from optarena.optim.amos import SCALAR_STATE
from optarena.optim.step import stochastic_round_to_bf16

try:
    from cases import CASES, build
except ImportError:  # tests/ is a package
    from tests.cases import CASES, build


def params_and_grads(seed: int = 0) -> tuple[list[torch.nn.Parameter], list[list[torch.Tensor]]]:
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in [(), (7,), (5, 6), (2, 3, 4)]]
    grads = [[torch.randn(p.shape, generator=gen) for p in params] for _ in range(6)]
    return params, grads


def run(opt: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[list[torch.Tensor]]) -> None:
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g
        opt.step()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("foreach", [False, True])
def test_bf16_state_is_bf16_and_close_to_fp32_state(case: str, foreach: bool) -> None:
    ref_params, grads = params_and_grads()
    params, _ = params_and_grads()
    ref = build(case, ref_params, foreach=foreach)
    opt = build(case, params, foreach=foreach, state_dtype=torch.bfloat16)
    run(ref, ref_params, grads)
    run(opt, params, grads)
    for p in params:
        for key, value in opt.state[p].items():
            # Amos's numbers per tensor stay fp32: bf16 would round away its decay accumulator's increments
            kept = key in SCALAR_STATE and isinstance(opt, optarena.Amos)
            expected = torch.float64 if key == "step" else torch.float32 if kept else torch.bfloat16
            assert value.dtype == expected, key
    per_tensor = 8 + (4 * len(SCALAR_STATE) if isinstance(opt, optarena.Amos) else 0)  # the step, Amos's numbers
    assert optarena.state_bytes(opt) < 0.6 * optarena.state_bytes(ref) + per_tensor * len(params)
    for a, b in zip(ref_params, params):
        # 6 steps at lr ≤ 1e-2 with moments rounded to 8 bits: the parameters stay within a few lr·2⁻⁸
        torch.testing.assert_close(b, a, rtol=0, atol=0.05)


def test_bf16_state_survives_a_checkpoint() -> None:
    params, grads = params_and_grads()
    opt = optarena.Lion(params, lr=1e-3, state_dtype=torch.bfloat16)
    run(opt, params, grads[:2])
    fresh = optarena.Lion(params, lr=1e-3, state_dtype=torch.bfloat16)
    fresh.load_state_dict(opt.state_dict())
    for p in params:
        assert fresh.state[p]["exp_avg"].dtype == torch.bfloat16
        assert torch.equal(fresh.state[p]["exp_avg"], opt.state[p]["exp_avg"])


def test_state_dtype_validation() -> None:
    with pytest.raises(ValueError, match="Invalid state_dtype: torch.float16"):
        optarena.Lion([torch.nn.Parameter(torch.zeros(2))], state_dtype=torch.float16)
    with pytest.raises(ValueError, match="Invalid stochastic_rounding: 1"):
        optarena.Lion([torch.nn.Parameter(torch.zeros(2))], stochastic_rounding=1)


@pytest.mark.parametrize("name, lr", [("lion", 1e-3), ("adan", 1e-3)])
def test_bf16_state_accuracy_cost_on_digits(name: str, lr: float) -> None:
    """The real-task cost: digits MLP, 15 epochs; bf16 state loses at most 1.5 points of validation accuracy
    (observed: README, "Speed")."""
    fp32 = train_digits(name, lr=lr, epochs=15, seed=0)
    bf16 = train_digits(name, lr=lr, epochs=15, seed=0, state_dtype=torch.bfloat16)
    assert bf16.state_bytes * 2 <= fp32.state_bytes + 64
    assert bf16.val_accuracy >= fp32.val_accuracy - 0.015, (fp32.val_accuracy, bf16.val_accuracy)


def test_stochastic_rounding_is_unbiased_and_brackets_the_value() -> None:
    torch.manual_seed(0)
    x = torch.full((200_000,), 1.0 + 2**-10)  # a quarter of the way from 1 to the next bf16 (1 + 2⁻⁸)... times 1/4
    rounded = stochastic_round_to_bf16(x).float()
    assert set(rounded.unique().tolist()) == {1.0, 1.0 + 2**-7}
    assert abs(rounded.mean().item() - x[0].item()) < 2e-5
    neg = stochastic_round_to_bf16(-x).float()
    assert abs(neg.mean().item() + x[0].item()) < 2e-5


def test_stochastic_rounding_lets_tiny_updates_accumulate() -> None:
    """Steps far below a bf16 ulp vanish with round-to-nearest but move the parameter on average with SR."""
    torch.manual_seed(0)
    nearest = torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16))
    stochastic = torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16))
    opts = [optarena.Lion([nearest], lr=1e-4, foreach=False),
            optarena.Lion([stochastic], lr=1e-4, foreach=False, stochastic_rounding=True)]
    for _ in range(50):
        for p, o in zip((nearest, stochastic), opts):
            p.grad = torch.full_like(p, -1.0)  # every step: θ += lr
            o.step()
    assert torch.all(nearest == 1.0)
    assert abs(stochastic.float().mean().item() - (1 + 50e-4)) < 1e-3
