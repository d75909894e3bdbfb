"""What an 8-bit Lion step can reach on this CPU: a hand-written C loop beside optarena's fused 8-bit Lion and torch's
fused AdamW, interleaved in one process.

The C loop (compiled here with gcc: ``-O3 -march=native -ffast-math -fopenmp``) does per 256-element block what
``optarena.optim.quant`` and Lion's rule say, in the fewest operations: decode the block's codes (``a·q·|q|/127²``),
update the parameters with the sign of the interpolated momentum, keep the new momentum in a 1 KiB buffer while
taking its absolute maximum, then encode it (square root, round, sign). It is a floor for the generated kernel, not
a replacement: optarena's kernels come from the rule's one Python function. Lion's fp32 state and the hand loop's
state live in separate tensors, so the three candidates move the same bytes as in ``optarena speed``.

    PYTHONPATH=. python benchmarks/int8_floor.py [--sizes 1048576,16777216] [--rounds 7]
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

import optarena

SOURCE = r"""
#include <math.h>
#include <stdint.h>
void lion8(float* restrict p, const float* restrict g, int8_t* restrict codes, float* restrict scales,
           long nblocks, float lr, float b1, float b2) {
  #pragma omp parallel for schedule(static)
  for (long b = 0; b < nblocks; b++) {
    float fresh[256] __attribute__((aligned(64)));
    const float unit = scales[b] * (1.0f / (127.0f * 127.0f));
    float* pb = p + b * 256; const float* gb = g + b * 256; int8_t* cb = codes + b * 256;
    float amax = 0.0f;
    #pragma omp simd reduction(max:amax)
    for (int i = 0; i < 256; i++) {
      float q = (float)cb[i], m = q * fabsf(q) * unit, gi = gb[i];
      float c = m + (1.0f - b1) * (gi - m);
      pb[i] -= lr * (float)((c > 0.0f) - (c < 0.0f));
      float next = m + (1.0f - b2) * (gi - m);
      fresh[i] = next;
      amax = fmaxf(amax, fabsf(next));
    }
    const float inv = amax > 0.0f ? 1.0f / amax : 0.0f;
    #pragma omp simd
    for (int i = 0; i < 256; i++) {
      float u = fresh[i] * inv;
      cb[i] = (int8_t)copysignf(nearbyintf(sqrtf(fabsf(u)) * 127.0f), u);
    }
    scales[b] = amax;
  }
}
"""


def build() -> ctypes.CDLL:
    folder = Path(tempfile.mkdtemp(prefix="optarena-int8-floor-"))
    (folder / "lion8.c").write_text(SOURCE)
    subprocess.run(["gcc", "-O3", "-march=native", "-ffast-math", "-fopenmp", "-shared", "-fPIC", "lion8.c", "-o",
                    "liblion8.so"], cwd=folder, check=True)
    lib = ctypes.CDLL(str(folder / "liblion8.so"))
    lib.lion8.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long, ctypes.c_float, ctypes.c_float, ctypes.c_float]
    return lib


def median_ms(step, steps: int) -> float:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=f"{1 << 20},{1 << 24}")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    lib = build()
    for n in map(int, args.sizes.split(",")):
        if n % 256:
            raise SystemExit(f"--sizes: {n} is not a whole number of 256-element blocks")
        gen = torch.Generator().manual_seed(0)
        p, g = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
        codes = torch.randint(-127, 128, (n,), dtype=torch.int8, generator=gen)
        scales = torch.rand(n // 256, generator=gen)
        # the tensors stay alive until the next size: the call holds only their addresses
        candidates = {"hand-written C loop, 8-bit Lion": functools.partial(
            lib.lion8, p.data_ptr(), g.data_ptr(), codes.data_ptr(), scales.data_ptr(), n // 256, 1e-4, 0.9, 0.99)}
        for name, make in (("torch AdamW fused", lambda ps: torch.optim.AdamW(ps, lr=1e-4, fused=True)),
                           ("optarena Lion fused, 8-bit state",
                            lambda ps: optarena.Lion(ps, lr=1e-4, fused=True, state_dtype="int8")),
                           ("optarena Lion fused", lambda ps: optarena.Lion(ps, lr=1e-4, fused=True))):
            param = torch.nn.Parameter(torch.randn(n, generator=gen))
            param.grad = torch.randn(n, generator=gen)
            opt = make([param])
            candidates[name] = opt.step
        steps = 200 if n <= 1 << 20 else 15
        samples: dict[str, list[float]] = {name: [] for name in candidates}
        for _ in range(args.rounds):
            for name, step in candidates.items():
                for _ in range(3):
                    step()
                samples[name].append(median_ms(step, steps))
        base = statistics.median(samples["torch AdamW fused"])
        for name, values in samples.items():
            ms = statistics.median(values)
            print(f"{n:>9}  {name:<34} {ms:8.3f} ms  {ms / base:5.2f}× torch fused AdamW")


if __name__ == "__main__":
    main()
