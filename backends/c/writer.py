"""A small C source writer: lines with indentation, blocks, comments and array literals.

Emitters never build C by concatenating fragments across lines; they call `line`, `block`
(a `{ ... }` scope that indents its body) and `array`, so the generated code is indented and
readable without a formatter.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

INDENT = "    "
WRAP = 100  # columns of generated array literals
# Printable ASCII that needs no escape anywhere in C text; everything else goes through c_text
_PLAIN = {chr(c) for c in range(0x20, 0x7F)} - {"\\", '"'}


def c_text(text: str) -> str:
    """`text` (a model's node or tensor name, a file name: anything qcc did not write) made
    inert inside a C comment and a C string literal alike, so no input can end a comment,
    end a string or add code.

    Backslash and double quote are escaped; every other byte outside printable ASCII (newlines,
    control characters, UTF-8 sequences) becomes a three-digit octal escape; `*/`, `/*` and `//`
    get their slash as \\057 and `??` its second mark as \\077 (no trigraph). Inside a string
    literal the result reads back as the original UTF-8 bytes; inside a comment it is inert text.
    Ordinary names (letters, digits, `_ . - : /`) come out unchanged.
    """
    out: list[str] = []
    for ch in text:
        if ch in _PLAIN:
            out.append(ch)
        elif ch in ("\\", '"'):
            out.append("\\" + ch)
        else:
            out.extend(f"\\{b:03o}" for b in ch.encode("utf-8", "surrogatepass"))
    escaped = "".join(out)
    # a slash next to a star (either side) or another slash, and a doubled question mark
    escaped = re.sub(r"(?<=[*/])/|/(?=[*/])", r"\\057", escaped)
    return re.sub(r"(?<=\?)\?", r"\\077", escaped)


def c_comment(text: str) -> str:
    """`/* text */` on one line, `text` escaped by c_text (for a comment after code)."""
    return f"/* {c_text(text)} */"


class CWriter:
    """Accumulates lines of C; `text()` returns them joined, ending in one newline."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 0

    def line(self, text: str = "") -> None:
        self.lines.append(INDENT * self.depth + text if text else "")

    def directive(self, text: str) -> None:
        """A preprocessor line, at column 0 whatever the indentation."""
        self.lines.append(text)

    def lines_of(self, texts: Iterable[str]) -> None:
        for text in texts:
            self.line(text)

    def comment(self, text: str) -> None:
        """A /* ... */ comment, wrapped to WRAP columns; several lines when `text` has
        newlines or is long. Every row goes through c_text, so text from a model is inert."""
        width = WRAP - len(INDENT) * self.depth - 6
        rows = [c_text(part) for row in text.split("\n")
                for part in (textwrap.wrap(row, width, break_on_hyphens=False) or [""])]
        if len(rows) == 1:
            self.line(f"/* {rows[0]} */")
            return
        self.line("/*")
        for row in rows:
            self.line(f" * {row}".rstrip())
        self.line(" */")

    @contextmanager
    def block(self, head: str, tail: str = "") -> Iterator[None]:
        """`head {` ... `}tail`, the body indented one level."""
        self.line(f"{head} {{" if head else "{")
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            self.line("}" + tail)

    def array(self, decl: str, values: Iterable[str | int]) -> None:
        """`decl = { v0, v1, ... };` wrapped at WRAP columns."""
        items = [str(v) for v in values]
        with self.block(f"{decl} =", ";"):
            width = WRAP - len(INDENT) * self.depth
            row: list[str] = []
            used = 0
            for item in items:
                if row and used + len(item) + 2 > width:
                    self.line(", ".join(row) + ",")
                    row, used = [], 0
                row.append(item)
                used += len(item) + 2
            if row:
                self.line(", ".join(row))

    def text(self) -> str:
        return "\n".join(self.lines).rstrip("\n") + "\n"
