"""The apot and pot schemes (passes/schemes/apot.py) on qcc's integer graph.

The level sets themselves (eq. 2, 3, 5, 6, the paper's b = 4, k = 2 and 3-bit examples, the
authors' construction) are checked in tests/core/numerics/test_apot.py; here: the scheme's formats
are those sets, its weights are WN + RCF with the MSE-optimal α, the integer product of a QGemm
is the shift-add product, 4-bit APoT beats 4-bit PoT, and the integer graphs of the zoo models
agree with a float simulation of the same quantized network up to requantization rounding.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest

from backends.numpy_int import run_integer
from backends.numpy_int.kernels import qgemm
from passes import run_passes
from passes.calibrate import TensorStats, calibrate
from passes.quantize_graph import QuantConfig, _level_table, quantize_graph
from passes.schemes import CodeFormat, get_scheme
from passes.schemes.apot import WN_EPS, level_set, quantize_layer
from qcc import zoo
from qcc.core.ir import Node, Value
from qcc.core.numerics import apot as P
from qcc.core.numerics.rounding import round_half_away
from qcc.core.onnx_import import import_model
from qcc.core.quant_spec import QuantSpec
from qcc.core.registry import lookup

HALF = Fraction(1, 2)


def scaled_levels(fmt, unit: Fraction) -> list[Fraction]:
    """A CodeFormat's integer levels times `unit`, normalized so the largest is 1."""
    return [unit * v / (unit * max(fmt.levels)) for v in fmt.levels]


def sums(*term_sets) -> list[Fraction]:
    values = {sum(c, Fraction(0)) for c in itertools.product(*term_sets)}
    return sorted(v / max(values) for v in values)


# --- formats ----------------------------------------------------------------------------------

def test_weight_levels_are_the_papers_examples_with_a_sign() -> None:
    """5-bit weights = sign + the b = 4, k = 2 example; 4-bit = sign + the 3-bit example."""
    apot = get_scheme("apot")
    w = np.random.default_rng(0).standard_normal((4, 50))
    b4 = sums([0, 1, HALF**2, HALF**4], [0, HALF, HALF**3, HALF**5])
    b3 = sums([0, HALF, HALF**2, HALF**4], [0, HALF**3])
    for bits, example in ((5, b4), (4, b3)):
        _, fmt = apot.weight(w, bits, 0)
        assert scaled_levels(fmt, Fraction(1)) == sorted({-v for v in example} | set(example))
        assert (fmt.spec.format, fmt.spec.bits, fmt.spec.k) == ("apot", bits, 2)
    _, fmt2 = apot.weight(w, 2, 0)
    assert fmt2.levels is None and (fmt2.lo, fmt2.hi) == (-1, 1)  # 2 bits: {-α, 0, α} (§4)


def test_activation_levels_unsigned_apot_and_signed_uniform() -> None:
    apot = get_scheme("apot")
    unsigned = apot.activation(TensorStats(0.0, 6.0, 0.0, 5.0), 4)
    assert scaled_levels(unsigned, Fraction(1)) == sums([0, 1, HALF**2, HALF**4],
                                                        [0, HALF, HALF**3, HALF**5])
    # the largest level is α = the calibrated maximum (RCF's clipping threshold)
    assert unsigned.scales[0] * unsigned.hi == pytest.approx(6.0)
    signed = apot.activation(TensorStats(-3.0, 2.0, -2.0, 1.0), 4)  # k = 1: uniform eq. 2
    assert signed.levels is None and (signed.lo, signed.hi) == (-7, 7)
    values = [Fraction(3) * Fraction(c, 7) for c in range(-7, 8)]
    assert values == P.uniform_levels(4, 3)
    assert signed.scales[0] == pytest.approx(3.0 / 7)


@pytest.mark.parametrize("bits", [2, 3, 4, 5])
def test_pot_scheme_is_the_k_equal_b_case(bits: int) -> None:
    """pot weights: eq. 3's levels less its smallest (the one-term APoT set)."""
    _, fmt = get_scheme("pot").weight(np.random.default_rng(bits).standard_normal(64), bits, 0)
    levels = level_set(P.pot_format(bits)) if fmt.levels is None else fmt.levels
    eq3 = P.pot_levels(bits)
    smallest = HALF ** (2 ** (bits - 1) - 1)
    expected = [v for v in eq3 if abs(v) != smallest]
    assert [Fraction(int(v), int(max(levels))) for v in levels] == expected


def test_bits_out_of_range_are_refused() -> None:
    w = np.ones((2, 3))
    with pytest.raises(Exception, match="2 to 8"):
        get_scheme("apot").weight(w, 9, 0)
    with pytest.raises(Exception, match="2 to 6"):
        get_scheme("pot").weight(w, 7, 0)


# --- weights: WN, RCF, α ----------------------------------------------------------------------

def test_weights_are_wn_then_rcf_with_the_mse_optimal_alpha() -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 3, 3, 3)) * rng.uniform(0.1, 3.0, (6, 1, 1, 1)) + 0.05
    codes, fmt = get_scheme("apot").weight(w, 4, 0)
    apot4 = P.APoTFormat(4, 2)
    rows = w.reshape(6, -1)
    norm = np.sqrt((rows**2).mean(axis=1, keepdims=True)) + WN_EPS  # eq. 9 divisor, μ kept
    alpha = P.optimal_alpha((rows / norm).ravel(), apot4)
    assert fmt.spec.alpha == pytest.approx(alpha, rel=1e-3)
    assert fmt.spec.gamma == pytest.approx(fmt.spec.alpha * float(apot4.gamma))
    reference = norm * P.rcf(rows / norm, fmt.spec.alpha, apot4)  # eq. 7 on the WN weights
    dequantized = codes.reshape(6, -1) * np.asarray(fmt.scales)[:, None]
    np.testing.assert_allclose(dequantized, reference, rtol=1e-12, atol=0)
    assert set(np.unique(codes)) <= set(fmt.levels)


@pytest.mark.parametrize("law", ["normal", "laplace"])
def test_4bit_apot_weights_have_lower_mse_than_4bit_pot(law: str) -> None:
    w = getattr(np.random.default_rng(2), law)(size=(64, 512))
    mse = {}
    for name in ("apot", "pot"):
        codes, fmt = get_scheme(name).weight(w, 4, 0)
        mse[name] = np.mean((codes * np.asarray(fmt.scales)[:, None] - w) ** 2)
    assert mse["apot"] < 0.75 * mse["pot"]


def test_integer_product_is_the_shift_add_product() -> None:
    """A QGemm's exact accumulator (requantization set to the identity) equals Σ x·level by
    shift_add_multiply on the APoT codes of the same weights."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((24, 40))
    for bits in (3, 4, 5, 8):
        fmt = P.APoTFormat(bits, 2)
        q = quantize_layer(w, fmt, axis=1)
        codes = P.quantize(w / (q.scales / (q.alpha * float(fmt.unit))), fmt, q.alpha)
        assert np.array_equal(P.decode_integer(codes, fmt), q.levels)
        x = rng.integers(0, 256, (7, 24)).astype(np.uint8)
        node = Node("QGemm", "g", [], [Value("acc", None, np.dtype(np.int32))],
                    {"x_zero_point": 3, "multiplier": 1, "shift": 0,
                     "out_lo": -(2**31), "out_hi": 2**31 - 1})
        acc = qgemm(node, x, q.levels.astype(np.int16))
        shift_add = P.shift_add_multiply((x.astype(np.int64) - 3)[:, :, None], codes[None], fmt)
        assert np.array_equal(acc, shift_add.sum(axis=1))


# --- the integer graph against a float simulation -------------------------------------------

def _scale(value) -> float:
    """The real step of a tensor's codes, from its QuantSpec (apot/uniform: scale, fixed: Δ)."""
    return value.quant.scale if value.quant.scale is not None else value.quant.step


def _layer_weight(w: np.ndarray, spec, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(dequantized weight, per-channel level scale) recomputed from the float weight: WN per
    channel (eq. 9, μ kept), RCF (eq. 7) with the reported α; level scale = n_c·α·γ·2^-E."""
    fmt = P.APoTFormat(spec.bits, spec.k, signed=True)
    rows = np.moveaxis(w, axis, 0)
    flat = rows.reshape(rows.shape[0], -1)
    norm = np.sqrt((flat**2).mean(axis=1, keepdims=True)) + WN_EPS
    deq = (norm * P.rcf(flat / norm, spec.alpha, fmt)).reshape(rows.shape)
    return np.moveaxis(deq, 0, axis), norm.ravel() * spec.alpha * float(fmt.unit)


def pre_rounding(node: Node, args: list, src: Node | None) -> np.ndarray | None:
    """The real value of a requantizing node's output over its output step, plus the zero
    point (None for the ops that only move codes)."""
    out_scale = _scale(node.outputs[0]) if node.outputs[0].quant is not None else None
    if node.op_type == "Quantize":
        y = args[0].astype(np.float64)
    elif node.op_type in ("QConv", "QGemm"):
        x_scale = _scale(node.inputs[0])
        x = (args[0].astype(np.float64) - node.attrs["x_zero_point"]) * x_scale
        axis = 0 if node.op_type == "QConv" or node.attrs.get("transB") else 1
        w, level_scale = _layer_weight(src.inputs[1].const.astype(np.float64),
                                       node.inputs[1].quant, axis)
        bias = None if args[2] is None else args[2] * x_scale * level_scale
        y = lookup(src).kernel(src, x, w, bias)
    elif node.op_type in ("QAdd", "Requantize"):
        y = sum((a.astype(np.float64) - z) * _scale(v) for a, z, v in
                zip(args, node.attrs["zero_points"], node.inputs))
    else:
        return None
    return y / out_scale + node.attrs.get("out_zero_point", 0)


def simulate(node: Node, args: list, src: Node | None) -> np.ndarray:
    """One node of the float simulation: round (ties away) and clip what `pre_rounding` gives."""
    v = pre_rounding(node, args, src)
    if v is not None:
        a = node.attrs
        floor = max(a["out_lo"], a.get("out_zero_point", 0)) if a.get("relu") else a["out_lo"]
        return np.clip(round_half_away(v), floor, a["out_hi"])
    if node.op_type in ("AveragePool", "GlobalAveragePool"):
        return round_half_away(lookup(node).kernel(node, args[0].astype(np.float64)))
    if node.op_type == "Dequantize":
        real = (args[0] - node.attrs.get("zero_point", 0)) * node.attrs["scale"]
        return real.astype(np.float32)
    return lookup(node).kernel(node, *args)  # Gather (level tables), MaxPool, Flatten: exact


@pytest.fixture(scope="module", params=["resnet8", "convnet_cifar"])
def apot_network(request):
    graph = run_passes(import_model(zoo.MODELS[request.param]()), ["fold_batchnorm"])
    rng = np.random.default_rng(0)
    shape = graph.inputs[0].shape[1:]
    stats = calibrate(graph, rng.normal(size=(16, *shape)).astype(np.float32))
    q = quantize_graph(graph, stats, QuantConfig(scheme="apot", default_bits=4))
    x = rng.normal(size=(8, *shape)).astype(np.float32)
    env, _ = run_integer(q, {"input": x}, check=False, keep_all=True)
    return graph, q, x, env


def test_every_node_agrees_with_the_float_simulation(apot_network) -> None:
    """Fed the integer graph's own inputs, each node's codes equal the float simulation's except
    where the simulated value lies within 2^-20 (relative) of a rounding tie, by one code."""
    graph, q, _, env = apot_network
    layers = {n.name: n for n in graph.nodes}
    checked = 0
    for node in q.nodes:
        args = [env[v.name] if v is not None else None for v in node.inputs]
        got = env[node.outputs[0].name].astype(np.float64)
        expected = simulate(node, args, layers.get(node.name))
        differ = got != expected
        if differ.any():
            v = pre_rounding(node, args, layers.get(node.name))
            assert v is not None, node.name
            near_tie = np.abs(np.abs(v - np.floor(v)) - 0.5) <= 2.0**-20 * np.maximum(1, abs(v))
            assert np.all(near_tie[differ]) and np.all(np.abs(got - expected)[differ] <= 1)
        checked += node.op_type in ("QConv", "QGemm")
    assert checked == len([n for n in graph.nodes if n.op_type in ("Conv", "Gemm")])


def test_network_agrees_with_the_float_simulation_end_to_end(apot_network) -> None:
    graph, q, x, env = apot_network
    layers = {n.name: n for n in graph.nodes}
    sim: dict[str, np.ndarray] = {"input": x, **q.constants}
    for node in q.nodes:
        args = [sim[v.name] if v is not None else None for v in node.inputs]
        sim[node.outputs[0].name] = simulate(node, args, layers.get(node.name))
    got, expected = env["output"], sim["output"]
    assert np.array_equal(got.argmax(axis=1), expected.argmax(axis=1))
    assert np.mean(got == expected) >= 0.99


def test_weight_specs_report_alpha(apot_network) -> None:
    graph, q, _, _ = apot_network
    weights = [q.values[f"{n.name}_w"] for n in graph.nodes if n.op_type in ("Conv", "Gemm")]
    assert all(v.quant.format == "apot" and v.quant.k == 2 and 0 < v.quant.alpha < 10
               for v in weights)


def test_level_tables_snap_to_the_nearest_apot_level(apot_network) -> None:
    """Each Gather table maps every grid code to the level numerics.apot.project picks."""
    _, q, _, _ = apot_network
    tables = [n for n in q.nodes if n.op_type == "Gather"]
    assert tables
    for node in tables:
        spec = node.outputs[0].quant
        fmt = P.APoTFormat(spec.bits, spec.k, signed=spec.signed)
        top = int(fmt.integer_levels.max())
        grid = np.array([float(Fraction(c, top)) for c in range(top + 1)])
        expected = P.decode_integer(P.project(grid, fmt), fmt)
        assert np.array_equal(q.values[node.inputs[0].name].const, expected)


def test_signed_level_tables_wrap_and_round_ties_toward_zero() -> None:
    fmt = CodeFormat(1.0, 0, -5, 5, QuantSpec(), (-5, -1, 0, 1, 5))
    table = _level_table(fmt)
    codes = np.arange(-5, 6)
    assert np.take(table, codes).tolist() == [-5, -5, -1, -1, -1, 0, 1, 1, 1, 5, 5]


def test_layer_inputs_hold_apot_levels(apot_network) -> None:
    """Every weighted layer reads codes on its input format's levels (after the snaps)."""
    _, q, _, env = apot_network
    for node in q.nodes:
        if node.op_type in ("QConv", "QGemm"):
            spec = node.inputs[0].quant
            fmt = P.APoTFormat(spec.bits, spec.k, signed=spec.signed)
            assert np.isin(env[node.inputs[0].name], level_set(fmt)).all(), node.name
            if not spec.signed:
                assert spec.k == 2
