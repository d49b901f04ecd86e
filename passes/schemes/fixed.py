"""The fixed-point scheme of seeds/001 §2.1 (power-of-two ranges, shift requantization)."""

from __future__ import annotations

import numpy as np

from passes.calibrate import TensorStats
from passes.schemes import CodeFormat, Scheme, register_scheme
from qcc.core.numerics import fixed
from qcc.core.numerics.rounding import int_range


@register_scheme
class FixedScheme(Scheme):
    """seeds/001 §2.1: B-bit codes, power-of-two PDR r, step Δ = r·2^-(B−1) (signed) or r·2^-B
    (unsigned, for tensors never negative on the calibration data). Per-tensor PDRs, so every
    requantization is a shift."""

    name = "fixed"

    def activation(self, stats: TensorStats, bits: int) -> CodeFormat:
        signed = stats.lo < 0
        fmt = fixed.FixedFormat(bits, fixed.choose_pdr_exp(np.array([stats.absmax])), signed)
        return _fixed_code_format(fmt)

    def weight(self, w: np.ndarray, bits: int, axis: int) -> tuple[np.ndarray, CodeFormat]:
        fmt = fixed.format_for(w, bits, signed=True)
        codes, _, _ = fixed.quantize(w, fmt)
        return codes, _fixed_code_format(fmt)


def _fixed_code_format(fmt: fixed.FixedFormat) -> CodeFormat:
    lo, hi = int_range(fmt.bits, fmt.signed)
    return CodeFormat(2.0 ** fmt.step_exp, 0, lo, hi, fmt.to_spec())
