"""timm: optarena optimizers in timm's registry, built by timm.optim.create_optimizer_v2."""

from __future__ import annotations

import pytest
import torch

timm = pytest.importorskip("timm")
pytest.importorskip("timm.optim")

import optarena  # noqa: E402
from optarena.integrations.timm import register_timm_optimizers  # noqa: E402

OWN = optarena.list_optimizers(source="optarena")


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet10t", num_classes=3, pretrained=False)  # built locally, nothing downloaded


@pytest.mark.parametrize("name", OWN)
def test_create_optimizer_v2_builds_optarena_class(name: str) -> None:
    model = small_model()
    opt = timm.optim.create_optimizer_v2(model, f"optarena_{name}", lr=1e-3, weight_decay=0.05)
    cls = optarena.get_optimizer_info(name).cls
    assert type(opt) is cls  # not timm's own "lion"/"adan"/"adafactor"
    decays = {g["weight_decay"] for g in opt.param_groups}
    assert decays == {0.0, 0.05}  # timm's grouping: no decay on biases and norm weights
    no_decay = next(g for g in opt.param_groups if g["weight_decay"] == 0.0)
    assert all(p.ndim <= 1 for p in no_decay["params"])
    assert all(g["lr"] == 1e-3 for g in opt.param_groups)
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(2, 3, 32, 32)).logsumexp(dim=1).mean().backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_names_listed_and_timm_names_untouched() -> None:
    assert set(register_timm_optimizers()) == {f"optarena_{n}" for n in OWN}  # idempotent
    assert {f"optarena_{n}" for n in OWN} <= set(timm.optim.list_optimizers())
    assert timm.optim.get_optimizer_class("optarena_adan") is optarena.Adan
    model = small_model()
    assert type(timm.optim.create_optimizer_v2(model, "lion", lr=1e-4)) is not optarena.Lion  # timm's own
    assert type(timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3)) is torch.optim.AdamW


def test_lookahead_and_timm_arguments() -> None:
    model = small_model()
    opt = timm.optim.create_optimizer_v2(model, "lookahead_optarena_lion", lr=1e-4, betas=(0.95, 0.98),
                                         foreach=True)
    assert type(opt).__name__ == "Lookahead" and type(opt._base_optimizer) is optarena.Lion  # timm's Lookahead
    assert opt.param_groups[0]["betas"] == (0.95, 0.98) and opt.param_groups[0]["foreach"] is True
    opt = timm.optim.create_optimizer_v2(model, "optarena_adafactor", lr=1e-2, layer_decay=0.5)
    assert type(opt) is optarena.Adafactor and len({g["lr_scale"] for g in opt.param_groups}) > 1


def test_momentum_is_the_optimizers_own_unless_passed() -> None:
    model = torch.nn.Linear(4, 3)
    amos = timm.optim.create_optimizer_v2(model, "optarena_amos", lr=1e-2)
    assert {g["momentum"] for g in amos.param_groups} == {0.0}  # Amos' default, not timm's 0.9
    amos = timm.optim.create_optimizer_v2(model, "optarena_amos", lr=1e-2, momentum=0.9)
    assert {g["momentum"] for g in amos.param_groups} == {0.9}
    sgd = timm.optim.create_optimizer_v2(model, "sgd", lr=0.1)  # timm's own keep timm's default
    assert {g["momentum"] for g in sgd.param_groups} == {0.9}


@pytest.mark.parametrize("name", ["optarena_muon", "optarena_sgd", "lookahead_optarena_nosuch"])
def test_unregistered_optarena_names_are_refused(name: str) -> None:
    # timm would read the text after the last underscore and build its own muon/sgd
    with pytest.raises(ValueError, match=f"Invalid optimizer: '{name}'.*optarena_lion"):
        timm.optim.create_optimizer_v2(torch.nn.Linear(4, 3), name, lr=1e-3)
