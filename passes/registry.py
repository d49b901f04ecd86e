"""The table of graph passes by name, filled by the @graph_pass decorator next to each pass."""

from __future__ import annotations

from collections.abc import Callable

from qcc.core.ir import Graph

Pass = Callable[[Graph], Graph]
PASSES: dict[str, Pass] = {}


def graph_pass(name: str) -> Callable[[Pass], Pass]:
    def register(fn: Pass) -> Pass:
        PASSES[name] = fn
        return fn

    return register
