"""The CLI as a user runs it: inspect, run, and one clear line for each kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import run_qcc


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_version_and_help() -> None:
    assert run_qcc("--version").stdout.startswith("qcc, version")
    for cmd in ([], ["inspect"], ["run"]):
        result = run_qcc(*cmd, "--help")
        assert result.returncode == 0 and "Usage:" in result.stdout


def test_inspect_json_counts_macs(zoo_dir: Path) -> None:
    result = run_qcc("inspect", zoo_dir / "convnet_cifar.onnx", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    convs = [n for n in summary["nodes"] if n["op"] == "Conv"]
    assert convs[0]["macs"] == 64 * 32 * 32 * 3 * 9
    assert convs[0]["params"] == 64 * 3 * 9 + 64
    model = onnx.load(zoo_dir / "convnet_cifar.onnx")
    assert summary["totals"]["params"] == sum(int(np.prod(t.dims)) for t in
                                              model.graph.initializer)
    assert summary["totals"]["macs"] == sum(n["macs"] for n in summary["nodes"])
    table = run_qcc("inspect", zoo_dir / "convnet_cifar.onnx")
    assert "Conv" in table.stdout and "nodes" in table.stdout


def test_run_matches_onnxruntime(zoo_dir: Path, tmp_path: Path) -> None:
    model = zoo_dir / "resnet8.onnx"
    x = np.random.default_rng(1).normal(size=(1, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = run_qcc("run", model, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy")
    assert result.returncode == 0, result.stderr
    expected = ort.InferenceSession(str(model)).run(None, {"input": x})[0]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-4, atol=1e-5)


# -- bad input: one line, non-zero exit, no traceback, no output written -----------------------

def test_not_onnx(tmp_path: Path) -> None:
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a protobuf \x00\xff")
    assert_one_line_error(run_qcc("inspect", path), "not a valid ONNX model")


def test_truncated(zoo_dir: Path, tmp_path: Path) -> None:
    data = (zoo_dir / "mlp_digits.onnx").read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    assert_one_line_error(run_qcc("inspect", path), "truncated.onnx")


def test_missing_file(tmp_path: Path) -> None:
    assert_one_line_error(run_qcc("inspect", tmp_path / "nope.onnx"), "no such file")


def _one_node_model(op: str, name: str) -> onnx.ModelProto:
    node = helper.make_node(op, ["x"], ["y"], name=name)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, [1, 4])],
                              [helper.make_tensor_value_info("y", 1, [1, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_unsupported_op_names_op_and_node(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(_one_node_model("Erf", "my_erf"), path)
    assert_one_line_error(run_qcc("inspect", path), "Erf", "my_erf")


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../x.bin"])
def test_external_data_outside_folder(tmp_path: Path, location: str) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in {"location": location, "offset": "0", "length": "64"}.items():
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, [1, 4])],
                              [helper.make_tensor_value_info("y", 1, [1, 4])], [weight])
    path = folder / "m.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    assert_one_line_error(run_qcc("inspect", path), "outside the model's folder")


def test_external_data_inside_folder_loads(tmp_path: Path) -> None:
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    w = np.arange(16, dtype=np.float32).reshape(4, 4)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, [1, 4])],
                              [helper.make_tensor_value_info("y", 1, [1, 4])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    x = np.ones((1, 4), np.float32)
    np.save(tmp_path / "x.npy", x)
    result = run_qcc("run", tmp_path / "m.onnx", "--input", tmp_path / "x.npy",
                     "--output", tmp_path / "y.npy")
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), x @ w)


@pytest.mark.parametrize("array, fragment", [
    (np.zeros((1, 65), np.float32), "shape"),
    (np.zeros((1, 64), np.float64), "dtype"),
    (np.full((1, 64), np.nan, np.float32), "NaN"),
])
def test_bad_input_array(zoo_dir: Path, tmp_path: Path, array: np.ndarray, fragment: str) -> None:
    np.save(tmp_path / "x.npy", array)
    result = run_qcc("run", zoo_dir / "mlp_digits.onnx", "--input", tmp_path / "x.npy",
                     "--output", tmp_path / "y.npy")
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "y.npy").exists()


def test_input_not_npy(zoo_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "x.npy").write_text("garbage")
    assert_one_line_error(run_qcc("run", zoo_dir / "mlp_digits.onnx", "--input",
                                  tmp_path / "x.npy"), "not a readable .npy")
