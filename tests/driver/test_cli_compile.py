"""`qcc compile`, `run OUTDIR`, `eval` and `inspect OUTDIR` as a user runs them, and their bad
input: one line, non-zero exit, and no OUTDIR left behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from tests.conftest import run_qcc

DIGITS = Path(__file__).resolve().parents[2] / "examples" / "digits"


def assert_failed_cleanly(result, outdir: Path, *fragments: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not outdir.exists()
    assert not [p for p in outdir.parent.iterdir() if p.name.startswith(f".{outdir.name}")]


@pytest.fixture(scope="module")
def digits_8bit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "d8"
    result = run_qcc("compile", DIGITS / "digits.onnx", "--bits", "8", "--calib",
                     DIGITS / "calib.npz", "-o", out)
    assert result.returncode == 0, result.stderr
    return out


def test_compile_writes_outdir(digits_8bit: Path) -> None:
    assert {p.name for p in digits_8bit.iterdir()} >= {"model.qcc.onnx", "reference.onnx",
                                                      "precision.json"}
    report = json.loads((digits_8bit / "precision.json").read_text())
    assert [layer["B_W"] for layer in report["layers"]] == [8, 8, 8, 8]


def test_eval_and_run_outdir(digits_8bit: Path, tmp_path: Path) -> None:
    result = run_qcc("eval", digits_8bit, "--data", DIGITS / "test.npz")
    assert result.returncode == 0, result.stderr
    assert "p_m" in result.stdout and "integer accuracy" in result.stdout
    x = np.load(DIGITS / "test.npz")["x"][:1]
    np.save(tmp_path / "x.npy", x)
    result = run_qcc("run", digits_8bit, "--input", tmp_path / "x.npy", "--output",
                     tmp_path / "y.npy")
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "y.npy").shape == (1, 10)


def test_overrides_set_first_and_last_layer(tmp_path: Path) -> None:
    overrides = tmp_path / "o.json"
    overrides.write_text(json.dumps({"@first": {"bits": 8}, "@last": {"bits": 8}}))
    out = tmp_path / "o4"
    result = run_qcc("compile", DIGITS / "digits.onnx", "--bits", "4", "--overrides", overrides,
                     "--calib", DIGITS / "calib.npz", "-o", out)
    assert result.returncode == 0, result.stderr
    bits = [layer["B_W"] for layer in json.loads((out / "precision.json").read_text())["layers"]]
    assert bits == [8, 4, 4, 8]


def _no_weights_model(path: Path) -> Path:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", 1, [1, 4])],
                              [helper.make_tensor_value_info("y", 1, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _near_tie_model(path: Path) -> Path:
    """Two logits 1e-6 apart, their weights inside one power-of-two range (so per-channel
    ranges do not separate them either): no precision up to 16 bits keeps them apart."""
    w = np.stack([np.full(4, 0.75), np.full(4, 0.75 * (1 + 1e-6))], axis=1).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", 1, [1, 4])],
                              [helper.make_tensor_value_info("y", 1, [1, 2])],
                              [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.mark.slow
def test_bad_inputs(tmp_path: Path) -> None:
    model = DIGITS / "digits.onnx"
    x = np.load(DIGITS / "calib.npz")["x"]
    out = tmp_path / "out"
    nan = x.copy()
    nan[3, 0, 2, 2] = np.nan
    inf = x.copy()
    inf[0, 0, 0, 0] = np.inf
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    cases = [
        (["--calib", tmp_path / "missing.npz"], "no such file"),
        (["--calib", tmp_path / "broken.npz"], "not a readable .npz"),
        (["--calib", _npz(tmp_path / "shape.npz", x=x[:, :, :4, :4])], "shape"),
        (["--calib", _npz(tmp_path / "dtype.npz", x=x.astype(np.float64))], "dtype"),
        (["--calib", _npz(tmp_path / "nokey.npz", images=x)], "no array 'x'"),
        (["--calib", _npz(tmp_path / "nan.npz", x=nan)], "NaN"),
        (["--calib", _npz(tmp_path / "inf.npz", x=inf)], "NaN or Inf"),
        (["--bits", "17"], "1 to 16"),
        (["--bits", "0"], "1 to 16"),
        (["--scheme", "float16"], "unknown scheme"),
    ]
    for args, fragment in cases:
        if "--bits" not in args:
            args = [*args, "--bits", "auto"]
        assert_failed_cleanly(run_qcc("compile", model, *args, "-o", out), out, fragment)


def test_missing_override_layer(tmp_path: Path) -> None:
    overrides = tmp_path / "o.json"
    overrides.write_text(json.dumps({"conv9": {"bits": 8}}))
    out = tmp_path / "out"
    assert_failed_cleanly(run_qcc("compile", DIGITS / "digits.onnx", "--overrides", overrides,
                                  "-o", out), out, "no weighted layer named 'conv9'")


def test_model_without_weighted_layer(tmp_path: Path) -> None:
    out = tmp_path / "out"
    model = _no_weights_model(tmp_path / "relu.onnx")
    assert_failed_cleanly(run_qcc("compile", model, "--bits", "auto", "-o", out), out,
                          "no weighted layer")


def test_unreachable_pm_target(tmp_path: Path) -> None:
    """Enough held-out samples (350 >= 299) to certify 1 %, but no precision reaches it; and
    8 held-out samples can never certify 1 % (the Clopper-Pearson bound of 0 of 8 is 31 %)."""
    out = tmp_path / "out"
    model = _near_tie_model(tmp_path / "tie.onnx")
    x = np.random.default_rng(0).uniform(1, 2, (700, 4)).astype(np.float32)
    calib = _npz(tmp_path / "c.npz", x=x)
    assert_failed_cleanly(run_qcc("compile", model, "--bits", "auto", "--calib", calib,
                                  "--pm-target", "0.01", "-o", out), out,
                          "no B_min up to 16 bits certifies p_m <= 1 %")
    few = _npz(tmp_path / "few.npz", x=x[:16])
    assert_failed_cleanly(run_qcc("compile", model, "--bits", "auto", "--calib", few,
                                  "--pm-target", "0.01", "-o", out), out,
                          "cannot be certified with 8 held-out samples",
                          "at least 299 held-out samples")


def test_existing_outdir_survives_a_failed_compile(digits_8bit: Path, tmp_path: Path) -> None:
    before = {p.name: p.read_bytes() for p in digits_8bit.iterdir()}
    result = run_qcc("compile", DIGITS / "digits.onnx", "--calib", tmp_path / "missing.npz",
                     "-o", digits_8bit)
    assert result.returncode != 0
    assert {p.name: p.read_bytes() for p in digits_8bit.iterdir()} == before


def test_inspect_outdir(digits_8bit: Path) -> None:
    result = run_qcc("inspect", digits_8bit)
    assert result.returncode == 0 and "B_W" in result.stdout and "conv1" in result.stdout
    as_json = json.loads(run_qcc("inspect", digits_8bit, "--json").stdout)
    assert as_json == json.loads((digits_8bit / "precision.json").read_text())


def test_prequantized_model_runs_as_onnxruntime_does(tmp_path: Path) -> None:
    """An onnxruntime-quantized (QDQ) model compiles with its own scales; `qcc run OUTDIR`
    gives onnxruntime's output bit for bit."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from qcc import zoo

    x = np.random.default_rng(0).normal(size=(8, 64)).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": x[i:i + 1]} for i in range(len(x))])

        def get_next(self) -> dict | None:
            return next(self.items, None)

    onnx.save(zoo.mlp_digits(), tmp_path / "mlp.onnx")
    quantize_static(str(tmp_path / "mlp.onnx"), str(tmp_path / "mlp_q.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ, per_channel=True)
    out = tmp_path / "q"
    result = run_qcc("compile", tmp_path / "mlp_q.onnx", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "already quantized" in result.stderr
    np.save(tmp_path / "x.npy", x[:1])
    result = run_qcc("run", out, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy")
    assert result.returncode == 0, result.stderr
    expected = ort.InferenceSession(str(tmp_path / "mlp_q.onnx")).run(None, {"input": x[:1]})[0]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)
    refused = run_qcc("compile", tmp_path / "mlp_q.onnx", "--bits", "auto", "-o", tmp_path / "a")
    assert_failed_cleanly(refused, tmp_path / "a", "already quantized")


@pytest.mark.parametrize("scale", [0.0, -0.5])
def test_qdq_model_with_bad_scale(tmp_path: Path, scale: float) -> None:
    inits = [numpy_helper.from_array(np.array(scale, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.uint8), "z"),
             numpy_helper.from_array(np.ones((4, 2), np.float32), "w")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
             helper.make_node("MatMul", ["xd", "w"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 4])],
                              [helper.make_tensor_value_info("y", 1, [1, 2])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              tmp_path / "bad.onnx")
    out = tmp_path / "out"
    assert_failed_cleanly(run_qcc("compile", tmp_path / "bad.onnx", "-o", out), out, "scale")


def test_sign_of_a_never_negative_tensor_is_named(tmp_path: Path) -> None:
    """--binary-activations on layers that read ReLU outputs: sign(x) is +1 everywhere, which
    compiles but cannot carry anything; the compile says so for each such layer."""
    result = run_qcc("compile", DIGITS / "digits.onnx", "--bits", "8", "--scheme", "binary",
                     "--binary-activations", "--calib", DIGITS / "calib.npz",
                     "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    named = [line for line in result.stderr.splitlines() if "never negative" in line]
    assert len(named) == 3 and all(line.startswith("qcc: note: layer ") for line in named)
