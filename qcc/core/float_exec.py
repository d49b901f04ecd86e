"""Float reference execution of a Graph through the registry's float kernels."""

from __future__ import annotations

import numpy as np

from qcc.core.errors import QccError
from qcc.core.ir import Graph, Node, Value
from qcc.core.registry import lookup

# What a float kernel raises on inputs its node cannot take (a Reshape to an impossible shape,
# mismatched MatMul operands, a zero stride that shape inference let through): the model's
# problem, reported as one line naming the node.
KERNEL_FAILURES = (ValueError, IndexError, ZeroDivisionError, OverflowError)


def node_failure(node: Node, error: Exception) -> QccError:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return QccError(f"node {node.name!r} ({node.op_type}) cannot run on its inputs: {text[:200]}")


def run_node(node: Node, args: list[np.ndarray | None]) -> list[np.ndarray]:
    """Run one node's float kernel; always returns a list with one array per output."""
    try:
        result = lookup(node).kernel(node, *args)
    except KERNEL_FAILURES as e:
        raise node_failure(node, e) from e
    outs = list(result) if isinstance(result, (tuple, list)) else [result]
    return [np.asarray(o) for o in outs[: len(node.outputs)]]


def check_feeds(graph: Graph, feeds: dict[str, np.ndarray]) -> None:
    """Refuse missing inputs and inputs whose dtype or static shape disagrees with the model."""
    for v in graph.inputs:
        if v.name not in feeds:
            raise QccError(f"missing input {v.name!r}")
        x = np.asarray(feeds[v.name])
        if x.dtype != v.dtype:
            raise QccError(f"input {v.name!r} has dtype {x.dtype}, the model expects {v.dtype}")
        if v.shape is not None and (len(x.shape) != len(v.shape) or any(
                d > 0 and d != s for d, s in zip(v.shape, x.shape))):
            raise QccError(f"input {v.name!r} has shape {x.shape}, the model expects {v.shape}")


class Schedule:
    """The work of one run of a graph, planned once: each node's kernel, where its inputs come
    from, and which intermediate arrays can be dropped after it. Constants are read from the
    graph at every run (training replaces them); any other edit of the graph needs a new
    Schedule."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        last_use = {name: end for name, (_, end) in graph.liveness().items()}
        outs = {v.name for v in graph.outputs}
        self.steps = []
        for i, node in enumerate(graph.nodes):
            free = [v.name for v in node.inputs if _dead_after(v, i, last_use, outs)]
            self.steps.append((node, lookup(node).kernel,
                               [v.name if v is not None else None for v in node.inputs],
                               [v.name for v in node.outputs], free))

    def run(self, feeds: dict[str, np.ndarray], keep_all: bool = False,
            check: bool = True) -> dict[str, np.ndarray]:
        graph = self.graph
        if check:
            check_feeds(graph, feeds)
        env: dict[str, np.ndarray] = {v.name: np.asarray(feeds[v.name]) for v in graph.inputs}
        env.update(graph.constants)
        for node, kernel, inputs, outputs, free in self.steps:
            try:
                result = kernel(node, *[env[n] if n is not None else None for n in inputs])
            except KERNEL_FAILURES as e:
                raise node_failure(node, e) from e
            if isinstance(result, (tuple, list)):
                for name, array in zip(outputs, result):
                    env[name] = np.asarray(array)
            else:
                env[outputs[0]] = np.asarray(result)
            if not keep_all:
                for name in free:
                    env.pop(name, None)
        if keep_all:
            return env
        return {v.name: env[v.name] for v in graph.outputs}


def run_float(graph: Graph, feeds: dict[str, np.ndarray], keep_all: bool = False,
              check: bool = True) -> dict[str, np.ndarray]:
    """Execute `graph` on `feeds`; return the graph outputs (every value if `keep_all`).

    Intermediate arrays are dropped after their last reader unless `keep_all` is set. For
    repeated runs of one graph, build a `Schedule` once and call its `run`.
    """
    return Schedule(graph).run(feeds, keep_all, check)


def run_batched(graph: Graph, x: np.ndarray, batch: int = 64, keep_all: bool = False
                ) -> list[dict[str, np.ndarray]]:
    """Run a single-input graph over the rows of `x` in chunks of `batch` samples.

    Models exported with a batch dimension of 1 still run on larger batches when every op is
    batch-agnostic; a model that is not (a Reshape to a literal batch of 1, say) runs sample by
    sample. Returns one result dict per chunk.
    """
    name = graph.inputs[0].name
    schedule = Schedule(graph)
    results = []
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        try:
            out = schedule.run({name: chunk}, keep_all=keep_all, check=False)
            if _batch_ok(graph, out, len(chunk)):
                results.append(out)
                continue
        except (ValueError, QccError):
            pass  # not batch-agnostic: fall through to one sample at a time
        for i in range(len(chunk)):
            results.append(schedule.run({name: chunk[i:i + 1]}, keep_all=keep_all))
    return results


def _batch_ok(graph: Graph, out: dict[str, np.ndarray], n: int) -> bool:
    return all(out[v.name].shape[:1] == (n,) for v in graph.outputs)


def _dead_after(v: Value | None, step: int, last_use: dict[str, int], outs: set[str]) -> bool:
    return v is not None and not v.is_const and v.name not in outs and last_use.get(v.name) == step


def float_predictions(graph: Graph, x: np.ndarray) -> np.ndarray:
    """Class decisions (argmax of the first output) of the float graph on the samples of x."""
    out = graph.outputs[0].name
    return np.concatenate([r[out] for r in run_batched(graph, x)]).argmax(axis=1)
