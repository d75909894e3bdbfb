"""``state_dtype="int8"``: blockwise 8-bit moments, tested as bitsandbytes tests its 8-bit optimizers: 100 steps
against the fp32-state optimizer from the same parameters each step, with per-step error bounds, and a state_dict
round trip every 10 steps."""

from __future__ import annotations

import copy
import dataclasses
import re
import statistics
from pathlib import Path

import pytest
import torch

import optarena
from optarena.arena.runner import train_once
from optarena.arena.tasks import make_char_lm
from optarena.demo import train_digits
from optarena.optim import quant

try:
    from cases import build, calls_of
    from fresh_process import checkpoint_midway, continue_in_fresh_process
except ImportError:  # tests/ is a package
    from tests.cases import build, calls_of
    from tests.fresh_process import checkpoint_midway, continue_in_fresh_process

INT8_CASES = ["lion", "rlion-arctan", "adan", "adax", "ademamix"]
#: Per-step bounds over 100 steps: the mean absolute error of one step from the same parameters, relative to the
#: mean size of the fp32-state step (mean over the steps; the worst step is allowed twice that). Observed with
#: these gradients, whose scales span 100× inside every block (dithered codes): Lion 0.027 (worst 0.044), RLion
#: 0.025 (0.040), Adan 0.083 (0.103), AdaX 0.057 (0.067), AdEMAMix 0.052 (0.062).
MEAN_STEP_ERROR = {"lion": 0.04, "rlion-arctan": 0.04, "adan": 0.12, "adax": 0.08, "ademamix": 0.08}
#: Lion's update is lr·sign(c): a quantised momentum flips the sign of c where c is near 0. Allowed: this fraction
#: of the elements per step on average, twice it in the worst step (observed 1.3 %, worst 2.2 %).
LION_FLIPS = 0.02


def shapes() -> list[tuple[int, ...]]:
    # a matrix of several blocks, with a partial last block; a bias below MIN_QUANTIZED (keeps fp32 state)
    return [(96, 100), (100,)]


def grads_for(steps: int, seed: int = 0) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    scales = [10 ** (-2 * torch.rand(s, generator=gen)) for s in shapes()]  # a 100× range within each block
    return [[torch.randn(s, generator=gen) * scale for s, scale in zip(shapes(), scales)] for _ in range(steps)]


def params_from(values: list[torch.Tensor]) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(v.clone()) for v in values]


@pytest.mark.parametrize("case", INT8_CASES)
def test_100_steps_against_fp32_state(case: str) -> None:
    gen = torch.Generator().manual_seed(1)
    start = [torch.randn(s, generator=gen) for s in shapes()]
    ref_params, params = params_from(start), params_from(start)
    ref = build(case, ref_params, foreach=False)
    opt = build(case, params, foreach=False, state_dtype="int8")
    step_errors, flips = [], []
    for step, grads in enumerate(grads_for(100)):
        before = [p.detach().clone() for p in ref_params]
        for p, q, g in zip(ref_params, params, grads):
            p.grad, q.grad = g.clone(), g.clone()
        ref.step()
        opt.step()
        big = 0  # the quantised tensor; the bias keeps fp32 state
        ref_step, step8 = ref_params[big] - before[big], params[big] - before[big]
        step_errors.append(((step8 - ref_step).abs().mean() / ref_step.abs().mean()).item())
        flips.append((ref_step.sign() != step8.sign()).float().mean().item())
        torch.testing.assert_close(params[1], ref_params[1], rtol=1e-5, atol=1e-6)  # fp32 state: same step
        with torch.no_grad():  # as bitsandbytes' tests: both continue from the fp32 run's parameters
            for p, q in zip(ref_params, params):
                q.copy_(p)
        if step % 10 == 9:  # a state_dict round trip into a new optimizer
            saved = copy.deepcopy(opt.state_dict())
            opt = build(case, params, foreach=False, state_dtype="int8")
            opt.load_state_dict(saved)
    state = opt.state[params[0]]
    assert state["exp_avg"].dtype == torch.int8 and state["exp_avg_absmax"].dtype == torch.float32
    assert opt.state[params[1]]["exp_avg"].dtype == torch.float32
    mean_error = sum(step_errors) / len(step_errors)
    assert mean_error < MEAN_STEP_ERROR[case], (mean_error, max(step_errors))
    assert max(step_errors) < 2 * MEAN_STEP_ERROR[case], max(step_errors)
    if case == "lion":
        assert sum(flips) / len(flips) < LION_FLIPS and max(flips) < 2 * LION_FLIPS, (sum(flips) / 100, max(flips))


@pytest.mark.parametrize("case", INT8_CASES)
def test_paths_agree_and_state_bytes(case: str) -> None:
    gen = torch.Generator().manual_seed(1)
    start = [torch.randn(s, generator=gen) for s in shapes()]
    runs = {}
    for name, path in {"loop": dict(foreach=False), "foreach": dict(foreach=True)}.items():
        params = params_from(start)
        opt = build(case, params, state_dtype="int8", **path)
        for grads in grads_for(6):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
        runs[name] = (params, opt)
    for p, q in zip(runs["loop"][0], runs["foreach"][0]):
        assert torch.equal(p, q)
    opt = runs["loop"][1]
    big = runs["loop"][0][0].numel()
    buffers = sum(1 for k, v in opt.state[runs["loop"][0][0]].items() if v.dtype in quant.CODE_DTYPES)
    expected = buffers * (big + 4 * quant.blocks(big)) + buffers * 4 * 100  # codes + scales; the bias in fp32
    expected += 8 * sum("step" in s for s in opt.state.values())
    assert optarena.state_bytes(opt) == expected


@pytest.mark.xdist_group("fused-int8")  # compiles the 8-bit Lion kernel that the fresh-process checkpoint test uses
def test_fused_path_matches_the_loop() -> None:
    """The fused kernels compute the loop's step, the codes' dither included (from the step counts: with the count
    before its increment, half the codes differed by one after the first step)."""
    gen = torch.Generator().manual_seed(1)
    # whole blocks, 60K elements and 8K (below the packing size): compiled kernels (a partial last block would step
    # eagerly)
    start = [torch.randn(s, generator=gen) for s in [(240, 256), (32, 256), (100,)]]
    results = []
    for path in (dict(foreach=False), dict(fused=True)):
        params = params_from(start)
        opt = optarena.Lion(params, lr=1e-3, weight_decay=0.1, state_dtype="int8", **path)
        gen = torch.Generator().manual_seed(2)
        for _ in range(5):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        results.append((params, [opt.state[p] for p in params[:2]]))
        if "fused" in path:
            plans = list(opt._fused_plans.values())
            assert [plan.eager for plan in plans] == [[]]
            assert sorted(i for call in calls_of(opt) for i in call.indices) == [0, 1, 2]
    (loop, loop_states), (fused, fused_states) = results
    for p, q in zip(loop, fused):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-6)
    for loop_state, fused_state in zip(loop_states, fused_states):
        # a compiled sqrt/round may land on the neighbouring code at a tie
        assert (loop_state["exp_avg"].int() - fused_state["exp_avg"].int()).abs().max() <= 1
        torch.testing.assert_close(fused_state["exp_avg_absmax"], loop_state["exp_avg_absmax"])


#: The fused step's 8-bit checkpoint: a tensor its compiled 8-bit kernel takes (whole blocks, too large to pack),
#: one with whole blocks below the packing size (also a compiled kernel), one it steps eagerly (a partial last
#: block) and small fp32-state tensors it packs into flat kernels.
FUSED_SHAPES = [(256, 128), (300, 200), (64, 128), (100,), (7,), (5, 6), ()]


@pytest.mark.xdist_group("fused-int8")
def test_checkpoint_resumes_bitwise_in_a_fresh_process(tmp_path: Path) -> None:
    """Saved after some steps, loaded with weights_only=True in a new process (one for every path: each costs an
    import of torch, the fused one compiling its kernels anew) and continued there: bit for bit the run continued
    here. The loop and foreach paths for every 8-bit optimizer, the fused path for Lion and Adan."""
    runs = [(case, path, shapes(), 7, 4) for path in (dict(foreach=False), dict(foreach=True)) for case in INT8_CASES]
    runs += [(case, dict(fused=True), FUSED_SHAPES, 6, 3) for case in ("lion", "adan")]
    payload, expected = {}, {}
    for case, path, sizes, steps, k in runs:
        gen = torch.Generator().manual_seed(1)
        params = params_from([torch.randn(s, generator=gen) for s in sizes])
        grads = [[torch.randn(s, generator=gen) for s in sizes] for _ in range(steps)]
        opt = build(case, params, state_dtype="int8", **path)
        key = f"{case} {path}"
        snapshot, expected[key] = checkpoint_midway(opt, params, grads, k)
        payload[key] = {**snapshot, "case": case, "path": {**path, "state_dtype": "int8"}}
        quantized = [quant.quantizes(p) for p in params]
        assert [opt.state[p]["exp_avg"].dtype == torch.int8 for p in params] == quantized and any(quantized)
        assert ("fused" in path) == bool(opt._fused_plans), key  # its kernels may come from an earlier test
    continued = continue_in_fresh_process("checkpoint_worker.py", payload, tmp_path)
    for key in payload:
        assert "torch.int8" in continued[key]["state_dtypes"], key
        assert ("fused" in key) == (continued[key]["fused_kernels_made"] > 0), key
        for want, got in zip(expected[key], continued[key]["params"]):
            assert torch.equal(want, got), key


@pytest.mark.parametrize("wrap", ["lookahead-pullback", "lookahead-reset", "lazy", "accumulation"])
def test_wrappers_work_over_int8_state(wrap: str) -> None:
    gen = torch.Generator().manual_seed(1)
    start = [torch.randn(s, generator=gen) for s in shapes()]
    finals = []
    for state_dtype in (None, "int8"):
        params = params_from(start)
        base = optarena.Lion(params, lr=1e-3, state_dtype=state_dtype)
        opt = {"lookahead-pullback": lambda b: optarena.Lookahead(b, k=3, pullback="pullback"),
               "lookahead-reset": lambda b: optarena.Lookahead(b, k=3, pullback="reset"),
               "lazy": optarena.Lazy, "accumulation": lambda b: optarena.GradientAccumulation(b, 2)}[wrap](base)
        for grads in grads_for(12):
            for p, g in zip(params, grads):
                g = g.clone()
                if wrap == "lazy" and g.dim() == 2:
                    g[::3] = 0  # absent rows
                p.grad = g
            opt.step()
        saved = copy.deepcopy(opt.state_dict())
        fresh = type(opt)(optarena.Lion(params, lr=1e-3, state_dtype=state_dtype), **(
            {"k": 3, "pullback": wrap.split("-")[1]} if wrap.startswith("lookahead") else
            {"steps": 2} if wrap == "accumulation" else {}))
        fresh.load_state_dict(saved)
        finals.append([p.detach().clone() for p in params])
    for fp32, int8 in zip(*finals):
        # 12 steps of lr 1e-3: a flipped sign moves an element by 2e-3 at most per step
        assert (int8 - fp32).abs().mean() < 2e-4


def test_only_8bit_capable_optimizers_accept_it() -> None:
    p = [torch.nn.Parameter(torch.zeros(5000))]
    with pytest.raises(ValueError, match="Invalid state_dtype: 'int8' \\(Adafactor does not keep"):
        optarena.Adafactor(p, state_dtype="int8")
    with pytest.raises(ValueError, match="Invalid state_dtype: 'int4'"):
        optarena.Lion(p, state_dtype="int4")


@pytest.mark.parametrize("name, lr", [("lion", 1e-3), ("adan", 1e-3)])
def test_int8_state_accuracy_cost_on_digits(name: str, lr: float) -> None:
    """The real-task cost: digits MLP, 15 epochs, seeds 0-2; 8-bit state loses at most 1.5 points of validation
    accuracy on the mean (one seed's trajectory moves by about a point for any perturbation: benchmarks/NOTES.md)."""
    gaps = []
    for seed in range(3):
        fp32 = train_digits(name, lr=lr, epochs=15, seed=seed)
        int8 = train_digits(name, lr=lr, epochs=15, seed=seed, state_dtype="int8")
        assert int8.state_bytes < 0.4 * fp32.state_bytes  # its 1280-element head keeps fp32 state
        assert min(fp32.val_accuracy, int8.val_accuracy) > 0.9, (seed, fp32.val_accuracy, int8.val_accuracy)  # learned
        gaps.append(int8.val_accuracy - fp32.val_accuracy)
    assert statistics.fmean(gaps) >= -0.015, gaps


@pytest.mark.parametrize("name, lr", [("lion", 1e-3), ("adan", 3.16e-3)])  # the arena's tuned lrs on char_lm
def test_int8_state_loss_cost_on_char_lm(name: str, lr: float) -> None:
    """The language-model cost: the arena's char_lm (its model, data, decay and cosine schedule through train_once)
    over seeds 0-2; 8-bit state ends within 0.05 nats/char of fp32 state on the mean. 60 of the quick budget's 120
    steps, enough to learn well past character frequencies (3.25 nats; benchmarks/NOTES.md has the full budget)."""
    task = dataclasses.replace(make_char_lm("quick"), steps=60, eval_every=60)
    gaps = []
    for seed in range(3):
        fp32 = train_once(task, name, lr, seed)
        int8 = train_once(task, name, lr, seed, optimizer_kwargs={"state_dtype": "int8"})
        assert int8.state_bytes < 0.3 * fp32.state_bytes  # 97 % of the parameters quantise: 0.28 if all do
        for run in (fp32, int8):
            assert run.final_metric < 3.0 < run.eval_metric[0], (seed, run.eval_metric)  # it learned
        gaps.append(int8.final_metric - fp32.final_metric)
    assert abs(statistics.fmean(gaps)) < 0.05, gaps


def test_the_fused_8bit_step_is_one_loop_over_blocks() -> None:
    """With ``codegen.outer_loop_fusion`` inductor puts a block's maximum and its encoding into one parallel loop over
    blocks (two loops and a third for the scales without it), and the kernel computes what the loop path does."""
    from torch._inductor.utils import run_and_get_code

    from optarena.optim.fused import codegen

    if not codegen.adjusted():
        pytest.skip("the adjustment is made on the tested torch only")
    gen = torch.Generator().manual_seed(0)
    n = 1 << 16  # large enough for a parallel loop
    p, g = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    codes, scales = torch.zeros(n, dtype=torch.int8), torch.zeros(quant.blocks(n))
    quant.quantize_(codes, scales, torch.randn(n, generator=gen))

    def lion_like(p: torch.Tensor, g: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        m = quant.dequantize(codes, scales)
        p.sub_(1e-3 * torch.sign(0.9 * m + 0.1 * g))
        return quant.encode_blocks_(codes, m.lerp(g, 0.01), scales.numel())

    views = [t.view(-1, quant.BLOCK) for t in (p, g, codes)] + [scales]
    loop_p, loop_codes, loop_scales = p.clone(), codes.clone(), scales.clone()
    m = quant.dequantize(loop_codes, loop_scales)
    loop_p.sub_(1e-3 * torch.sign(0.9 * m + 0.1 * g))
    quant.quantize_(loop_codes, loop_scales, m.lerp(g, 0.01))
    with torch._inductor.config.patch(force_disable_caches=True), codegen.outer_loop_fusion():
        new_scales, code = run_and_get_code(torch.compile(lion_like, fullgraph=True), *views)
    assert "\n".join(code).count("for(int64_t x0=") == 1  # the loop over blocks; both inner loops in it
    torch.testing.assert_close(p, loop_p, rtol=0, atol=1e-6)
    assert (codes.int() - loop_codes.int()).abs().max() <= 1  # a compiled sqrt/round may land on a tie's neighbour
    torch.testing.assert_close(new_scales, loop_scales)


def test_lions_fused_8bit_kernel_keeps_the_new_moment_per_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lion's 8-bit kernel (``int8_local_buffers``) stores its new moment in a per-block buffer that the encoding
    reads, instead of recomputing it or writing a full-size temporary; the parameter update runs in the first loop."""
    from torch._inductor import cpu_vec_isa
    from torch._inductor.utils import run_and_get_code

    from optarena.optim.fused import codegen

    if not codegen.adjusted():
        pytest.skip("the adjustment is made on the tested torch only")
    from optarena.optim.fused import kernels

    monkeypatch.setattr(kernels, "_KERNELS", {})  # compiled here, whatever earlier tests compiled
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(1 << 16, generator=gen))
    p.grad = torch.randn(1 << 16, generator=gen)
    opt = optarena.Lion([p], lr=1e-3, fused=True, state_dtype="int8")
    with torch._inductor.config.patch(force_disable_caches=True):
        _, code = run_and_get_code(opt.step)
    code = "\n".join(code)
    blocks = re.search(r"for\(int64_t x0=[^;]*; x0<static_cast<int64_t>\(ks\d+\)", code)
    assert blocks is not None
    # the dither row computed once before the loop over blocks, which reads it (not again for every element)
    assert "arange(" in code[:blocks.start()] and "arange(" not in code[blocks.start():]
    kernel = code[blocks.start():]
    assert kernel.count("for(int64_t x0=") == 1 and kernel.count("for(int64_t x1=") == 2
    assert "float* local_buffer_data" in code
    assert not re.search(r"empty_strided_cpu\(\((s\d+, 256|256\*s\d+,\s*)\)", kernel)  # no full-size temporary
    first_loop = kernel.split("for(int64_t x1=")[1]
    parameter_store = r"\.store\(out_ptr\d+ \+ static_cast<int64_t>\(x1 \+ 256L\*x0\)\)"
    assert "tmp_acc0_vec = " in first_loop and re.search(parameter_store, first_loop)  # block maximum, new parameters
    assert opt.fused_kernels_made == 1
    # fused.rewrite: lr and the betas read once per call, the block's scale once per block
    assert re.search(r"const auto in_ptr\d+_value = ", code) and re.search(r"const auto \w+_row\d+ = ", kernel)
    if isinstance(cpu_vec_isa.pick_vec_isa(), (cpu_vec_isa.VecAVX2, cpu_vec_isa.VecAVX512)):
        # x86: the sign's clamp and the block maximum in one instruction each
        assert re.search(r"_mm\d+_max_ps\(", first_loop) and re.search(r"_mm\d+_max_epi32\(", first_loop)
