"""``fused=True``'s kernels and plans: compiled only on stand-ins, keyed and guarded by what they depend on, code
generation steered where inductor's defaults cost time, packs of small tensors, and plans that follow what changes
between steps (the parity of every optimizer's fused step with its loop is in test_fused.py)."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch._dynamo.symbolic_convert import TensorifyState

import optarena
from optarena.info import info_for
from optarena.optim import ops
from optarena.optim.fused import codegen, kernels, pack, plan
from optarena.speed import peak_extra_bytes

try:
    from cases import build
    from test_fused import ATOL, RTOL, STEPS, make_params, set_grads, sync, with_own_code
except ImportError:  # tests/ is a package
    from tests.cases import build
    from tests.test_fused import ATOL, RTOL, STEPS, make_params, set_grads, sync, with_own_code



@pytest.mark.parametrize("name", ["Adafactor", "Lion"])
def test_kernels_compile_only_on_stand_ins(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every graph is compiled by the stand-in call in ``_compile`` (timed, with its compile settings): the real
    steps compile nothing. Adafactor keeps dynamo's guards, which a Parameter (against a plain stand-in) or sizes
    that were equal only among the stand-ins once failed on the first real step. And each graph is traced once:
    0-d float64 betas made dynamo trace the first Lion, RLion, Adan or AdaX kernel of a process twice (it gave each
    beta a symbolic float for its value, which the graph never used, and restarted to make that a constant; it
    remembers such constants by name for the rest of the process, hence a set of this test's own)."""
    def graphs() -> int:
        return torch._dynamo.utils.counters["stats"]["unique_graphs"]

    def retraces() -> int:  # dynamo times each attempt at tracing a frame
        return len(torch._dynamo.utils.compilation_time_metrics.get("compile_attempt_1", []))

    inside = []
    compile_on_stand_ins = kernels.compile_on_stand_ins

    def counted(*args, **kwargs):
        before = graphs()
        compile_on_stand_ins(*args, **kwargs)
        inside.append(graphs() - before)

    monkeypatch.setattr(plan, "compile_on_stand_ins", counted)
    monkeypatch.setattr(kernels, "_KERNELS", {})  # kernels of this test's own, compiled here
    monkeypatch.setattr(TensorifyState, "force_specializations", set())
    params = make_params()
    opt = getattr(optarena, name)(params, fused=True)
    before, retraced = graphs(), retraces()
    # a graph from inductor's cache skips the pass that retraced; uncached, Adafactor (no betas) took 15 s longer
    with torch._inductor.config.patch(force_disable_caches=name == "Lion"):
        for step in range(3):
            set_grads(params, step)
            opt.step()
    assert sum(inside) > 0
    assert graphs() - before == sum(inside)
    assert retraces() == retraced


def test_guarded_kernels_take_chunks_of_one_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adafactor's kernels see real shapes and keep their guards: a chunk of mixed shapes would compile again for
    each pattern of equal sizes in it, so chunks are cut per shape (the 1-tensor kernel takes what is left of a
    shape). (The plan alone is checked: its kernels are made, not compiled.)"""
    monkeypatch.setattr(plan, "SMALL_TENSOR", 16)  # these matrices are chunked, not packed
    monkeypatch.setattr(plan, "compile_on_stand_ins", lambda *args: None)
    monkeypatch.setattr(kernels, "_KERNELS", {})  # uncompiled: no later test may find them
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in [(5, 6), (6, 5), (4, 4)] * 5 + [(5, 6)] * 3]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    opt = optarena.Adafactor(params, eps=(1.5e-30, 1.5e-3), fused=True)  # kernels of this test's own
    group = opt.param_groups[0]
    consts = {k: v for k, v in group.items() if k not in ("params", "lr")}
    request = plan.Request(opt, ("key",), consts, kernels.StepValues(group["lr"], None, None, None, None), flat=False,
                           chunks=(4, 1))
    fused_plan = plan.make_plan(request, params, [opt.state_for(p, group) for p in params])
    calls = [call.indices for bucket in fused_plan.buckets for call in bucket.calls]
    assert sorted(i for idx in calls for i in idx) == list(range(len(params)))
    assert all(len({params[i].shape for i in idx}) == 1 for idx in calls)
    assert sorted(len(idx) for idx in calls) == [1, 1, 4, 4, 4, 4]  # 8 of (5, 6): 4 + 4; 4 + 1 of each other


def test_guarded_kernels_are_keyed_by_their_small_trailing_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sizes below STATIC_SIZE in the last two dims (a conv weight's 3×3) are compiled into Adafactor's kernels. Each
    combination gets kernels of its own: in one shared kernel, a model with more combinations than dynamo's
    recompile limit would fail to compile (fullgraph) and fall back to foreach. The results still equal the loop's."""
    monkeypatch.setattr(plan, "SMALL_TENSOR", 16)  # chunked, not packed
    shapes = [(20, 2, 3), (20, 3, 3), (20, 3, 5), (20, 3, 3)]
    gen = torch.Generator().manual_seed(0)
    loop_params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    fused_params = [torch.nn.Parameter(p.detach().clone()) for p in loop_params]
    kwargs = dict(eps=(2.5e-30, 1.5e-3), beta1=0.5)  # kernels of this test's own
    loop = optarena.Adafactor(loop_params, foreach=False, **kwargs)
    fused = optarena.Adafactor(fused_params, fused=True, **kwargs)
    # (monkeypatch would delete the config entry on undo: it is not in the module's __dict__)
    with torch._dynamo.config.patch(recompile_limit=2), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback to foreach (which warns so)
        for step in range(3):
            set_grads(loop_params, step)
            set_grads(fused_params, step)
            loop.step()
            fused.step()
    assert fused._fused_plans and not fused._fused_failures
    for a, b in zip(fused_params, loop_params):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)


def test_guarded_kernels_keep_only_their_shape_guards(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adafactor's kernels drop the guards that their key pins (constants, closures, globals) but keep those on
    shapes: one kernel (2-D, no small sizes, chunks of one) first compiled for a square matrix, where duck sizing
    made its two sizes one, must compile again for the others, and every result must equal the loop's."""
    monkeypatch.setattr(plan, "SMALL_TENSOR", 16)  # chunked, not packed
    shapes = [(24, 24), (24, 40), (40, 24)]
    gen = torch.Generator().manual_seed(0)
    loop_params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    fused_params = [torch.nn.Parameter(p.detach().clone()) for p in loop_params]
    kwargs = dict(eps=(3.5e-30, 1.5e-3))  # kernels of this test's own
    loop = optarena.Adafactor(loop_params, foreach=False, **kwargs)
    fused = optarena.Adafactor(fused_params, fused=True, **kwargs)
    kept = []  # per compiled graph, which of its guards were kept
    real_filter = codegen.shape_guards_only

    def recording_filter(guards: list) -> list[bool]:
        kept.append(real_filter(guards))
        return kept[-1]

    monkeypatch.setattr(codegen, "shape_guards_only", recording_filter)
    for step in range(3):
        set_grads(loop_params, step)
        set_grads(fused_params, step)
        loop.step()
        fused.step()
    (fused_plan,) = fused._fused_plans.values()
    assert len({id(call.kernel) for bucket in fused_plan.buckets for call in bucket.calls}) == 1
    assert len(kept) >= 2  # compiled for the square matrix and again for the others
    assert all(0 < sum(k) < len(k) for k in kept)  # some guards dropped, some kept
    for a, b in zip(fused_params, loop_params):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)


def test_small_tensors_with_the_same_last_two_dims_share_one_pack() -> None:
    """Adafactor packs small tensors of any shape with the same last two dims (conv weights of several channel
    counts; vectors of any length, with 0-d and empty tensors) end to end into one kernel call. Their RMS(θ), RMS of
    the update and step sizes stay per tensor: the tensors' scales differ by up to 10⁴, so values mixed between them
    would show against the per-tensor loop. Empty tensors take the loop. (Packs with momentum: test_fused_equals_loop's
    adafactor-momentum; its kernels here would cost ~15 s of compiling.)"""
    shapes = [(0, 3, 3), (4, 2, 3, 3), (3, 3, 3), (2, 5, 3, 3), (0,), (7,), (), (16,), (5,), (2, 1, 1), (6, 4, 1, 1)]
    scales = [1.0, 1.0, 1e-2, 30.0, 1.0, 1e-3, 5.0, 0.1, 40.0, 1e-2, 3.0]
    gen = torch.Generator().manual_seed(0)
    loop_params = [torch.nn.Parameter(torch.randn(s, generator=gen) * c) for s, c in zip(shapes, scales)]
    fused_params = [torch.nn.Parameter(p.detach().clone()) for p in loop_params]
    kwargs = dict(eps=(3.5e-30, 1e-3), weight_decay=0.1)  # kernels of this test's own
    loop = optarena.Adafactor(loop_params, foreach=False, **kwargs)
    fused = optarena.Adafactor(fused_params, fused=True, **kwargs)
    for step in range(STEPS):
        gen = torch.Generator().manual_seed(100 + step)
        for a, b, c in zip(loop_params, fused_params, scales):
            a.grad = torch.randn(a.shape, generator=gen) * c
            b.grad = a.grad.clone()
        loop.step()
        fused.step()
        for i, (a, b) in enumerate(zip(loop_params, fused_params)):
            torch.testing.assert_close(b, a, rtol=RTOL, atol=ATOL, msg=lambda m, s=step, i=i: f"{shapes[i]}, {s}: {m}")
            for key, value in loop.state[a].items():
                torch.testing.assert_close(fused.state[b][key], value, rtol=RTOL, atol=ATOL)
    (fused_plan,) = fused._fused_plans.values()
    packs = sorted(tuple(call.pack.flat_param.shape[1:]) for bucket in fused_plan.buckets for call in bucket.calls)
    assert packs == [(), (1, 1), (3, 3)]  # one call each; nothing chunked
    assert [shapes[i] for i in fused_plan.eager] == [(0, 3, 3), (0,)]


@pytest.mark.parametrize("name", ["Lion", "Adan"])
def test_flat_kernels_pack_only_tensors_below_the_optimizers_limit(name: str) -> None:
    """A pack copies its members' gradients and parameters in and out: an elementwise algorithm packs only tensors
    below its ``fused_packed_below`` and steps the larger small ones in place, in chunks, through the large tensors'
    kernels (compiled on large stand-ins: parallel loops). Both step as the loop does."""
    cls = getattr(optarena, name)
    limit = info_for(cls).fused_packed_below
    shapes = [(limit - 1,), (3, 5), (limit,), (2, limit // 2 + 3)]
    gen = torch.Generator().manual_seed(0)
    loop_params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    fused_params = [torch.nn.Parameter(p.detach().clone()) for p in loop_params]
    loop, fused = cls(loop_params, foreach=False), cls(fused_params, fused=True)
    for step in range(3):
        set_grads(loop_params, step)
        set_grads(fused_params, step)
        loop.step()
        fused.step()
    for a, b in zip(loop_params, fused_params):
        torch.testing.assert_close(b, a, rtol=RTOL, atol=ATOL)
    (fused_plan,) = fused._fused_plans.values()
    calls = [call for bucket in fused_plan.buckets for call in bucket.calls]
    assert sorted(i for call in calls if call.pack is not None for i in call.indices) == [0, 1]
    assert sorted(i for call in calls if call.pack is None for i in call.indices) == [2, 3]
    assert [call.small for call in calls if call.pack is not None] == [True]
    assert not any(call.small for call in calls if call.pack is None)


def test_a_parameter_re_pointed_to_a_smaller_view_at_the_same_address_is_refused() -> None:
    """``p.data = p.data[:n]`` keeps the address: the plan made for the old size must not serve (its kernel would
    read past the new gradient and write past the parameter), and the stale state is named."""
    p = torch.nn.Parameter(torch.randn(40000))
    opt = optarena.Lion([p], lr=1e-2, fused=True)
    p.grad = torch.randn(40000)
    opt.step()
    whole = p.data
    p.data = whole[:20000]
    tail = whole[20000:].clone()
    p.grad = torch.randn(20000)
    with pytest.raises(ValueError, match=r"state .exp_avg. of a parameter of shape \(20000,\) has shape \(40000,\)"):
        opt.step()
    assert torch.equal(whole[20000:], tail)


def test_kernels_mixing_fp32_and_bf16_are_vectorised_at_the_bf16_width(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inductor alone vectorises this kernel at float32's width, since one of its loops (the float32 parameter
    copied back) has no bf16 tensor; its bf16 loads and stores are then half-width masked ones, which cost more than
    the bytes they save. Under ``low_precision_tiling`` every loop takes bf16's width."""
    from torch._inductor import cpu_vec_isa
    from torch._inductor.codegen import cpp

    isa = cpu_vec_isa.pick_vec_isa()
    if not isa:
        pytest.skip("inductor finds no vector instruction set on this CPU")
    widths: list[int] = []
    select_tiling = cpp.TilingSelect.select_tiling

    def recorded(self, fn_list, var_sizes_list):
        factors, indices, stats = select_tiling(self, fn_list, var_sizes_list)
        widths.extend(factors)
        return factors, indices, stats

    monkeypatch.setattr(cpp.TilingSelect, "select_tiling", recorded)

    def lion_like(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor) -> None:
        m_fp32 = m.float()
        p.add_(torch.sign(0.9 * m_fp32 + 0.1 * g), alpha=-1e-3)
        m.copy_(m_fp32 + 0.01 * (g - m_fp32))

    def compile_and_run(name: str) -> list[int]:
        widths.clear()
        fn = with_own_code(lion_like, name)
        p, g, m = torch.randn(1000), torch.randn(1000), torch.randn(1000).bfloat16()
        torch.compile(fn, fullgraph=True)(p, g, m)
        return list(widths)

    with torch._inductor.config.patch(force_disable_caches=True):
        plain = compile_and_run("lion_like_plain")
        with codegen.low_precision_tiling():
            adjusted = compile_and_run("lion_like_adjusted")
    assert plain == [isa.nelements(torch.float32)]
    assert adjusted == [isa.nelements(torch.bfloat16)]
    assert cpp.TilingSelect.select_tiling is recorded  # restored on exit


def test_reused_plan_follows_what_changes_between_steps() -> None:
    """The fused step keeps its views between steps; each kind of replacement must still reach the kernel."""
    loop_params, fused_params = make_params(), make_params()
    loop = optarena.Adan(loop_params, lr=1e-2, weight_decay=0.02, foreach=False)
    fused = optarena.Adan(fused_params, lr=1e-2, weight_decay=0.02, fused=True)

    def replace_param_data(opt, params):
        params[2].data = torch.full_like(params[2], 0.5)

    def reload_state(opt, params):
        opt.load_state_dict(opt.state_dict())  # new state tensors, same values

    def drop_a_grad(opt, params):
        params[5].grad = None

    def restart(opt, params):
        opt.restart()

    def change_betas(opt, params):
        opt.param_groups[0]["betas"] = (0.9, 0.9, 0.9)

    changes = [None, replace_param_data, reload_state, drop_a_grad, restart, change_betas]
    for step, change in enumerate(changes):
        set_grads(loop_params, step)
        set_grads(fused_params, step)
        if change is not None:
            change(loop, loop_params)
            change(fused, fused_params)
        loop.step()
        fused.step()
        for a, b in zip(loop_params, fused_params):
            name = getattr(change, "__name__", "the first step")
            torch.testing.assert_close(b, a, rtol=RTOL, atol=ATOL, msg=lambda m, n=name: f"after {n}: {m}")
            for key, value in loop.state[a].items():
                torch.testing.assert_close(fused.state[b][key], value, rtol=RTOL, atol=ATOL)
        sync(fused, fused_params, loop, loop_params)


def test_no_step_temporaries_larger_than_the_largest_param(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing is allocated per step; the packs' scratch buffers, kept between steps, hold at most PACK_ELEMENTS
    elements each (or one larger tensor) however many small tensors there are."""
    monkeypatch.setattr(pack, "PACK_ELEMENTS", 40)  # the 268 small elements of make_params make several packs
    params = make_params()
    opt = optarena.Lion(params, lr=1e-3, fused=True)
    set_grads(params, 0)
    opt.step()
    largest = max(p.numel() * p.element_size() for p in params)
    assert peak_extra_bytes(opt.step) <= largest
    assert 0 < opt.fused_scratch_bytes <= 2 * 90 * 4  # the 3×5×6 tensor is a pack of its own


def test_stored_values_are_kept_in_inductors_own_buffer() -> None:
    """``stored`` makes inductor write per-row values once and read them back in the element loop (pointwise, they
    would be recomputed for every element: nothing allocated). Its opaque op takes inductor's buffer in place: one
    buffer of the values per call (an op returning a copy allocated a second one)."""

    def scaled_rows(x: torch.Tensor, out: torch.Tensor) -> None:
        (factors,) = ops.stored([x[:, :1].rsqrt()])
        out.copy_(x * factors)

    compiled = torch.compile(scaled_rows, fullgraph=True, dynamic=False)
    x, out = torch.rand(256, 96) + 1, torch.empty(256, 96)
    compiled(x, out)
    torch.testing.assert_close(out, x * x[:, :1].rsqrt())
    assert peak_extra_bytes(lambda: compiled(x, out)) == 256 * 4


@pytest.mark.parametrize("case", ["adan", "lion", "adafactor-momentum"])
def test_packs_follow_diverging_step_counts_and_path_changes(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small tensors are stepped in packs that share one step count. A parameter that misses a step, or steps on
    the other paths, must end up in a pack of its own count, and its state must stay its own."""
    monkeypatch.setattr(pack, "PACK_ELEMENTS", 40)
    loop_params, fused_params = make_params(), make_params()
    loop = build(case, loop_params, foreach=False)
    fused = build(case, fused_params, fused=True)

    def drop_grads(params):
        params[1].grad = params[6].grad = params[16].grad = None

    def foreach_path(params):
        fused.param_groups[0]["fused"] = False
        params[7].grad = None

    def fused_path(params):
        fused.param_groups[0]["fused"] = True

    for step, change in enumerate([None, drop_grads, None, foreach_path, fused_path, None]):
        set_grads(loop_params, step)
        set_grads(fused_params, step)
        if change is not None:
            change(loop_params)
            change(fused_params)
        loop.step()
        fused.step()
        for a, b in zip(loop_params, fused_params):
            torch.testing.assert_close(b, a, rtol=RTOL, atol=ATOL, msg=lambda m, s=step: f"step {s}: {m}")
            for key, value in loop.state[a].items():
                torch.testing.assert_close(fused.state[b][key], value, rtol=RTOL, atol=ATOL)
        sync(fused, fused_params, loop, loop_params)


def test_packed_state_is_saved_once() -> None:
    """Packed state entries are views of shared buffers: a checkpoint must hold each element once."""
    sizes = {}
    for path in (dict(foreach=False), dict(fused=True)):
        params = make_params()
        opt = optarena.AdaX(params, lr=1e-2, **path)
        set_grads(params, 0)
        opt.step()
        buffer = io.BytesIO()
        torch.save(opt.state_dict(), buffer)
        sizes[str(path)] = buffer.tell()
    assert sizes["{'fused': True}"] <= sizes["{'foreach': False}"] * 1.05


def test_compile_failure_falls_back_to_foreach_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel that fails to compile sends its optimizer to the foreach path, with one warning; the failure is
    the kernel's, not the process's: another optimizer still compiles its own kernels, and warns for itself."""
    real_compile = torch.compile

    def broken(*args, **kwargs):
        def fail(*a, **k):
            raise RuntimeError("no compiler here")
        return fail

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(kernels, "_KERNELS", {})
    fused_params, ref_params = make_params(), make_params()
    fused = optarena.RLion(fused_params, lr=1e-2, fused=True)
    ref = optarena.RLion(ref_params, lr=1e-2, foreach=True)
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        set_grads(fused_params, 0)
        fused.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        set_grads(fused_params, 1)
        fused.step()
    for step in range(2):
        set_grads(ref_params, step)
        ref.step()
    for a, b in zip(ref_params, fused_params):
        assert torch.equal(a, b)
    with pytest.warns(RuntimeWarning, match="no compiler here"):  # the same kernel, another optimizer
        other = optarena.RLion(make_params(), lr=1e-2, fused=True)
        set_grads(other.param_groups[0]["params"], 0)
        other.step()
    monkeypatch.setattr(torch, "compile", real_compile)
    lion = optarena.Lion(make_params(), lr=1e-2, fused=True)  # other kernels compile
    set_grads(lion.param_groups[0]["params"], 0)
    lion.step()
    assert lion._fused_plans and not lion._fused_failures
