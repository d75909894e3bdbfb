"""Rewrites of the C++ source that inductor generates for a fused kernel on an x86 CPU (the adjusted torch only:
``codegen.rewritten_kernels``), each computing the same numbers in fewer instructions (a NaN stays a NaN, though
not always with the same bits).

The kernels store through vector intrinsics, whose types may alias any memory, so the C++ compiler reloads every
scalar input (lr, the betas, a block's scale) and redoes the arithmetic on it on each vector iteration: it cannot
know a store left it unchanged. An 8-bit Lion step spent about a third of its instructions so (benchmarks/NOTES.md,
"Rewriting the generated kernels"). The rewrites:

- :func:`read_scalars_once`: an input read at a constant index (lr, a beta) is read once, when the kernel starts;
- :func:`hoist_scalar_math`: arithmetic on those values and constants alone (``1 − β`` in double, a bias
  correction) is done once, when the kernel starts, not on every vector iteration;
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
import struct
from collections import defaultdict
from collections.abc import Callable

#: The intrinsics' prefix and integer-cast suffix for each vector width.
_WIDTHS = {512: ("_mm512", "512"), 256: ("_mm256", "256")}
_POINTER = r"(?:in_ptr|out_ptr|in_out_ptr)\d+"


def rewrite(source: str, vector_bits: int) -> str:
    """``source`` with every rewrite that applies to a kernel vectorised ``vector_bits`` wide."""
    source = read_scalars_once(source)
    source = hoist_scalar_math(source)
    source = read_block_values_once(source)
    if vector_bits in _WIDTHS:
        source = clamp_by_one_instruction(source, vector_bits)
        source = abs_max_by_integer_max(source, vector_bits)
    return source


def _aliases(source: str) -> set[str]:
    """Input pointers that inductor aliased to a buffer the kernel writes (``auto in_ptr0 = in_out_ptr0;``): their
    value can change inside the kernel."""
    return set(re.findall(rf"auto ({_POINTER}) = {_POINTER};", source))


_START = "inductor_cpu_integer_div_error_flag = &inductor_cpu_integer_div_error;"


def _scalar_name(name: str, index: str) -> str:
    return f"{name}_value" if index == "0" else f"{name}_value{index}"


def read_scalars_once(source: str) -> str:
    """Reads of an input at a constant index (``in_ptr3[static_cast<int64_t>(0L)]``, a table's ``[2L]``) moved to
    the kernel's start. An input pointer is only read (a write goes through an ``out_ptr`` or ``in_out_ptr``, after
    every read of the value it replaces), so the value at the start is the value everywhere."""
    if source.count(_START) != 1:
        return source
    aliased = _aliases(source)
    reads = sorted({(name, index) for name, index in re.findall(r"\b(in_ptr\d+)\[static_cast<int64_t>\((\d+)L\)\]",
                                                                  source)
                    if name not in aliased and f"&{name}[" not in source and f"{name}_value" not in source},
                   key=lambda read: (int(read[0][6:]), int(read[1])))
    if not reads:
        return source
    for name, index in reads:
        source = re.sub(rf"\b{name}\[static_cast<int64_t>\({index}L\)\]", _scalar_name(name, index), source)
    indent = re.search(rf"\n([ \t]*){re.escape(_START)}", source).group(1)
    lines = "".join(f"\n{indent}const auto {_scalar_name(name, index)} = {name}[static_cast<int64_t>({index}L)];"
                    for name, index in reads)
    return source.replace(_START, _START + lines)


#: What a definition that is computed once may consist of: ``tmp`` names computed once, the inputs read once,
#: floating-point literals and casts, pure math functions and operators; no integer arithmetic (a division by zero
#: that a loop would never reach must not run at the start), no index, no vector.
_SCALAR_EXPRESSION = re.compile(  # each token ends where the next cannot continue it: no backtracking into digits
    r"(?:tmp\d+\b|in_ptr\d+_value\d*\b|static_cast<(?:float|double)>|c10::convert<(?:float|double)>|double\b|float\b"
    r"|decltype\b|std::(?:pow|sqrt|exp|log)\b|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?(?![\d.eE])|==|!=|<=|>=|[-+*/(),<>]|\s+)*")


def hoist_scalar_math(source: str) -> str:
    """Definitions computed from the inputs read once (:func:`read_scalars_once`) and constants alone moved to the
    kernel's start, each under a name of its own (``auto tmp8 = double(tmp7 - tmp2);`` in a loop becomes ``auto tmp8
    = hoisted0;``): inductor restates them, and gcc converts ``1 − β`` from double on every vector iteration."""
    if source.count(_START) != 1 or "const auto hoisted" in source:  # once: the names would repeat
        return source
    # inputs of a floating type only: integer arithmetic (a division by zero) must stay where a loop guards it
    floating = set(re.findall(r"const (?:float|double)\* (in_ptr\d+)\b", source))
    hoisted: list[str] = []

    def in_loop(piece: str, definitions: dict[str, list[str]]) -> str:
        names: dict[str, str] = {}  # tmp name → what stands for it at the kernel's start

        def once(match: re.Match[str]) -> str:
            line, name, value = match.group(0), match.group(1), match.group(2)
            used = re.findall(r"\btmp\d+\b", value)
            inputs = re.findall(r"\b(in_ptr\d+)_value\d*\b", value)
            if (len(definitions[name]) != 1 or not _SCALAR_EXPRESSION.fullmatch(value)
                    or any(tmp not in names for tmp in used) or any(i not in floating for i in inputs)):
                return line
            value = re.sub(r"\btmp\d+\b", lambda m: names[m.group(0)], value)
            if re.fullmatch(r"in_ptr\d+_value\d*", value) or not (used or inputs):  # nothing to compute
                names[name] = value if inputs else f"({value})"
                return line
            names[name] = f"hoisted{len(hoisted)}"
            hoisted.append(f"const auto {names[name]} = {value};")
            start, end = match.span(2)
            return line[:start - match.start()] + names[name] + line[end - match.start():]

        return re.sub(r"\bauto (tmp\d+) = (.*);\s*$", once, piece, flags=re.MULTILINE)

    source = _per_loop(source, in_loop)
    if not hoisted:
        return source
    lines = source.split("\n")
    at = next(i for i, line in enumerate(lines) if _START in line)
    while re.match(r"\s*const auto in_ptr\d+_value\d* = ", lines[at + 1]):
        at += 1
    indent = re.match(r"\s*", lines[at]).group(0)
    return "\n".join(lines[:at + 1] + [indent + line for line in hoisted] + lines[at + 1:])


def _block_end(lines: list[str], start: int) -> int:
    """The index of the line that closes the block opening at or after ``lines[start]``."""
    depth, opened = 0, False
    for i in range(start, len(lines)):
        depth += lines[i].count("{") - lines[i].count("}")
        opened = opened or "{" in lines[i]
        if opened and depth <= 0:
            return i
    return len(lines) - 1


def _only_row_reads(body: str, name: str) -> bool:
    """Whether ``name`` appears in ``body`` only as the read ``name[static_cast<int64_t>(x0)]``, outside any masked
    lambda (``[&]``: a read it guards may lie past the pointer's rows)."""
    reads = len(re.findall(rf"\b{name}\[static_cast<int64_t>\(x0\)\](?!\s*[-+*/|&^]?=(?!=))", body))  # not written
    return reads == len(re.findall(rf"\b{name}\b", body)) and "[&]" not in body


def _collapsed(out: list[str]) -> bool:
    """Whether the loop about to follow ``out`` is the second of a ``collapse(2)``: nothing may stand between them."""
    i = len(out) - 1
    while i >= 0 and out[i].strip() in ("", "{"):
        i -= 1
    return i >= 1 and out[i].lstrip().startswith("for(") and "collapse(" in out[i - 1]


def read_block_values_once(source: str) -> str:
    """Reads of a per-row value (``in_ptr1[static_cast<int64_t>(x0)]``) inside an inner loop over ``x1`` moved to
    just before that loop, where the loop touches that pointer in no other way (no write, no other index) and the
    pointer is not an alias of a written buffer: inductor writes a buffer it also reads through another pointer
    only after reading it, so the value before the loop is the value in it."""
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
        names = sorted(set(re.findall(rf"\b({_POINTER})\[static_cast<int64_t>\(x0\)\]", body)))
        if _collapsed(out):
            names = []
        for name in names:
            if name in aliased or not _only_row_reads(body, name) or f"{name}_row" in source:
                continue
            value = f"{name}_row{count}"
            count += 1
            out.append(f"{indent}const auto {value} = {name}[static_cast<int64_t>(x0)];")
            body = re.sub(rf"\b{name}\[static_cast<int64_t>\(x0\)\]", value, body)
        out += pragmas + body.split("\n")
        i = end + 1
    return "\n".join(out)


def _per_loop(source: str, rewrite_one: Callable[[str, dict[str, list[str]]], str]) -> str:
    """``rewrite_one`` applied to each stretch of ``source`` from one ``for`` to the next, with the right-hand sides
    given there to each ``tmp`` name (the names repeat across a kernel's loops with other meanings)."""
    return "".join(rewrite_one(piece, _definitions(piece)) for piece in _pieces(source))


def _pieces(source: str) -> list[str]:
    # a vector loop's scalar tail ("for (int64_t x0_tail") too: it defines the same tmp names as scalars
    return re.split(r"(?=^[ \t]*for(?:\(| \(int64_t x\d+_tail\b))", source, flags=re.MULTILINE)


def _definitions(source: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = defaultdict(list)
    for name, value in re.findall(r"\bauto (tmp\d+) = (.*);\s*$", source, flags=re.MULTILINE):
        found[name].append(value)
    return found


def _float32(literal: str) -> float | None:
    """The float a C++ ``static_cast<float>(literal)`` gives, or None if it overflows."""
    try:
        return struct.unpack("f", struct.pack("f", float(literal)))[0]
    except (OverflowError, ValueError):
        return None


def _nonzero_constants(definitions: dict[str, list[str]]) -> set[str]:
    """Names that are float vectors of one finite nonzero float32 wherever they are defined."""

    def literal(name: str) -> bool:
        values = definitions.get(name, [])
        for value in values:
            match = re.fullmatch(r"static_cast<float>\(([-+0-9.eE]+)\)", value)
            number = None if match is None else _float32(match.group(1))
            if number is None or not math.isfinite(number) or number == 0:
                return False
        return bool(values)

    def broadcast_of_literal(value: str) -> bool:
        match = re.fullmatch(r"at::vec::Vectorized<float>\((tmp\d+)\)", value)
        return match is not None and literal(match.group(1))

    return {name for name, values in definitions.items() if all(map(broadcast_of_literal, values))}


def clamp_by_one_instruction(source: str, vector_bits: int) -> str:
    """``at::vec::maximum(x, c)`` and ``minimum`` with ``c`` a nonzero constant as one ``max_ps``/``min_ps`` with
    ``c`` first: the same value for every number ``x``, and NaN for a NaN (x's own, where ATen's returns an all-ones
    NaN); a nonzero ``c`` cannot tie with ``x`` in other bits (as ±0 tie), so which operand a tie returns does not
    matter."""
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


_ASSIGNMENT = re.compile(r"^\s*(tmp_acc\d+_vec) = (.*);\s*$", flags=re.MULTILINE)


def abs_max_by_integer_max(source: str, vector_bits: int) -> str:
    """A float running maximum ``acc = at::vec::maximum(acc, y)`` with ``y = x.abs()`` as a signed integer maximum
    of their bits, where every assignment to ``acc`` is of that form: then ``acc`` holds its start (−∞, a negative
    integer) or non-negative floats, whose integer order is their float order, and a NaN's bits are above infinity's,
    so a NaN still ends as the maximum (a positive NaN, where ATen's maximum gives an all-ones one). An accumulator
    also assigned otherwise (a masked tail's ``max_masked_reduce``, whose NaN is negative as an integer) is left."""
    prefix, bits = _WIDTHS[vector_bits]
    cast = f"{prefix}_castps_si{bits}"
    declared: dict[str, set[str]] = defaultdict(set)
    for kind, name in re.findall(r"(at::vec::\S+) (tmp_acc\d+_vec) = ", source):
        declared[name].add(kind)
    eligible = {name for name, kinds in declared.items() if kinds == {"at::vec::Vectorized<float>"}}

    def y_of(acc: str, value: str, definitions: dict[str, list[str]]) -> str | None:
        """``y`` if ``value`` is ``at::vec::maximum(acc, y)`` with ``y`` an absolute value."""
        match = re.fullmatch(rf"at::vec::maximum\({acc}, (tmp\d+)\)", value)
        values = definitions.get(match.group(1), []) if match else []
        return match.group(1) if values and all(re.fullmatch(r"tmp\d+\.abs\(\)", v) for v in values) else None

    for piece in _pieces(source):
        definitions = _definitions(piece)
        eligible -= {acc for acc, value in _ASSIGNMENT.findall(piece) if y_of(acc, value, definitions) is None}
    for acc in list(eligible):  # an assignment of another form anywhere (inside a lambda, say)
        if len(re.findall(rf"(?<!> )\b{acc} = ", source)) != len(re.findall(rf"^\s*{acc} = ", source, re.MULTILINE)):
            eligible.discard(acc)

    def in_loop(piece: str, definitions: dict[str, list[str]]) -> str:
        def integer_max(match: re.Match[str]) -> str:
            acc, value = match.groups()
            y = y_of(acc, value, definitions) if acc in eligible else None
            if y is None:
                return match.group(0)
            integer = f"{prefix}_max_epi32({cast}({acc}), {cast}({y}))"
            return match.group(0).replace(value, f"at::vec::Vectorized<float>({prefix}_castsi{bits}_ps({integer}))")

        return _ASSIGNMENT.sub(integer_max, piece)

    return _per_loop(source, in_loop)
