"""qcc: a quantizing model compiler from ONNX to fixed-point NumPy and C for microcontrollers."""

__version__ = "0.1.0"
