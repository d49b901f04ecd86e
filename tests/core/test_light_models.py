"""The nine real-architecture "light" models of ONNX's backend suite run through qcc's float
interpreter and reproduce the outputs stored next to them in the onnx wheel.

The light models (AlexNet, DenseNet-121, Inception v1/v2, ResNet-50, ShuffleNet, SqueezeNet,
VGG-19, ZFNet-512) keep the full architectures at 224x224 but make every weight a
ConstantOfShape; biases and BatchNormalization statistics are real arrays. The input is what
onnx's backend runner feeds them: `Runner.generate_dummy_data(x, seed=0, name=..., random=False)`,
reused from onnx, not re-implemented. Each model is a few GFLOPs, so one run per model.

The stored outputs are nearly degenerate: with constant weights the 1000 logits are equal, so
eight of the nine stored outputs are softmax(equal logits) = 0.001. The test therefore also
compares the logits themselves (the input of the final Softmax) with onnxruntime.

Both run single-threaded: on a loaded 2-core machine multi-threaded OpenBLAS slows small GEMMs
down by 10-100x, and onnxruntime's constant folding of the 400 MB ConstantOfShape weights costs
more than running them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper
from onnx.backend.test.runner import Runner
from threadpoolctl import threadpool_limits

from qcc.core.float_exec import run_float
from qcc.core.onnx_import import import_model

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = sorted(p.stem for p in LIGHT.glob("light_*.onnx"))


def test_all_nine_models_are_present() -> None:
    assert len(MODELS) == 9, MODELS


def dummy_inputs(model: onnx.ModelProto, name: str) -> dict[str, np.ndarray]:
    """The feeds onnx's backend runner generated when it stored the reference outputs."""
    initializers = {t.name for t in model.graph.initializer}
    return {x.name: Runner.generate_dummy_data(x, seed=0, name=name, random=False)
            for x in model.graph.input if x.name not in initializers}


def stored_output(name: str) -> np.ndarray:
    tensor = onnx.TensorProto()
    tensor.ParseFromString((LIGHT / f"{name}_output_0.pb").read_bytes())
    return numpy_helper.to_array(tensor)


def logits_name(model: onnx.ModelProto) -> str | None:
    """The input of the Softmax that produces the model output, if there is one."""
    last = model.graph.node[-1]
    return last.input[0] if last.op_type == "Softmax" else None


def onnxruntime_value(model: onnx.ModelProto, name: str, feeds: dict[str, np.ndarray]
                      ) -> np.ndarray:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    return sess.run([name], feeds)[0]


@pytest.mark.parametrize("name", MODELS)
def test_light_model_matches_stored_output(name: str) -> None:
    model = onnx.load(str(LIGHT / f"{name}.onnx"))
    feeds = dummy_inputs(model, name)
    graph = import_model(model)
    logits = logits_name(model)
    if logits is not None:
        graph.outputs.append(graph.values[logits])
    with threadpool_limits(1):
        out = run_float(graph, feeds)
    got = out[graph.outputs[0].name]
    expected = stored_output(name)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)
    if logits is not None:
        reference = onnxruntime_value(model, logits, feeds)
        scale = float(np.abs(reference).max())
        np.testing.assert_allclose(out[logits], reference, rtol=1e-4, atol=1e-4 * scale)
