"""Rewrites of the C++ source that inductor generates for a fused kernel on an x86 CPU (the adjusted torch only:
``codegen.rewritten_kernels``), each computing the same values in fewer instructions.

The kernels store through vector intrinsics, whose types may alias any memory, so the C++ compiler reloads every
scalar input (lr, the betas, a block's scale) and redoes the arithmetic on it on each vector iteration: it cannot
know a store left it unchanged. An 8-bit Lion step spent about a third of its instructions so (benchmarks/NOTES.md,
"Rewriting the generated kernels"). The rewrites:

- :func:`read_scalars_once`: a one-element input is read once, when the kernel starts;
- :func:`read_block_values_once`: a value per row (a block's scale) is read once before the loop over the row;
- :func:`clamp_by_one_instruction`: a NaN-keeping maximum or minimum against a nonzero constant is one instruction
  (the constant first: x86's max and min return their second operand when either is NaN), not four;
- :func:`abs_max_by_integer_max`: the running maximum of absolute values compares their bits as integers (one
  instruction; a NaN's bits exceed infinity's, so it still wins).

Each applies only where the pattern proves it safe; anything else is left as inductor wrote it.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable

#: The intrinsics' prefix and integer-cast suffix for each vector width.
_WIDTHS = {512: ("_mm512", "512"), 256: ("_mm256", "256")}
_POINTER = r"(?:in_ptr|out_ptr|in_out_ptr)\d+"


def rewrite(source: str, vector_bits: int) -> str:
    """``source`` with every rewrite that applies to a kernel vectorised ``vector_bits`` wide."""
    source = read_scalars_once(source)
    source = read_block_values_once(source)
    if vector_bits in _WIDTHS:
        source = clamp_by_one_instruction(source, vector_bits)
        source = abs_max_by_integer_max(source, vector_bits)
    return source


def _aliases(source: str) -> set[str]:
    """Input pointers that inductor aliased to a buffer the kernel writes (``auto in_ptr0 = in_out_ptr0;``): their
    value can change inside the kernel."""
    return set(re.findall(rf"auto ({_POINTER}) = {_POINTER};", source))


def read_scalars_once(source: str) -> str:
    """Reads of a one-element input (``in_ptr3[static_cast<int64_t>(0L)]``) moved to the kernel's start. An input
    pointer is only read (a write goes through an ``out_ptr`` or ``in_out_ptr``, after every read of the value it
    replaces), so the value at the start is the value everywhere."""
    start = "inductor_cpu_integer_div_error_flag = &inductor_cpu_integer_div_error;"
    if source.count(start) != 1:
        return source
    aliased = _aliases(source)
    names = sorted({name for name in re.findall(r"\b(in_ptr\d+)\[static_cast<int64_t>\(0L\)\]", source)
                    if name not in aliased and f"&{name}[" not in source})
    if not names:
        return source
    for name in names:
        source = source.replace(f"{name}[static_cast<int64_t>(0L)]", f"{name}_value")
    indent = re.search(rf"\n([ \t]*){re.escape(start)}", source).group(1)
    reads = "".join(f"\n{indent}const auto {name}_value = {name}[static_cast<int64_t>(0L)];" for name in names)
    return source.replace(start, start + reads)


def _block_end(lines: list[str], start: int) -> int:
    """The index of the line that closes the block opening at or after ``lines[start]``."""
    depth, opened = 0, False
    for i in range(start, len(lines)):
        depth += lines[i].count("{") - lines[i].count("}")
        opened = opened or "{" in lines[i]
        if opened and depth <= 0:
            return i
    return len(lines) - 1


def _writes(body: str, name: str) -> bool:
    return f".store({name}" in body or re.search(rf"\b{name}\[[^\]]*\]\s*=(?!=)", body) is not None


def read_block_values_once(source: str) -> str:
    """Reads of a per-row value (``in_ptr1[static_cast<int64_t>(x0)]``) inside an inner loop over ``x1`` moved to
    just before that loop: an input is not written inside the kernel; an output only where the loop does not
    write it."""
    aliased = _aliases(source)
    lines = source.split("\n")
    out: list[str] = []
    i = count = 0
    while i < len(lines):
        if not re.match(r"\s*for\(int64_t x1=", lines[i]):
            out.append(lines[i])
            i += 1
            continue
        end = _block_end(lines, i)
        body = "\n".join(lines[i:end + 1])
        pragmas = []  # a pragma binds to the loop that follows it: the reads go before it
        while out and out[-1].lstrip().startswith("#pragma"):
            pragmas.insert(0, out.pop())
        indent = re.match(r"\s*", lines[i]).group(0)
        for name in sorted(set(re.findall(rf"\b({_POINTER})\[static_cast<int64_t>\(x0\)\]", body))):
            if name in aliased or (not name.startswith("in_ptr") and _writes(body, name)):
                continue
            value = f"{name}_row{count}"
            count += 1
            out.append(f"{indent}const auto {value} = {name}[static_cast<int64_t>(x0)];")
            body = body.replace(f"{name}[static_cast<int64_t>(x0)]", value)
        out += pragmas + body.split("\n")
        i = end + 1
    return "\n".join(out)


def _per_loop(source: str, rewrite_one: Callable[[str, dict[str, list[str]]], str]) -> str:
    """``rewrite_one`` applied to each stretch of ``source`` from one ``for`` to the next, with the right-hand sides
    given there to each ``tmp`` name (inductor numbers them again in every loop body)."""
    pieces = re.split(r"(?=^[ \t]*for\()", source, flags=re.MULTILINE)
    return "".join(rewrite_one(piece, _definitions(piece)) for piece in pieces)


def _definitions(source: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = defaultdict(list)
    for name, value in re.findall(r"\bauto (tmp\d+) = (.*);\s*$", source, flags=re.MULTILINE):
        found[name].append(value)
    return found


def _nonzero_constants(definitions: dict[str, list[str]]) -> set[str]:
    """Names that are float vectors of one finite nonzero literal wherever they are defined."""

    def literal(name: str) -> bool:
        values = definitions.get(name, [])
        for value in values:
            match = re.fullmatch(r"static_cast<float>\(([-+0-9.eE]+)\)", value)
            if match is None or not math.isfinite(float(match.group(1))) or float(match.group(1)) == 0:
                return False
        return bool(values)

    def broadcast_of_literal(value: str) -> bool:
        match = re.fullmatch(r"at::vec::Vectorized<float>\((tmp\d+)\)", value)
        return match is not None and literal(match.group(1))

    return {name for name, values in definitions.items() if all(map(broadcast_of_literal, values))}


def clamp_by_one_instruction(source: str, vector_bits: int) -> str:
    """``at::vec::maximum(x, c)`` and ``minimum`` with ``c`` a nonzero constant as one ``max_ps``/``min_ps`` with
    ``c`` first: the same value for every ``x``, NaN included (a nonzero ``c`` cannot tie with ``x`` in any other
    bits, so which operand a tie returns does not matter)."""
    prefix, _ = _WIDTHS[vector_bits]

    def in_loop(piece: str, definitions: dict[str, list[str]]) -> str:
        constants = _nonzero_constants(definitions)

        def one_instruction(match: re.Match[str]) -> str:
            op, a, b = match.groups()
            if b in constants:
                a, b = b, a
            elif a not in constants:
                return match.group(0)
            return f"at::vec::Vectorized<float>({prefix}_{op[:3]}_ps({a}, {b}))"

        return re.sub(r"at::vec::(maximum|minimum)\((tmp\d+), (tmp\d+)\)", one_instruction, piece)

    return _per_loop(source, in_loop)


def abs_max_by_integer_max(source: str, vector_bits: int) -> str:
    """A float running maximum ``acc = at::vec::maximum(acc, y)`` with ``y = x.abs()`` as a signed integer maximum
    of their bits: for non-negative floats (and the accumulator's start, −∞, a negative integer) the integer order is
    the float order; a NaN's bits are above infinity's, so a NaN still ends as the maximum, as it did."""
    prefix, bits = _WIDTHS[vector_bits]
    declared = defaultdict(set)
    for kind, name in re.findall(r"(at::vec::\S+) (tmp_acc\d+_vec) = ", source):
        declared[name].add(kind)
    float_accumulators = {name for name, kinds in declared.items() if kinds == {"at::vec::Vectorized<float>"}}
    cast = f"{prefix}_castps_si{bits}"

    def in_loop(piece: str, definitions: dict[str, list[str]]) -> str:
        absolute = {name for name, values in definitions.items()
                    if all(re.fullmatch(r"tmp\d+\.abs\(\)", value) for value in values)}

        def integer_max(match: re.Match[str]) -> str:
            acc, y = match.groups()
            if acc not in float_accumulators or y not in absolute:
                return match.group(0)
            return (f"{acc} = at::vec::Vectorized<float>({prefix}_castsi{bits}_ps({prefix}_max_epi32({cast}({acc}), "
                    f"{cast}({y}))));")

        return re.sub(r"(tmp_acc\d+_vec) = at::vec::maximum\(\1, (tmp\d+)\);", integer_max, piece)

    return _per_loop(source, in_loop)
