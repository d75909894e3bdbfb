"""Which 8-bit code and block size for ``state_dtype="int8"``: error of 100 steps against fp32 state.

Codes compared (``optarena.optim.quant``): for signed moments linear (power 1), the companding code sign(q)·(q/127)²
(power 2) and Dettmers et al.'s dynamic tree code (a 256-entry table, nearest entry by search; written here for the
comparison only); for non-negative second moments linear, (q/255)², (q/255)⁴ and the unsigned dynamic code; and a
minifloat pair taken from the float's exponent bits (no roots). Block sizes 64, 256, 2048. Every code rounds to its
nearest code here, as when they were compared (the step now dithers the power codes: benchmarks/NOTES.md, "Stuck 8-bit
moments"). The gradients mix a constant signal with noise whose scale varies by 1000× across rows (as across a layer's
units), so blocks see both small and large moments.

    PYTHONPATH=. python benchmarks/quant_codes.py
"""

from __future__ import annotations

import torch

import optarena
from optarena.optim import quant

_POWER_QUANTIZE = quant.quantize_


def power_quantize_(codes: torch.Tensor, absmax: torch.Tensor, x: torch.Tensor, dither: object = None) -> None:
    _POWER_QUANTIZE(codes, absmax, x)  # nearest: the dither left out


ORIGINAL = (quant.dequantize, power_quantize_)


def dynamic_table(signed: bool) -> torch.Tensor:
    """Dettmers' dynamic tree code: per exponent 10^-k (k = 6…0) a linear fraction grid, finer for larger values."""
    values = [0.0, 1.0]
    for i in range(7):
        edges = torch.linspace(0.1, 1, (2**i if signed else 2 ** (i + 1)) + 1)
        means = ((edges[:-1] + edges[1:]) / 2 * 10.0 ** (i - 6)).tolist()
        values += means + ([-m for m in means] if signed else [])
    return torch.tensor(sorted(values))


TABLES = {torch.int8: dynamic_table(True), torch.uint8: dynamic_table(False)}


def table_dequantize(codes: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    index = codes.long() + (128 if codes.dtype == torch.int8 else 0)
    unit = quant._blocked(TABLES[codes.dtype][index].float(), absmax.numel())
    return (unit * absmax[:, None]).reshape(-1)[:codes.numel()].view(codes.shape)


def table_quantize_(codes: torch.Tensor, absmax: torch.Tensor, x: torch.Tensor, dither: object = None) -> None:
    amax, unit = quant.unit_blocks(x, absmax.numel())
    table = TABLES[codes.dtype]
    mids = (table[1:] + table[:-1]) / 2
    index = torch.searchsorted(mids, unit.reshape(-1).contiguous())
    index = index - (128 if codes.dtype == torch.int8 else 0)
    codes.copy_(index[:codes.numel()].view(codes.shape))
    absmax.copy_(amax)


#: Minifloat codes from a float's bits, relative to the block maximum: the code plus BASE, shifted into the exponent
#: and top 3 mantissa bits, is the value (signed: sign + 4 exponent bits, code 127 = 1; unsigned: 5 exponent bits,
#: code 255 = 1); code 0 is 0. Encoding rounds in the bits (nearest within a binade); no roots.
MINIFLOAT_BASE = {torch.int8: 889, torch.uint8: 761}
MINIFLOAT_TOP = {torch.int8: 127, torch.uint8: 255}


def minifloat_dequantize(codes: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    c = quant._blocked(codes.to(torch.int32), absmax.numel())
    magnitude = torch.where(c == 0, 0.0, ((c.abs() + MINIFLOAT_BASE[codes.dtype]) << 20).view(torch.float32))
    x = torch.where(c < 0, -magnitude, magnitude) * absmax[:, None]
    return x.reshape(-1)[:codes.numel()].view(codes.shape)


def minifloat_quantize_(codes: torch.Tensor, absmax: torch.Tensor, x: torch.Tensor,
                        dither: object = None) -> None:
    amax, unit = quant.unit_blocks(x, absmax.numel())
    bits = unit.abs().contiguous().view(torch.int32)
    c = (((bits + (1 << 19)) >> 20) - MINIFLOAT_BASE[codes.dtype]).clamp(0, MINIFLOAT_TOP[codes.dtype])
    c = torch.where(unit < 0, -c, c)
    codes.copy_(c.reshape(-1)[:codes.numel()].view(codes.shape))
    absmax.copy_(amax)


CODE_FUNCTIONS = {"dynamic": (table_dequantize, table_quantize_),
                  "minifloat": (minifloat_dequantize, minifloat_quantize_)}


def configure(signed: str, unsigned: str, block: int) -> None:
    quant.BLOCK = block
    assert signed == unsigned or not {signed, unsigned} & CODE_FUNCTIONS.keys()  # one pair serves both codes
    quant.dequantize, quant.quantize_ = CODE_FUNCTIONS.get(signed, ORIGINAL)
    if signed not in CODE_FUNCTIONS:
        quant.SIGNED_POWER, quant.UNSIGNED_POWER = int(signed), int(unsigned)


def gradients(steps: int, shape: tuple[int, int], seed: int = 0, per_element: bool = False) -> list[torch.Tensor]:
    """Noise scales 10^U(-3, 0) per row (a block sees one scale) or per element (every block sees all of them)."""
    gen = torch.Generator().manual_seed(seed)
    row_scale = 10 ** (-3 * torch.rand(shape[0], shape[1] if per_element else 1, generator=gen))
    signal = torch.randn(shape, generator=gen) * 0.3
    return [(signal + torch.randn(shape, generator=gen)) * row_scale for _ in range(steps)]


def error_of(name: str, lr: float, grads: list[torch.Tensor]) -> tuple[float, float]:
    """(mean |θ_8bit − θ_fp32| / mean |θ_fp32 − θ_0| after all steps, mean fraction of elements whose update
    direction differs per step)."""
    start = torch.randn(grads[0].shape, generator=torch.Generator().manual_seed(1))
    ref, low = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    cls = getattr(optarena, name)
    opts = [cls([ref], lr=lr), cls([low], lr=lr, state_dtype="int8")]
    flips = 0.0
    for g in grads:
        before = [ref.detach().clone(), low.detach().clone()]
        for p, opt in zip((ref, low), opts):
            p.grad = g.clone()
            opt.step()
        flips += ((ref - before[0]).sign() != (low - before[1]).sign()).float().mean().item()
    drift = ((low - ref).abs().mean() / (ref - start).abs().mean()).item()
    return drift, flips / len(grads)


def main() -> None:
    torch.set_flush_denormal(True)
    print("| noise scale | signed | unsigned | block | Lion drift | Lion flips/step | Adan drift | AdaX drift | "
          "AdEMAMix drift |")
    print("|---|---|---|---|---|---|---|---|---|")
    per_row = [("1", "1", 256), ("2", "2", 256), ("2", "4", 256), ("dynamic", "dynamic", 256),
               ("minifloat", "minifloat", 256), ("2", "4", 64), ("2", "4", 2048), ("dynamic", "dynamic", 2048)]
    per_element = [("1", "1", 256), ("2", "2", 256), ("2", "4", 256), ("dynamic", "dynamic", 256),
                   ("minifloat", "minifloat", 256)]
    for kind, configs in (("element", per_element), ("row", per_row)):
        grads = gradients(100, (512, 1024), per_element=kind == "element")
        for signed, unsigned, block in configs:
            print(f"| {kind} ", end="")
            row(grads, signed, unsigned, block)
    configure("2", "4", 256)


def row(grads: list[torch.Tensor], signed: str, unsigned: str, block: int) -> None:
    configure(signed, unsigned, block)
    lion = error_of("Lion", 1e-4, grads)
    cells = [f"{lion[0]:.4f}", f"{lion[1]:.5f}"]
    for name in ("Adan", "AdaX", "AdEMAMix"):
        cells.append(f"{error_of(name, 1e-3, grads)[0]:.4f}")
    print(f"| {signed} | {unsigned} | {block} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
