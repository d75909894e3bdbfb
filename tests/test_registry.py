"""The registry, the factory's parameter groups and argument filtering, and the lr translations."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import optarena
from optarena.guidance import lr_range

OWN = ["adafactor", "adan", "adax", "ademamix", "amos", "lion", "rlion"]
CLASSIC = ["adadelta", "adagrad", "adam", "adamax", "adamw", "momentum", "muon", "nadam", "nesterov", "radam",
           "rmsprop", "sgd"]
SCHEDULEFREE = ["schedulefree_adamw", "schedulefree_sgd"]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 4))
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}


def test_every_optimizer_is_registered_with_its_source() -> None:
    assert optarena.list_optimizers() == sorted(OWN + CLASSIC + SCHEDULEFREE + ["musgd"])
    assert optarena.list_optimizers("ultralytics") == ["musgd"]  # a roster name for ultralytics workloads
    assert optarena.list_optimizers("schedulefree") == SCHEDULEFREE
    assert optarena.list_optimizers("optarena") == OWN
    assert optarena.list_optimizers("torch.optim") == sorted(CLASSIC)


@pytest.mark.parametrize("name", OWN + CLASSIC)
def test_factory_builds_each_with_its_default_lr(name: str) -> None:
    info = optarena.get_optimizer_info(name)
    optimizer = optarena.create_optimizer(Net(), name.upper())  # names are case-insensitive
    assert type(optimizer) is info.cls
    assert all(g["lr"] == info.default_lr for g in optimizer.param_groups)
    for key, value in info.fixed_kwargs.items():
        assert optimizer.param_groups[0][key] == value


def test_weight_decay_spares_biases_norms_1d_and_no_weight_decay_names() -> None:
    model = Net()
    optimizer = optarena.create_optimizer(model, "lion", lr=1e-4, weight_decay=0.5)
    decayed, exempt = optimizer.param_groups
    assert decayed["weight_decay"] == 0.5 and exempt["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(model.conv.weight), id(model.fc.weight)}
    assert {id(p) for p in exempt["params"]} == {id(model.conv.bias), id(model.bn.weight), id(model.bn.bias),
                                                   id(model.fc.bias), id(model.pos_embed)}
    extra = optarena.create_optimizer(model, "lion", weight_decay=0.5, no_weight_decay=["fc"])
    assert {id(p) for p in extra.param_groups[0]["params"]} == {id(model.conv.weight)}


def test_plain_tensors_are_split_by_shape_and_group_dicts_pass_through() -> None:
    w, b = torch.zeros(3, 3, requires_grad=True), torch.zeros(3, requires_grad=True)
    optimizer = optarena.create_optimizer([w, b], "adamw", weight_decay=0.1)
    assert [len(g["params"]) for g in optimizer.param_groups] == [1, 1]
    groups = [{"params": [w], "lr": 0.5}, {"params": [b]}]
    optimizer = optarena.create_optimizer(groups, "adamw", lr=1e-3)
    assert [g["lr"] for g in optimizer.param_groups] == [0.5, 1e-3]


def test_portable_arguments_are_dropped_with_a_warning() -> None:
    with pytest.warns(UserWarning) as record:
        optimizer = optarena.create_optimizer(Net(), "sgd", betas=(0.9, 0.99), eps=1e-8)
    assert [str(w.message) for w in record] == [
        "create_optimizer: 'sgd' takes no betas; ignoring betas=(0.9, 0.99)",
        "create_optimizer: 'sgd' takes no eps; ignoring eps=1e-08"]
    assert "betas" not in optimizer.param_groups[0]
    with pytest.warns(UserWarning, match="'lion' takes no momentum"):
        optarena.create_optimizer(Net(), "lion", momentum=0.9)


def test_accepted_arguments_pass_and_fixed_ones_can_be_overridden() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimizer = optarena.create_optimizer(Net(), "momentum", momentum=0.5)
        adan = optarena.create_optimizer(Net(), "adan", betas=(0.9, 0.9, 0.9), max_grad_norm=1.0)
    assert optimizer.param_groups[0]["momentum"] == 0.5
    assert adan.param_groups[0]["betas"] == (0.9, 0.9, 0.9) and adan.defaults["max_grad_norm"] == 1.0


def test_wrong_arguments_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="Invalid betas for 'adan'.*takes 3 betas"):
        optarena.create_optimizer(Net(), "adan", betas=(0.9, 0.99))
    with pytest.raises(ValueError, match=r"Invalid betas for 'lion': 0.9 \(it takes 2 betas\)"):  # not len()'s
        optarena.create_optimizer(Net(), "lion", betas=0.9)
    with pytest.raises(TypeError, match="'lion' does not take the argument 'nesterov'; it takes .*betas"):
        optarena.create_optimizer(Net(), "lion", nesterov=True)
    with pytest.raises(ValueError, match="Invalid lr: -1"):
        optarena.create_optimizer(Net(), "lion", lr=-1)
    # beyond float32 torch's optimizers failed in step() ("cannot be converted to type float") or made weights inf
    for name in ("sgd", "radam", "adamw"):
        with pytest.raises(ValueError, match=r"Invalid lr: 1e\+39 \(must be in"):
            optarena.create_optimizer(Net(), name, lr=1e39)
        with pytest.raises(ValueError, match=r"Invalid weight_decay: 1e\+39 \(must be in"):
            optarena.create_optimizer(Net(), name, weight_decay=1e39)
    # torch's SGD checks momentum < 0 only: a NaN momentum or dampening trained to NaN weights after two steps
    for key in ("momentum", "dampening"):
        for value in (float("nan"), float("inf")):
            with pytest.raises(ValueError, match=f"Invalid {key}: {value}"):
                optarena.create_optimizer(Net(), "sgd", **{key: value})


def test_unknown_name_lists_the_known_ones_and_the_closest_match() -> None:
    with pytest.raises(ValueError, match=r"Unknown optimizer 'lino'\. Did you mean 'lion'\? Known optimizers: "
                                         r"adadelta, .*adamw.*, sgd"):
        optarena.create_optimizer(Net(), "lino")


def test_the_lookahead_prefix_outside_create_optimizer_says_where_it_works() -> None:
    # it said "Unknown optimizer 'lookahead_lion'" where a name is looked up alone (the HF Trainer's and ZeRO's
    # builders), beside a create_optimizer that takes it
    from optarena.integrations.distributed import zero_redundancy_optimizer

    for build in (optarena.get_optimizer_info, lambda name: zero_redundancy_optimizer(Net(), name)):
        with pytest.raises(ValueError, match=r"Invalid optimizer: 'Lookahead_Lion' here: the 'lookahead_' prefix is "
                                             r"optarena.create_optimizer's .* name 'lion' and wrap it"):
            build("Lookahead_Lion")
    assert isinstance(optarena.create_optimizer(Net(), "lookahead_lion"), optarena.Lookahead)


def test_registering_a_new_optimizer() -> None:
    info = optarena.OptimizerInfo("my_sgd", torch.optim.SGD, 0.05, has_momentum=True, source="test")
    optarena.register_optimizer(info)
    try:
        assert "my_sgd" in optarena.list_optimizers()
        assert optarena.create_optimizer(Net(), "my_sgd").param_groups[0]["lr"] == 0.05
    finally:
        from optarena import info as registry_records

        del registry_records._REGISTRY["my_sgd"]


def test_state_bytes_measures_the_state() -> None:
    model = nn.Linear(10, 10)  # 110 parameters
    for name, per_param in [("lion", 4), ("adan", 16), ("ademamix", 12), ("adamw", 8)]:
        optimizer = optarena.create_optimizer(model, name)
        model(torch.randn(2, 10)).sum().backward()
        optimizer.step()
        step_bytes = sum(s["step"].numel() * s["step"].element_size() for s in optimizer.state.values()
                         if "step" in s)
        assert optarena.state_bytes(optimizer) - step_bytes == per_param * 110
        assert optarena.get_optimizer_info(name).state_bytes_per_param == per_param


@pytest.mark.parametrize(("name", "expected"), [
    ("lion", {"lr": 2e-4, "weight_decay": 0.05}),
    ("rlion", {"lr": 3e-3, "weight_decay": 0.01 / 3}),
    ("adan", {"lr": 5e-3, "weight_decay": 0.002}),
    ("adax", {"lr": 5e-3, "weight_decay": 0.005, "decoupled_weight_decay": True}),
    ("adafactor", {"lr": 1e-2, "weight_decay": 0.001}),
    ("ademamix", {"lr": 1e-3, "weight_decay": 0.01}),
    ("amos", {"lr": 1e-2, "weight_decay": 0.0}),
    ("adamw", {"lr": 1e-3, "weight_decay": 0.01}),
])
def test_translate_hparams_from_adamw(name: str, expected: dict) -> None:
    got = optarena.translate_hparams(name, from_="adamw", lr=1e-3, weight_decay=0.01)
    assert got == pytest.approx(expected)
    optarena.create_optimizer(Net(), name, **got)  # the result is ready for the factory


def test_amos_state_is_two_numbers_per_tensor_and_its_default_eta_follows_the_shape() -> None:
    """Amos keeps v and b per tensor (plus its shape's η): its registry entry counts no bytes per element."""
    model = nn.Linear(10, 10)
    optimizer = optarena.create_optimizer(model, "amos")
    model(torch.randn(2, 10)).sum().backward()
    optimizer.step()
    assert all(v.numel() == 1 for s in optimizer.state.values() for v in s.values())
    assert optarena.get_optimizer_info("amos").state_bytes_per_param == 0
    assert float(optimizer.state[model.weight]["shape_eta"]) == pytest.approx((2 / 10) ** 0.5)
    assert float(optimizer.state[model.bias]["shape_eta"]) == 0.5
    with_momentum = optarena.create_optimizer(model, "amos", momentum=0.9)
    with_momentum.step()
    assert with_momentum.state[model.weight]["exp_avg"].shape == model.weight.shape


def test_translation_keeps_lion_decay_strength_and_gives_a_sweep_range() -> None:
    got = optarena.translate_hparams("lion", lr=3e-4, weight_decay=0.1)
    assert got["lr"] * got["weight_decay"] == pytest.approx(3e-4 * 0.1)
    assert lr_range("lion", 1e-3) == pytest.approx((1e-4, 1e-3 / 3))


def test_translate_hparams_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ValueError, match="No published rule translates AdamW hyper-parameters to 'sgd'"):
        optarena.translate_hparams("sgd", lr=1e-3)
    with pytest.raises(ValueError, match="Invalid from_: 'sgd'"):
        optarena.translate_hparams("lion", from_="sgd", lr=1e-3)
    with pytest.raises(ValueError, match="Invalid lr: 0"):
        optarena.translate_hparams("lion", lr=0)


@pytest.mark.parametrize("name", ["adamw", "lion", "muon"])
def test_group_dicts_take_the_factory_weight_decay_and_are_checked(name: str) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    given = [{"params": [model[0].weight, model[1].weight]}, {"params": [model[0].bias], "weight_decay": 0.0}]
    opt = optarena.create_optimizer(given, name, weight_decay=0.3)  # AdamW's own default was taken: 0.01
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.3]
    assert sorted(g["weight_decay"] for g in optarena.create_optimizer(given, name).param_groups) == [0.0, 0.0]
    with pytest.raises(ValueError, match="weight_decay of param group 1: nan"):
        optarena.create_optimizer([given[0], {"params": [model[1].bias], "weight_decay": float("nan")}], name)
    with pytest.raises(ValueError, match="lr of param group 0: -1"):
        optarena.create_optimizer([{"params": [model[1].bias], "lr": -1}], name)
    with pytest.raises(ValueError, match="Invalid params: 1 param-group dicts among 1 tensors"):
        optarena.create_optimizer([model[0].weight, {"params": [model[1].weight]}], name)


def test_state_bytes_of_a_wrapper_counts_what_it_wraps() -> None:
    """Lookahead's slow weights and Lion's momentum: 8 B/param, where the wrapper's own state alone read 4."""
    param = torch.nn.Parameter(torch.zeros(100))
    opt = optarena.Lookahead(optarena.Lion([param], lr=1e-3))
    param.grad = torch.ones(100)
    opt.step()
    assert optarena.state_bytes(opt.base) == 400 and optarena.state_bytes(opt) == 800
