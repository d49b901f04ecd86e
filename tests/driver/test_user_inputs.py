"""Bad data files, override files and flags end in one `qcc: error:` line (issue 15): .npy
where .npz is expected and back, members that are not arrays, headers declaring more data than
the file holds, empty files, override keys that do not exist or have the wrong type, widths a
scheme cannot take, labels outside the model's classes, inputs without values."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qcc.driver.cli import main

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits"
MODEL = str(DIGITS / "digits.onnx")


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def error_line(code: int, stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if not line.startswith("qcc: note:")]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("qcc: error: "), stderr
    return lines[0]


def npy_bytes(header_shape: tuple[int, ...], data: bytes = b"\0" * 64) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False,
                                               "shape": header_shape})
    return buf.getvalue() + data


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    x = np.zeros((4, 1, 8, 8), np.float32)
    paths = {name: tmp_path / name for name in (
        "x.npy", "x.npz", "junk_member.npz", "object.npz", "huge.npz", "huge.npy", "empty.npz",
        "empty.npy", "no_samples.npy")}
    np.save(paths["x.npy"], x)
    np.savez(paths["x.npz"], x=x)
    with zipfile.ZipFile(paths["junk_member.npz"], "w") as z:
        z.writestr("x.npy", b"not an array")
        z.writestr("notes.txt", b"hello")
    with zipfile.ZipFile(paths["object.npz"], "w") as z:
        buf = io.BytesIO()
        np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        z.writestr("x.npy", buf.getvalue())
    with zipfile.ZipFile(paths["huge.npz"], "w") as z:
        z.writestr("x.npy", npy_bytes((10**12, 1, 8, 8)))
    paths["huge.npy"].write_bytes(npy_bytes((10**12, 1, 8, 8)))
    paths["empty.npz"].write_bytes(b"")
    paths["empty.npy"].write_bytes(b"")
    np.save(paths["no_samples.npy"], np.zeros((0, 1, 8, 8), np.float32))
    return paths


@pytest.mark.parametrize("name, fragment", [
    ("x.npy", "not a readable .npz file"), ("junk_member.npz", "not a readable .npz file"),
    ("object.npz", "object arrays"), ("huge.npz", "header declares shape"),
    ("empty.npz", "is empty")])
def test_bad_npz_files(files: dict[str, Path], tmp_path: Path, name: str, fragment: str
                       ) -> None:
    code, _, stderr = cli("compile", MODEL, "--calib", str(files[name]), "-o",
                          str(tmp_path / "out"))
    assert fragment in error_line(code, stderr) and not (tmp_path / "out").exists()


def test_a_member_that_is_not_an_array(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as z:
        buf = io.BytesIO()
        np.save(buf, np.zeros((4, 1, 8, 8), np.float32))
        z.writestr("x.npy", buf.getvalue())
        z.writestr("notes.txt", b"hello")
    code, _, stderr = cli("compile", MODEL, "--calib", str(tmp_path / "d.npz"), "-o",
                          str(tmp_path / "out"))
    assert "member 'notes.txt' is not a .npy array" in error_line(code, stderr)


@pytest.mark.parametrize("name, fragment", [
    ("x.npz", "is an .npz archive"), ("huge.npy", "header declares shape"),
    ("empty.npy", "is empty"), ("no_samples.npy", "holds no values")])
def test_bad_npy_inputs(files: dict[str, Path], name: str, fragment: str) -> None:
    code, _, stderr = cli("run", MODEL, "--input", str(files[name]))
    assert fragment in error_line(code, stderr)


@pytest.mark.parametrize("overrides, fragment", [
    ({"@first": {"bitz": 4}}, "unknown setting 'bitz'"),
    ({"@first": {"bits": 0}}, "from 1 to 16, got 0"),
    ({"@first": {"bits": True}}, "'bits' must be an integer"),
    ({"@first": {"scheme": ["fixed"]}}, "'scheme' must be a string"),
    ({"@first": {"binary_activations": "yes"}}, "must be true or false"),
    ({"@first": {"scheme": "apot", "bits": 1}}, "scheme apot takes weights of 2 to 8 bits"),
    ({"@first": {"scheme": "affine", "bits": 1}}, "scheme affine takes weights of 2 to 16"),
    ({"@first": {"scheme": "pot", "weight_bits": 4, "act_bits": 1}},
     "scheme pot takes activations of 2 to 16 bits"),
    ({"nonexistent": {"bits": 4}}, "no weighted layer named"),
    ({"@first": 4}, "must be an object"),
    ([1, 2], "expected an object"),
])
def test_override_schema(tmp_path: Path, overrides: object, fragment: str) -> None:
    (tmp_path / "o.json").write_text(json.dumps(overrides))
    code, _, stderr = cli("compile", MODEL, "--overrides", str(tmp_path / "o.json"), "-o",
                          str(tmp_path / "out"))
    assert fragment in error_line(code, stderr)


def test_overrides_nested_100000_deep(tmp_path: Path) -> None:
    (tmp_path / "o.json").write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    code, _, stderr = cli("compile", MODEL, "--overrides", str(tmp_path / "o.json"), "-o",
                          str(tmp_path / "out"))
    assert "nested too deeply" in error_line(code, stderr)


@pytest.mark.parametrize("scheme", ["apot", "affine"])
def test_one_bit_schemes_are_refused(tmp_path: Path, scheme: str) -> None:
    code, _, stderr = cli("compile", MODEL, "--scheme", scheme, "--bits", "1", "-o",
                          str(tmp_path / "out"))
    assert f"scheme {scheme} takes" in error_line(code, stderr)


def test_a_valid_override_still_applies(tmp_path: Path) -> None:
    (tmp_path / "o.json").write_text(json.dumps({"@first": {"bits": 4}}))
    code, _, stderr = cli("compile", MODEL, "--overrides", str(tmp_path / "o.json"), "-o",
                          str(tmp_path / "out"))
    assert code == 0, stderr
    first = json.loads((tmp_path / "out" / "precision.json").read_text())["layers"][0]
    assert first["B_W"] == first["B_A"] == 4


@pytest.mark.parametrize("bad_label", [10, -1])
def test_eval_labels_outside_the_classes(tmp_path: Path, bad_label: int) -> None:
    assert cli("compile", MODEL, "--calib", str(DIGITS / "calib.npz"), "-o",
               str(tmp_path / "out"))[0] == 0
    with np.load(DIGITS / "test.npz") as d:
        x, y = d["x"], d["y"].copy()
    y[3] = bad_label
    np.savez(tmp_path / "bad.npz", x=x, y=y)
    code, _, stderr = cli("eval", str(tmp_path / "out"), "--data", str(tmp_path / "bad.npz"))
    assert "labels must be 0 .. 9 (the model has 10 classes); 1 label(s)" in error_line(
        code, stderr)
