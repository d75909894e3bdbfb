"""What every wrapper chain keeps of torch.optim's contract: copies and pickles that step, checkpoints refused whole
(another chain's, another model's) before anything changes, skipped steps that stay skipped, and clear refusals of
compositions that cannot work."""

from __future__ import annotations

import copy
import pickle

import pytest
import schedulefree
import torch
from torch import nn

import optarena
from optarena.validation import check_positive_int
from optarena.wrappers import GradientAccumulation, LayerAdaptation, Lazy, Lookahead
from optarena.wrappers._base import Setting

CHAINS = {
    "lookahead(accumulate(lion))": lambda ps: Lookahead(GradientAccumulation(optarena.Lion(ps, lr=1e-2), 2), k=2),
    "accumulate(lookahead(lion))": lambda ps: GradientAccumulation(Lookahead(optarena.Lion(ps, lr=1e-2), k=2), 2),
    "layer_adaptation(lazy(adamw))": lambda ps: LayerAdaptation(Lazy(torch.optim.AdamW(ps, lr=1e-2))),
}


def _params(seed: int = 0) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(6, 4, generator=gen)), nn.Parameter(torch.randn(4, generator=gen))]


def _run(opt: torch.optim.Optimizer, params: list[nn.Parameter], steps: int, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()


@pytest.mark.parametrize("chain", list(CHAINS))
@pytest.mark.parametrize("copier", ["deepcopy", "pickle"])
def test_a_copied_or_pickled_chain_steps_like_the_original(chain: str, copier: str) -> None:
    params = _params()
    opt = CHAINS[chain](params)
    _run(opt, params, 3)
    holder = {"params": params, "opt": opt}  # copied together, as a model and its optimizer are
    twin = copy.deepcopy(holder) if copier == "deepcopy" else pickle.loads(pickle.dumps(holder))
    _run(opt, params, 5, seed=2)
    _run(twin["opt"], twin["params"], 5, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(params, twin["params"]))


def test_a_checkpoint_of_another_chain_is_refused_and_changes_nothing() -> None:
    params = _params()
    saved = Lookahead(GradientAccumulation(optarena.Lion(params, lr=1e-2), 2)).state_dict()
    with pytest.raises(ValueError, match="'gradient_accumulation' state of a wrapper this optimizer does not have"):
        Lookahead(optarena.Lion(params)).load_state_dict(saved)
    with pytest.raises(ValueError, match="'lookahead' state of a wrapper"):
        optarena.Lion(params).load_state_dict(Lookahead(optarena.Lion(params)).state_dict())
    source = GradientAccumulation(optarena.Lion(params, lr=1e-2), 4)
    _run(source, params, 3)
    saved = source.state_dict()
    saved["param_groups"][0]["lr"] = 0.5
    del saved["gradient_accumulation"]["steps"]  # saved before the settings were stored: the constructor's hold
    target = GradientAccumulation(optarena.Lion(params, lr=1e-2), 2)
    with pytest.raises(ValueError, match="after 3 micro-steps of a cycle, which steps=2 cannot continue"):
        target.load_state_dict(saved)
    assert target.param_groups[0]["lr"] == 1e-2 and target.micro_step == 0  # refused before anything changed


def test_wrapper_state_saved_for_another_model_is_refused_by_shape() -> None:
    saved = Lookahead(torch.optim.SGD(nn.Linear(3, 2).parameters(), lr=0.1), k=1).state_dict()
    other = Lookahead(torch.optim.SGD(nn.Linear(2, 3).parameters(), lr=0.1), k=1)
    with pytest.raises(ValueError, match=r"'slow' of parameter 0 has shape \(2, 3\), the parameter \(3, 2\)"):
        other.load_state_dict(saved)
    saved["lookahead"]["state"][7] = saved["lookahead"]["state"][0]
    with pytest.raises(ValueError, match="saved state for parameter 7, but this optimizer has 2 parameters"):
        Lookahead(torch.optim.SGD(nn.Linear(3, 2).parameters(), lr=0.1), k=1).load_state_dict(saved)


@pytest.mark.parametrize("sparse", [False, True])
def test_lazy_rows_are_skipped_with_the_rest_of_a_non_finite_step(sparse: bool) -> None:
    emb, w = nn.Parameter(torch.ones(4, 2)), nn.Parameter(torch.ones(2))
    opt = Lazy(optarena.Lion([emb, w], lr=0.1, skip_nonfinite=True))
    row = torch.tensor([[float("nan"), 1.0]])
    emb.grad = torch.sparse_coo_tensor([[0]], row, (4, 2)) if sparse else torch.cat([row, torch.zeros(3, 2)])
    w.grad = torch.ones(2)
    opt.step()
    assert opt.skipped_steps == 1 and not opt.did_update  # both read through Lazy from the base
    assert torch.equal(emb, torch.ones(4, 2)) and torch.equal(w, torch.ones(2))


def test_a_skipped_step_is_not_one_of_lookaheads_inner_steps() -> None:
    params = _params()
    opt = Lookahead(optarena.Lion(params, lr=1e-2, skip_nonfinite=True), k=2)
    for p in params:
        p.grad = torch.full(p.shape, float("inf"))
    opt.step()
    assert not opt.did_update and opt.inner_steps == 0


def test_public_attributes_of_an_inner_wrapper_are_read_through_the_outer_one() -> None:
    opt = optarena.create_optimizer(_params(), "lookahead_lion", accumulate=3)
    assert isinstance(opt, Lookahead) and opt.micro_step == 0 and opt.skipped_updates == 0
    with pytest.raises(AttributeError, match="'Lookahead' object has no attribute '_private'"):
        opt._private  # noqa: B018


def test_compositions_that_cannot_work_are_refused_with_the_reason() -> None:
    params = _params()
    with pytest.raises(ValueError, match="already wrapped in a GradientAccumulation; wrap once"):
        GradientAccumulation(GradientAccumulation(optarena.Lion(params), 2), 2)
    with pytest.raises(ValueError, match="the base holds a GradientAccumulation; put LayerAdaptation inside it"):
        LayerAdaptation(GradientAccumulation(optarena.Lion(params), 2))
    with pytest.raises(ValueError, match="the base holds a Lookahead"):
        LayerAdaptation(Lookahead(optarena.Lion(params)))
    with pytest.raises(ValueError, match="Invalid exclude: a Linear module"):
        LayerAdaptation(optarena.Lion(params), exclude=nn.Linear(2, 2))
    for wrap in (Lookahead, LayerAdaptation, lambda b: Lookahead(GradientAccumulation(b, 2))):
        with pytest.raises(ValueError, match="AdamWScheduleFree keeps the parameters at an interpolation"):
            wrap(schedulefree.AdamWScheduleFree(params))


@pytest.mark.parametrize("kwargs, message", [
    (dict(lookahead="yes"), "Invalid lookahead: 'yes'"), (dict(lookahead=1), "Invalid lookahead: 1"),
    (dict(lazy="no"), "Invalid lazy: 'no'"), (dict(lazy=2), "Invalid lazy: 2"),
    (dict(layer_adaptation="false"), "Invalid layer_adaptation: 'false'"),
])
def test_the_factory_names_a_bad_wrapper_argument(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        optarena.create_optimizer(nn.Linear(2, 2), "lion", **kwargs)


def test_the_factory_passes_layer_adaptation_arguments_and_reads_one_exempt_name() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    opt = optarena.create_optimizer(model, "adamw", layer_adaptation={"exclude": lambda p: True})
    assert isinstance(opt, LayerAdaptation) and opt._exclude(model[0].weight)
    opt = optarena.create_optimizer(model, "lion", weight_decay=0.1, no_weight_decay="1")  # a name, not characters
    decayed = [p for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]]
    assert len(decayed) == 1 and decayed[0] is model[0].weight


def test_distributed_checkpoints_refuse_a_wrapper_whose_state_they_would_drop(tmp_path) -> None:
    from optarena.integrations.distributed import load_checkpoint, save_checkpoint

    model = nn.Linear(2, 2)
    opt = GradientAccumulation(optarena.Lion(model.parameters()), 3)
    for call in (save_checkpoint, load_checkpoint):
        with pytest.raises(TypeError, match="GradientAccumulation's own state .* is not kept by torch.distributed"):
            call(tmp_path / "ckpt", model, opt)
    assert opt.micro_step == 0


def test_a_copy_made_after_a_scheduler_was_attached_steps_itself_and_pickles() -> None:
    params = _params()
    opt = GradientAccumulation(optarena.Lion(params, lr=1e-2), 4)
    torch.optim.lr_scheduler.StepLR(opt, 1)  # patches opt.step with a reference to opt
    twin = copy.deepcopy(opt)
    twin.step()
    assert (opt.micro_step, twin.micro_step) == (0, 1)
    assert pickle.loads(pickle.dumps(opt)).micro_step == 0
    assert "differentiable" not in twin.defaults  # torch's __setstate__ adds it; the base had dropped it


def test_layer_adaptations_excluded_parameters_follow_a_copy() -> None:
    model = nn.Linear(3, 3)
    opt = LayerAdaptation(torch.optim.AdamW(model.parameters(), lr=0.1), exclude=[model.weight])
    twin_model, twin = copy.deepcopy((model, opt))
    assert twin._exclude(twin_model.weight) and not twin._exclude(twin_model.bias)
    assert pickle.loads(pickle.dumps(opt)) is not None
    LayerAdaptation(torch.optim.AdamW(model.parameters()), exclude=nn.ParameterList([model.weight]))  # accepted


def test_lazy_with_skip_nonfinite_steps_a_sparse_gradient_without_rows() -> None:
    emb = nn.Embedding(5, 2, sparse=True)
    opt = Lazy(optarena.Lion(emb.parameters(), skip_nonfinite=True))
    emb(torch.tensor([], dtype=torch.long)).sum().backward()
    opt.step()
    assert opt.skipped_steps == 0 and opt.did_update


@pytest.mark.parametrize("argument", ["lookahead", "layer_adaptation"])
def test_an_empty_dict_of_wrapper_arguments_still_wraps(argument: str) -> None:
    opt = optarena.create_optimizer(nn.Linear(2, 2), "adamw", **{argument: {}})
    assert isinstance(opt, Lookahead if argument == "lookahead" else LayerAdaptation)
    with pytest.raises(AttributeError, match=f"'{type(opt).__name__}' object has no attribute 'nonexistent'"):
        opt.nonexistent  # noqa: B018


def test_refusals_of_the_last_review() -> None:
    params = _params()
    muon = optarena.create_optimizer(nn.Linear(4, 4), "muon")
    with pytest.raises(ValueError, match="'lookahead' state of a wrapper"):
        muon.load_state_dict({**muon.state_dict(), "lookahead": {"state": {}}})
    with pytest.raises(ValueError, match="Invalid lookahead: 'schedulefree_adamw' keeps the parameters"):
        optarena.create_optimizer(nn.Linear(2, 2), "schedulefree_adamw", lookahead={})
    saved = GradientAccumulation(optarena.Lion(params), 2).state_dict()
    del saved["gradient_accumulation"]["micro_step"]
    with pytest.raises(ValueError, match="its entry lacks micro_step"):
        GradientAccumulation(optarena.Lion(params), 2).load_state_dict(saved)
    opt = GradientAccumulation(optarena.Lion(params), 2)
    del opt._updated  # a property of the wrapper that fails is not answered by the base
    with pytest.raises(AttributeError, match="'GradientAccumulation' object has no attribute 'did_update'"):
        opt.did_update  # noqa: B018


@pytest.mark.parametrize("chain", ["lookahead(accumulate(lion))", "accumulate(lookahead(lion))"])
def test_a_compiled_step_steps_like_the_eager_one(chain: str) -> None:
    """torch.compile(opt.step) dropped the wrappers' counter increments: GradientAccumulation never stepped its
    base (frozen weights) and Lookahead synced at the wrong steps, silently. ("eager": dynamo alone, fast.)"""
    results = []
    for compiled in (False, True):
        params = _params()
        opt = CHAINS[chain](params)
        step = torch.compile(opt.step, backend="eager") if compiled else opt.step
        gen = torch.Generator().manual_seed(1)
        for _ in range(6):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            step()
        results.append(([p.detach().clone() for p in params], opt.did_update, opt.micro_step))
    (eager, *eager_counters), (compiled_params, *compiled_counters) = results
    assert eager_counters == compiled_counters
    assert all(torch.equal(a, b) for a, b in zip(eager, compiled_params))


def test_state_dict_hooks_registered_on_a_wrapper_run() -> None:
    """torch.optim's state_dict hooks on the wrapper were ignored (only the base's own ran)."""
    params = _params()
    opt = Lookahead(GradientAccumulation(optarena.Lion(params, lr=1e-2), 2))
    calls = []
    opt.register_state_dict_pre_hook(lambda o: calls.append(("pre", o)))
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "tag": 1})
    opt.register_load_state_dict_pre_hook(lambda o, sd: {k: v for k, v in sd.items() if k != "tag"})
    opt.register_load_state_dict_post_hook(lambda o: calls.append(("post", o)))
    saved = opt.state_dict()
    assert saved["tag"] == 1 and {"lookahead", "gradient_accumulation"} <= set(saved)
    opt.load_state_dict(saved)  # the pre-hook drops "tag", which no optimizer in the chain would accept
    assert calls == [("pre", opt), ("post", opt)]


def test_loading_something_that_is_not_a_state_dict_names_its_type() -> None:
    with pytest.raises(ValueError, match="Lookahead.load_state_dict: expected a dict .* got NoneType"):
        Lookahead(optarena.Lion(_params())).load_state_dict(None)


def test_a_public_attribute_of_an_inner_wrapper_is_set_where_it_is_read() -> None:
    """opt.steps = 2 on the factory's Lookahead(GradientAccumulation(...)) landed on the Lookahead: it read back 2
    while the accumulation went on with 4."""
    model = nn.Linear(3, 2)
    opt = optarena.create_optimizer(model, "lion", accumulate=4, lookahead={"k": 2})
    opt.steps = 2
    assert opt.base.steps == 2 and "steps" not in vars(opt)
    for _ in range(2):
        model(torch.ones(5, 3)).sum().backward()
        opt.step()
        opt.zero_grad()
    assert opt.did_update and opt.micro_step == 0
    with pytest.raises(ValueError, match="Invalid steps: 0"):
        opt.steps = 0  # the inner wrapper's check applies
    opt.note = "mine"  # an attribute no inner optimizer has stays on the outer one
    assert vars(opt)["note"] == "mine" and not hasattr(opt.base, "note")


def test_a_pickle_made_before_the_settings_became_checked_properties_still_steps() -> None:
    params = _params()
    opt = Lookahead(GradientAccumulation(optarena.Lion(params, lr=1e-2), 2, skip_nonfinite=True), k=3, alpha=0.7)
    holder = pickle.loads(pickle.dumps({"params": params, "opt": opt}))
    for wrapper in (holder["opt"], holder["opt"].base):  # the settings under their public names, as pickled before
        state = wrapper.__dict__
        for name in ("steps", "skip_nonfinite", "k", "alpha", "pullback"):
            if f"_{name}" in state:
                state[name] = state.pop(f"_{name}")
    twin = pickle.loads(pickle.dumps(holder))
    assert (twin["opt"].k, twin["opt"].alpha, twin["opt"].steps, twin["opt"].skip_nonfinite) == (3, 0.7, 2, True)
    _run(opt, params, 6)
    _run(twin["opt"], twin["params"], 6)
    assert all(torch.equal(a, b) for a, b in zip(params, twin["params"]))


def test_a_subclass_that_replaces_a_setting_still_loads_and_warns_once() -> None:
    """settings() names each setting once, and not one a subclass replaced by a plain property (its checkpoint check
    failed with "'property' object has no attribute 'check'"; a redefined Setting was warned about twice)."""

    class FixedK(optarena.Lookahead):
        k = property(lambda self: 2, lambda self, value: None)

    class OwnK(optarena.Lookahead):
        k = Setting("Inner steps per sync.", check_positive_int, int)

    p = [torch.nn.Parameter(torch.zeros(3))]
    fixed = FixedK(optarena.Lion(p))
    fixed.load_state_dict(FixedK(optarena.Lion(p)).state_dict())
    assert fixed.k == 2
    saved = OwnK(optarena.Lion(p), k=3).state_dict()
    with pytest.warns(UserWarning) as caught:
        OwnK(optarena.Lion(p), k=4).load_state_dict(saved)
    assert str(caught[0].message).count("k=3") == 1
