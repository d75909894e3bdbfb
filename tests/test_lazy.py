"""Lazy: absent rows keep their parameter and state bit for bit, present rows get exactly the base's own step, and
sparse gradients (nn.Embedding(sparse=True)) give the step of their dense equivalent.

The reference does Lazy by hand through public APIs only: the non-2-d parameters go through a plain base; for each
2-d parameter, the present rows are found with a Python loop, copied into a fresh leaf tensor, and a fresh base of
the same class (the group's hyper-parameters) steps it with that parameter's full-size state gathered in; rows and
state are written back. Run with ``-s`` to see the observed errors.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from fresh_process import checkpoint_midway, continue_in_fresh_process
from lazy_worker import build as build_worker_case

import optarena
from optarena.wrappers.lazy import Lazy

F64, BF16 = torch.float64, torch.bfloat16
STEPS = 12
SPARSE_TOL = 1e-12  # Lazy on sparse grads vs Lazy on the dense equivalent, float64 (observed: bitwise)

# class, constructor hyper-parameters, overrides for group 1
BASES: dict[str, tuple[type, dict, dict]] = {
    "lion": (optarena.Lion, dict(lr=1e-2, weight_decay=0.1), dict(lr=3e-3, betas=(0.8, 0.95))),
    "rlion": (optarena.RLion, dict(lr=3e-3, weight_decay=0.1, alpha=30.0), dict(lr=1e-3, bound="tanh")),
    "adan": (optarena.Adan, dict(lr=1e-2, weight_decay=0.02), dict(lr=3e-3)),
    "adan-noprox-maximize": (optarena.Adan, dict(lr=1e-2, weight_decay=0.02, no_prox=True, maximize=True),
                             dict(weight_decay=0.0)),
    "adax": (optarena.AdaX, dict(lr=1e-2, weight_decay=1e-3), dict(lr=3e-3)),
    "adaxw": (optarena.AdaX, dict(lr=1e-2, weight_decay=0.05, decoupled_weight_decay=True), {}),
    "adam": (torch.optim.Adam, dict(lr=1e-2, weight_decay=1e-2), dict(lr=3e-3)),
    "adam-amsgrad-maximize": (torch.optim.Adam, dict(lr=1e-2, amsgrad=True, maximize=True), {}),
    "adamw": (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1), dict(weight_decay=0.0)),
    "sgd-nesterov": (torch.optim.SGD, dict(lr=1e-2, momentum=0.9, weight_decay=1e-2, nesterov=True), dict(lr=3e-2)),
    "sgd-dampening": (torch.optim.SGD, dict(lr=1e-2, momentum=0.9, dampening=0.1), {}),
    "adamax": (torch.optim.Adamax, dict(lr=1e-2, weight_decay=1e-2), {}),
    "nadam": (torch.optim.NAdam, dict(lr=1e-2, weight_decay=1e-2), {}),
    "radam": (torch.optim.RAdam, dict(lr=1e-2, weight_decay=1e-2), {}),
    "rmsprop": (torch.optim.RMSprop, dict(lr=1e-2, momentum=0.5, centered=True), {}),
}

# name, group, shape
SPECS = [("emb", 0, (12, 5)), ("bias", 0, (5,)), ("scalar", 0, ()),
         ("emb2", 1, (8, 3)), ("conv", 1, (2, 3, 4)), ("linear", 1, (6, 4))]
NAMES = [s[0] for s in SPECS]
LR_CHANGE_STEP = 7  # group 0's lr is halved here: the per-step optimizer must see it


def make_params(dtype=F64, seed=0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=gen, dtype=F64).to(dtype).requires_grad_()
            for name, _, shape in SPECS}


def make_grads(dtype=F64, seed=1) -> list[dict[str, torch.Tensor | None]]:
    """Row patterns: random subsets, a step with no row present, a step with all present (the base's own path),
    present rows with some zero entries, a 2-d param without a grad on some steps."""
    gen = torch.Generator().manual_seed(seed)
    steps = []
    for t in range(STEPS):
        grads: dict[str, torch.Tensor | None] = {}
        for name, _, shape in SPECS:
            g = torch.randn(shape, generator=gen, dtype=F64)
            if len(shape) == 2:
                keep = torch.rand(shape[0], generator=gen) < {"emb": 0.4, "emb2": 0.5, "linear": 0.9}[name]
                if (name, t) in {("emb", 3)}:
                    keep[:] = False
                if (name, t) in {("emb", 6), ("linear", 0), ("linear", 1), ("linear", 2)}:
                    keep[:] = True
                keep[0] = keep[0] or t == 0  # row 0 present at the first step; row 1 first appears later
                keep[1] = keep[1] and t >= 5
                g[~keep] = 0
                if t == 2:
                    g[:, 0] = 0  # zero entries inside present rows
            if name == "emb2" and (t < 2 or t % 3 == 0):
                g = None
            grads[name] = None if g is None else g.to(dtype)
        steps.append(grads)
    return steps


def build(name: str, params: dict[str, torch.Tensor], keep=lambda p: True) -> torch.optim.Optimizer:
    cls, hp, overrides = BASES[name]
    groups = [[params[n] for n, gi, _ in SPECS if gi == i and keep(params[n])] for i in (0, 1)]
    return cls([{"params": groups[0]}, {"params": groups[1], **overrides}], **hp)


def set_grads(params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor | None]) -> None:
    for n, p in params.items():
        p.grad = grads[n]


def is_row_state(value, shape) -> bool:
    return isinstance(value, torch.Tensor) and value.shape == shape


class Reference:
    """Lazy by hand (see the module docstring)."""

    def __init__(self, name: str, params: dict[str, torch.Tensor]) -> None:
        self.cls = BASES[name][0]
        self.params = params
        self.plain = build(name, params, keep=lambda p: p.ndim != 2)
        self.state: dict[str, dict] = {n: {} for n, p in params.items() if p.ndim == 2}

    @torch.no_grad()
    def step(self, grads: dict[str, torch.Tensor | None]) -> None:
        for n, p in self.params.items():
            p.grad = grads[n] if p.ndim != 2 else None
        self.plain.step()
        for n, gi, _ in SPECS:
            full, g = self.params[n], grads[n]
            if full.ndim != 2 or g is None:
                continue
            rows = [i for i in range(g.shape[0]) if any(float(x) != 0.0 for x in g[i])]
            if not rows:
                continue
            idx = torch.tensor(rows)
            sub = full.detach()[idx].clone()
            sub.grad = g[idx].clone()
            group = {k: v for k, v in self.plain.param_groups[gi].items() if k != "params"}
            opt = self.cls([{**group, "params": [sub]}])
            state = self.state[n]
            if state:
                opt.state[sub] = {k: v[idx].clone() if is_row_state(v, full.shape) else copy.deepcopy(v)
                                  for k, v in state.items()}
            opt.step()
            full[idx] = sub
            for k, v in opt.state[sub].items():
                if is_row_state(v, sub.shape):
                    state.setdefault(k, torch.zeros(full.shape, dtype=v.dtype))[idx] = v
                else:
                    state[k] = copy.deepcopy(v)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max())


def halve_lr(optimizer: torch.optim.Optimizer) -> None:
    optimizer.param_groups[0]["lr"] *= 0.5


# ------------------------------------------------------------------------------------------ dense gradients
CASES = [(name, F64) for name in BASES] + [(name, BF16) for name in ("lion", "adan", "adamw")]


@pytest.mark.parametrize(("name", "dtype"), CASES, ids=[f"{n}-{str(d)[6:]}" for n, d in CASES])
def test_dense_matches_reference_and_absent_rows_are_untouched(name: str, dtype: torch.dtype) -> None:
    params, ref_params = make_params(dtype), make_params(dtype)
    optimizer = Lazy(build(name, params))
    reference = Reference(name, ref_params)
    worst = 0.0
    for t, grads in enumerate(make_grads(dtype)):
        if t == LR_CHANGE_STEP:
            halve_lr(optimizer)
            halve_lr(reference.plain)
        before = {n: params[n].detach().clone() for n in ("emb", "emb2", "linear")}
        state_before = {n: copy.deepcopy(optimizer.base.state.get(params[n], {})) for n in before}
        grad_objects = {n: (g, None if g is None else g.clone()) for n, g in grads.items()}
        set_grads(params, grads)
        optimizer.step()
        reference.step(grads)

        for n, (g, saved) in grad_objects.items():  # p.grad is the caller's tensor, unchanged
            assert params[n].grad is g and (g is None or torch.equal(g, saved)), n
        for n in NAMES:
            worst = max(worst, max_diff(params[n], ref_params[n]))
            assert torch.equal(params[n], ref_params[n]), f"{name} step {t}: {n}"
        for n, rows_before in before.items():
            g = grads[n]
            absent = torch.ones(rows_before.shape[0], dtype=torch.bool) if g is None else ~g.ne(0).any(dim=1)
            assert torch.equal(params[n].detach()[absent], rows_before[absent]), f"step {t}: {n} absent rows moved"
            state = optimizer.base.state.get(params[n], {})
            if absent.all():
                assert set(state) == set(state_before[n]), f"step {t}: {n} state created without rows"
            for k, v in state_before[n].items():
                if is_row_state(v, rows_before.shape):
                    assert torch.equal(state[k][absent], v[absent]), f"step {t}: {n} state {k!r} changed at absent rows"
                elif absent.all():
                    assert torch.equal(torch.as_tensor(state[k]), torch.as_tensor(v)), f"step {t}: {n} {k!r} advanced"
            if n in reference.state:
                assert set(state) == set(reference.state[n])
                for k, v in reference.state[n].items():
                    assert torch.equal(torch.as_tensor(state[k]), torch.as_tensor(v)), f"step {t}: {n} state {k!r}"
    buffers = [v for p, s in optimizer.base.state.items() for v in s.values()
               if p.ndim == 2 and is_row_state(v, p.shape)]
    if dtype is BF16 and isinstance(optimizer.base, optarena.optim.OptarenaOptimizer):
        assert all(v.dtype == torch.float32 for v in buffers), "optarena keeps bf16 params' state in fp32"
    else:
        assert all(v.dtype == dtype for v in buffers)
    print(f"\n{name}/{dtype}: max |Lazy − reference| = {worst:.1e}")


@pytest.mark.parametrize("name", ["lion", "adan", "adamw", "sgd-nesterov"])
def test_all_rows_present_is_the_base(name: str) -> None:
    params, plain_params = make_params(), make_params()
    optimizer, plain = Lazy(build(name, params)), build(name, plain_params)
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        grads = {n: torch.randn(p.shape, generator=gen, dtype=F64) for n, p in params.items()}
        set_grads(params, grads)
        set_grads(plain_params, grads)
        optimizer.step()
        plain.step()
    for n in NAMES:
        assert torch.equal(params[n], plain_params[n]), n


# ------------------------------------------------------------------------------------------ sparse gradients
def to_sparse(g: torch.Tensor, variant: int) -> torch.Tensor:
    """A sparse gradient with the same values as dense ``g``: uncoalesced hybrid COO with duplicate rows (each
    present row listed twice, halves of it, exact in binary) and an explicit all-zero row; a coalesced hybrid
    COO; or a plain (sparse_dim 2) COO."""
    rows = g.ne(0).any(dim=1).nonzero().squeeze(1)
    if variant == 1:
        return g.to_sparse(1).coalesce()
    if variant == 2:
        return g.to_sparse()
    absent = (~g.ne(0).any(dim=1)).nonzero().squeeze(1)[:1]
    indices = torch.cat([rows.flip(0), absent, rows])
    values = torch.cat([g[rows.flip(0)] * 0.5, g.new_zeros((absent.numel(), g.shape[1])), g[rows] * 0.5])
    return torch.sparse_coo_tensor(indices.unsqueeze(0), values, g.shape, check_invariants=True)


@pytest.mark.parametrize("name", list(BASES))
def test_sparse_grads_match_dense_equivalent(name: str) -> None:
    dense_params, sparse_params = make_params(), make_params()
    dense_opt, sparse_opt = Lazy(build(name, dense_params)), Lazy(build(name, sparse_params))
    worst = 0.0
    for t, grads in enumerate(make_grads()):
        sparse_grads = {n: to_sparse(g, t % 3) if g is not None and g.ndim == 2 else g for n, g in grads.items()}
        saved = {n: (g.is_coalesced(), g._indices().clone(), g._values().clone())
                 for n, g in sparse_grads.items() if g is not None and g.is_sparse}
        set_grads(dense_params, grads)
        set_grads(sparse_params, sparse_grads)
        dense_opt.step()
        sparse_opt.step()
        for n, (coalesced, indices, values) in saved.items():  # the caller's sparse grad is left as it was
            g = sparse_params[n].grad
            assert g is sparse_grads[n] and g.is_coalesced() == coalesced
            assert torch.equal(g._indices(), indices) and torch.equal(g._values(), values)
        for n in NAMES:
            worst = max(worst, max_diff(sparse_params[n], dense_params[n]))
            torch.testing.assert_close(sparse_params[n], dense_params[n], rtol=SPARSE_TOL, atol=SPARSE_TOL)
            s_state = sparse_opt.base.state.get(sparse_params[n], {})
            d_state = dense_opt.base.state.get(dense_params[n], {})
            assert set(s_state) == set(d_state), n
            for k in d_state:
                torch.testing.assert_close(torch.as_tensor(s_state[k]), torch.as_tensor(d_state[k]),
                                           rtol=SPARSE_TOL, atol=SPARSE_TOL)
    print(f"\n{name}: max |sparse − dense| = {worst:.1e}")


@pytest.mark.parametrize("name", ["lion", "adan", "adamw", "sgd-nesterov"])
def test_embedding_sparse_true_matches_sparse_false(name: str) -> None:
    """End to end through nn.Embedding: padding_idx and repeated tokens included; rows never looked up (and the
    padding row) keep their initial values exactly."""
    models = []
    for sparse in (True, False):
        torch.manual_seed(0)
        emb = torch.nn.Embedding(40, 6, padding_idx=0, sparse=sparse, dtype=F64)
        head = torch.nn.Linear(6, 1, dtype=F64)
        models.append((emb, head, Lazy(BASES[name][0](list(emb.parameters()) + list(head.parameters()),
                                                     **BASES[name][1]))))
    initial = models[0][0].weight.detach().clone()
    gen = torch.Generator().manual_seed(5)
    seen = {0}
    for _ in range(6):
        tokens = torch.randint(0, 20, (3, 5), generator=gen)
        tokens[0, :2] = 0  # padding
        seen.update(tokens.flatten().tolist())
        for emb, head, optimizer in models:
            optimizer.zero_grad()
            head(emb(tokens)).square().mean().backward()
            optimizer.step()
    (sparse_emb, sparse_head, _), (dense_emb, dense_head, _) = models
    assert sparse_emb.weight.grad.is_sparse
    torch.testing.assert_close(sparse_emb.weight, dense_emb.weight, rtol=SPARSE_TOL, atol=SPARSE_TOL)
    torch.testing.assert_close(sparse_head.weight, dense_head.weight, rtol=SPARSE_TOL, atol=SPARSE_TOL)
    untouched = [i for i in range(40) if i not in seen or i == 0]
    assert torch.equal(sparse_emb.weight.detach()[untouched], initial[untouched])
    moved = sorted(seen - {0})
    assert not torch.equal(sparse_emb.weight.detach()[moved], initial[moved])


# ------------------------------------------------------------------------------------------ API
def test_closure_is_evaluated_before_the_rows_are_split() -> None:
    emb = torch.nn.Embedding(10, 3, sparse=True, dtype=F64)
    twin = copy.deepcopy(emb)
    tokens = torch.tensor([1, 4, 4])
    optimizer = Lazy(optarena.Lion(emb.parameters(), lr=1e-2))
    twin_optimizer = Lazy(optarena.Lion(twin.parameters(), lr=1e-2))

    def closure():
        optimizer.zero_grad()
        loss = emb(tokens).sum()
        loss.backward()
        return loss

    with torch.no_grad():
        expected_loss = emb(tokens).sum()
    assert torch.equal(optimizer.step(closure), expected_loss)
    twin(tokens).sum().backward()
    twin_optimizer.step()
    assert torch.equal(emb.weight, twin.weight)


def test_refuses_bases_that_are_not_elementwise() -> None:
    p = torch.zeros(4, 3, requires_grad=True)
    with pytest.raises(TypeError, match="must be a torch.optim.Optimizer"):
        Lazy([p])
    with pytest.raises(ValueError, match="Adafactor is not elementwise"):
        Lazy(optarena.Adafactor([p]))
    with pytest.raises(ValueError, match="Adafactor is not elementwise"):
        Lazy(torch.optim.Adafactor([p]))
    with pytest.raises(ValueError, match="max_grad_norm=0.5.*global"):
        Lazy(optarena.Adan([p], max_grad_norm=0.5))
    with pytest.raises(ValueError, match="unsupported base SparseAdam"):
        Lazy(torch.optim.SparseAdam([p]))
    with pytest.raises(ValueError, match="already wrapped in a Lazy"):
        Lazy(Lazy(optarena.Lion([p])))
    Lazy(optarena.Adan([p]))  # Adan without clipping is fine


def test_non_2d_sparse_grad_still_reaches_the_base_and_errors() -> None:
    p = torch.zeros(2, 3, 4, requires_grad=True)
    p.grad = torch.zeros(2, 3, 4).to_sparse()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        Lazy(optarena.Lion([p])).step()


# ------------------------------------------------------------------------------------------ checkpoints
def test_state_dict_resumes_in_a_fresh_process(tmp_path: Path) -> None:
    """Save after k steps, load into a fresh Lazy in a new process (weights_only=True), continue: identical to an
    uninterrupted run, bit for bit. The embedding gets sparse grads."""
    k, total = 3, 8
    payload, expected = {}, {}
    for case in ("lazy-lion", "lazy-adan", "lazy-adax", "lazy-adamw", "lazy-sgd"):
        gen = torch.Generator().manual_seed(7)
        params = [torch.randn(s, generator=gen, dtype=F64).requires_grad_() for s in [(10, 4), (4,), (3, 4)]]
        grads = []
        for t in range(total):
            emb_grad = torch.randn(10, 4, generator=gen, dtype=F64)
            emb_grad[torch.rand(10, generator=gen) < 0.6] = 0
            linear_grad = torch.randn(3, 4, generator=gen, dtype=F64)
            linear_grad[t % 3] = 0
            grads.append([to_sparse(emb_grad, t % 3), torch.randn(4, generator=gen, dtype=F64), linear_grad])
        payload[case], expected[case] = checkpoint_midway(build_worker_case(case, params), params, grads, k)
        assert "lazy" in payload[case]["state_dict"]
    continued = continue_in_fresh_process("lazy_worker.py", payload, tmp_path)
    for case, want in expected.items():
        for w, got in zip(want, continued[case]):
            assert torch.equal(w, got), case


def test_global_step_hooks_see_the_base_and_lazy_only() -> None:
    """The short-lived optimizer of a torch base's gathered rows stepped through torch's hook wrapper: a global step
    hook saw one extra Adam step per lazy parameter and step, of an optimizer the user never made."""
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    seen: list[str] = []
    handles = [register(lambda opt, args, kwargs: seen.append(type(opt).__name__))
               for register in (register_optimizer_step_pre_hook, register_optimizer_step_post_hook)]
    try:
        w = torch.nn.Parameter(torch.ones(4, 2))
        opt = Lazy(torch.optim.Adam([w], lr=0.1))
        w.grad = torch.zeros(4, 2)
        w.grad[1] = 1.0
        opt.step()
    finally:
        for handle in handles:
            handle.remove()
    assert sorted(seen) == ["Adam", "Adam", "Lazy", "Lazy"]  # pre and post: the base's step and Lazy's
    assert torch.equal(w[[0, 2, 3]], torch.ones(3, 2)) and bool((w[1] < 1).all())  # the row still stepped


@pytest.mark.parametrize("sparse", [False, True])
def test_complex_parameters_step_their_present_rows(sparse: bool) -> None:
    """torch's Adam takes complex parameters; Lazy's row test failed on them with a bare NotImplementedError
    ("max_values_cpu" not implemented for 'ComplexFloat')."""
    w = torch.nn.Parameter(torch.ones(3, 2, dtype=torch.complex64))
    row = torch.nn.Parameter(torch.ones(1, 2, dtype=torch.complex64))
    grad = torch.zeros(3, 2, dtype=torch.complex64)
    grad[1] = torch.tensor([1 + 2j, -3 + 0.5j])
    w.grad = grad.to_sparse() if sparse else grad
    row.grad = grad[1:2].clone()
    Lazy(torch.optim.Adam([w], lr=0.1)).step()
    torch.optim.Adam([row], lr=0.1).step()
    assert torch.equal(w[1:2], row) and torch.equal(w[[0, 2]], torch.ones(2, 2, dtype=torch.complex64))
