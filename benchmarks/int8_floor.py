"""What an 8-bit Lion or Adan step can reach on this CPU: hand-written C loops beside optarena's fused 8-bit Lion and
Adan and torch's fused AdamW, interleaved in one process.

The C loop (compiled here with gcc: ``-O3 -march=native -ffast-math -fopenmp``) does per 256-element block what
``optarena.optim.quant`` and Lion's rule say, in the fewest operations: decode the block's codes (``a·q·|q|/127²``),
update the parameters with the sign of the interpolated momentum, keep the new momentum in a 1 KiB buffer while
taking its absolute maximum, then encode it (square root, round, sign); the Adan loop does the same for its four
buffers (its second moment in the unsigned code, a fourth root). They are floors for the generated kernels, not
a replacement: optarena's kernels come from the rule's one Python function. Every candidate has tensors of its own
and moves the bytes it does in ``optarena speed``.

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
from collections.abc import Callable
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

static inline float dec_s(int8_t q, float unit) { float f = (float)q; return f * fabsf(f) * unit; }
static inline int8_t enc_s(float x, float inv) {
  float u = x * inv; return (int8_t)copysignf(nearbyintf(sqrtf(fabsf(u)) * 127.0f), u);
}
// Adan (no weight decay, t > 1) with its four buffers in 8 bits: m, d and the previous gradient signed, n unsigned
void adan8(float* restrict p, const float* restrict g, int8_t* restrict cm, int8_t* restrict cd, uint8_t* restrict cn,
           int8_t* restrict cg, float* restrict sm, float* restrict sd, float* restrict sn, float* restrict sg,
           long nblocks, float b1, float b2, float b3, float c3, float s1, float s2, float eps) {
  #pragma omp parallel for schedule(static)
  for (long b = 0; b < nblocks; b++) {
    float fm[256] __attribute__((aligned(64)));
    float fd[256] __attribute__((aligned(64)));
    float fn[256] __attribute__((aligned(64)));
    const float um = sm[b] * (1.0f / (127.0f * 127.0f)), ud = sd[b] * (1.0f / (127.0f * 127.0f));
    const float ug = sg[b] * (1.0f / (127.0f * 127.0f)), un = sn[b] / (255.0f * 255.0f * 255.0f * 255.0f);
    const long o = b * 256;
    float am = 0.0f, ad = 0.0f, an = 0.0f, ag = 0.0f;
    #pragma omp simd reduction(max:am, ad, an, ag)
    for (int i = 0; i < 256; i++) {
      float gi = g[o + i], prev = dec_s(cg[o + i], ug), q = (float)cn[o + i];
      float diff = gi - prev;
      float m = dec_s(cm[o + i], um), d = dec_s(cd[o + i], ud), n = q * q * q * q * un;
      m += (1.0f - b1) * (gi - m);
      d += (1.0f - b2) * (diff - d);
      float ng = gi + b2 * diff;
      n = b3 * n + (1.0f - b3) * ng * ng;
      float denom = sqrtf(n) * c3 + eps;
      p[o + i] -= (s1 * m + s2 * d) / denom;
      fm[i] = m; fd[i] = d; fn[i] = n;
      am = fmaxf(am, fabsf(m)); ad = fmaxf(ad, fabsf(d)); an = fmaxf(an, n); ag = fmaxf(ag, fabsf(gi));
    }
    const float im = am > 0 ? 1 / am : 0, id = ad > 0 ? 1 / ad : 0, in = an > 0 ? 1 / an : 0, ig = ag > 0 ? 1 / ag : 0;
    #pragma omp simd
    for (int i = 0; i < 256; i++) {
      cm[o + i] = enc_s(fm[i], im); cd[o + i] = enc_s(fd[i], id); cg[o + i] = enc_s(g[o + i], ig);
      cn[o + i] = (uint8_t)nearbyintf(sqrtf(sqrtf(fn[i] * in)) * 255.0f);
    }
    sm[b] = am; sd[b] = ad; sn[b] = an; sg[b] = ag;
  }
}
"""


def build() -> ctypes.CDLL:
    folder = Path(tempfile.mkdtemp(prefix="optarena-int8-floor-"))
    (folder / "int8_floor.c").write_text(SOURCE)
    subprocess.run(["gcc", "-O3", "-march=native", "-ffast-math", "-fopenmp", "-shared", "-fPIC", "int8_floor.c", "-o",
                    "libint8_floor.so"], cwd=folder, check=True)
    lib = ctypes.CDLL(str(folder / "libint8_floor.so"))
    lib.lion8.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long, ctypes.c_float, ctypes.c_float, ctypes.c_float]
    lib.adan8.argtypes = [ctypes.c_void_p] * 10 + [ctypes.c_long] + [ctypes.c_float] * 7
    return lib


def median_ms(step: Callable[[], object], steps: int) -> float:
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
        signed = [torch.randint(-127, 128, (n,), dtype=torch.int8, generator=gen) for _ in range(3)]
        unsigned = torch.randint(0, 256, (n,), dtype=torch.uint8, generator=gen)
        adan_scales = [torch.rand(n // 256, generator=gen) for _ in range(4)]
        m, d, prev = signed
        # the tensors stay alive until the next size: the calls hold only their addresses
        candidates = {
            "hand-written C loop, 8-bit Lion": functools.partial(
                lib.lion8, p.data_ptr(), g.data_ptr(), codes.data_ptr(), scales.data_ptr(), n // 256, 1e-4, 0.9,
                0.99),
            "hand-written C loop, 8-bit Adan": functools.partial(
                lib.adan8, p.data_ptr(), g.data_ptr(), m.data_ptr(), d.data_ptr(), unsigned.data_ptr(), prev.data_ptr(),
                *(t.data_ptr() for t in adan_scales), n // 256, 0.98, 0.92, 0.99, 10.0, 1e-4, 1e-4, 1e-8)}
        for name, make in (("torch AdamW fused", lambda ps: torch.optim.AdamW(ps, lr=1e-4, fused=True)),
                           ("optarena Lion fused, 8-bit state",
                            lambda ps: optarena.Lion(ps, lr=1e-4, fused=True, state_dtype="int8")),
                           ("optarena Lion fused", lambda ps: optarena.Lion(ps, lr=1e-4, fused=True)),
                           ("optarena Adan fused, 8-bit state",
                            lambda ps: optarena.Adan(ps, lr=1e-4, fused=True, state_dtype="int8"))):
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
