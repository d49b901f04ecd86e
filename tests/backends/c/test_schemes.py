"""Every scheme through the C backend, bit for bit against the NumPy integer interpreter on
100 inputs (with the extremes), built strict (-O2) and under -fsanitize=address,undefined.

Models: ResNet-8 (3x3 / 1x1 stride-2 convs, residual QAdd, GlobalAveragePool), digits (MaxPool,
Flatten, Gemm) and `kitchen_sink` below, a small graph built with onnx.helper that reaches
the other kernels: depthwise dilated conv with padding, grouped strided conv with asymmetric
pads, AveragePool (pads, count_include_pad = 0; and with count_include_pad = 1 as
qcc.QAveragePool), MaxPool (pads, ceil_mode), QAdd, pointwise stride-2 convs, Concat
(written in place), Transpose, Gemm without transB, GlobalAveragePool, MatMul. Its convs
read signed activations, so with --binary-activations the XNOR kernels see real signs and
padding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from backends.c.build import SANITIZE, build_host, missing_tools, run_host
from backends.c.library import FLASH_BUDGET, emit_library
from qcc import zoo
from qcc.driver.c_check import interpreter_outputs, sample_inputs
from qcc.driver.pipeline import compile_model

ROOT = Path(__file__).resolve().parents[3]
DIGITS = ROOT / "examples" / "digits"


def kitchen_sink(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def init(name: str, shape: tuple[int, ...], scale: float = 0.3) -> str:
        array = (rng.normal(size=shape) * scale).astype(np.float32)
        inits.append(numpy_helper.from_array(array, name))
        return name

    def node(op: str, inputs: list[str], out: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op, inputs, [out], name=f"{out}_node", **attrs))
        return out

    a = node("Conv", ["input", init("w1", (8, 4, 3, 3)), init("b1", (8,), 0.1)], "c1",
             pads=[1, 1, 1, 1])  # (1, 8, 9, 9), signed
    d = node("Conv", [a, init("wd", (8, 1, 3, 3)), init("bd", (8,), 0.1)], "dw", group=8,
             pads=[2, 2, 2, 2], dilations=[2, 2])
    g = node("Relu", [node("Conv", [a, init("wg", (8, 4, 3, 3))], "grp", group=2,
                           pads=[0, 1, 1, 0], strides=[2, 1])], "gr")
    p = node("AveragePool", [d], "ap", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 1],
             count_include_pad=0)
    m = node("MaxPool", [d], "mp", kernel_shape=[2, 2], strides=[2, 1], pads=[0, 0, 0, 1],
             ceil_mode=1)
    s = node("Add", [p, m], "sum")  # (1, 8, 5, 9)
    t1 = node("Conv", [s, init("w1x1", (6, 8, 1, 1))], "pw", strides=[2, 2])
    t2 = node("Conv", [s, init("w1x1b", (4, 8, 1, 1))], "pw2", strides=[2, 2])
    cat = node("Concat", [t1, t2], "cat", axis=1)  # (1, 10, 3, 5)
    flat = node("Flatten", [node("Transpose", [cat], "tr", perm=[0, 1, 3, 2])], "flat", axis=1)
    h = node("Relu", [node("Gemm", [flat, init("wf", (150, 12)), init("bf", (12,), 0.1)],
                           "fc")], "fr")
    # padding that counts (count_include_pad = 1): every window n = 4 taps, a QAveragePool
    g2 = node("AveragePool", [g], "ap2", kernel_shape=[2, 2], pads=[1, 0, 0, 1],
              count_include_pad=1)
    gf = node("Flatten", [node("GlobalAveragePool", [g2], "gap")], "gf", axis=1)
    node("MatMul", [node("Concat", [h, gf], "cat2", axis=1), init("wo", (20, 5))], "output")
    graph = helper.make_graph(
        nodes, "kitchen_sink", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                              [1, 4, 9, 9])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 5])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


# (model, scheme, bits, binary activations, what the emitted code must contain)
CASES = [
    ("kitchen_sink", "fixed", 8, False, ["depthwise conv", "im2col", "AveragePool",
                                         "qcc.QAveragePool",
                                         "written into their slices", "copy by index map"]),
    ("kitchen_sink", "fixed", 4, False, ["4-bit codes packed"]),
    ("kitchen_sink", "fixed", 16, False, ["16-bit codes", "int64_t"]),
    ("kitchen_sink", "affine", 8, False, ["im2col"]),
    ("kitchen_sink", "apot", 4, False, ["(shift-add)", "level indices"]),
    ("kitchen_sink", "pot", 4, False, ["(shift-add)"]),
    ("kitchen_sink", "ternary", 8, False, ["2-bit codes packed"]),
    ("kitchen_sink", "binary", 8, False, ["1-bit signs"]),
    ("kitchen_sink", "binary", 8, True, ["XNOR-popcount conv", "XNOR-popcount gemm"]),
    ("resnet8", "affine", 8, False, ["im2col"]),
    ("resnet8", "apot", 4, False, ["(shift-add)"]),
    ("resnet8", "ternary", 4, False, ["2-bit codes packed"]),
    ("resnet8", "fixed", 2, False, ["2-bit codes packed"]),
    ("digits", "pot", 4, False, ["(shift-add)"]),
    ("digits", "binary", 8, True, ["XNOR-popcount"]),
]


def case_id(case: tuple) -> str:
    model, scheme, bits, xnor, _ = case
    return f"{model}-{scheme}{bits}{'-xnor' if xnor else ''}"


def model_files(name: str, tmp: Path) -> tuple[Path, Path]:
    if name == "digits":
        return DIGITS / "digits.onnx", DIGITS / "calib.npz"
    model = kitchen_sink() if name == "kitchen_sink" else zoo.MODELS[name]()
    onnx.save(model, tmp / f"{name}.onnx")
    dims = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(3).normal(size=(32, *dims[1:])).astype(np.float32)
    np.savez(tmp / "calib.npz", x=x)
    return tmp / f"{name}.onnx", tmp / "calib.npz"


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_scheme_is_bit_exact(case: tuple, tmp_path: Path) -> None:
    name, scheme, bits, xnor, expected_text = case
    assert not missing_tools("gcc"), "gcc is required: the C backend is part of the test suite"
    model, calib = model_files(name, tmp_path)
    graph = compile_model(model, bits, scheme, calib=calib, binary_activations=xnor).integer
    out = tmp_path / "c"
    out.mkdir()
    summary = emit_library(graph, out, name, measure=not missing_tools("arm-none-eabi-gcc"))
    source = (out / f"{name}.c").read_text()
    for text in expected_text:  # the kernel variant this case is about was really emitted
        assert text in source, text
    xs = sample_inputs(graph, 100, seed=bits)
    codes, floats = interpreter_outputs(graph, xs)
    for opt, extra in (("-O2", ()), ("-O1", SANITIZE)):
        exe = build_host(out, name, out / f"host{opt}", opt=opt, extra=extra)
        got_codes, got_floats = run_host(exe, xs, codes.dtype, codes.shape[1], out)
        np.testing.assert_array_equal(got_codes, codes)
        np.testing.assert_array_equal(got_floats.view(np.uint32), floats.view(np.uint32))
    assert summary["arena_bytes"] <= 1.1 * summary["arena_lower_bound"]
    if summary["flash_bytes"] is not None:
        assert summary["flash_bytes"] <= summary["packed_weight_bytes"] + FLASH_BUDGET
