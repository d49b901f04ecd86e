"""QONNX Trunc compiled (qcc.QTrunc): equal to qonnx's own executor on graphs built to the
QONNX specification with onnx.helper, every rounding mode, v1 and v2 (signed, narrow), power-of-two
and other scales; the C library bit for bit with the NumPy interpreter.

The graphs are x -> Quant -> MatMul(Quant weights) -> Trunc -> y: the MatMul's accumulator sits
on the Trunc's input grid (scale_x · scale_w), as a Brevitas accumulator truncation does, so
QONNX's round(x / scale) is exact there and every output must equal the reference exactly. The
inputs keep away from the Quant's rounding ties (qcc rounds them away from zero, QONNX to even).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from backends.c.build import build_host, missing_tools, run_host
from qcc.core.errors import QccError
from qcc.driver.c_check import interpreter_outputs
from qcc.driver.pipeline import compile_model, write_outdir
from tests.conftest import run_qcc

QONNX = "qonnx.custom_op.general"
MODES = ("FLOOR", "CEIL", "ROUND", "HALF_EVEN", "HALF_UP", "HALF_DOWN", "UP", "DOWN")
BATCH, K, N = 64, 16, 12


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def trunc_graph(version: int, mode: str, signed: int = 1, narrow: int = 0,
                scale_x: float = 2.0**-4) -> onnx.ModelProto:
    """x (8-bit Quant) @ w (4-bit narrow Quant) -> Trunc: v1 from 16 to 10 bits, v2 to a 6-bit
    output at scale · 2^7 (so its clamp is reached)."""
    scale_w = 2.0**-3
    acc = scale_x * scale_w
    nodes = [
        helper.make_node("Quant", ["x", "sx", "zero", "b8"], ["xq"], domain=QONNX, signed=1,
                         narrow=0, rounding_mode="ROUND"),
        helper.make_node("Quant", ["w", "sw", "zero", "b4"], ["wq"], domain=QONNX, signed=1,
                         narrow=1, rounding_mode="ROUND"),
        helper.make_node("MatMul", ["xq", "wq"], ["acc"], "mm"),
    ]
    if version == 1:
        nodes.append(helper.make_node("Trunc", ["acc", "sa", "zero", "b16", "b10"], ["y"],
                                      "trunc", domain=QONNX, rounding_mode=mode))
    else:
        nodes.append(helper.make_node("Trunc", ["acc", "sa", "zero", "b16", "s_out", "b6"],
                                      ["y"], "trunc", domain=QONNX, rounding_mode=mode,
                                      signed=signed, narrow=narrow))
    w = np.random.default_rng(1).normal(size=(K, N))
    graph = helper.make_graph(
        nodes, "trunc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, N])],
        [_const("sx", scale_x), _const("sw", scale_w), _const("sa", acc), _const("zero", 0.0),
         _const("b8", 8), _const("b4", 4), _const("b16", 16), _const("b10", 10), _const("b6", 6),
         _const("s_out", acc * 2**7), _const("w", w)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                   helper.make_opsetid(QONNX, version)])


def inputs(scale_x: float, seed: int = 0) -> np.ndarray:
    """Codes of the 8-bit input grid plus an offset of at most 0.4 steps: never a tie."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(-128, 128, size=(BATCH, K))
    return ((codes + rng.uniform(-0.4, 0.4, size=codes.shape)) * scale_x).astype(np.float32)


def qonnx_reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    execute = pytest.importorskip("qonnx.core.onnx_exec", reason="the qonnx package is not "
                                  "installed (pip install qonnx)").execute_onnx
    wrapper = pytest.importorskip("qonnx.core.modelwrapper").ModelWrapper
    infer_shapes = pytest.importorskip("qonnx.transformation.infer_shapes").InferShapes
    wrapped = wrapper(copy.deepcopy(model)).transform(infer_shapes())
    return execute(wrapped, {"x": x})["y"]


def compiled(model: onnx.ModelProto, x: np.ndarray, tmp: Path):
    path, calib = tmp / "trunc.onnx", tmp / "calib.npz"
    onnx.save(model, path)
    np.savez(calib, x=x)
    return compile_model(path, 8, "fixed", calib=calib)


CASES = [(1, mode, 1, 0) for mode in MODES] + [
    (2, mode, signed, narrow) for mode in MODES for signed, narrow in ((1, 0), (1, 1), (0, 0))]


@pytest.mark.parametrize("version,mode,signed,narrow", CASES)
def test_compiled_trunc_equals_qonnx_executor(version, mode, signed, narrow, tmp_path):
    model = trunc_graph(version, mode, signed, narrow)
    x = inputs(2.0**-4)
    result = compiled(model, x, tmp_path)
    assert [n.op_type for n in result.integer.nodes] == ["Quantize", "QGemm", "QTrunc",
                                                          "Dequantize"]
    _, floats = interpreter_outputs(result.integer, x)
    reference = qonnx_reference(model, x)
    np.testing.assert_array_equal(floats, reference)
    codes = np.round(reference / (2.0**-7 if version == 1 else 2.0**-7 * 2**7))
    assert len(np.unique(codes)) > 8  # the outputs vary: a real test of the rounding
    if version == 2:  # the clamp of the 6-bit output is reached (narrow: -31; unsigned: 0)
        assert codes.min() == (-31 if narrow else -32) if signed else codes.min() == 0
        assert codes.max() == 31 or not signed


def test_trunc_with_a_scale_that_is_not_a_power_of_two(tmp_path):
    """Affine grids (scale_x = 0.05): the same exact equality."""
    model = trunc_graph(2, "ROUND", scale_x=0.05)
    x = inputs(0.05, seed=3)
    result = compiled(model, x, tmp_path)
    assert result.config.scheme == "affine"
    _, floats = interpreter_outputs(result.integer, x)
    np.testing.assert_array_equal(floats, qonnx_reference(model, x))


@pytest.mark.parametrize("mode", ["ROUND", "HALF_DOWN", "UP"])
def test_trunc_c_library_equals_the_interpreter(mode, tmp_path):
    assert not missing_tools("gcc"), "gcc is required: the C backend is part of the suite"
    x = inputs(2.0**-4, seed=4)
    result = compiled(trunc_graph(2, mode, 1, 1), x, tmp_path)
    out = tmp_path / "out"
    write_outdir(result, out, target="c", name="trunc", samples=x[:4])
    codes, floats = interpreter_outputs(result.integer, x)
    name = json.loads((out / "summary.json").read_text())["name"]
    exe = build_host(out, name, out / "host")
    got_codes, got_floats = run_host(exe, x, codes.dtype, codes.shape[1], out)
    np.testing.assert_array_equal(got_codes, codes)
    np.testing.assert_array_equal(got_floats.view(np.uint32), floats.view(np.uint32))


def test_trunc_with_a_zero_point_is_refused_in_one_line(tmp_path):
    model = trunc_graph(1, "FLOOR")
    for init in model.graph.initializer:
        if init.name == "zero":
            init.CopyFrom(_const("zero", 0.0))
    trunc = model.graph.node[-1]
    trunc.input[2] = "z_trunc"
    model.graph.initializer.append(_const("z_trunc", 3.0))
    path = tmp_path / "zp.onnx"
    onnx.save(model, path)
    np.savez(tmp_path / "calib.npz", x=inputs(2.0**-4))
    with pytest.raises(QccError, match="zero point of 0 only"):
        compile_model(path, 8, "fixed", calib=tmp_path / "calib.npz")
    result = run_qcc("compile", path, "--calib", tmp_path / "calib.npz", "-o", tmp_path / "o")
    assert result.returncode == 1 and result.stderr.startswith("qcc: error: Trunc 'trunc'")
    assert len(result.stderr.splitlines()) == 1 and not (tmp_path / "o").exists()
