"""The float interpreter matches onnxruntime (1e-4 relative) on the benchmark architectures."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from qcc import zoo
from qcc.core.float_exec import run_float
from qcc.core.onnx_import import import_model


@pytest.mark.parametrize("name", sorted(zoo.MODELS))
def test_matches_onnxruntime(name: str) -> None:
    model = zoo.MODELS[name]()
    g = import_model(model)
    shape = g.inputs[0].shape
    sess = ort.InferenceSession(model.SerializeToString())
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.normal(size=shape).astype(np.float32)
        expected = sess.run(None, {"input": x})[0]
        got = run_float(g, {"input": x})["output"]
        scale = np.abs(expected).max()
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * scale)
