"""A small C source writer: lines with indentation, blocks, comments and array literals.

Emitters never build C by concatenating fragments across lines; they call `line`, `block`
(a `{ ... }` scope that indents its body) and `array`, so the generated code is indented and
readable without a formatter.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

INDENT = "    "
WRAP = 100  # columns of generated array literals


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
        newlines or is long."""
        width = WRAP - len(INDENT) * self.depth - 6
        rows = [part for row in text.split("\n")
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
