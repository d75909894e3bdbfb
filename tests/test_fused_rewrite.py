"""The rewrites of inductor's generated C++ (optarena.optim.fused.rewrite): each applies where its pattern proves it
safe and leaves everything else as inductor wrote it; the compiled kernels keep NaN where the rule does."""

from __future__ import annotations

import math
import struct

import pytest
import torch

import optarena
from optarena.optim.fused import codegen, rewrite

START = "inductor_cpu_integer_div_error_flag = &inductor_cpu_integer_div_error;"


def kernel(body: str, header: str = "") -> str:
    return (f'extern "C" void kernel(const float* in_ptr0, const double* in_ptr1, float* out_ptr0)\n{{\n'
            f"    {START}\n{header}    #pragma omp parallel\n    {{\n{body}    }}\n}}\n")


def test_a_scalar_input_is_read_once_at_the_start() -> None:
    body = ("        for(int64_t x0=0; x0<ks0; x0+=16)\n        {\n"
            "            auto tmp1 = in_ptr1[static_cast<int64_t>(0L)];\n"
            "            auto tmp2 = at::vec::Vectorized<float>::loadu(in_ptr0 + x0, 16);\n        }\n")
    out = rewrite.read_scalars_once(kernel(body))
    assert f"{START}\n    const auto in_ptr1_value = in_ptr1[static_cast<int64_t>(0L)];" in out
    assert "auto tmp1 = in_ptr1_value;" in out
    assert out.count("in_ptr1[") == 1


def test_an_input_aliased_to_a_written_buffer_is_read_where_it_was() -> None:
    body = "        auto tmp1 = in_ptr2[static_cast<int64_t>(0L)];\n"
    source = kernel(body, header="    auto in_ptr2 = in_out_ptr0;\n")
    assert rewrite.read_scalars_once(source) == source


def test_reads_at_any_constant_index_are_read_once() -> None:
    body = ("        auto tmp1 = in_ptr1[static_cast<int64_t>(2L)];\n"
            "        auto tmp2 = in_ptr1[static_cast<int64_t>(0L)];\n")
    out = rewrite.read_scalars_once(kernel(body))
    assert "const auto in_ptr1_value = in_ptr1[static_cast<int64_t>(0L)];" in out
    assert "const auto in_ptr1_value2 = in_ptr1[static_cast<int64_t>(2L)];" in out
    assert "auto tmp1 = in_ptr1_value2;" in out and "auto tmp2 = in_ptr1_value;" in out


SCALAR_MATH = """        for(int64_t x0=0; x0<ks0; x0+=16)
        {
            auto tmp0 = in_ptr1_value;
            auto tmp1 = static_cast<double>(1.0);
            auto tmp2 = double(tmp1 - tmp0);
            auto tmp3 = c10::convert<float>(tmp2);
            auto tmp4 = at::vec::Vectorized<float>(tmp3);
            auto tmp5 = decltype(tmp0)(-tmp0);
            auto tmp6 = std::pow(tmp0, tmp1);
            auto tmp7 = in_ptr1_row0;
            auto tmp8 = double(tmp7 * tmp0);
            auto tmp9 = static_cast<int64_t>(4);
            auto tmp10 = c10::convert<double>(tmp9);
            auto tmp11 = double(tmp0 + tmp10);
            auto tmp12 = x0;
            auto tmp13 = double(tmp1 * tmp1);
            auto tmp13 = at::vec::Vectorized<float>::loadu(in_ptr0 + x0, 16);
        }
        for (int64_t x0_tail = 0; x0_tail < ks0; x0_tail++)
        {
            auto tmp2 = double(tmp1 - tmp0);
        }
"""


def test_arithmetic_on_scalars_alone_is_done_once_at_the_start() -> None:
    """Scalar arithmetic on inputs read once and on floating-point constants moves to the kernel's start under names
    of its own; a vector, a per-row value, an integer, an index and a name defined twice stay where they are; a
    tmp defined in another loop (the tail's tmp1, tmp0) is not taken for this one's."""
    source = kernel(SCALAR_MATH, header="    const auto in_ptr1_value = in_ptr1[static_cast<int64_t>(0L)];\n")
    out = rewrite.hoist_scalar_math(source)
    start = out.split("#pragma omp parallel")[0]
    assert "const auto hoisted0 = double((static_cast<double>(1.0)) - in_ptr1_value);" in start
    assert "const auto hoisted1 = c10::convert<float>(hoisted0);" in start
    assert "const auto hoisted2 = decltype(in_ptr1_value)(-in_ptr1_value);" in start
    assert "const auto hoisted3 = std::pow(in_ptr1_value, (static_cast<double>(1.0)));" in start
    assert start.count("const auto hoisted") == 4
    assert start.index("const auto in_ptr1_value =") < start.index("const auto hoisted0")
    loop = out.split("#pragma omp parallel")[1]
    for line in ("auto tmp2 = hoisted0;", "auto tmp3 = hoisted1;", "auto tmp4 = at::vec::Vectorized<float>(tmp3);",
                 "auto tmp8 = double(tmp7 * tmp0);", "auto tmp11 = double(tmp0 + tmp10);", "auto tmp12 = x0;",
                 "auto tmp13 = double(tmp1 * tmp1);", "            auto tmp2 = double(tmp1 - tmp0);"):
        assert line in loop, line
    assert rewrite.hoist_scalar_math(out) == out


def test_integer_inputs_and_aliases_are_hoisted_safely() -> None:
    """An integer input's arithmetic stays in its loop (a division by zero there may never run); an alias whose
    value's name begins the defined name (``tmp12 = tmp1``) keeps its own name."""
    source = ('extern "C" void kernel(const int64_t* in_ptr0, const double* in_ptr1)\n{\n'
              f"    {START}\n"
              "    const auto in_ptr0_value = in_ptr0[static_cast<int64_t>(0L)];\n"
              "    const auto in_ptr1_value = in_ptr1[static_cast<int64_t>(0L)];\n"
              "    for(int64_t x0=0; x0<ks0; x0+=1)\n    {\n"
              "        auto tmp0 = in_ptr0_value;\n        auto tmp2 = tmp0 / tmp0;\n"
              "        auto tmp1 = double(in_ptr1_value * in_ptr1_value);\n        auto tmp12 = tmp1;\n"
              "        auto tmp13 = double(tmp12 + tmp1);\n    }\n}\n")
    out = rewrite.hoist_scalar_math(source)
    assert "auto tmp2 = tmp0 / tmp0;" in out and "in_ptr0_value /" not in out
    assert "auto tmp12 = hoisted1;" in out and "const auto hoisted1 = hoisted0;" in out
    assert "const auto hoisted2 = double(hoisted1 + hoisted0);" in out


def test_a_clamp_in_a_loop_with_a_scalar_tail_is_one_instruction() -> None:
    """The tail loop (``for (``) defines the same tmp names as scalars: it is a loop of its own."""
    tail = ("        for (int64_t x0_tail = 0; x0_tail < ks0; x0_tail++)\n        {\n"
            "            auto tmp2 = max_propagate_nan(tmp0, tmp1);\n        }\n")
    first_loop = CLAMP[:CLAMP.index("        for(int64_t x0=0;", 1)]
    out = rewrite.clamp_by_one_instruction(kernel(first_loop + tail), 512)
    assert "_mm512_max_ps(tmp2, tmp0)" in out


ROWS = """            for(int64_t x0=0; x0<ks0; x0+=1)
            {
                out_ptr1[static_cast<int64_t>(x0)] = tmp_acc0;
                #pragma GCC ivdep
                for(int64_t x1=0; x1<256; x1+=16)
                {
                    auto tmp0 = in_ptr0[static_cast<int64_t>(x0)];
                    auto tmp1 = out_ptr1[static_cast<int64_t>(x0)];
                    auto tmp2 = out_ptr2[static_cast<int64_t>(x0)];
                    auto tmp3 = in_out_ptr1[static_cast<int64_t>(x0)];
                    out_ptr2[static_cast<int64_t>(x0)] = tmp0;
                    in_out_ptr1[static_cast<int64_t>(x0)] += tmp0;
                }
                for(int64_t x1=0; x1<256; x1+=16)
                {
                    auto tmp0 = in_ptr0[static_cast<int64_t>(x0)];
                }
            }
"""


def test_a_row_value_is_read_before_its_loop_unless_the_loop_writes_it() -> None:
    out = rewrite.read_block_values_once(kernel(ROWS))
    lines = [line.strip() for line in out.splitlines()]
    first = lines.index("#pragma GCC ivdep")  # the reads go before the pragma, which binds to its loop
    assert lines[first - 2:first] == ["const auto in_ptr0_row0 = in_ptr0[static_cast<int64_t>(x0)];",
                                      "const auto out_ptr1_row1 = out_ptr1[static_cast<int64_t>(x0)];"]
    assert "auto tmp2 = out_ptr2[static_cast<int64_t>(x0)];" in lines  # written in the loop: read in place
    assert "const auto in_ptr0_row2 = in_ptr0[static_cast<int64_t>(x0)];" in lines  # each loop its own name
    assert lines.count("auto tmp0 = in_ptr0_row0;") == 1 and lines.count("auto tmp0 = in_ptr0_row2;") == 1
    assert "auto tmp3 = in_out_ptr1[static_cast<int64_t>(x0)];" in lines  # not out_ptr1's read


def test_the_inner_loop_of_a_collapsed_pair_keeps_its_reads() -> None:
    """``collapse(2)`` needs the loops perfectly nested: nothing may be put between them."""
    source = kernel("""            #pragma omp for collapse(2)
            for(int64_t x0=0; x0<8; x0+=1)
            {
                for(int64_t x1=0; x1<256; x1+=16)
                {
                    auto tmp0 = in_ptr0[static_cast<int64_t>(x0)];
                }
            }
""")
    assert rewrite.read_block_values_once(source) == source


def test_the_rewrites_apply_once() -> None:
    source = kernel(ROWS.replace("auto tmp2", "auto tmp4 = in_ptr1[static_cast<int64_t>(0L)];\n auto tmp2") + CLAMP)
    once = rewrite.rewrite(source, 512)
    assert once != source and rewrite.rewrite(once, 512) == once


CLAMP = """        for(int64_t x0=0; x0<ks0; x0+=16)
        {
            auto tmp0 = at::vec::Vectorized<float>::loadu(in_ptr0 + x0, 16);
            auto tmp1 = static_cast<float>(-1.5);
            auto tmp2 = at::vec::Vectorized<float>(tmp1);
            auto tmp3 = at::vec::maximum(tmp0, tmp2);
            auto tmp4 = static_cast<float>(0.0);
            auto tmp5 = at::vec::Vectorized<float>(tmp4);
            auto tmp6 = at::vec::minimum(tmp5, tmp3);
            auto tmp7 = at::vec::maximum(tmp3, tmp6);
            auto tmp8 = static_cast<float>(1e-60);
            auto tmp9 = at::vec::Vectorized<float>(tmp8);
            auto tmp10 = at::vec::maximum(tmp0, tmp9);
            auto tmp11 = static_cast<float>(1e39);
            auto tmp12 = at::vec::Vectorized<float>(tmp11);
            auto tmp13 = at::vec::minimum(tmp0, tmp12);
        }
        for(int64_t x0=0; x0<ks0; x0+=16)
        {
            auto tmp2 = at::vec::Vectorized<float>::loadu(in_ptr0 + x0, 16);
            auto tmp3 = at::vec::maximum(tmp0, tmp2);
        }
"""


@pytest.mark.parametrize("bits", [512, 256])
def test_a_clamp_against_a_nonzero_constant_is_one_instruction_with_the_constant_first(bits: int) -> None:
    out = rewrite.clamp_by_one_instruction(kernel(CLAMP), bits)
    assert f"auto tmp3 = at::vec::Vectorized<float>(_mm{bits}_max_ps(tmp2, tmp0));" in out
    assert "auto tmp6 = at::vec::minimum(tmp5, tmp3);" in out  # zero: a tie of ±0 would pick another sign
    assert "auto tmp7 = at::vec::maximum(tmp3, tmp6);" in out  # no constant
    assert "auto tmp10 = at::vec::maximum(tmp0, tmp9);" in out  # 0 as a float32
    assert "auto tmp13 = at::vec::minimum(tmp0, tmp12);" in out  # infinite as a float32
    assert out.count("at::vec::maximum(tmp0, tmp2)") == 1  # the second loop's tmp2 is a load, not the constant


ACCUMULATE = """        at::vec::Vectorized<float> tmp_acc0_vec = at::vec::Vectorized<float>(-inf);
        at::vec::Vectorized<int32_t> tmp_acc1_vec = at::vec::Vectorized<int32_t>(min);
        at::vec::Vectorized<float> tmp_acc2_vec = at::vec::Vectorized<float>(-inf);
        at::vec::Vectorized<float> tmp_acc3_vec = at::vec::Vectorized<float>(-inf);
        for(int64_t x1=0; x1<256; x1+=16)
        {
            auto tmp0 = at::vec::Vectorized<float>::loadu(in_ptr0 + x1, 16);
            auto tmp1 = tmp0.abs();
            auto tmp2 = at::vec::convert<int32_t>(tmp0).abs();
            tmp_acc0_vec = at::vec::maximum(tmp_acc0_vec, tmp1);
            tmp_acc1_vec = at::vec::maximum(tmp_acc1_vec, tmp2);
            tmp_acc2_vec = at::vec::maximum(tmp_acc2_vec, tmp1);
            tmp_acc3_vec = at::vec::maximum(tmp_acc3_vec, tmp1);
        }
        for(int64_t x1=0; x1<256; x1+=16)
        {
            auto tmp0 = at::vec::Vectorized<float>::loadu(in_ptr0 + x1, 16);
            tmp_acc2_vec = at::vec::maximum(tmp_acc2_vec, tmp0);
            tmp_acc3_vec = max_masked_reduce(tmp_acc3_vec, tmp0.abs(), 7);
        }
"""


def test_a_running_maximum_of_absolute_values_compares_bits() -> None:
    out = rewrite.abs_max_by_integer_max(kernel(ACCUMULATE), 512)
    assert ("tmp_acc0_vec = at::vec::Vectorized<float>(_mm512_castsi512_ps(_mm512_max_epi32("
            "_mm512_castps_si512(tmp_acc0_vec), _mm512_castps_si512(tmp1))));") in out
    assert "tmp_acc1_vec = at::vec::maximum(tmp_acc1_vec, tmp2);" in out  # an integer accumulator
    # also assigned a value that is not an absolute value, or through a masked tail (a NaN there is all ones,
    # negative as an integer): a NaN could be lost, so the float maximum stays
    assert "tmp_acc2_vec = at::vec::maximum(tmp_acc2_vec, tmp1);" in out
    assert "tmp_acc3_vec = at::vec::maximum(tmp_acc3_vec, tmp1);" in out


def test_the_bit_order_of_non_negative_floats_is_their_order() -> None:
    """What :func:`rewrite.abs_max_by_integer_max` relies on, over the kinds of float32: zero, subnormal, normal,
    largest, infinite, then NaN above them, and −∞ (the accumulator's start) below all."""

    def as_float(bits: int) -> float:
        return struct.unpack("<f", struct.pack("<I", bits))[0]

    flushing = as_float(1) == 0  # an earlier test in this process may flush subnormals (they would read as zero)
    torch.set_flush_denormal(False)
    try:
        bits = [0, 1, 0x00800000, 0x3F000000, 0x3F800000, 0x7F7FFFFF, 0x7F800000]
        floats = [as_float(b) for b in bits]
        assert floats == sorted(floats) and len(set(floats)) == len(floats) and floats[-1] == math.inf
        assert math.isnan(as_float(0x7FC00000)) and 0x7FC00000 > bits[-1]
        assert struct.unpack("<i", struct.pack("<f", -math.inf))[0] < 0
    finally:
        torch.set_flush_denormal(flushing)


def test_rewrite_leaves_the_intrinsics_out_of_other_isas() -> None:
    source = kernel(CLAMP) + kernel(ACCUMULATE)
    assert "_mm" not in rewrite.rewrite(source, 0) and "_mm" not in rewrite.rewrite(source, 128)


@pytest.mark.parametrize("state_dtype", [None, "int8"])
def test_fused_lion_keeps_a_nan_gradient_nan(state_dtype: str | None) -> None:
    """The rewritten clamp and block maximum still let a NaN through: the parameter entry with a NaN gradient
    becomes NaN on the fused path as on the loop path, and no other entry does; the state agrees too."""
    if not codegen.adjusted():
        pytest.skip("the rewrites are made on the tested torch only")
    results = []
    for path in (dict(foreach=False), dict(fused=True)):
        p = torch.nn.Parameter(torch.ones(1 << 15))
        opt = optarena.Lion([p], lr=0.1, state_dtype=state_dtype, **path)
        for step in range(3):
            p.grad = torch.full_like(p, 0.5)
            if step == 1:
                p.grad[300] = math.nan
            opt.step()
        results.append((p.detach().clone(), opt.state[p]))
    (loop, loop_state), (fused, fused_state) = results
    assert fused[300].isnan() and loop[300].isnan()
    torch.testing.assert_close(fused, loop, equal_nan=True)
    for key in loop_state:  # with 8-bit state, the NaN block's scale is NaN (its codes all 0) on both paths
        torch.testing.assert_close(fused_state[key], loop_state[key], equal_nan=True)
