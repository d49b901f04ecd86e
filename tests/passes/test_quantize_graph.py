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

