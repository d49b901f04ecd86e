"""The arithmetic of `--bits auto` (seeds/001, Sakr & Shanbhag, ICLR 2019) as pure functions.

Everything here is a function of statistics (noise gains, gradient standard deviations, singular
values, tensor sizes); nothing reads a graph, so each step can be checked against the worked
examples of the paper's Appendix E:

- eq. 1 (Claim 1, Lemma 1): feed-forward precisions from noise gains, `feedforward_bits`;
- eq. 6: the noise gain itself from per-sample output margins and gradient norms, `noise_gain`;
- eq. 2-3 (Lemmas 2-4): gradient ranges and steps, `gradient_formats`;
- eq. 4 (Lemma 5): weight accumulators, `accumulator_formats`;
- Section 2.2: the costs C_W, C_A, C_M, C_C of a precision configuration, `training_costs`.

Bits-from-range convention
--------------------------
A signed fixed-point tensor with power-of-two range r (PDR) and power-of-two step Delta uses
``B = log2(r / Delta) + extra_bits`` bits. Section 2.1's identity is ``extra_bits = 1``
(`BITS_IDENTITY`): the sign bit a0 has weight -r and the LSB has weight r 2^-(B-1), the same
relation as qcc's `fx` QuantSpec (Delta = r 2^-(B-1)). Appendix E.2, E.3 and E.4 follow it exactly
for every gradient precision, so it is the default. The E.1 (CIFAR-10 ConvNet) tables print one
bit more in nearly every gradient and accumulator entry; `BITS_E1_TABLES = 2` reproduces them
(seeds/README.md lists this erratum, and layer 2 of E.1 prints yet one more bit).

Every range is a power of two >= its lower bound (`pdr_power_of_two`) and every step is the
largest power of two strictly below its upper bound (`step_power_of_two`), since eq. 3-4 are
strict inequalities and eq. 2 and 4's range bounds are not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

BITS_IDENTITY = 1  # B = log2(r/Delta) + 1: Section 2.1, Appendix E.2-E.4
BITS_E1_TABLES = 2  # B = log2(r/Delta) + 2: what Appendix E.1 prints
DEFAULT_EXTRA_BITS = BITS_IDENTITY

# Section 2.2 footnote 1: an unquantized tensor is stored as a 32-b float.
FLOAT_BITS = 32
# Section 2.2 footnote 2: a float multiply is costed without its exponent addition, i.e. as a
# product of the 23-b stored mantissas. This is what Table 1 prints: the CIFAR-10 ConvNet's FL
# C_M (94.4e9 FA) is 3 * 23 * 23 FA per MAC and its BN C_M (2.8e9) is (1 + 23 + 23) per MAC.
FLOAT_MULT_BITS = 23

ConfigRow = tuple[int | None, int | None, int | None, int | None, int | None]
"""One layer's precisions (B_W, B_A, B_GW, B_GA, B_acc); None means the tensor stays float."""


# ----------------------------------------------------------------------------- powers of two


def _positive(x: ArrayLike, what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(arr) & (arr > 0)):
        raise ValueError(f"{what} must be finite and > 0, got {arr!r}")
    return arr


def pdr_power_of_two(x: ArrayLike) -> np.ndarray:
    """Smallest power of two >= x (elementwise); ranges satisfy eq. 2 and eq. 4 this way."""
    # frexp is exact, unlike ceil(log2(x)) which misrounds x just above a power of two.
    mant, expo = np.frexp(_positive(x, "a range bound"))
    return np.ldexp(1.0, np.where(mant == 0.5, expo - 1, expo))


def step_power_of_two(x: ArrayLike) -> np.ndarray:
    """Largest power of two strictly below x (elementwise): the steps of eq. 3-4 are strict."""
    mant, expo = np.frexp(_positive(x, "a step bound"))
    return np.ldexp(1.0, np.where(mant == 0.5, expo - 2, expo - 1))


def log2_power_of_two(x: ArrayLike) -> np.ndarray:
    """Exact integer log2 of powers of two; raises ValueError on anything else."""
    mant, expo = np.frexp(_positive(x, "a power of two"))
    if not np.all(mant == 0.5):
        raise ValueError(f"not a power of two: {np.asarray(x)!r}")
    return (expo - 1).astype(np.int64)


def bits_from_range(r: ArrayLike, step: ArrayLike, *,
                    extra_bits: int = DEFAULT_EXTRA_BITS) -> np.ndarray:
    """B = log2(r / Delta) + extra_bits (Section 2.1 identity for extra_bits = 1)."""
    return log2_power_of_two(r) - log2_power_of_two(step) + extra_bits


# ----------------------------------------------------------------------------- eq. 1 and eq. 6


def _rnd(x: np.ndarray) -> np.ndarray:
    # eq. 1's rnd(): to nearest, halves up (the arguments are >= 0, so also away from zero).
    return np.floor(x + 0.5).astype(np.int64)


def feedforward_offsets(gains_w: Sequence[float],
                        gains_a: Sequence[float]) -> tuple[list[int], list[int]]:
    """eq. 1 without B_min: rnd(log2 sqrt(E / E_min)) for every weight and activation gain.

    E_min (eq. 5) is the smallest of all weight and activation gains together, so one offset is 0.
    The two lists may differ in length (a ResNet's shortcut convolutions have weights only).
    """
    e_w = _positive(gains_w, "weight noise gains")
    e_a = _positive(gains_a, "activation noise gains")
    e_min = min(e_w.min(initial=np.inf), e_a.min(initial=np.inf))

    def offset(e: np.ndarray) -> list[int]:
        return _rnd(0.5 * np.log2(e / e_min)).tolist()  # log2 sqrt(E / E_min)

    return offset(e_w), offset(e_a)


def feedforward_bits(gains_w: Sequence[float], gains_a: Sequence[float],
                     b_min: int) -> tuple[list[int], list[int]]:
    """eq. 1: B = rnd(log2 sqrt(E / E_min)) + B_min for weights and activations."""
    off_w, off_a = feedforward_offsets(gains_w, gains_a)
    return [o + b_min for o in off_w], [o + b_min for o in off_a]


def noise_gain(z: ArrayLike, sq_grad_norms: ArrayLike) -> float:
    """eq. 6: E_{T->p_m} from N calibration samples.

    z: (N, M) soft outputs (before any final Softmax). sq_grad_norms: (N, M), entry [n, i] is
    sum over t in T of |d(Z_i - Z_yhat)/dt|^2 for sample n, where yhat = argmax z[n]; the yhat
    column is ignored. E = mean_n sum_{i != yhat} sq[n, i] / (2 |Z_i - Z_yhat|^2). A tie
    Z_i = Z_yhat gives an infinite gain (zero margin: any noise flips the decision).
    """
    z = np.asarray(z, dtype=np.float64)
    sq = np.asarray(sq_grad_norms, dtype=np.float64)
    yhat = np.argmax(z, axis=1)
    margin = z - z[np.arange(len(z)), yhat][:, None]
    others = np.ones_like(z, dtype=bool)
    others[np.arange(len(z)), yhat] = False
    with np.errstate(divide="ignore", invalid="ignore"):  # a tie is reported by the caller
        terms = np.where(others, sq / (2.0 * np.where(others, margin, 1.0) ** 2), 0.0)
    return float(terms.sum(axis=1).mean())


# ----------------------------------------------------------------------------- eq. 2-3


def running_variance(var: float, inst_var: float, theta: float = 0.1) -> float:
    """Appendix E.1's moving estimate: var <- (1 - theta) var + theta inst_var."""
    return (1.0 - theta) * var + theta * inst_var


def square_jacobian_lambda(jacobian: ArrayLike) -> float:
    """lambda of eq. 3: the largest singular value of the Jacobian with squared entries."""
    return float(np.linalg.norm(np.square(np.asarray(jacobian, dtype=np.float64)), ord=2))


def weight_gradient_range(sigma_max: ArrayLike) -> np.ndarray:
    """eq. 2 (Lemma 2): r_GW >= 2 sigma_GW,max, so at most 2Q(2) = 4.4 % of G_W clips."""
    return pdr_power_of_two(2.0 * _positive(sigma_max, "sigma_GW,max"))


def activation_gradient_range(sigma_max: ArrayLike) -> np.ndarray:
    """eq. 2 (Lemma 2): r_GA >= 4 sigma_GA,max (ReLU makes activation gradients sparse)."""
    return pdr_power_of_two(4.0 * _positive(sigma_max, "sigma_GA,max"))


def weight_gradient_step(sigma_min: ArrayLike) -> np.ndarray:
    """eq. 3 (Lemma 3): Delta_GW < sigma_GW,min / 4 keeps the relative bias below 1 %."""
    return step_power_of_two(_positive(sigma_min, "sigma_GW,min") / 4.0)


def activation_gradient_step(step_gw: ArrayLike, lambda_max: ArrayLike, numel_gw: ArrayLike,
                             numel_ga: ArrayLike) -> np.ndarray:
    """eq. 3 (Lemma 4): Delta_GA < Delta_GW / sqrt(lambda_max) * (|G_W| / |G_A|)^(1/4).

    |G_W| and |G_A| are the element counts of layer l's weight gradient and of the activation
    gradient G_{l+1}^(A) it is computed from (the sizes of the square-Jacobian's two sides).
    """
    ratio = _positive(numel_gw, "|G_W|") / _positive(numel_ga, "|G_A|")
    bound = _positive(step_gw, "Delta_GW") / np.sqrt(_positive(lambda_max, "lambda_max"))
    return step_power_of_two(bound * ratio ** 0.25)


def _capped_step(step: np.ndarray, r: np.ndarray) -> np.ndarray:
    # A signed format needs its sign bit and one magnitude bit: Delta <= r/2 (B >= extra + 1).
    return np.minimum(step, r / 2.0)


def gradient_formats(sigma_gw_max: Sequence[float], sigma_gw_min: Sequence[float],
                     sigma_ga_max: Sequence[float], lambda_max: Sequence[float],
                     numel_gw: Sequence[int], numel_ga: Sequence[int], *,
                     extra_bits: int = DEFAULT_EXTRA_BITS) -> list[dict[str, float | int]]:
    """eq. 2-3 per layer l: ranges, steps and bits of G_l^(W) and G_{l+1}^(A).

    Returns one dict per layer with keys r_gw, step_gw, bits_gw, r_ga, step_ga, bits_ga (ranges
    and steps are powers of two, bits from `bits_from_range` with `extra_bits`).
    """
    r_gw = weight_gradient_range(sigma_gw_max)
    step_gw = _capped_step(weight_gradient_step(sigma_gw_min), r_gw)
    r_ga = activation_gradient_range(sigma_ga_max)
    step_ga = _capped_step(activation_gradient_step(step_gw, lambda_max, numel_gw, numel_ga), r_ga)
    bits_gw = bits_from_range(r_gw, step_gw, extra_bits=extra_bits)
    bits_ga = bits_from_range(r_ga, step_ga, extra_bits=extra_bits)
    columns = dict(r_gw=r_gw, step_gw=step_gw, bits_gw=bits_gw,
                   r_ga=r_ga, step_ga=step_ga, bits_ga=bits_ga)
    return [dict(zip(columns, row)) for row in zip(*(c.tolist() for c in columns.values()))]


# ----------------------------------------------------------------------------- eq. 4


def accumulator_formats(bits_w: Sequence[int], step_gw: Sequence[float], lr_min: float, *,
                        r_w: ArrayLike = 1.0,
                        extra_bits: int = DEFAULT_EXTRA_BITS) -> list[dict[str, float | int]]:
    """eq. 4 (Lemma 5) per layer: the weight accumulator's range, step and bits.

    r_acc >= r_W 2^-B_W: the accumulator holds the part of the weight below the weight's LSB
    and must reach the rounding threshold (half an LSB, r_W 2^-B_W) so the weight can move.
    The paper's weights are normalized (Appendix A: clipped to [-1, 1], r_W = 1), which gives
    its r_acc >= 2^-B_W; `r_w` (a power of two, scalar or per layer) generalizes it.
    Delta_acc < gamma_min Delta_GW: the accumulator resolves the smallest update lr * LSB(G_W).
    """
    half_lsb = np.asarray(r_w, dtype=np.float64) * np.ldexp(1.0, -np.asarray(bits_w))
    r_acc = pdr_power_of_two(half_lsb)
    step_acc = step_power_of_two(_positive(lr_min, "lr_min") * _positive(step_gw, "Delta_GW"))
    step_acc = _capped_step(step_acc, r_acc)
    bits_acc = bits_from_range(r_acc, step_acc, extra_bits=extra_bits)
    columns = dict(r_acc=r_acc, step_acc=step_acc, bits_acc=bits_acc)
    return [dict(zip(columns, row)) for row in zip(*(c.tolist() for c in columns.values()))]


# ----------------------------------------------------------------------------- Section 2.2


def float_config(num_layers: int) -> list[ConfigRow]:
    """The FL baseline: every tensor of every layer unquantized."""
    return [(None, None, None, None, None)] * num_layers


def _config_bits(config: Sequence[ConfigRow], float_bits: int) -> np.ndarray:
    """(L, 5) float array of precisions with `float_bits` where the config says None."""
    rows = [[float_bits if b is None else b for b in row] for row in config]
    return np.asarray(rows, dtype=np.float64).reshape(-1, 5)


def training_costs(config: Sequence[ConfigRow], numel_w: Sequence[int], numel_a: Sequence[int],
                   numel_a_next: Sequence[int], dot_dims: Sequence[int], *,
                   float_bits: int = FLOAT_BITS,
                   float_mult_bits: int = FLOAT_MULT_BITS) -> dict[str, float]:
    """Section 2.2's costs of one precision configuration (rows B_W, B_A, B_GW, B_GA, B_acc).

    numel_w[l] = |W_l|; numel_a[l] = |A_l| (layer l's input activation); numel_a_next[l] =
    |A_{l+1}| (layer l's output, the size of G_{l+1}^(A)); dot_dims[l] = D_l (the dot-product
    length behind one output activation).

    C_W = sum |W_l| (B_W + B_GW + B_acc)              bits
    C_A = sum |A_l| B_A + |A_{l+1}| B_GA              bits
    C_M = sum |A_{l+1}| D_l (B_W B_A + B_W B_GA + B_A B_GA)   1-b full adders per iteration
    C_C = sum |W_l| B_GW                              bits
    The paper prints C_A as sum |A_l| (B_A + B_GA); G_{l+1}^(A) has |A_{l+1}| elements, and
    counting it so reproduces Table 1's BN (4.7e6) and SVHN FX (1.9e6) C_A where the printed
    form gives 4.8e6 and 2.2e6. Pass numel_a_next = numel_a for the printed form.
    Float tensors count `float_bits` in storage and `float_mult_bits` in a multiplier.
    """
    store = _config_bits(config, float_bits)
    mult = _config_bits(config, float_mult_bits)
    n_w, n_a, n_next, dots = (np.asarray(v, dtype=np.float64)
                              for v in (numel_w, numel_a, numel_a_next, dot_dims))
    b_w, b_a, b_gw, b_ga, b_acc = store.T
    m_w, m_a, _, m_ga, _ = mult.T
    return {
        "C_W": float(np.sum(n_w * (b_w + b_gw + b_acc))),
        "C_A": float(np.sum(n_a * b_a + n_next * b_ga)),
        "C_M": float(np.sum(n_next * dots * (m_w * m_a + m_w * m_ga + m_a * m_ga))),
        "C_C": float(np.sum(n_w * b_gw)),
    }


# ----------------------------------------------------------------------------- the guarantee

CONFIDENCE = 0.95  # one-sided confidence of every certified p_m bound


def _binomial_cdf(k: int, n: int, p: float) -> float:
    """Pr(X <= k) for X ~ Binomial(n, p), summed in log space (exact up to rounding)."""
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if k >= n else 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
             + i * log_p + (n - i) * log_q for i in range(k + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))


def mismatch_upper_bound(mismatches: int, samples: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper-Pearson upper confidence bound on p_m from `mismatches` of `samples`.

    The exact binomial inversion: the p_u with Pr(X <= k; n, p_u) = 1 - confidence (the same
    number as scipy.stats.beta.ppf(confidence, k + 1, n - k)); p_u = 1 when k = n. Found by
    bisection, since the CDF falls monotonically in p.
    """
    if samples <= 0 or not 0 <= mismatches <= samples:
        raise ValueError(f"need 0 <= mismatches <= samples, samples > 0; got {mismatches}, "
                         f"{samples}")
    if mismatches == samples:
        return 1.0
    alpha = 1.0 - confidence
    if mismatches == 0:  # closed form: (1 - p)^n = alpha
        return -math.expm1(math.log(alpha) / samples)
    lo, hi = mismatches / samples, 1.0
    for _ in range(100):  # 2^-100 of the interval: far below float64 resolution
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _binomial_cdf(mismatches, samples, mid) > alpha else (lo, mid)
    return hi


def samples_to_certify(target: float, confidence: float = CONFIDENCE) -> int:
    """The fewest held-out samples with which p_m <= target can be certified at all: with zero
    mismatches the bound is 1 - (1 - confidence)^(1/n), at most `target` from this n on."""
    if not 0 < target < 1:
        raise ValueError(f"the target must be in (0, 1), got {target}")
    n = math.ceil(math.log(1.0 - confidence) / math.log1p(-target))
    while mismatch_upper_bound(0, n, confidence) > target:  # guard the float rounding of ceil
        n += 1
    return n


# ----------------------------------------------------------------------------- widths and budgets


def step_scaled_gains(gains: Sequence[float], steps: Sequence[float],
                      bits: Sequence[int]) -> list[float]:
    """E·c² with Delta(B) = c·2^-B: the gain of eq. 6 in the units eq. 1 assumes.

    Claim 1 equalizes the reflected noise E·Delta²/12 (Criterion 1); eq. 1 writes it with
    Delta = 2^-(B-1), i.e. every tensor normalized to the range r = 1 (Appendix A). A tensor of
    range r has Delta = r·2^-(B-1) (signed) or r·2^-B (unsigned), so its noise at B bits is
    E·c²·4^-B/12 with c = Delta(B)·2^B; feeding E·c² into eq. 1 gives Criterion 1 for any
    ranges (raw 0..255 pixels, say), and gives eq. 1 itself when every r = 1 (c = 2: a common
    factor 4, which E_min cancels).
    """
    e = _positive(gains, "noise gains")
    c = _positive(steps, "steps") * np.ldexp(1.0, np.asarray(bits))
    return (e * c * c).tolist()


def predicted_mismatch(scaled_gains: Sequence[float], bits: Sequence[int]) -> float:
    """Sum of the reflected noise variances E·Delta²/12 of every quantized tensor (the
    second-order surrogate of p_m behind eq. 6), with `step_scaled_gains`' E·c²."""
    s = np.asarray(scaled_gains, dtype=np.float64)
    return float(np.sum(s * np.ldexp(1.0, -2 * np.asarray(bits))) / 12.0)


def allocate_widths(costs: Sequence[Sequence[int]], noises: Sequence[Sequence[float]],
                    budget: int) -> list[int] | None:
    """Exact multiple-choice knapsack: one option per item, total cost <= budget, least total
    noise. Returns the chosen option index of every item, or None when nothing fits.

    Dynamic programming over integer costs (divided by their common divisor first): best[c]
    is the least noise of the items so far within cost c; each item takes, per c, the best
    of its options. O(items x options x budget / gcd), exact.
    """
    flat = [int(c) for item in costs for c in item]
    if any(c < 0 for c in flat):
        raise ValueError("costs must be >= 0")
    unit = math.gcd(*flat) or 1
    cap = int(budget) // unit
    if cap < 0 or sum(min(item) for item in costs) > budget:
        return None
    best = np.zeros(cap + 1)
    choices = []
    for item_costs, item_noises in zip(costs, noises):
        new = np.full(cap + 1, np.inf)
        pick = np.zeros(cap + 1, np.int16)
        for j, (c, noise) in enumerate(zip(item_costs, item_noises)):
            c //= unit
            if c > cap:
                continue
            cand = np.full(cap + 1, np.inf)
            cand[c:] = best[:cap + 1 - c] + noise
            better = cand < new
            new[better], pick[better] = cand[better], j
        best = new
        choices.append(pick)
    if not np.isfinite(best[cap]):
        return None
    chosen, c = [], cap
    for item_costs, pick in zip(reversed(costs), reversed(choices)):
        j = int(pick[c])
        chosen.append(j)
        c -= int(item_costs[j]) // unit
    return chosen[::-1]
