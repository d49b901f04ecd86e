"""The graph IR: values, nodes and the graph that owns them.

A `Value` is a named tensor with a static shape and dtype; it knows the node that produces it
and the nodes that consume it. Constants (ONNX initializers) are values whose `const` holds a
NumPy array. A `Node` is one op application. A `Graph` keeps its nodes in topological order and
offers the edits passes need (`add_node`, `remove_node`, `replace_all_uses`); networkx is used
only as a derived view for ordering and liveness.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np

from qcc.core.errors import QccError
from qcc.core.quant_spec import QuantSpec


@dataclass(eq=False)
class Value:
    """A tensor of the graph: a graph input, a node output or a constant."""

    name: str
    shape: tuple[int, ...] | None = None
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float32))
    const: np.ndarray | None = None
    quant: QuantSpec | None = None
    producer: Node | None = field(default=None, repr=False)
    consumers: list[Node] = field(default_factory=list, repr=False)

    @property
    def is_const(self) -> bool:
        return self.const is not None

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape)) if self.shape is not None else 0

    def __repr__(self) -> str:
        kind = "const " if self.is_const else ""
        return f"Value({kind}{self.name!r}, {self.shape}, {self.dtype})"


@dataclass(eq=False)
class Node:
    """One op application. `inputs` may hold None for an omitted optional input."""

    op_type: str
    name: str
    inputs: list[Value | None]
    outputs: list[Value]
    attrs: dict[str, Any] = field(default_factory=dict)
    opset: int = 17
    domain: str = ""

    def input(self, i: int) -> Value | None:
        return self.inputs[i] if i < len(self.inputs) else None

    def __repr__(self) -> str:
        ins = ", ".join(v.name if v is not None else "-" for v in self.inputs)
        outs = ", ".join(v.name for v in self.outputs)
        return f"Node({self.op_type} {self.name!r}: {ins} -> {outs})"


class Graph:
    """Nodes in topological order, their values, and the graph's inputs and outputs."""

    def __init__(self, name: str = "graph", opset: int = 17) -> None:
        self.name = name
        self.opset = opset
        self.nodes: list[Node] = []
        self.values: dict[str, Value] = {}
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.history: list[str] = []  # one line per pass that changed the graph
        self._next_suffix = 0  # a plain int, so a Graph deep-copies

    def __deepcopy__(self, memo: dict[int, Any]) -> Graph:
        """A deep copy that never recurses along producer / consumer links: every value and
        node is copied shallowly and registered first, then their fields are filled in, so the
        depth stays constant however long the graph (copy.deepcopy's default follows the
        links node by node and overflows Python's stack on a few hundred nodes)."""
        values = [*self.values.values(), *(v for n in self.nodes for v in n.inputs + n.outputs
                                          if v is not None)]
        for item in [*values, *self.nodes]:
            if id(item) not in memo:
                memo[id(item)] = copy.copy(item)
        for v in values:
            twin = memo[id(v)]
            twin.const = copy.deepcopy(v.const, memo)
            twin.quant = copy.deepcopy(v.quant, memo)
            twin.producer = memo.get(id(v.producer)) if v.producer is not None else None
            twin.consumers = [memo[id(c)] for c in v.consumers if id(c) in memo]
        for n in self.nodes:
            twin = memo[id(n)]
            twin.inputs = [None if v is None else memo[id(v)] for v in n.inputs]
            twin.outputs = [memo[id(v)] for v in n.outputs]
            twin.attrs = copy.deepcopy(n.attrs, memo)
        graph = Graph.__new__(Graph)
        memo[id(self)] = graph
        graph.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return graph

    # -- construction -------------------------------------------------------------------
    def add_value(self, value: Value) -> Value:
        if value.name in self.values:
            raise QccError(f"tensor name {value.name!r} is defined twice")
        self.values[value.name] = value
        return value

    def add_const(self, name: str, array: np.ndarray) -> Value:
        array = np.asarray(array)
        return self.add_value(Value(self.unique_name(name), array.shape, array.dtype, array))

    def unique_name(self, base: str) -> str:
        name = base
        while name in self.values or name == "":
            name = f"{base}_{self._suffix()}"
        return name

    def _suffix(self) -> int:
        self._next_suffix += 1
        return self._next_suffix

    def add_node(
        self,
        op_type: str,
        inputs: Iterable[Value | None],
        outputs: Iterable[Value],
        attrs: dict[str, Any] | None = None,
        name: str | None = None,
        index: int | None = None,
    ) -> Node:
        """Create a node whose output values are new; insert it at `index` (default: end)."""
        node = Node(op_type, name or self.unique_node_name(op_type), list(inputs), [],
                    dict(attrs or {}), self.opset)
        for v in node.inputs:
            if v is not None:
                v.consumers.append(node)
        for v in outputs:
            if self.values.get(v.name) is not v:
                self.add_value(v)
            v.producer = node
            node.outputs.append(v)
        if index is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(index, node)
        return node

    def unique_node_name(self, base: str) -> str:
        used = {n.name for n in self.nodes}
        name = base
        while name in used:
            name = f"{base}_{self._suffix()}"
        return name

    # -- edits ---------------------------------------------------------------------------
    def remove_node(self, node: Node) -> None:
        """Detach `node`; its outputs must have no consumers left and not be graph outputs."""
        for v in node.outputs:
            if v.consumers or v in self.outputs:
                raise ValueError(f"cannot remove {node}: output {v.name!r} is still used")
            del self.values[v.name]
        for v in node.inputs:
            if v is not None:
                v.consumers.remove(node)
        self.nodes.remove(node)

    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Make every consumer of `old` (and the graph outputs) read `new` instead."""
        for node in old.consumers:
            node.inputs = [new if v is old else v for v in node.inputs]
            new.consumers.append(node)
        old.consumers = []
        if old in self.outputs:
            if new.is_const or new in self.inputs or new in self.outputs:
                # a graph output must keep its name and be produced by a node
                raise ValueError(f"cannot let graph output {old.name!r} alias {new.name!r}")
            # the graph output keeps its name: `old` steps aside under a fresh one
            self.outputs = [new if v is old else v for v in self.outputs]
            name = old.name
            del self.values[new.name], self.values[name]
            old.name = self.unique_name(name + "_replaced")
            self.values[old.name] = old
            new.name = name
            self.values[name] = new

    def set_input(self, node: Node, index: int, value: Value | None) -> None:
        old = node.inputs[index]
        if old is not None:
            old.consumers.remove(node)
        node.inputs[index] = value
        if value is not None:
            value.consumers.append(node)

    def remove_unused(self) -> bool:
        """Drop nodes whose outputs reach no graph output, and unused constants."""
        changed = False
        for node in reversed(list(self.nodes)):
            if all(not v.consumers and v not in self.outputs for v in node.outputs):
                self.remove_node(node)
                changed = True
        for name, v in list(self.values.items()):
            if v.is_const and not v.consumers and v not in self.outputs:
                del self.values[name]
                changed = True
        return changed

    # -- queries -------------------------------------------------------------------------
    @property
    def constants(self) -> dict[str, np.ndarray]:
        return {n: v.const for n, v in self.values.items() if v.const is not None}

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise QccError(f"no node named {name!r} in the graph")

    def to_networkx(self) -> nx.DiGraph:
        """Nodes of the graph as a DiGraph (edge attribute `value`: the tensor passed)."""
        g = nx.DiGraph()
        for n in self.nodes:
            g.add_node(n.name, node=n)
        for n in self.nodes:
            for v in n.outputs:
                for c in v.consumers:
                    g.add_edge(n.name, c.name, value=v.name)
        return g

    def toposort(self) -> None:
        """Reorder `nodes` topologically, keeping the current order where it is free."""
        order = {n.name: i for i, n in enumerate(self.nodes)}
        names = nx.lexicographical_topological_sort(self.to_networkx(), key=order.__getitem__)
        by_name = {n.name: n for n in self.nodes}
        self.nodes = [by_name[name] for name in names]

    def liveness(self) -> dict[str, tuple[int, int]]:
        """For each non-constant value: (first step it is live, last step it is read).

        Step i is the execution of `nodes[i]`; graph inputs are live from step 0 and graph
        outputs until the end.
        """
        live: dict[str, tuple[int, int]] = {}
        end = len(self.nodes)
        for v in self.inputs:
            live[v.name] = (0, 0)
        for i, n in enumerate(self.nodes):
            for v in n.outputs:
                live[v.name] = (i, i)
            for v in n.inputs:
                if v is not None and not v.is_const:
                    start, _ = live[v.name]
                    live[v.name] = (start, i)
        for v in self.outputs:
            live[v.name] = (live[v.name][0], end)
        return live

    def check(self) -> None:
        """Assert the structural invariants (consumer links, order, names)."""
        seen = {v.name for v in self.inputs} | set(self.constants)
        for n in self.nodes:
            for v in n.inputs:
                assert v is None or v.name in seen, f"{n} reads {v.name} before it is made"
                assert v is None or n in v.consumers, f"{n} missing from consumers of {v.name}"
            for v in n.outputs:
                assert v.producer is n and self.values[v.name] is v
                seen.add(v.name)
        for v in self.outputs:
            assert v.name in seen, f"graph output {v.name} is never produced"

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {len(self.nodes)} nodes, opset {self.opset})"
