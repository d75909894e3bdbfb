"""``optarena speed``: time every optimizer and execution path against torch's AdamW on this machine.

One run measures the in-place memory bandwidth (``a += b`` over a large buffer), then, per layout, builds one set of
parameters and gradients shared by every candidate (each keeps its own state), and times the candidates interleaved
round by round so that load from other processes hits all of them alike. Reported per candidate: median ms per
``step()``, effective GB/s from the minimal bytes the algorithm must move per parameter, its share of the measured
bandwidth, measured state bytes per parameter, peak extra memory allocated during one step, and the first step's
compile time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from .registry import get_optimizer_info, list_optimizers, state_bytes

#: name → shapes: one big tensor, 200 medium ones, 2000 small ones.
LAYOUTS: dict[str, list[tuple[int, ...]]] = {
    "1x16M": [(4096, 4096)],
    "200x82K": [(256, 320)] * 200,
    "2000x1K": [(32, 32)] * 2000,
}


def yolov8n_shapes() -> list[tuple[int, ...]]:
    """The trained parameters' shapes of ultralytics' YOLOv8n detector (built from its yaml; no weights are
    loaded)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    try:
        from ultralytics.nn.tasks import DetectionModel
    except ImportError as exc:
        raise SystemExit(f"the yolov8n layout needs ultralytics ({exc}); pip install ultralytics") from exc
    model = DetectionModel("yolov8n.yaml", nc=80, verbose=False)
    return [tuple(p.shape) for p in model.parameters() if p.requires_grad]  # the DFL layer's weight is frozen


def vit_s_shapes() -> list[tuple[int, ...]]:
    """The parameter shapes of a ViT-S encoder: 12 torch.nn.TransformerEncoderLayer(384, 6 heads, MLP 1536)."""
    layer = torch.nn.TransformerEncoderLayer(384, 6, 1536, batch_first=True)
    return [tuple(p.shape) for _ in range(12) for p in layer.parameters()]


#: name → shapes of a real model's parameters, made on request (``--layouts``; not run by default): YOLOv8n has
#: 183 tensors of 35 shapes (3.2M elements; 147 under 32K elements), the ViT-S encoder 144 tensors (21.3M).
MODEL_LAYOUTS: dict[str, Callable[[], list[tuple[int, ...]]]] = {"yolov8n": yolov8n_shapes, "vit-s": vit_s_shapes}

#: ``--quick``: the same three kinds, small enough for a smoke test.
QUICK_LAYOUTS: dict[str, list[tuple[int, ...]]] = {
    "1x64K": [(256, 256)],
    "20x2K": [(32, 64)] * 20,
    "200x64": [(8, 8)] * 200,
}

PATHS = ("loop", "foreach", "fused", "fused-bf16", "fused-int8")


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


@dataclass
class Result:
    layout: str
    label: str
    source: str
    ms_per_step: float
    gb_per_s: float
    bandwidth_pct: float
    state_bytes_per_param: float
    peak_extra_mb: float
    compile_s: float
    vs_adamw_fused: float | None = None
    samples_ms: list[float] = field(default_factory=list)


def candidates(optimizers: list[str], paths: list[str], peers: bool) -> list[Candidate]:
    out = []
    for name in optimizers:
        info = get_optimizer_info(name)
        cls = info.cls
        for path in paths:
            if path == "fused-int8" and not info.int8_state:
                continue
            kwargs: dict[str, Any] = {
                "loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True),
                "fused-bf16": dict(fused=True, state_dtype=torch.bfloat16),
                "fused-int8": dict(fused=True, state_dtype="int8")}[path]
            extra = dict(weight_decay=0.01) if name != "adafactor" else {}
            out.append(Candidate(f"{name} {path}", name, lambda ps, c=cls, k={**kwargs, **extra}: c(ps, **k),
                                 step_bytes(name, path)))
    for path, kwargs in (("for-loop", dict(foreach=False)), ("foreach", dict(foreach=True)),
                         ("fused", dict(fused=True))):
        out.append(Candidate(f"torch AdamW {path}", "adamw",
                             lambda ps, k=kwargs: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01, **k),
                             step_bytes("adamw"), "torch"))
    if peers:
        out.extend(_peer_candidates(optimizers))
    return out


def _peer_candidates(optimizers: list[str]) -> list[Candidate]:
    out = []
    try:
        import lion_pytorch

        if "lion" in optimizers:
            out.append(Candidate("lion-pytorch Lion", "lion",
                                 lambda ps: lion_pytorch.Lion(ps, lr=1e-4, weight_decay=0.01), step_bytes("lion"),
                                 "lion-pytorch"))
    except ImportError:
        pass
    try:
        import pytorch_optimizer as po

        if "lion" in optimizers:
            out.append(Candidate("pytorch-optimizer Lion", "lion",
                                 lambda ps: po.Lion(ps, lr=1e-4, weight_decay=0.01), step_bytes("lion"),
                                 "pytorch-optimizer"))
        if "adan" in optimizers:
            out.append(Candidate("pytorch-optimizer Adan", "adan",
                                 lambda ps: po.Adan(ps, lr=1e-3, weight_decay=0.02), step_bytes("adan"),
                                 "pytorch-optimizer"))
    except ImportError:
        pass
    out.extend(_memory_peer_candidates(optimizers))
    return out


def _memory_peer_candidates(optimizers: list[str]) -> list[Candidate]:
    """bitsandbytes' blockwise 8-bit optimizers (and its 32-bit Lion) and torch-optimi's, where installed; the
    bytes are those of the algorithm (8-bit state: 2 bytes per buffer read and written)."""
    out = []
    try:
        import bitsandbytes as bnb

        if "lion" in optimizers:
            out.append(Candidate("bitsandbytes Lion8bit", "lion", lambda ps: bnb.optim.Lion8bit(
                ps, lr=1e-4, weight_decay=0.01), step_bytes("lion", "fused-int8"), "bitsandbytes"))
            out.append(Candidate("bitsandbytes Lion", "lion", lambda ps: bnb.optim.Lion(
                ps, lr=1e-4, weight_decay=0.01), step_bytes("lion"), "bitsandbytes"))
        out.append(Candidate("bitsandbytes AdamW8bit", "adamw", lambda ps: bnb.optim.AdamW8bit(
            ps, lr=1e-3, weight_decay=0.01), step_bytes("adamw") - 12, "bitsandbytes"))
    except ImportError:
        pass
    try:
        import optimi

        if "lion" in optimizers:
            out.append(Candidate("torch-optimi Lion", "lion", lambda ps: optimi.Lion(
                ps, lr=1e-4, weight_decay=0.01), step_bytes("lion"), "torch-optimi"))
        out.append(Candidate("torch-optimi AdamW", "adamw", lambda ps: optimi.AdamW(
            ps, lr=1e-3, weight_decay=0.01), step_bytes("adamw"), "torch-optimi"))
    except ImportError:
        pass
    return out


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


def measure_bandwidth(numel: int, repeats: int = 9) -> float:
    """GB/s of ``a += b`` (reads 2, writes 1 element) over two ``numel`` fp32 buffers: the in-place ceiling."""
    a, b = torch.ones(numel), torch.ones(numel)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a.add_(b)
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


def peak_extra_bytes(step: Callable[[], Any]) -> int:
    """Peak of (allocated − freed) bytes during one call, from the profiler's memory events (CPU and GPU)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with _without_profiler_chatter(), profile(activities=activities, profile_memory=True) as prof:
        step()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:  # +bytes for an allocation, -bytes for a free
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_layout(layout: str, shapes: list[tuple[int, ...]], cands: list[Candidate], *, steps: int, rounds: int,
               device: torch.device, log: Callable[[str], None]) -> list[Result]:
    """Time ``cands`` on ``shapes``; ``bandwidth_pct`` is left 0 for the caller, which knows the run's bandwidth."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen).mul_(0.02).to(device)) for s in shapes]
    grads = [torch.randn(p.shape, generator=gen).mul_(1e-3).to(device) for p in params]
    for p, g in zip(params, grads):
        p.grad = g
    numel = sum(p.numel() for p in params)
    built: list[tuple[Candidate, torch.optim.Optimizer, float]] = []
    for cand in cands:
        opt = cand.build(params)
        _sync(device)
        start = time.perf_counter()
        opt.step()  # creates state; compiles a fused step
        _sync(device)
        first = time.perf_counter() - start
        compile_s = getattr(opt, "fused_compile_seconds", 0.0) or (first if "fused" in cand.label else 0.0)
        before = params[-1].detach().clone()
        opt.step()
        # a step that frees the gradients (heavyball sets p.grad = None) or moves nothing would time a no-op
        if any(p.grad is None for p in params) or torch.equal(before, params[-1]):
            log(f"  {layout}: left out {cand.label}: its step freed the gradients or did not move the parameters")
            for p, g in zip(params, grads):
                p.grad = g
            continue
        built.append((cand, opt, compile_s))
        log(f"  {layout}: built {cand.label} (first step {first:.2f} s)")
    samples: dict[str, list[float]] = {c.label: [] for c in cands}
    for r in range(rounds):
        order = built[r % len(built):] + built[:r % len(built)]  # rotate so no candidate always runs first
        for cand, opt, _ in order:
            _sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                opt.step()
            _sync(device)
            samples[cand.label].append((time.perf_counter() - start) / steps * 1e3)
    results = []
    for cand, opt, compile_s in built:
        ms = statistics.median(samples[cand.label])
        gbs = cand.min_bytes * numel / (ms / 1e3) / 1e9
        # the fused step's scratch for packed small tensors is allocated once, not per step: counted here
        extra = peak_extra_bytes(opt.step) + getattr(opt, "fused_scratch_bytes", 0)
        results.append(Result(layout, cand.label, cand.source, ms, gbs, 0.0,
                              state_bytes(opt) / numel, extra / 2**20, compile_s,
                              samples_ms=samples[cand.label]))
    base = next((r.ms_per_step for r in results if r.label == "torch AdamW fused"), None)
    for res in results:
        res.vs_adamw_fused = res.ms_per_step / base if base else None
    return results


def format_table(results: list[Result]) -> str:
    head = (f"{'layout':<9} {'optimizer / path':<26} {'ms/step':>9} {'×AdamW-f':>8} {'GB/s':>6} {'% bw':>5} "
            f"{'state B/p':>9} {'peak MB':>8} {'compile s':>9}")
    lines = [head, "-" * len(head)]
    for r in results:
        ratio = f"{r.vs_adamw_fused:.2f}" if r.vs_adamw_fused is not None else "—"
        lines.append(f"{r.layout:<9} {r.label:<26} {r.ms_per_step:>9.2f} {ratio:>8} {r.gb_per_s:>6.1f} "
                     f"{r.bandwidth_pct:>5.0f} {r.state_bytes_per_param:>9.2f} {r.peak_extra_mb:>8.1f} "
                     f"{r.compile_s:>9.1f}")
    return "\n".join(lines)


def _csv(choices: tuple[str, ...] | list[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in names if n not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)} (choose from {', '.join(choices)})")
        return names

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    own = [n for n in list_optimizers("optarena") if get_optimizer_info(n).step_bytes is not None]
    parser.add_argument("--optimizers", type=_csv(own), default=own,
                        help="comma-separated optarena optimizers (default: all)")
    parser.add_argument("--paths", type=_csv(PATHS), default=list(PATHS),
                        help=f"comma-separated paths (default: {','.join(PATHS)})")
    parser.add_argument("--layouts", default=None,
                        help=f"comma-separated layouts (default: {','.join(LAYOUTS)}; --quick: "
                             f"{','.join(QUICK_LAYOUTS)}); also the parameter shapes of a real model: "
                             f"{','.join(MODEL_LAYOUTS)}")
    parser.add_argument("--quick", action="store_true", help="small layouts and few steps: a smoke test")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed sample (default 3; --quick 2)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; --quick 2)")
    parser.add_argument("--no-peers", action="store_true", help="leave out lion-pytorch and pytorch-optimizer")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the results as JSON")


def run(args: argparse.Namespace) -> int:
    threads = torch.get_num_threads()
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(False)


def _run(args: argparse.Namespace) -> int:
    torch.set_flush_denormal(True)  # AdamW's moments drift into subnormals; that would time the FPU, not the step
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    default = QUICK_LAYOUTS if args.quick else LAYOUTS
    layouts = _csv([*default, *MODEL_LAYOUTS])(args.layouts) if args.layouts else list(default)
    shapes = {name: default[name] if name in default else MODEL_LAYOUTS[name]() for name in layouts}
    steps = args.steps or (2 if args.quick else 3)
    rounds = args.rounds or (2 if args.quick else 5)
    device = torch.device(args.device)
    cands = candidates(args.optimizers, args.paths, peers=not args.no_peers)

    def log(msg: str) -> None:
        print(msg, flush=True)

    # measured before every layout and at the end: load from other processes only lowers it, so the run reports the
    # highest (one reading at the start once came out at half the machine's figure)
    buffer_numel = 2**20 if args.quick else 2**25
    bandwidths = [measure_bandwidth(buffer_numel)]
    log(f"{torch.get_num_threads()} threads; torch {torch.__version__}")
    results: list[Result] = []
    for layout in layouts:
        results.extend(run_layout(layout, shapes[layout], cands, steps=steps, rounds=rounds, device=device,
                                  log=log))
        bandwidths.append(measure_bandwidth(buffer_numel))
    bandwidth = max(bandwidths)
    for res in results:
        res.bandwidth_pct = 100 * res.gb_per_s / bandwidth
    print(f"in-place bandwidth (a += b, {'4 MiB' if args.quick else '128 MiB'} fp32): {bandwidth:.1f} GB/s "
          f"(highest of {len(bandwidths)} readings: {', '.join(f'{b:.1f}' for b in bandwidths)})")
    print(format_table(results))
    if args.json:
        meta = dict(bandwidth_gb_s=bandwidth, bandwidth_readings_gb_s=bandwidths, threads=torch.get_num_threads(),
                    torch=torch.__version__,
                    device=str(device), machine=platform.machine(), processor=cpu_description(),
                    cpu_count=os.cpu_count(), steps=steps, rounds=rounds,
                    layouts={k: [list(s) for s in v[:1]] + [len(v)] for k, v in shapes.items()})
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "results": [asdict(r) for r in results]}, fh, indent=1)
    return 0
