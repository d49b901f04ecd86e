"""QTrunc: a compiled QONNX Trunc on codes, a right shift with QONNX's rounding modes
(qcc.core.ops.qonnx.trunc_shift, exact in int64)."""

from __future__ import annotations

from qcc.core.ops.qonnx import qtrunc
from qcc.core.registry import int_kernel

int_kernel("QTrunc")(qtrunc)
