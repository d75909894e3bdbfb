"""Lazy on an embedding: 100k rows × 64, 1 % of the rows present per step.

Compares, per base (optarena Lion, torch AdamW), the plain base on a dense gradient whose absent rows are zero with
Lazy(base) on that dense gradient and on the equivalent sparse gradient (uncoalesced, as nn.Embedding(sparse=True)
makes it). torch's SparseAdam (lazy Adam on sparse gradients) and fused AdamW are there for scale. Only
``optimizer.step()`` is timed; gradients are made beforehand. Each configuration runs a few steps per round, the
rounds interleave the configurations (so drift on a shared machine hits them all alike), and the table reports the
median over rounds. Run: ``python benchmarks/lazy_sparse.py [--rounds 15] [--out /tmp/lazy_bench.md]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

import optarena
from optarena.wrappers.lazy import Lazy

ROWS, DIM, FRACTION = 100_000, 64, 0.01
PATTERNS = 4  # distinct row sets, cycled


def make_grads(seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Dense and sparse gradients with the same values: ~1 % of the rows, drawn as token ids (repeats included)."""
    gen = torch.Generator().manual_seed(seed)
    dense, sparse = [], []
    for _ in range(PATTERNS):
        tokens = torch.randint(0, ROWS, (int(ROWS * FRACTION),), generator=gen)
        values = torch.randn(tokens.numel(), DIM, generator=gen)
        sparse.append(torch.sparse_coo_tensor(tokens.unsqueeze(0), values, (ROWS, DIM), check_invariants=False))
        dense.append(torch.zeros(ROWS, DIM).index_add_(0, tokens, values))
    return dense, sparse


Factory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]


def lion(ps: list[torch.Tensor]) -> torch.optim.Optimizer:
    return optarena.Lion(ps, lr=1e-4, weight_decay=0.1)


def adamw(ps: list[torch.Tensor]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01)


#: label -> (factory, gradient kind, the plain-base label its speed-up is measured against)
CONFIGS: dict[str, tuple[Factory, str, str]] = {
    "Lion (plain)": (lion, "dense", "Lion (plain)"),
    "Lazy(Lion), dense": (lambda ps: Lazy(lion(ps)), "dense", "Lion (plain)"),
    "Lazy(Lion), sparse": (lambda ps: Lazy(lion(ps)), "sparse", "Lion (plain)"),
    "AdamW (plain)": (adamw, "dense", "AdamW (plain)"),
    "AdamW fused (plain)": (lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01, fused=True), "dense",
                            "AdamW (plain)"),
    "Lazy(AdamW), dense": (lambda ps: Lazy(adamw(ps)), "dense", "AdamW (plain)"),
    "Lazy(AdamW), sparse": (lambda ps: Lazy(adamw(ps)), "sparse", "AdamW (plain)"),
    "SparseAdam (torch)": (lambda ps: torch.optim.SparseAdam(ps, lr=1e-3), "sparse", "AdamW (plain)"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=4, help="steps per configuration per round")
    parser.add_argument("--out", default="/tmp/lazy_bench.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)  # subnormal moments slow AdamW 4× otherwise (PERFORMANCE-NOTES)

    grads = dict(zip(("dense", "sparse"), make_grads()))
    runs = {}
    for name, (factory, kind, _) in CONFIGS.items():
        p = torch.nn.Parameter(torch.randn(ROWS, DIM, generator=torch.Generator().manual_seed(1)) * 0.02)
        runs[name] = (p, factory([p]), grads[kind], [])

    step_count = 0

    def run(name: str, steps: int) -> float:
        nonlocal step_count
        p, optimizer, pool, _ = runs[name]
        elapsed = 0.0
        for _ in range(steps):
            p.grad = pool[step_count % PATTERNS]
            step_count += 1
            start = time.perf_counter()
            optimizer.step()
            elapsed += time.perf_counter() - start
        return elapsed / steps * 1e3

    for name in runs:  # warm-up: state allocation, first-touch page faults
        run(name, 2)
    for _ in range(args.rounds):
        for name, (_, _, _, times) in runs.items():
            times.append(run(name, args.steps))

    medians = {name: statistics.median(times) for name, (_, _, _, times) in runs.items()}
    lines = [
        f"Embedding {ROWS:,} × {DIM} fp32, {FRACTION:.0%} of rows drawn per step (token ids, repeats summed); "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, flush-denormal on, "
        f"{platform.processor() or platform.machine()}; "
        f"median of {args.rounds} interleaved rounds × {args.steps} steps.",
        "",
        "| optimizer | gradient | ms/step (median) | min–max over rounds | speed-up vs plain base on dense |",
        "|---|---|---:|---:|---:|",
    ]
    for name, (_, kind, baseline) in CONFIGS.items():
        times = runs[name][3]
        lines.append(f"| {name} | {kind} | {medians[name]:.3f} | {min(times):.3f}–{max(times):.3f} | "
                     f"{medians[baseline] / medians[name]:.1f}× |")
    table = "\n".join(lines)
    print(table)
    with open(args.out, "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
