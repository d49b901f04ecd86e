"""`qcc qat` as a user runs it: QAT.onnx with explicit quantizers and α over training, compiled
into integers equal to the fake-quantized model (NumPy interpreter and C bit for bit), the
seeds/004 accuracy targets on examples/digits, and bad input refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from backends.c.build import build_host, missing_tools, run_host
from qcc.core.errors import QccError
from qcc.core.float_train import accuracy
from qcc.core.onnx_import import import_model
from qcc.driver.c_check import interpreter_outputs
from qcc.driver.outdir import load_outdir
from qcc.driver.pipeline import compile_model
from qcc.driver.qat import QatOptions, train_qat
from tests.conftest import run_qcc

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits"
QONNX = "qonnx.custom_op.general"


def qat(tmp: Path, *args: str, name: str = "qat.onnx") -> tuple[Path, str]:
    out = tmp / name
    result = run_qcc("qat", DIGITS / "digits.onnx", "--train-data", DIGITS / "train.npz",
                     "--val-data", DIGITS / "test.npz", *args, "-o", out)
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def eval_outdir(outdir: Path) -> dict:
    result = run_qcc("eval", outdir, "--data", DIGITS / "test.npz")
    assert result.returncode == 0, result.stderr
    return json.loads((outdir / "eval.json").read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return qat(tmp_path_factory.mktemp("qat"), "--scheme", "apot", "--bits", "4",
               "--epochs", "2")


def test_qat_writes_explicit_quantizers_and_alpha_history(trained):
    path, stdout = trained
    model = onnx.load(str(path))
    kinds = {(n.domain, n.op_type) for n in model.graph.node}
    assert ("qcc", "APoTQuant") in kinds  # weights and activations
    assert (QONNX, "Quant") in kinds  # the int32 bias on the accumulator grid
    assert {"ReduceMean", "Sqrt", "Div"} <= {op for _, op in kinds}  # WN, eq. 9
    assert {o.domain for o in model.opset_import} >= {"", "qcc", QONNX}
    side = json.loads(path.with_name("qat.qat.json").read_text())
    assert json.loads(next(p.value for p in model.metadata_props if p.key == "qcc.qat")) == side
    assert len(side["epochs"]) == 2 and side["epochs"][-1]["val_accuracy"] > 0.9
    moved = 0
    for layer in ("conv1", "conv2", "fc1", "fc2"):
        for role in ("weight", "activation"):
            history = side["alpha"][layer][role]
            assert len(history) == 3  # initial, after each epoch
            moved += history[-1] != history[0]
    assert moved == 8  # every learned α moves (eq. 8)
    assert "conv1: α_A" in stdout


def test_qat_onnx_float_forward_is_the_trained_model(trained, tmp_path):
    path, _ = trained
    side = json.loads(path.with_name("qat.qat.json").read_text())
    test = np.load(DIGITS / "test.npz")
    assert accuracy(import_model(path), test["x"], test["y"]) == side["epochs"][-1][
        "val_accuracy"]


def test_same_seed_same_model():
    train = np.load(DIGITS / "train.npz")
    runs = []
    for _ in range(2):
        run = train_qat(import_model(DIGITS / "digits.onnx"), train["x"][:300],
                        train["y"][:300], QatOptions("affine", 3, epochs=1, seed=7),
                        progress=False)
        runs.append({n: v.const for n, v in run.qat.graph.values.items() if v.is_const})
    assert runs[0].keys() == runs[1].keys()
    for name in runs[0]:
        np.testing.assert_array_equal(runs[0][name], runs[1][name])


@pytest.mark.slow
def test_compile_equals_fake_quantized_and_c_is_bit_exact(trained, tmp_path):
    path, _ = trained
    out = tmp_path / "out"
    result = run_qcc("compile", path, "--calib", DIGITS / "calib.npz", "--target", "c",
                     "-o", out)
    assert result.returncode == 0, result.stderr
    report = eval_outdir(out)
    assert report["p_m"] <= 0.005  # p_m against the fake-quantized float model
    precision = json.loads((out / "precision.json").read_text())
    assert {(layer["B_W"], layer["B_A"]) for layer in precision["layers"]} == {(4, 4)}
    assert not missing_tools("gcc"), "gcc is required: the C backend is part of the suite"
    # the graph the C was emitted from (model.qcc.onnx stores Dequantize's scale as an ONNX
    # float attribute, i.e. float32: reloaded, its float outputs can be 1 ulp off)
    integer = compile_model(path, 8, "fixed", calib=DIGITS / "calib.npz").integer
    assert np.array_equal(load_outdir(out).integer.values[next(
        n for n in integer.values if n.startswith("conv1_w"))].const,
        integer.values[next(n for n in integer.values if n.startswith("conv1_w"))].const)
    xs = np.load(DIGITS / "test.npz")["x"][:50]
    codes, floats = interpreter_outputs(integer, xs)
    name = json.loads((out / "summary.json").read_text())["name"]
    exe = build_host(out, name, out / "host")
    got_codes, got_floats = run_host(exe, xs, codes.dtype, codes.shape[1], out)
    np.testing.assert_array_equal(got_codes, codes)
    np.testing.assert_array_equal(got_floats.view(np.uint32), floats.view(np.uint32))


@pytest.mark.slow
@pytest.mark.parametrize("scheme,bits,epochs,lr,allowed", [
    ("apot", 4, 10, 0.02, 0.005),  # W4A4 within 0.5 points of float
    ("apot", 3, 10, 0.02, 0.015),  # W3A3 within 1.5
    ("binary", 1, 15, 0.05, 0.02),  # binary weights, 8-bit activations, within 2
])
def test_digits_accuracy_targets(scheme, bits, epochs, lr, allowed, tmp_path):
    path, _ = qat(tmp_path, "--scheme", scheme, "--bits", str(bits), "--epochs", str(epochs),
                  "--lr", str(lr))
    out = tmp_path / "out"
    assert run_qcc("compile", path, "--calib", DIGITS / "calib.npz", "-o", out).returncode == 0
    report = eval_outdir(out)
    test = np.load(DIGITS / "test.npz")
    float_acc = accuracy(import_model(DIGITS / "digits.onnx"), test["x"], test["y"])
    assert report["integer_accuracy"] >= float_acc - allowed
    assert report["p_m"] <= 0.005
    if scheme == "binary":  # post-training binary is far worse
        ptq = tmp_path / "ptq"
        assert run_qcc("compile", DIGITS / "digits.onnx", "--scheme", "binary", "--bits", "8",
                       "--calib", DIGITS / "calib.npz", "-o", ptq).returncode == 0
        assert eval_outdir(ptq)["integer_accuracy"] < float_acc - 0.2


# -- bad input ----------------------------------------------------------------------------------
def _one_line_error(result, text: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qcc: error:") and text in lines[0], lines


def test_training_data_without_labels(tmp_path):
    np.savez(tmp_path / "x_only.npz", x=np.load(DIGITS / "train.npz")["x"])
    out = tmp_path / "qat.onnx"
    result = run_qcc("qat", DIGITS / "digits.onnx", "--train-data", tmp_path / "x_only.npz",
                     "-o", out)
    _one_line_error(result, "y")
    assert not out.exists() and not (tmp_path / "qat.qat.json").exists()


def _quant_model(path: Path, domain: str = QONNX, scale: float = 0.05,
                 bits_input: bool = False) -> Path:
    w = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    inputs = [helper.make_tensor_value_info("x", 1, [None, 4])]
    if bits_input:
        inputs.append(helper.make_tensor_value_info("bits", 1, []))
    inits = [numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(np.float32(scale), "s"),
             numpy_helper.from_array(np.float32(0), "z")]
    if not bits_input:
        inits.append(numpy_helper.from_array(np.float32(4), "bits"))
    graph = helper.make_graph(
        [helper.make_node("Quant", ["w", "s", "z", "bits"], ["wq"], domain=domain, signed=1,
                          narrow=1),
         helper.make_node("Gemm", ["x", "wq"], ["y"], transB=1)], "m", inputs,
        [helper.make_tensor_value_info("y", 1, [None, 3])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                      helper.make_opsetid(domain, 1)]), path)
    return path


BAD_QUANTIZERS = [
    ({"domain": "brevitas.custom"}, "unsupported op brevitas.custom.Quant"),
    ({"scale": 0.0}, "scale must be > 0"),
    ({"scale": -1.0}, "scale must be > 0"),
    ({"bits_input": True}, "must be a constant"),
]


@pytest.mark.parametrize("kwargs,text", BAD_QUANTIZERS[:2])
def test_bad_quantizers_refused_in_one_line(kwargs, text, tmp_path):
    model = _quant_model(tmp_path / "bad.onnx", **kwargs)
    out = tmp_path / "out"
    _one_line_error(run_qcc("compile", model, "-o", out), text)
    assert not out.exists()


@pytest.mark.parametrize("kwargs,text", BAD_QUANTIZERS)
def test_bad_quantizers_are_input_errors(kwargs, text, tmp_path):
    """In process (the CLI prints every QccError as the one line above)."""
    with pytest.raises(QccError, match=text):
        compile_model(_quant_model(tmp_path / "bad.onnx", **kwargs), 8, "fixed")


def test_good_quant_model_compiles(tmp_path):
    """The same little graph with valid parameters compiles: the errors above are the input's."""
    model = _quant_model(tmp_path / "good.onnx")
    result = run_qcc("compile", model, "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    precision = json.loads((tmp_path / "out" / "precision.json").read_text())
    assert precision["layers"][0]["B_W"] == 4


def test_progressive_widths_train_in_turn():
    """--progressive 4,3: W4A4 first, then the same quantizers at W3A3 (seeds/004 §4)."""
    train, test = np.load(DIGITS / "train.npz"), np.load(DIGITS / "test.npz")
    run = train_qat(import_model(DIGITS / "digits.onnx"), train["x"][:200], train["y"][:200],
                    QatOptions("apot", 3, epochs=1, progressive=(4, 3)), test["x"][:50],
                    test["y"][:50], progress=False)
    assert [(e["bits"], e["act_bits"]) for e in run.epochs] == [(4, 4), (3, 3)]
    graph = run.qat.graph
    assert {graph.node(q.node).attrs["bits"] for q in run.qat.quantizers} == {3}
