"""Widths a microcontroller stores well, and the allocation of widths under a memory budget.

The C backend stores weight codes at the packing widths of qcc.core.numerics.packing (2 and 4
bits packed, 8 and 16 bits as int8 / int16; APoT codes as level indices at those widths) and
keeps activations in int8 or int16 arena slots. A width between two of them costs the wider
one's memory, so:

- `storable_bits`: the documented choice for eq. 1's widths. Up to 8 bits a width is kept as
  eq. 1 gives it (3 bits are stored in 4-bit packing, 5 to 7 in int8: no memory lost, and the
  methodology's cost metrics stay the paper's); 9 to 15 bits are rounded UP to 16, never down,
  so the stored configuration is at least as precise as the one eq. 1 asked for. Whether less
  memory still certifies the goal is then measured (annotate_precision._narrow: the knapsack
  below at a few flash sizes from that of 8-bit weights up).
- `weight_allocation`: the exact multiple-choice knapsack (passes/precision.allocate_widths) of
  weight widths under a flash budget, minimizing the predicted mismatch, the sum of reflected
  noise E·Delta²/12 (eq. 6 gains scaled to each tensor's range, precision.step_scaled_gains),
  or, where annotate_precision measured it (under a flash budget, passes/weight_noise.py), the
  same noise measured with the layer's real B-bit weights (GPTQ's codes below 8 bits).
  Flash is additive over layers, so the knapsack is exact for it.
- `fit_ram`: the arena is a peak over the liveness plan, not a sum, so activations are brought
  down from 16 to 8 bits greedily, cheapest predicted noise per arena byte first, each step
  checked against the real memory plan the driver hands in (`MemoryUse`).

Which allocation is compiled is decided by measurement: every candidate's mismatch p_m on the
held-out samples, with its Clopper-Pearson bound (annotate_precision).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from passes import precision
from passes.quantize_graph import LayerConfig, QuantConfig
from passes.schemes import get_scheme
from qcc.core.errors import QccError
from qcc.core.ir import Graph
from qcc.core.numerics.packing import WIDTHS

# The flash and RAM of an integer graph, in bytes: (packed weight bytes, static arena bytes)
# of the C backend's plan. Passes never plan C memory themselves; the driver hands this in.
MemoryUse = Callable[[Graph], tuple[int, int]]

ACTIVATION_WIDTHS = (8, 16)  # int8 / int16 arena slots; fewer bits save no RAM


@dataclass(frozen=True)
class MemoryBudget:
    """--flash-budget (packed weight bytes) and --ram-budget (arena bytes); None: no limit."""

    flash_bytes: int | None = None
    ram_bytes: int | None = None

    @property
    def active(self) -> bool:
        return self.flash_bytes is not None or self.ram_bytes is not None


@dataclass
class Widths:
    """One configuration: B_W and B_A per weighted layer, and the bits of activations no layer
    reads (residual branches: QuantConfig.default_bits)."""

    weights: list[int]
    activations: list[int]
    other: int

    def config(self, layers: list[str], scheme: str, for_training: bool = False) -> QuantConfig:
        cfg = QuantConfig(scheme=scheme, default_bits=self.other, output_bits=16,
                          for_training=for_training)
        for name, bw, ba in zip(layers, self.weights, self.activations):
            cfg.layers[name] = LayerConfig(int(bw), int(ba), scheme)
        return cfg


@dataclass
class Candidate:
    """A configuration tried, with what it costs and how well it agrees with float."""

    label: str
    widths: Widths
    predicted_pm: float
    flash_bytes: int | None = None
    ram_bytes: int | None = None
    mismatches: int | None = None
    samples: int = 0
    integer: Graph | None = field(default=None, repr=False)
    stopped: bool = False  # counting stopped once the goal was out of reach: a lower bound

    @property
    def p_m(self) -> float:
        return self.mismatches / self.samples

    @property
    def p_m_upper(self) -> float:
        return precision.mismatch_upper_bound(self.mismatches, self.samples)

    def to_dict(self) -> dict[str, Any]:
        measured = self.mismatches is not None
        return {"label": self.label, "B_W": self.widths.weights, "B_A": self.widths.activations,
                "other_activations_bits": self.widths.other,
                "flash_bytes": self.flash_bytes, "ram_bytes": self.ram_bytes,
                "predicted_p_m": self.predicted_pm,
                "mismatches": self.mismatches, "samples": self.samples,
                "p_m": self.p_m if measured else None,
                "p_m_upper": self.p_m_upper if measured else None,
                "counting_stopped_early": self.stopped}


def packed_width(bits: int) -> int:
    """The packing width holding `bits`-bit codes (what the C backend stores them in)."""
    return next(w for w in WIDTHS if w >= bits)


def storable_bits(bits: int) -> int:
    """Module docstring: up to 8 bits as eq. 1 gives them, 9 to 15 rounded up to 16."""
    return int(bits) if bits <= 8 else 16


def weight_options(scheme: str) -> tuple[int, ...]:
    """The weight widths an allocation chooses from: packing widths the scheme accepts
    (1-bit codes only for schemes whose smallest width is 1: fixed point needs a sign and a
    magnitude bit)."""
    lo, hi = get_scheme(scheme).weight_bits
    return tuple(w for w in WIDTHS if max(lo, 2) <= w <= hi)


@dataclass
class NoiseModel:
    """Per layer: |W_l| and the range-scaled noise gains of W_l and A_l; where given, the
    weight noise measured at a width (passes/weight_noise.py) replaces E·Δ²/12 for it."""

    numel_w: list[int]
    scaled_w: list[float]
    scaled_a: list[float]
    measured_w: list[dict[int, float]] = field(default_factory=list)

    def weight_noise(self, layer: int, bits: int) -> float:
        """The layer's weight noise at `bits`: measured, or (wider than measured) the widest
        measurement scaled by Δ², else E·Δ²/12."""
        measured = self.measured_w[layer] if layer < len(self.measured_w) else {}
        if bits in measured:
            return measured[bits]
        below = [b for b in measured if b < bits]
        if below:
            return measured[max(below)] * 4.0 ** (max(below) - bits)
        return self.scaled_w[layer] * 4.0 ** -bits / 12.0

    def predicted(self, widths: Widths) -> float:
        return sum(self.weight_noise(i, b) for i, b in enumerate(widths.weights)) + \
            precision.predicted_mismatch(self.scaled_a, widths.activations)

    def weight_bits(self, weights: list[int]) -> int:
        """Packed weight storage in bits (the knapsack's cost model)."""
        return int(sum(n * packed_width(b) for n, b in zip(self.numel_w, weights)))


def weight_allocation(model: NoiseModel, options: tuple[int, ...], budget_bits: int
                      ) -> list[int] | None:
    """The exact knapsack of weight widths (module docstring); None when nothing fits."""
    costs = [[n * w for w in options] for n in model.numel_w]
    noises = [[model.weight_noise(i, w) for w in options] for i in range(len(model.numel_w))]
    chosen = precision.allocate_widths(costs, noises, budget_bits)
    return None if chosen is None else [options[j] for j in chosen]


def fit_ram(widths: Widths, model: NoiseModel, ram_of: Callable[[Widths], int],
            ram_budget: int) -> Widths | None:
    """Activations from 16 down to 8 bits, cheapest added noise first, until the arena fits
    (module docstring); None when even all-8-bit activations do not fit."""
    current = Widths(list(widths.weights), list(widths.activations), widths.other)
    wide = sorted((i for i, b in enumerate(current.activations) if b > 8),
                  key=lambda i: model.scaled_a[i] * (4.0 ** -8 - 4.0 ** -current.activations[i]))
    steps = iter(wide)
    while ram_of(current) > ram_budget:
        i = next(steps, None)
        if i is None:
            if current.other > 8:
                current.other = 8
                continue
            return None
        current.activations[i] = 8
    return current


def parse_bytes(text: str) -> int:
    """'4096', '64KiB', '1.5 MiB', '100 kB' -> bytes (KiB/MiB powers of 1024, kB/MB of 1000)."""
    units = {"": 1, "b": 1, "kib": 1024, "k": 1024, "mib": 1024 ** 2, "m": 1024 ** 2,
             "kb": 1000, "mb": 1000 ** 2}
    s = str(text).strip().lower().replace(" ", "")
    number = s.rstrip("kmib")
    unit = s[len(number):]
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        raise QccError(f"not a size in bytes: {text!r} (e.g. 65536, 64KiB, 1.5MiB)") from None
    if not np.isfinite(value) or value <= 0:
        raise QccError(f"a memory budget must be positive, got {text!r}")
    return int(value)
