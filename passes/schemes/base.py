"""The scheme interface (Scheme, CodeFormat) and the scheme table each scheme module registers in;
passes.schemes imports every scheme module and looks schemes up by name."""

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
    # whether the training step takes this scheme's per-channel weight scales; if not, a graph
    # compiled for training gets one scale per weight tensor (`weight_per_tensor`)
    trains_per_channel = True

    def check_widths(self, weight_bits: int, act_bits: int, where: str) -> None:
        """QccError naming `where` (a layer) if a width is outside what the format takes."""
        for kind, bits, (lo, hi) in (("weights", weight_bits, self.weight_bits),
                                     ("activations", act_bits, self.activation_bits)):
            if not lo <= bits <= hi:
                raise QccError(f"{where}: scheme {self.name} takes {kind} of {lo} to {hi} "
                               f"bits, not {bits}")

    def activation(self, stats: TensorStats, bits: int) -> CodeFormat:
        raise NotImplementedError

    def weight(self, w: np.ndarray, bits: int, axis: int,
               min_scale: np.ndarray | None = None) -> tuple[np.ndarray, CodeFormat]:
        raise NotImplementedError

    def weight_per_tensor(self, w: np.ndarray, bits: int,
                          min_scale: float | None = None) -> tuple[np.ndarray, CodeFormat]:
        """`weight` with one scale for the whole tensor: the tensor as a single channel."""
        floor = None if min_scale is None else np.array([min_scale])
        codes, fmt = self.weight(w.reshape(1, -1), bits, 0, floor)
        return codes.reshape(w.shape), fmt


SCHEMES: dict[str, Scheme] = {}


def register_scheme(cls: type[Scheme]) -> type[Scheme]:
    """Class decorator: add one instance of the scheme to SCHEMES under its name."""
    SCHEMES[cls.name] = cls()
    return cls

