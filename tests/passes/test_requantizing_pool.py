"""Average pools with their own output format (qcc.QAveragePool, passes/quantize_graph.py):
which pools become one, and their codes against the exactly rounded mean of the input codes."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from backends.numpy_int import run_integer
from passes.calibrate import calibrate
from passes.quantize_graph import QuantConfig, quantize_graph
from qcc.core.numerics.rounding import round_half_away
from qcc.core.onnx_import import import_model


def pooled_model(pool: str, **attrs: object):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(6, 3, 3, 3)).astype(np.float32), "w")
    wf = numpy_helper.from_array(rng.normal(size=(4, 6)).astype(np.float32), "wf")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node(pool, ["r"], ["p"], **attrs),
             helper.make_node("GlobalMaxPool", ["p"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "wf"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 3, 8, 8])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["N", 4])], [w, wf])
    return import_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


CASES = [("GlobalAveragePool", {}, True),
         ("AveragePool", {"kernel_shape": [2, 2], "strides": [2, 2]}, True),
         ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1],
                          "count_include_pad": 1}, True),
         # padding that does not count: windows of 4, 6 and 9 taps, one rounding each is not
         # one multiplier, so the pool keeps its input's format
         ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, False)]


@pytest.mark.parametrize("scheme", ["fixed", "affine"])
@pytest.mark.parametrize("pool,attrs,requantizes", CASES)
def test_pool_codes_are_the_rounded_mean_in_the_output_format(pool, attrs, requantizes,
                                                              scheme) -> None:
    graph = pooled_model(pool, **attrs)
    x = np.random.default_rng(1).normal(size=(16, 3, 8, 8)).astype(np.float32)
    integer = quantize_graph(graph, calibrate(graph, x), QuantConfig(scheme=scheme))
    pools = [n for n in integer.nodes if "Pool" in n.op_type and "Max" not in n.op_type]
    assert [n.op_type for n in pools] == ["QAveragePool" if requantizes else pool]
    if not requantizes:
        return
    node = pools[0]
    values, _ = run_integer(integer, {"x": x[:4]}, keep_all=True)
    codes_in = values[node.inputs[0].name].astype(np.int64)
    codes_out = values[node.outputs[0].name].astype(np.int64)
    x_spec, y_spec = node.inputs[0].quant, node.outputs[0].quant
    s_x = x_spec.scale if x_spec.format == "affine" else x_spec.step
    s_y = y_spec.scale if y_spec.format == "affine" else y_spec.step
    zx, zy = x_spec.zero_point or 0, y_spec.zero_point or 0
    # the float mean of the real values the input codes stand for (padding counts as 0)
    real = (codes_in - zx) * s_x
    kernel = attrs.get("kernel_shape", list(real.shape[2:]))
    pads = attrs.get("pads", [0, 0, 0, 0])
    strides = attrs.get("strides", [1, 1])
    padded = np.pad(real, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (padded.shape[2] - kernel[0]) // strides[0] + 1
    ow = (padded.shape[3] - kernel[1]) // strides[1] + 1
    mean = np.zeros(codes_out.shape)
    for i in range(oh):
        for j in range(ow):
            window = padded[:, :, i * strides[0]:i * strides[0] + kernel[0],
                            j * strides[1]:j * strides[1] + kernel[1]]
            mean[:, :, i, j] = window.mean(axis=(2, 3))
    expected = np.clip(round_half_away(mean / s_y) + zy, node.attrs["out_lo"],
                       node.attrs["out_hi"])
    # exact but for the 23-bit multiplier's rounding of s_x / (n·s_y): at most one LSB
    assert np.abs(codes_out - expected).max() <= 1
    assert np.mean(codes_out == expected) > 0.95


def test_training_graphs_keep_pools_on_their_input_format() -> None:
    """The training step's backward runs pools on the input's format."""
    graph = pooled_model("GlobalAveragePool")
    x = np.random.default_rng(1).normal(size=(16, 3, 8, 8)).astype(np.float32)
    integer = quantize_graph(graph, calibrate(graph, x), QuantConfig(for_training=True))
    assert "GlobalAveragePool" in [n.op_type for n in integer.nodes]
