"""Lookahead: the rule against a hand-written reference, pullback modes, slow_weights(), checkpoints, schedulers."""

from __future__ import annotations

import copy
import re
import warnings
from pathlib import Path

import pytest
import torch
from fresh_process import continue_in_fresh_process
from lookahead_worker import build

import optarena
from optarena.wrappers.accumulation import GradientAccumulation
from optarena.wrappers.lookahead import Lookahead

SHAPES = [(), (7,), (5, 6), (2, 3, 4)]
TOL = 1e-12  # float64; the wrapper interpolates with lerp, the reference with φ + α(θ − φ)


def make_params(dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() for s in SHAPES]


def make_grads(params, steps, seed=1):
    """Gradients per step; param 1 misses every third step, param 3 gets gradients in the first two steps only."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for t in range(steps):
        grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) for p in params]
        grads[1] = None if t % 3 == 1 else grads[1]
        grads[3] = grads[3] if t < 2 else None
        out.append(grads)
    return out


def feed(optimizer, params, grads_per_step):
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.clone()
        optimizer.step()
        optimizer.zero_grad()


def clone(params):
    return [p.detach().clone() for p in params]


def reference(params, grads_per_step, *, k, alpha, pullback="none", lr=0.01):
    """Plain Lion steps by a second optimizer instance; slow weights and momentum pull-back by hand."""
    lion = optarena.Lion(params, lr=lr, weight_decay=0.1)
    slow = clone(params)
    slow_m = [None] * len(params)
    for t, grads in enumerate(grads_per_step, start=1):
        feed(lion, params, [grads])
        if t % k:
            continue
        with torch.no_grad():
            for i, p in enumerate(params):
                slow[i] = slow[i] + alpha * (p - slow[i])
                p.copy_(slow[i])
                m = lion.state[p].get("exp_avg") if p in lion.state else None
                if m is None or pullback == "none":
                    continue
                if pullback == "reset":
                    m.copy_(torch.zeros_like(m))
                else:
                    before = torch.zeros_like(m) if slow_m[i] is None else slow_m[i]
                    m.copy_(alpha * m + (1 - alpha) * before)
                    slow_m[i] = m.clone()
    return lion, slow


def assert_close(got, want, tol=TOL):
    for a, b in zip(got, want):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= tol, (a - b).abs().max().item()


@pytest.mark.parametrize("pullback", ["none", "reset", "pullback"])
@pytest.mark.parametrize(("k", "alpha"), [(5, 0.5), (3, 0.8), (1, 0.3), (4, 1.0)])
def test_matches_hand_written_reference(k: int, alpha: float, pullback: str) -> None:
    steps = 3 * k + 2
    params, ref_params = make_params(), make_params()
    grads = make_grads(params, steps)
    opt = Lookahead(optarena.Lion(params, lr=0.01, weight_decay=0.1), k=k, alpha=alpha, pullback=pullback)
    feed(opt, params, grads)
    lion, slow = reference(ref_params, grads, k=k, alpha=alpha, pullback=pullback)
    assert_close(params, ref_params)
    assert_close([opt.state[p]["slow"] for p in params], slow)
    assert_close([opt.base.state[p]["exp_avg"] for p in params], [lion.state[p]["exp_avg"] for p in ref_params])
    assert opt.inner_steps == steps % k


def test_first_cycle_already_pulls_back() -> None:
    """φ is θ₀ from construction, so after k steps θ = θ₀ + α(θ_k − θ₀), not θ_k (the anchors' bug)."""
    params, plain = make_params(), make_params()
    theta0 = clone(params)
    grads = [[torch.randn(p.shape, dtype=torch.float64) for p in params] for _ in range(5)]
    feed(Lookahead(optarena.Lion(params, lr=0.01), k=5, alpha=0.5), params, grads)
    feed(optarena.Lion(plain, lr=0.01), plain, grads)
    assert_close(params, [t0 + 0.5 * (tk - t0) for t0, tk in zip(theta0, plain)])
    assert not any(torch.allclose(a, b) for a, b in zip(params, plain) if a.numel() > 1)


def test_param_without_grad_still_syncs() -> None:
    """A parameter the base moved once and then never again is still pulled towards φ at every sync."""
    p = torch.ones(3, dtype=torch.float64, requires_grad=True)
    q = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = Lookahead(optarena.Lion([p, q], lr=0.1), k=2, alpha=0.5)
    p.grad = torch.ones(3, dtype=torch.float64)
    q.grad = torch.ones(3, dtype=torch.float64)
    opt.step()  # p: 1 → 0.9
    p.grad = None
    q.grad = torch.ones(3, dtype=torch.float64)
    opt.step()  # sync: p → 1 + 0.5·(0.9 − 1) = 0.95
    assert torch.allclose(p, torch.full((3,), 0.95, dtype=torch.float64), rtol=0, atol=TOL)
    assert torch.equal(opt.state[p]["slow"], p.detach())


def test_added_param_group_gets_slow_weights_when_added() -> None:
    params = make_params()
    opt = Lookahead(optarena.Lion(params, lr=0.01), k=4, alpha=0.5)
    feed(opt, params, make_grads(params, 3))
    late = torch.randn(6, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        late.mul_(3.0)
    at_add = late.detach().clone()
    opt.add_param_group({"params": [late], "lr": 0.05})
    assert opt.base.param_groups[-1]["params"] == [late]
    assert torch.equal(opt.state[late]["slow"], at_add)
    late.grad = torch.ones(6, dtype=torch.float64)
    opt.step()  # 4th inner step: sync
    moved = at_add - 0.05  # Lion: sign step of lr
    assert torch.allclose(late, at_add + 0.5 * (moved - at_add), rtol=0, atol=TOL)


def test_reset_zeroes_sgd_momentum_buffer_in_place_and_nested() -> None:
    """'reset' finds `momentum_buffer` (torch SGD) and walks through a wrapper to the innermost optimizer."""
    params = make_params()
    sgd = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    opt = Lookahead(GradientAccumulation(sgd, 2), k=2, alpha=0.5, pullback="reset")
    grads = [[torch.randn(p.shape, dtype=torch.float64) for p in params] for _ in range(4)]
    feed(opt, params, grads[:2])  # one update, no sync yet
    buffers = [sgd.state[p]["momentum_buffer"] for p in params]
    assert all(b.abs().sum() > 0 for b in buffers)
    feed(opt, params, grads[2:])  # second update → sync
    assert all(sgd.state[p]["momentum_buffer"] is b and not b.any() for p, b in zip(params, buffers))


def test_pullback_interpolates_momentum_with_torch_sgd() -> None:
    """m ← α·m + (1 − α)·m_slow, m_slow ← m, with m_slow = 0 before the first sync; weights as usual."""
    alpha, k = 0.3, 2
    params = make_params()
    ref_params = make_params()
    grads = [[torch.randn(p.shape, dtype=torch.float64) for p in params] for _ in range(6)]
    opt = Lookahead(torch.optim.SGD(params, lr=0.05, momentum=0.9), k=k, alpha=alpha, pullback="pullback")
    ref = torch.optim.SGD(ref_params, lr=0.05, momentum=0.9)
    slow, slow_m = clone(ref_params), [torch.zeros_like(p) for p in ref_params]
    for t, g in enumerate(grads, start=1):
        feed(opt, params, [g])
        feed(ref, ref_params, [g])
        if t % k == 0:
            with torch.no_grad():
                for i, p in enumerate(ref_params):
                    slow[i] = slow[i] + alpha * (p - slow[i])
                    p.copy_(slow[i])
                    m = ref.state[p]["momentum_buffer"]
                    m.copy_(alpha * m + (1 - alpha) * slow_m[i])
                    slow_m[i] = m.clone()
            assert_close([opt.state[p]["slow_momentum"] for p in params], slow_m)
    assert_close(params, ref_params)
    assert_close([opt.base.state[p]["momentum_buffer"] for p in params],
                 [ref.state[p]["momentum_buffer"] for p in ref_params])


def test_pullback_anchor_is_the_momentum_at_construction_when_the_base_has_one() -> None:
    params = make_params()
    lion = optarena.Lion(params, lr=0.01)
    feed(lion, params, make_grads(params, 1))  # params 0-3 get exp_avg
    opt = Lookahead(lion, k=3, pullback="pullback")
    for p in params:
        assert torch.equal(opt.state[p]["slow_momentum"], lion.state[p]["exp_avg"])
        assert opt.state[p]["slow_momentum"] is not lion.state[p]["exp_avg"]
    assert "slow_momentum" not in Lookahead(lion, k=3).state[params[0]]  # only kept for pullback="pullback"


def test_slow_weights_context_swaps_and_restores_also_on_exception() -> None:
    params = make_params()
    opt = Lookahead(optarena.Lion(params, lr=0.01), k=5, alpha=0.5)
    feed(opt, params, make_grads(params, 3))
    fast, slow = clone(params), [opt.state[p]["slow"].clone() for p in params]
    assert not all(torch.equal(a, b) for a, b in zip(fast, slow))
    with opt.slow_weights():
        assert all(torch.equal(p, s) for p, s in zip(params, slow))
    assert all(torch.equal(p, f) for p, f in zip(params, fast))
    with pytest.raises(RuntimeError, match="boom"), opt.slow_weights():
        with torch.no_grad():
            params[0].add_(1.0)  # even a change made inside is undone
        raise RuntimeError("boom")
    assert all(torch.equal(p, f) for p, f in zip(params, fast))
    assert all(torch.equal(opt.state[p]["slow"], s) for p, s in zip(params, slow))


def test_bf16_params_keep_fp32_slow_weights() -> None:
    params = make_params(torch.bfloat16)
    opt = Lookahead(optarena.Lion(params, lr=0.01), k=2, alpha=0.5)
    feed(opt, params, make_grads(params, 4))
    for p in params:
        assert p.dtype == torch.bfloat16
        assert opt.state[p]["slow"].dtype == torch.float32
        assert torch.equal(p, opt.state[p]["slow"].to(torch.bfloat16))  # θ is φ rounded once


def test_grads_are_never_modified_and_closure_loss_returned() -> None:
    params = make_params()
    opt = Lookahead(optarena.Lion(params, lr=0.01), k=2, alpha=0.5)
    for grads in make_grads(params, 5):
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.clone()
        before = [None if p.grad is None else (p.grad, p.grad.clone()) for p in params]

        def closure():
            return torch.tensor(7.0)

        assert opt.step(closure).item() == 7.0
        for p, b in zip(params, before):
            assert (p.grad is None) if b is None else (p.grad is b[0] and torch.equal(p.grad, b[1]))
        opt.zero_grad()


def test_lr_scheduler_on_the_wrapper_drives_the_base() -> None:
    results = []
    for mode in ("scheduler", "manual"):
        params = make_params()
        lion = optarena.Lion(params, lr=0.01)
        opt = Lookahead(lion, k=3, alpha=0.5)
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.5**epoch)
        for i, grads in enumerate(make_grads(params, 7)):
            if mode == "manual":
                lion.param_groups[0]["lr"] = 0.01 * 0.5**i
            feed(opt, params, [grads])
            if mode == "scheduler":
                scheduler.step()
                assert lion.param_groups[0]["lr"] == 0.01 * 0.5 ** (i + 1)
        results.append(clone(params))
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_accumulation_inside_counts_only_real_updates() -> None:
    """Lookahead(GradientAccumulation(Lion, 2), k=3) is Lookahead(Lion, k=3) fed the mean gradients."""
    params, ref_params = make_params(), make_params()
    micro = [[torch.randn(p.shape, dtype=torch.float64) for p in params] for _ in range(12)]
    opt = Lookahead(GradientAccumulation(optarena.Lion(params, lr=0.01, weight_decay=0.1), 2), k=3)
    feed(opt, params, micro)
    means = [[(a + b) / 2 for a, b in zip(micro[i], micro[i + 1])] for i in range(0, 12, 2)]
    feed(Lookahead(optarena.Lion(ref_params, lr=0.01, weight_decay=0.1), k=3), ref_params, means)
    assert all(torch.equal(a, b) for a, b in zip(params, ref_params))
    assert {"lookahead", "gradient_accumulation"} <= set(opt.state_dict())


CHECKPOINT_CASES = {
    "none": dict(k=3, alpha=0.5, pullback="none", accumulate=0, lr=0.01),
    "pullback": dict(k=3, alpha=0.7, pullback="pullback", accumulate=0, lr=0.01),
    "reset-accumulated": dict(k=3, alpha=0.5, pullback="reset", accumulate=2, lr=0.01),
    # constructed with other settings in the new process: loading restores the saved ones, as torch.optim's groups
    "pullback-built-otherwise": dict(k=3, alpha=0.7, pullback="pullback", accumulate=0, lr=0.01,
                                     built_as=dict(k=5, alpha=0.5, pullback="none", accumulate=0, lr=0.01)),
}


def test_state_dict_resumes_in_a_fresh_process(tmp_path: Path) -> None:
    """Save after a number of inner steps that is not a multiple of k, load in a new process (weights_only=True),
    continue: identical to the uninterrupted run, bit for bit."""
    saved_after, total = 11, 19
    payload, expected = {}, {}
    for case, config in CHECKPOINT_CASES.items():
        params = make_params()
        grads = make_grads(params, total)
        opt = build(params, config)
        feed(opt, params, grads[:saved_after])
        assert opt.inner_steps != 0 and getattr(opt.base, "micro_step", 1) != 0
        payload[case] = {"config": config, "params": clone(params), "grads": grads[saved_after:],
                         "state_dict": copy.deepcopy(opt.state_dict())}  # state_dict() holds live tensors
        if "built_as" in config:
            payload[case]["built_as"] = config["built_as"]
        feed(opt, params, grads[saved_after:])
        expected[case] = (clone(params), [opt.state[p]["slow"].clone() for p in params])
    continued = continue_in_fresh_process("lookahead_worker.py", payload, tmp_path)
    for case, (want_params, want_slow) in expected.items():
        assert all(torch.equal(a, b) for a, b in zip(want_params, continued[case]["params"])), case
        assert all(torch.equal(a, b) for a, b in zip(want_slow, continued[case]["slow"])), case
        config = CHECKPOINT_CASES[case]
        assert tuple(continued[case]["settings_at_load"]) == (config["k"], config["alpha"], config["pullback"]), case


def test_load_state_dict_restores_counter_and_slow_weights_by_position() -> None:
    params = make_params()
    opt = Lookahead(optarena.Lion(params, lr=0.01), k=4, pullback="pullback")
    feed(opt, params, make_grads(params, 6))
    saved = copy.deepcopy(opt.state_dict())
    assert saved["lookahead"]["inner_steps"] == 2
    others = [p.detach().clone().requires_grad_() for p in params]
    fresh = Lookahead(optarena.Lion(others, lr=0.01), k=4, pullback="pullback")
    fresh.load_state_dict(saved)
    assert fresh.inner_steps == 2
    for p, q in zip(params, others):
        assert set(fresh.state[q]) == set(opt.state[p])
        assert all(torch.equal(fresh.state[q][key], opt.state[p][key]) for key in opt.state[p])


def test_loading_restores_the_saved_settings_and_an_older_checkpoint_keeps_the_constructors() -> None:
    params = make_params()
    opt = Lookahead(optarena.Lion(params, lr=0.01), k=4, alpha=0.7, pullback="pullback")
    feed(opt, params, make_grads(params, 6))
    saved = copy.deepcopy(opt.state_dict())
    assert {k: saved["lookahead"][k] for k in ("k", "alpha", "pullback")} == dict(k=4, alpha=0.7, pullback="pullback")
    fresh = Lookahead(optarena.Lion(clone(params), lr=0.01), k=2, alpha=0.3)
    with pytest.warns(UserWarning, match=r"k=4 \(constructed with 2\), alpha=0.7 \(constructed with 0.3\), "
                                         r"pullback='pullback' \(constructed with 'none'\) replace the constructor's"):
        fresh.load_state_dict(saved)
    assert (fresh.k, fresh.alpha, fresh.pullback, fresh.inner_steps) == (4, 0.7, "pullback", 2)
    for key in ("k", "alpha", "pullback"):  # as the checkpoints saved before the settings were stored
        del saved["lookahead"][key]
    older = Lookahead(optarena.Lion(clone(params), lr=0.01), k=3, alpha=0.3, pullback="reset")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing replaced: nothing said
        older.load_state_dict(saved)
    assert (older.k, older.alpha, older.pullback, older.inner_steps) == (3, 0.3, "reset", 2)


@pytest.mark.parametrize(("key", "value"), [("k", 0), ("k", 2.5), ("alpha", 1.5), ("pullback", "slow"),
                                            ("inner_steps", -1), ("inner_steps", None)])
def test_a_bad_value_in_the_checkpoint_is_named_and_nothing_loads(key: str, value: object) -> None:
    params = make_params()
    opt = Lookahead(optarena.Lion(params, lr=0.01), k=4)
    feed(opt, params, make_grads(params, 6))
    saved = copy.deepcopy(opt.state_dict())
    saved["lookahead"][key] = value
    fresh = Lookahead(optarena.Lion(make_params(seed=5), lr=0.01), k=4)
    before = [s["slow"].clone() for s in fresh.state.values()]
    with pytest.raises(ValueError, match=f"Lookahead.load_state_dict: .*{key}:? {re.escape(repr(value))}"):
        fresh.load_state_dict(saved)
    assert not fresh.base.state and fresh.inner_steps == 0
    assert all(torch.equal(a, s["slow"]) for a, s in zip(before, fresh.state.values()))


def test_assigning_a_setting_later_is_checked_as_the_constructors_argument() -> None:
    opt = Lookahead(optarena.Lion(make_params()))
    for name, bad in (("k", 0), ("alpha", 2.0), ("pullback", "slow")):
        with pytest.raises(ValueError, match=f"Invalid {name}: {re.escape(repr(bad))}"):
            setattr(opt, name, bad)
    opt.k, opt.alpha, opt.pullback = 7, 1, "reset"
    assert (opt.k, opt.alpha, opt.pullback) == (7, 1.0, "reset")


def test_a_group_added_to_the_base_directly_gets_slow_weights_before_its_first_step() -> None:
    """lookahead.base.add_param_group (not the wrapper's): its sync failed with a bare KeyError: 'slow'."""
    first, second = torch.ones(3, requires_grad=True), torch.ones(2, requires_grad=True)
    opt = Lookahead(torch.optim.SGD([first], lr=0.1), k=2, alpha=0.5)
    opt.base.add_param_group({"params": [second]})
    for _ in range(2):
        first.grad, second.grad = torch.ones(3), torch.ones(2)
        opt.step()
    assert torch.allclose(second, torch.full((2,), 0.9))  # φ = 1 captured before the steps: 1 + 0.5·(0.8 − 1)
    assert torch.equal(opt.state[second]["slow"], second.detach())


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"k": 0}, "k"), ({"k": 2.5}, "k"), ({"k": True}, "k"), ({"alpha": 0}, "alpha"), ({"alpha": 1.5}, "alpha"),
    ({"alpha": -0.1}, "alpha"), ({"alpha": float("nan")}, "alpha"), ({"pullback": "slow"}, "pullback"),
    ({"pullback": None}, "pullback"),
])
def test_bad_arguments_name_themselves(kwargs: dict, name: str) -> None:
    base = optarena.Lion([torch.zeros(3, requires_grad=True)])
    with pytest.raises(ValueError, match=f"Invalid {name}: {re.escape(repr(kwargs[name]))}"):
        Lookahead(base, **kwargs)


def test_base_must_be_an_optimizer() -> None:
    with pytest.raises(TypeError, match="base must be a torch.optim.Optimizer.*got str"):
        Lookahead("x")
