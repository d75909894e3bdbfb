"""GradientAccumulation: N micro-steps are one base step on the mean gradient, exactly; the base is untouched in
between; p.grad is never modified; checkpoints resume mid-accumulation; schedulers, closures, non-finite skips."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from accumulation_worker import BASES, build
from fresh_process import continue_in_fresh_process

import optarena
from optarena.wrappers.accumulation import GradientAccumulation

SHAPES = [(), (7,), (5, 6), (2, 3, 4)]


def make_params(dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() for s in SHAPES]


def make_grads(params, micro_steps, n, seed=1):
    """Per micro-step gradients: param 1 misses every third micro-step, param 2 misses the whole second cycle
    (so it has no gradient for that update), param 3 only gets one in the last micro-step of each cycle."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for t in range(micro_steps):
        grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) for p in params]
        grads[1] = None if t % 3 == 1 else grads[1]
        grads[2] = None if t // n == 1 else grads[2]
        grads[3] = grads[3] if t % n == n - 1 else None
        out.append(grads)
    return out


def set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.clone()


def feed(optimizer, params, grads_per_step):
    for grads in grads_per_step:
        set_grads(params, grads)
        optimizer.step()
        optimizer.zero_grad()


def clone(params):
    return [p.detach().clone() for p in params]


def reference(base, params, grads_per_step, n):
    """The base stepped once per cycle on (g₁ + … + g_N)/N, None for a param with no gradient in the cycle."""
    for start in range(0, len(grads_per_step) - n + 1, n):
        cycle = grads_per_step[start:start + n]
        for i, p in enumerate(params):
            present = [g[i] for g in cycle if g[i] is not None]
            if not present:
                p.grad = None
                continue
            total = present[0].clone()
            for g in present[1:]:
                total = total + g
            p.grad = total / n
        base.step()
        base.zero_grad()


ALL_BASES = [*BASES, "adamw-foreach"]


def make_base(name, params):
    if name == "adamw-foreach":
        return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1, foreach=True)
    return BASES[name](params)


@pytest.mark.parametrize("n", [1, 3, 4])
@pytest.mark.parametrize("base", ALL_BASES)
def test_n_micro_steps_equal_one_base_step_on_the_mean(base: str, n: int) -> None:
    """Bit for bit in float64, over four updates, with parameters missing gradients in some micro-steps."""
    params, ref_params = make_params(), make_params()
    grads = make_grads(params, 4 * n + n - 1, n)  # four updates, then a cycle one micro-step short
    opt = GradientAccumulation(make_base(base, params), n)
    feed(opt, params, grads)
    reference(make_base(base, ref_params), ref_params, grads, n)
    for a, b in zip(params, ref_params):
        assert torch.equal(a, b)
    assert opt.micro_step == n - 1 if n > 1 else opt.micro_step == 0


def test_base_and_params_untouched_between_updates() -> None:
    params = make_params()
    adan = optarena.Adan(params, lr=1e-2)
    opt = GradientAccumulation(adan, 3)
    updates = 0
    for t, grads in enumerate(make_grads(params, 10, 3)):
        before_state, before_params = copy.deepcopy(adan.state_dict()), clone(params)
        set_grads(params, grads)
        opt.step()
        opt.zero_grad()
        assert opt.did_update == (t % 3 == 2)
        assert opt.micro_step == (t + 1) % 3
        updates += opt.did_update
        if opt.did_update:
            assert all(p not in opt.state or "grad_sum" not in opt.state[p] for p in params)
            continue
        after = adan.state_dict()
        assert after["param_groups"] == before_state["param_groups"]
        assert after["state"].keys() == before_state["state"].keys()
        for i, saved in before_state["state"].items():
            assert saved.keys() == after["state"][i].keys()
            assert all(torch.equal(v, after["state"][i][k]) for k, v in saved.items())
        assert all(torch.equal(a, b) for a, b in zip(params, before_params))
    assert updates == 3
    assert all(s["step"].item() == 3 for i, s in adan.state_dict()["state"].items() if i != 2)


def test_user_grads_are_never_modified() -> None:
    """Same objects, same values, on accumulating and on updating calls (even with maximize and clipping)."""
    params = make_params()
    opt = GradientAccumulation(optarena.Adan(params, lr=1e-2, max_grad_norm=0.1, maximize=True), 2)
    for grads in make_grads(params, 6, 2):
        set_grads(params, grads)
        before = [None if p.grad is None else (p.grad, p.grad.clone()) for p in params]
        opt.step()
        for p, b in zip(params, before):
            assert (p.grad is None) if b is None else (p.grad is b[0] and torch.equal(p.grad, b[1]))
        opt.zero_grad()


def test_grads_restored_when_the_base_raises() -> None:
    class Failing(torch.optim.SGD):
        def step(self, closure=None):
            assert all(p.grad is not None for p in self.param_groups[0]["params"][:1])
            raise RuntimeError("base failed")

    params = make_params()
    opt = GradientAccumulation(Failing(params, lr=0.1), 2)
    set_grads(params, make_grads(params, 1, 2)[0])
    opt.step()
    originals = [p.grad for p in params]
    with pytest.raises(RuntimeError, match="base failed"):
        opt.step()
    assert all(p.grad is g for p, g in zip(params, originals))
    assert not opt.did_update and opt.micro_step == 0  # the cycle ended; its sums are gone
    assert all("grad_sum" not in opt.state[p] for p in params)


def test_accumulation_dtypes_and_base_grad_dtype() -> None:
    """fp32 sums for bf16/fp16 and fp32 params, fp64 for fp64; the base sees a mean of the param's dtype."""
    seen = {}

    class Recording(torch.optim.SGD):
        def step(self, closure=None):
            seen.update({p.dtype: p.grad.dtype for p in self.param_groups[0]["params"]})
            return super().step(closure)

    params = [torch.zeros(3, dtype=d, requires_grad=True) for d in (torch.bfloat16, torch.float16, torch.float32,
                                                                   torch.float64)]
    opt = GradientAccumulation(Recording(params, lr=0.1), 2)
    set_grads(params, [torch.ones(3, dtype=p.dtype) for p in params])
    opt.step()
    assert [opt.state[p]["grad_sum"].dtype for p in params] == [torch.float32] * 3 + [torch.float64]
    set_grads(params, [torch.full((3,), 3.0, dtype=p.dtype) for p in params])
    opt.step()
    assert all(seen[p.dtype] == p.dtype for p in params)
    assert all(torch.equal(p, torch.full((3,), -0.2, dtype=p.dtype)) for p in params)  # mean 2, lr 0.1


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_skip_nonfinite_skips_the_update_and_keeps_going(bad: float) -> None:
    params, ref_params = make_params(), make_params()
    grads = [[torch.randn(p.shape, dtype=torch.float64) for p in params] for _ in range(6)]
    grads[1][2] = grads[1][2].clone().reshape(-1).index_fill(0, torch.tensor([3]), bad).reshape(grads[1][2].shape)
    lion = optarena.Lion(params, lr=0.01)
    opt = GradientAccumulation(lion, 2, skip_nonfinite=True)
    feed(opt, params, grads[:1])
    before_state, before_params = copy.deepcopy(lion.state_dict()), clone(params)
    feed(opt, params, grads[1:2])  # the update with an inf/NaN: skipped
    assert not opt.did_update and opt.skipped_updates == 1 and opt.micro_step == 0
    assert all("grad_sum" not in opt.state[p] for p in params)
    assert lion.state_dict()["state"] == before_state["state"] == {}
    assert all(torch.equal(a, b) for a, b in zip(params, before_params))
    feed(opt, params, grads[2:])  # then it goes on as if the bad cycle had not been
    assert opt.did_update and opt.skipped_updates == 1
    reference(optarena.Lion(ref_params, lr=0.01), ref_params, grads[2:], 2)
    assert all(torch.equal(a, b) for a, b in zip(params, ref_params))


def test_nonfinite_passes_through_without_skip() -> None:
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = GradientAccumulation(torch.optim.SGD([p], lr=0.1), 2)
    feed(opt, [p], [[torch.tensor([1.0, float("inf"), 0.0], dtype=torch.float64)],
                    [torch.ones(3, dtype=torch.float64)]])
    assert opt.did_update and opt.skipped_updates == 0
    assert torch.isinf(p[1]) and torch.isfinite(p[0])


def test_closure_evaluated_every_call_with_grad_and_not_given_to_the_base() -> None:
    x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    w = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        loss = ((w * x).sum() - 1.0) ** 2
        loss.backward()
        return loss

    sgd = torch.optim.SGD([w], lr=0.1)
    opt = GradientAccumulation(sgd, 2)
    with torch.no_grad():
        losses = [opt.step(closure).item() for _ in range(2)]
    assert calls == [True, True]  # once per call: the base did not re-evaluate it
    assert losses == [1.0, 1.0]
    # w.grad accumulated by the closure's backward calls (the user did not zero it): 2·(−1)·x, then twice that
    assert torch.equal(w, -0.1 * (-2 * x + -4 * x) / 2)


def test_lr_scheduler_on_the_wrapper_counts_updates() -> None:
    """Stepping the scheduler only when did_update reproduces the base with its lr set by hand per update."""
    results = []
    for mode in ("scheduler", "manual"):
        params = make_params()
        lion = optarena.Lion(params, lr=0.01)
        opt = GradientAccumulation(lion, 3)
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.5**epoch)
        updates = 0
        for grads in make_grads(params, 12, 3):
            if mode == "manual":
                lion.param_groups[0]["lr"] = 0.01 * 0.5**updates
            feed(opt, params, [grads])
            updates += opt.did_update
            if mode == "scheduler" and opt.did_update:
                scheduler.step()
                assert lion.param_groups[0]["lr"] == 0.01 * 0.5**updates
        results.append(clone(params))
    assert all(torch.equal(a, b) for a, b in zip(*results))


CHECKPOINT_CASES = {
    "lion": dict(base="lion", steps=4, skip_nonfinite=False),
    "adan-skip": dict(base="adan", steps=4, skip_nonfinite=True),
    "adamw": dict(base="adamw", steps=3, skip_nonfinite=False),
    # constructed with other settings in the new process: loading restores the saved ones, as torch.optim's groups
    "adan-skip-built-otherwise": dict(base="adan", steps=4, skip_nonfinite=True,
                                      built_as=dict(steps=2, skip_nonfinite=False)),
}


def test_state_dict_resumes_mid_accumulation_in_a_fresh_process(tmp_path: Path) -> None:
    """Save mid-cycle, load in a new process (weights_only=True), continue: identical to the uninterrupted run."""
    saved_after, total = 10, 21
    payload, expected = {}, {}
    for case, config in CHECKPOINT_CASES.items():
        params = make_params()
        grads = make_grads(params, total, config["steps"])
        if config["skip_nonfinite"]:  # one skipped update before the checkpoint, to be carried over
            grads[2][0] = torch.tensor(float("nan"), dtype=torch.float64)
        opt = build(config["base"], params, config["steps"], config["skip_nonfinite"])
        feed(opt, params, grads[:saved_after])
        assert opt.micro_step != 0
        assert opt.micro_step >= config.get("built_as", {}).get("steps", 0)  # more than it could continue
        payload[case] = {**config, "params": clone(params), "grads": grads[saved_after:],
                         "state_dict": copy.deepcopy(opt.state_dict())}  # state_dict() holds live tensors
        counters = (opt.micro_step, opt.skipped_updates)
        feed(opt, params, grads[saved_after:])
        expected[case] = (clone(params), counters, opt.skipped_updates)
    assert expected["adan-skip"][1][1] == 1
    continued = continue_in_fresh_process("accumulation_worker.py", payload, tmp_path)
    for case, (want, counters, skipped) in expected.items():
        assert all(torch.equal(a, b) for a, b in zip(want, continued[case]["params"])), case
        assert tuple(continued[case]["counters_at_load"]) == counters, case
        assert tuple(continued[case]["settings_at_load"]) == (CHECKPOINT_CASES[case]["steps"],
                                                              CHECKPOINT_CASES[case]["skip_nonfinite"]), case
        assert continued[case]["skipped_updates"] == skipped, case


def test_loading_restores_the_saved_settings_over_the_constructors() -> None:
    """steps and skip_nonfinite travel in the checkpoint and loading restores them, as torch.optim's
    hyper-parameters in param_groups do: the resumed cycle ends where the saved one would have."""
    params, grads = make_params(), make_grads(make_params(), 8, 4)
    opt = GradientAccumulation(optarena.Lion(params, lr=1e-2), 4, skip_nonfinite=True)
    feed(opt, params, grads[:3])
    saved = copy.deepcopy(opt.state_dict())
    assert saved["gradient_accumulation"]["steps"] == 4 and saved["gradient_accumulation"]["skip_nonfinite"]
    resumed_params = clone(params)
    resumed = GradientAccumulation(optarena.Lion([p.requires_grad_() for p in resumed_params], lr=1e-2), 2)
    with pytest.warns(UserWarning, match=r"steps=4 \(constructed with 2\), skip_nonfinite=True \(constructed with "
                                         r"False\) replace the constructor's"):
        resumed.load_state_dict(saved)
    assert (resumed.steps, resumed.skip_nonfinite, resumed.micro_step) == (4, True, 3)
    feed(opt, params, grads[3:])
    feed(resumed, resumed_params, grads[3:])
    assert all(torch.equal(a, b) for a, b in zip(params, resumed_params))


def test_a_checkpoint_saved_without_settings_keeps_the_constructors_and_refuses_a_shorter_cycle() -> None:
    params = make_params()
    opt = GradientAccumulation(optarena.Lion(params), 4)
    feed(opt, params, make_grads(params, 3, 4))
    saved = copy.deepcopy(opt.state_dict())
    for key in ("steps", "skip_nonfinite"):  # as the checkpoints saved before the settings were stored
        del saved["gradient_accumulation"][key]
    assert saved["gradient_accumulation"]["micro_step"] == 3
    with pytest.raises(ValueError, match="steps=2"):
        GradientAccumulation(optarena.Lion(params), 2).load_state_dict(saved)
    longer = GradientAccumulation(optarena.Lion(params), 5, skip_nonfinite=True)
    longer.load_state_dict(saved)  # a longer cycle can continue
    assert (longer.steps, longer.skip_nonfinite, longer.micro_step) == (5, True, 3)


@pytest.mark.parametrize(("key", "value"), [("steps", 0), ("steps", 2), ("steps", 2.5), ("skip_nonfinite", "no"),
                                            ("micro_step", -1), ("skipped_updates", "1")])
def test_a_bad_value_in_the_checkpoint_is_named_and_nothing_loads(key: str, value: object) -> None:
    params = make_params()
    opt = GradientAccumulation(optarena.Lion(params), 4)
    feed(opt, params, make_grads(params, 3, 4))
    saved = copy.deepcopy(opt.state_dict())
    saved["gradient_accumulation"][key] = value
    fresh = GradientAccumulation(optarena.Lion(params), 4)
    with pytest.raises(ValueError, match=f"GradientAccumulation.load_state_dict: .*{key}"):
        fresh.load_state_dict(saved)
    assert not fresh.base.state and fresh.micro_step == 0 and not fresh.state


def test_assigning_steps_later_is_checked_against_the_cycle_so_far() -> None:
    """Setting steps at most micro_step mid-cycle divided more micro-batches' sum than N by N, silently."""
    params = make_params()
    opt = GradientAccumulation(optarena.Lion(params), 4)
    feed(opt, params, make_grads(params, 3, 4))
    for bad in (3, 2, 0, 1.5, True):
        with pytest.raises(ValueError, match=f"Invalid steps: {bad!r}"):
            opt.steps = bad
    with pytest.raises(ValueError, match="Invalid skip_nonfinite: 1"):
        opt.skip_nonfinite = 1
    opt.steps = 6
    feed(opt, params, make_grads(params, 3, 4))
    assert (opt.steps, opt.micro_step, opt.did_update) == (6, 0, True)


def test_a_base_that_needs_a_closure_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="LBFGS.step needs a closure"):
        GradientAccumulation(torch.optim.LBFGS(make_params()), 2)


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"steps": 0}, "steps"), ({"steps": -2}, "steps"), ({"steps": 2.5}, "steps"), ({"steps": True}, "steps"),
    ({"steps": "4"}, "steps"), ({"steps": 2, "skip_nonfinite": "yes"}, "skip_nonfinite"),
    ({"steps": 2, "skip_nonfinite": 1}, "skip_nonfinite"),
])
def test_bad_arguments_name_themselves(kwargs: dict, name: str) -> None:
    base = optarena.Lion([torch.zeros(3, requires_grad=True)])
    with pytest.raises(ValueError, match=f"Invalid {name}: {re.escape(repr(kwargs[name]))}"):
        GradientAccumulation(base, **kwargs)


def test_base_must_be_an_optimizer() -> None:
    with pytest.raises(TypeError, match="base must be a torch.optim.Optimizer.*got str"):
        GradientAccumulation("x", 2)


def test_cycle_without_any_gradient_steps_the_base_with_none_grads() -> None:
    p = torch.ones(2, requires_grad=True)
    opt = GradientAccumulation(torch.optim.SGD([p], lr=0.1), 2, skip_nonfinite=True)
    opt.step()
    opt.step()
    assert opt.did_update and p.grad is None and torch.equal(p, torch.ones(2))


def test_sparse_gradients_are_refused() -> None:
    emb = torch.nn.Embedding(5, 3, sparse=True)
    opt = GradientAccumulation(torch.optim.SGD(emb.parameters(), lr=0.1), 2)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
