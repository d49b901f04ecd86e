"""The NumPy integer interpreter: the executable specification of qcc's integer arithmetic."""

from backends.numpy_int.interpreter import RunReport, run_integer

__all__ = ["RunReport", "run_integer"]
