"""QuantSpec: the precision annotation a tensor may carry, as plain data.

One type for every number format of DESIGN.md ("Number formats"). It prints as a short string
(`fx8(r=2^-1)`, `affine8u(s=0.0123,z=128)`, `apot4k2`, `pot4`, `bin`, `ter`, `float`) and
round-trips through JSON via `to_dict` / `from_dict`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

FORMATS = ("float", "fixed", "affine", "apot", "pot", "binary", "ternary")


@dataclass(frozen=True)
class QuantSpec:
    """Format, bit width, signedness and the format's own parameters.

    fixed:  `pdr` is the power-of-two range r, so the step is r * 2^-(bits-1) when signed
            (seeds/001 §2.1) and r * 2^-bits when unsigned; per-channel weights carry
            extra["pdrs"] (one r per index of extra["axis"]) and `pdr` is their largest.
    affine: `scale` and `zero_point` (seeds/000 §B).
    apot / pot: `k`, `alpha` (clipping scale), `gamma` (seeds/004 eq. 5-6).
    binary / ternary: `scale` is α.
    """

    format: str = "float"
    bits: int = 32
    signed: bool = True
    pdr: float | None = None
    scale: float | None = None
    zero_point: int | None = None
    k: int | None = None
    alpha: float | None = None
    gamma: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown number format {self.format!r}; known: {', '.join(FORMATS)}")

    @property
    def step(self) -> float | None:
        """The quantization step Δ of a fixed-point spec."""
        if self.format != "fixed" or self.pdr is None:
            return None
        return self.pdr * 2.0 ** -(self.bits - 1 if self.signed else self.bits)

    def __str__(self) -> str:
        if self.format == "float":
            return "float"
        if self.format == "fixed":
            sign = "" if self.signed else "u"
            r = f"(r=2^{int(math.log2(self.pdr))})" if self.pdr else ""
            if "pdrs" in self.extra:  # one range per output channel
                exps = [int(math.log2(p)) for p in self.extra["pdrs"]]
                r = f"(r=2^{min(exps)}..2^{max(exps)})"
            return f"fx{self.bits}{sign}{r}"
        if self.format == "affine":
            sign = "s" if self.signed else "u"
            return f"affine{self.bits}{sign}(s={self.scale:.4g},z={self.zero_point})"
        if self.format == "apot":
            return f"apot{self.bits}k{self.k}"
        if self.format == "pot":
            return f"pot{self.bits}"
        return {"binary": "bin", "ternary": "ter"}[self.format]

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, {})}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantSpec:
        return cls(**data)
