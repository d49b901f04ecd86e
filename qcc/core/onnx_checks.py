"""Validation of an ONNX graph before qcc builds or runs anything from it.

`check_graph` looks at the whole ModelProto once, before shape inference and before any kernel
runs, so a malformed or hostile file ends in one QccError line instead of a KeyError deep in
the importer, a ZeroDivisionError in a kernel or a 4 TiB allocation:

- references: every node input is a graph input, an initializer or the output of a node; every
  tensor is defined once; every graph output is produced; the nodes form no cycle. Nodes that
  are not in topological order (ONNX requires it; some tools write them reversed) are sorted.
- attributes: for ops of the default ONNX domain, each attribute is one the op's schema (at the
  model's opset) declares, with the declared type; string attributes are UTF-8; the window
  attributes every ONNX op shares have their obvious ranges (kernel_shape, strides and
  dilations >= 1, pads >= 0, group >= 1).
- sizes, against the documented limits below: rank, dimensions (never negative), elements per
  tensor, number of nodes. `check_shapes` applies the same limits to the shapes inferred by
  onnx's shape inference, which catches a Reshape or Expand to an absurd size before it runs.
"""

from __future__ import annotations

import heapq
import math

import onnx
from onnx import AttributeProto, TensorProto

from qcc.core.errors import QccError

# Limits of what qcc accepts (README "Limits"): far above any model for a microcontroller, far
# below what would exhaust a workstation's memory.
MAX_RANK = 8
MAX_ELEMENTS = 2**28  # per tensor: 1 GiB of float32
MAX_NODES = 100_000
WINDOW_ATTRIBUTES = {"kernel_shape": 1, "strides": 1, "dilations": 1, "pads": 0}  # minimum


def check_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` if its graph is well formed (its nodes sorted topologically if needed);
    QccError naming the first problem otherwise."""
    g = model.graph
    if len(g.node) > MAX_NODES:
        raise QccError(f"the graph has {len(g.node):,} nodes; qcc's limit is {MAX_NODES:,}")
    for init in g.initializer:
        _check_initializer(init)
    for vi in [*g.input, *g.output, *g.value_info]:
        _check_value_info(vi)
    opset = _default_opset(model)
    for index, node in enumerate(g.node):
        _check_attributes(node, index, opset)
    order = _topological_order(g)
    if order != list(range(len(g.node))):
        model = _reordered(model, order)
    return model


def check_shapes(model: onnx.ModelProto) -> None:
    """The limits on every shape onnx's shape inference found (value_info)."""
    for vi in [*model.graph.value_info, *model.graph.output]:
        _check_value_info(vi)


def _node_label(node: onnx.NodeProto, index: int) -> str:
    return f"node {node.name or index!r} ({node.op_type or 'no op type'})"


def _check_dims(dims: list[int], what: str) -> None:
    if len(dims) > MAX_RANK:
        raise QccError(f"{what} has rank {len(dims)}; qcc's limit is {MAX_RANK}")
    if any(d < 0 for d in dims):
        raise QccError(f"{what} has a negative dimension ({list(dims)})")
    if math.prod(dims) > MAX_ELEMENTS:
        raise QccError(f"{what} has {math.prod(dims):,} elements (shape {list(dims)}); qcc's "
                       f"limit is {MAX_ELEMENTS:,} per tensor")


def _check_initializer(init: TensorProto) -> None:
    what = f"initializer {init.name!r}"
    if not init.name:
        raise QccError("an initializer has no name")
    if init.data_type not in TensorProto.DataType.values() or \
            init.data_type == TensorProto.UNDEFINED:
        raise QccError(f"{what} has an unknown data type ({init.data_type})")
    _check_dims(list(init.dims), what)


def _check_value_info(vi: onnx.ValueInfoProto) -> None:
    if not vi.name:
        raise QccError("a graph input, output or value_info has no name")
    if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return  # not a tensor (the importer refuses it) or rank unknown: nothing to bound
    dims = [d.dim_value for d in vi.type.tensor_type.shape.dim if d.HasField("dim_value")]
    if len(vi.type.tensor_type.shape.dim) > MAX_RANK:
        raise QccError(f"tensor {vi.name!r} has rank {len(vi.type.tensor_type.shape.dim)}; "
                       f"qcc's limit is {MAX_RANK}")
    _check_dims(dims, f"tensor {vi.name!r}")


def _check_attributes(node: onnx.NodeProto, index: int, opset: int) -> None:
    label = _node_label(node, index)
    if not node.op_type:
        raise QccError(f"{label} has no op type")
    schema = None
    if node.domain in ("", "ai.onnx"):
        try:
            schema = onnx.defs.get_schema(node.op_type, opset, "")
        except onnx.defs.SchemaError:
            schema = None  # an unknown op: the registry refuses it with the supported list
    seen = set()
    for a in node.attribute:
        if a.name in seen:
            raise QccError(f"{label} has attribute {a.name!r} twice")
        seen.add(a.name)
        if schema is not None:
            declared = schema.attributes.get(a.name)
            if declared is None:
                raise QccError(f"{label} has attribute {a.name!r}, which {node.op_type} "
                               f"(opset {opset}) does not define")
            if a.type != declared.type:
                raise QccError(f"{label}: attribute {a.name!r} must be "
                               f"{AttributeProto.AttributeType.Name(declared.type)}, got "
                               f"{AttributeProto.AttributeType.Name(a.type)}")
        _check_attribute_value(a, label)


def _check_attribute_value(a: AttributeProto, label: str) -> None:
    strings = [a.s] if a.type == AttributeProto.STRING else list(a.strings)
    for s in strings:
        try:
            s.decode("utf-8")
        except UnicodeDecodeError:
            raise QccError(f"{label}: attribute {a.name!r} is not UTF-8 text") from None
    if a.name in WINDOW_ATTRIBUTES and a.type == AttributeProto.INTS:
        low = WINDOW_ATTRIBUTES[a.name]
        if any(v < low or v > MAX_ELEMENTS for v in a.ints):
            raise QccError(f"{label}: attribute {a.name!r} = {list(a.ints)} is out of range "
                           f"(each must be from {low} to {MAX_ELEMENTS:,})")
    if a.name == "group" and a.type == AttributeProto.INT and a.i < 1:
        raise QccError(f"{label}: attribute 'group' = {a.i} must be at least 1")


def _topological_order(g: onnx.GraphProto) -> list[int]:
    """Node indices in a topological order (the file's order where it is one already)."""
    defined = {i.name for i in g.initializer} | {s.values.name for s in g.sparse_initializer}
    defined |= {i.name for i in g.input}
    producer: dict[str, int] = {}
    for index, node in enumerate(g.node):
        for name in node.output:
            if not name:
                continue
            if name in producer or name in defined:
                raise QccError(f"tensor {name!r} is defined twice ({_node_label(node, index)} "
                               "writes a name already in use)")
            producer[name] = index
    waiting = []  # per node: how many of its inputs are still to be produced
    readers: dict[int, list[int]] = {}
    for index, node in enumerate(g.node):
        pending = set()
        for name in node.input:
            if not name or name in defined:
                continue
            if name not in producer:
                raise QccError(f"{_node_label(node, index)} reads undefined tensor {name!r}")
            pending.add(producer[name])
        for p in pending:
            readers.setdefault(p, []).append(index)
        waiting.append(len(pending))
    for vi in g.output:
        if vi.name not in producer and vi.name not in defined:
            raise QccError(f"graph output {vi.name!r} is never produced")
    order, ready = [], [i for i, n in enumerate(waiting) if n == 0]
    heapq.heapify(ready)  # lowest index first: a sorted file keeps its order
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for r in readers.get(index, ()):
            waiting[r] -= 1
            if waiting[r] == 0:
                heapq.heappush(ready, r)
    if len(order) < len(g.node):
        stuck = next(i for i, n in enumerate(waiting) if n > 0)
        raise QccError(f"the graph has a cycle through {_node_label(g.node[stuck], stuck)}")
    return order


def _reordered(model: onnx.ModelProto, order: list[int]) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    nodes = [copy.graph.node[i] for i in order]
    sorted_nodes = [onnx.NodeProto() for _ in nodes]
    for target, source in zip(sorted_nodes, nodes):
        target.CopyFrom(source)
    del copy.graph.node[:]
    copy.graph.node.extend(sorted_nodes)
    return copy


def _default_opset(model: onnx.ModelProto) -> int:
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return op.version
    return onnx.defs.onnx_opset_version()
