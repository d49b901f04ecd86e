"""Model-provided text in emitted C (issues 12, 15): every name goes through one escaping function
(backends/c/writer.py c_text), so no node name can end a comment, end a string or add code; and
no C identifier is made from a model's names (backends/c/emit.py node_identifiers: `n<i>_<op>`),
so identifiers stay short and distinct whatever the names are.

References: gcc itself, which reads the escaped text back inside a string literal (it must give
the original UTF-8 bytes) and strips comments (`-fpreprocessed -E`, after which no model text
may remain); the library must still build with -Wall -Wextra -Werror -pedantic.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from backends.c.build import build_host, run_host
from backends.c.emit import MAX_PREFIX, c_identifier, emit_source
from backends.c.library import library_files
from backends.c.writer import CWriter, c_text
from qcc import zoo
from qcc.driver.c_check import interpreter_outputs, sample_inputs
from qcc.driver.cli import main
from qcc.driver.outdir import load_outdir
from qcc.driver.pipeline import compile_model

HOSTILE = ["*/ int injected_by_model_name = 42; /*", "a b*/c/*", "x??/", "??=define X 1",
           'quote"and\\backslash', "line\nbreak #error no", "//comment", "é ü 中", "\x00nul\x7f",
           "*/\n#include <stdio.h>\n/*"]
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs a host C compiler")


@given(st.text())
def test_escaped_text_is_inert_in_comments_and_strings(text: str) -> None:
    out = c_text(text)
    assert all(" " <= ch <= "~" for ch in out)  # printable ASCII only: no newline, no NUL
    for token in ("*/", "/*", "//", "??"):
        assert token not in out
    unescaped_quote = out.replace("\\\\", "").replace('\\"', "")
    assert '"' not in unescaped_quote


@given(st.from_regex(r"[A-Za-z0-9_.:\- ]*(/[A-Za-z0-9_.:\- ]+)*", fullmatch=True))
def test_ordinary_names_are_unchanged(name: str) -> None:
    assert c_text(name) == name  # keeps emitted C byte-identical for the models people use


@needs_gcc
def test_gcc_reads_the_escapes_back_as_the_original_bytes(tmp_path: Path) -> None:
    texts = HOSTILE + ["plain_name", "seeds/000 x/y"]
    w = CWriter()
    w.lines_of(["#include <stdio.h>", "int main(void)"])
    with w.block(""):
        for t in texts:
            w.comment(t)
            w.line(f'fputs("{c_text(t)}", stdout);')
            w.line('fputc(0, stdout);')
        w.line("return 0;")
    (tmp_path / "t.c").write_text(w.text())
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic",
                    "-Wno-overlength-strings", str(tmp_path / "t.c"), "-o",
                    str(tmp_path / "t")], check=True, capture_output=True)
    out = subprocess.run([str(tmp_path / "t")], check=True, capture_output=True).stdout
    expected = b"".join(t.encode().split(b"\x00")[0] + b"\x00" for t in texts)
    assert out == expected  # a NUL ends a C string: what precedes it is exact


@needs_gcc
@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_node_name_stays_inside_its_comment(tmp_path: Path, name: str) -> None:
    model = zoo.mlp_digits()
    model.graph.node[0].name = name
    onnx.save(model, tmp_path / "m.onnx")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["compile", str(tmp_path / "m.onnx"), "--target", "c",
                                       "-o", str(out)])
    assert result.exit_code == 0, result.output + result.stderr
    source = out / "m.c"
    # with every comment removed by the C preprocessor, no text of the name is left as code
    code = subprocess.run(["gcc", "-fpreprocessed", "-dD", "-E", "-P", str(source)],
                          check=True, capture_output=True, text=True).stdout
    for fragment in ("injected_by_model_name =", "#error", "#include <stdio.h>", "??", "b*/c"):
        if fragment in name:
            assert fragment not in code
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-c",
                    str(source), "-I", str(out), "-o", str(tmp_path / "m.o")], check=True,
                   capture_output=True)
    symbols = subprocess.run(["nm", str(tmp_path / "m.o")], check=True, capture_output=True,
                             text=True).stdout
    assert " injected_by_model_name" not in symbols


# -- identifiers: never from a model's names ----------------------------------------------------
DIGITS = Path(__file__).resolve().parents[3] / "examples" / "digits"
LONGEST_IDENTIFIER = 40
# names for every node and tensor of a model: comment enders, a preprocessor line, trigraphs,
# backslash-newline, non-ASCII, 300 characters, and COLLIDING ones (a single identifier after
# lower-casing and replacing punctuation), which the weighted layers get
RENAMES = ["*/ int injected_by_model_name = 42; /*", "\n#include <stdio.h>\n",
           "??/\nint trigraph_injected;", "back\\\nslash_spliced", "é ü 中 ‮", "long_" + "x" * 295,
           "long_" + "x" * 294 + "*/"]
COLLIDING = ["fc-1", "fc.1", "FC_1", "fc 1"]
FRAGMENTS = ["injected_by_model_name", "#include <stdio.h>", "trigraph_injected", "??/",
             "slash_spliced", "fc_1", "xxxxxxxxxx"]


def hostile_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with its weighted layers named COLLIDING, its other nodes RENAMES, its tensors
    both in turn (numbered when reused) and the graph itself RENAMES[0]."""
    g = model.graph
    tensors: dict[str, str] = {}

    def rename(old: str) -> str:
        if old and old not in tensors:
            k = len(tensors)
            names = RENAMES + COLLIDING
            tensors[old] = names[k] if k < len(names) else f"{names[k % len(names)]}#{k}"
        return tensors.get(old, old)

    layers = [n for n in g.node if n.op_type in ("Conv", "Gemm")]
    others = [n for n in g.node if n.op_type not in ("Conv", "Gemm")]
    assert len(layers) <= len(COLLIDING) and len(others) <= len(RENAMES)
    for node, name in [*zip(layers, COLLIDING), *zip(others, RENAMES)]:
        node.name = name
    for node in g.node:
        node.input[:] = [rename(v) for v in node.input]
        node.output[:] = [rename(v) for v in node.output]
    for t in g.initializer:
        t.name = rename(t.name)
    for v in [*g.input, *g.output, *g.value_info]:
        v.name = rename(v.name)
    g.name = RENAMES[0]
    return model


def code_without_comments(path: Path) -> str:
    """The C source with every comment removed by the C preprocessor (no macro expansion)."""
    return subprocess.run(["gcc", "-fpreprocessed", "-dD", "-E", "-P", str(path)], check=True,
                          capture_output=True, text=True).stdout


def assert_no_model_text(path: Path) -> None:
    code = code_without_comments(path)
    for fragment in FRAGMENTS:
        assert fragment not in code, f"{fragment!r} outside a comment in {path.name}"
    identifiers = set(re.findall(r"\b[A-Za-z_][A-Za-z0-9_]*\b", code))
    longest = max(identifiers, key=len)
    assert len(longest) <= LONGEST_IDENTIFIER, longest


@needs_gcc
def test_hostile_names_everywhere_build_strict_and_stay_exact(tmp_path: Path) -> None:
    """Every node and tensor name hostile, several colliding after sanitising: the library
    builds with -Wall -Wextra -Werror -pedantic, no model text is left once comments are gone,
    every identifier is short, and the C still equals the interpreter bit for bit."""
    onnx.save(hostile_names(onnx.load(DIGITS / "digits.onnx")), tmp_path / "m.onnx")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["compile", str(tmp_path / "m.onnx"), "--bits", "8",
                                       "--calib", str(DIGITS / "calib.npz"), "--target", "c",
                                       "-o", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    for path in (out / "m.c", out / "m.h"):
        assert_no_model_text(path)
    graph = load_outdir(out).integer
    xs = sample_inputs(graph, 12, seed=5)
    codes, floats = interpreter_outputs(graph, xs)
    got_codes, got_floats = run_host(build_host(out, "m", tmp_path / "host"), xs, codes.dtype,
                                     codes.shape[1], tmp_path)
    np.testing.assert_array_equal(got_codes, codes)
    np.testing.assert_array_equal(got_floats.view(np.uint32), floats.view(np.uint32))


@needs_gcc
def test_hostile_colliding_layer_names_in_the_train_step(tmp_path: Path) -> None:
    """The C train step names its RAM weights, accumulators and gradients per layer: layers
    whose names collide after sanitising (`fc-1`, `fc.1`, `FC_1`, `fc 1`) get distinct arrays,
    and the step builds strict with no model text outside comments."""
    onnx.save(hostile_names(onnx.load(DIGITS / "digits.onnx")), tmp_path / "m.onnx")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [
        "compile", str(tmp_path / "m.onnx"), "--bits", "8", "--calib",
        str(DIGITS / "calib.npz"), "--train-data", str(DIGITS / "train.npz"), "--train",
        "--update", "fx", "--lr", "2^-4", "--train-batch", "4", "--target", "c", "-o", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    for path in (out / "m_train.c", out / "m_train.h"):
        assert_no_model_text(path)
    weights = re.findall(r"^static int32_t (w_\w+)\[", (out / "m_train.c").read_text(), re.M)
    assert len(set(weights)) == len(COLLIDING)  # one RAM weight array per trained layer
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-c",
                    str(out / "m_train.c"), "-I", str(out), "-o", str(tmp_path / "t.o")],
                   check=True, capture_output=True)


MLPERF = Path(__file__).resolve().parents[3] / "examples" / "mlperf_tiny"
# TFLite-converted graphs name nodes by their whole Keras scope (75 to 280 characters)
MLPERF_CASES = [pytest.param(m, marks=[] if m == "dscnn_kws_nhwc" else [pytest.mark.slow])
                for m in ("dscnn_kws_nhwc", "resnet8_ic", "mobilenet_vww_nhwc", "autoencoder_ad")]


@needs_gcc
@pytest.mark.parametrize("model", MLPERF_CASES)
def test_mlperf_tiny_libraries_have_short_identifiers(model: str, tmp_path: Path) -> None:
    graph = compile_model(MLPERF / f"{model}.onnx", 8, "fixed").integer
    assert max(len(n.name) for n in graph.nodes) > LONGEST_IDENTIFIER  # names it must not use
    for rel, text in library_files(emit_source(graph, model)).items():
        if rel.endswith((".c", ".h")):
            (tmp_path / "f.c").write_text(text)
            code = code_without_comments(tmp_path / "f.c")
            identifiers = set(re.findall(r"\b[A-Za-z_][A-Za-z0-9_]*\b", code))
            assert max(map(len, identifiers)) <= LONGEST_IDENTIFIER, (rel, max(identifiers,
                                                                                key=len))
            assert "tflite" not in code and "functional" not in code and "conv2d" not in code


def test_node_identifiers_are_index_and_op() -> None:
    graph = compile_model(DIGITS / "digits.onnx", 8, "fixed", calib=DIGITS / "calib.npz").integer
    source = emit_source(graph, "m")
    functions = [n.function for n in source.nodes if n.function is not None]
    assert functions and all(re.fullmatch(r"n\d+_[a-z0-9]+", f) for f in functions)
    assert len(set(functions)) == len(functions)
    assert emit_source(graph, "m").files == source.files  # stable from run to run


@given(st.text(min_size=1, max_size=400))
def test_model_prefix_is_short_plain_and_stable(name: str) -> None:
    """The public prefix (<name>_infer, ...) from a model's file name: a C identifier of at most
    MAX_PREFIX characters, the same every time."""
    prefix = c_identifier(name)
    assert re.fullmatch(r"[a-z_][a-z0-9_]*", prefix) and len(prefix) <= MAX_PREFIX
    assert c_identifier(name) == prefix


def test_long_model_names_keep_distinct_prefixes() -> None:
    a, b = "resnet8_" + "a" * 300, "resnet8_" + "a" * 299 + "b"
    assert c_identifier(a) != c_identifier(b)
    assert c_identifier(a).startswith("resnet8_aaa")
    assert c_identifier("mobilenet_vww_nhwc") == "mobilenet_vww_nhwc"  # short names unchanged
