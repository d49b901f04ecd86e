"""Integer Softmax and LogSoftmax in C (qcc.QSoftmax, qcc.QLogSoftmax): the NumPy references'
integer operations, row by row.

Per row of n codes (strided by `inner`): the maximum, then S = Σ E(max − x_i) in uint64_t, where
E(d) = (LOW[d mod 256]·HIGH[d div 256] + 2^29) >> 30 from the two exp tables (zero past their
ends). Softmax: each output (E_i·2^P + S/2) / S + z_out, clamped; E is computed twice rather
than stored, so the kernel needs no scratch (qcc.core.numerics.softmax documents the tables and
the error bound). LogSoftmax: l = log2(S / 2^30) in Q24 once per row (bit length, then repeated
squaring), L = (LOG_MULT·l + 2^17) >> 18, then each output z_out − ((DIFF_MULT·min(d_i, D_CAP)
+ L + 2^23) >> 24), clamped (qcc.core.numerics.log_softmax).
"""

from __future__ import annotations

from collections.abc import Callable

from backends.c.ops.base import Kernel, KernelPlan, c_kernel
from backends.c.writer import CWriter
from qcc.core.ir import Node
from qcc.core.numerics.log_softmax import LOG_FRAC_BITS, LOG_MULT_BITS, SCALE_BITS
from qcc.core.numerics.softmax import EXP_FRAC_BITS, TABLE_SPLIT, softmax_layout


class _RowKernel(Kernel):
    """What Softmax and LogSoftmax share: the exp tables, the row loops, the row's maximum and
    the sum S of its exp terms."""

    def layout(self, node: Node, ctx) -> tuple[int, int, int]:
        return softmax_layout(ctx.t(node.inputs[0]).shape, int(node.attrs["axis"]),
                              bool(node.attrs.get("flatten", 0)))

    def exp_of(self, node: Node, ctx, code: str) -> list[str]:
        """Lines defining `d` = max − code and `e` = E(d) (uint64_t)."""
        low = [int(v) for v in node.inputs[1].const]
        high = [int(v) for v in node.inputs[2].const]
        low_name = ctx.const_array(node, "exp_low", "uint32_t", low)
        high_name = ctx.const_array(node, "exp_high", "uint32_t", high)
        return [f"const uint32_t d = (uint32_t)(max - (int32_t){code});",
                f"const uint32_t h = d / {TABLE_SPLIT}u, l = d % {TABLE_SPLIT}u;",
                f"const uint64_t e = (h < {len(high)}u && l < {len(low)}u) ? "
                f"((uint64_t){low_name}[l] * {high_name}[h] + {1 << (EXP_FRAC_BITS - 1)}u) >> "
                f"{EXP_FRAC_BITS} : 0u;"]

    def rows(self, node: Node, ctx, w: CWriter,
             each_output: Callable[[CWriter, str], None]) -> None:
        """Per row: x, y, max, sum; then `each_output(w, "x[i * inner]")` inside the loop over
        the row that writes `int64_t v` (clamped and stored here)."""
        a = node.attrs
        outer, n, inner = self.layout(node, ctx)
        out_t, x_t = ctx.t(node.outputs[0]).ctype, ctx.t(node.inputs[0]).ctype
        with w.block(f"for (int32_t o = 0; o < {outer}; ++o)"):
            with w.block(f"for (int32_t k = 0; k < {inner}; ++k)"):
                w.line(f"const {x_t} *x = x0 + o * {n * inner} + k;")
                w.line(f"{out_t} *y = y0 + o * {n * inner} + k;")
                w.line("int32_t max = x[0];")
                with w.block(f"for (int32_t i = 1; i < {n}; ++i)"):
                    w.line(f"if (x[i * {inner}] > max) max = x[i * {inner}];")
                w.line("uint64_t sum = 0u;")
                with w.block(f"for (int32_t i = 0; i < {n}; ++i)"):
                    w.lines_of(self.exp_of(node, ctx, f"x[i * {inner}]"))
                    w.line("sum += e;")
                self.row_setup(node, w)
                with w.block(f"for (int32_t i = 0; i < {n}; ++i)"):
                    each_output(w, f"x[i * {inner}]")
                    w.line(f"if (v > {int(a['out_hi'])}) v = {int(a['out_hi'])};")
                    w.line(f"if (v < {int(a['out_lo'])}) v = {int(a['out_lo'])};")
                    w.line(f"y[i * {inner}] = ({out_t})v;")

    def row_setup(self, node: Node, w: CWriter) -> None:
        """Per-row values computed from `sum` before the outputs (none by default)."""


@c_kernel
class SoftmaxKernel(_RowKernel):
    op_types = ("QSoftmax",)
    origin = "ONNX Softmax as qcc.QSoftmax"

    def plan(self, node: Node, ctx) -> KernelPlan:
        outer, n, inner = self.layout(node, ctx)
        return KernelPlan(note=f"softmax of {outer * inner} rows of {n} codes: exp tables, "
                               "uint64_t sums, one division per output")

    def emit(self, node: Node, ctx, w: CWriter) -> None:
        a = node.attrs
        zp = int(a["out_zero_point"])

        def output(w: CWriter, code: str) -> None:
            w.lines_of(self.exp_of(node, ctx, code))
            w.line(f"int64_t v = (int64_t)((e * {1 << int(a['out_frac_bits'])}u + "
                   "sum / 2u) / sum);")
            if zp:
                w.line(f"v += {zp};")

        self.rows(node, ctx, w, output)


@c_kernel
class LogSoftmaxKernel(_RowKernel):
    op_types = ("QLogSoftmax",)
    origin = "ONNX LogSoftmax as qcc.QLogSoftmax"

    def plan(self, node: Node, ctx) -> KernelPlan:
        outer, n, inner = self.layout(node, ctx)
        return KernelPlan(note=f"log-softmax of {outer * inner} rows of {n} codes: exp tables, "
                               "uint64_t sums, one integer log2 per row")

    def row_setup(self, node: Node, w: CWriter) -> None:
        """l = log2(sum / 2^30) in Q24 (log_softmax.integer_log2), then L in Q24 LSBs."""
        shift = LOG_MULT_BITS + LOG_FRAC_BITS - SCALE_BITS
        top = 63 - EXP_FRAC_BITS  # floor(log2 sum) - 30 <= 33: no shift by 64
        w.line("int32_t whole = 0;")
        w.line(f"while (whole < {top} && (sum >> ({EXP_FRAC_BITS + 1} + whole)) != 0u) ++whole;")
        w.line("uint64_t m = sum >> whole;")
        w.line("int64_t log2_sum = 0;")
        with w.block(f"for (int32_t b = 0; b < {LOG_FRAC_BITS}; ++b)"):
            w.line(f"m = (m * m + {1 << (EXP_FRAC_BITS - 1)}u) >> {EXP_FRAC_BITS};")
            w.line(f"const uint32_t bit = (uint32_t)(m >> {EXP_FRAC_BITS + 1});")
            w.line("m >>= bit;")
            w.line("log2_sum = 2 * log2_sum + (int64_t)bit;")
        w.line(f"log2_sum += (int64_t)whole << {LOG_FRAC_BITS};")
        w.line(f"const int64_t log_term = (int64_t)(({int(node.attrs['log_mult'])}u * "
               f"(uint64_t)log2_sum + {1 << (shift - 1)}u) >> {shift});")

    def emit(self, node: Node, ctx, w: CWriter) -> None:
        a = node.attrs
        d_cap, diff_mult = int(a["d_cap"]), int(a["diff_mult"])

        def output(w: CWriter, code: str) -> None:
            w.line(f"const int64_t d = (int64_t)max - {code};")
            w.line(f"const int64_t t = {diff_mult} * (d < {d_cap} ? d : {d_cap}) + log_term;")
            zp = int(a["out_zero_point"])
            w.line(f"int64_t v = {f'{zp} - ' if zp else '-'}((t + {1 << (SCALE_BITS - 1)}) >> "
                   f"{SCALE_BITS});")

        self.rows(node, ctx, w, output)
