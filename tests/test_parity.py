"""Numerical parity: optarena's optimizers against the independent references in ``tests/reference.py``.

Every case runs float64 parameters of shapes 0-d, 1-d, 2-d, 4-d, a transposed and a strided (non-contiguous)
view, a parameter that never gets a grad, one whose grad is None on some steps, and all-zero grads on some steps,
in three param groups with different hyper-parameters, on seeded random grads (no model). Both execution paths
(foreach=False and foreach=True) are compared with the reference at every step, and with each other. A bf16 test
checks the "fp32 math, rounded into the bf16 param once per step" rule. Run with ``-s`` to see the observed errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch

import optarena

try:  # tests/ on sys.path (pytest's rootdir-relative "prepend" import of a directory without __init__.py)
    from reference import RefAdafactor, RefAdan, RefAdaX, RefAdEMAMix, RefAmos, RefLion, RefRLion, adax_vhat_ema
except ImportError:  # tests/ is a package
    from tests.reference import RefAdafactor, RefAdan, RefAdaX, RefAdEMAMix, RefAmos, RefLion, RefRLion, adax_vhat_ema

F64 = torch.float64
BF16 = torch.bfloat16
STEPS = 35
RTOL, ATOL = 1e-10, 1e-12  # optimizer vs reference, float64
PATH_RTOL, PATH_ATOL = 0.0, 0.0  # foreach vs per-tensor loop: the contract says identical (observed: bitwise)

# name, group index, shape. Flat order == group order (group 0, then 1, then 2).
SPECS = [
    ("scalar", 0, ()),
    ("vector", 0, (7,)),
    ("never", 0, (3,)),  # never gets a grad
    ("matrix", 1, (5, 6)),
    ("transposed", 1, (4, 6)),  # base(6, 4).t(): non-contiguous, and so are its grads
    ("sometimes", 1, (4, 4)),  # grad None on steps 0-2 and every step k % 4 == 1
    ("conv4d", 2, (2, 3, 4, 5)),
    ("strided", 2, (4, 3)),  # base(8, 9)[::2, ::3]: non-contiguous, with gaps
]
NAMES = [s[0] for s in SPECS]
ZERO_STEPS = (12, 13)  # every grad present is all-zero; plus "vector"'s first grad (step 0) is all-zero
REF_CLASSES = {"Lion": RefLion, "RLion": RefRLion, "Adan": RefAdan, "AdaX": RefAdaX, "Adafactor": RefAdafactor,
               "AdEMAMix": RefAdEMAMix, "Amos": RefAmos}
HAS_STEP_COUNTER = {"Adan", "AdaX", "Adafactor", "AdEMAMix", "Amos"}  # Lion/RLion: checked only if present


# ------------------------------------------------------------------------------------------------------ cases
@dataclass(frozen=True)
class Case:
    id: str
    opt: str  # class name in optarena
    hp: dict  # group hyper-parameters given to the constructor (every one explicitly)
    overrides: tuple  # three dicts: per-group overrides
    flags: dict = field(default_factory=dict)  # keyword-only constructor switches
    maximize: bool = False


LION_HP = dict(lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
LION_OV = ({}, dict(lr=3e-3, betas=(0.95, 0.98), weight_decay=0.0), dict(lr=3e-4, betas=(0.5, 0.9), weight_decay=1.0))
RLION_HP = dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
ADAN_HP = dict(lr=1e-2, betas=(0.98, 0.92, 0.99), eps=1e-8, weight_decay=0.02)
ADAN_OV = ({}, dict(lr=3e-3, betas=(0.9, 0.8, 0.999), eps=1e-6, weight_decay=0.1),
           dict(lr=2e-2, betas=(0.95, 0.9, 0.95), weight_decay=0.0))
ADAX_HP = dict(lr=1.5e-3, betas=(0.9, 1e-4), eps=1e-8, weight_decay=5e-4)
ADAX_OV = ({}, dict(lr=5e-3, betas=(0.8, 1e-3), eps=1e-6, weight_decay=5e-2),
           dict(lr=1e-2, betas=(0.95, 5e-4), weight_decay=0.0))
AF_HP = dict(lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), clip_threshold=1.0, weight_decay=0.0)
# group 1: lr above 1/sqrt(t) for t >= 12, update clipping tighter; group 2: relative step always 1/sqrt(t),
# explicit eps1, no update clipping in practice.
AF_OV = ({}, dict(lr=0.3, beta2_decay=-0.5, clip_threshold=0.5, weight_decay=0.1),
         dict(lr=0.6, eps=(1e-30, 1e-2), clip_threshold=100.0, weight_decay=0.01))
# group 1: the paper's α 8 and a shorter slow EMA; group 2: α 0 (Adam with a slow EMA kept but unused)
AEM_HP = dict(lr=1e-2, betas=(0.9, 0.999, 0.9999), alpha=5.0, eps=1e-8, weight_decay=0.01)
AEM_OV = ({}, dict(lr=3e-3, betas=(0.8, 0.99, 0.999), alpha=8.0, eps=1e-6, weight_decay=0.1),
          dict(lr=2e-2, betas=(0.95, 0.9, 0.99), alpha=0.0, weight_decay=0.0))
# group 1: lr 0.3 makes γ ≈ 0.1 per step, so that b and the decay factors c, d move far from 1 within 35 steps
AMOS_HP = dict(lr=1e-2, beta=0.999, eta=None, momentum=0.0, weight_decay=0.0, zeta=0.25, eps=2.0**-125)
AMOS_OV = ({}, dict(lr=0.3, beta=0.98, eta=0.1), dict(lr=5e-3, beta=0.9, zeta=1.0, weight_decay=0.1))
AMOS_MOMENTUM_OV = ({}, dict(lr=0.3, beta=0.98, eta=0.1, momentum=0.5), dict(lr=5e-3, beta=0.9, momentum=0.0))
ADAN_CLIP = 10.0  # global grad norm is ~1.5-150 here: clips on most steps, not on all

CASES = [
    Case("lion", "Lion", LION_HP, LION_OV),
    Case("lion-max", "Lion", LION_HP, LION_OV, maximize=True),
    Case("rlion-arctan-a1", "RLion", RLION_HP, LION_OV, dict(alpha=1.0, bound="arctan")),
    Case("rlion-arctan-a10-max", "RLion", RLION_HP, LION_OV, dict(alpha=10.0, bound="arctan"), maximize=True),
    Case("rlion-tanh-a3", "RLion", RLION_HP, LION_OV, dict(alpha=3.0, bound="tanh")),
    Case("rlion-tanh-a50", "RLion", RLION_HP, LION_OV, dict(alpha=50.0, bound="tanh")),
    Case("adan", "Adan", ADAN_HP, ADAN_OV, dict(no_prox=False, max_grad_norm=0.0)),
    Case("adan-noprox", "Adan", ADAN_HP, ADAN_OV, dict(no_prox=True, max_grad_norm=0.0)),
    Case("adan-clip", "Adan", ADAN_HP, ADAN_OV, dict(no_prox=False, max_grad_norm=ADAN_CLIP)),
    Case("adan-noprox-clip-max", "Adan", ADAN_HP, ADAN_OV, dict(no_prox=True, max_grad_norm=ADAN_CLIP),
         maximize=True),
    Case("adax-l2", "AdaX", ADAX_HP, ADAX_OV, dict(decoupled_weight_decay=False)),
    Case("adax-l2-max", "AdaX", ADAX_HP, ADAX_OV, dict(decoupled_weight_decay=False), maximize=True),
    Case("adax-decoupled", "AdaX", ADAX_HP, ADAX_OV, dict(decoupled_weight_decay=True)),
    Case("adax-decoupled-max", "AdaX", ADAX_HP, ADAX_OV, dict(decoupled_weight_decay=True), maximize=True),
    Case("adafactor", "Adafactor", AF_HP, AF_OV,
         dict(beta1=None, relative_step=True, scale_parameter=True, warmup_init=False)),
    Case("adafactor-beta1", "Adafactor", AF_HP, AF_OV,
         dict(beta1=0.9, relative_step=True, scale_parameter=True, warmup_init=False)),
    Case("adafactor-abs-noscale", "Adafactor", AF_HP, AF_OV,
         dict(beta1=None, relative_step=False, scale_parameter=False, warmup_init=False)),
    Case("adafactor-abs-scale-beta1-max", "Adafactor", AF_HP, AF_OV,
         dict(beta1=0.9, relative_step=False, scale_parameter=True, warmup_init=False), maximize=True),
    Case("adafactor-rel-noscale-beta1-max", "Adafactor", AF_HP, AF_OV,
         dict(beta1=0.9, relative_step=True, scale_parameter=False, warmup_init=False), maximize=True),
    Case("adafactor-warmup", "Adafactor", AF_HP, AF_OV,
         dict(beta1=None, relative_step=True, scale_parameter=True, warmup_init=True)),
    Case("ademamix", "AdEMAMix", AEM_HP, AEM_OV, dict(alpha_warmup=None, beta3_warmup=None)),
    # both warm-ups end within the run (steps 20 and 25 of 35): the schedules and their ends are compared
    Case("ademamix-warmup", "AdEMAMix", AEM_HP, AEM_OV, dict(alpha_warmup=20, beta3_warmup=25)),
    Case("ademamix-warmup-max", "AdEMAMix", AEM_HP, AEM_OV, dict(alpha_warmup=30, beta3_warmup=10), maximize=True),
    Case("amos", "Amos", AMOS_HP, AMOS_OV),
    Case("amos-max", "Amos", AMOS_HP, AMOS_OV, maximize=True),
    Case("amos-momentum", "Amos", {**AMOS_HP, "momentum": 0.9}, AMOS_MOMENTUM_OV),
]
CASE_BY_ID = {c.id: c for c in CASES}


# ------------------------------------------------------------------------------------------------------ data
def make_leaves(dtype: torch.dtype, seed: int = 0):
    """The parameters (leaf tensors, in SPECS order) and, for the two views, their base tensors."""
    gen = torch.Generator().manual_seed(seed)
    leaves, bases = [], {}
    for name, _, shape in SPECS:
        if name == "transposed":
            base = torch.randn(6, 4, generator=gen, dtype=F64).to(dtype)
            p, bases[name] = torch.nn.Parameter(base.t()), (base, lambda b: b.t())
        elif name == "strided":
            base = torch.randn(8, 9, generator=gen, dtype=F64).to(dtype)
            p, bases[name] = torch.nn.Parameter(base[::2, ::3]), (base, lambda b: b[::2, ::3])
        else:
            p = torch.nn.Parameter(torch.randn(shape, generator=gen, dtype=F64).to(dtype))
        leaves.append(p)
    assert not leaves[NAMES.index("transposed")].is_contiguous()
    assert not leaves[NAMES.index("strided")].is_contiguous()
    return leaves, bases


def make_grads(steps: int, dtype: torch.dtype, seed: int = 1):
    """grads[k][i]: the grad of parameter i at step k (None = no grad). Same values for every dtype."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for k in range(steps):
        scale = 10 ** (2 * torch.rand((), generator=gen, dtype=F64).item() - 1)  # 0.1 .. 10
        row = []
        for name, _, shape in SPECS:
            if name == "transposed":
                g = torch.randn(6, 4, generator=gen, dtype=F64).t()
            else:
                g = torch.randn(shape, generator=gen, dtype=F64)
            if name == "never" or (name == "sometimes" and (k < 3 or k % 4 == 1)):
                row.append(None)
                continue
            if k in ZERO_STEPS or (name == "vector" and k == 0):
                g = torch.zeros_like(g)
            row.append((g * scale).to(dtype))
        out.append(row)
    return out


def make_ref(case: Case, ref_params, round_to=None):
    groups = [{"params": [], **case.hp, **case.overrides[k]} for k in range(3)]
    for (_, gi, _), p in zip(SPECS, ref_params):
        groups[gi]["params"].append(p)
    extra = {"clip_eps": case.hp["eps"]} if case.opt == "Adan" else {}
    return REF_CLASSES[case.opt](groups, **case.flags, **extra, maximize=case.maximize, round_to=round_to)


class Run:
    """One optimizer on a fresh parameter set, optionally with a reference on copies of the same parameters."""

    def __init__(self, case: Case, *, foreach: bool, dtype=F64, with_ref=True):
        self.case = case
        self.leaves, self.bases = make_leaves(dtype)
        self.init = [p.detach().clone() for p in self.leaves]
        self.base_init = {n: b.clone() for n, (b, _) in self.bases.items()}
        self.ptrs = [p.data_ptr() for p in self.leaves]
        groups = [{"params": [], **case.overrides[k]} for k in range(3)]
        for (_, gi, _), p in zip(SPECS, self.leaves):
            groups[gi]["params"].append(p)
        cls = getattr(optarena, case.opt)
        self.opt = cls(groups, **case.hp, **case.flags, maximize=case.maximize, foreach=foreach)
        self.ref = None
        if with_ref:
            low = dtype in (torch.bfloat16, torch.float16)
            ref_dtype = torch.float32 if low else dtype
            self.ref = make_ref(case, [p.detach().to(ref_dtype).clone() for p in self.leaves],
                                round_to=dtype if low else None)

    def step(self, grads, k: int) -> None:
        for p, g in zip(self.leaves, grads):
            p.grad = None if g is None else g.clone()
        self.opt.step()
        for name, p, g in zip(NAMES, self.leaves, grads):
            if g is None:
                assert p.grad is None, f"{self.case.id} step {k}: {name}.grad was None and is now set"
            else:
                assert torch.equal(p.grad, g), f"{self.case.id} step {k}: optimizer modified {name}.grad"
        if self.ref is not None:
            self.ref.step(grads)

    def check_invariants(self, grads) -> None:
        """Never-grad param untouched and stateless, step counters, views still views of their bases."""
        cid, state = self.case.id, self.opt.state
        never = self.leaves[NAMES.index("never")]
        assert torch.equal(never.detach(), self.init[NAMES.index("never")]), f"{cid}: never-grad param changed"
        assert not state.get(never), f"{cid}: never-grad param has state {sorted(state.get(never, {}))}"
        for i, (name, p) in enumerate(zip(NAMES, self.leaves)):
            assert p.data_ptr() == self.ptrs[i], f"{cid}: {name} was re-allocated instead of updated in place"
            n_grads = sum(g[i] is not None for g in grads)
            if n_grads == 0:
                continue
            st = state.get(p, {})
            if "step" in st or self.case.opt in HAS_STEP_COUNTER:
                assert "step" in st, f"{cid}: {name} has no state['step'] (keys {sorted(st)})"
                assert float(st["step"]) == n_grads, f"{cid}: {name} step {float(st['step'])}, expected {n_grads}"
            if self.ref is not None:
                assert self.ref.steps(i) == n_grads
        for name, (base, view) in self.bases.items():
            p = self.leaves[NAMES.index(name)]
            assert torch.equal(view(base), p.detach()), f"{cid}: {name} no longer a view of its base"
            mask = torch.ones_like(base, dtype=torch.bool)
            view(mask).fill_(False)
            assert torch.equal(base[mask], self.base_init[name][mask]), f"{cid}: {name}: base changed outside the view"


# ------------------------------------------------------------------------------------------------------ reporting
@pytest.fixture(scope="module")
def report():
    """Collects the observed errors; printed at module teardown (visible with ``pytest -s``)."""
    rows: dict[str, list] = {}
    yield rows
    if rows:
        print("\n\nobserved (max abs err, max rel err | bitwise | bf16: max ulps, elements off, compared, moved):")
        for key in sorted(rows):
            vals = [f"{v:.2e}" if isinstance(v, float) else str(v) for v in rows[key]]
            print(f"  {key:36s} " + "  ".join(vals))


def _errors(actual, expected):
    """(max abs error, max relative error over elements with |expected| >= 1e-3)."""
    diff = (actual.double() - expected.double()).abs()
    if diff.numel() == 0:
        return 0.0, 0.0
    ref = expected.double().abs()
    big = ref >= 1e-3
    rel = float((diff[big] / ref[big]).max()) if bool(big.any()) else 0.0
    return float(diff.max()), rel


def _merge(rows, key, abs_err, rel_err):
    old = rows.get(key, [0.0, 0.0])
    rows[key] = [max(old[0], abs_err), max(old[1], rel_err)]


# ------------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matches_reference(case, foreach, report):
    run = Run(case, foreach=foreach)
    grads = make_grads(STEPS, F64)
    worst = [0.0, 0.0]
    for k, row in enumerate(grads):
        run.step(row, k)
        for name, p, q in zip(NAMES, run.leaves, run.ref.params):
            torch.testing.assert_close(p.detach(), q, rtol=RTOL, atol=ATOL,
                                       msg=lambda m, n=name, k=k: f"{case.id} step {k} param {n}: {m}")
            a, r = _errors(p.detach(), q)
            worst = [max(worst[0], a), max(worst[1], r)]
    # Displacements from the start, relative: catches errors far below the parameters' own scale.
    for name, p, q, p0 in zip(NAMES, run.leaves, run.ref.params, run.init):
        torch.testing.assert_close(p.detach() - p0, q - p0, rtol=1e-8, atol=1e-14,
                                   msg=lambda m, n=name: f"{case.id} displacement of {n}: {m}")
    run.check_invariants(grads)
    if case.opt == "Adan" and case.flags["max_grad_norm"] > 0:  # the clipping really happened, and not always
        norms = [math.sqrt(sum(float((g * g).sum()) for g in row if g is not None)) for row in grads]
        assert any(n > ADAN_CLIP for n in norms) and any(0 < n < ADAN_CLIP for n in norms)
    _merge(report, f"{case.opt} {'foreach' if foreach else 'loop'} vs ref", *worst)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_foreach_matches_loop(case, report):
    loop, fe = Run(case, foreach=False, with_ref=False), Run(case, foreach=True, with_ref=False)
    grads = make_grads(STEPS, F64)
    worst, bitwise = [0.0, 0.0], True
    for k, row in enumerate(grads):
        loop.step(row, k)
        fe.step(row, k)
        for name, p, q in zip(NAMES, fe.leaves, loop.leaves):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=PATH_RTOL, atol=PATH_ATOL,
                                       msg=lambda m, n=name, k=k: f"{case.id} step {k} param {n}: {m}")
            bitwise = bitwise and torch.equal(p.detach(), q.detach())
            a, r = _errors(p.detach(), q.detach())
            worst = [max(worst[0], a), max(worst[1], r)]
    fe.check_invariants(grads)
    key = f"{case.opt} foreach vs loop"
    _merge(report, key, *worst)
    report[key + " bitwise"] = [report.get(key + " bitwise", [True])[0] and bitwise]


def test_adafactor_matches_torch_adafactor():
    """The contract: beta1=None, relative_step, scale_parameter, no warmup == torch.optim.Adafactor."""
    case = CASE_BY_ID["adafactor"]
    grads = make_grads(STEPS, F64)
    for foreach in (False, True):
        run = Run(case, foreach=foreach, with_ref=False)
        leaves, _ = make_leaves(F64)
        rename = {"clip_threshold": "d"}
        groups = [{"params": [], **{rename.get(k, k): v for k, v in case.overrides[g].items()}} for g in range(3)]
        for (_, gi, _), p in zip(SPECS, leaves):
            groups[gi]["params"].append(p)
        hp = {rename.get(k, k): v for k, v in case.hp.items()}
        torch_opt = torch.optim.Adafactor(groups, **hp, foreach=foreach)
        for k, row in enumerate(grads):
            run.step(row, k)
            for p, g in zip(leaves, row):
                p.grad = None if g is None else g.clone()
            torch_opt.step()
            for name, p, q in zip(NAMES, run.leaves, leaves):
                torch.testing.assert_close(p.detach(), q.detach(), rtol=RTOL, atol=ATOL,
                                           msg=lambda m, n=name, k=k, f=foreach: f"foreach={f} step {k} {n}: {m}")


def test_adan_restart():
    """restart() clears all state; the next step is step 1 again (fresh reference on the current params)."""
    case = CASE_BY_ID["adan-clip"]
    run = Run(case, foreach=False)
    grads = make_grads(2 * STEPS, F64)
    for k in range(15):
        run.step(grads[k], k)
    run.opt.restart()
    assert all(not s for s in run.opt.state.values()), "restart() left state behind"
    run.ref = make_ref(case, [p.detach().clone() for p in run.leaves])
    for k in range(15, 15 + STEPS):
        run.step(grads[k], k)
        for name, p, q in zip(NAMES, run.leaves, run.ref.params):
            torch.testing.assert_close(p.detach(), q, rtol=RTOL, atol=ATOL,
                                       msg=lambda m, n=name, k=k: f"after restart, step {k} {n}: {m}")


# ------------------------------------------------------------------------------------------------------ bf16
def bf16_ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance in bf16 ulps between two bf16 tensors (consecutive representable values are 1 apart; +0 == -0)."""
    def key(x):
        bits = x.contiguous().view(torch.int16).to(torch.int32)
        mag = bits & 0x7FFF
        return torch.where(bits < 0, -mag, mag)
    return (key(a) - key(b)).abs()


def _scaled_lr(case: Case, scale: float) -> Case:
    """The same case with every learning rate times ``scale`` (bf16 steps must be comparable to a bf16 ulp)."""
    hp = {**case.hp, "lr": case.hp["lr"] * scale}
    overrides = tuple({**o, "lr": o["lr"] * scale} if "lr" in o else dict(o) for o in case.overrides)
    return Case(case.id, case.opt, hp, overrides, case.flags, case.maximize)


# case id -> lr scale: chosen so the typical per-step change is about 0.1-3 bf16 ulps of an O(1) parameter
BF16_CASES = {"lion": 10.0, "rlion-arctan-a10-max": 3.0, "adan-clip": 3.0, "adax-l2": 10.0,
              "adax-decoupled-max": 10.0, "adafactor-beta1": 1.0, "adafactor-abs-noscale": 1.0,
              "ademamix-warmup": 0.3, "amos-momentum": 1.0}
BF16_STEPS = 10


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
@pytest.mark.parametrize("case_id", list(BF16_CASES))
def test_bf16_matches_fp32_reference_rounded(case_id, foreach, report):
    """bf16 params: fp32 state and math, one rounding into the param per step. The reference runs in fp32 and
    rounds its params to bf16 after every step. Each step is compared within 1 bf16 ulp, then the reference's
    params are re-synced to the optimizer's (exactly representable), so a rare rounding tie cannot compound.
    Systematic double rounding would show up as many 1-ulp differences: at most 1 % of the elements may differ."""
    case = _scaled_lr(CASE_BY_ID[case_id], BF16_CASES[case_id])
    run = Run(case, foreach=foreach, dtype=BF16)
    grads = make_grads(BF16_STEPS, BF16)
    max_ulps, n_diff, n_total, n_moved = 0, 0, 0, 0
    for k, row in enumerate(grads):
        before = [p.detach().clone() for p in run.leaves]
        run.step(row, k)
        for name, p, q, p0 in zip(NAMES, run.leaves, run.ref.params, before):
            assert p.dtype == BF16
            ulps = bf16_ulps(p.detach(), q.to(BF16))
            assert int(ulps.max()) <= 1, (
                f"{case_id} step {k} {name}: {int(ulps.max())} bf16 ulps off\n{p.detach()}\n{q.to(BF16)}")
            max_ulps = max(max_ulps, int(ulps.max()))
            n_diff += int((ulps > 0).sum())
            n_total += ulps.numel()
            n_moved += int((p.detach() != p0).sum())
            q.copy_(p.detach().float())
    assert n_diff <= 0.01 * n_total, f"{case_id}: {n_diff} of {n_total} bf16 elements differ by 1 ulp"
    assert n_moved >= 0.3 * n_total, f"{case_id}: only {n_moved} of {n_total} bf16 elements ever moved (weak test)"
    for st in run.opt.state.values():
        for key, val in st.items():
            if torch.is_tensor(val) and val.is_floating_point() and key != "step":
                assert val.dtype == torch.float32, f"{case_id}: state[{key!r}] is {val.dtype}, expected float32"
    key = f"bf16 {case.opt} {'foreach' if foreach else 'loop'}"
    old = report.get(key, [0, 0, 0, 0])
    report[key] = [max(old[0], max_ulps), old[1] + n_diff, old[2] + n_total, old[3] + n_moved]


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
def test_adafactor_bf16_default_eps1_is_float32s(foreach):
    """bf16 params with gradients below bf16's eps (2⁻⁷): optarena floors sqrt(V) at float32's eps (its contract),
    so the relative update is still O(1). The reference used bf16's eps (torch's choice), under which such a
    parameter barely moved; the bf16 test above never saw the difference, its gradients are O(1)."""
    gen = torch.Generator().manual_seed(3)
    shapes = [(8,), (4, 6)]
    init = [torch.randn(s, generator=gen) for s in shapes]
    params = [torch.nn.Parameter(t.to(BF16)) for t in init]
    opt = optarena.Adafactor(params, foreach=foreach)
    ref = RefAdafactor([dict(params=[p.detach().float() for p in params], lr=1e-2, beta2_decay=-0.8,
                             eps=(None, 1e-3), clip_threshold=1.0, weight_decay=0.0)], round_to=BF16)
    start = [p.detach().clone() for p in params]
    for _ in range(3):
        grads = [torch.randn(s, generator=gen) * 1e-4 for s in shapes]
        for p, g in zip(params, grads):
            p.grad = g.to(BF16)
        opt.step()
        ref.step([p.grad.float() for p in params])
        for p, q in zip(params, ref.params):
            assert int(bf16_ulps(p.detach(), q.to(BF16)).max()) <= 1
            q.copy_(p.detach().float())
    moved = sum(int((p.detach() != s).sum()) for p, s in zip(params, start))
    assert moved >= 0.5 * sum(p.numel() for p in params)


# ------------------------------------------------------------------------------------------------------ references
def test_reference_lion_by_hand():
    p = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    ref = RefLion([{"params": [p], "lr": 0.1, "betas": (0.9, 0.99), "weight_decay": 0.5}])
    g = torch.tensor([0.3, -0.2, 0.0], dtype=F64)
    ref.step([g])  # decay by 0.95, then -lr*sign(0.1*g); m = 0.01*g
    torch.testing.assert_close(p, torch.tensor([0.95 - 0.1, -1.9 + 0.1, 0.475], dtype=F64), rtol=0, atol=1e-15)
    ref.step([-g])  # c = 0.9*0.01*g - 0.1*g = -0.091*g: steps against sign(g)
    torch.testing.assert_close(p, torch.tensor([0.85 * 0.95 + 0.1, -1.8 * 0.95 - 0.1, 0.475 * 0.95], dtype=F64),
                               rtol=0, atol=1e-15)
    ref.step([None])
    assert ref.steps(0) == 2


def test_reference_adax_raw_v_equals_ema_form():
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(5, generator=gen, dtype=F64) for _ in range(200)]
    p = torch.zeros(5, dtype=F64)
    ref = RefAdaX([{"params": [p], "lr": 1e-3, "betas": (0.9, 1e-4), "eps": 1e-8, "weight_decay": 0.0}])
    for g in grads:
        ref.step([g])
    v_hat = ref.state[0]["v"] / ((1 + 1e-4) ** 200 - 1)
    torch.testing.assert_close(v_hat, adax_vhat_ema(grads, 1e-4), rtol=1e-11, atol=0)


def test_reference_adafactor_matches_torch_adafactor():
    case = CASE_BY_ID["adafactor"]
    leaves, _ = make_leaves(F64)
    ref = make_ref(case, [p.detach().clone() for p in leaves])
    groups = [{"params": [], **{("d" if k == "clip_threshold" else k): v for k, v in case.overrides[g].items()}}
              for g in range(3)]
    for (_, gi, _), p in zip(SPECS, leaves):
        groups[gi]["params"].append(p)
    opt = torch.optim.Adafactor(groups, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0)
    for row in make_grads(STEPS, F64):
        for p, g in zip(leaves, row):
            p.grad = None if g is None else g.clone()
        opt.step()
        ref.step(row)
    for p, q in zip(leaves, ref.params):
        torch.testing.assert_close(p.detach(), q, rtol=RTOL, atol=ATOL)
