"""The number formats of qcc as exact NumPy functions, shared by the integer interpreter and
mirrored function for function by the C runtime.

- `rounding`: integer rounding/saturation primitives (gemmlowp / TFLite semantics), the
  counter-based PRNG and stochastic rounding.
- `fixed`:    fixed point with a power-of-two range (seeds/001 §2.1).
- `affine`:   scale + zero point (seeds/000 §B, gemmlowp, ONNX QuantizeLinear).
- `apot`:     uniform, PoT and additive powers-of-two levels, RCF, WN (seeds/004).
- `binary`:   ±α, sign activations, XNOR-popcount, ternary and stochastic ternarization.
- `packing`:  codes of 1/2/4/8/16 bits packed into bytes.
"""

from qcc.core.numerics import affine, apot, binary, fixed, packing, rounding

__all__ = ["affine", "apot", "binary", "fixed", "packing", "rounding"]
