"""No NaN or Inf reaches an integer conversion: degenerate weights and ranges compile cleanly
under every scheme (the suite turns any RuntimeWarning into an error), and the integer graph
still agrees with the float one where the float one is well defined.

Cases: a channel of all-zero weights with a non-zero bias, a dead channel (weights ~1e-30, as
BatchNorm folding leaves in MLPerf Tiny's MobileNet) with a non-zero bias, an all-zero weight
tensor, and a calibration set on which an activation is constant (a zero range)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import backends.numpy_int  # noqa: F401  (registers the integer kernels, as the driver does)
from backends.numpy_int.interpreter import run_integer
from qcc.core.errors import QccError
from qcc.core.float_exec import run_float
from qcc.driver.pipeline import compile_model

SCHEMES = [("fixed", 8), ("affine", 8), ("apot", 4), ("pot", 4), ("binary", 8), ("ternary", 8)]


def conv_model(path: Path, weights: np.ndarray, bias: np.ndarray) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("Flatten", ["r"], ["f"]),
         helper.make_node("Gemm", ["f", "w2"], ["y"], transB=1)],
        "degenerate", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
        initializer=[numpy_helper.from_array(weights.astype(np.float32), "w"),
                     numpy_helper.from_array(bias.astype(np.float32), "b"),
                     numpy_helper.from_array(
                         np.random.default_rng(0).normal(size=(3, 4 * 16)).astype(np.float32),
                         "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def weights_with_degenerate_channels() -> np.ndarray:
    w = np.random.default_rng(1).normal(size=(4, 2, 3, 3))
    w[1] = 0.0  # all-zero channel
    w[2] = 1e-30 * np.sign(w[2])  # dead channel
    return w


@pytest.mark.parametrize("scheme,bits", SCHEMES)
@pytest.mark.parametrize("case", ["degenerate_channels", "all_zero_weights", "constant_input"])
def test_compiles_without_nan_and_agrees(tmp_path: Path, scheme: str, bits: int,
                                         case: str) -> None:
    bias = np.array([0.1, 0.5, -0.3, 0.2])
    w = np.zeros((4, 2, 3, 3)) if case == "all_zero_weights" else \
        weights_with_degenerate_channels()
    model = conv_model(tmp_path / "m.onnx", w, bias)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(32, 2, 4, 4)).astype(np.float32)
    if case == "constant_input":
        x[:] = 0.25
    np.savez(tmp_path / "calib.npz", x=x)
    compiled = compile_model(model, bits, scheme, calib=tmp_path / "calib.npz")
    for v in compiled.integer.values.values():
        if v.is_const and v.const.dtype.kind == "f":
            assert np.all(np.isfinite(v.const)), v.name
    out, _ = run_integer(compiled.integer, {"x": x[:8]}, check=False)
    y = out["y"]
    assert np.all(np.isfinite(y))
    if scheme in ("fixed", "affine") and case != "constant_input":
        ref = run_float(compiled.reference, {"x": x[:8]})["y"]
        assert np.abs(y - ref).max() <= 0.1 * np.abs(ref).max() + 1e-6


def test_nan_bias_is_one_clear_error(tmp_path: Path) -> None:
    bias = np.array([0.1, np.nan, 0.0, 0.0])
    model = conv_model(tmp_path / "m.onnx", weights_with_degenerate_channels(), bias)
    np.savez(tmp_path / "calib.npz",
             x=np.random.default_rng(3).normal(size=(8, 2, 4, 4)).astype(np.float32))
    with pytest.raises(QccError):
        compile_model(model, 8, "affine", calib=tmp_path / "calib.npz")
