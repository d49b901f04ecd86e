"""Quantization schemes: how a tensor's real values become integer codes.

Every scheme answers two questions for the rewrite pass (passes/quantize_graph.py):
- `activation(stats, bits)`: the CodeFormat of an activation tensor from its calibration stats;
- `weight(w, bits, axis)`: the integer codes of a constant weight and their CodeFormat
  (`axis` is the output-channel axis, for per-channel scales).
Everything else (bias codes, requantization multipliers and shifts, rewriting) is shared, so a
scheme is only its number format: one module of this package each, registered in SCHEMES.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from passes.calibrate import TensorStats
from qcc.core.errors import QccError
from qcc.core.quant_spec import QuantSpec


@dataclass(frozen=True)
class CodeFormat:
    """real = (code − zero_point) · scale, codes in [lo, hi]; `scale` may be per channel."""

    scale: float | tuple[float, ...]
    zero_point: int
    lo: int
    hi: int
    spec: QuantSpec
    # the only codes the format uses, when they are not every integer in [lo, hi] (APoT, binary)
    levels: tuple[int, ...] | None = field(default=None, compare=False)

    @property
    def scales(self) -> np.ndarray:
        return np.atleast_1d(np.asarray(self.scale, dtype=np.float64))

    def same_codes(self, other: CodeFormat) -> bool:
        """Whether codes of `self` can be used as codes of `other` unchanged."""
        return (np.array_equal(self.scales, other.scales) and self.zero_point == other.zero_point
                and self.lo == other.lo and self.hi == other.hi)


class Scheme:
    """Base of the scheme table; subclasses set `name` and implement the two methods."""

    name = ""
    weight_bits = (1, 16)  # the widths `weight` accepts; --bits auto clamps B_W into them
    activation_bits = (1, 16)  # the widths `activation` accepts

    def check_widths(self, weight_bits: int, act_bits: int, where: str) -> None:
        """QccError naming `where` (a layer) if a width is outside what the format takes."""
        for kind, bits, (lo, hi) in (("weights", weight_bits, self.weight_bits),
                                     ("activations", act_bits, self.activation_bits)):
            if not lo <= bits <= hi:
                raise QccError(f"{where}: scheme {self.name} takes {kind} of {lo} to {hi} "
                               f"bits, not {bits}")

    def activation(self, stats: TensorStats, bits: int) -> CodeFormat:
        raise NotImplementedError

    def weight(self, w: np.ndarray, bits: int, axis: int) -> tuple[np.ndarray, CodeFormat]:
        raise NotImplementedError


SCHEMES: dict[str, Scheme] = {}


def register_scheme(cls: type[Scheme]) -> type[Scheme]:
    """Class decorator: add one instance of the scheme to SCHEMES under its name."""
    SCHEMES[cls.name] = cls()
    return cls


def get_scheme(name: str) -> Scheme:
    _load_schemes()
    if name not in SCHEMES:
        raise QccError(f"unknown scheme {name!r}; known: {', '.join(sorted(SCHEMES))}")
    return SCHEMES[name]


def _load_schemes() -> None:
    import passes.schemes.affine  # noqa: F401  (each module registers its scheme)
    import passes.schemes.apot  # noqa: F401
    import passes.schemes.binary  # noqa: F401
    import passes.schemes.fixed  # noqa: F401
