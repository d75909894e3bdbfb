"""How the process's memory history moves the ratio fused Lion / torch fused AdamW on one 16M fp32 tensor.

Every measurement runs in a fresh process (``--worker``), conditions interleaved, repeated ``--processes`` times:

- ``fresh-pair``: torch's fused AdamW and optarena's fused Lion only (the two-candidate comparison);
- ``fresh``: the same plus ``ref``, a plain ``torch.compile`` of Lion's own rule (``optarena.optim.lion.lion_update``,
  no optarena code generation or plan), as a reference for what inductor makes of the rule alone;
- ``churn-freed``: eight other candidates (torch AdamW foreach and for-loop; optarena Lion loop and foreach, RLion,
  Adan, AdaX, Adafactor foreach) first build their state on the same parameter and step twice, making and freeing
  their temporaries, and are deleted; then the three candidates are built;
- ``churn-kept``: as ``optarena speed`` does: the eight are built first, kept, and step once per round between the
  measured ones.

All candidates share the parameter and its gradient, as in ``optarena speed``. Each condition runs with and without
``THP_MEM_ALLOC_ENABLE=1`` (torch then aligns CPU allocations of ≥ 2 MiB to 2 MiB and asks for transparent huge pages
with ``madvise``, which matters where the kernel's THP mode is ``madvise``). Per process: median ms per step of each
measured candidate (7 rounds × 3 steps, rotating order), minor page faults during its timed steps, and for each of
its buffers the offset within a 4 KiB page and the share of its mapping backed by huge pages (``/proc/self/smaps``).

    PYTHONPATH=. python benchmarks/placement.py --thp both --json benchmarks/results/placement-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CONDITIONS = ("fresh-pair", "fresh", "churn-freed", "churn-kept")
THP_SYSFS = "/sys/kernel/mm/transparent_hugepage/"


def smaps_huge(ptr: int) -> tuple[int, int]:
    """(size, AnonHugePages) in KiB of the mapping that holds address ``ptr``."""
    with open("/proc/self/smaps") as f:
        inside = False
        size = 0
        for line in f:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                start, end = (int(x, 16) for x in head.split("-"))
                inside = start <= ptr < end
            elif inside and head == "Size:":
                size = int(line.split()[1])
            elif inside and head == "AnonHugePages:":
                return size, int(line.split()[1])
    return 0, 0


def worker(condition: str, rounds: int, steps: int) -> dict[str, Any]:
    import torch

    import optarena
    from optarena.optim.lion import lion_update

    torch.set_flush_denormal(True)
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    param = torch.nn.Parameter(torch.randn(4096, 4096, generator=gen).mul_(0.02))
    param.grad = torch.randn(4096, 4096, generator=gen).mul_(1e-3)
    ps = [param]

    others: dict[str, Any] = {}
    if condition.startswith("churn"):
        others = {
            "torch AdamW foreach": torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01, foreach=True),
            "torch AdamW for-loop": torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01, foreach=False),
            "lion loop": optarena.Lion(ps, foreach=False), "lion foreach": optarena.Lion(ps, foreach=True),
            "rlion foreach": optarena.RLion(ps, foreach=True), "adan foreach": optarena.Adan(ps, foreach=True),
            "adax foreach": optarena.AdaX(ps, foreach=True), "adafactor foreach": optarena.Adafactor(ps, foreach=True),
        }
        for opt in others.values():
            opt.step()
            opt.step()
        if condition == "churn-freed":
            others = {}

    exp_avg = torch.zeros_like(param)
    ref_step = torch.compile(lambda p, g, m: lion_update(p, g, m, lr=1e-4, beta1=0.9, beta2=0.99, weight_decay=0.0))

    def ref() -> None:
        with torch.no_grad():
            ref_step([param], [param.grad], [exp_avg])

    adamw = torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01, fused=True)
    lion = optarena.Lion(ps, lr=1e-4, fused=True)
    measured: dict[str, Callable[[], Any]] = {"adamw": adamw.step, "lion": lion.step}
    if condition != "fresh-pair":
        measured["ref"] = ref
    for step in measured.values():  # compile (or load from inductor's cache) and touch the state
        step()
        step()

    times: dict[str, list[float]] = {c: [] for c in measured}
    faults = dict.fromkeys(measured, 0)
    names = list(measured)
    for r in range(rounds):
        for c in names[r % len(names):] + names[:r % len(names)]:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(steps):
                start = time.perf_counter()
                measured[c]()
                times[c].append(1e3 * (time.perf_counter() - start))
            faults[c] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        for opt in others.values():
            opt.step()

    buffers = {"param": param, "grad": param.grad, "adamw exp_avg": adamw.state[param]["exp_avg"],
               "adamw exp_avg_sq": adamw.state[param]["exp_avg_sq"], "lion exp_avg": lion.state[param]["exp_avg"]}
    if "ref" in measured:
        buffers["ref exp_avg"] = exp_avg
    placement = {}
    for name, t in buffers.items():
        size, huge = smaps_huge(t.data_ptr())
        placement[name] = {"page_offset": t.data_ptr() % 4096, "offset_2MiB": t.data_ptr() % (2 << 20),
                           "mapping_MiB": size / 1024, "huge_share": huge / size if size else 0.0}
    ms = {c: statistics.median(v) for c, v in times.items()}
    return {"ms": ms, "ratio": {c: ms[c] / ms["adamw"] for c in ms if c != "adamw"}, "minor_faults": faults,
            "placement": placement}


def run_driver(args: argparse.Namespace) -> None:
    thp_modes = {"off": [False], "on": [True], "both": [False, True]}[args.thp]
    data: dict[str, Any] = json.loads(args.json.read_text()) if args.json and args.json.exists() else {}
    data["thp_enabled"] = Path(THP_SYSFS, "enabled").read_text().strip()
    data["thp_defrag"] = Path(THP_SYSFS, "defrag").read_text().strip()
    runs = data.setdefault("runs", {})
    for i in range(args.processes):
        for thp in thp_modes:
            for condition in args.conditions.split(","):
                env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
                if thp:
                    env["THP_MEM_ALLOC_ENABLE"] = "1"
                out = subprocess.run([sys.executable, __file__, "--worker", condition], capture_output=True,
                                     text=True, env=env)
                if out.returncode:
                    raise SystemExit(f"{condition}: worker failed:\n{out.stderr[-3000:]}")
                res = json.loads(out.stdout.strip().splitlines()[-1])
                key = f"{condition}, THP {'on' if thp else 'off'}"
                runs.setdefault(key, []).append(res)
                print(f"{i + 1}/{args.processes} {key}: "
                      + ", ".join(f"{c} {v:.2f} ms" for c, v in res["ms"].items())
                      + " | " + ", ".join(f"{c}/adamw {v:.2f}" for c, v in res["ratio"].items()), flush=True)
    data["summary"] = summarize(runs)
    print(format_table(data["summary"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=1) + "\n")


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """min / median / max over processes of each ratio and time, per condition."""
    out: dict[str, Any] = {}
    for key, rs in runs.items():
        row: dict[str, Any] = {"processes": len(rs)}
        for field in ("ratio", "ms"):
            for c in rs[0][field]:
                vals = [r[field][c] for r in rs]
                row[f"{field} {c}"] = [min(vals), statistics.median(vals), max(vals)]
        row["huge_share_median"] = statistics.median(
            statistics.mean(b["huge_share"] for b in r["placement"].values()) for r in rs)
        out[key] = row
    return out


def format_table(summary: dict[str, Any]) -> str:
    def spread(v: list[float] | None, fmt: str) -> str:
        return "—" if v is None else " / ".join(format(x, fmt) for x in v)

    lines = ["| condition | processes | Lion fused / AdamW fused (min / median / max) | ref / AdamW fused | "
             "AdamW fused ms | Lion fused ms | ref ms | huge-page share |", "|---|---|---|---|---|---|---|---|"]
    for key, row in summary.items():
        lines.append(f"| {key} | {row['processes']} | {spread(row.get('ratio lion'), '.2f')} | "
                     f"{spread(row.get('ratio ref'), '.2f')} | {spread(row.get('ms adamw'), '.1f')} | "
                     f"{spread(row.get('ms lion'), '.1f')} | {spread(row.get('ms ref'), '.1f')} | "
                     f"{row['huge_share_median']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=CONDITIONS, help="one measurement in this process (prints JSON)")
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    parser.add_argument("--thp", choices=("off", "on", "both"), default="both")
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", type=Path, help="runs are appended to the file's, the summary covers them all")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.rounds, args.steps)))
    else:
        run_driver(args)


if __name__ == "__main__":
    main()
