"""passes/weight_rounding.py (GPTQ, Frantar et al. 2022): the output error against the schemes'
own round-to-nearest, codes on the layer's grid, the H ∝ I property of Algorithm 1, the
Cholesky form against the paper's explicit OBS steps (eq. 2-3 with H_F⁻¹ recomputed), and the
compile switch `--weight-rounding`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passes.schemes import get_scheme
from passes.weight_rounding import (
    DAMPING,
    RANGE_FACTORS,
    Grid,
    LayerInputs,
    WeightRounding,
    descend,
    gptq,
    gptq_act_order,
)
from qcc.core.ir import Node
from qcc.core.layers import weighted_nodes
from qcc.driver.evaluate import evaluate_graphs
from qcc.driver.pipeline import compile_model
from tests.conftest import run_qcc

DIGITS = Path(__file__).resolve().parents[2] / "examples" / "digits"


def _layer(seed: int, rows: int, cols: int, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights (rows, cols) and correlated inputs X (cols, samples) with a non-zero mean."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(cols, cols)) / np.sqrt(cols)
    x = mix @ rng.normal(size=(cols, samples)) + rng.normal(size=(cols, 1))
    return rng.normal(size=(rows, cols)), x


def _rtn(w: np.ndarray, scheme: str, bits: int) -> tuple[np.ndarray, np.ndarray, Grid]:
    """The scheme's own round-to-nearest codes (per output row), steps and grid."""
    codes, fmt = get_scheme(scheme).weight(w, bits, 0)
    return codes, np.broadcast_to(fmt.scales, (len(w),)), Grid(fmt.lo, fmt.hi, fmt.levels)


def _output_error(w: np.ndarray, codes: np.ndarray, steps: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum(((codes * steps[:, None] - w) @ x) ** 2))


def _rounding(h: np.ndarray, mean: np.ndarray, bias_correction: bool = False
              ) -> tuple[WeightRounding, Node]:
    """WeightRounding of one Gemm layer y = W x (+ b), W (rows, cols), with input moments."""
    node = Node("Gemm", "fc", [], [], {"transB": 1})
    return WeightRounding({"fc": LayerInputs(h[None], mean[None])}, bias_correction), node


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), rows=st.integers(1, 12), cols=st.integers(2, 40),
       bits=st.sampled_from([2, 3, 4, 6]), scheme=st.sampled_from(["fixed", "affine"]))
def test_layer_output_error_at_most_round_to_nearest(seed: int, rows: int, cols: int,
                                                     bits: int, scheme: str) -> None:
    """What quantize_graph gets (GPTQ at each range factor, round-to-nearest kept where a
    row's GPTQ is worse): ||WX - ŴX||² never above the scheme's rounding, codes on the grid,
    steps the format's times a range factor (powers of two stay powers of two)."""
    w, x = _layer(seed, rows, cols, 8 * cols)
    codes, fmt = get_scheme(scheme).weight(w, bits, 0)
    steps = np.broadcast_to(fmt.scales, (rows,))
    rounding, node = _rounding(2.0 * x @ x.T / x.shape[1], x.mean(axis=1))
    q, new_fmt, _ = rounding.apply(node, w, codes, fmt, None)
    new_steps = np.broadcast_to(new_fmt.scales, (rows,))
    assert np.array_equal(q, np.round(q)) and q.min() >= fmt.lo and q.max() <= fmt.hi
    assert _output_error(w, q, new_steps, x) <= _output_error(w, codes, steps, x) * (1 + 1e-9)
    assert set(np.round(new_steps / steps, 12)) <= {round(f, 12) for f in RANGE_FACTORS[scheme]}
    if scheme == "fixed":
        assert np.all(np.log2(new_steps) == np.round(np.log2(new_steps)))


def test_bias_correction_zeroes_the_mean_output_error() -> None:
    """Nagel et al. §4.2: b' = b - (Ŵ - W) E[x], so ŴX + b' and WX + b have the same mean."""
    w, x = _layer(7, 6, 20, 300)
    codes, fmt = get_scheme("affine").weight(w, 3, 0)
    rounding, node = _rounding(2.0 * x @ x.T / 300, x.mean(axis=1), bias_correction=True)
    b = np.linspace(-1, 1, 6)
    q, new_fmt, b_new = rounding.apply(node, w, codes, fmt, b)
    w_hat = q * np.broadcast_to(new_fmt.scales, (6,))[:, None]
    np.testing.assert_allclose((w_hat @ x + b_new[:, None]).mean(axis=1),
                               (w @ x + b[:, None]).mean(axis=1), atol=1e-9)


def test_gptq_strictly_better_on_most_seeds() -> None:
    better = 0
    for seed in range(20):
        w, x = _layer(seed, 8, 32, 256)
        codes, steps, grid = _rtn(w, "fixed", 4)
        q = gptq(w[None], (2.0 * x @ x.T / 256)[None], steps[None], grid)[0]
        better += _output_error(w, q, steps, x) < _output_error(w, codes, steps, x)
    assert better >= 18


@pytest.mark.parametrize("scheme,bits", [("apot", 4), ("apot", 5), ("pot", 4)])
def test_gptq_codes_are_levels_of_the_format(scheme: str, bits: int) -> None:
    w, x = _layer(3, 6, 24, 200)
    _, fmt = get_scheme(scheme).weight(w, bits, 0)
    grid = Grid(fmt.lo, fmt.hi, fmt.levels)
    steps = np.broadcast_to(fmt.scales, (len(w),))
    q = gptq(w[None], (x @ x.T)[None], steps[None], grid)[0]
    allowed = fmt.levels if fmt.levels is not None else range(fmt.lo, fmt.hi + 1)
    assert set(np.unique(q).astype(int)) <= set(allowed)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), rows=st.integers(1, 10), cols=st.integers(1, 30),
       bits=st.sampled_from([2, 4, 5]), scheme=st.sampled_from(["fixed", "affine"]))
def test_orthonormal_inputs_give_round_to_nearest(seed: int, rows: int, cols: int, bits: int,
                                                  scheme: str) -> None:
    """X with orthonormal rows: H = 2XXᵀ ∝ I, so chol(H⁻¹) is diagonal, no error is fed to
    later columns and every code is the scheme's nearest one (Algorithm 1)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(rows, cols)) * rng.uniform(0.1, 10)
    q_cols, _ = np.linalg.qr(rng.normal(size=(3 * cols, cols)))
    x = q_cols.T  # (cols, samples) with XXᵀ = I
    codes, steps, grid = _rtn(w, scheme, bits)
    h = (2.0 * x @ x.T)[None]
    assert np.array_equal(gptq(w[None], h, steps[None], grid)[0], codes)
    assert np.array_equal(gptq_act_order(w[None], h, steps[None], grid)[0], codes)


def test_act_order_is_gptq_on_permuted_columns() -> None:
    """gptq_act_order = gptq of the columns sorted by decreasing H_qq, put back in place."""
    w, x = _layer(5, 6, 25, 200)
    x = x * np.linspace(0.2, 3, 25)[:, None]  # distinct input scales: a real reordering
    codes, steps, grid = _rtn(w, "affine", 4)
    h = 2.0 * x @ x.T / 200
    order = np.argsort(-np.diag(h), kind="stable")
    permuted = gptq(w[None][:, :, order], h[np.ix_(order, order)][None], steps[None], grid)[0]
    expected = np.empty_like(permuted)
    expected[:, order] = permuted
    assert np.array_equal(gptq_act_order(w[None], h[None], steps[None], grid)[0], expected)


def _obs_reference(w: np.ndarray, h: np.ndarray, steps: np.ndarray, grid: Grid) -> np.ndarray:
    """GPTQ written as the paper's OBS steps (eq. 2-3): quantize column q, then update the
    remaining columns F by -(w_q - quant(w_q)) / [H_F⁻¹]_qq · (H_F⁻¹)_{:,q}, with H_F⁻¹ the
    inverse of the dampened H restricted to F, recomputed from scratch at every step."""
    w = w.copy()
    h = h + DAMPING * np.mean(np.diag(h)) * np.eye(len(h))
    codes = np.zeros_like(w)
    for q in range(w.shape[1]):
        rest = np.arange(q, w.shape[1])
        inv = np.linalg.inv(h[np.ix_(rest, rest)])
        codes[:, q] = grid.nearest(w[:, q] / steps)
        err = (w[:, q] - codes[:, q] * steps) / inv[0, 0]
        w[:, rest] -= err[:, None] * inv[0][None, :]
    return codes


@pytest.mark.parametrize("seed", range(5))
def test_cholesky_form_matches_explicit_obs_steps(seed: int) -> None:
    w, x = _layer(seed, 5, 150 if seed == 0 else 20, 600)  # seed 0: more than one block
    codes, steps, grid = _rtn(w, "affine", 3)
    h = 2.0 * x @ x.T / x.shape[1]
    assert np.array_equal(gptq(w[None], h[None], steps[None], grid)[0],
                          _obs_reference(w, h, steps, grid))


def _weights(compiled) -> dict[str, np.ndarray]:
    return {v.name: v.const for v in compiled.integer.values.values()
            if v.is_const and v.name.endswith("_w")}


@pytest.mark.parametrize("scheme", ["fixed", "affine"])
def test_eight_bit_compiles_keep_their_codes(scheme: str) -> None:
    calib = DIGITS / "calib.npz"
    gptq_8 = compile_model(DIGITS / "digits.onnx", 8, scheme, calib=calib)
    nearest_8 = compile_model(DIGITS / "digits.onnx", 8, scheme, calib=calib,
                              weight_rounding="nearest")
    assert all(np.array_equal(a, b) for a, b in zip(_weights(gptq_8).values(),
                                                      _weights(nearest_8).values()))


def test_nearest_reproduces_the_schemes_codes() -> None:
    """--weight-rounding nearest: every weight code is the scheme's own rounding."""
    compiled = compile_model(DIGITS / "digits.onnx", 4, "affine", calib=DIGITS / "calib.npz",
                             weight_rounding="nearest")
    for node in compiled.reference.nodes:
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        w = node.inputs[1].const.astype(np.float64) * node.attrs.get("alpha", 1.0)
        axis = 0 if node.op_type == "Conv" or node.attrs.get("transB", 0) else 1
        codes, _ = get_scheme("affine").weight(w, 4, axis)
        assert np.array_equal(compiled.integer.values[f"{node.name}_w"].const, codes)


@pytest.mark.parametrize("scheme", ["fixed", "affine"])
@pytest.mark.parametrize("weight_bits", [4, 2])
def test_narrow_weight_digits_agree_with_float_at_least_as_well(scheme: str, weight_bits: int,
                                                                tmp_path: Path) -> None:
    """Every layer's weights at 4 (2) bits, activations at 8 (what a flash budget makes):
    top-1 agreement with float on the 400 test digits, gptq against nearest."""
    graph = compile_model(DIGITS / "digits.onnx", 8, scheme).reference
    overrides = tmp_path / "narrow.json"
    overrides.write_text(json.dumps({node.name: {"weight_bits": weight_bits}
                                     for node in weighted_nodes(graph)}))
    test = np.load(DIGITS / "test.npz")
    agreement = {}
    for mode in ("nearest", "gptq"):
        compiled = compile_model(DIGITS / "digits.onnx", 8, scheme, calib=DIGITS / "calib.npz",
                                 overrides=overrides, weight_rounding=mode)
        result = evaluate_graphs(compiled.reference, compiled.integer, test["x"], test["y"])
        agreement[mode] = 1 - result.mismatch
    assert agreement["gptq"] >= agreement["nearest"]


def test_cli_switch(tmp_path: Path) -> None:
    args = ["compile", DIGITS / "digits.onnx", "--bits", "3", "--calib", DIGITS / "calib.npz"]
    near = run_qcc(*args, "--weight-rounding", "nearest", "-o", tmp_path / "near")
    opt = run_qcc(*args, "-o", tmp_path / "gptq")
    assert near.returncode == 0 and opt.returncode == 0, near.stderr + opt.stderr
    near_bytes = (tmp_path / "near" / "model.qcc.onnx").read_bytes()
    assert near_bytes != (tmp_path / "gptq" / "model.qcc.onnx").read_bytes()
    bad = run_qcc(*args, "--weight-rounding", "best", "-o", tmp_path / "bad")
    assert bad.returncode != 0 and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("scheme,bits", [("fixed", 4), ("affine", 3), ("apot", 4)])
def test_coordinate_descent_never_raises_the_objective(scheme: str, bits: int) -> None:
    w, x = _layer(11, 8, 30, 240)
    _, fmt = get_scheme(scheme).weight(w, bits, 0)
    grid, steps = Grid(fmt.lo, fmt.hi, fmt.levels), np.broadcast_to(fmt.scales, (8,))[None]
    h = (2.0 * x @ x.T / 240)[None]
    start = gptq(w[None], h, steps, grid)
    refined = descend(start, w[None], h, steps, grid)
    allowed = fmt.levels if fmt.levels is not None else range(fmt.lo, fmt.hi + 1)
    assert set(np.unique(refined).astype(int)) <= set(allowed)
    assert _output_error(w, refined[0], steps[0], x) <= _output_error(w, start[0], steps[0], x)
