"""passes/schemes/affine.py: the gemmlowp scheme of seeds/000 §B, checked against numbers worked
out by hand, against NumPy reductions, and end to end on the zoo models (integer graph vs float
graph, next to the fixed-point scheme)."""

from __future__ import annotations

import numpy as np
import pytest

from backends.numpy_int import run_integer
from passes import run_passes
from passes.calibrate import TensorStats, calibrate
from passes.quantize_graph import QuantConfig, quantize_graph
from passes.schemes import get_scheme
from qcc import zoo
from qcc.core.float_exec import run_batched
from qcc.core.onnx_import import import_model

AFFINE = get_scheme("affine")


def test_activation_range_is_the_chunk_average_with_an_exact_zero() -> None:
    """seeds/000 §B clamps activations to the K-chunk averages [-1, 2], not the extremes
    [-10, 10]: scale = 3/255 and zero point 1/scale = 85 (zero exactly representable)."""
    fmt = AFFINE.activation(TensorStats(lo=-10.0, hi=10.0, chunk_lo=-1.0, chunk_hi=2.0), 8)
    assert fmt.scales[0] == pytest.approx(3.0 / 255.0, rel=1e-12)
    assert (fmt.zero_point, fmt.lo, fmt.hi) == (85, 0, 255)
    assert fmt.spec.format == "affine" and not fmt.spec.signed and fmt.spec.zero_point == 85


def test_activation_range_always_contains_zero() -> None:
    """A ReLU output [0.5, 4] still gets code 0 for 0.0; a negative one [-3, -1] code 2^B - 1."""
    relu = AFFINE.activation(TensorStats(0.5, 6.0, 0.5, 4.0), 8)
    assert relu.zero_point == 0 and relu.scales[0] == pytest.approx(4.0 / 255.0)
    negative = AFFINE.activation(TensorStats(-5.0, -1.0, -3.0, -1.0), 4)
    assert (negative.zero_point, negative.hi) == (15, 15)
    assert negative.scales[0] == pytest.approx(3.0 / 15.0)


@pytest.mark.parametrize("bits", [8, 4])
def test_weights_are_symmetric_per_output_channel(bits: int) -> None:
    rng = np.random.default_rng(bits)
    w = rng.normal(0, 1, (6, 4, 3, 3)) * np.array([1, 10, 0.1, 1, 1, 1])[:, None, None, None]
    w[3] = 0.0  # an all-zero channel
    codes, fmt = AFFINE.weight(w, bits, axis=0)
    qmax = 2 ** (bits - 1) - 1
    absmax = np.abs(w).reshape(6, -1).max(axis=1)
    scales = np.array(fmt.scale)
    nonzero = absmax > 0
    np.testing.assert_allclose(scales[nonzero], absmax[nonzero] / qmax, rtol=1e-12)
    assert fmt.zero_point == 0 and (fmt.lo, fmt.hi) == (-qmax, qmax)
    assert np.all(codes[3] == 0) and np.all(np.isfinite(scales)) and np.all(scales > 0)
    assert np.abs(codes).max() == qmax and codes.dtype.kind == "i"
    # every weight is within half a step of its reconstruction
    error = np.abs(codes * scales[:, None, None, None] - w)
    assert np.all(error <= scales[:, None, None, None] / 2 + 1e-12)


def test_matmul_weights_take_their_scales_along_the_output_columns() -> None:
    w = np.array([[1.0, -8.0], [0.5, 2.0], [-2.0, 4.0]])  # (K=3, N=2): per column
    codes, fmt = AFFINE.weight(w, 8, axis=1)
    np.testing.assert_allclose(fmt.scale, [2.0 / 127, 8.0 / 127])
    assert codes.tolist() == [[64, -127], [32, 32], [-127, 64]]


def _agreement(name: str, scheme: str, samples: int = 64) -> tuple[float, dict]:
    graph = run_passes(import_model(zoo.MODELS[name]()), ["fold_batchnorm"])
    rng = np.random.default_rng(0)
    shape = graph.inputs[0].shape[1:]
    stats = calibrate(graph, rng.normal(size=(64, *shape)).astype(np.float32))
    x = rng.normal(size=(samples, *shape)).astype(np.float32)
    want = np.concatenate([r["output"] for r in run_batched(graph, x)])
    q = quantize_graph(graph, stats, QuantConfig(scheme=scheme, default_bits=8))
    got, _ = run_integer(q, {graph.inputs[0].name: x}, check=False)
    zero_points = {n.attrs.get("out_zero_point", 0) for n in q.nodes}
    return float(np.mean(want.argmax(1) == got["output"].argmax(1))), {
        "zero_points": zero_points, "ops": {n.op_type for n in q.nodes}}


@pytest.mark.parametrize("name", ["resnet8", "mlp_digits"])
def test_affine_integer_graph_agrees_with_float_like_fixed_point(name: str) -> None:
    """Top-1 of the integer graph vs the float graph on random inputs: measured 1.00 (fixed
    1.00) on ResNet-8 and 0.99 (fixed 0.98) on the MLP over 200 inputs."""
    affine, info = _agreement(name, "affine")
    fixed, _ = _agreement(name, "fixed")
    assert affine >= 0.9 and affine >= fixed - 0.05
    assert any(z != 0 for z in info["zero_points"])  # the affine formats are in the graph
    assert "Quantize" in info["ops"] and "Dequantize" in info["ops"]


def test_graph_outputs_keep_their_whole_range() -> None:
    """Inner activations clamp to the chunk averages; the logits keep [min, max] of the
    calibration data, so the largest logit (the one that decides the class) is not clipped."""
    graph = import_model(zoo.mlp_digits())
    x = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    stats = calibrate(graph, x)
    q = quantize_graph(graph, stats, QuantConfig(scheme="affine", default_bits=8))
    out = stats[graph.outputs[0].name]
    assert out.chunk_hi < out.hi  # the averages would clip here
    (dequantize,) = [n for n in q.nodes if n.op_type == "Dequantize"]
    spec = dequantize.inputs[0].quant
    scale, zero_point, top = spec.scale, spec.zero_point, (1 << spec.bits) - 1
    slack = scale / 2  # the zero point is rounded to an integer
    assert -zero_point * scale <= out.lo + slack and (top - zero_point) * scale >= out.hi - slack
