"""Timing, bandwidth and memory probes of ``optarena speed``, and its table."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..registry import state_bytes
from .candidate import Candidate, Unavailable


@dataclass
class Result:
    layout: str
    label: str
    source: str
    ms_per_step: float
    gb_per_s: float
    bandwidth_pct: float
    state_bytes_per_param: float
    peak_extra_mb: float  # MiB (2**20 bytes), as the table's "peak MiB" says; the key keeps its old name
    compile_s: float
    vs_adamw_fused: float | None = None
    samples_ms: list[float] = field(default_factory=list)
    grads_restored: bool = False  # its step freed or changed the gradients: they were put back outside the timing


def cpu_description(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name, family and widest vector extension, from /proc/cpuinfo (``platform.processor()`` is
    empty on Linux); timings are only comparable between runs on the same CPU."""
    try:
        with open(cpuinfo) as fh:
            text = fh.read()
    except OSError:
        return platform.processor()
    # the first processor's fields; Arm kernels call the flags line "Features"
    fields = dict(reversed(re.findall(r"^(model name|cpu family|model|flags|Features)\s*:\s*(.*)$", text, re.M)))
    flags = set((fields.get("flags") or fields.get("Features", "")).split())
    vector = next((v for v in ("avx512f", "avx2", "avx", "neon", "asimd") if v in flags), "")
    parts = [fields.get("model name", platform.processor())]
    if "cpu family" in fields:
        parts.append(f"family {fields['cpu family']} model {fields.get('model', '?')}")
    return ", ".join(p for p in [*parts, vector] if p)


def measure_bandwidth(numel: int, repeats: int = 9, device: torch.device | str = "cpu") -> float:
    """GB/s of ``a += b`` (reads 2, writes 1 element) over two ``numel`` fp32 buffers on ``device``: the in-place
    ceiling of the memory the timed steps use."""
    device = torch.device(device)
    a, b = torch.ones(numel, device=device), torch.ones(numel, device=device)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        a.add_(b)
        _sync(device)
        times.append(time.perf_counter() - start)
    return 12 * numel / statistics.median(times) / 1e9


@contextlib.contextmanager
def _without_profiler_chatter() -> Iterator[None]:
    """Drop the ``USDT: ... profiler_start`` / ``profiler_stop`` lines that kineto (torch 2.13) writes to fd 2 for
    every profiled region (two per candidate and layout: 156 lines in a full run), whatever its log level; any other
    output written meanwhile is passed on."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = b"".join(line for line in caught if not line.startswith(b"USDT:"))
            if kept:
                sys.stderr.write(kept.decode(errors="replace"))


def profiled_events(step: Callable[[], Any]) -> list[Any]:
    """The profiler's events (CPU and GPU, with memory) of one call; a memory event is named ``"[memory]"`` and its
    ``nbytes()`` is +bytes for an allocation, -bytes for a free."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with _without_profiler_chatter(), profile(activities=activities, profile_memory=True) as prof:
        step()
    return list(prof.profiler.kineto_results.events())


def memory_events(events: list[Any]) -> list[Any]:
    """The memory events of ``events`` in time order."""
    return sorted((e for e in events if e.name() == "[memory]"), key=lambda e: e.start_ns())


def peak_extra_bytes(step: Callable[[], Any]) -> int:
    """Peak of (allocated − freed) bytes during one call, from the profiler's memory events (CPU and GPU)."""
    live = peak = 0
    for e in memory_events(profiled_events(step)):
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class _Gradients:
    """The shared gradients, and their untouched copy: a step that frees them (heavyball sets ``p.grad = None``)
    or changes them must not leave the next candidate a no-op or other gradients."""

    def __init__(self, params: list[torch.nn.Parameter], grads: list[torch.Tensor]) -> None:
        self.params, self.grads = params, grads
        self.pristine = [g.clone() for g in grads]
        self.attach()

    def attach(self) -> None:
        for p, g in zip(self.params, self.grads):
            p.grad = g

    def disturbed(self) -> bool:
        """Whether a step freed, replaced or changed a gradient."""
        return (any(p.grad is not g for p, g in zip(self.params, self.grads))
                or not all(torch.equal(g, c) for g, c in zip(self.grads, self.pristine)))

    def restore(self) -> None:
        torch._foreach_copy_(self.grads, self.pristine)
        self.attach()


def _warm_up(cand: Candidate, params: list[torch.nn.Parameter], grads: _Gradients,
             device: torch.device) -> tuple[torch.optim.Optimizer, list[float], bool] | str:
    """Build ``cand`` and make its first two steps (state, compilation): the optimizer, the two steps' seconds and
    whether its steps disturb the gradients; or why it cannot be timed."""
    peer = cand.source not in ("optarena", "torch")  # optarena's and torch's own failures are bugs: they raise
    try:
        opt = cand.build(params)
        seconds, disturbs = [], False
        for _ in range(2):
            # every tensor, not one: a peer that skips some (a size threshold, one group) would be timed on a
            # fraction of the bytes its GB/s is computed over
            before = [p.detach().clone() for p in params]
            _sync(device)
            start = time.perf_counter()
            opt.step()
            _sync(device)
            seconds.append(time.perf_counter() - start)
            if grads.disturbed():
                disturbs = True
                grads.restore()
    except Exception as exc:
        if not peer:
            raise
        grads.restore()
        return f"failed to run: {type(exc).__name__}: {str(exc).strip()[:300]}"
    frozen = sum(torch.equal(b, p) for b, p in zip(before, params))
    if frozen == len(params):
        return "its step did not move the parameters"
    if frozen:
        return f"its step left {frozen} of {len(params)} parameter tensors unchanged"
    return opt, seconds, disturbs


def run_layout(layout: str, shapes: list[tuple[int, ...]], cands: list[Candidate], *, steps: int, rounds: int,
               device: torch.device, log: Callable[[str], None]) -> tuple[list[Result], list[Unavailable]]:
    """Time ``cands`` on ``shapes``; ``bandwidth_pct`` is left 0 for the caller, which knows the run's bandwidth.
    A candidate whose step frees or changes the gradients is timed step by step, the gradients put back between
    steps outside the timed region; one that cannot run or moves nothing is returned as unavailable."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen).mul_(0.02).to(device)) for s in shapes]
    grads = _Gradients(params, [torch.randn(p.shape, generator=gen).mul_(1e-3).to(device) for p in params])
    numel = sum(p.numel() for p in params)
    built: list[tuple[Candidate, torch.optim.Optimizer, list[float], bool]] = []
    missing: list[Unavailable] = []
    for cand in cands:
        warm = _warm_up(cand, params, grads, device)
        if isinstance(warm, str):
            log(f"  {layout}: not run {cand.label}: {warm}")
            missing.append(Unavailable(cand.label, cand.source, warm, layout))
            continue
        built.append((cand, *warm))
        note = "; its step frees or changes the gradients: they are put back between steps" if warm[2] else ""
        log(f"  {layout}: built {cand.label} (first steps {warm[1][0]:.2f} + {warm[1][1]:.2f} s){note}")
    samples: dict[str, list[float]] = {c.label: [] for c in cands}
    for r in range(rounds if built else 0):  # every candidate refused: nothing to time
        order = built[r % len(built):] + built[:r % len(built)]  # rotate so no candidate always runs first
        for cand, opt, _, disturbs in order:
            samples[cand.label].append(_time_steps(opt, steps, device, grads.restore if disturbs else None))
    results = []
    for cand, opt, first, disturbs in built:
        ms = statistics.median(samples[cand.label])
        compile_s = getattr(opt, "fused_compile_seconds", 0.0)
        if not compile_s and cand.compiles:  # a peer that compiles: the first two steps beyond two ordinary ones
            compile_s = max(0.0, sum(first) - 2 * ms / 1e3)
        # the fused step's scratch for packed small tensors is allocated once, not per step: counted here
        extra = peak_extra_bytes(opt.step) + getattr(opt, "fused_scratch_bytes", 0)
        if disturbs:
            grads.restore()
        results.append(Result(layout, cand.label, cand.source, ms, cand.min_bytes * numel / (ms / 1e3) / 1e9, 0.0,
                              state_bytes(opt) / numel, extra / 2**20, compile_s, samples_ms=samples[cand.label],
                              grads_restored=disturbs))
    base = next((r.ms_per_step for r in results if r.label == "torch AdamW fused"), None)
    for res in results:
        res.vs_adamw_fused = res.ms_per_step / base if base else None
    return results, missing


def _time_steps(opt: torch.optim.Optimizer, steps: int, device: torch.device,
                between: Callable[[], None] | None) -> float:
    """ms per step over ``steps`` steps; with ``between``, each step is timed alone and ``between`` runs after it,
    untimed."""
    total = 0.0
    for _ in range(1 if between is None else steps):
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps if between is None else 1):
            opt.step()
        _sync(device)
        total += time.perf_counter() - start
        if between is not None:
            between()
    return total / steps * 1e3


def format_table(results: list[Result], missing: Sequence[Unavailable] = ()) -> str:
    head = (f"{'layout':<9} {'optimizer / path':<26} {'ms/step':>9} {'×AdamW-f':>8} {'GB/s':>6} {'% bw':>5} "
            f"{'state B/p':>9} {'peak MiB':>8} {'compile s':>9}")
    lines = [head, "-" * len(head)]
    for r in results:
        ratio = f"{r.vs_adamw_fused:.2f}" if r.vs_adamw_fused is not None else "—"
        lines.append(f"{r.layout:<9} {r.label:<26} {r.ms_per_step:>9.2f} {ratio:>8} {r.gb_per_s:>6.1f} "
                     f"{r.bandwidth_pct:>5.0f} {r.state_bytes_per_param:>9.2f} {r.peak_extra_mb:>8.1f} "
                     f"{r.compile_s:>9.1f}")
    if any(r.grads_restored for r in results):
        lines.append("* freed or changed the gradients: timed step by step, the gradients put back untimed: "
                     + ", ".join(sorted({r.label for r in results if r.grads_restored})))
    for m in missing:
        lines.append(f"not run: {m.label}{f' ({m.layout})' if m.layout else ''}: {m.reason}")
    return "\n".join(lines)
