"""The importer validates the whole graph before anything runs (qcc/core/onnx_checks.py), and
the CLI turns whatever slips through into one line (issue 15). The valid model with two Relu
nodes appended (checked by onnx.checker and run by onnxruntime) is accepted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from qcc import zoo
from qcc.core import onnx_checks
from qcc.core.errors import QccError
from qcc.core.onnx_import import import_model
from qcc.driver import cli as cli_module
from qcc.driver.cli import main


def cli(*args: str, env: dict | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if not line.startswith("qcc: note:")]
    assert len(lines) == 1 and lines[0].startswith("qcc: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def mlp() -> onnx.ModelProto:
    return zoo.mlp_digits()


def refused(model: onnx.ModelProto, *fragments: str) -> None:
    with pytest.raises(QccError) as e:
        import_model(model)
    for fragment in fragments:
        assert fragment in str(e.value), str(e.value)


def test_dangling_input_is_refused_before_any_lookup() -> None:
    m = mlp()
    m.graph.node[2].input[0] = "nowhere"
    refused(m, "reads undefined tensor 'nowhere'")


def test_missing_initializer_is_refused() -> None:
    m = mlp()
    name = m.graph.initializer[0].name
    del m.graph.initializer[0]
    refused(m, f"undefined tensor {name!r}")


def test_a_cycle_is_refused_naming_a_node() -> None:
    m = mlp()
    m.graph.node[0].input[0] = m.graph.node[3].output[0]
    refused(m, "cycle through node")


def test_reversed_node_order_is_sorted_and_runs_the_same() -> None:
    m = mlp()
    r = onnx.ModelProto()
    r.CopyFrom(m)
    nodes = [onnx.NodeProto() for _ in m.graph.node]
    for target, source in zip(nodes, reversed(m.graph.node)):
        target.CopyFrom(source)
    del r.graph.node[:]
    r.graph.node.extend(nodes)
    assert [n.op_type for n in import_model(r).nodes] == [n.op_type for n in
                                                           import_model(m).nodes]


def test_a_tensor_defined_twice_is_refused() -> None:
    m = mlp()
    m.graph.node[1].output[0] = m.graph.node[0].output[0]
    refused(m, "defined twice")


@pytest.mark.parametrize("attribute, fragment", [
    (helper.make_attribute("transB", 1.5), "must be INT, got FLOAT"),
    (helper.make_attribute("transB", "yes"), "must be INT, got STRING"),
    (helper.make_attribute("colour", 1), "does not define"),
])
def test_wrong_attribute_types_and_names_are_refused(attribute: onnx.AttributeProto,
                                                     fragment: str) -> None:
    m = mlp()
    gemm = m.graph.node[0]
    kept = [a for a in gemm.attribute if a.name != attribute.name]
    del gemm.attribute[:]
    gemm.attribute.extend([*kept, attribute])
    refused(m, fragment)


def test_window_attributes_out_of_range_are_refused() -> None:
    m = zoo.convnet_cifar(width=4)
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    for a in conv.attribute:
        if a.name == "strides":
            a.ints[0] = 0
    refused(m, "'strides'", "out of range")


def test_non_utf8_string_attribute_is_refused() -> None:
    m = mlp()
    m.graph.node[0].attribute.append(helper.make_attribute("bogus", b"\xff\xfe"))
    with pytest.raises(QccError):
        import_model(m)


@pytest.mark.parametrize("dim, fragment", [(-3, "negative dimension"),
                                           (2**31, "limit is"), (10**12, "limit is")])
def test_dimensions_beyond_the_limits_are_refused(dim: int, fragment: str) -> None:
    m = mlp()
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = dim
    refused(m, fragment)
    m = mlp()
    m.graph.initializer[0].dims[0] = dim
    refused(m, fragment)


def test_rank_beyond_the_limit_is_refused() -> None:
    m = mlp()
    dims = m.graph.input[0].type.tensor_type.shape.dim
    for _ in range(onnx_checks.MAX_RANK):
        dims.add().dim_value = 1
    refused(m, "rank", "limit")


def test_too_many_nodes_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_checks, "MAX_NODES", 3)
    refused(mlp(), "nodes; qcc's limit is 3")


def test_an_impossible_reshape_is_one_line_naming_the_node(tmp_path: Path) -> None:
    m = mlp()
    out = m.graph.output[0].name
    m.graph.initializer.append(numpy_helper.from_array(np.array([2**20, 2**20, -1]), "shape"))
    m.graph.node.append(helper.make_node("Reshape", [out, "shape"], ["vast"], name="vast"))
    m.graph.output[0].name = "vast"
    m.graph.output[0].type.tensor_type.ClearField("shape")
    onnx.save(m, tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", np.zeros((1, 64), np.float32))
    code, _, stderr = cli("run", str(tmp_path / "m.onnx"), "--input", str(tmp_path / "x.npy"))
    assert code != 0 and "'vast' (Reshape) cannot run" in error_line(stderr)


def external_data_model(tmp_path: Path, location: str, offset: str) -> Path:
    m = mlp()
    init = m.graph.initializer[0]
    (tmp_path / "w.bin").write_bytes(numpy_helper.to_array(init).tobytes())
    init.ClearField("raw_data")
    init.ClearField("float_data")
    init.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset)):
        entry = init.external_data.add()
        entry.key, entry.value = key, value
    path = tmp_path / "ext.onnx"
    path.write_bytes(m.SerializeToString())
    return path


@pytest.mark.parametrize("location, offset, fragment", [
    ("w\x00.bin", "0", "invalid external data location"),
    ("w.bin", "-8", "offset"),  # onnx or qcc refuses it, by version
    ("w.bin", "eight", "invalid external data information"),
    ("../w.bin", "0", "outside the model's folder"),
])
def test_bad_external_data_is_one_line(tmp_path: Path, location: str, offset: str,
                                       fragment: str) -> None:
    path = external_data_model(tmp_path, location, offset)
    code, _, stderr = cli("inspect", str(path))
    assert code != 0 and fragment in error_line(stderr)


def test_external_data_in_the_folder_still_loads(tmp_path: Path) -> None:
    code, _, stderr = cli("inspect", str(external_data_model(tmp_path, "w.bin", "0")))
    assert code == 0, stderr


def test_two_relu_nodes_appended_is_accepted(tmp_path: Path) -> None:
    m = mlp()
    out = m.graph.output[0].name
    m.graph.node.append(helper.make_node("Relu", [out], ["deep_1"]))
    m.graph.node.append(helper.make_node("Relu", ["deep_1"], ["deep_2"]))
    m.graph.output[0].name = "deep_2"
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, tmp_path / "m.onnx")
    x = np.random.default_rng(0).normal(size=(1, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    reference = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"input": x})[0]
    assert cli("compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out"))[0] == 0
    code, _, stderr = cli("run", str(tmp_path / "m.onnx"), "--input", str(tmp_path / "x.npy"),
                          "--output", str(tmp_path / "y.npy"))
    assert code == 0, stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), reference, rtol=1e-5, atol=1e-6)
    code, _, stderr = cli("run", str(tmp_path / "out"), "--input", str(tmp_path / "x.npy"))
    assert code == 0 and "deep_2" in _ + stderr


def test_an_internal_error_is_one_line_with_a_hint(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in qcc")

    onnx.save(mlp(), tmp_path / "m.onnx")
    monkeypatch.setattr(cli_module, "import_model", broken)  # what `qcc inspect` calls
    code, _, stderr = cli("inspect", str(tmp_path / "m.onnx"), env={"QCC_DEBUG": ""})
    line = error_line(stderr)
    assert code == 1 and "internal error: RuntimeError: a bug in qcc" in line
    assert "please report; QCC_DEBUG=1 shows the traceback" in line
    code, _, stderr = cli("inspect", str(tmp_path / "m.onnx"), env={"QCC_DEBUG": "1"})
    assert code == 1 and "Traceback" in stderr and "a bug in qcc" in stderr
