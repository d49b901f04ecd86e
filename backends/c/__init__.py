"""The C backend: an integer graph as a C99 library for microcontrollers (see emit.py)."""

from backends.c.emit import c_identifier, emit_source
from backends.c.library import emit_library, summary_lines

__all__ = ["c_identifier", "emit_library", "emit_source", "summary_lines"]
