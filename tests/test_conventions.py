"""torch.optim conventions every optarena optimizer keeps: checkpoints, schedulers, closures, maximize, dtypes."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from cases import CASES, build
from fresh_process import checkpoint_midway, continue_in_fresh_process

import optarena
from optarena.info import info_for
from optarena.optim import quant

SHAPES = [(), (7,), (5, 6), (2, 3, 4, 5)]
#: With 8-bit state, also a tensor large enough to quantise (with a partial last block); the others keep fp32 state.
INT8_SHAPES = [*SHAPES, (65, 70)]
#: Each case with its default state, and each 8-bit-capable case again with state_dtype="int8".
WITH_INT8 = [pytest.param(case, None, id=case) for case in CASES] + [
    pytest.param(case, "int8", id=f"{case}-int8") for case in CASES if info_for(CASES[case][0]).int8_state]


def make_params(dtype=torch.float32, seed=0, state_dtype=None):
    gen = torch.Generator().manual_seed(seed)
    shapes = INT8_SHAPES if state_dtype == "int8" else SHAPES
    return [torch.randn(s, generator=gen, dtype=torch.float32).to(dtype).requires_grad_() for s in shapes]


def assert_quantized(optimizer, state_dtype) -> None:
    """With 8-bit state, the large tensor's state must really be codes (else the int8 case tests nothing new)."""
    if state_dtype == "int8":
        big = optimizer.param_groups[0]["params"][-1]
        assert quant.quantizes(big) and any(v.dtype in quant.CODE_DTYPES for v in optimizer.state[big].values())


def make_grads(params, steps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=gen).to(p.dtype) for p in params] for _ in range(steps)]


def run(optimizer, params, grads_per_step):
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()


def test_state_dict_resumes_in_a_fresh_process(tmp_path: Path) -> None:
    """Save after k steps, load into a fresh optimizer in a new Python process, continue: identical to an
    uninterrupted run, bit for bit, for every case on the loop and the foreach path (one process for all: each
    costs an import of torch). The worker loads with weights_only=True. (The checkpoint format is the same on every
    path; the fused path's packed state is saved, loaded with weights_only=True and resumed bit for bit in
    test_fused, where its kernels are compiled already, and in a fresh process with 8-bit state in
    test_int8_state.)"""
    k, total = 4, 9
    payload, expected = {}, {}
    for path in (dict(foreach=False), dict(foreach=True)):
        for case in CASES:
            params = make_params()
            grads = make_grads(params, total)
            key = f"{case} {path}"
            snapshot, expected[key] = checkpoint_midway(build(case, params, **path), params, grads, k)
            payload[key] = {**snapshot, "case": case, "path": path}
    continued = continue_in_fresh_process("checkpoint_worker.py", payload, tmp_path)
    for key in payload:
        for want, got in zip(expected[key], continued[key]["params"]):
            assert torch.equal(want, got), key


@pytest.mark.parametrize("case, state_dtype", WITH_INT8)
def test_bf16_state_stays_fp32_across_load_state_dict(case: str, state_dtype: str | None) -> None:
    """torch.optim casts loaded floating state to the param dtype; here it stays fp32 (8-bit codes stay codes and
    their block scales fp32)."""
    params = make_params(torch.bfloat16, state_dtype=state_dtype)
    optimizer = build(case, params, state_dtype=state_dtype)
    run(optimizer, params, make_grads(params, 3))
    assert_quantized(optimizer, state_dtype)
    saved = optimizer.state_dict()
    fresh = build(case, params, state_dtype=state_dtype)
    fresh.load_state_dict(saved)
    for p in params:
        for key, value in fresh.state[p].items():
            if key == "step":
                continue
            assert value.dtype == optimizer.state[p][key].dtype, (case, key)
            assert value.dtype in (torch.float32, *quant.CODE_DTYPES), (case, key)
            assert torch.equal(value, optimizer.state[p][key]), (case, key)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case, state_dtype", WITH_INT8)
def test_low_precision_params_use_fp32_math(case: str, state_dtype: str | None, dtype: torch.dtype) -> None:
    """One step on bf16/fp16 params equals the fp32 step on the same values, rounded once to the param dtype."""
    low = make_params(dtype, state_dtype=state_dtype)
    high = [p.detach().float().requires_grad_() for p in low]
    grads = make_grads(low, 1)
    opt_low = build(case, low, lr=0.05, state_dtype=state_dtype)
    opt_high = build(case, high, lr=0.05, state_dtype=state_dtype)
    run(opt_low, low, grads)
    run(opt_high, high, [[g.float() for g in grads[0]]])
    assert_quantized(opt_low, state_dtype)
    for p_low, p_high in zip(low, high):
        assert p_low.dtype == dtype
        assert torch.equal(p_low, p_high.to(dtype))
    assert all(v.dtype in (torch.float32, *quant.CODE_DTYPES)
               for s in opt_low.state.values() for k, v in s.items() if k != "step")


@pytest.mark.parametrize("case, state_dtype", WITH_INT8)
def test_lr_scheduler_drives_the_step(case: str, state_dtype: str | None) -> None:
    """A LambdaLR halving the lr each step gives exactly the run with the group's lr set by hand, and differs
    from the constant-lr run."""
    results = []
    for mode in ("scheduler", "manual", "constant"):
        params = make_params(torch.float64, state_dtype=state_dtype)
        optimizer = build(case, params, state_dtype=state_dtype)
        base_lr = optimizer.param_groups[0]["lr"]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.5**epoch)
        for i, grads in enumerate(make_grads(params, 5)):
            if mode == "manual":
                optimizer.param_groups[0]["lr"] = base_lr * 0.5**i
            for p, g in zip(params, grads):
                p.grad = g.to(p.dtype)
            optimizer.step()
            if mode == "scheduler":
                scheduler.step()
        assert_quantized(optimizer, state_dtype)
        results.append([p.detach().clone() for p in params])
    scheduled, manual, constant = results
    assert all(torch.equal(a, b) for a, b in zip(scheduled, manual))
    assert not all(torch.equal(a, b) for a, b in zip(scheduled, constant))


@pytest.mark.parametrize("case", list(CASES))
def test_closure_is_evaluated_with_grad_and_its_loss_returned(case: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randn(8, 3)
    reference = torch.nn.Linear(4, 3)
    reference.load_state_dict(model.state_dict())
    optimizer, ref_optimizer = build(case, model.parameters()), build(case, reference.parameters())
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    ref_loss = torch.nn.functional.mse_loss(reference(x), y)
    ref_loss.backward()
    ref_optimizer.step()
    assert calls == [True]
    assert torch.equal(loss, ref_loss)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), reference.parameters()))


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("case, state_dtype", WITH_INT8)
def test_maximize_equals_minimizing_the_negated_gradient(case: str, state_dtype: str | None, foreach: bool) -> None:
    up, down = make_params(torch.float64, state_dtype=state_dtype), make_params(torch.float64, state_dtype=state_dtype)
    grads = make_grads(up, 6)
    maximizing = build(case, up, maximize=True, foreach=foreach, state_dtype=state_dtype)
    run(maximizing, up, grads)
    run(build(case, down, foreach=foreach, state_dtype=state_dtype), down, [[-g for g in step] for step in grads])
    assert_quantized(maximizing, state_dtype)
    assert all(torch.equal(a, b) for a, b in zip(up, down))
    assert not all(torch.equal(a, b) for a, b in zip(up, make_params(torch.float64, state_dtype=state_dtype)))


@pytest.mark.parametrize("case", ["adan", "ademamix-warmup"])
def test_a_compiled_step_counts_its_steps_like_the_eager_one(case: str) -> None:
    """``torch.compile(opt.step)`` (the speed tool's "compiled" reference) on the foreach path: torch 2.13's compiled
    code dropped the step counters' in-place increment (0-d float64 CPU tensors), so bias corrections and warm-ups
    stayed at step 1 (Adan, AdaX, Adafactor, AdEMAMix and Amos alike: the increment is shared; two of them here, each
    compile costs seconds)."""
    steps = 5
    eager_params, compiled_params = make_params(), make_params()
    eager, compiled = build(case, eager_params, foreach=True), build(case, compiled_params, foreach=True)
    compiled_step = torch.compile(compiled.step, fullgraph=True)
    # dynamo compiles the shared step code again for each optimizer object: more than its default limit of 8 in a
    # worker running all of these cases
    with torch._dynamo.config.patch(recompile_limit=64):
        for grads in make_grads(eager_params, steps):
            for a, b, g in zip(eager_params, compiled_params, grads):
                a.grad, b.grad = g.clone(), g.clone()
            eager.step()
            compiled_step()
    assert [float(compiled.state[p]["step"]) for p in compiled_params] == [steps] * len(compiled_params)
    for a, b in zip(eager_params, compiled_params):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls, key, on, off", [
    (optarena.Adafactor, "beta1", 0.9, None), (optarena.Amos, "momentum", 0.9, 0.0),
    (optarena.Lion, "state_dtype", None, "int8"), (optarena.AdEMAMix, "state_dtype", "int8", None)],
    ids=["adafactor-beta1", "amos-momentum", "lion-to-int8", "ademamix-from-int8"])
def test_a_setting_changed_mid_run_keeps_the_state_dict_loadable(cls, key, on, off) -> None:
    """A setting that adds state switched off mid-run leaves that state (Adafactor's momentum, Amos's); a changed
    state_dtype keeps the state in the dtype it was made in. The optimizer's own state_dict was refused as "saved from
    another optimizer", by itself and by one built with the new setting; then codes were cast to floats (or floats to
    codes) on load. Loaded into either, it continues as the run that saved it. Codes without scales are refused."""
    p = torch.nn.Parameter(torch.randn(64, 128))
    opt = cls([p], lr=1e-2, **{key: on})
    for setting in (on, off):
        opt.param_groups[0][key] = setting
        p.grad = torch.randn_like(p)
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    dtypes = {k: v.dtype for k, v in opt.state[p].items()}
    twins = [torch.nn.Parameter(p.detach().clone()) for _ in range(2)]
    itself = cls([twins[0]], lr=1e-2, **{key: on})
    itself.load_state_dict(copy.deepcopy(saved))  # as torch's, a loaded state holds the saved tensors themselves
    fresh = cls([twins[1]], lr=1e-2, **{key: off})
    fresh.load_state_dict(copy.deepcopy(saved))
    grad = torch.randn_like(p)
    for opt_, param in ((opt, p), (itself, twins[0]), (fresh, twins[1])):
        assert {k: v.dtype for k, v in opt_.state[param].items()} == dtypes
        param.grad = grad.clone()
        opt_.step()
    assert torch.equal(twins[0], p) and torch.equal(twins[1], p)
    if key == "state_dtype" and on is None:
        int8 = cls([p], lr=1e-2, state_dtype="int8")
        p.grad = torch.randn_like(p)
        int8.step()
        coded = int8.state_dict()
        del coded["state"][0]["exp_avg_absmax"]
        with pytest.raises(ValueError, match="lacks exp_avg_absmax"):
            int8.load_state_dict(coded)


@pytest.mark.parametrize("case", list(CASES))
def test_empty_parameters_keep_finite_state_and_change_nothing_else(case: str) -> None:
    """Zero-size parameters step (as torch's optimizers do) without NaN state: Adafactor's column means of a (0, n)
    parameter were 0/0."""
    empties = [torch.zeros(s).requires_grad_() for s in [(0, 3), (3, 0), (0,), (2, 0, 4)]]
    alone, beside = make_params(), make_params()
    runs = (build(case, alone), build(case, empties + beside))
    for grads in make_grads(alone, 3):
        for p, q, g in zip(alone, beside, grads):
            p.grad, q.grad = g.clone(), g.clone()
        for e in empties:
            e.grad = torch.zeros_like(e)
        for opt in runs:
            opt.step()
    for e in empties:
        assert all(v.isfinite().all() for v in runs[1].state[e].values() if v.is_floating_point()), e.shape
    for p, q in zip(alone, beside):
        assert torch.equal(p, q)


@pytest.mark.parametrize("case", list(CASES))
def test_gradients_are_never_modified(case: str) -> None:
    params = make_params()
    optimizer = build(case, params, maximize=True)
    for grads in make_grads(params, 3):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()
        assert all(torch.equal(p.grad, g) for p, g in zip(params, grads))


@pytest.mark.parametrize("case", list(CASES))
def test_zero_grad_and_params_without_grad(case: str) -> None:
    params = make_params()
    frozen = torch.randn(3, requires_grad=True)
    before = frozen.detach().clone()
    optimizer = build(case, [*params, frozen])
    run(optimizer, params, make_grads(params, 2))
    optimizer.zero_grad()
    assert all(p.grad is None for p in params)
    optimizer.step()  # no gradients at all: a no-op
    assert torch.equal(frozen, before) and frozen not in optimizer.state


@pytest.mark.parametrize("case", list(CASES))
def test_sparse_gradients_are_refused_clearly(case: str) -> None:
    embedding = torch.nn.Embedding(10, 4, sparse=True)
    optimizer = build(case, embedding.parameters())
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match=f"{CASES[case][0].__name__} does not support sparse gradients"):
        optimizer.step()


@pytest.mark.parametrize("case", list(CASES))
def test_complex_params_are_refused_at_construction(case: str) -> None:
    z = torch.randn(3, dtype=torch.complex64, requires_grad=True)
    with pytest.raises(ValueError, match="does not support complex parameters.*complex64"):
        build(case, [z])
    optimizer = build(case, [torch.randn(3, requires_grad=True)])
    with pytest.raises(ValueError, match="complex"):
        optimizer.add_param_group({"params": [z]})
    assert len(optimizer.param_groups) == 1


def test_adan_restart_forgets_state() -> None:
    params = make_params(torch.float64)
    optimizer = optarena.Adan(params, lr=1e-2)
    run(optimizer, params, make_grads(params, 3))
    optimizer.restart()
    assert len(optimizer.state) == 0
    fresh_params = [p.detach().clone().requires_grad_() for p in params]
    fresh = optarena.Adan(fresh_params, lr=1e-2)
    grads = make_grads(params, 2, seed=7)
    run(optimizer, params, grads)
    run(fresh, fresh_params, grads)
    assert all(torch.equal(a, b) for a, b in zip(params, fresh_params))


def test_old_checkpoint_without_new_group_keys_loads_with_defaults() -> None:
    """A state_dict from a version whose groups lacked a key (here: maximize, foreach) still loads."""
    params = make_params()
    optimizer = optarena.Lion(params, lr=1e-3)
    run(optimizer, params, make_grads(params, 1))
    saved = optimizer.state_dict()
    for group in saved["param_groups"]:
        del group["maximize"], group["foreach"]
    fresh = optarena.Lion(params, lr=1e-3)
    fresh.load_state_dict(saved)
    assert fresh.param_groups[0]["maximize"] is False and fresh.param_groups[0]["foreach"] is None
    run(fresh, params, make_grads(params, 1))


@pytest.mark.parametrize("case, path", [("adan", dict(foreach=False)), ("adafactor", dict(foreach=False)),
                                        ("adan", dict(fused=True))], ids=str)
def test_state_dict_is_the_same_after_a_reload(case: str, path: dict) -> None:
    """``state_dict()`` after ``load_state_dict(state_dict())`` is the same, key for key (torch's base class adds a
    ``differentiable`` default on load, which must not reach the groups), and the fused step reuses its kernels."""
    params = make_params()
    optimizer = build(case, params, **path)
    run(optimizer, params, make_grads(params, 2))
    saved = optimizer.state_dict()
    optimizer.load_state_dict(saved)
    again = optimizer.state_dict()
    assert again["param_groups"] == saved["param_groups"]
    assert "differentiable" not in optimizer.param_groups[0]
    made = optimizer.fused_kernels_made
    run(optimizer, params, make_grads(params, 1))
    assert optimizer.fused_kernels_made == made


@pytest.mark.parametrize("path", [dict(foreach=False), dict(fused=True)], ids=str)
def test_a_copied_or_unpickled_optimizer_steps_like_the_original(path: dict) -> None:
    import copy
    import pickle

    params = make_params()
    optimizer = build("adan", params, **path)
    run(optimizer, params, make_grads(params, 2))
    saved = copy.deepcopy(optimizer.state_dict())  # a reference that loads it must not share its tensors
    for clone in (copy.deepcopy(optimizer), pickle.loads(pickle.dumps(optimizer))):
        clone_params = clone.param_groups[0]["params"]
        grads = make_grads(params, 2, seed=5)
        run(clone, clone_params, grads)
        expected = [p.detach().clone().requires_grad_() for p in params]
        reference = build("adan", expected, **path)
        reference.load_state_dict(copy.deepcopy(saved))
        run(reference, expected, grads)
        assert all(torch.equal(a, b) for a, b in zip(clone_params, expected))


@pytest.mark.parametrize("path", [dict(foreach=False), dict(foreach=True), dict(fused=True)], ids=str)
def test_a_checkpoint_with_python_number_steps_loads(path: dict) -> None:
    """torch.optim accepts a ``step`` saved as a Python number (older checkpoints, hand-made ones): every path
    continues from it as from the tensor."""
    params, reference_params = make_params(), make_params()
    optimizer, reference = build("adax", params, **path), build("adax", reference_params, **path)
    grads = make_grads(params, 4)
    run(optimizer, params, grads[:2])
    run(reference, reference_params, grads[:2])
    saved = optimizer.state_dict()
    for state in saved["state"].values():
        state["step"] = int(state["step"])
    optimizer.load_state_dict(saved)
    run(optimizer, params, grads[2:])
    run(reference, reference_params, grads[2:])
    assert all(torch.equal(a, b) for a, b in zip(params, reference_params))
    assert all(s["step"].dtype == torch.float64 for s in optimizer.state.values())
