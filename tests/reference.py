"""Straightforward reference implementations of optarena's update rules, for the parity tests.

Written from the papers' update rules and the optarena API contract, deliberately NOT from optarena's code:
plain per-tensor Python, one class per algorithm, every formula in its most literal form (AdaX keeps the raw ``v``,
Adan keeps ``g_prev``, Adafactor writes the EMAs out), no foreach, no in-place tricks.

Every reference optimizer owns its own parameter tensors (give it copies) and is driven by ``step(grads)``, where
``grads`` is a flat list aligned with the concatenation of the groups' ``params`` (``None`` = no grad this step).

Each group is a dict: ``{"params": [tensors...], <hyper-parameter>: value, ...}`` holding *every* hyper-parameter
of that group explicitly (the tests merge constructor defaults and group overrides themselves).

The math runs in each parameter's own dtype (float64 in the main tests). ``round_to=torch.bfloat16`` simulates a
low-precision parameter: keep float32 params/state here, and after every step the parameter is rounded to bf16 and
back, exactly as optarena rounds an fp32 result into a bf16 parameter once per step. Adafactor's default eps1 is
the machine eps of the math dtype (float32 for a bf16 parameter, optarena's contract; torch.optim.Adafactor takes
the parameter dtype's, 2⁻⁷ for bf16, which floors sqrt(V) at 0.0078 and damps every gradient below it).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["RefAdEMAMix", "RefAdaX", "RefAdafactor", "RefAdan", "RefAmos", "RefLion", "RefOptimizer", "RefRLion",
           "adax_vhat_ema"]


class RefOptimizer:
    """Bookkeeping shared by the references: groups, per-parameter state and step counters, None-grad skipping."""

    def __init__(self, groups: list[dict], *, maximize: bool = False, round_to: torch.dtype | None = None):
        self.groups = groups
        self.maximize = maximize
        self.round_to = round_to
        self.state: dict[int, dict] = {}  # keyed by flat parameter index

    @property
    def params(self) -> list[Tensor]:
        return [p for group in self.groups for p in group["params"]]

    def _entries(self, grads: list[Tensor | None]):
        """Yield (flat index, group, param, g) for every param that has a grad; g is in the param's dtype and
        already negated for maximize."""
        flat = [(group, p) for group in self.groups for p in group["params"]]
        if len(grads) != len(flat):
            raise ValueError(f"expected {len(flat)} grads, got {len(grads)}")
        for i, ((group, p), g) in enumerate(zip(flat, grads)):
            if g is None:
                continue
            g = g.to(p.dtype)
            if self.maximize:
                g = -g
            yield i, group, p, g

    def _write(self, p: Tensor, new: Tensor) -> None:
        if self.round_to is not None:
            new = new.to(self.round_to).to(p.dtype)
        p.copy_(new)

    def steps(self, i: int) -> int:
        """How many steps parameter ``i`` has taken (0 if it never had a grad)."""
        return self.state[i]["step"] if i in self.state else 0

    @torch.no_grad()
    def step(self, grads: list[Tensor | None]) -> None:
        for i, group, p, g in self._entries(grads):
            self._update(i, group, p, g)

    def _update(self, i: int, group: dict, p: Tensor, g: Tensor) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------- Lion
class RefLion(RefOptimizer):
    """Lion (Chen et al. 2023). Group keys: lr, betas (b1, b2), weight_decay.

        θ ← θ·(1 − lr·wd);  c ← β1·m + (1 − β1)·g;  θ ← θ − lr·sign(c);  m ← β2·m + (1 − β2)·g
    """

    def _direction(self, c: Tensor) -> Tensor:
        return torch.sign(c)

    def _update(self, i, group, p, g):
        lr, (b1, b2), wd = group["lr"], group["betas"], group["weight_decay"]
        st = self.state.setdefault(i, {"step": 0, "m": torch.zeros_like(p)})
        st["step"] += 1
        m = st["m"]
        theta = p * (1 - lr * wd)
        c = b1 * m + (1 - b1) * g
        theta = theta - lr * self._direction(c)
        st["m"] = b2 * m + (1 - b2) * g
        self._write(p, theta)


class RefRLion(RefLion):
    """RLion: Lion with sign(c) replaced by a bounded map u(α·c); no bias correction of c.

    bound="arctan": u = (2/π)·arctan(α·c);  bound="tanh": u = tanh(α·c).
    """

    def __init__(self, groups, *, alpha: float, bound: str = "arctan", maximize=False, round_to=None):
        super().__init__(groups, maximize=maximize, round_to=round_to)
        if bound not in ("arctan", "tanh"):
            raise ValueError(bound)
        self.alpha = alpha
        self.bound = bound

    def _direction(self, c):
        if self.bound == "arctan":
            return (2 / math.pi) * torch.arctan(self.alpha * c)
        return torch.tanh(self.alpha * c)


# ---------------------------------------------------------------------------------------------------- Adan
class RefAdan(RefOptimizer):
    """Adan (Xie et al.), as the official Python code. Group keys: lr, betas (b1, b2, b3), eps, weight_decay.

    ``max_grad_norm > 0``: every grad of every group is first scaled by
    min(1, max_grad_norm / (global_norm + clip_eps)), clip_eps being the constructor's eps.
    """

    def __init__(self, groups, *, no_prox=False, max_grad_norm=0.0, clip_eps=1e-8, maximize=False, round_to=None):
        super().__init__(groups, maximize=maximize, round_to=round_to)
        self.no_prox = no_prox
        self.max_grad_norm = max_grad_norm
        self.clip_eps = clip_eps
        self.last_clip = 1.0  # the clip factor of the most recent step (for the tests)

    @torch.no_grad()
    def step(self, grads):
        entries = list(self._entries(grads))
        clip = 1.0
        if self.max_grad_norm > 0:
            global_norm = math.sqrt(sum(float((g * g).sum()) for _, _, _, g in entries))
            clip = min(1.0, self.max_grad_norm / (global_norm + self.clip_eps))
        self.last_clip = clip
        for i, group, p, g in entries:
            self._update(i, group, p, g * clip if clip != 1.0 else g)

    def _update(self, i, group, p, g):
        lr, (b1, b2, b3), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        st = self.state.setdefault(i, {"step": 0, "m": torch.zeros_like(p), "d": torch.zeros_like(p),
                                       "n": torch.zeros_like(p), "g_prev": None})
        st["step"] += 1
        t = st["step"]
        if t == 1:
            st["g_prev"] = g.clone()
        diff = g - st["g_prev"]
        st["m"] = b1 * st["m"] + (1 - b1) * g
        st["d"] = b2 * st["d"] + (1 - b2) * diff
        st["n"] = b3 * st["n"] + (1 - b3) * (g + b2 * diff) ** 2
        denom = torch.sqrt(st["n"]) / math.sqrt(1 - b3**t) + eps
        step = (lr / (1 - b1**t)) * st["m"] / denom + (lr * b2 / (1 - b2**t)) * st["d"] / denom
        if self.no_prox:
            theta = p * (1 - lr * wd) - step
        else:
            theta = (p - step) / (1 + lr * wd)
        st["g_prev"] = g.clone()
        self._write(p, theta)


# ---------------------------------------------------------------------------------------------------- AdaX
class RefAdaX(RefOptimizer):
    """AdaX (Li et al.), raw-v form (fine for moderate t). Group keys: lr, betas (b1, b2), eps, weight_decay.

    L2 (default): g ← g + wd·θ;  decoupled: θ ← θ·(1 − lr·wd).
    m ← β1 m + (1−β1) g;  v ← (1+β2) v + β2 g²;  v̂ = v/((1+β2)^t − 1);  θ ← θ − lr·m/(sqrt(v̂) + eps)
    """

    def __init__(self, groups, *, decoupled_weight_decay=False, maximize=False, round_to=None):
        super().__init__(groups, maximize=maximize, round_to=round_to)
        self.decoupled = decoupled_weight_decay

    def _update(self, i, group, p, g):
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        st = self.state.setdefault(i, {"step": 0, "m": torch.zeros_like(p), "v": torch.zeros_like(p)})
        st["step"] += 1
        t = st["step"]
        theta = p.clone()
        if self.decoupled:
            theta = theta * (1 - lr * wd)
        else:
            g = g + wd * p
        st["m"] = b1 * st["m"] + (1 - b1) * g
        st["v"] = (1 + b2) * st["v"] + b2 * g * g
        v_hat = st["v"] / ((1 + b2) ** t - 1)
        theta = theta - lr * st["m"] / (torch.sqrt(v_hat) + eps)
        self._write(p, theta)


def adax_vhat_ema(grads: list[Tensor], b2: float) -> Tensor:
    """AdaX's v̂ via the EMA form v̂ ← β̂·v̂ + (1 − β̂)·g², β̂ = 1 − β2/((1+β2)^t − 1): for checking the raw form."""
    v_hat = torch.zeros_like(grads[0])
    for t, g in enumerate(grads, start=1):
        b_hat = 1 - b2 / math.expm1(t * math.log1p(b2))
        v_hat = b_hat * v_hat + (1 - b_hat) * g * g
    return v_hat


# ---------------------------------------------------------------------------------------------------- Adafactor
def _rms(x: Tensor) -> float:
    return float(torch.sqrt((x * x).sum() / x.numel()))


class RefAdafactor(RefOptimizer):
    """Adafactor (Shazeer & Stern 2018) as the optarena contract states it.

    Group keys: lr, beta2_decay, eps (eps1 | None, eps2), clip_threshold, weight_decay.
    Constructor: beta1 (None = no momentum), relative_step, scale_parameter, warmup_init.
    Second moment factored over the last two dims for dim ≥ 2 (leading dims are batch dims), full for dim ≤ 1.
    """

    def __init__(self, groups, *, beta1=None, relative_step=True, scale_parameter=True, warmup_init=False,
                 maximize=False, round_to=None):
        super().__init__(groups, maximize=maximize, round_to=round_to)
        self.beta1 = beta1
        self.relative_step = relative_step
        self.scale_parameter = scale_parameter
        self.warmup_init = warmup_init

    def _update(self, i, group, p, g):
        lr, beta2_decay, wd, d = group["lr"], group["beta2_decay"], group["weight_decay"], group["clip_threshold"]
        eps1 = group["eps"][0] or torch.finfo(p.dtype).eps  # p holds the math dtype (float32 under round_to)
        eps2 = group["eps"][1]
        factored = p.dim() >= 2
        if i not in self.state:
            st = {"step": 0}
            if factored:
                st["row_var"] = torch.zeros(p.shape[:-1] + (1,), dtype=p.dtype)
                st["col_var"] = torch.zeros(p.shape[:-2] + (1, p.shape[-1]), dtype=p.dtype)
            else:
                st["var"] = torch.zeros_like(p)
            if self.beta1 is not None:
                st["m"] = torch.zeros_like(p)
            self.state[i] = st
        st = self.state[i]
        st["step"] += 1
        t = st["step"]

        w = t**beta2_decay  # 1 − β̂2_t
        if not self.relative_step:
            rho = lr
        elif self.warmup_init:
            rho = min(lr, 1e-6 * t, 1 / math.sqrt(t))
        else:
            rho = min(lr, 1 / math.sqrt(t))
        alpha = max(eps2, _rms(p)) * rho if self.scale_parameter else rho  # RMS(θ) before the decay

        theta = p * (1 - lr * wd)

        g2 = g * g
        if factored:
            st["row_var"] = (1 - w) * st["row_var"] + w * g2.mean(dim=-1, keepdim=True)
            st["col_var"] = (1 - w) * st["col_var"] + w * g2.mean(dim=-2, keepdim=True)
            row_mean = st["row_var"].mean(dim=-2, keepdim=True).clamp(min=eps1)
            var = torch.matmul(st["row_var"], st["col_var"]) / row_mean
        else:
            st["var"] = (1 - w) * st["var"] + w * g2
            var = st["var"]
        u = g / torch.sqrt(var.clamp(min=eps1 * eps1))
        u_hat = u / max(1.0, _rms(u) / d)
        if self.beta1 is not None:
            st["m"] = self.beta1 * st["m"] + (1 - self.beta1) * u_hat
            theta = theta - alpha * st["m"]
        else:
            theta = theta - alpha * u_hat
        self._write(p, theta)


# ---------------------------------------------------------------------------------------------------- AdEMAMix
class RefAdEMAMix(RefOptimizer):
    """AdEMAMix (Pagliardini et al. 2024), the paper's Algorithm 1 with its schedulers. Group keys: lr,
    betas (b1, b2, b3), alpha, eps, weight_decay. Constructor: alpha_warmup, beta3_warmup (None: no warm-up).

        m1 ← b1 m1 + (1−b1) g;  m2 ← b3_t m2 + (1−b3_t) g;  v ← b2 v + (1−b2) g²
        θ ← θ − lr·((m1/(1−b1^t) + alpha_t·m2)/(sqrt(v/(1−b2^t)) + eps) + wd·θ)
        alpha_t = min(t·alpha/T_a, alpha);  b3_t = min(exp(ln b1·ln b3/((1 − t/T_b)·ln b3 + (t/T_b)·ln b1)), b3)
    """

    def __init__(self, groups, *, alpha_warmup=None, beta3_warmup=None, maximize=False, round_to=None):
        super().__init__(groups, maximize=maximize, round_to=round_to)
        self.alpha_warmup = alpha_warmup
        self.beta3_warmup = beta3_warmup

    def _update(self, i, group, p, g):
        lr, (b1, b2, b3), alpha = group["lr"], group["betas"], group["alpha"]
        eps, wd = group["eps"], group["weight_decay"]
        st = self.state.setdefault(i, {"step": 0, "m1": torch.zeros_like(p), "m2": torch.zeros_like(p),
                                       "v": torch.zeros_like(p)})
        st["step"] += 1
        t = st["step"]
        if self.alpha_warmup is not None:
            alpha = min(t * alpha / self.alpha_warmup, alpha)
        if self.beta3_warmup is not None:
            T = self.beta3_warmup
            b3 = min(math.exp(math.log(b1) * math.log(b3) / ((1 - t / T) * math.log(b3) + (t / T) * math.log(b1))),
                     b3)
        st["m1"] = b1 * st["m1"] + (1 - b1) * g
        st["m2"] = b3 * st["m2"] + (1 - b3) * g
        st["v"] = b2 * st["v"] + (1 - b2) * g * g
        m1_hat = st["m1"] / (1 - b1**t)
        v_hat = st["v"] / (1 - b2**t)
        theta = p - lr * ((m1_hat + alpha * st["m2"]) / (torch.sqrt(v_hat) + eps) + wd * p)
        self._write(p, theta)


# ---------------------------------------------------------------------------------------------------- Amos
def amos_eta(shape) -> float:
    """The η heuristic optarena documents: sqrt(2/fan_in) for ≥ 2-D (fan_in = prod(shape[1:])), else 0.5."""
    if len(shape) < 2:
        return 0.5
    return math.sqrt(2 / math.prod(shape[1:]))


class RefAmos(RefOptimizer):
    """Amos (Tian & Parikh 2022) as jestimator's ``scale_by_amos`` (finetune_rate 1, init_b 0), with one second
    moment per tensor. Group keys: lr (ξ), beta, eta (None: ``amos_eta``), momentum, weight_decay, zeta, eps.

        v ← beta v + (1−beta) mean(g²);  r = (1 − beta^t)/max(v, eps)
        γ = rsqrt(1 + ζ sqrt(ξ) b)·ξ²·r·mean(g²);  init_lr = ξ η;  d = 1/(1 + ζ sqrt(init_lr) b)
        Δ = d·(−init_lr sqrt(r) g − ½ γ θ);  b ← b + γ (1 + b)
        θ ← θ + Δ   (momentum μ > 0: m ← μ m + (1−μ) Δ;  θ ← θ + m)
    weight_decay > 0 first multiplies θ by (1 − ξ·wd).
    """

    def _update(self, i, group, p, g):
        xi, beta, zeta, eps = group["lr"], group["beta"], group["zeta"], group["eps"]
        mu, wd = group["momentum"], group["weight_decay"]
        eta = amos_eta(p.shape) if group["eta"] is None else group["eta"]
        st = self.state.setdefault(i, {"step": 0, "v": 0.0, "b": 0.0, "m": torch.zeros_like(p)})
        st["step"] += 1
        t = st["step"]
        theta = p * (1 - xi * wd)
        g2 = float((g.double() ** 2).mean())
        st["v"] = beta * st["v"] + (1 - beta) * g2
        r = (1 - beta**t) / max(st["v"], eps)
        b = st["b"]
        gamma = (1 + zeta * math.sqrt(xi) * b) ** -0.5 * xi**2 * r * g2
        init_lr = xi * eta
        d = 1 / (1 + zeta * math.sqrt(init_lr) * b)
        delta = d * (-init_lr * math.sqrt(r) * g - 0.5 * gamma * theta)
        st["b"] = b + gamma * (1 + b)
        if mu > 0:
            st["m"] = mu * st["m"] + (1 - mu) * delta
            delta = st["m"]
        self._write(p, theta + delta)
