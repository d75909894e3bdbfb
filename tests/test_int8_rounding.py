"""How 8-bit state rounds its codes: each value to one of its two neighbouring codes by a deterministic dither, unbiased
over steps, which keeps a slowly moving moment moving (benchmarks/NOTES.md, "Stuck 8-bit moments")."""

from __future__ import annotations

import pickle

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
def test_8bit_state_follows_a_reversed_gradient_like_fp32_state(cls: type) -> None:
    """Rounded to the nearest code, a moment that moves by less than half a code per step stays where it is: after
    the reversal 8-bit Lion's momentum kept its old sign and the weight kept moving against its gradient (-0.25
    where fp32 state moved +0.14), Adan's moved 39 % of fp32's way. Dithered codes move within 2.3 % of fp32."""
    want = reversal(cls)
    got = reversal(cls, state_dtype="int8")
    assert want > 0 and abs(got - want) <= 0.1 * want, (got, want)


@pytest.mark.parametrize("cls", [optarena.Lion, optarena.Adan], ids=lambda c: c.__name__)
def test_the_dither_draws_nothing_from_torchs_generator(cls: type) -> None:
    """The same gradients give the same step whatever torch's random state, on the loop and foreach paths alike, and
    the step leaves that state as it found it."""
    gen = torch.Generator().manual_seed(1)
    start = [torch.randn(s, generator=gen) for s in [(64, 80), (300,), (4096,)]]
    grads = [[torch.randn(p.shape, generator=gen) for p in start] for _ in range(5)]
    finals = []
    for seed, foreach in ((0, False), (1, True)):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        opt = cls(params, lr=1e-3, state_dtype="int8", foreach=foreach)
        torch.manual_seed(seed)
        before = torch.get_rng_state()
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            opt.step()
        assert torch.equal(torch.get_rng_state(), before)
        finals.append([p.detach() for p in params])
    assert all(torch.equal(a, b) for a, b in zip(*finals))


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8])
def test_a_constant_value_averages_to_itself_over_steps(dtype: torch.dtype) -> None:
    """A value between two codes encodes to the upper one in a share of the steps equal to its position between them:
    the mean of its codes over 64 steps is within 0.04 of a code of the value itself, for every element of a block
    (0.033 measured; independent random draws' mean would stray by 0.06 of a code at one standard deviation, nearest
    rounding by up to half a code, always the same way)."""
    top = 127 if dtype == torch.int8 else 255
    position = torch.linspace(0.02, 0.98, quant.BLOCK)  # where each element sits between its two codes
    x = torch.ones(4, quant.BLOCK)  # element 0 of each block at the block's maximum: the scale is 1
    code_units = torch.cat([torch.tensor([top]), 40 + position[1:]])  # in units of codes
    x[:, 1:] = (code_units[1:] / top) ** (quant.SIGNED_POWER if dtype == torch.int8 else quant.UNSIGNED_POWER)
    codes = torch.zeros(x.shape, dtype=dtype)
    total = torch.zeros(x.shape)
    for step in range(1, 65):
        quant.encode_blocks_(codes, x, 4, quant.dither_rows([torch.tensor(float(step))])[0])
        total += codes.float()
    mean = total[:, 1:] / 64
    assert (mean - code_units[1:]).abs().max() <= 0.04


@pytest.mark.parametrize(("dtype", "top"), [(torch.int8, 127), (torch.uint8, 255)])
def test_a_dithered_code_never_passes_the_top_code(dtype: torch.dtype, top: int) -> None:
    """Every element at its block's maximum encodes as the top code under the largest dither: in float32, 127 plus a
    dither just below 1 can round to 128, which wraps to -128 (a block's largest momentum flipped sign; for uint8,
    256 became 0)."""
    x = torch.ones(1 << 16)
    codes = torch.zeros(x.shape, dtype=dtype)
    largest = torch.full((quant.BLOCK,), 1 - 2.0**-14)
    rows = quant.dither_rows([torch.tensor(float(t)) for t in range(1 << 13)])
    assert rows.max().item() == largest[0].item() and rows.min().item() == 2.0**-14
    for dither in (largest, rows[0]):
        quant.encode_blocks_(codes, x, x.numel() // quant.BLOCK, dither)
        assert (codes == top).all()


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8])
def test_a_decoded_code_encodes_to_itself_under_any_dither(dtype: torch.dtype) -> None:
    """Decoding and encoding again changes nothing (as Lazy does for rows without a gradient, every step): the
    decoded value lands within float32's error of its code, and the dither keeps clear of 0 and 1. A dither of 0
    dropped such a value to the code below (12K of 1M codes changed over 2000 steps, always smaller)."""
    gen = torch.Generator().manual_seed(0)
    low = -127 if dtype == torch.int8 else 0
    codes = torch.randint(low, 128 if dtype == torch.int8 else 256, (64, quant.BLOCK), generator=gen).to(dtype)
    codes[:, 0] = 127 if dtype == torch.int8 else 255  # each block's maximum: the scale stays
    # 1e-20 to 1e20: a block maximum below ~5e-29 decodes as zeros where another test left subnormals flushed
    # (quant.dequantize; optarena.demo flushes them)
    scales = 10 ** (torch.rand(64, generator=gen) * 40 - 20)
    values = quant.dequantize(codes, scales)
    again, new_scales = torch.empty_like(codes), torch.empty_like(scales)
    for t in range(1 << 13):  # every dither of every element
        quant.quantize_(again, new_scales, values, quant.dither_rows([torch.tensor(float(t))])[0])
        assert torch.equal(again, codes), t
    torch.testing.assert_close(new_scales, scales, rtol=3e-7, atol=0)  # the top code decodes within 2 ulps


def test_lazy_dithers_its_codes_too() -> None:
    """Lazy decodes the whole 8-bit buffer, steps the present rows and encodes it again: with nearest codes there, the
    moments stayed stuck (-0.25 against fp32 state's +0.14)."""
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

    want = moved()
    got = moved(state_dtype="int8")
    assert want > 0 and abs(got - want) <= 0.2 * want, (got, want)


def test_a_checkpoint_saved_without_a_step_count_loads() -> None:
    """8-bit Lion and RLion state counts steps since the dither: a state dict saved before (codes, scales, no step)
    loads, gets a count and steps on."""
    param = torch.nn.Parameter(torch.randn(NUMEL))
    param.grad = torch.randn(NUMEL)
    opt = optarena.Lion([param], lr=1e-3, state_dtype="int8")
    opt.step()
    saved = opt.state_dict()
    assert saved["state"][0]["step"].item() == 1
    del saved["state"][0]["step"]
    fresh = optarena.Lion([param], lr=1e-3, state_dtype="int8")
    fresh.load_state_dict(saved)
    fresh.step()
    assert fresh.state[param]["step"].item() == 1 and torch.isfinite(param).all()
    fp32 = optarena.Lion([param], lr=1e-3)
    fp32.step()
    assert "step" not in fp32.state[param]  # fp32 state counts none: Lion's math needs no count


def test_an_optimizer_pickled_without_a_step_count_gets_one() -> None:
    """An optimizer pickled (or deep-copied) before 8-bit state counted steps: its state gets a count, so its dither
    changes from step to step (a count left missing kept one dither for good: the stuck moments again, weight 1 of
    the reversal case moved -0.25) and Lazy's re-encoding finds it (KeyError: 'step')."""
    param = torch.nn.Parameter(torch.zeros(NUMEL))
    param.grad = torch.randn(NUMEL)
    opt = optarena.Lion([param], lr=1e-3, state_dtype="int8")
    opt.step()
    del opt.state[param]["step"]
    restored = pickle.loads(pickle.dumps(opt))
    (state,) = restored.state.values()
    assert state["step"].dtype == torch.float64
    (restored_param,) = restored.param_groups[0]["params"]
    restored_param.grad = torch.randn(NUMEL)
    optarena.Lazy(restored).step()
    assert state["step"].item() == 1


def test_an_optimizer_with_a_hand_added_state_entry_still_copies() -> None:
    """Copying looks for 8-bit buffers without a step count in every state entry: a number a user added to a state
    (no tensor) made deepcopy and pickle raise AttributeError."""
    param = torch.nn.Parameter(torch.zeros(NUMEL))
    param.grad = torch.randn(NUMEL)
    opt = optarena.Lion([param], lr=1e-3)
    opt.step()
    opt.state[param]["note"] = 0.5
    (state,) = pickle.loads(pickle.dumps(opt)).state.values()
    assert state["note"] == 0.5
