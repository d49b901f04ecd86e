"""Weight rounding that minimizes each layer's output error on calibration data (GPTQ / OPTQ).

Round-to-nearest picks each weight code on its own; below 8 bits the errors of a row add up in
the layer's output. GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", arXiv 2210.17323) chooses the codes of
one output row w (1 x K) to minimize the layer-wise objective (eq. 1)

    ||w X - ŵ X||²,   X (K x n) the layer's input columns on the calibration data,

whose Hessian is H = 2 X Xᵀ (§3, the OBQ objective). Quantizing column q and updating the
not-yet-quantized columns F by the OBS step (eq. 2-3)

    δ_F = - (w_q - quant(w_q)) / [H_F⁻¹]_qq · (H_F⁻¹)_{:,q}

is, for columns taken in a fixed order, the same as using the rows of the upper Cholesky factor
U of H⁻¹ (§4 "Cholesky reformulation"): with U = chol(H⁻¹)ᵀ,

    e_q = (w_q - quant(w_q)) / U_qq,    w_{q+1:} <- w_{q+1:} - e_q · U_{q, q+1:}

(Algorithm 1; its lazy batch updates, blocks of BLOCK columns, only reorder the same
arithmetic). Dampening adds λ = DAMPING · mean(diag H) to the diagonal (§4 "Cholesky
reformulation", 1 % there). A column whose input is always zero (H_qq = 0) gets H_qq = 1: it
then neither gives nor takes error.

Codes stay on the layer's OWN grid: the scheme's format chosen for round-to-nearest (per output
channel scale s_c and code range [lo, hi], or the level set of APoT): quant(v) = s_c · nearest
code of v / s_c. With H ∝ I (orthonormal inputs) U is diagonal, no error is fed forward and
every code is the nearest one (`gptq`). Around it (`WeightRounding.apply`):

- each output channel's step may also be the format's times a RANGE_FACTOR below 1 (fixed
  point: halved or quartered, still a power of two): at 4 bits a smaller step that clips the
  few largest weights resolves all the others better (the GPTQ reference code's grid search
  over shrunk ranges, `Quantizer.find_params(mse=True)`, here judged by the layer's output
  error, not the weights'); the format keeps its kind, code range and levels;
- GPTQ runs with the columns in their order and in decreasing H_qq (the reference code's
  "act-order", `gptq_act_order`), and its codes are refined by coordinate descent on the same
  objective (`descend`);
- each row keeps, among round-to-nearest and every GPTQ run, the codes of least output
  error ||(ŵ - w) X||², so the layer's output error is never above round-to-nearest's (GPTQ
  is greedy: on a single row it can lose).

For a Conv, X is the im2col of its input (one column per output position) and each group of a
grouped / depthwise Conv has its own H; for Gemm / MatMul, X is the input rows. H comes from the
float model's activations (the same inputs for every width tried, so GPTQ runs once per layer
and width, see `WeightRounding`).

Then empirical bias correction (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction", §4.2): the output error of a layer has expectation
E[ŷ - y] = (Ŵ - W) E[x]; subtracting it from the bias, b' = b - (Ŵ - W) E[x], removes the
shift the rounding leaves in the layer's mean output (E[x] is the mean input column on the
calibration data). Layers without a bias are left as they are.

Applied to weights narrower than 8 bits only (`MAX_BITS`), so 8-bit compiles keep their codes
and formats.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from passes.schemes import CodeFormat
from qcc.core.float_exec import run_batched
from qcc.core.ir import Graph, Node
from qcc.core.layers import output_channel_axis, weighted_nodes
from qcc.core.numerics.rounding import round_half_away
from qcc.core.ops.grads import im2col
from qcc.core.ops.nn import conv_window

MODES = ("nearest", "gptq")
MAX_BITS = 7  # GPTQ rounds weights of at most this many bits; 8 and wider round to nearest
DAMPING = 0.01  # λ = 1 % of the mean diagonal of H (GPTQ §4, "percdamp")
BLOCK = 128  # Algorithm 1's block of lazily updated columns
SWEEPS = 4  # coordinate-descent sweeps after GPTQ (`descend`)
# GPTQ also in act-order (`gptq_act_order`) as a candidate of every row
ACT_ORDER = True
HESSIAN_SAMPLES = 256  # calibration inputs whose activations build H
# formats whose round-to-nearest codes are the nearest grid point (so GPTQ with H ∝ I gives
# them back): fixed and affine (uniform codes), apot and pot (level sets)
GRID_FORMATS = ("fixed", "affine", "apot", "pot")
# each output channel's step is chosen among these multiples of the format's own step by the
# channel's output error: a smaller step clips the largest weights but resolves the others
# better, which at 4 bits usually wins. Fixed point keeps its steps powers of two.
RANGE_FACTORS = {"fixed": (1.0, 0.5, 0.25), "affine": tuple(1.0 - 0.05 * i for i in range(9))}


@dataclass(frozen=True)
class LayerInputs:
    """Second moments of one layer's input columns, per group: H = 2/n Σ x xᵀ, and E[x]."""

    hessian: np.ndarray  # (groups, K, K)
    mean: np.ndarray  # (groups, K)


@dataclass
class WeightRounding:
    """The calibration statistics of every weighted layer (by node name); `apply` gives the
    GPTQ codes (and corrected bias) of a layer in a given format, computed once per format."""

    layers: dict[str, LayerInputs]
    bias_correction: bool = True
    _cache: dict[tuple, tuple] = field(default_factory=dict, repr=False)

    def apply(self, node: Node, w: np.ndarray, codes: np.ndarray, fmt: CodeFormat,
              bias: np.ndarray | None, min_scale: np.ndarray | None = None
              ) -> tuple[np.ndarray, CodeFormat, np.ndarray | None]:
        """(codes, format, bias) of layer `node` with real weights `w` (the layer's own layout)
        whose round-to-nearest `codes` are in `fmt`: GPTQ's codes on fmt's grid, each channel's
        step chosen among RANGE_FACTORS times fmt's (never below `min_scale`, the bias
        headroom), and the corrected bias, where the module docstring applies; else the
        arguments unchanged."""
        if node.name not in self.layers or fmt.spec.format not in GRID_FORMATS or \
                fmt.spec.bits > MAX_BITS or fmt.zero_point != 0:
            return codes, fmt, bias
        m = codes.shape[output_channel_axis(node)]
        key = (node.name, fmt.lo, fmt.hi, fmt.levels, fmt.scales.tobytes(), fmt.spec.format,
               None if bias is None else bias.tobytes(),
               None if min_scale is None else np.asarray(min_scale).tobytes())
        if key not in self._cache:
            floor = np.zeros(m) if min_scale is None else np.broadcast_to(min_scale, (m,))
            self._cache[key] = self._round(node, w, codes, fmt, bias, floor)
        new_codes, factors, new_bias = self._cache[key]
        return new_codes.copy(), scaled_format(fmt, factors), \
            None if new_bias is None else new_bias.copy()

    def _round(self, node: Node, w: np.ndarray, nearest: np.ndarray, fmt: CodeFormat,
               bias: np.ndarray | None, floor: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        stats = self.layers[node.name]
        axis = output_channel_axis(node)
        rows = np.moveaxis(np.asarray(w, np.float64), axis, 0)
        m = rows.shape[0]
        groups = stats.hessian.shape[0]
        flat = rows.reshape(groups, m // groups, -1)
        steps = np.broadcast_to(fmt.scales, (m,)).reshape(groups, m // groups)
        grid = Grid(fmt.lo, fmt.hi, fmt.levels)
        # candidates: round-to-nearest (GPTQ is greedy and can lose to it on a row), then GPTQ
        # at each range factor; each row keeps the one of least output error
        # ||(ŵ - w) X||² = (ŵ - w) H (ŵ - w)ᵀ / 2 (one factor for a one-step format)
        factor_of = [1.0] + list(RANGE_FACTORS.get(fmt.spec.format, (1.0,)))
        tried = [np.moveaxis(nearest, axis, 0).reshape(flat.shape).astype(np.float64)]
        factors_gptq = factor_of[1:]
        tried += [descend(gptq(flat, stats.hessian, steps * f, grid), flat, stats.hessian,
                          steps * f, grid) for f in factors_gptq]
        if ACT_ORDER:
            tried += [descend(gptq_act_order(flat, stats.hessian, steps * f, grid), flat,
                              stats.hessian, steps * f, grid) for f in factors_gptq]
            factor_of += factors_gptq
        errors = []
        for q, factor in zip(tried, factor_of):
            d = q * (steps * factor)[..., None] - flat
            error = np.einsum("gmk,gkl,gml->gm", d, stats.hessian, d).reshape(m)
            allowed = (steps.reshape(m) * factor >= floor) | (factor == 1.0)
            errors.append(np.where(allowed, error, np.inf))
        errors = np.stack(errors)  # (candidates, m)
        if fmt.scales.size == 1:
            best = np.full(m, int(np.argmin(errors.sum(axis=1))))
        else:
            best = np.argmin(errors, axis=0)  # ties: the earliest, round-to-nearest first
        factors = np.array(factor_of)[best]
        q = np.stack(tried).reshape(len(tried), m, -1)[best, np.arange(m)]
        q = q.reshape(groups, m // groups, -1)
        codes = np.moveaxis(q.reshape(rows.shape), 0, axis).astype(np.int64)
        if bias is None or not self.bias_correction:
            return codes, factors, bias
        error = q * (steps * factors.reshape(steps.shape))[..., None] - flat  # Ŵ - W
        shift = np.einsum("gmk,gk->gm", error, stats.mean).reshape(m)
        return codes, factors, np.asarray(bias, np.float64) - shift  # b' = b - (Ŵ - W) E[x]


def scaled_format(fmt: CodeFormat, factors: np.ndarray) -> CodeFormat:
    """`fmt` with the step of output channel c multiplied by factors[c] (one factor for a
    format with one step): the same codes range, levels and kind of format."""
    if np.all(factors == 1.0):
        return fmt
    spec = fmt.spec
    if fmt.scales.size == 1:
        c = float(factors[0])
        spec = replace(spec, pdr=spec.pdr and spec.pdr * c, scale=spec.scale and spec.scale * c)
        return replace(fmt, scale=float(fmt.scales[0]) * c, spec=spec)
    steps = [float(s) for s in fmt.scales * factors]
    if spec.format == "fixed":
        pdrs = [float(p) for p in np.asarray(spec.extra["pdrs"]) * factors]
        spec = replace(spec, pdr=max(pdrs), extra={**spec.extra, "pdrs": pdrs})
    else:
        spec = replace(spec, scale=max(steps), extra={**spec.extra, "scales": steps})
    return replace(fmt, scale=tuple(steps), spec=spec)


@dataclass(frozen=True)
class Grid:
    """The codes a format allows: every integer of [lo, hi], or only `levels` (sorted)."""

    lo: int
    hi: int
    levels: tuple[int, ...] | None = None

    def nearest(self, v: np.ndarray) -> np.ndarray:
        """The allowed code nearest each v (uniform: ties away from zero, as the schemes round;
        levels: ties toward zero, numerics.apot.project's rule)."""
        if self.levels is None:
            return np.clip(round_half_away(v), self.lo, self.hi)
        levels = np.asarray(self.levels, np.float64)
        mid = (levels[:-1] + levels[1:]) / 2
        up = levels[np.searchsorted(mid, v, side="left")]  # ties to the lower level
        down = levels[np.searchsorted(mid, v, side="right")]  # ties to the upper level
        return np.where(v >= 0, up, down)

    def neighbours(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The allowed codes just below and just above each code (the code itself at an end
        of the grid)."""
        if self.levels is None:
            return np.maximum(codes - 1, self.lo), np.minimum(codes + 1, self.hi)
        levels = np.asarray(self.levels, np.float64)
        at = np.searchsorted(levels, codes)
        return levels[np.maximum(at - 1, 0)], levels[np.minimum(at + 1, len(levels) - 1)]


def gptq(w: np.ndarray, hessian: np.ndarray, scales: np.ndarray, grid: Grid) -> np.ndarray:
    """Algorithm 1 of Frantar et al. on every group at once: w (G, M, K) real weights, hessian
    (G, K, K), scales (G, M) the step of each row; returns the codes (G, M, K) (floats holding
    integers of `grid`). Module docstring for the equations."""
    w = np.array(w, np.float64)
    u = inverse_cholesky(hessian)
    codes = np.empty_like(w)
    k = w.shape[2]
    for start in range(0, k, BLOCK):
        stop = min(start + BLOCK, k)
        errors = np.empty(w.shape[:2] + (stop - start,))
        for j in range(start, stop):
            codes[:, :, j] = grid.nearest(w[:, :, j] / scales)
            err = (w[:, :, j] - codes[:, :, j] * scales) / u[:, j, j][:, None]
            w[:, :, j + 1:stop] -= err[:, :, None] * u[:, None, j, j + 1:stop]
            errors[:, :, j - start] = err
        # the lazy batch update of the columns after the block (Algorithm 1, last line)
        w[:, :, stop:] -= np.matmul(errors, u[:, start:stop, stop:])
    return codes


def gptq_act_order(w: np.ndarray, hessian: np.ndarray, scales: np.ndarray, grid: Grid
                   ) -> np.ndarray:
    """`gptq` with the columns taken in order of decreasing H_qq (the GPTQ reference code's
    act-order): the columns of the largest inputs are quantized first, while the most columns
    are left to absorb their error."""
    order = np.argsort(-np.einsum("gii->gi", hessian), axis=1, kind="stable")
    w = np.take_along_axis(np.asarray(w, np.float64), order[:, None, :], axis=2)
    h = np.take_along_axis(np.take_along_axis(hessian, order[:, :, None], axis=1),
                           order[:, None, :], axis=2)
    codes = gptq(w, h, scales, grid)
    restored = np.empty_like(codes)
    np.put_along_axis(restored, np.broadcast_to(order[:, None, :], codes.shape), codes, axis=2)
    return restored


def descend(codes: np.ndarray, w: np.ndarray, hessian: np.ndarray, scales: np.ndarray,
            grid: Grid, sweeps: int = SWEEPS) -> np.ndarray:
    """Coordinate descent on GPTQ's objective from its codes: column by column, each row's
    code moves one step (to the neighbouring level) where that lowers (ŵ - w) H (ŵ - w)ᵀ.
    GPTQ is greedy (each column quantized once, later columns absorb its error); this pass
    revisits the columns with all the others fixed, so the objective can only fall. Exact
    updates: with g = (ŵ - w) H, moving code j of a row by δ steps of size s changes the
    objective by 2δs·g_j + δ²s²·H_jj, and g by δs·H_j."""
    codes = np.array(codes)
    g = np.matmul(codes * scales[..., None] - w, hessian)  # (G, M, K)
    diag = np.einsum("gii->gi", hessian)
    for _ in range(sweeps):
        moved = False
        for j in range(codes.shape[2]):
            current = codes[:, :, j]
            best, gain = np.zeros_like(current), np.zeros_like(current)
            for neighbour in grid.neighbours(current):
                step = (neighbour - current) * scales
                change = 2 * step * g[:, :, j] + step ** 2 * diag[:, j][:, None]
                better = change < gain
                best = np.where(better, neighbour - current, best)
                gain = np.where(better, change, gain)
            if np.any(best != 0):
                moved = True
                codes[:, :, j] = current + best
                g += (best * scales)[..., None] * hessian[:, j, :][:, None, :]
        if not moved:
            break
    return codes


def inverse_cholesky(hessian: np.ndarray) -> np.ndarray:
    """U = chol(H⁻¹)ᵀ (upper triangular) per group, after dampening (module docstring)."""
    h = np.array(hessian, np.float64)
    k = h.shape[-1]
    diag = np.einsum("gii->gi", h)  # a writable view of every group's diagonal
    diag[diag <= 0] = 1.0  # columns whose input is always zero
    diag += DAMPING * diag.mean(axis=1, keepdims=True)
    eye = np.eye(k)
    inverse = np.linalg.solve(h, np.broadcast_to(eye, h.shape))
    inverse = (inverse + inverse.swapaxes(1, 2)) / 2  # symmetric up to rounding
    return np.linalg.cholesky(inverse).swapaxes(1, 2)


def layer_inputs(graph: Graph, x: np.ndarray, samples: int = HESSIAN_SAMPLES,
                 bias_correction: bool = True) -> WeightRounding:
    """H and E[x] of every weighted layer's input over the first `samples` rows of x (the
    float graph's activations)."""
    nodes = weighted_nodes(graph)
    sums: dict[str, list] = {}
    for env in run_batched(graph, x[:samples], batch=32, keep_all=True):
        for node in nodes:
            cols = input_columns(node, env[node.inputs[0].name])  # (G, K, n)
            acc = sums.setdefault(node.name, [0.0, 0.0, 0])
            acc[0] = acc[0] + np.matmul(cols, cols.swapaxes(1, 2))
            acc[1] = acc[1] + cols.sum(axis=2)
            acc[2] += cols.shape[2]
    return WeightRounding({name: LayerInputs(2.0 * xx / n, s / n)
                           for name, (xx, s, n) in sums.items()}, bias_correction)


def input_columns(node: Node, a: np.ndarray) -> np.ndarray:
    """The input columns X of a weighted layer, (groups, K, n): im2col for a Conv (K = C/G ·
    prod(kernel), row order that of W's (C/G, *kernel) flattening), the input rows for Gemm and
    MatMul (leading dims flattened)."""
    a = np.asarray(a, np.float64)
    if node.op_type == "Conv":
        groups = int(node.attrs.get("group", 1))
        win = conv_window(node, a.shape, node.inputs[1].const.shape)
        cols = im2col(win.pad(a.swapaxes(0, 1)), win)  # (C, K, N, *out)
        return cols.reshape(groups, a.shape[1] // groups * int(np.prod(win.kernel)), -1)
    return a.reshape(-1, a.shape[-1]).T[None]
