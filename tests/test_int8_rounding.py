"""How 8-bit state rounds its codes: to the nearest code by default, stochastically with ``stochastic_rounding=True``,
which keeps a slowly moving moment moving (benchmarks/NOTES.md, "Stuck 8-bit moments")."""

from __future__ import annotations

import pytest
import torch

import optarena
from optarena.optim import quant

NUMEL = 4096  # the fewest elements that get codes (quant.MIN_QUANTIZED): 16 blocks
OPTIMIZERS = [optarena.Lion, optarena.RLion, optarena.Adan, optarena.AdaX, optarena.AdEMAMix]


def reversal(cls: type, steps: int = 250, **kw) -> float:
    """How far weight 1 moves while its gradient, +0.1 for ``steps`` steps, is −0.1 for as many (each block's
    maximum held at 1 by another entry: its scale stays, as in a layer where one unit dominates)."""
    param = torch.nn.Parameter(torch.zeros(NUMEL))
    opt = cls([param], lr=1e-3, **kw)
    grad = torch.full((NUMEL,), 0.1)
    grad[::256] = 1.0
    for sign in (1, -1):
        start = param.detach().clone()
        for _ in range(steps):
            param.grad = grad * sign
            param.grad[::256] = 1.0
            opt.step()
    if kw.get("state_dtype") == "int8":
        assert any(v.dtype in (torch.int8, torch.uint8) for v in opt.state[param].values())
    return (param.detach() - start)[1].item()


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
def test_stochastic_codes_follow_a_reversed_gradient_like_fp32_state(cls: type) -> None:
    """Rounded to the nearest code, a moment that moves by less than half a code per step stays where it is: after
    the reversal 8-bit Lion's momentum kept its old sign and the weight kept moving against its gradient (-0.25
    where fp32 state moved +0.14), Adan's moved 39 % of fp32's way. Stochastic codes moved within 12 % of fp32."""
    torch.manual_seed(0)
    want = reversal(cls)
    got = reversal(cls, state_dtype="int8", stochastic_rounding=True)
    assert want > 0 and abs(got - want) <= 0.25 * want, (got, want)


def test_stochastic_codes_on_the_fused_path() -> None:
    """The fused kernel draws its rounding in the compiled code (inductor's generator, not the loop's numbers)."""
    torch.manual_seed(0)
    want = reversal(optarena.Lion)
    got = reversal(optarena.Lion, state_dtype="int8", stochastic_rounding=True, fused=True)
    assert abs(got - want) <= 0.25 * want, (got, want)


@pytest.mark.parametrize("cls", [optarena.Lion, optarena.Adan], ids=lambda c: c.__name__)
def test_loop_and_foreach_draw_the_same_stochastic_codes(cls: type) -> None:
    """Both paths encode tensor by tensor in the same order, so under one seed they draw the same numbers: still
    bit for bit the same step."""
    gen = torch.Generator().manual_seed(1)
    start = [torch.randn(s, generator=gen) for s in [(64, 80), (300,), (4096,)]]
    grads = [[torch.randn(p.shape, generator=gen) for p in start] for _ in range(5)]
    finals = []
    for foreach in (False, True):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        opt = cls(params, lr=1e-3, state_dtype="int8", stochastic_rounding=True, foreach=foreach)
        torch.manual_seed(0)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            opt.step()
        finals.append([p.detach() for p in params])
    assert all(torch.equal(a, b) for a, b in zip(*finals))


@pytest.mark.parametrize(("dtype", "top"), [(torch.int8, 127), (torch.uint8, 255)])
def test_a_stochastic_code_never_passes_the_top_code(dtype: torch.dtype, top: int) -> None:
    """Every element at its block's maximum encodes as the top code: in float32, 127 plus a draw just below 1 rounded
    to 128, which wrapped to -128 (a block's largest momentum flipped sign; for uint8, 256 became 0), ~4 and ~8 times
    per million elements."""
    torch.manual_seed(0)
    x = torch.ones(1 << 20)
    codes = torch.zeros(x.shape, dtype=dtype)
    for _ in range(4):
        quant.encode_blocks_(codes, x, x.numel() // quant.BLOCK, stochastic=True)
        assert (codes == top).all()


def test_lazy_rounds_its_codes_stochastically_too() -> None:
    """Lazy decodes the whole 8-bit buffer, steps the present rows and encodes it again: with nearest codes there, the
    moments stayed stuck under stochastic_rounding=True (-0.25 against fp32 state's +0.14)."""
    def moved(**kw) -> float:
        param = torch.nn.Parameter(torch.zeros(17, 256))  # 4352 elements: codes; row 16 never has a gradient
        opt = optarena.Lazy(optarena.Lion([param], lr=1e-3, **kw))
        for sign in (1, -1):
            start = param.detach().clone()
            for _ in range(250):
                grad = torch.full((17, 256), 0.1 * sign)
                grad[:, 0], grad[16] = 1.0, 0.0
                param.grad = grad
                opt.step()
        return (param.detach() - start)[0, 1].item()

    torch.manual_seed(0)
    want = moved()
    got = moved(state_dtype="int8", stochastic_rounding=True)
    assert want > 0 and abs(got - want) <= 0.25 * want, (got, want)
