"""The APoT and PoT schemes of seeds/004 on qcc's integer graph (`--scheme apot`, `--scheme pot`).

Weights, per weighted layer (`weight`):
1. WN (eq. 9) per output channel c: W̃ = W / n_c. BatchNormalization is already folded into the
   weights, so channel scales differ by its γ/σ; one normalizer per layer (the paper's WN, which
   runs before BN in training) would leave the small channels a few levels only.
   The mean is NOT subtracted: W̃ keeps μ_c, and n_c = sqrt(σ_c² + μ_c²) + ε is the RMS (eq. 9's
   σ + ε when μ_c = 0). Subtracting μ_c would need the extra term μ_c·Σ_k x_k in every output
   (a per-position window sum the integer kernels do not compute). Keeping μ_c costs 1-4 %
   more 4-bit weight MSE on the zoo models (at most 11 % on one layer) and leaves nothing to
   correct: the deployed weight is exactly n_c·Ŵ.
2. One α per layer, post-training: the α minimising E[(W̃ − RCF(W̃, α))²]
   (`numerics.apot.optimal_alpha`), searched on an evenly strided sample of at most
   ALPHA_SAMPLE weights (the full search costs seconds per large layer).
3. RCF (eq. 7) and projection onto Q^a(1, b) (eq. 5, or eq. 6 for odd magnitude widths); the
   code of each weight is its signed integer level ±L (`numerics.apot.decode_integer`), so
   x·L is n shift-adds of x (§2.2) and QConv's exact integer product is the shift-add product.
4. The real weight is s_c·L with s_c = n_c·α·γ·2^-E: WN, α and γ all fold into the per-channel
   weight scale, hence into the requantization multiplier. Bits count the sign (b + 1 bits).

Activations (`activation`), "one bit is used for the sign of the weights but not for
activations": a tensor never negative on the calibration data gets unsigned APoT levels with
k = 2 (b <= MAX_LEVEL_BITS; above that the level table grows past 4k entries), α = its
calibrated maximum (RCF's clipping threshold); codes are the integer levels L on the unit
α·γ·2^-E, and the format lists them in `levels` so passes/quantize_graph.py snaps every
requantized value to its nearest level. Signed tensors (the graph input, residual branches,
logits) and wide ones use the k = 1 case, uniform eq. 2 with α = max |x|.

`pot` is the k = b case for the weights (eq. 3, one power-of-two term, at most 6 bits: wider
PoT levels exceed the integer kernels' 53-bit accumulators); its activations are the same as
`apot`'s so the two schemes differ only in the weight levels.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from passes.calibrate import TensorStats
from passes.schemes.base import CodeFormat, Scheme, register_scheme
from qcc.core.errors import QccError
from qcc.core.numerics import apot

WN_EPS = 1e-5  # eq. 9's ε
ALPHA_SAMPLE = 1 << 15
ACTIVATION_K = 2
MAX_LEVEL_BITS = 8
MAX_POT_BITS = 6


@dataclasses.dataclass(frozen=True)
class LayerWeights:
    """One layer's APoT weights: W ≈ scales[c] · levels (c along the output-channel axis)."""

    levels: np.ndarray  # signed integer levels ±L, the shape of W
    scales: np.ndarray  # per output channel: n_c · α · γ · 2^-E
    alpha: float
    fmt: apot.APoTFormat

    def dequantize(self, axis: int) -> np.ndarray:
        shape = [1] * self.levels.ndim
        shape[axis] = -1
        return self.levels * self.scales.reshape(shape)


def quantize_layer(w: np.ndarray, fmt: apot.APoTFormat, axis: int) -> LayerWeights:
    """Steps 1-4 of the module docstring for one weight tensor."""
    rows = np.moveaxis(np.asarray(w, dtype=np.float64), axis, 0)
    flat = rows.reshape(rows.shape[0], -1)
    norm = np.sqrt(np.mean(flat**2, axis=1)) + WN_EPS  # WN (eq. 9), μ kept
    w_tilde = flat / norm[:, None]
    sample = w_tilde.ravel()[:: -(-w_tilde.size // ALPHA_SAMPLE)]
    alpha = apot.optimal_alpha(sample, fmt)
    levels = apot.decode_integer(apot.quantize(w_tilde, fmt, alpha), fmt)  # RCF, eq. 7
    levels = np.moveaxis(levels.reshape(rows.shape), 0, axis)
    return LayerWeights(levels, norm * alpha * float(fmt.unit), alpha, fmt)


def level_set(fmt: apot.APoTFormat) -> np.ndarray:
    """The format's signed integer levels ±L, sorted (what `decode_integer` can return)."""
    mags = np.unique(fmt.integer_levels)
    return np.unique(np.concatenate([-mags, mags])) if fmt.signed else mags


def level_code_format(fmt: apot.APoTFormat, alpha: float,
                      scale: float | tuple[float, ...]) -> CodeFormat:
    """Codes that are the integer levels of `fmt`: [-max L, max L] (or [0, max L]); `levels`
    is left None when every integer of that range is a level (the uniform k = 1 case)."""
    top = int(fmt.integer_levels.max())
    lo = -top if fmt.signed else 0
    levels = level_set(fmt)
    spec = fmt.to_spec(alpha)
    if np.ndim(scale) == 0:
        spec = dataclasses.replace(spec, scale=float(scale))
    dense = len(levels) == top - lo + 1
    return CodeFormat(scale, 0, lo, top, spec, None if dense else tuple(int(v) for v in levels))


def activation_format(stats: TensorStats, bits: int, k: int = ACTIVATION_K) -> CodeFormat:
    """Unsigned APoT levels (base width k) or, for signed or wide tensors, uniform eq. 2."""
    signed = stats.lo < 0
    if signed or bits > MAX_LEVEL_BITS:
        k = 1
    fmt = apot.APoTFormat(bits, k=min(k, bits - int(signed)), signed=signed)
    alpha = (stats.absmax if signed else stats.hi) or 1.0  # RCF's α from calibration
    return level_code_format(fmt, alpha, alpha * float(fmt.unit))


class _LevelScheme(Scheme):
    """Shared by apot and pot: they differ in the weight level set only."""

    activation_bits = (2, 16)  # a signed activation needs a sign bit and one level bit

    def weight_format(self, bits: int) -> apot.APoTFormat:
        raise NotImplementedError

    def activation(self, stats: TensorStats, bits: int) -> CodeFormat:
        return activation_format(stats, bits)

    def weight(self, w: np.ndarray, bits: int, axis: int,
               min_scale: np.ndarray | None = None) -> tuple[np.ndarray, CodeFormat]:
        # min_scale is not applied: the levels follow α (eq. 5), so a larger scale would be a
        # different clipping; a bias beyond int32 is reported by the rewrite's bias check
        q = quantize_layer(w, self.weight_format(bits), axis)
        fmt = level_code_format(q.fmt, q.alpha, tuple(float(s) for s in q.scales))
        return q.levels, fmt


@register_scheme
class APoTScheme(_LevelScheme):
    """seeds/004 eq. 5-6 with k = 2 (k = 1 for 2-bit weights: {-α, 0, α}, §4)."""

    name = "apot"
    k = 2
    weight_bits = (2, 8)  # the range `--bits auto` must clamp weight widths to

    def weight_format(self, bits: int) -> apot.APoTFormat:
        if not self.weight_bits[0] <= bits <= self.weight_bits[1]:
            raise QccError(f"APoT weights take 2 to 8 bits, not {bits}")
        return apot.APoTFormat(bits, k=min(self.k, bits - 1), signed=True)


@register_scheme
class PoTScheme(_LevelScheme):
    """seeds/004 eq. 3: the one-term (k = b) case of eq. 5."""

    name = "pot"
    weight_bits = (2, MAX_POT_BITS)

    def weight_format(self, bits: int) -> apot.APoTFormat:
        if not self.weight_bits[0] <= bits <= self.weight_bits[1]:
            raise QccError(f"PoT weights take 2 to {MAX_POT_BITS} bits, not {bits} (the "
                           f"smallest level of {bits}-bit PoT is 2^-{2 ** (bits - 1) - 2})")
        return apot.pot_format(bits)
