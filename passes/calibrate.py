"""Calibration: per-tensor statistics of the float graph over calibration data.

The range of every tensor (min, max over all samples) chooses fixed-point PDRs; the average of
per-chunk minima and maxima over K chunks (seeds/000 §B) chooses affine ranges that ignore rare
outliers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcc.core.float_exec import run_batched
from qcc.core.ir import Graph
from qcc.core.progress import steps


@dataclass
class TensorStats:
    lo: float
    hi: float
    chunk_lo: float  # average over the K chunks of each chunk's minimum (seeds/000 §B)
    chunk_hi: float

    @property
    def absmax(self) -> float:
        return max(abs(self.lo), abs(self.hi))


def calibrate(graph: Graph, x: np.ndarray, chunks: int = 8, batch: int = 64
              ) -> dict[str, TensorStats]:
    """Statistics of every non-constant float tensor of `graph` over the samples `x`."""
    chunks = max(1, min(chunks, len(x)))
    per_chunk: dict[str, list[tuple[float, float]]] = {}
    with steps(f"calibration on {len(x)} samples", len(x)) as advance:
        for part in np.array_split(x, chunks):
            _chunk_ranges(graph, part, batch, per_chunk)
            advance(len(part))
    return {name: TensorStats(min(b[0] for b in bounds), max(b[1] for b in bounds),
                              float(np.mean([b[0] for b in bounds])),
                              float(np.mean([b[1] for b in bounds])))
            for name, bounds in per_chunk.items()}


def _chunk_ranges(graph: Graph, part: np.ndarray, batch: int,
                  per_chunk: dict[str, list[tuple[float, float]]]) -> None:
    """Append each tensor's (min, max) over the samples `part` to per_chunk[name]."""
    seen: dict[str, tuple[float, float]] = {}
    for env in run_batched(graph, part, batch=batch, keep_all=True):
        for name, value in env.items():
            v = graph.values.get(name)
            if v is None or v.is_const or value.dtype.kind != "f" or not value.size:
                continue
            lo, hi = float(value.min()), float(value.max())
            old = seen.get(name, (lo, hi))
            seen[name] = (min(lo, old[0]), max(hi, old[1]))
    for name, bounds in seen.items():
        per_chunk.setdefault(name, []).append(bounds)
