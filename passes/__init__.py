"""Graph -> Graph transformations, one concern per module, registered by name.

    @graph_pass("fold_batchnorm")
    def fold_batchnorm(graph: Graph) -> Graph: ...

A pass may edit the graph in place and returns it; it appends one line to `graph.history`
saying what it did. `run_passes(graph, names)` applies them in order; the CLI lists `PASSES`.
"""

from __future__ import annotations

from passes import fold_batchnorm, fuse_qdq  # noqa: F401  (each registers its passes)
from passes.registry import PASSES, Pass, graph_pass
from qcc.core.errors import QccError
from qcc.core.ir import Graph

__all__ = ["PASSES", "Pass", "graph_pass", "run_passes"]


def run_passes(graph: Graph, names: list[str]) -> Graph:
    for name in names:
        if name not in PASSES:
            raise QccError(f"unknown pass {name!r}; known: {', '.join(sorted(PASSES))}")
        graph = PASSES[name](graph)
    return graph
