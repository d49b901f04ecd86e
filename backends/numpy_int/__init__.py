"""The NumPy integer interpreter: the executable specification of qcc's integer arithmetic.

Importing the package registers its integer kernels with the op registry (qcc's own integer
ops, and ONNX's QLinear / Integer ops bit-exact with onnxruntime); the driver does so.
"""

from backends.numpy_int import kernels, qlinear, trunc  # noqa: F401  (registration is the import's job)
from backends.numpy_int.interpreter import RunReport, run_integer

__all__ = ["RunReport", "run_integer"]
