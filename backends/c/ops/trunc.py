"""QTrunc in C: a compiled QONNX Trunc, the codes shifted right with QONNX's rounding mode
(qcc.core.ops.qonnx.trunc_shift, the NumPy specification), clamped, plus the output zero point.

The floor is written without shifting a negative value (implementation-defined in C99):
q = v >= 0 ? v >> t : -((-v + 2^t - 1) >> t), with the remainder r = v - q·2^t in [0, 2^t);
each rounding mode then adds 0 or 1 to q, chosen when the C is emitted.
"""

from __future__ import annotations

from backends.c.ops.base import Kernel, KernelPlan, c_kernel
from backends.c.ops.common import acc_type, affine_loops, int_literal
from backends.c.ops.elementwise import in_place_candidates, index_maps
from backends.c.writer import CWriter
from qcc.core.errors import QccError
from qcc.core.ir import Node

# rounding mode -> the C condition under which q (the floor) gets + 1 (r: remainder, half:
# 2^(t-1), v: the centred code); the same cases as trunc_shift
ROUND_UP_WHEN = {
    "FLOOR": "0",
    "CEIL": "r > 0",
    "ROUND": "r > half || (r == half && (q & 1) != 0)",
    "HALF_EVEN": "r > half || (r == half && (q & 1) != 0)",
    "HALF_UP": "r > half || (r == half && v >= 0)",
    "HALF_DOWN": "r > half || (r == half && v < 0)",
    "UP": "r > 0 && v >= 0",
    "DOWN": "r > 0 && v < 0",
    "ROUND_TO_ZERO": "r > 0 && v < 0",
}


@c_kernel
class TruncKernel(Kernel):
    op_types = ("QTrunc",)
    origin = "QONNX Trunc as qcc.QTrunc"

    def plan(self, node: Node, ctx) -> KernelPlan:
        a = node.attrs
        return KernelPlan(in_place=in_place_candidates(node, ctx),
                          note=f"codes >> {int(a['shift'])}, rounding {a['rounding_mode']}")

    def emit(self, node: Node, ctx, w: CWriter) -> None:
        a = node.attrs
        mode = str(a["rounding_mode"]).upper()
        if mode not in ROUND_UP_WHEN:
            raise QccError(f"QTrunc {node.name!r}: unknown rounding_mode {mode!r}")
        x = ctx.t(node.inputs[0])
        zx, shift = int(a.get("x_zero_point", 0)), int(a["shift"])
        bound = max(abs(x.lo - zx), abs(x.hi - zx)) + (1 << shift)
        t = acc_type(bound, node)
        out_t = ctx.t(node.outputs[0]).ctype
        lo, hi = int(a["clamp_lo"]), int(a["clamp_hi"])
        zy = int(a.get("out_zero_point", 0))
        shape, maps = index_maps(node, ctx)

        def body(ix: list[str]) -> list[str]:
            centred = f"({t})x0[{ix[1]}] - {zx}" if zx else f"({t})x0[{ix[1]}]"
            lines = [f"const {t} v = {centred};"]
            if shift == 0:
                lines.append(f"{t} q = v;")
            else:
                up = ROUND_UP_WHEN[mode].replace("half", int_literal(1 << (shift - 1)))
                lines += [f"{t} q = v >= 0 ? v >> {shift} : "
                          f"-((-v + {int_literal((1 << shift) - 1)}) >> {shift});",
                          f"const {t} r = v - q * {int_literal(1 << shift)};",
                          f"q += ({up}) ? 1 : 0;",
                          "(void)r;"]
            lines += [f"q = q < {int_literal(lo)} ? {int_literal(lo)} : "
                      f"q > {int_literal(hi)} ? {int_literal(hi)} : q;",
                      f"y0[{ix[0]}] = ({out_t})(q + {zy});"]
            return lines

        w.line(f"/* y = clip(R((x - {zx}) / 2^{shift}), {lo}, {hi}) + {zy}, R = {mode} */")
        affine_loops(w, shape, maps, body)
