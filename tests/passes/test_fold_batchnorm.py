"""fold_batchnorm: the graph computes the same function before and after, with no BN left."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from passes import run_passes
from qcc import zoo
from qcc.core.float_exec import run_float
from qcc.core.onnx_import import import_model


def test_resnet8_folds_all_batchnorms() -> None:
    model = zoo.resnet8()
    g = run_passes(import_model(model), ["fold_batchnorm"])
    g.check()
    assert not [n for n in g.nodes if n.op_type == "BatchNormalization"]
    assert g.history == ["fold_batchnorm: folded 7 BatchNormalization nodes"]
    x = np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString())
    expected = np.concatenate([sess.run(None, {"input": x[i:i + 1]})[0] for i in range(4)])
    got = np.concatenate([run_float(g, {"input": x[i:i + 1]})["output"] for i in range(4)])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("with_bias", [True, False])
def test_gemm_batchnorm_as_graph_output(trans_b: int, with_bias: bool) -> None:
    rng = np.random.default_rng(trans_b)
    w = rng.normal(size=(6, 5) if trans_b else (5, 6)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    for name, a in [("s", rng.uniform(0.5, 2, 6)), ("b", rng.normal(size=6)),
                    ("m", rng.normal(size=6)), ("v", rng.uniform(0.5, 2, 6)),
                    ("c", rng.normal(size=6))]:
        inits.append(numpy_helper.from_array(a.astype(np.float32), name))
    gemm_inputs = ["x", "w", "c"] if with_bias else ["x", "w"]
    nodes = [helper.make_node("Gemm", gemm_inputs, ["h"], transB=trans_b, alpha=0.5, beta=2.0),
             helper.make_node("BatchNormalization", ["h", "s", "b", "m", "v"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [3, 5])],
                              [helper.make_tensor_value_info("y", 1, [3, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    x = rng.normal(size=(3, 5)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    g = run_passes(import_model(model), ["fold_batchnorm"])
    assert [n.op_type for n in g.nodes] == ["Gemm"] and g.outputs[0].name == "y"
    np.testing.assert_allclose(run_float(g, {"x": x})["y"], expected, rtol=1e-5, atol=1e-5)


def test_shared_conv_output_is_not_folded() -> None:
    """A Conv output read by BN and by another node must stay as it is."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(2, 2, 1, 1)).astype(np.float32), "w")]
    inits += [numpy_helper.from_array(np.ones(2, np.float32), n) for n in "sbmv"]
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"]),
             helper.make_node("BatchNormalization", ["h", "s", "b", "m", "v"], ["y"]),
             helper.make_node("Add", ["h", "y"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 2, 3, 3])],
                              [helper.make_tensor_value_info("z", 1, [1, 2, 3, 3])], inits)
    g = run_passes(import_model(helper.make_model(graph)), ["fold_batchnorm"])
    assert "BatchNormalization" in [n.op_type for n in g.nodes] and not g.history
