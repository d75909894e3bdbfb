"""8-bit optimizer state (``state_dtype="int8"``): blockwise quantisation after Dettmers et al. 2022, "8-bit
Optimizers via Block-wise Quantization" (arXiv 2110.02861), with a companding code instead of their dynamic tree.

A state buffer is stored as 8-bit codes, one per element in the parameter's shape, and one float32 scale (the
absolute maximum) per block of :data:`BLOCK` consecutive elements, under the key ``<key>_absmax``. The codes' dtype
says which code they hold: ``int8`` for signed moments (momentum, gradient differences), ``x = a·q·|q|/127²``;
``uint8`` for non-negative ones (second moments), ``x = a·(q/255)⁴``. Both spend more codes near zero than a linear
code does, as the dynamic code does, yet decode with two multiplications and encode with a square root, so that the
fused kernel dequantises, updates and requantises in one pass at memory speed (the choice and the measurement
behind it: benchmarks/NOTES.md, "8-bit state"). Math is float32. Encoding rounds each value to one of its two
neighbouring codes, up with a probability equal to its position between them, by a deterministic dither
(:func:`dither_rows`): to the nearest code, a moment that moves by less than half a code per step would never move.

Tensors with fewer than :data:`MIN_QUANTIZED` elements (biases, norm weights) keep float32 state: a block scale
would cost more than the bytes saved, and they are where a per-element error hurts most.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: Elements per block scale: 4 bytes per 256 elements, 0.016 B/param on top of the codes.
BLOCK = 256
#: Smaller tensors keep float32 state.
MIN_QUANTIZED = 4096
#: The name of a buffer's block scales in the state dict.
SCALE_SUFFIX = "_absmax"
#: The exponents of the codes: a signed code decodes as sign(q)·|q/127|^SIGNED_POWER, an unsigned one as
#: (q/255)^UNSIGNED_POWER (a module constant, so that benchmarks/quant_codes.py can compare others).
SIGNED_POWER = 2
UNSIGNED_POWER = 4
CODE_DTYPES = (torch.int8, torch.uint8)
#: The state key of a parameter's step count.
STEP = "step"


def quantizes(p: Tensor) -> bool:
    """Whether ``p``'s state is stored in 8 bits under ``state_dtype="int8"``."""
    return p.numel() >= MIN_QUANTIZED


def blocks(numel: int) -> int:
    return -(-numel // BLOCK)


def zeros_codes(p: Tensor, shape: tuple[int, ...] | torch.Size | None, nonnegative: bool) -> Tensor:
    """Zero codes for a buffer of ``p`` (its scales are added by :func:`add_scales`)."""
    dtype = torch.uint8 if nonnegative else torch.int8
    return torch.zeros(p.shape if shape is None else shape, dtype=dtype, device=p.device)


def add_scales(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with a zero block-scale vector after each buffer of codes."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        out[key] = value
        if value.dtype in CODE_DTYPES:
            out[key + SCALE_SUFFIX] = torch.zeros(blocks(value.numel()), dtype=torch.float32, device=value.device)
    return out


def is_codes(state: dict[str, Tensor], key: str) -> bool:
    value = state[key]  # a hand-added entry may be no tensor (copying the optimizer checks every entry)
    return isinstance(value, Tensor) and value.dtype in CODE_DTYPES and key + SCALE_SUFFIX in state


def _blocked(x: Tensor, nblocks: int) -> Tensor:
    """``x`` flattened, zero-padded to whole blocks, as (nblocks, BLOCK). The fused step only compiles tensors of
    whole blocks (:func:`whole_blocks`): without the padding its loops over a block's elements stay fused."""
    flat = x.reshape(-1)
    if flat.numel() % BLOCK == 0:
        return flat.view(-1, BLOCK)
    return F.pad(flat, (0, nblocks * BLOCK - flat.numel())).view(nblocks, BLOCK)


def whole_blocks(numel: int) -> bool:
    return numel % BLOCK == 0


def dequantize(codes: Tensor, absmax: Tensor) -> Tensor:
    """The float32 values of ``codes`` with block scales ``absmax``, in the codes' shape."""
    q = _blocked(codes.float(), absmax.numel())
    # the code's own scale joins the block's (one multiplication per block, not per element); for a block whose
    # maximum is below ~5e-29 (unsigned) or ~2e-34 (signed) that product is subnormal, and a process that flushes
    # subnormals decodes the block as zeros: moments that small step nothing anyway
    if codes.dtype == torch.int8:
        if SIGNED_POWER == 2:
            x = q * q.abs() * (absmax * (1 / 127**2))[:, None]
        else:
            x = q.sign() * (q.abs() * (1 / 127)) ** SIGNED_POWER * absmax[:, None]
    elif UNSIGNED_POWER == 4:
        square = q * q  # exact: q ≤ 255
        x = square * square * (absmax * (1 / 255**4))[:, None]
    else:
        x = (q * (1 / 255)) ** UNSIGNED_POWER * absmax[:, None]
    return x.reshape(-1)[:codes.numel()].view(codes.shape)


#: The dither's resolution (:func:`dither_rows`): the midpoints of 2**13 equal cells of [0, 1), which keeps it 2**-14
#: from both ends: a value decoded from a code (float32 error up to 2**-16 of a code, measured) encodes to that code
#: again, and no value ≤ 255 rounds past ``ceil(x)`` (where 127 plus a dither just below 1 rounded to 128 in
#: float32, −128 as int8).
_DITHER_BITS = 13
_DITHER_MASK = (1 << _DITHER_BITS) - 1
#: Steps of the dither's Weyl sequences along a block and along the steps: the golden ratio's and the silver
#: ratio's fractional parts in units of 2**-13 (odd, so that each sequence runs through all 2**13 values).
_ALONG_BLOCK = 5063
_ALONG_STEPS = 3393


def dither_rows(steps: list[Tensor], device: torch.device | None = None) -> Tensor:
    """The dither of the encodings at each of ``steps`` (step counts, 0-d or 1-element, on the CPU): a
    (len(steps), BLOCK) float32 tensor in (0, 1) on ``device`` (default: the counts'), one row shared by every block
    of a tensor and by its buffers (one dither for Adan's four: a salt per buffer cost its fused step 3 % more).
    Element j of a block at step t gets frac(j·φ + t·σ) (φ, σ: the golden and silver ratios) at the midpoint of its
    2**-13 cell, from exact integer arithmetic, so that the loop, foreach and fused paths (and any device) compute
    the same numbers. Over the steps each element's dither is equidistributed (a Weyl sequence), which makes its
    rounding unbiased on average, and more evenly than random draws would; along a block the dithers are spread
    evenly. Unlike torch's random generator it needs no state of its own and costs the fused kernel a few operations
    per element (benchmarks/NOTES.md, "Stuck 8-bit moments")."""
    counts = torch.stack([s.reshape(()) for s in steps]).to(torch.int64) & _DITHER_MASK
    offsets = ((counts * _ALONG_STEPS) & _DITHER_MASK).to(torch.int32)
    # int32 in the compiled kernel: int64 vectors would double its integer work (Adan encodes four buffers); nothing
    # overflows (BLOCK·5063 + 2**13 < 2**31 for blocks up to 400K elements)
    along = torch.arange(BLOCK, dtype=torch.int32, device=offsets.device) * _ALONG_BLOCK
    cells = (along[None, :] + offsets[:, None]) & _DITHER_MASK
    rows = (cells.to(torch.float32) + 0.5) * 2.0**-_DITHER_BITS
    return rows if device is None else rows.to(device)


def quantize_(codes: Tensor, absmax: Tensor, x: Tensor, dither: Tensor | None = None) -> None:
    """Encode float32 ``x`` into ``codes`` and ``absmax`` (in place) (:func:`encode_blocks_`)."""
    absmax.copy_(encode_blocks_(codes, x, absmax.numel(), dither))


def _rounded(x: Tensor, dither: Tensor | None) -> Tensor:
    """``x`` (≥ 0, as (nblocks, BLOCK)) rounded to the nearest integer, or with ``dither`` (a (BLOCK,) row in
    (0, 1)) up where its fractional part exceeds 1 − dither: unbiased over steps, so a moment that moves by less than
    half a code per step still moves on average (the decoded value of a moment far below its block's maximum comes
    out slightly high: the codes decode as powers); never above ``ceil(x)`` (:data:`_DITHER_BITS`)."""
    if dither is None:
        return x.round()
    return (x + dither).floor()


def encode_blocks_(codes: Tensor, x: Tensor, nblocks: int, dither: Tensor | None = None) -> Tensor:
    """Encode float32 ``x`` into ``codes`` (in place) and return its ``nblocks`` new block scales. The fused step
    takes them as a kernel output instead of writing the scales it read: inductor then runs the block maximum and
    the encoding in one loop over blocks (benchmarks/NOTES.md, "8-bit state"). Each value rounds to its nearest
    code, or with a ``dither`` row (:func:`dither_rows`) to one of its two neighbouring codes, unbiased over steps:
    rounded to the nearest code, a moment whose step is below half a code never moves (a constant gradient, a block
    maximum that stays), and a weight kept stepping against its gradient."""
    amax, unit = unit_blocks(x, nblocks)
    if codes.dtype == torch.int8:
        root = unit.abs().sqrt() if SIGNED_POWER == 2 else unit.abs() ** (1 / SIGNED_POWER)
        rounded = _rounded(root * 127, dither)
        # the sign by a compare and a blend (sign()·x costs six vector operations, copysign a call into Sleef per 16
        # elements); through int32, two vector instructions where float→int8 takes six (no step time measurably
        # saved), and a NaN or infinite value encodes as 0 on every path (directly, −128 in vector lanes)
        q = torch.where(unit < 0, -rounded, rounded).to(torch.int32)
    else:
        # a non-negative moment that rounding made slightly negative encodes as 0
        root = unit.clamp(min=0).sqrt().sqrt() if UNSIGNED_POWER == 4 else unit.clamp(min=0) ** (1 / UNSIGNED_POWER)
        q = _rounded(root * 255, dither)
    codes.copy_(q.reshape(-1)[:codes.numel()].view(codes.shape))
    return amax


def unit_blocks(x: Tensor, nblocks: int) -> tuple[Tensor, Tensor]:
    """``x``'s block maxima of absolute values and ``x`` as (nblocks, BLOCK) divided by them: in [-1, 1]; an
    all-zero block stays zero."""
    blocked = _blocked(x, nblocks)
    amax = blocked.abs().amax(1)
    return amax, blocked * torch.where(amax > 0, 1 / amax, 0.0)[:, None]


def decoded_entry(state: dict[str, Tensor], key: str) -> Tensor:
    """``state[key]`` decoded to float32 if it holds codes; otherwise the state's own tensor."""
    return dequantize(state[key], state[key + SCALE_SUFFIX]) if is_codes(state, key) else state[key]


def decoded(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with each buffer of codes decoded to float32 and the block scales left out; the other entries are
    the state's own tensors."""
    return {k: decoded_entry(state, k) for k in state if not is_scale(state, k)}


def encode_(state: dict[str, Tensor], values: dict[str, Tensor]) -> None:
    """Encode the decoded buffers of ``values`` (from :func:`decoded`) back into ``state``'s codes, dithered by
    the state's step count (one dither row for all of its buffers, as on the step's paths)."""
    dither = None
    for k, v in values.items():
        if is_codes(state, k):
            if dither is None:
                dither = dither_rows([state[STEP]], v.device)[0]
            quantize_(state[k], state[k + SCALE_SUFFIX], v, dither)


def is_scale(state: dict[str, Tensor], key: str) -> bool:
    """Whether ``state[key]`` holds the block scales of a buffer of codes."""
    owner = key.removesuffix(SCALE_SUFFIX)
    return owner != key and owner in state and is_codes(state, owner)
