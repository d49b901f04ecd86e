"""Integer Softmax in C (qcc.QSoftmax): the NumPy reference's integer operations, row by row.

Per row of n codes (strided by `inner`): the maximum, then S = Σ E(max − x_i) in uint64_t, then
each output (E_i·2^P + S/2) / S + z_out, clamped; E(d) = (LOW[d mod 256]·HIGH[d div 256] + 2^29)
>> 30 from the two exp tables (zero past their ends). E is computed twice rather than stored, so
the kernel needs no scratch; qcc.core.numerics.softmax documents the tables and the error bound.
"""

from __future__ import annotations

from backends.c.ops import Kernel, KernelPlan, c_kernel
from backends.c.writer import CWriter
from qcc.core.ir import Node
from qcc.core.numerics.softmax import EXP_FRAC_BITS, TABLE_SPLIT, softmax_layout


@c_kernel
class SoftmaxKernel(Kernel):
    op_types = ("QSoftmax",)
    origin = "ONNX Softmax as qcc.QSoftmax"

    def plan(self, node: Node, ctx) -> KernelPlan:
        outer, n, inner = self._layout(node, ctx)
        return KernelPlan(note=f"softmax of {outer * inner} rows of {n} codes: exp tables, "
                               "uint64_t sums, one division per output")

    def _layout(self, node: Node, ctx) -> tuple[int, int, int]:
        return softmax_layout(ctx.t(node.inputs[0]).shape, int(node.attrs["axis"]),
                              bool(node.attrs.get("flatten", 0)))

    def emit(self, node: Node, ctx, w: CWriter) -> None:
        a = node.attrs
        outer, n, inner = self._layout(node, ctx)
        low = [int(v) for v in node.inputs[1].const]
        high = [int(v) for v in node.inputs[2].const]
        low_name = ctx.const_array(node, "exp_low", "uint32_t", low)
        high_name = ctx.const_array(node, "exp_high", "uint32_t", high)
        out_t = ctx.t(node.outputs[0]).ctype
        x_t = ctx.t(node.inputs[0]).ctype
        half = 1 << (EXP_FRAC_BITS - 1)

        def exp_of(code: str) -> list[str]:
            return [f"const uint32_t d = (uint32_t)(max - (int32_t){code});",
                    f"const uint32_t h = d / {TABLE_SPLIT}u, l = d % {TABLE_SPLIT}u;",
                    f"const uint64_t e = (h < {len(high)}u && l < {len(low)}u) ? "
                    f"((uint64_t){low_name}[l] * {high_name}[h] + {half}u) >> {EXP_FRAC_BITS} "
                    ": 0u;"]

        with w.block(f"for (int32_t o = 0; o < {outer}; ++o)"):
            with w.block(f"for (int32_t k = 0; k < {inner}; ++k)"):
                w.line(f"const {x_t} *x = x0 + o * {n * inner} + k;")
                w.line(f"{out_t} *y = y0 + o * {n * inner} + k;")
                w.line("int32_t max = x[0];")
                with w.block(f"for (int32_t i = 1; i < {n}; ++i)"):
                    w.line(f"if (x[i * {inner}] > max) max = x[i * {inner}];")
                w.line("uint64_t sum = 0u;")
                with w.block(f"for (int32_t i = 0; i < {n}; ++i)"):
                    w.lines_of(exp_of(f"x[i * {inner}]"))
                    w.line("sum += e;")
                with w.block(f"for (int32_t i = 0; i < {n}; ++i)"):
                    w.lines_of(exp_of(f"x[i * {inner}]"))
                    w.line(f"int64_t v = (int64_t)((e * {1 << int(a['out_frac_bits'])}u + "
                           "sum / 2u) / sum);")
                    zp = int(a["out_zero_point"])
                    if zp:
                        w.line(f"v += {zp};")
                    w.line(f"if (v > {int(a['out_hi'])}) v = {int(a['out_hi'])};")
                    w.line(f"if (v < {int(a['out_lo'])}) v = {int(a['out_lo'])};")
                    w.line(f"y[i * {inner}] = ({out_t})v;")
