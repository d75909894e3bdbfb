"""Muon on digits_cnn: conv weights to AdamW, or Muon's rule on the flattened (out, in*kh*kw) weight?

Builds torch's Muon + AdamW by hand (no optarena optimizer involved) on the arena's digits_cnn task and protocol
(seed's initial weights and batches, cosine decay from the peak lr, no warm-up), for each lr of a half-decade grid
and seeds 0-2; prints the median final validation accuracy per (variant, lr). "flat" feeds Muon 2-D views that
share the conv weights' storage, so torch's Muon updates the conv weights in place. Run:
    python benchmarks/muon_conv.py [quick|full] [variant:lr,lr ...]     (default: both variants, lr 1e-4 to 3.2e-2)
"""

from __future__ import annotations

import math
import statistics
import sys
import time

import torch
from torch import nn

from optarena.arena.tasks import make_digits_cnn


def run(task, variant: str, lr: float, seed: int) -> float:
    torch.manual_seed(seed)
    model = task.make_model()
    batches = iter(task.make_batches(torch.Generator().manual_seed(seed), task.batch_size))
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    conv_ids = {id(p) for p in convs}
    rest = [p for p in model.parameters() if id(p) not in conv_ids]
    views: list[tuple[nn.Parameter, torch.Tensor]] = []
    if variant == "adamw":
        opts = [torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)]
    else:  # flat: Muon on (out, in*kh*kw) views of the conv weights, AdamW on the rest (head, BN, biases)
        views = [(nn.Parameter(p.data.view(p.shape[0], -1)), p) for p in convs]
        opts = [torch.optim.Muon([v for v, _ in views], lr=lr, weight_decay=0.0, adjust_lr_fn="match_rms_adamw"),
                torch.optim.AdamW(rest, lr=lr, weight_decay=0.0)]
    steps = task.steps
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
              for o in opts]
    for _ in range(steps):
        x, y = next(batches)
        loss = task.loss(model, (x, y))
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for v, p in views:
            v.grad = p.grad.view(v.shape)
        for o, s in zip(opts, scheds):
            o.step()
            s.step()
    model.eval()
    with torch.no_grad():
        return float(task.evaluate(model))


def main() -> None:
    torch.set_num_threads(1)
    budget = sys.argv[1] if len(sys.argv) > 1 else "quick"
    task = make_digits_cnn(budget)
    grid = [1e-3 * 10 ** (k / 2) for k in range(-2, 4)]
    cells = [(v, grid) for v in ("adamw", "flat")]
    if len(sys.argv) > 2:
        cells = [(v, [float(x) for x in lrs.split(",")]) for v, lrs in (a.split(":") for a in sys.argv[2:])]
    for variant, lrs in cells:
        for lr in lrs:
            start = time.perf_counter()
            accs = [run(task, variant, lr, seed) for seed in range(3)]
            print(f"{budget} {variant:5s} lr={lr:.3g}: median {statistics.median(accs):.4f} "
                  f"[{min(accs):.4f}, {max(accs):.4f}] ({time.perf_counter() - start:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
