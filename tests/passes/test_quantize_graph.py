"""quantize_graph on real data: 8-bit integer digits CNN against its float model, and the zoo
models against onnxruntime float."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from backends.numpy_int.interpreter import integer_predictions
from qcc import zoo
from qcc.driver.evaluate import evaluate_graphs
from qcc.driver.pipeline import compile_model

DIGITS = Path(__file__).resolve().parents[2] / "examples" / "digits"


@pytest.mark.parametrize("scheme", ["fixed", "affine"])
def test_digits_lose_at_most_half_a_point_at_8_bits(scheme: str) -> None:
    compiled = compile_model(DIGITS / "digits.onnx", 8, scheme, calib=DIGITS / "calib.npz")
    test = np.load(DIGITS / "test.npz")
    result = evaluate_graphs(compiled.reference, compiled.integer, test["x"], test["y"])
    assert result.float_accuracy - result.integer_accuracy <= 0.005
    assert result.float_accuracy > 0.97


@pytest.mark.parametrize("scheme", ["fixed", "affine"])
def test_resnet8_top1_agrees_with_onnxruntime_float(scheme: str, tmp_path: Path) -> None:
    """ResNet-8 (BatchNorm folded by qcc) at 8 bits against onnxruntime float on 300 inputs."""
    import onnx

    model = zoo.resnet8()
    onnx.save(model, tmp_path / "r8.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.normal(size=(64, 3, 32, 32)).astype(np.float32))
    compiled = compile_model(tmp_path / "r8.onnx", 8, scheme, calib=tmp_path / "calib.npz")
    x = rng.normal(size=(300, 3, 32, 32)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString())
    expected = np.array([sess.run(None, {"input": x[i:i + 1]})[0].argmax() for i in range(len(x))])
    predicted, _ = integer_predictions(compiled.integer, x)
    assert np.mean(predicted == expected) >= 0.99


def _input_quantize(compiled) -> dict:
    return next(n for n in compiled.integer.nodes if n.op_type == "Quantize").attrs


@pytest.mark.parametrize("bits", [7, 8])
def test_input_format_covers_pixels_on_the_power_of_two_edge(bits: int, tmp_path: Path) -> None:
    """digits' pixels reach exactly 1.0, one code above fx<B>u(r=1)'s top, r - Δ: the input
    gets one bit more at the same step (range r = 2), so `qcc eval` counts no saturated input;
    inputs that stop short of the edge keep the scheme's format."""
    calib = np.load(DIGITS / "calib.npz")["x"]
    assert calib.max() == 1.0
    compiled = compile_model(DIGITS / "digits.onnx", bits, "fixed", calib=DIGITS / "calib.npz")
    q = _input_quantize(compiled)
    assert q["scale"] == 2.0**-bits and (q["out_lo"], q["out_hi"]) == (0, 2**(bits + 1) - 1)
    test = np.load(DIGITS / "test.npz")
    result = evaluate_graphs(compiled.reference, compiled.integer, test["x"], test["y"])
    input_codes = next(n for n in compiled.integer.nodes if n.op_type == "Quantize").outputs[0]
    assert result.report.overflows.get(input_codes.name, 0) == 0
    np.savez(tmp_path / "inner.npz", x=(calib * 0.75).astype(np.float32))
    inner = compile_model(DIGITS / "digits.onnx", bits, "fixed", calib=tmp_path / "inner.npz")
    q = _input_quantize(inner)
    assert q["scale"] == 2.0**-bits and (q["out_lo"], q["out_hi"]) == (0, 2**bits - 1)


def test_affine_input_keeps_its_clipping_range() -> None:
    """Affine inputs clip on purpose (chunk-averaged range, Banner et al. §B): not widened."""
    compiled = compile_model(DIGITS / "digits.onnx", 8, "affine", calib=DIGITS / "calib.npz")
    q = _input_quantize(compiled)
    assert q["out_hi"] - q["out_lo"] == 255
