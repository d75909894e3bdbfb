"""``fused=True``: the compiled step equals the per-tensor loop within fp32 rounding, for every optimizer.

Compilation is slow, so every test uses the same few small tensors (one kernel per configuration and chunk size,
shared by all tests of a configuration through optarena's kernel cache and inductor's on-disk cache).
Each step is compared from identical starting states (the fused optimizer is re-synchronised with the loop after
every step), so differences are the rounding of one step, not a drift of trajectories.
"""

from __future__ import annotations

import io
import types
import warnings

import pytest
import torch

import optarena
from optarena.optim.fused import codegen, kernels
from optarena.wrappers import GradientAccumulation, LayerAdaptation, Lazy, Lookahead
from optarena.wrappers.lookahead import innermost

try:
    from cases import CASES, build, kernels_of
except ImportError:  # tests/ is a package
    from tests.cases import CASES, build, kernels_of

# 0-d, 1-d, 2-d, 3-d; 15 flat tensors, four 4×3 matrices and four more scalars (the elementwise algorithms pack all
# of these small tensors into flat kernels; Adafactor packs the 12 vectors with the five scalars, the 5×6 matrix with
# the three 5×6 slices of the 3-d tensor, and the four 4×3 matrices); one non-contiguous view (loop path; Adafactor:
# a chunked 2-D kernel). Adafactor's chunks of other shapes have tests of their own (test_guarded_*).
SHAPES = [(), (7,), (5, 6), (3, 5, 6)] + [(9,)] * 11 + [(4, 3)] * 4 + [()] * 4
STEPS = 4
RTOL, ATOL = 2e-5, 1e-6  # one fp32 step; the compiler may contract a·b + c into an FMA or reorder scalar math


def make_params(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]
    params.append(torch.nn.Parameter(torch.randn(6, 4, generator=gen).t()))  # non-contiguous
    return params


def set_grads(params: list[torch.Tensor], step: int) -> None:
    gen = torch.Generator().manual_seed(1000 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)


def sync(dst_opt: torch.optim.Optimizer, dst: list[torch.Tensor], src_opt: torch.optim.Optimizer,
         src: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for d, s in zip(dst, src):
            d.copy_(s)
            for key, value in src_opt.state[s].items():
                dst_opt.state[d][key].copy_(value)


def lion_c(opt: torch.optim.Optimizer, p: torch.Tensor) -> torch.Tensor:
    """Lion's interpolated momentum c for the coming step (the argument of sign)."""
    beta1 = opt.param_groups[0]["betas"][0]
    return beta1 * opt.state[p]["exp_avg"] + (1 - beta1) * p.grad


def with_own_code(fn, name: str):
    """``fn`` with a code object of its own, so that dynamo (which caches compiled frames per code object) compiles
    it afresh."""
    return types.FunctionType(fn.__code__.replace(co_name=name), fn.__globals__)


# fp32 state as the default None: the other tests' optimizers (built with defaults) then share these kernels
@pytest.mark.parametrize("state_dtype", [None, torch.bfloat16], ids=["fp32-state", "bf16-state"])
@pytest.mark.parametrize("case", list(CASES))
def test_fused_equals_loop(case: str, state_dtype: torch.dtype) -> None:
    loop_params, fused_params = make_params(), make_params()
    loop = build(case, loop_params, foreach=False, state_dtype=state_dtype)
    fused = build(case, fused_params, fused=True, state_dtype=state_dtype)
    # bf16 state: both paths round fp32 moments that may differ in their last bits: at most one bf16 ulp apart
    state_tol = dict(rtol=RTOL, atol=ATOL) if state_dtype is None else dict(rtol=2**-7, atol=ATOL)
    # a schedule changes lr every step, and all betas change too (below): the kernels take them as tensors
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1 / (1 + s)) for o in (loop, fused)]
    is_lion = isinstance(loop, optarena.Lion) and not isinstance(loop, optarena.RLion)
    flips = total = 0
    for step in range(STEPS):
        set_grads(loop_params, step)
        set_grads(fused_params, step)
        near_zero = [lion_c(loop, p).abs() < 1e-6 for p in loop_params] if is_lion and step else None
        loop.step()
        fused.step()
        for i, (a, b) in enumerate(zip(loop_params, fused_params)):
            if near_zero is not None:
                lr = loop.param_groups[0]["lr"]
                # sign(c) may differ only where c is within rounding of 0; elsewhere equal within fp32
                bad = ~torch.isclose(a, b, rtol=RTOL, atol=ATOL)
                assert not (bad & ~near_zero[i]).any(), f"{case}: sign differs away from c ≈ 0"
                assert ((a - b).abs() <= 2 * lr * 1.001 + ATOL).all()
                flips += int(bad.sum())
                total += a.numel()
            else:
                torch.testing.assert_close(b, a, rtol=RTOL, atol=ATOL, msg=lambda m, s=step: f"{case}, step {s}: {m}")
            for key, value in loop.state[a].items():
                torch.testing.assert_close(fused.state[b][key], value, **state_tol)
        sync(fused, fused_params, loop, loop_params)
        for s in scheds:
            s.step()
        for group in (*loop.param_groups, *fused.param_groups):
            if "betas" in group:
                group["betas"] = tuple(b * 0.97 for b in group["betas"])
    assert flips <= max(1, total // 1000)  # observed: 0 on these random values
    assert fused._fused_plans and not fused._fused_failures  # the kernels stepped, not the foreach fallback


@pytest.mark.parametrize("name", ["Lion", "RLion", "Adan", "AdaX", "AdEMAMix"])
def test_no_recompiles_over_100_steps_of_one_cycle_lr(name: str) -> None:
    """lr, betas and weight decay are kernel inputs, not constants: OneCycleLR (which cycles betas[0] by default) and
    a weight decay schedule compile nothing new."""
    params = make_params()
    opt = getattr(optarena, name)(params, lr=1e-3, weight_decay=0.1, fused=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=101)
    set_grads(params, 0)
    opt.step()
    sched.step()
    frames = dict(torch._dynamo.utils.counters["frames"])
    kernel_count = len(kernels._KERNELS)
    lrs, betas = set(), set()
    for step in range(100):
        opt.param_groups[0]["weight_decay"] = 0.1 / (1 + step)
        opt.step()
        sched.step()
        lrs.add(opt.param_groups[0]["lr"])
        betas.add(opt.param_groups[0]["betas"][0])
    assert len(lrs) >= 90 and len(betas) >= 90
    assert opt._fused_plans and not opt._fused_failures  # stepped by the kernels, not the foreach fallback
    assert dict(torch._dynamo.utils.counters["frames"]) == frames
    assert len(kernels._KERNELS) == kernel_count


def test_amos_momentum_cycled_by_one_cycle_lr_is_a_kernel_input() -> None:
    """OneCycleLR and CyclicLR cycle ``momentum`` where a group has no betas (Amos): compiled in, it made two new
    kernels every step (3–4 s each). As an input it compiles nothing new, and the step is the loop's."""
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=gen) for s in [(64, 32), (32,)]]
    runs, made = [], []
    for path in (dict(fused=True), dict(foreach=False)):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = optarena.Amos(params, lr=1e-2, **path)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=30)
        momenta = set()
        for step in range(20):
            set_grads(params, step)
            opt.step()
            sched.step()
            momenta.add(opt.param_groups[0]["momentum"])
            made.append(opt.fused_kernels_made)
        runs.append(params)
        if "fused" in path:
            assert opt._fused_plans and not opt._fused_failures  # the kernels stepped, not the foreach fallback
    assert len(momenta) == 20
    assert made[0] > 0 and made[:20] == [made[0]] * 20  # compiled at the first step only
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_arctan_is_within_4_ulp(dtype: torch.dtype) -> None:
    """RLion's float32 arctan takes Sleef's 3.5-ulp variant on AVX-512 (also in the 2-vector form that bf16 kernels
    use): the result stays within 4 float32 ulp of float64's."""
    from torch._inductor import cpu_vec_isa
    from torch._inductor.utils import run_and_get_code

    def scaled_arctan(x: torch.Tensor, out: torch.Tensor) -> None:
        out.copy_(torch.atan(x.float() * 300.0))

    fn = with_own_code(scaled_arctan, f"scaled_arctan_{dtype}".replace(".", "_"))
    x = (torch.randn(5000, generator=torch.Generator().manual_seed(0)) * 0.1).to(dtype)
    out = torch.empty(5000)
    with torch._inductor.config.patch(force_disable_caches=True), codegen.adjusted_codegen():
        _, code = run_and_get_code(torch.compile(fn, fullgraph=True), x, out)
    expected = torch.atan(x.double() * 300.0)
    ulp = torch.finfo(torch.float32).eps * expected.abs()
    assert ((out.double() - expected).abs() <= 4 * ulp).all()
    isa = cpu_vec_isa.pick_vec_isa()
    assert ("Sleef_atanf16_u35" in "\n".join(code)) == bool(isa and isa.bit_width() == 512)


def test_bf16_params_fused_equal_loop_rounding() -> None:
    loop_params = [torch.nn.Parameter(p.detach().bfloat16()) for p in make_params()]
    fused_params = [torch.nn.Parameter(p.detach().clone()) for p in loop_params]
    loop = optarena.AdaX(loop_params, lr=1e-2, foreach=False)
    fused = optarena.AdaX(fused_params, lr=1e-2, fused=True)
    for step in range(2):
        gen = torch.Generator().manual_seed(step)
        for a, b in zip(loop_params, fused_params):
            a.grad = torch.randn(a.shape, generator=gen).bfloat16()
            b.grad = a.grad.clone()
        loop.step()
        fused.step()
        for a, b in zip(loop_params, fused_params):
            assert b.dtype == torch.bfloat16
            torch.testing.assert_close(b.float(), a.float(), rtol=8e-3, atol=1e-5)  # one bf16 ulp
            assert fused.state[b]["exp_avg"].dtype == torch.float32


WRAPPED = {  # each wrapper once over a fused base (configurations of CASES: their kernels are already compiled)
    "lookahead-reset(lion)": lambda ps, **kw: Lookahead(build("lion", ps, **kw), k=2, pullback="reset"),
    "lookahead-pullback(adan)": lambda ps, **kw: Lookahead(build("adan", ps, **kw), k=2, pullback="pullback"),
    "accumulation(adax)": lambda ps, **kw: GradientAccumulation(build("adax", ps, **kw), steps=2),
    "layer-adaptation(adafactor)": lambda ps, **kw: LayerAdaptation(build("adafactor", ps, **kw)),
    "lazy(rlion)": lambda ps, **kw: Lazy(build("rlion-arctan", ps, **kw)),
    "lookahead(accumulation(lazy(adan)))": lambda ps, **kw: Lookahead(
        GradientAccumulation(Lazy(build("adan", ps, **kw)), steps=2), k=2),
}


@pytest.mark.parametrize("case", list(WRAPPED))
def test_wrappers_over_a_fused_base_equal_them_over_the_loop(case: str) -> None:
    """The wrappers change parameters, gradients and the base's state between the base's steps (Lookahead moves
    θ and the momentum in place, GradientAccumulation hands the base averaged gradients, Lazy hides the parameters
    with absent rows): the fused plan must follow. Every other step has absent rows, so the set of parameters that
    reach the base's fused step changes."""
    loop_params, fused_params = make_params(), make_params()
    loop = WRAPPED[case](loop_params, foreach=False)
    fused = WRAPPED[case](fused_params, fused=True)
    base = innermost(fused)
    for step in range(6):
        for params in (loop_params, fused_params):
            set_grads(params, step)
            if step % 2:
                for p in params:
                    if p.dim() == 2:
                        p.grad[::2] = 0
        loop.step()
        fused.step()
    assert base._fused_plans  # the last step ran fused
    for a, b in zip(loop_params, fused_params):
        # six steps without re-synchronising: rounding differences carry over
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=lambda m: f"{case}: {m}")


@pytest.mark.parametrize("case", ["adan", "adafactor-momentum", "ademamix", "amos-momentum-eta"])
def test_state_dict_round_trip_continues_identically(case: str) -> None:
    """Packed state (views of flat buffers; by slices for Adafactor) saves per parameter, loads with
    weights_only=True into a fresh fused optimizer, and continues bit for bit (test_conventions resumes the same
    checkpoint format in a fresh process)."""
    ref_params, params = make_params(), make_params()
    ref, opt = build(case, ref_params, fused=True), build(case, params, fused=True)
    for step in range(2):
        set_grads(ref_params, step)
        set_grads(params, step)
        ref.step()
        opt.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)  # views of the packs' flat buffers are saved per parameter
    buffer.seek(0)
    resumed = build(case, params, fused=True)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for step in range(2, 4):
        set_grads(ref_params, step)
        set_grads(params, step)
        ref.step()
        resumed.step()
    for a, b in zip(ref_params, params):
        assert torch.equal(a, b)
    assert float(resumed.state[params[0]]["step"]) == 4


def test_grads_untouched_and_maximize() -> None:
    params = make_params()
    opt = optarena.Lion(params, lr=1e-2, fused=True, maximize=True)
    set_grads(params, 0)
    grads = [p.grad.clone() for p in params]
    before = [p.detach().clone() for p in params]
    opt.step()
    for p, g, b in zip(params, grads, before):
        assert torch.equal(p.grad, g)
        torch.testing.assert_close(p.detach(), b + 1e-2 * torch.sign(0.1 * g))  # first step: c = (1 − β1)·g


@pytest.mark.parametrize("case", ["lion", "adafactor"])
def test_fused_without_torch_internals_equals_loop(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Off the torch it was written for (or with OPTARENA_FUSED_COMPAT=1), the fused step uses none of torch's
    internals (code-generation patches, dropped guards): slower, still equal to the loop."""
    from torch._inductor.codegen import cpp

    monkeypatch.setenv("OPTARENA_FUSED_COMPAT", "1")
    assert not codegen.adjusted()
    tiling = cpp.TilingSelect.select_tiling
    seen = []
    monkeypatch.setattr(codegen, "shape_guards_only", lambda guards: seen.append(1) or [True] * len(guards))
    loop_params, fused_params = make_params(), make_params()
    loop = build(case, loop_params, foreach=False, state_dtype=torch.bfloat16)
    fused = build(case, fused_params, fused=True, state_dtype=torch.bfloat16)
    for step in range(3):
        set_grads(loop_params, step)
        set_grads(fused_params, step)
        loop.step()
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # no fallback to foreach (which warns so)
            fused.step()
        assert cpp.TilingSelect.select_tiling is tiling
        for a, b in zip(loop_params, fused_params):
            torch.testing.assert_close(b, a, rtol=2e-3, atol=1e-5)  # bf16 state rounds the moments
        sync(fused, fused_params, loop, loop_params)
    assert fused._fused_plans and not seen
    assert all(plan.key[-1] is False for plan in fused._fused_plans.values())  # kernels of their own
    assert all(kernel.direct is None for kernel in kernels_of(fused))  # dynamo's frame and guards on every call


@pytest.mark.parametrize("kwargs, match", [
    (dict(fused=True, foreach=True), "fused=True with foreach=True"),
    (dict(fused="yes"), "Invalid fused: 'yes'"),
    (dict(fused=1), "Invalid fused: 1"),
])
def test_fused_argument_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        optarena.Lion([torch.nn.Parameter(torch.zeros(2))], **kwargs)

