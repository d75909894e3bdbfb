"""Peak memory and time of one train step with and without ``optarena.step_in_backward``.

The model is ViT-S's parameter shapes as a stack of Linears (12 blocks of qkv 384→1152, proj 384→384, MLP
384→1536→384; 21.3M parameters, 85 MB of fp32 gradients) on a small batch, so that gradients, not activations,
dominate what the step adds to memory. Each candidate runs in a fresh process; the peak is the process's peak
resident memory (VmHWM, reset through /proc/self/clear_refs) during one train step after warm-up steps, minus the
resident memory before it. ``MALLOC_MMAP_THRESHOLD_`` is fixed so that glibc returns every large freed block to the
OS (its dynamic threshold would keep freed gradients resident and hide them from the peak).

    PYTHONPATH=. python benchmarks/in_backward_memory.py
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

import optarena


def vit_s_linears() -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(12):
        layers += [nn.Linear(384, 1152), nn.Linear(1152, 384), nn.Linear(384, 1536), nn.GELU(), nn.Linear(1536, 384)]
    return nn.Sequential(*layers)


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(field)


def one(mode: str, fused: bool) -> dict[str, float]:
    torch.manual_seed(0)
    torch.set_flush_denormal(True)
    model = vit_s_linears()
    opt = optarena.Lion(model.parameters(), lr=1e-4, fused=fused)
    if mode == "in_backward":
        optarena.step_in_backward(model, opt)
    x = torch.randn(16, 384)

    def train_step() -> None:
        model(x).square().mean().backward()
        if mode == "usual":
            opt.step()
            opt.zero_grad()

    for _ in range(3):
        train_step()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        train_step()
        times.append(time.perf_counter() - start)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set to the current one
    before = rss_kib("VmRSS")
    train_step()
    peak = rss_kib("VmHWM")
    params = sum(p.numel() for p in model.parameters())
    return {"peak_extra_MB": (peak - before) * 1024 / 1e6, "grad_MB": params * 4 / 1e6,
            "ms": 1e3 * statistics.median(times)}


def main() -> None:
    if len(sys.argv) == 3:
        print(json.dumps(one(sys.argv[1], sys.argv[2] == "fused")))
        return
    results: dict[str, list[dict[str, float]]] = {}
    for _ in range(3):  # interleaved, each in a fresh process
        for fused in ("loop", "fused"):
            for mode in ("usual", "in_backward"):
                # passive OpenMP waits: spinning threads on the shared 2 cores timed the scheduler
                env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 17), "OMP_WAIT_POLICY": "PASSIVE"}
                out = subprocess.run([sys.executable, __file__, mode, fused], capture_output=True, text=True,
                                     check=True, env=env).stdout
                results.setdefault(f"{mode} {fused}", []).append(json.loads(out.strip().splitlines()[-1]))
    for name, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{name:22s} peak extra {med['peak_extra_MB']:7.1f} MB  (gradients {med['grad_MB']:.1f} MB)  "
              f"{med['ms']:7.2f} ms/step  peaks {[round(r['peak_extra_MB'], 1) for r in runs]}")


if __name__ == "__main__":
    main()
