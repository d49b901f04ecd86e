"""Float reference kernels and their VJPs, one module per family of ops.

Importing this package fills qcc.core.registry.OPS.
"""

from qcc.core.ops import (  # noqa: F401
    code_ranges,
    elementwise,
    grads,
    integer,
    nn,
    qonnx,
    quantize,
    reduce,
    tensor,
)
