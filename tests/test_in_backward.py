"""``optarena.step_in_backward``: each parameter steps inside backward, with the result of the usual step."""

from __future__ import annotations

import copy
import gc

import pytest
import torch
from torch import nn

import optarena

try:
    from cases import CASES, build
except ImportError:  # tests/ is a package
    from tests.cases import CASES, build

#: Every case whose step needs nothing but each parameter's own gradient.
PER_PARAMETER = [c for c in CASES if c != "adan-clip-noprox"]


def model_and_data(seed: int = 0) -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 3))
    data = [(torch.randn(8, 6, generator=gen), torch.randn(8, 3, generator=gen)) for _ in range(10)]
    return model, data


def loss_of(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def usual(model: nn.Module, opt: torch.optim.Optimizer, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    loss_of(model, batch).backward()
    opt.step()
    opt.zero_grad()


def assert_same(a: nn.Module, b: nn.Module) -> None:
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("case", PER_PARAMETER)
@pytest.mark.parametrize("maximize", [False, True])
def test_same_parameters_as_the_usual_step_bitwise(case: str, maximize: bool) -> None:
    model, data = model_and_data()
    twin = copy.deepcopy(model)
    ref = build(case, model.parameters(), foreach=False, maximize=maximize)
    opt = build(case, twin.parameters(), foreach=False, maximize=maximize)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref, step_size=3, gamma=0.5)
    handle = optarena.step_in_backward(twin, opt)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    for batch in data:
        usual(model, ref, batch)
        ref_sched.step()
        loss_of(twin, batch).backward()
        assert all(p.grad is None for p in twin.parameters())  # every gradient was freed after its step
        sched.step()
    handle.remove()
    assert_same(model, twin)
    for p, q in zip(model.parameters(), twin.parameters()):
        for key, value in ref.state[p].items():
            assert torch.equal(value, opt.state[q][key]), key


def test_checkpoint_resume_and_remove() -> None:
    model, data = model_and_data()
    twin = copy.deepcopy(model)
    ref = optarena.Adan(model.parameters(), lr=1e-2, weight_decay=0.02, foreach=False)
    opt = optarena.Adan(twin.parameters(), lr=1e-2, weight_decay=0.02, foreach=False)
    handle = optarena.step_in_backward(twin.parameters(), opt)
    for batch in data[:4]:
        usual(model, ref, batch)
        loss_of(twin, batch).backward()
    saved = copy.deepcopy(opt.state_dict())
    handle.remove()
    fresh = optarena.Adan(twin.parameters(), lr=1.0, weight_decay=0.02, foreach=False)
    fresh.load_state_dict(saved)  # replaces the group dicts: the hooks must find the new ones
    with optarena.step_in_backward(twin, fresh):
        for batch in data[4:7]:
            usual(model, ref, batch)
            loss_of(twin, batch).backward()
    assert_same(model, twin)
    # removed: gradients accumulate again and step() steps them
    loss_of(twin, data[7]).backward()
    assert all(p.grad is not None for p in twin.parameters())
    usual(model, ref, data[7])
    fresh.step()
    assert_same(model, twin)


def test_fused_path_matches_its_usual_step() -> None:
    model, data = model_and_data()
    twin = copy.deepcopy(model)
    ref = optarena.Lion(model.parameters(), lr=1e-3, weight_decay=0.1, fused=True)
    opt = optarena.Lion(twin.parameters(), lr=1e-3, weight_decay=0.1, fused=True)
    optarena.step_in_backward(twin, opt)
    for batch in data[:3]:
        usual(model, ref, batch)
        loss_of(twin, batch).backward()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-6)


def test_refusals_name_the_reason() -> None:
    model, _ = model_and_data()
    lion = optarena.Lion(model.parameters())
    wrapped = optarena.Lookahead(optarena.Lion(model.parameters()))
    copied = copy.deepcopy(wrapped)
    cases = [
        (optarena.GradientAccumulation(optarena.Lion(model.parameters()), 2), TypeError,
         "sums the gradients of several backward passes"),
        (wrapped.base, TypeError, "the base of a Lookahead, whose step\\(\\) would never run"),  # undetected once
        (copied.base, TypeError, "the base of a Lookahead"),
        (optarena.LayerAdaptation(optarena.Lion(model.parameters())), TypeError, "needs the whole update"),
        (optarena.Lookahead(optarena.Lion(model.parameters())), TypeError, "counts step"),
        (optarena.Adan(model.parameters(), max_grad_norm=1.0), ValueError, "max_grad_norm=1.0.*global norm"),
        (optarena.Lion(model.parameters(), skip_nonfinite=True), ValueError, "skip_nonfinite=True"),
        (torch.optim.SGD(model.parameters(), lr=0.1), TypeError, "got SGD"),
    ]
    for opt, error, message in cases:
        with pytest.raises(error, match=message):
            optarena.step_in_backward(model, opt)
    handle = optarena.step_in_backward(model, lion)
    with pytest.raises(ValueError, match="already steps inside backward"):
        optarena.step_in_backward(model, lion)
    handle.remove()
    optarena.step_in_backward(model, lion).remove()  # possible again after remove()
    with pytest.raises(ValueError, match="none of the given parameters"):
        optarena.step_in_backward(nn.Linear(2, 2), lion)
    base = wrapped.base
    del wrapped, copied, cases
    gc.collect()
    optarena.step_in_backward(model, base).remove()  # its wrapper is gone


@pytest.mark.parametrize("name", ["lion", "adan"])
@pytest.mark.parametrize("state_dtype, param_dtype", [(None, torch.bfloat16), ("int8", torch.float32),
                                                      ("int8", torch.bfloat16)])
def test_low_precision_params_and_8_bit_state_match_the_usual_step(name: str, state_dtype: str | None,
                                                                   param_dtype: torch.dtype) -> None:
    """bf16 parameters (fp32 math) and 8-bit state (a 64×96 weight is quantised, the rest stays fp32) give inside
    backward what the usual step gives, bitwise, and a state_dict taken inside backward loads into the usual loop."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 96), nn.GELU(), nn.Linear(96, 64), nn.Linear(64, 3)).to(param_dtype)
    _, data = model_and_data()
    twin = copy.deepcopy(model)
    kwargs = dict(lr=1e-3, weight_decay=0.1, foreach=False, state_dtype=state_dtype)
    ref = optarena.create_optimizer(model.parameters(), name, **kwargs)
    opt = optarena.create_optimizer(twin.parameters(), name, **kwargs)
    with optarena.step_in_backward(twin, opt):
        for batch in data[:6]:
            usual(model, ref, [t.to(param_dtype) for t in batch])
            loss_of(twin, [t.to(param_dtype) for t in batch]).backward()
    assert_same(model, twin)
    if state_dtype == "int8":
        assert opt.state[twin[2].weight]["exp_avg"].dtype == torch.int8
    resumed = optarena.create_optimizer(twin.parameters(), name, **kwargs)
    resumed.load_state_dict(opt.state_dict())
    for batch in data[6:]:
        usual(model, ref, [t.to(param_dtype) for t in batch])
        usual(twin, resumed, [t.to(param_dtype) for t in batch])
    assert_same(model, twin)


@pytest.mark.parametrize("bucket", [1, 40, 100, 10_000])
def test_small_parameters_step_in_buckets_with_the_same_result(bucket: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parameters under BUCKET_ELEMENTS wait for their bucket to fill or for backward to end; larger ones step at
    once. Every gradient is freed by the end of backward and the result is the usual step's, bitwise."""
    from optarena import in_backward

    monkeypatch.setattr(in_backward, "BUCKET_ELEMENTS", bucket)
    model, data = model_and_data()
    twin = copy.deepcopy(model)
    ref = optarena.Adan(model.parameters(), lr=1e-2, weight_decay=0.02, foreach=False)
    opt = optarena.Adan(twin.parameters(), lr=1e-2, weight_decay=0.02, foreach=True)
    calls: list[list[int]] = []
    stepped = opt.step_parameters
    monkeypatch.setattr(opt, "step_parameters", lambda ps, g: (calls.append([p.numel() for p in ps]), stepped(ps, g)))
    with optarena.step_in_backward(twin, opt):
        for batch in data:
            usual(model, ref, batch)
            loss_of(twin, batch).backward()
            assert all(p.grad is None for p in twin.parameters())
    assert_same(model, twin)
    sizes = [p.numel() for p in twin.parameters()]
    assert sorted(n for call in calls[:len(calls) // len(data)] for n in call) == sorted(sizes)  # each once a step
    for call in calls:  # a call holds one large tensor, or small ones that fit in the bucket
        assert len(call) == 1 or sum(call) <= bucket
    assert any(len(call) > 1 for call in calls) == (bucket > 1)  # with 1, every tensor steps alone


class FailsOnce(torch.autograd.Function):
    """Identity whose backward raises while ``armed``."""

    armed = False

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        if FailsOnce.armed:
            raise RuntimeError("backward failed")
        return grad


def test_a_backward_that_raises_leaves_its_waiting_gradients_as_the_usual_loop_would() -> None:
    """The last layer's gradients wait for the end of a backward pass that then raises: they stay in .grad, are
    added to by the next pass and stepped at its end, as backward(); step() would after the failed backward()."""
    torch.manual_seed(0)
    layers = nn.ModuleList([nn.Linear(6, 16), nn.Linear(16, 3)])
    model = nn.Sequential(layers[0], nn.GELU(), layers[1])
    twin = copy.deepcopy(model)
    _, data = model_and_data()

    def loss(m: nn.Sequential, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(m[2](FailsOnce.apply(m[1](m[0](x)))), y)

    ref = optarena.Lion(model.parameters(), lr=1e-3, foreach=False)
    opt = optarena.Lion(twin.parameters(), lr=1e-3, foreach=False)
    with optarena.step_in_backward(twin, opt):
        for i, batch in enumerate(data[:5]):
            FailsOnce.armed = i == 1
            for m, backward_then_step in ((model, True), (twin, False)):
                try:
                    loss(m, batch).backward()
                except RuntimeError:
                    continue  # the failed pass: no step, gradients left as they are
                if backward_then_step:
                    ref.step()
                    ref.zero_grad()
            FailsOnce.armed = False
            assert i == 1 or all(p.grad is None for p in twin.parameters())
    assert_same(model, twin)


def test_fused_buckets_that_change_membership_step_like_the_usual_fused_step() -> None:
    """Inside backward every bucket is a fused plan of its own; when one parameter moves between buckets (a branch
    that does not run every step), the plan that packed it with others must not survive with diverged step counts
    (Adafactor's kernels read one count per pack)."""
    gen = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(*shape, generator=gen) for shape in ((4, 8), (4, 8), (3, 5)))
    ours = [nn.Parameter(t.clone()) for t in (a, b, c)]
    usual = [nn.Parameter(t.clone()) for t in (a, b, c)]
    opt = optarena.Adafactor(ours, fused=True)
    ref = optarena.Adafactor(usual, fused=True)
    for members in ((1, 0), (2, 0), (1, 0), (1, 0), (2, 0)):
        grads = {i: torch.randn(ours[i].shape, generator=gen) for i in members}
        for i, g in grads.items():
            ours[i].grad, usual[i].grad = g.clone(), g.clone()
        opt.step_parameters([ours[i] for i in members], opt.param_groups[0])
        ref.step()
        for p in (*ours, *usual):
            p.grad = None
    for p, q in zip(ours, usual):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7)
    assert len(opt._fused_plans) == 1  # the plans of earlier buckets that shared a parameter are gone


def test_step_parameters_refuses_what_it_cannot_step() -> None:
    p, q = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
    opt = optarena.Lion([p])
    for params, message in (([], "params is empty"), ([q], r"shape \(2,\) is not in the given group"),
                            ([p], r"shape \(3,\) has no gradient")):
        with pytest.raises(ValueError, match=message):
            opt.step_parameters(params, opt.param_groups[0])


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_steps_every_parameter_like_the_usual_loop(reentrant: bool) -> None:
    """A reentrant checkpoint runs the segment's backward as a nested pass: its parameters complete there, the
    others in the outer pass. The nested pass once made the outer one's waiting parameters look abandoned: the head
    never stepped and its gradient grew."""
    from torch.utils.checkpoint import checkpoint

    model, data = model_and_data()
    twin = copy.deepcopy(model)

    def loss(m: nn.Sequential, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        inner = checkpoint(lambda t: m[2](m[1](t)), m[0](x), use_reentrant=reentrant)  # its input requires grad
        return nn.functional.mse_loss(m[3](inner), y)

    ref = optarena.Lion(model.parameters(), lr=1e-3, foreach=False)
    opt = optarena.Lion(twin.parameters(), lr=1e-3, foreach=False)
    with optarena.step_in_backward(twin, opt):
        for batch in data[:4]:
            loss(model, batch).backward()
            ref.step()
            ref.zero_grad()
            loss(twin, batch).backward()
            assert all(p.grad is None for p in twin.parameters())
    assert_same(model, twin)


def test_parameters_unfrozen_or_added_later_step_from_their_first_gradient() -> None:
    """The hooks are made for the parameters that require grad then; one unfrozen later, or added to the model
    and the optimizer later, steps from the pass that gives it its first gradient (it once never stepped, its
    gradient growing). A parameter of the optimizer outside the given ones is named in a warning."""
    model, data = model_and_data()
    model[0].weight.requires_grad_(False)
    twin = copy.deepcopy(model)
    frozen_at_first = model[0].weight.detach().clone()
    extra, twin_extra = nn.Parameter(torch.randn(3)), None
    ref = optarena.Lion(model.parameters(), lr=1e-3, foreach=False)
    opt = optarena.Lion(twin.parameters(), lr=1e-3, foreach=False)

    def loss(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], bias: torch.Tensor | None) -> torch.Tensor:
        out = m(batch[0])
        return nn.functional.mse_loss(out if bias is None else out + bias, batch[1])

    with optarena.step_in_backward(twin, opt):
        for i, batch in enumerate(data[:6]):
            if i == 2:
                for m in (model, twin):
                    m[0].weight.requires_grad_(True)
            if i == 4:  # a new parameter in the model and the optimizer
                twin_extra = nn.Parameter(extra.detach().clone())
                model.register_parameter("extra", extra)
                twin.register_parameter("extra", twin_extra)
                ref.add_param_group({"params": [extra]})
                opt.add_param_group({"params": [twin_extra]})
            loss(model, batch, extra if i >= 4 else None).backward()
            ref.step()
            ref.zero_grad()
            loss(twin, batch, twin_extra).backward()
            assert all(p.grad is None for p in twin.parameters())
        assert_same(model, twin)
        assert not torch.equal(twin[0].weight, frozen_at_first)
        outsider = nn.Parameter(torch.zeros(3))
        opt.add_param_group({"params": [outsider]})
        with pytest.warns(RuntimeWarning, match=r"1 parameter.* added to the Lion \(shapes \(3,\)\) are not among"):
            loss(twin, data[6], twin_extra + outsider).backward()
    assert outsider.grad is not None


class RaisesInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("backward failed")


def test_what_a_failed_pass_left_waiting_steps_only_once_the_next_pass_added_to_it() -> None:
    """A parameter a failed pass left waiting shares a bucket with the next pass's: a bucket that fills before that
    pass reaches it must not step it (autograd still needs it, and its gradient lacks this pass's part)."""
    size = 100_000  # three of them overflow one bucket (BUCKET_ELEMENTS, 256K)

    def run(in_backward: bool) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(0)
        a, b, c = (nn.Parameter(torch.randn(size, generator=gen)) for _ in range(3))
        opt = optarena.Lion([a, b, c], lr=1e-3, foreach=False)
        handle = optarena.step_in_backward([a, b, c], opt) if in_backward else None
        with pytest.raises(RuntimeError, match="backward failed"):  # a's gradient completes, then the pass fails
            (RaisesInBackward.apply(c.sum()) + (a * a).sum()).backward()
        ((a * a).sum() + (b * b).sum() + (c * c).sum()).backward()  # a's hook comes last here
        if handle is None:
            opt.step()
        return [a, b, c]

    for want, got in zip(run(False), run(True)):
        assert torch.equal(want, got)


def test_a_wrapper_made_after_the_hooks_is_refused_before_anything_steps() -> None:
    """One wrapped after the hooks were made is refused by the next backward pass, before anything steps."""
    for wrap in (lambda o: optarena.GradientAccumulation(o, 2), optarena.Lookahead, optarena.LayerAdaptation):
        model, data = model_and_data()
        before, opt = copy.deepcopy(model), optarena.Lion(model.parameters(), lr=1e-3)
        handle, wrapper = optarena.step_in_backward(model, opt), wrap(opt)
        with pytest.raises(TypeError, match=f"base of a {type(wrapper).__name__} made after step_in_backward"):
            loss_of(model, data[0]).backward()
        assert_same(model, before)
        handle.remove()


@pytest.mark.parametrize("then", ["zero_grad", "load_state_dict"])
def test_a_failed_pass_then_zero_grad_or_load_state_dict_steps_as_the_usual_loop(then: str) -> None:
    """What a failed pass left waiting steps as step() would: not at all once cleared (the next pass need not reach
    it), with the loaded hyper-parameters once a checkpoint replaced the groups."""
    _, data = model_and_data()

    def run(in_backward: bool) -> nn.Sequential:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 3))
        opt = optarena.Lion(model.parameters(), lr=1e-3, foreach=False)
        saved = copy.deepcopy(opt.state_dict())
        saved["param_groups"][0]["lr"] = 0.5  # a checkpoint's other lr
        handle = optarena.step_in_backward(model, opt) if in_backward else None
        x, y = data[0]
        with pytest.raises(RuntimeError, match="backward failed"):  # the last layer's gradients complete first
            nn.functional.mse_loss(model[2](RaisesInBackward.apply(model[1](model[0](x)))), y).backward()
        if then == "zero_grad":
            opt.zero_grad()
            model[1](model[0](x)).square().mean().backward()  # the last layer unused
        else:
            opt.load_state_dict(saved)
            loss_of(model, data[1]).backward()
        if handle is None:
            opt.step()
        return model

    assert_same(run(False), run(True))


def test_param_groups_are_taken_and_other_items_refused_by_type() -> None:
    """Param groups give their parameters; anything else is refused by its type, not by an AttributeError."""
    model, data = model_and_data()
    twin, ref = copy.deepcopy(model), optarena.Lion(model.parameters(), lr=1e-3, foreach=False)
    opt = optarena.Lion([{"params": twin[0].parameters()}, {"params": twin[3].weight}, {"params": [twin[3].bias]},
                         {"params": twin[1].parameters()}], lr=1e-3, foreach=False)
    for bad, name in (([twin], "Sequential"), ("abc", "str"), ([twin[0].weight, 3], "int")):
        with pytest.raises(TypeError, match=f"an iterable of parameters .*holding {name}$"):
            optarena.step_in_backward(bad, opt)
    with optarena.step_in_backward(opt.param_groups, opt):
        for batch in data[:3]:
            usual(model, ref, batch)
            loss_of(twin, batch).backward()
    assert_same(model, twin)
