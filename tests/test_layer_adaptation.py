"""LayerAdaptation: the trust-ratio rule against a hand-written LAMB (base AdamW) and against the rule applied by
hand around a plain base; exclusions, zero norms, bf16, checkpoints in a fresh process. Run with ``-s`` to see
the observed errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fresh_process import checkpoint_midway, continue_in_fresh_process
from lazy_worker import build as build_worker_case

import optarena
from optarena.wrappers.layer_adaptation import LayerAdaptation
from optarena.wrappers.lazy import Lazy

F64 = torch.float64
STEPS = 10
# The wrapper recovers lr·r from Δ = θ_new − θ_old, which cancels against θ (|θ| ~ 1, |Δ| ~ lr): ~1e-14 relative
# error in the ratio, far below this.
RTOL, ATOL = 1e-11, 1e-13
SHAPES = {"matrix": (6, 5), "conv": (2, 3, 4), "bias": (5,), "zeros": (3, 3), "sometimes": (4, 2), "gain": (3,)}
GROUP = {"matrix": 0, "conv": 0, "bias": 0, "zeros": 1, "sometimes": 1, "gain": 1}


def make_params(dtype=F64, seed=0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    params = {n: torch.randn(s, generator=gen, dtype=F64).to(dtype).requires_grad_() for n, s in SHAPES.items()}
    with torch.no_grad():
        params["zeros"].zero_()  # ‖θ‖ = 0 at the first step: ratio 1
    return params


def make_grads(dtype=F64, seed=1) -> list[dict[str, torch.Tensor | None]]:
    gen = torch.Generator().manual_seed(seed)
    steps = []
    for t in range(STEPS):
        grads = {n: torch.randn(s, generator=gen, dtype=F64).to(dtype) for n, s in SHAPES.items()}
        if t % 3 == 1:
            grads["sometimes"] = None
        if t == 4:
            grads["matrix"] = torch.zeros(SHAPES["matrix"], dtype=dtype)  # Δ from decay only
        steps.append(grads)
    return steps


def groups(params: dict[str, torch.Tensor], lr1: float) -> list[dict]:
    return [{"params": [p for n, p in params.items() if GROUP[n] == 0]},
            {"params": [p for n, p in params.items() if GROUP[n] == 1], "lr": lr1}]


def set_grads(params, grads) -> None:
    for n, p in params.items():
        p.grad = grads[n]


# ------------------------------------------------------------------------------------------ LAMB
class RefLAMB:
    """LAMB (You et al. 2019, Algorithm 2, without the bound φ on ‖θ‖), written out: Adam's bias-corrected
    direction plus decoupled decay, r = m̂/(√v̂ + ε) + wd·θ; θ ← θ − lr·(‖θ‖/‖r‖)·r for adapted parameters (ratio
    1 when a norm is 0), θ ← θ − lr·r (AdamW) for excluded ones."""

    def __init__(self, params, lrs, betas, eps, wd, adapted):
        self.params, self.lrs, self.betas, self.eps, self.wd, self.adapted = params, lrs, betas, eps, wd, adapted
        self.m = {n: torch.zeros_like(p) for n, p in params.items()}
        self.v = {n: torch.zeros_like(p) for n, p in params.items()}
        self.t = dict.fromkeys(params, 0)

    @torch.no_grad()
    def step(self, grads):
        b1, b2 = self.betas
        for n, p in self.params.items():
            g = grads[n]
            if g is None:
                continue
            self.t[n] += 1
            t = self.t[n]
            self.m[n] = b1 * self.m[n] + (1 - b1) * g
            self.v[n] = b2 * self.v[n] + (1 - b2) * g * g
            m_hat, v_hat = self.m[n] / (1 - b1**t), self.v[n] / (1 - b2**t)
            r = m_hat / (v_hat.sqrt() + self.eps) + self.wd * p
            ratio = 1.0
            if self.adapted(n):
                w_norm, r_norm = float(p.norm()), float(r.norm())
                ratio = w_norm / r_norm if w_norm > 0 and r_norm > 0 else 1.0
            p -= self.lrs[GROUP[n]] * ratio * r


@pytest.mark.parametrize("exclude", ["default", "none"])
def test_adamw_base_is_lamb(exclude: str) -> None:
    lrs, betas, eps, wd = [1e-2, 3e-3], (0.9, 0.999), 1e-6, 0.01
    params, ref_params = make_params(), make_params()
    optimizer = LayerAdaptation(torch.optim.AdamW(groups(params, lrs[1]), lr=lrs[0], betas=betas, eps=eps,
                                                  weight_decay=wd),
                                exclude=None if exclude == "default" else ())
    adapted = (lambda n: len(SHAPES[n]) >= 2) if exclude == "default" else (lambda n: True)
    reference = RefLAMB(ref_params, lrs, betas, eps, wd, adapted)
    worst = 0.0
    for grads in make_grads():
        set_grads(params, grads)
        optimizer.step()
        reference.step(grads)
        for n in SHAPES:
            worst = max(worst, float((params[n] - ref_params[n]).detach().abs().max()))
            torch.testing.assert_close(params[n], ref_params[n], rtol=RTOL, atol=ATOL)
    print(f"\nLAMB ({exclude}): max |LayerAdaptation(AdamW) − LAMB| = {worst:.1e}")


# ------------------------------------------------------------------------------------------ the rule, any base
BASES = {
    "lion": lambda g: optarena.Lion(g, lr=1e-2, weight_decay=0.1),
    "adan": lambda g: optarena.Adan(g, lr=1e-2, weight_decay=0.02, max_grad_norm=1.0),
    "adafactor": lambda g: optarena.Adafactor(g, lr=1e-2, relative_step=False),
    "sgd": lambda g: torch.optim.SGD(g, lr=1e-1, momentum=0.9, nesterov=True),
}


@pytest.mark.parametrize("name", list(BASES))
def test_rule_by_hand_around_a_plain_base(name: str) -> None:
    """A twin base steps; then, by hand: θ ← θ_old + r·(θ_new − θ_old), r = lr·‖θ_old‖/‖θ_new − θ_old‖ (1 when a
    norm is 0), for every ≥ 2-d parameter with a grad. The group lr changes half-way (schedules reach the rule)."""
    params, ref_params = make_params(), make_params()
    optimizer = LayerAdaptation(BASES[name](groups(params, 3e-3)))
    twin = BASES[name](groups(ref_params, 3e-3))
    worst = 0.0
    for t, grads in enumerate(make_grads()):
        if t == 5:
            for opt in (optimizer, twin):
                opt.param_groups[0]["lr"] *= 0.5
        set_grads(params, grads)
        set_grads(ref_params, grads)
        saved = {n: (g, None if g is None else g.clone()) for n, g in grads.items()}
        optimizer.step()
        olds = {n: p.detach().clone() for n, p in ref_params.items()}
        twin.step()
        with torch.no_grad():
            for n, p in ref_params.items():
                if p.ndim <= 1 or grads[n] is None:
                    continue
                lr = twin.param_groups[GROUP[n]]["lr"]
                delta = p - olds[n]
                w_norm, d_norm = float(olds[n].norm()), float(delta.norm())
                ratio = lr * w_norm / d_norm if w_norm > 0 and d_norm > 0 else 1.0
                p.copy_(olds[n] + ratio * delta)
        for n in SHAPES:
            assert params[n].grad is saved[n][0] and (saved[n][1] is None or torch.equal(params[n].grad,
                                                                                        saved[n][1]))
            worst = max(worst, float((params[n] - ref_params[n]).detach().abs().max()))
            torch.testing.assert_close(params[n], ref_params[n], rtol=RTOL, atol=ATOL)
            if SHAPES[n] and len(SHAPES[n]) <= 1:  # excluded by default: exactly the base's step
                assert torch.equal(params[n], ref_params[n])
    print(f"\n{name}: max |LayerAdaptation − rule by hand| = {worst:.1e}")


def test_adapted_step_has_length_lr_times_param_norm() -> None:
    p = torch.randn(8, 8, dtype=F64, requires_grad=True)
    optimizer = LayerAdaptation(optarena.Lion([p], lr=1e-3))
    old = p.detach().clone()
    p.grad = torch.randn(8, 8, dtype=F64)
    optimizer.step()
    assert float((p.detach() - old).norm()) == pytest.approx(1e-3 * float(old.norm()), rel=1e-12)


def test_zero_norms_give_ratio_one() -> None:
    zero = torch.zeros(4, 4, dtype=F64, requires_grad=True)
    frozen = torch.randn(4, 4, dtype=F64, requires_grad=True)
    twin_zero = zero.detach().clone().requires_grad_()
    optimizer = LayerAdaptation(torch.optim.SGD([{"params": [zero]}, {"params": [frozen], "lr": 0.0}], lr=0.1))
    plain = torch.optim.SGD([twin_zero], lr=0.1)
    grad = torch.randn(4, 4, dtype=F64)
    zero.grad, twin_zero.grad, frozen.grad = grad, grad, grad
    before = frozen.detach().clone()
    optimizer.step()
    plain.step()
    assert torch.equal(zero, twin_zero)  # ‖θ_old‖ = 0: the base's step, exactly
    assert torch.equal(frozen, before)  # lr = 0, Δ = 0: unchanged, exactly


# ------------------------------------------------------------------------------------------ exclusions, API
@pytest.mark.parametrize("how", ["callable", "iterable"])
def test_exclude(how: str) -> None:
    params, plain_params = make_params(), make_params()
    matrix = params["matrix"]
    exclude = (lambda p: p is matrix) if how == "callable" else iter([matrix])
    optimizer = LayerAdaptation(optarena.Lion(groups(params, 3e-3), lr=1e-2), exclude=exclude)
    plain = optarena.Lion(groups(plain_params, 3e-3), lr=1e-2)
    for grads in make_grads()[:3]:
        set_grads(params, grads)
        set_grads(plain_params, grads)
        optimizer.step()
        plain.step()
    assert torch.equal(params["matrix"], plain_params["matrix"])  # excluded: the base's step
    for n in ("bias", "gain", "conv"):  # the 1-d ones too: an explicit exclude replaces the default
        assert not torch.equal(params[n], plain_params[n]), n


def test_bad_arguments() -> None:
    p = torch.zeros(3, 3, requires_grad=True)
    with pytest.raises(TypeError, match="must be a torch.optim.Optimizer"):
        LayerAdaptation([p])
    with pytest.raises(TypeError, match="must be a torch.optim.Optimizer"):
        LayerAdaptation(lambda: None)
    for bad in (3, [p, 1.0], p, "bias"):
        with pytest.raises(ValueError, match="Invalid exclude"):
            LayerAdaptation(optarena.Lion([p]), exclude=bad)


def test_closure_returns_the_loss() -> None:
    w = torch.randn(3, 3, dtype=F64, requires_grad=True)
    optimizer = LayerAdaptation(torch.optim.AdamW([w], lr=1e-2))

    def closure():
        optimizer.zero_grad()
        loss = w.square().sum()
        loss.backward()
        return loss

    with torch.no_grad():
        expected = w.square().sum()
    assert torch.equal(optimizer.step(closure), expected)


def test_bf16_combines_in_fp32() -> None:
    w = torch.randn(16, 16, dtype=torch.bfloat16, requires_grad=True)
    twin = w.detach().clone().requires_grad_()
    optimizer, plain = LayerAdaptation(optarena.Lion([w], lr=1e-2)), optarena.Lion([twin], lr=1e-2)
    for seed in range(3):
        grad = torch.randn(16, 16, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)
        w.grad, twin.grad = grad, grad
        old = twin.detach().float()
        optimizer.step()
        plain.step()
        with torch.no_grad():
            delta = twin.float() - old
            twin.copy_(old + 1e-2 * old.norm() / delta.norm() * delta)  # rounded to bf16 once
        assert torch.equal(w, twin)


def test_around_lazy_absent_rows_stay_put() -> None:
    emb = torch.nn.Embedding(20, 4, sparse=True, dtype=F64)
    optimizer = LayerAdaptation(Lazy(torch.optim.AdamW(emb.parameters(), lr=1e-2, weight_decay=0.1)))
    before = emb.weight.detach().clone()
    emb(torch.tensor([2, 5, 5])).sum().backward()
    optimizer.step()
    absent = [i for i in range(20) if i not in (2, 5)]
    assert torch.equal(emb.weight.detach()[absent], before[absent])
    assert not torch.equal(emb.weight.detach()[[2, 5]], before[[2, 5]])


# ------------------------------------------------------------------------------------------ checkpoints
def test_state_dict_resumes_in_a_fresh_process(tmp_path: Path) -> None:
    k, total = 3, 8
    payload, expected = {}, {}
    for case in ("layer-adaptation-adamw", "layer-adaptation-lion"):
        gen = torch.Generator().manual_seed(11)
        params = [torch.randn(s, generator=gen, dtype=F64).requires_grad_() for s in [(5, 4), (4,), ()]]
        grads = [[torch.randn(p.shape, generator=gen, dtype=F64) for p in params] for _ in range(total)]
        payload[case], expected[case] = checkpoint_midway(build_worker_case(case, params), params, grads, k)
        assert "layer_adaptation" in payload[case]["state_dict"]
    continued = continue_in_fresh_process("lazy_worker.py", payload, tmp_path)
    for case, want in expected.items():
        for w, got in zip(want, continued[case]):
            assert torch.equal(w, got), case


def test_a_base_that_needs_a_closure_is_refused_with_the_reason() -> None:
    """LBFGS failed inside its step with a bare TypeError (the wrapper evaluates the closure and steps it without)."""
    with pytest.raises(ValueError, match="LayerAdaptation: LBFGS.step needs a closure"):
        LayerAdaptation(torch.optim.LBFGS([torch.zeros(3, requires_grad=True)]))
