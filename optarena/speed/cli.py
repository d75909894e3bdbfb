"""The ``optarena speed`` command line: arguments, the run, the table and the JSON file."""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections.abc import Callable
from dataclasses import asdict

import torch

from ..registry import get_optimizer_info, list_optimizers
from .candidate import DEFAULT_PATHS, PATHS, Candidate, Unavailable, own_candidates
from .layouts import LAYOUTS, MODEL_LAYOUTS, QUICK_LAYOUTS
from .measure import Result, cpu_description, format_table, measure_bandwidth, run_layout
from .peers import peer_candidates


def candidates(optimizers: list[str], paths: list[str], peers: bool) -> tuple[list[Candidate], list[Unavailable]]:
    """Everything to time, and the peers asked for that cannot be, with the reason."""
    own = own_candidates(optimizers, paths)
    if not peers:
        return own, []
    found, missing = peer_candidates(optimizers)
    return own + found, missing


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
    parser.add_argument("--paths", type=_csv(PATHS), default=list(DEFAULT_PATHS),
                        help=f"comma-separated paths (default: {','.join(DEFAULT_PATHS)}; 'compiled', "
                             "torch.compile of the foreach step, is a reference on request)")
    parser.add_argument("--layouts", type=_csv([*LAYOUTS, *QUICK_LAYOUTS, *MODEL_LAYOUTS]), default=None,
                        help=f"comma-separated layouts (default: {','.join(LAYOUTS)}; --quick: "
                             f"{','.join(QUICK_LAYOUTS)}, which any run may name); also the parameter shapes of a "
                             f"real model: {','.join(MODEL_LAYOUTS)}")
    parser.add_argument("--quick", action="store_true", help="small layouts and few steps: a smoke test")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed sample (default 3; --quick 2)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; --quick 2)")
    parser.add_argument("--no-peers", action="store_true",
                        help="leave out the other libraries' optimizers (lion-pytorch, pytorch-optimizer, "
                             "bitsandbytes, torch-optimi, heavyball, torchao)")
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
    layouts = args.layouts or list(default)
    fixed = {**LAYOUTS, **QUICK_LAYOUTS}
    shapes = {name: fixed[name] if name in fixed else MODEL_LAYOUTS[name]() for name in layouts}
    steps = args.steps or (2 if args.quick else 3)
    rounds = args.rounds or (2 if args.quick else 5)
    device = torch.device(args.device)
    cands, missing = candidates(args.optimizers, args.paths, peers=not args.no_peers)

    def log(msg: str) -> None:
        print(msg, flush=True)

    # measured before every layout and at the end: load from other processes only lowers it, so the run reports the
    # highest (one reading at the start once came out at half the machine's figure)
    buffer_numel = 2**20 if args.quick else 2**25
    bandwidths = [measure_bandwidth(buffer_numel)]
    log(f"{torch.get_num_threads()} threads; torch {torch.__version__}")
    for m in missing:
        log(f"  not run {m.label}: {m.reason}")
    results: list[Result] = []
    for layout in layouts:
        timed, failed = run_layout(layout, shapes[layout], cands, steps=steps, rounds=rounds, device=device, log=log)
        results.extend(timed)
        missing.extend(failed)
        bandwidths.append(measure_bandwidth(buffer_numel))
    bandwidth = max(bandwidths)
    for res in results:
        res.bandwidth_pct = 100 * res.gb_per_s / bandwidth
    print(f"in-place bandwidth (a += b, {'4 MiB' if args.quick else '128 MiB'} fp32): {bandwidth:.1f} GB/s "
          f"(highest of {len(bandwidths)} readings: {', '.join(f'{b:.1f}' for b in bandwidths)})")
    print(format_table(results, missing))
    if args.json:
        meta = dict(bandwidth_gb_s=bandwidth, bandwidth_readings_gb_s=bandwidths, threads=torch.get_num_threads(),
                    torch=torch.__version__,
                    device=str(device), machine=platform.machine(), processor=cpu_description(),
                    cpu_count=os.cpu_count(), steps=steps, rounds=rounds,
                    layouts={k: [list(s) for s in v[:1]] + [len(v)] for k, v in shapes.items()})
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "results": [asdict(r) for r in results],
                       "not_run": [asdict(m) for m in missing]}, fh, indent=1)
    return 0
