"""Quantization schemes: how a tensor's real values become integer codes.

Every scheme answers two questions for the rewrite pass (passes/quantize_graph.py):
- `activation(stats, bits)`: the CodeFormat of an activation tensor from its calibration stats;
- `weight(w, bits, axis, min_scale)`: the integer codes of a constant weight and their CodeFormat
  (`axis` is the output-channel axis, for per-channel scales; `min_scale`, per channel, the
  smallest scale at which the layer's bias still fits its int32 accumulator).
Everything else (bias codes, requantization multipliers and shifts, rewriting) is shared, so a
scheme is only its number format: one module of this package each, registered in SCHEMES.
"""

from __future__ import annotations

from passes.schemes import affine, apot, binary, fixed  # noqa: F401  (each registers itself)
from passes.schemes.base import SCHEMES, CodeFormat, Scheme, register_scheme
from qcc.core.errors import QccError

__all__ = ["SCHEMES", "CodeFormat", "Scheme", "get_scheme", "register_scheme"]


def get_scheme(name: str) -> Scheme:
    if name not in SCHEMES:
        raise QccError(f"unknown scheme {name!r}; known: {', '.join(sorted(SCHEMES))}")
    return SCHEMES[name]
