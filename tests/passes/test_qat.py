"""passes/qat.py (insert_quantizers) and passes/fold_quantizers.py, each tested by executing the
graph before and after; QONNX graphs built to the QONNX specification with onnx.helper are run
by qcc's float interpreter against qonnx's own executor (where installed) and compiled."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from backends.numpy_int.interpreter import run_integer
from passes.calibrate import calibrate
from passes.fold_batchnorm import fold_batchnorm
from passes.fold_quantizers import fold_quantizers
from passes.qat import QAT_SCHEMES, insert_quantizers, set_bits, weight_format
from passes.quantize_graph import quantize_graph
from qcc.core.errors import QccError
from qcc.core.float_exec import run_float
from qcc.core.float_train import accuracy
from qcc.core.numerics import apot
from qcc.core.onnx_export import export_model
from qcc.core.onnx_import import import_model

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits"
QONNX = "qonnx.custom_op.general"


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    train, test = np.load(DIGITS / "train.npz"), np.load(DIGITS / "test.npz")
    return {"x": train["x"], "y": train["y"], "xt": test["x"], "yt": test["y"]}


def qat_graph(scheme: str, bits: int, act_bits: int, data, wn: bool = True, rcf: bool = True):
    graph = import_model(DIGITS / "digits.onnx")
    fold_batchnorm(graph)
    x = data["x"][:128]
    stats = calibrate(graph, x)
    env = run_float(graph, {"input": x}, keep_all=True)
    return insert_quantizers(graph, scheme, bits, act_bits, stats, env, wn=wn, rcf=rcf)


def test_apot_weights_are_wn_then_levels_times_sigma(data):
    """The weight a layer reads is (σ + ε) · α · Π(W̃/α) with W̃ = eq. 9 of the float weight."""
    float_graph = import_model(DIGITS / "digits.onnx")
    qat = qat_graph("apot", 4, 4, data)
    env = run_float(qat.graph, {"input": data["xt"][:4]}, keep_all=True)
    fmt = weight_format("apot", 4)
    for node in [n for n in qat.graph.nodes if n.op_type in ("Conv", "Gemm")]:
        w = float_graph.values[f"{node.name}.W"].const
        w_tilde, _, sigma = apot.weight_normalize(w)
        alpha = float(qat.graph.values[f"{node.name}_w_alpha"].const)
        expected = (sigma + 1e-5) * apot.rcf(w_tilde, alpha, fmt)
        np.testing.assert_allclose(env[node.inputs[1].name], expected, rtol=1e-5, atol=1e-6)
    assert len(qat.quantizers) == 8 and sum(q.learned for q in qat.quantizers) == 8
    assert {f"{n}_w_alpha" for n in ("conv1", "fc2")} <= set(qat.parameters)


@pytest.mark.parametrize("scheme", QAT_SCHEMES)
def test_every_scheme_keeps_the_model_at_8_bits(scheme, data):
    """Inserting 8-bit quantizers (binary, ternary: their one width, activations 8 bits) leaves
    a model that still classifies: the pass rewires, it does not break the forward."""
    float_acc = accuracy(import_model(DIGITS / "digits.onnx"), data["xt"], data["yt"])
    bits = {"binary": 1, "ternary": 2, "pot": 6}.get(scheme, 8)
    qat = qat_graph(scheme, bits, 8, data)
    acc = accuracy(qat.graph, data["xt"], data["yt"])
    if scheme in ("binary", "ternary"):  # coarse before any training, yet far above chance
        assert acc > 0.25
    else:  # WN drops μ, the layer's bias does not know it yet
        assert acc > float_acc - 0.03


def test_without_rcf_alpha_is_max_and_not_learned(data):
    qat = qat_graph("apot", 3, 3, data, rcf=False)
    weights = [q for q in qat.quantizers if q.role == "weight"]
    assert all(not q.learned and q.tracks for q in weights)
    env = run_float(qat.graph, {"input": data["xt"][:2]}, keep_all=True)
    for q in weights:
        assert float(qat.graph.values[q.alpha].const) == pytest.approx(
            float(np.max(np.abs(env[q.tracks]))), rel=1e-5)


def test_set_bits_moves_every_width(data):
    qat = qat_graph("affine", 5, 5, data)
    before = run_float(qat.graph, {"input": data["xt"][:8]}, keep_all=True)
    set_bits(qat, 3, 3)
    after = run_float(qat.graph, {"input": data["xt"][:8]}, keep_all=True)
    for q in qat.quantizers:
        assert len(np.unique(after[q.node])) <= (1 << q.bits) < len(np.unique(before[q.node]))


@pytest.mark.parametrize("scheme", ["apot", "affine", "fixed", "binary", "ternary"])
def test_fold_quantizers_integer_graph_equals_fake_quantized(scheme, data, tmp_path):
    """QAT graph -> ONNX -> import -> fold_quantizers -> quantize_graph: the reference is the
    fake-quantized forward, and the integer graph's decisions equal it."""
    bits = {"binary": 1, "ternary": 2}.get(scheme, 4)
    qat = qat_graph(scheme, bits, 4 if scheme in ("apot", "affine") else 8, data)
    path = tmp_path / "qat.onnx"
    onnx.save(export_model(qat.graph), path)
    imported = import_model(path)
    folded = fold_quantizers(imported, data["x"][:128])
    x = data["xt"]
    fake = run_float(qat.graph, {"input": x})["logits"]
    ref = run_float(folded.reference, {"input": x})["logits"]
    np.testing.assert_allclose(ref, fake, rtol=1e-4, atol=1e-4)
    integer = quantize_graph(folded.plain, folded.stats, folded.config)
    out, report = run_integer(integer, {"input": x})
    # every activation on its trained grid: the logits differ by the output's rounding alone
    # (an untrained low-bit model has exact ties, so argmax is not compared here)
    spec = integer.values["logits_codes"].quant
    step = spec.scale if spec.scale is not None else spec.step
    off = np.abs(out["logits"] - fake) > step * 0.5 + 1e-5
    saturated = (out["logits"] == out["logits"].max()) | (out["logits"] == out["logits"].min())
    assert np.all(saturated[off])  # the logit range comes from 128 calibration samples
    assert np.mean(off) < 0.002
    for layer in folded.layers:  # the trained widths are kept
        assert layer["B_W"] == bits


# -- QONNX graphs (Brevitas export_qonnx style) --------------------------------------------------
def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def brevitas_like(per_channel: bool, bipolar: bool, seed: int = 0, batch: int | None = None
                  ) -> onnx.ModelProto:
    """input -> Quant(int8 signed) -> Conv(W: Quant 4-bit narrow signed, per channel or tensor,
    or BipolarQuant) -> Relu -> Quant(uint4, zero point 1) -> MaxPool -> Flatten ->
    Gemm(W: Quant 6-bit narrow, per tensor) -> logits."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(scale=0.4, size=(4, 1, 3, 3))
    w2 = rng.normal(scale=0.2, size=(5, 36))
    # trained scales are not round numbers; round ones (0.1 / 64 against 0.12) make exact
    # rounding ties common, where QONNX rounds half to even and qcc half away from zero
    s1 = rng.uniform(0.05, 0.15, size=(4, 1, 1, 1)) if per_channel else 0.0917
    nodes = [
        helper.make_node("Quant", ["x", "s_in", "zero", "b8"], ["xq"], domain=QONNX,
                         signed=1, narrow=0, rounding_mode="ROUND"),
        (helper.make_node("BipolarQuant", ["w1", "s1"], ["w1q"], domain=QONNX) if bipolar else
         helper.make_node("Quant", ["w1", "s1", "zero", "b4"], ["w1q"], domain=QONNX,
                          signed=1, narrow=1, rounding_mode="ROUND")),
        helper.make_node("Quant", ["b1", "s_b1", "zero", "b32"], ["b1q"], domain=QONNX,
                         signed=1, narrow=0, rounding_mode="ROUND"),  # Brevitas' Int32Bias
        helper.make_node("Conv", ["xq", "w1q", "b1q"], ["c1"], "conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Quant", ["r1", "s_act", "zp_act", "b4"], ["r1q"], domain=QONNX,
                         signed=0, narrow=0, rounding_mode="ROUND"),
        helper.make_node("MaxPool", ["r1q"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Quant", ["w2", "s2", "zero", "b6"], ["w2q"], domain=QONNX,
                         signed=1, narrow=1, rounding_mode="ROUND"),
        helper.make_node("Quant", ["b2", "s_b2", "zero", "b32"], ["b2q"], domain=QONNX,
                         signed=1, narrow=0, rounding_mode="ROUND"),
        helper.make_node("Gemm", ["f", "w2q", "b2q"], ["logits"], "fc", transB=1),
    ]
    inits = [_const("w1", w1), _const("w2", w2), _const("s1", s1), _const("s2", 0.0291),
             _const("s_in", 1 / 64), _const("s_act", 0.1183), _const("zp_act", 1.0),
             _const("zero", 0.0), _const("b8", 8), _const("b4", 4), _const("b6", 6),
             _const("b32", 32), _const("b1", rng.normal(scale=0.1, size=4)),
             _const("b2", rng.normal(scale=0.1, size=5)),
             _const("s_b1", np.ravel(s1) / 64 * np.ones(4)), _const("s_b2", 0.1183 * 0.0291)]
    graph = helper.make_graph(nodes, "brevitas_like",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             [batch, 1, 6, 6])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                             [batch, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                   helper.make_opsetid(QONNX, 1)])


SHAPES = [(False, False), (True, False), (False, True)]


@pytest.mark.parametrize("per_channel,bipolar", SHAPES)
def test_qonnx_graph_equals_qonnx_executor(per_channel, bipolar):
    execute = pytest.importorskip("qonnx.core.onnx_exec", reason="the qonnx package is not "
                                  "installed (pip install qonnx)").execute_onnx
    model_wrapper = pytest.importorskip("qonnx.core.modelwrapper").ModelWrapper
    infer_shapes = pytest.importorskip("qonnx.transformation.infer_shapes").InferShapes
    model = brevitas_like(per_channel, bipolar, batch=3)
    x = np.random.default_rng(5).uniform(-2, 2, size=(3, 1, 6, 6)).astype(np.float32)
    wrapped = model_wrapper(copy.deepcopy(model)).transform(infer_shapes())
    ref = execute(wrapped, {"x": x})["logits"]
    ours = run_float(import_model(model), {"x": x})["logits"]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("per_channel,bipolar", SHAPES)
def test_qonnx_graph_compiles_to_its_own_codes(per_channel, bipolar):
    """The integer graph equals the float QONNX semantics up to activation rounding: its
    weights are the Quant codes exactly, its activations on the Quant grids."""
    model = brevitas_like(per_channel, bipolar)
    graph = import_model(model)
    x = np.random.default_rng(6).uniform(-2, 2, size=(400, 1, 6, 6)).astype(np.float32)
    folded = fold_quantizers(graph, x)  # the logits' range: no saturation on these inputs
    assert folded.config.scheme == "affine"
    widths = {layer["name"]: layer["B_W"] for layer in folded.layers}
    assert widths == {"conv": 1 if bipolar else 4, "fc": 6}
    integer = quantize_graph(folded.plain, folded.stats, folded.config)
    w1 = integer.values["conv_w"]
    assert set(np.unique(w1.const)) <= ({-1, 1} if bipolar else set(range(-7, 8)))
    ref = run_float(graph, {"x": x})["logits"]
    out, _ = run_integer(integer, {"x": x})
    # weights, biases (Int32 on the accumulator grid) and activations all on the QONNX grids:
    # the logits agree to the output's rounding, but where a value rounds at a tie
    diff = np.abs(out["logits"] - ref)
    assert np.mean(diff > 1e-3) < 0.005
    assert np.mean(out["logits"].argmax(1) != ref.argmax(1)) <= 0.005


def trunc_model() -> onnx.ModelProto:
    node = helper.make_node("Trunc", ["x", "s", "z", "bi", "bo"], ["y"], domain=QONNX,
                            rounding_mode="FLOOR")
    graph = helper.make_graph([node], "t", [helper.make_tensor_value_info("x", 1, [2, 8])],
                              [helper.make_tensor_value_info("y", 1, [2, 8])],
                              [_const("s", 0.25), _const("z", 0.0), _const("bi", 8),
                               _const("bo", 4)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                   helper.make_opsetid(QONNX, 1)])


def test_trunc_runs_as_qonnx_reference():
    trunc = pytest.importorskip("qonnx.custom_op.general.trunc", reason="qonnx not installed")
    x = np.random.default_rng(0).uniform(-30, 30, size=(2, 8)).astype(np.float32)
    np.testing.assert_allclose(run_float(import_model(trunc_model()), {"x": x})["y"],
                               trunc.trunc_v1(x, 0.25, 0.0, 8.0, 4.0, "FLOOR"))


def test_trunc_stays_with_its_grids_fixed():
    """fold_quantizers keeps a Trunc (quantize_graph lowers it to QTrunc) and fixes the grids
    on both sides: 8 signed bits at 0.25 in, 4 bits at 0.25 out (v1 keeps the scale);
    tests/driver/test_qonnx_trunc.py compiles it against qonnx's executor."""
    x = np.random.default_rng(1).uniform(-30, 30, size=(16, 8)).astype(np.float32)
    folded = fold_quantizers(import_model(trunc_model()), x)
    assert [n.op_type for n in folded.plain.nodes] == ["Trunc"]
    assert (folded.stats["x"].lo, folded.stats["x"].hi) == (-128 * 0.25, 127 * 0.25)
    assert (folded.stats["y"].lo, folded.stats["y"].hi) == (-8 * 0.25, 7 * 0.25)


def _model_with(node: onnx.NodeProto, inits: list, domain: str = QONNX) -> onnx.ModelProto:
    graph = helper.make_graph([node], "m", [helper.make_tensor_value_info("x", 1, [1, 4])],
                              [helper.make_tensor_value_info("y", 1, [1, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                   helper.make_opsetid(domain, 1)])


def test_bad_quantizers_are_one_line_errors():
    unknown = _model_with(helper.make_node("Quant", ["x", "s", "z", "b"], ["y"],
                                           domain="brevitas.custom"),
                          [_const("s", 1.0), _const("z", 0.0), _const("b", 4)], "brevitas.custom")
    with pytest.raises(QccError, match="unsupported op brevitas.custom.Quant"):
        import_model(unknown)
    odd_op = _model_with(helper.make_node("MultiThreshold", ["x", "s"], ["y"], domain=QONNX),
                         [_const("s", 1.0)])
    with pytest.raises(QccError, match="unsupported op qonnx.custom_op.general.MultiThreshold"):
        import_model(odd_op)
    runtime_bits = helper.make_model(helper.make_graph(
        [helper.make_node("Quant", ["x", "s", "z", "b"], ["y"], domain=QONNX)], "m",
        [helper.make_tensor_value_info("x", 1, [1, 4]),
         helper.make_tensor_value_info("b", 1, [])],
        [helper.make_tensor_value_info("y", 1, [1, 4])], [_const("s", 1.0), _const("z", 0.0)]),
        opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(QONNX, 1)])
    with pytest.raises(QccError, match="bit width .* must be a constant"):
        import_model(runtime_bits)
    negative = _model_with(helper.make_node("Quant", ["x", "s", "z", "b"], ["y"], domain=QONNX),
                           [_const("s", -0.5), _const("z", 0.0), _const("b", 4)])
    with pytest.raises(QccError, match="scale must be > 0"):
        import_model(negative)


def test_without_wn_the_quantizer_reads_the_weight(data):
    qat = qat_graph("apot", 4, 4, data, wn=False)
    ops = {n.op_type for n in qat.graph.nodes}
    assert "Sqrt" not in ops and "ReduceMean" not in ops
    conv = qat.graph.node("conv1")
    quantizer = conv.inputs[1].producer
    assert quantizer.op_type == "APoTQuant" and quantizer.inputs[0].name == "conv1.W"
