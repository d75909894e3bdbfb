"""What ``optarena speed`` times: optarena's optimizers on each path, torch's AdamW, and the peers
(:mod:`.peers`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..registry import get_optimizer_info

#: every path; ``compiled`` is ``torch.compile`` of the foreach step (:func:`compile_step`): a reference, not run by
#: default (cold, it compiled for 22 s (Lion) and 133 s (Adan) on 200 tensors, and grows with the tensor count).
PATHS = ("loop", "foreach", "fused", "fused-bf16", "fused-int8", "compiled")
DEFAULT_PATHS = PATHS[:-1]

_PATH_KWARGS: dict[str, dict[str, Any]] = {
    "loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True),
    "fused-bf16": dict(fused=True, state_dtype=torch.bfloat16), "fused-int8": dict(fused=True, state_dtype="int8"),
    "compiled": dict(foreach=True)}


def step_bytes(name: str, path: str = "fused") -> int:
    """The bytes a step of ``name`` must move per parameter element (``OptimizerInfo.step_bytes``); with 8-bit state
    each buffer moves 2 bytes instead of bf16's 4 (the block scales, 4 bytes per 256 elements, are left out)."""
    info = get_optimizer_info(name)
    value = info.step_bytes_bf16_state if path in ("fused-bf16", "fused-int8") else info.step_bytes
    if value is None:
        raise ValueError(f"{name!r} has no step_bytes in its OptimizerInfo")
    if path == "fused-int8":
        buffers = (info.step_bytes - value) // 4  # fp32 moves 8 bytes per buffer, bf16 4
        value -= 2 * buffers
    return value


@dataclass
class Candidate:
    label: str
    algorithm: str  # a registry name
    build: Callable[[list[Tensor]], torch.optim.Optimizer]
    min_bytes: float
    source: str = "optarena"
    compiles: bool = False  # its first steps compile (reported as compile time when it does not say itself)


@dataclass
class Unavailable:
    """A candidate that was asked for but not timed, and why (not installed, failed to run, froze the parameters);
    ``layout`` is None when it applies to every layout."""

    label: str
    source: str
    reason: str
    layout: str | None = None


def compile_step(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """``opt`` with its ``step`` replaced by ``torch.compile(opt.step, fullgraph=True)``: the compile a user gets for
    free, tracing the optimizer's own step (so its own math function), which the fused path should not lose to. The
    first call runs eagerly (it creates the state, which a traced first step would make dynamo guard on twice); the
    second compiles, its time kept as ``fused_compile_seconds``. Closures are not taken."""
    eager = opt.step
    compiled = torch.compile(eager, fullgraph=True)
    calls = 0

    def step(closure: Callable[[], Any] | None = None) -> Any:
        nonlocal calls
        if closure is not None:
            raise ValueError("the compiled speed reference takes no closure")
        calls += 1
        if calls == 1:
            return eager()
        if calls > 2:
            return compiled()
        start = time.perf_counter()
        # every optarena optimizer's step is one code object, compiled again for each instance: the default limit
        # of 8 would stop a full run (and with fullgraph=True raise) after 8 candidates
        with torch._dynamo.config.patch(recompile_limit=1024):
            loss = compiled()
        opt.fused_compile_seconds = time.perf_counter() - start
        return loss

    opt.step = step  # type: ignore[method-assign]
    return opt


def own_candidates(optimizers: list[str], paths: list[str]) -> list[Candidate]:
    """optarena's ``optimizers`` on ``paths`` (``fused-int8`` where the optimizer takes 8-bit state), then torch's
    AdamW on its three paths, the baseline."""
    out = []
    for name in optimizers:
        info = get_optimizer_info(name)
        for path in paths:
            if path == "fused-int8" and not info.int8_state:
                continue
            kwargs = {**_PATH_KWARGS[path], **(dict(weight_decay=0.01) if name != "adafactor" else {})}

            def build(ps: list[Tensor], cls: type = info.cls, kwargs: dict[str, Any] = kwargs,
                      compiled: bool = path == "compiled") -> torch.optim.Optimizer:
                opt = cls(ps, **kwargs)
                return compile_step(opt) if compiled else opt

            out.append(Candidate(f"{name} {path}", name, build, step_bytes(name, path),
                                 compiles=path.startswith("fused") or path == "compiled"))
    for path, kwargs in (("for-loop", dict(foreach=False)), ("foreach", dict(foreach=True)),
                         ("fused", dict(fused=True))):
        out.append(Candidate(f"torch AdamW {path}", "adamw",
                             lambda ps, k=kwargs: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01, **k),
                             step_bytes("adamw"), "torch"))
    return out

