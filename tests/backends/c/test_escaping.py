"""Model-provided text in emitted C (issue 15): every name goes through one escaping function
(backends/c/writer.py c_text), so no node name can end a comment, end a string or add code.

References: gcc itself, which reads the escaped text back inside a string literal (it must give
the original UTF-8 bytes) and strips comments (`-fpreprocessed -E`, after which no model text
may remain); the library must still build with -Wall -Wextra -Werror -pedantic.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from backends.c.writer import CWriter, c_text
from qcc import zoo
from qcc.driver.cli import main

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
