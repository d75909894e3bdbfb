"""Parity of optarena's optimizers with published implementations.

Peers (skipped when the package is missing):
  * Lion      ~ lion_pytorch.Lion, lion_pytorch.foreach.Lion, pytorch_optimizer.Lion (both paths)
  * Adan      ~ pytorch_optimizer.Adan (both paths)
  * Adafactor ~ torch.optim.Adafactor (both paths), pytorch_optimizer.AdaFactor (both paths, the configs where the
                math agrees)
RLion and AdaX have no published peer in these packages (their own reference tests live elsewhere).

Both optimizers start from identical parameters and get identical seeded random gradients (a fresh clone each:
pytorch_optimizer mutates ``p.grad`` in place); parameters are compared after every step. Where the math differs
between optarena and a peer, the test is restricted to the configuration where they agree; the differences are
listed in the README section "where and why optarena differs from peers".

Tolerances: float64 runs must agree to rtol 1e-10 (Lion: 1e-12; Adan with gradient clipping: 1e-7, because
pytorch_optimizer computes the global norm in float32), float32 runs to rtol 1e-5. Lion-type sign updates could
differ where ``c`` is within rounding of 0; with float64 random gradients that does not happen.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch

import optarena

STEPS = 40
F64 = dict(rtol=1e-10, atol=1e-12)
F32 = dict(rtol=1e-5, atol=1e-6)

# 0-d, 1-d, 2-d, 3-d and 4-d tensors; the 2-d and higher ones are factored by Adafactor.
SHAPES_ALL = [(), (7,), (5, 6), (3, 4, 5), (2, 3, 4, 5)]
SHAPES_NO_0D = [(7,), (5, 6), (2, 3, 4, 5)]

GroupsSpec = Sequence[Sequence[tuple[int, ...]]]
Builder = Callable[[list[list[torch.Tensor]]], torch.optim.Optimizer]


def _max_errors(ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    diff = (ours - ref).abs()
    if diff.numel() == 0:
        return 0.0, 0.0
    return float(diff.max()), float((diff / ref.abs().clamp_min(1e-300)).max())


def run_parity(make_ours: Builder, make_peer: Builder, groups: GroupsSpec, *, dtype: torch.dtype,
               rtol: float, atol: float, steps: int = STEPS, seed: int = 0, peer_gets_neg_grad: bool = False,
               init_scales: Sequence[float] | None = None,
               grad_is_none: Callable[[int, int, int], bool] | None = None) -> tuple[float, float]:
    """Step ``make_ours(params)`` and ``make_peer(params)`` side by side; assert closeness after every step.

    ``groups`` lists the parameter shapes of each param group. ``peer_gets_neg_grad`` feeds the peer ``-g``
    (for peers without ``maximize``). ``grad_is_none(step, group, index)`` leaves that gradient as ``None``.
    Returns the worst (absolute, relative) error seen.
    """
    gen = torch.Generator().manual_seed(seed)
    flat_shapes = [s for g in groups for s in g]
    scales = init_scales or [1.0] * len(flat_shapes)
    init, k = [], 0
    for shapes in groups:
        grp = []
        for shape in shapes:
            grp.append(torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype) * scales[k])
            k += 1
        init.append(grp)
    ours_params = [[t.clone().requires_grad_() for t in g] for g in init]
    peer_params = [[t.clone().requires_grad_() for t in g] for g in init]
    ours, peer = make_ours(ours_params), make_peer(peer_params)

    worst_abs = worst_rel = 0.0
    for step in range(steps):
        # one random magnitude per step (makes Adafactor's update clipping and Adan's grad clipping kick in)
        step_scale = math.exp(2.0 * float(torch.randn((), generator=gen, dtype=torch.float64)))
        given = []
        for gi, shapes in enumerate(groups):
            for pi, shape in enumerate(shapes):
                g = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype) * step_scale
                if grad_is_none is not None and grad_is_none(step, gi, pi):
                    ours_params[gi][pi].grad = peer_params[gi][pi].grad = None
                    given.append(None)
                    continue
                ours_params[gi][pi].grad = g.clone()
                peer_params[gi][pi].grad = (-g if peer_gets_neg_grad else g).clone()
                given.append(g)
        ours.step()
        peer.step()
        flat_ours = [p for g in ours_params for p in g]
        flat_peer = [p for g in peer_params for p in g]
        for i, (a, b, g) in enumerate(zip(flat_ours, flat_peer, given)):
            if g is not None:  # the contract: p.grad is never modified
                assert torch.equal(a.grad, g), f"optarena modified p.grad of param {i} at step {step + 1}"
            assert a.dtype == b.dtype == dtype
            where = f"param {i} {tuple(a.shape)}, step {step + 1}"
            torch.testing.assert_close(a.detach(), b.detach(), rtol=rtol, atol=atol,
                                       msg=lambda m, where=where: f"{where}: {m}")
            e_abs, e_rel = _max_errors(a.detach(), b.detach())
            worst_abs, worst_rel = max(worst_abs, e_abs), max(worst_rel, e_rel)
    print(f"worst abs error {worst_abs:.3g}, worst rel error {worst_rel:.3g}")
    return worst_abs, worst_rel


def _param_groups(params: list[list[torch.Tensor]], per_group: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    assert len(params) == len(per_group)
    return [{"params": p, **kw} for p, kw in zip(params, per_group)]


# ============================================================================================================ Lion
# Two groups with different hyper-parameters; the second group's last param gets no gradient on some steps.
LION_CONFIGS = {
    "defaults": dict(groups=[SHAPES_ALL], kw=[dict(lr=1e-3)], maximize=False, skip=None),
    "decay_two_groups_none_grads": dict(
        groups=[SHAPES_ALL, [(6,), (4, 5)]],
        kw=[dict(lr=3e-3, betas=(0.9, 0.99), weight_decay=0.1), dict(lr=1e-3, betas=(0.95, 0.98), weight_decay=1.0)],
        maximize=False, skip=lambda s, g, i: g == 1 and i == 1 and s % 3 == 1),
    "maximize": dict(groups=[SHAPES_NO_0D], kw=[dict(lr=1e-3, weight_decay=0.3)], maximize=True, skip=None),
}


def _lion_peer(name: str, maximize: bool) -> tuple[Builder, bool]:
    """Returns the peer builder and whether the peer must be fed -g (no maximize option)."""
    if name.startswith("lion_pytorch"):
        lion_pytorch = pytest.importorskip("lion_pytorch")
        if name == "lion_pytorch":
            cls = lion_pytorch.Lion
        else:
            cls = pytest.importorskip("lion_pytorch.foreach").Lion
        # decoupled_weight_decay=False (default): θ·(1 − lr·wd), as optarena
        return (lambda groups: cls(groups)), maximize
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
    foreach = name.endswith("foreach")
    # weight_decouple=True, fixed_decay=False (defaults): θ·(1 − lr·wd)
    return (lambda groups: pytorch_optimizer.Lion(groups, foreach=foreach, maximize=maximize)), False


@pytest.mark.parametrize("config", list(LION_CONFIGS))
@pytest.mark.parametrize(
    "peer", ["lion_pytorch", "lion_pytorch.foreach", "pytorch_optimizer", "pytorch_optimizer.foreach"])
@pytest.mark.parametrize("foreach", [False, True])
def test_lion_matches_peer(config: str, peer: str, foreach: bool) -> None:
    cfg = LION_CONFIGS[config]
    make_peer_from_groups, neg = _lion_peer(peer, cfg["maximize"])
    run_parity(
        lambda p: optarena.Lion(_param_groups(p, cfg["kw"]), foreach=foreach, maximize=cfg["maximize"]),
        lambda p: make_peer_from_groups(_param_groups(p, cfg["kw"])),
        cfg["groups"], dtype=torch.float64, rtol=1e-12, atol=1e-12, peer_gets_neg_grad=neg,
        grad_is_none=cfg["skip"])


# ============================================================================================================ Adan
# optarena no_prox=False ⇔ pytorch_optimizer weight_decouple=False: θ ← (θ − step)/(1 + lr·wd)
# optarena no_prox=True  ⇔ pytorch_optimizer weight_decouple=True:  θ ← θ·(1 − lr·wd) − step
ADAN_CONFIGS = {
    "defaults": dict(groups=[SHAPES_ALL], kw=[{}], extra={}, dtype=torch.float64, tol=F64),
    "prox_decay_two_groups": dict(
        groups=[SHAPES_ALL, [(6,), (4, 5)]],
        kw=[dict(lr=1e-3, weight_decay=0.02), dict(lr=3e-3, betas=(0.9, 0.9, 0.999), eps=1e-6, weight_decay=0.1)],
        extra={}, dtype=torch.float64, tol=F64),
    # pytorch_optimizer's maximize=True is broken (first gradient difference is −2g instead of 0: g_prev is stored
    # before the negation), so the peer gets −g instead.
    "no_prox_decay_maximize": dict(
        groups=[SHAPES_ALL], kw=[dict(lr=2e-3, weight_decay=0.05, no_prox=True)], extra={}, maximize=True,
        dtype=torch.float64, tol=F64),
    # pytorch_optimizer sums the squared norms in float32, so its clip factor is float32-accurate; it also crashes
    # on 0-d parameters when max_grad_norm > 0 (shape [1] clip factor), hence no 0-d tensor here.
    "grad_clipping_two_groups": dict(
        groups=[SHAPES_NO_0D, [(6,), (4, 5)]], kw=[dict(lr=1e-3, weight_decay=0.02), dict(lr=3e-3)],
        extra=dict(max_grad_norm=2.0), dtype=torch.float64, tol=dict(rtol=1e-7, atol=1e-9)),
    "float32": dict(groups=[SHAPES_ALL], kw=[dict(lr=1e-3, weight_decay=0.02)], extra={}, dtype=torch.float32,
                    tol=F32),
}


def _adan_peer_kw(kw: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in kw.items() if k != "no_prox"}
    out["weight_decouple"] = kw.get("no_prox", False)
    return out


@pytest.mark.parametrize("config", list(ADAN_CONFIGS))
@pytest.mark.parametrize("peer_foreach", [False, True])
@pytest.mark.parametrize("foreach", [False, True])
def test_adan_matches_pytorch_optimizer(config: str, peer_foreach: bool, foreach: bool) -> None:
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
    cfg = ADAN_CONFIGS[config]
    extra = cfg["extra"]
    peer_kw = [_adan_peer_kw(kw) for kw in cfg["kw"]]
    maximize = cfg.get("maximize", False)
    run_parity(
        lambda p: optarena.Adan(_param_groups(p, cfg["kw"]), foreach=foreach, maximize=maximize, **extra),
        lambda p: pytorch_optimizer.Adan(_param_groups(p, peer_kw), foreach=peer_foreach, **extra),
        cfg["groups"], dtype=cfg["dtype"], **cfg["tol"], peer_gets_neg_grad=maximize)


@pytest.mark.parametrize("foreach", [False, True])
def test_adan_restart_matches_fresh_peer(foreach: bool) -> None:
    """optarena's restart() ≡ a new pytorch_optimizer.Adan on the current parameters."""
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")

    class Restarted:
        def __init__(self, opt: torch.optim.Optimizer, make: Callable[[], torch.optim.Optimizer] | None) -> None:
            self.opt, self.make, self.n = opt, make, 0

        def step(self) -> None:
            self.n += 1
            if self.n == 16:  # restart before the 16th step
                if self.make is None:
                    self.opt.restart()
                else:
                    self.opt = self.make()
            self.opt.step()

    def make_ours(p: list[list[torch.Tensor]]) -> Any:
        return Restarted(optarena.Adan(_param_groups(p, [dict(weight_decay=0.02)]), foreach=foreach), None)

    def make_peer(p: list[list[torch.Tensor]]) -> Any:
        def make() -> torch.optim.Optimizer:
            return pytorch_optimizer.Adan(_param_groups(p, [dict(weight_decay=0.02)]))
        return Restarted(make(), make)

    run_parity(make_ours, make_peer, [SHAPES_ALL], dtype=torch.float64, **F64)


# ======================================================================================= Adafactor vs torch.optim
# optarena's Adafactor with beta1=None, relative_step=True, scale_parameter=True, warmup_init=False is
# torch.optim.Adafactor (clip_threshold ⇔ d). Both keep per-parameter step counters, so params that miss a
# gradient on some steps stay in step too. Small initial params (scale 1e-4) make eps2 bind in RMS(θ).
TORCH_ADAFACTOR_CONFIGS = {
    "defaults": dict(groups=[SHAPES_ALL], kw=[{}], maximize=False, dtype=torch.float64, tol=F64, skip=None),
    "decay_maximize": dict(groups=[SHAPES_ALL], kw=[dict(weight_decay=0.1)], maximize=True, dtype=torch.float64,
                           tol=F64, skip=None),
    "two_groups_none_grads": dict(
        groups=[SHAPES_ALL, [(6,), (4, 5), (3, 2, 4)]],
        kw=[dict(lr=0.5, beta2_decay=-0.5, eps=(1e-30, 1e-2), weight_decay=0.01),
            dict(lr=1e-2, eps=(None, 1e-3), d=2.0, weight_decay=0.2)],
        maximize=False, dtype=torch.float64, tol=F64, skip=lambda s, g, i: (g, i) in ((0, 2), (1, 1)) and s % 4 == 2),
    "float32_decay_maximize": dict(groups=[SHAPES_ALL], kw=[dict(weight_decay=0.1)], maximize=True,
                                   dtype=torch.float32, tol=F32, skip=None),
}


def _rename(kw: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    return {(new if k == old else k): v for k, v in kw.items()}


@pytest.mark.parametrize("config", list(TORCH_ADAFACTOR_CONFIGS))
@pytest.mark.parametrize("peer_foreach", [False, True])
@pytest.mark.parametrize("foreach", [False, True])
def test_adafactor_matches_torch(config: str, peer_foreach: bool, foreach: bool) -> None:
    cfg = TORCH_ADAFACTOR_CONFIGS[config]
    ours_kw = [_rename(kw, "d", "clip_threshold") for kw in cfg["kw"]]
    n = sum(len(g) for g in cfg["groups"])
    run_parity(
        lambda p: optarena.Adafactor(_param_groups(p, ours_kw), foreach=foreach, maximize=cfg["maximize"]),
        lambda p: torch.optim.Adafactor(_param_groups(p, cfg["kw"]), foreach=peer_foreach,
                                        maximize=cfg["maximize"]),
        cfg["groups"], dtype=cfg["dtype"], **cfg["tol"], grad_is_none=cfg["skip"],
        init_scales=[1e-4 if i % 3 == 1 else 1.0 for i in range(n)])


# ============================================================================== Adafactor vs pytorch_optimizer
# Where pytorch_optimizer.AdaFactor agrees with the contract (see README): lr must be 1e-2 when relative_step
# (it hard-codes min(1e-2, 1/√t) and ignores lr); weight decay must be fixed_decay=True with wd·lr (it scales the
# decay by the *effective* step α_t otherwise); with beta1 its momentum averages α_t·Û instead of Û, which agrees
# only while α_t is constant (scale_parameter=False, and relative_step=False or t ≤ 10⁴); momentum_dtype must be
# the param dtype (default bfloat16); its second-moment cap betas[1]=0.999 only binds after t ≈ 5600.
def _po_adafactor_kw(kw: dict[str, Any]) -> dict[str, Any]:
    out = dict(lr=kw.get("lr", 1e-2), betas=(kw.get("beta1"), 0.999), weight_decay=kw.get("weight_decay", 0.0)
               * kw.get("lr", 1e-2), weight_decouple=True, fixed_decay=True,
               relative_step=kw.get("relative_step", True), scale_parameter=kw.get("scale_parameter", True),
               warmup_init=kw.get("warmup_init", False))
    return out


PO_ADAFACTOR_CONFIGS = {
    "relative_step_scaled": dict(groups=[SHAPES_ALL], kw=[dict(lr=1e-2, weight_decay=0.1)], maximize=False),
    "warmup_init_maximize": dict(groups=[SHAPES_ALL], kw=[dict(lr=1e-2, warmup_init=True)], maximize=True),
    "two_groups_with_momentum": dict(
        groups=[SHAPES_ALL, [(6,), (4, 5), (3, 2, 4)]],
        kw=[dict(lr=1e-2), dict(lr=3e-3, beta1=0.9, relative_step=False, scale_parameter=False, weight_decay=0.5)],
        maximize=False),
    "momentum_relative_step_unscaled": dict(
        groups=[SHAPES_ALL], kw=[dict(lr=1e-2, beta1=0.8, scale_parameter=False, weight_decay=0.2)], maximize=True),
}


@pytest.mark.parametrize("config", list(PO_ADAFACTOR_CONFIGS))
@pytest.mark.parametrize("peer_foreach", [False, True])
@pytest.mark.parametrize("foreach", [False, True])
def test_adafactor_matches_pytorch_optimizer(config: str, peer_foreach: bool, foreach: bool) -> None:
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
    cfg = PO_ADAFACTOR_CONFIGS[config]
    peer_kw = [_po_adafactor_kw(kw) for kw in cfg["kw"]]
    n = sum(len(g) for g in cfg["groups"])
    run_parity(
        lambda p: optarena.Adafactor(_param_groups(p, cfg["kw"]), foreach=foreach, maximize=cfg["maximize"]),
        lambda p: pytorch_optimizer.AdaFactor(_param_groups(p, peer_kw), foreach=peer_foreach,
                                              maximize=cfg["maximize"], momentum_dtype=torch.float64,
                                              decay_rate=-0.8, clip_threshold=1.0, eps1=1e-30, eps2=1e-3),
        cfg["groups"], dtype=torch.float64, **F64,
        init_scales=[1e-4 if i % 3 == 1 else 1.0 for i in range(n)])


# ============================================================================================================ AdEMAMix
# pytorch_optimizer.AdEMAMix with weight_decouple=True (its default False is L2 decay in the gradient, not the
# paper's decoupled decay); one t_alpha_beta3 warms up both α and β3 (optarena: alpha_warmup = beta3_warmup). Its step
# count is per group: parameters that miss a gradient would fall out of step, so every parameter gets one.
AEM_CONFIGS = {
    "defaults": dict(groups=[SHAPES_ALL], kw=[{}], warmup=None, maximize=False, dtype=torch.float64, tol=F64),
    "decay_two_groups": dict(
        groups=[SHAPES_ALL, [(6,), (4, 5)]],
        kw=[dict(lr=1e-2, weight_decay=0.1, alpha=8.0),
            dict(lr=3e-3, betas=(0.8, 0.99, 0.999), eps=1e-6, alpha=4.0, weight_decay=0.01)],
        warmup=None, maximize=False, dtype=torch.float64, tol=F64),
    "warmup_maximize": dict(groups=[SHAPES_ALL], kw=[dict(lr=1e-2, weight_decay=0.05)], warmup=25, maximize=True,
                            dtype=torch.float64, tol=F64),
    "float32_warmup": dict(groups=[SHAPES_ALL], kw=[dict(lr=1e-3, weight_decay=0.02)], warmup=10, maximize=False,
                           dtype=torch.float32, tol=F32),
}


@pytest.mark.parametrize("config", list(AEM_CONFIGS))
@pytest.mark.parametrize("peer_foreach", [False, True])
@pytest.mark.parametrize("foreach", [False, True])
def test_ademamix_matches_pytorch_optimizer(config: str, peer_foreach: bool, foreach: bool) -> None:
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
    cfg = AEM_CONFIGS[config]
    warmup, maximize = cfg["warmup"], cfg["maximize"]
    run_parity(
        lambda p: optarena.AdEMAMix(_param_groups(p, cfg["kw"]), foreach=foreach, maximize=maximize,
                                    alpha_warmup=warmup, beta3_warmup=warmup),
        lambda p: pytorch_optimizer.AdEMAMix(_param_groups(p, cfg["kw"]), foreach=peer_foreach, maximize=maximize,
                                             weight_decouple=True, t_alpha_beta3=warmup),
        cfg["groups"], dtype=cfg["dtype"], **cfg["tol"])


# ============================================================================================================ Amos
# pytorch_optimizer.Amos is the reference's rule with one second moment per tensor (as optarena's) and a fixed η by
# shape: 0.5 for ≤ 1-D, sqrt(2/size(1)) for 2-D (optarena's default η for these), sqrt(1/size(1)) for ≥ 3-D
# (optarena: sqrt(2/prod(shape[1:])), He's fan-in), so the configurations compared have ≤ 2-D tensors and eta=None;
# its c_coef = d_coef is optarena's zeta; extra_l2 = 0 (its sign grows θ: README); its eps is added to v where the
# reference floors v by it (its default 1e-18 is 5e-8 of v after a first gradient of scale 5e-3 here: eps=0 for it,
# while optarena's floor 2⁻¹²⁵ never binds). Its step count is per group.
SHAPES_AMOS = [(), (7,), (5, 6), (4, 9)]
AMOS_CONFIGS = {
    # optarena's default lr 1e-2 (the reference's examples), pytorch_optimizer's 1e-3
    "defaults": dict(groups=[SHAPES_AMOS], kw=[dict(lr=1e-2)], momentum=0.0, maximize=False, dtype=torch.float64,
                     tol=F64),
    # lr 0.3: γ ≈ 0.1 per step, so that the decay accumulator and both decay factors move far from their start
    "two_groups_fast_decay": dict(groups=[SHAPES_AMOS, [(6,), (3, 5)]], kw=[dict(lr=0.3, beta=0.98), dict(lr=3e-3)],
                                  momentum=0.0, maximize=False, dtype=torch.float64, tol=F64),
    "momentum_maximize": dict(groups=[SHAPES_AMOS], kw=[dict(lr=0.1, beta=0.99)], momentum=0.9, maximize=True,
                              dtype=torch.float64, tol=F64),
    "float32": dict(groups=[SHAPES_AMOS], kw=[dict(lr=0.05)], momentum=0.0, maximize=False, dtype=torch.float32,
                    tol=F32),
}


@pytest.mark.parametrize("config", list(AMOS_CONFIGS))
@pytest.mark.parametrize("peer_foreach", [False, True])
@pytest.mark.parametrize("foreach", [False, True])
def test_amos_matches_pytorch_optimizer(config: str, peer_foreach: bool, foreach: bool) -> None:
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
    cfg = AMOS_CONFIGS[config]
    momentum, maximize = cfg["momentum"], cfg["maximize"]
    run_parity(
        lambda p: optarena.Amos(_param_groups(p, cfg["kw"]), foreach=foreach, maximize=maximize, momentum=momentum),
        lambda p: pytorch_optimizer.Amos(_param_groups(p, cfg["kw"]), foreach=peer_foreach, maximize=maximize,
                                         momentum=momentum, eps=0.0),
        cfg["groups"], dtype=cfg["dtype"], **cfg["tol"])


def test_amos_extra_decay_shrinks_where_pytorch_optimizers_extra_l2_grows() -> None:
    """With a zero gradient Amos's own decay γ is 0; an extra decay must then shrink θ. optarena's weight_decay does
    (θ·(1 − lr·wd)); pytorch_optimizer's extra_l2 enters as (γ − extra_l2)/2, so its θ grows by d·extra_l2/2."""
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
    ours_p, peer_p = torch.ones(4, requires_grad=True), torch.ones(4, requires_grad=True)
    ours = optarena.Amos([ours_p], lr=0.1, weight_decay=0.1)
    peer = pytorch_optimizer.Amos([peer_p], lr=0.1, extra_l2=0.1)
    for p, opt in ((ours_p, ours), (peer_p, peer)):
        p.grad = torch.zeros(4)
        opt.step()
    assert (ours_p < 1).all() and (peer_p > 1).all()
