"""What an 8-bit Lion or Adan step can reach on this CPU: hand-written C loops beside optarena's fused 8-bit Lion and
Adan and torch's fused AdamW, interleaved in one process.

The C loop (compiled here with gcc: ``-O3 -march=native -ffast-math -fopenmp``) does per 256-element block what
``optarena.optim.quant`` and Lion's rule say, in the fewest operations: decode the block's codes (``a·q·|q|/127²``),
update the parameters with the sign of the interpolated momentum, keep the new momentum in a 1 KiB buffer while taking
its absolute maximum, then encode it (square root, round to the nearest code, sign: the kernels dither instead, which
cost them no measurable time, benchmarks/NOTES.md "Stuck 8-bit moments"); the Adan loop does the same for its four
buffers (its second moment in the unsigned code, a fourth root). They are floors for the generated kernels, not a
replacement: optarena's kernels come from the rule's one Python function. For Adan, cheaper codes beside it (linear; a
minifloat from the float's exponent bits; linear with the scales known, one pass) and a loop that only moves its bytes
show what bounds an 8-bit Adan step. The optarena and torch candidates have tensors of their own and move the bytes they
do in ``optarena speed``; the C loops share theirs (each only rewrites them).

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
static inline float dec_u(uint8_t q, float unit) { float f = (float)q; return f * f * f * f * unit; }
static inline uint8_t enc_u(float x, float inv) { return (uint8_t)nearbyintf(sqrtf(sqrtf(x * inv)) * 255.0f); }
// cheaper codes, for comparison: linear (the cheapest; its accuracy fails, benchmarks/NOTES.md) and a minifloat
// taken from the float's bits, no roots (signed: sign + 4 exponent + 3 mantissa bits, code 127 = 1; unsigned: 5 + 3)
static inline float dec_lin(int32_t q, float unit) { return (float)q * unit; }
static inline int32_t enc_lin(float x, float inv) { return (int32_t)nearbyintf(x * inv); }
static inline float dec_mf(int32_t q, float scale, int32_t base) {
  int32_t a = q < 0 ? -q : q; union { int32_t i; float f; } u; u.i = (a + base) << 20;
  float v = a ? u.f : 0.0f; return (q < 0 ? -v : v) * scale;
}
static inline int32_t enc_mf(float x, float inv, int32_t base, int32_t top) {
  float y = x * inv; union { float f; int32_t i; } u; u.f = fabsf(y);
  int32_t c = ((u.i + (1 << 19)) >> 20) - base; c = c < 0 ? 0 : (c > top ? top : c); return y < 0 ? -c : c;
}
#define RECIPROCAL(a, k) ((a) > 0 ? (k) / (a) : 0.0f)
// Adan (no weight decay, t > 1) with its four buffers in 8 bits: m, d and the previous gradient signed, n unsigned;
// a code is its per-block units (UNIT_*), decodings (DEC_*), inverse scales (INV_*) and encodings (ENC_*)
#define ADAN8(NAME, UNIT_S, UNIT_U, DEC_S, DEC_U, INV_S, INV_U, ENC_S, ENC_U) \
void NAME(float* restrict p, const float* restrict g, int8_t* restrict cm, int8_t* restrict cd, uint8_t* restrict cn, \
          int8_t* restrict cg, float* restrict sm, float* restrict sd, float* restrict sn, float* restrict sg, \
          long nblocks, float b1, float b2, float b3, float c3, float s1, float s2, float eps) { \
  _Pragma("omp parallel for schedule(static)") \
  for (long b = 0; b < nblocks; b++) { \
    float fm[256] __attribute__((aligned(64))); \
    float fd[256] __attribute__((aligned(64))); \
    float fn[256] __attribute__((aligned(64))); \
    const float um = UNIT_S(sm[b]), ud = UNIT_S(sd[b]), ug = UNIT_S(sg[b]), un = UNIT_U(sn[b]); \
    const long o = b * 256; \
    float am = 0.0f, ad = 0.0f, an = 0.0f, ag = 0.0f; \
    _Pragma("omp simd reduction(max:am, ad, an, ag)") \
    for (int i = 0; i < 256; i++) { \
      float gi = g[o + i], prev = DEC_S(cg[o + i], ug); \
      float diff = gi - prev; \
      float m = DEC_S(cm[o + i], um), d = DEC_S(cd[o + i], ud), n = DEC_U(cn[o + i], un); \
      m += (1.0f - b1) * (gi - m); \
      d += (1.0f - b2) * (diff - d); \
      float ng = gi + b2 * diff; \
      n = b3 * n + (1.0f - b3) * ng * ng; \
      p[o + i] -= (s1 * m + s2 * d) / (sqrtf(n) * c3 + eps); \
      fm[i] = m; fd[i] = d; fn[i] = n; \
      am = fmaxf(am, fabsf(m)); ad = fmaxf(ad, fabsf(d)); an = fmaxf(an, n); ag = fmaxf(ag, fabsf(gi)); \
    } \
    const float im = INV_S(am), id = INV_S(ad), in = INV_U(an), ig = INV_S(ag); \
    _Pragma("omp simd") \
    for (int i = 0; i < 256; i++) { \
      cm[o + i] = ENC_S(fm[i], im); cd[o + i] = ENC_S(fd[i], id); cg[o + i] = ENC_S(g[o + i], ig); \
      cn[o + i] = ENC_U(fn[i], in); \
    } \
    sm[b] = am; sd[b] = ad; sn[b] = an; sg[b] = ag; \
  } \
}
#define POWER_UNIT_S(s) ((s) * (1.0f / (127.0f * 127.0f)))
#define POWER_UNIT_U(s) ((s) / (255.0f * 255.0f * 255.0f * 255.0f))
#define INV_1(a) RECIPROCAL(a, 1.0f)
ADAN8(adan8, POWER_UNIT_S, POWER_UNIT_U, dec_s, dec_u, INV_1, INV_1, enc_s, enc_u)
#define LIN_UNIT_S(s) ((s) / 127.0f)
#define LIN_UNIT_U(s) ((s) / 255.0f)
#define INV_127(a) RECIPROCAL(a, 127.0f)
#define INV_255(a) RECIPROCAL(a, 255.0f)
ADAN8(adan8_linear, LIN_UNIT_S, LIN_UNIT_U, dec_lin, dec_lin, INV_127, INV_255, enc_lin, enc_lin)
#define SAME(s) (s)
#define DEC_MF_S(q, s) dec_mf(q, s, 889)
#define DEC_MF_U(q, s) dec_mf(q, s, 761)
#define ENC_MF_S(x, inv) enc_mf(x, inv, 889, 127)
#define ENC_MF_U(x, inv) enc_mf(x, inv, 761, 255)
ADAN8(adan8_minifloat, SAME, SAME, DEC_MF_S, DEC_MF_U, INV_1, INV_1, ENC_MF_S, ENC_MF_U)
// linear codes with the block scales known beforehand: one pass, no block maximum (not a valid quantiser: a floor on
// the arithmetic alone); and a loop that only moves 8-bit Adan's bytes
void adan8_known_scale(float* restrict p, const float* restrict g, int8_t* restrict cm, int8_t* restrict cd,
                       uint8_t* restrict cn, int8_t* restrict cg, float* restrict sm, float* restrict sd,
                       float* restrict sn, float* restrict sg, long nblocks, float b1, float b2, float b3, float c3,
                       float s1, float s2, float eps) {
  #pragma omp parallel for schedule(static)
  for (long b = 0; b < nblocks; b++) {
    const float um = sm[b] / 127.0f, ud = sd[b] / 127.0f, ug = sg[b] / 127.0f, un = sn[b] / 255.0f;
    const float im = 1 / um, id = 1 / ud, in = 1 / un, ig = 1 / ug;
    const long o = b * 256;
    #pragma omp simd
    for (int i = 0; i < 256; i++) {
      float gi = g[o + i], diff = gi - dec_lin(cg[o + i], ug);
      float m = dec_lin(cm[o + i], um), d = dec_lin(cd[o + i], ud), n = dec_lin(cn[o + i], un);
      m += (1.0f - b1) * (gi - m);
      d += (1.0f - b2) * (diff - d);
      float ng = gi + b2 * diff;
      n = b3 * n + (1.0f - b3) * ng * ng;
      p[o + i] -= (s1 * m + s2 * d) / (sqrtf(n) * c3 + eps);
      cm[o + i] = enc_lin(m, im); cd[o + i] = enc_lin(d, id); cg[o + i] = enc_lin(gi, ig); cn[o + i] = enc_lin(n, in);
    }
  }
}
void adan8_bytes(float* restrict p, const float* restrict g, int8_t* restrict cm, int8_t* restrict cd,
                 uint8_t* restrict cn, int8_t* restrict cg, long n) {
  #pragma omp parallel for simd schedule(static)
  for (long i = 0; i < n; i++) {
    p[i] += g[i]; cm[i] += 1; cd[i] += 1; cn[i] += 1; cg[i] += 1;
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
    for adan in (lib.adan8, lib.adan8_linear, lib.adan8_known_scale, lib.adan8_minifloat):
        adan.argtypes = [ctypes.c_void_p] * 10 + [ctypes.c_long] + [ctypes.c_float] * 7
    lib.adan8_bytes.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_long]
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
        adan_buffers = [t.data_ptr() for t in (p, g, m, d, unsigned, prev, *adan_scales)]
        # the tensors stay alive until the next size: the calls hold only their addresses (the Adan loops share
        # theirs; each writes codes of its own, which the others read as other finite values)
        candidates = {
            "hand-written C loop, 8-bit Lion": functools.partial(
                lib.lion8, p.data_ptr(), g.data_ptr(), codes.data_ptr(), scales.data_ptr(), n // 256, 1e-4, 0.9,
                0.99),
            **{f"hand-written C loop, 8-bit Adan{label}": functools.partial(
                fn, *adan_buffers, n // 256, 0.98, 0.92, 0.99, 10.0, 1e-4, 1e-4, 1e-8)
               for label, fn in (("", lib.adan8), (", minifloat codes", lib.adan8_minifloat),
                                 (", linear codes", lib.adan8_linear),
                                 (", linear, known scale", lib.adan8_known_scale))},
            "C loop moving 8-bit Adan's bytes only": functools.partial(lib.adan8_bytes, *adan_buffers[:6], n)}
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
            print(f"{n:>9}  {name:<52} {ms:8.3f} ms  {ms / base:5.2f}× torch fused AdamW")


if __name__ == "__main__":
    main()
