"""The ``optarena speed`` command line: arguments, the run, the table and the JSON file."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from ..atomic import write_atomically
from ..registry import get_optimizer_info, list_optimizers
from ..validation import MAX_THREADS, positive_int_arg
from .candidate import DEFAULT_PATHS, PATHS, Candidate, Unavailable, own_candidates
from .layouts import LAYOUTS, MODEL_LAYOUTS, QUICK_LAYOUTS
from .measure import Result, cpu_description, format_table, measure_bandwidth, run_layout
from .peers import peer_candidates


def candidates(optimizers: list[str], paths: list[str], peers: bool) -> tuple[list[Candidate], list[Unavailable]]:
    """Everything to time, and what was asked for that cannot be (8-bit state an optimizer does not take, a peer
    not installed), with the reason."""
    own = own_candidates(optimizers, paths)
    skipped = [Unavailable(f"{name} fused-int8", "optarena", "it takes no 8-bit state (state_dtype='int8')")
               for name in optimizers if "fused-int8" in paths and not get_optimizer_info(name).int8_state]
    if not peers:
        return own, skipped
    found, missing = peer_candidates(optimizers)
    return own + found, skipped + missing


def _not_timed(name: str) -> str:
    """Why a registered optimizer is not among ``--optimizers``' choices ("unknown" would be wrong)."""
    if name == "adamw":
        return "adamw: torch's AdamW is always timed, as the baseline"
    return f"{name}: a {get_optimizer_info(name).source} optimizer; optarena speed times optarena's own"


def _csv(choices: tuple[str, ...] | list[str], registered: tuple[str, ...] = ()) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        if not names:  # an empty list would quietly mean the default, or time nothing but AdamW
            raise argparse.ArgumentTypeError(f"expected comma-separated names (choose from {', '.join(choices)}), "
                                             f"got {text!r}")
        bad = [n for n in names if n not in choices]
        elsewhere = [n for n in bad if n in registered]
        if elsewhere:
            raise argparse.ArgumentTypeError(f"{'; '.join(map(_not_timed, elsewhere))} "
                                             f"(choose from {', '.join(choices)})")
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)} (choose from {', '.join(choices)})")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:  # two candidates of one label would pool their samples into one median
            raise argparse.ArgumentTypeError(f"{', '.join(repeated)} named twice in {text!r}")
        return names

    return parse


def _device(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected cpu or cuda[:N], got {text!r}") from None
    if device.type not in ("cpu", "cuda"):  # the timing synchronises these two only
        raise argparse.ArgumentTypeError(f"expected cpu or cuda[:N], got {text!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: torch finds no CUDA device here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: torch finds {torch.cuda.device_count()} CUDA device(s)")
    return device


def _json_path(text: str) -> str:
    """A file that can be written, checked before the run (which takes minutes) rather than after it."""
    if not text.strip():  # abspath would make it the current folder, refused below as "a directory"
        raise argparse.ArgumentTypeError(f"expected a file path, got {text!r}")
    path = os.path.abspath(text)
    folder = os.path.dirname(path)
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text!r} is a directory, not a file")
    if not os.path.isdir(folder):
        what = "is a file, not a folder" if os.path.exists(folder) else "does not exist"
        raise argparse.ArgumentTypeError(f"{text!r}: its folder {folder} {what}")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise argparse.ArgumentTypeError(f"{text!r} cannot be written (permission denied)")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    own = [n for n in list_optimizers("optarena") if get_optimizer_info(n).step_bytes is not None]
    parser.add_argument("--optimizers", type=_csv(own, tuple(list_optimizers())), default=own,
                        help="comma-separated optarena optimizers (default: all)")
    parser.add_argument("--paths", type=_csv(PATHS), default=list(DEFAULT_PATHS),
                        help=f"comma-separated paths (default: {','.join(DEFAULT_PATHS)}; 'compiled', "
                             "torch.compile of the foreach step, is a reference on request)")
    parser.add_argument("--layouts", type=_csv([*LAYOUTS, *QUICK_LAYOUTS, *MODEL_LAYOUTS]), default=None,
                        help=f"comma-separated layouts (default: {','.join(LAYOUTS)}; --quick: "
                             f"{','.join(QUICK_LAYOUTS)}, which any run may name); also the parameter shapes of a "
                             f"real model: {','.join(MODEL_LAYOUTS)}")
    parser.add_argument("--quick", action="store_true", help="small layouts and few steps: a smoke test")
    parser.add_argument("--steps", type=positive_int_arg(), default=None,
                        help="steps per timed sample (default 3; --quick 2)")
    parser.add_argument("--rounds", type=positive_int_arg(), default=None,
                        help="interleaved rounds (default 5; --quick 2)")
    parser.add_argument("--no-peers", action="store_true",
                        help="leave out the other libraries' optimizers (lion-pytorch, pytorch-optimizer, "
                             "bitsandbytes, torch-optimi, heavyball, torchao)")
    parser.add_argument("--threads", type=positive_int_arg(MAX_THREADS), default=None,
                        help="torch threads (default: all cores)")
    parser.add_argument("--device", type=_device, default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda[:N] (default: cuda where torch finds one, else cpu)")
    parser.add_argument("--json", metavar="PATH", type=_json_path, default=None,
                        help="also write the results as JSON (rewritten after each layout, so an interrupted run "
                             "keeps the finished layouts; an existing file is replaced)")


def run(args: argparse.Namespace) -> int:
    threads = torch.get_num_threads()
    results: list[Result] = []
    missing: list[Unavailable] = []
    try:
        return _run(args, results, missing)
    except KeyboardInterrupt:  # Ctrl-C is how a long run is cut short: the finished layouts, not a traceback
        if results:
            print(format_table(results, missing))
        kept = f"; {args.json} keeps the finished layouts" if args.json and results else ""
        print(f"optarena speed: interrupted{kept}", file=sys.stderr)
        return 130
    finally:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(False)


def _run(args: argparse.Namespace, results: list[Result], missing: list[Unavailable]) -> int:
    """The run; ``results`` and ``missing`` fill layout by layout, so that an interrupted run can show them."""
    torch.set_flush_denormal(True)  # AdamW's moments drift into subnormals; that would time the FPU, not the step
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    default = QUICK_LAYOUTS if args.quick else LAYOUTS
    layouts = args.layouts or list(default)
    fixed = {**LAYOUTS, **QUICK_LAYOUTS}
    try:  # before anything is timed; main() reports a ValueError as a bad argument (exit 2)
        shapes = {name: fixed[name] if name in fixed else MODEL_LAYOUTS[name]() for name in layouts}
    except ImportError as exc:
        raise ValueError(f"Invalid --layouts: {','.join(layouts)!r} ({exc})") from None
    steps = args.steps or (2 if args.quick else 3)
    rounds = args.rounds or (2 if args.quick else 5)
    device = torch.device(args.device)
    cands, skipped = candidates(args.optimizers, args.paths, peers=not args.no_peers)
    missing.extend(skipped)

    def log(msg: str) -> None:
        print(msg, flush=True)

    # measured before every layout and at the end: load from other processes only lowers it, so the run reports the
    # highest (one reading at the start once came out at half the machine's figure); on the device that is timed
    buffer_numel = 2**20 if args.quick else 2**25
    bandwidths = [measure_bandwidth(buffer_numel, device=device)]
    log(f"{torch.get_num_threads()} threads; torch {torch.__version__}; {device}")
    for m in missing:
        log(f"  not run {m.label}: {m.reason}")
    meta = dict(threads=torch.get_num_threads(), torch=torch.__version__, device=str(device),
                machine=platform.machine(), processor=cpu_description(), cpu_count=os.cpu_count(), steps=steps,
                rounds=rounds, layouts={k: [list(s) for s in v[:1]] + [len(v)] for k, v in shapes.items()})
    for layout in layouts:
        timed, failed = run_layout(layout, shapes[layout], cands, steps=steps, rounds=rounds, device=device, log=log)
        bandwidths.append(measure_bandwidth(buffer_numel, device=device))
        results.extend(timed)  # after the reading its share needs, so that an interrupted run shows none as 0 %
        missing.extend(failed)
        _share_of_bandwidth(results, max(bandwidths))
        if args.json:  # after each layout: a run stopped later keeps the layouts it finished
            _write_json(args.json, meta, bandwidths, results, missing)
    bandwidth = max(bandwidths)
    print(f"in-place bandwidth (a += b, {'4 MiB' if args.quick else '128 MiB'} fp32, {device}): {bandwidth:.1f} GB/s "
          f"(highest of {len(bandwidths)} readings: {', '.join(f'{b:.1f}' for b in bandwidths)})")
    print(format_table(results, missing))
    return 0


def _share_of_bandwidth(results: list[Result], bandwidth: float) -> None:
    for res in results:
        res.bandwidth_pct = 100 * res.gb_per_s / bandwidth


def _write_json(path: str, meta: dict, bandwidths: list[float], results: list[Result],
                missing: list[Unavailable]) -> None:
    """An interrupted write leaves the previous file whole."""
    data = {"meta": {"bandwidth_gb_s": max(bandwidths), "bandwidth_readings_gb_s": bandwidths, **meta},
            "results": [asdict(r) for r in results], "not_run": [asdict(m) for m in missing]}
    write_atomically(Path(path), lambda partial: partial.write_text(json.dumps(data, indent=1)))
