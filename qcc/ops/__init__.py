"""Float reference kernels and their VJPs, one module per family of ops.

Importing this package fills qcc.registry.OPS.
"""

from qcc.ops import elementwise, grads, nn, quantize, reduce, tensor  # noqa: F401
