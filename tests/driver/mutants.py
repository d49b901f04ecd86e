"""Seeded mutants of valid ONNX models, one category per way a file goes wrong in the wild.

`mutants(models, count, seed)` yields (category, model bytes): byte flips and truncation of
the serialized file, and edits of the parsed graph (dangling inputs, missing initializers,
cycles, reversed node order, wrong attribute types and values, negative or 2^31 dimensions,
NaN weights, unknown rank, hostile names, huge graphs). Some mutants are still valid models
(reversed order, NaN weights, long names): qcc must then succeed or refuse in one line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import onnx
from onnx import AttributeProto, helper, numpy_helper

Mutation = Callable[[onnx.ModelProto, np.random.Generator], None]


def _byte_flips(data: bytes, rng: np.random.Generator) -> bytes:
    buf = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        buf[int(rng.integers(len(buf)))] ^= 1 << int(rng.integers(8))
    return bytes(buf)


def _truncate(data: bytes, rng: np.random.Generator) -> bytes:
    return data[:int(rng.integers(0, len(data)))]


def _pick_node(m: onnx.ModelProto, rng: np.random.Generator) -> onnx.NodeProto:
    return m.graph.node[int(rng.integers(len(m.graph.node)))]


def dangling_input(m: onnx.ModelProto, rng: np.random.Generator) -> None:
    node = _pick_node(m, rng)
    node.input[int(rng.integers(len(node.input)))] = "no_such_tensor"


def missing_initializer(m: onnx.ModelProto, rng: np.random.Generator) -> None:
    del m.graph.initializer[int(rng.integers(len(m.graph.initializer)))]


def cycle(m: onnx.ModelProto, rng: np.random.Generator) -> None:
    """An early node reads the output of a later one that depends on it."""
    n = len(m.graph.node)
    i = int(rng.integers(0, n - 1))
    j = int(rng.integers(i + 1, n))
    m.graph.node[i].input[0] = m.graph.node[j].output[0]


def reversed_order(m: onnx.ModelProto, rng: np.random.Generator) -> None:
    nodes = list(m.graph.node)[::-1]
    copies = [onnx.NodeProto() for _ in nodes]
    for c, n in zip(copies, nodes):
        c.CopyFrom(n)
    del m.graph.node[:]
    m.graph.node.extend(copies)


def wrong_attribute_type(m: onnx.ModelProto, rng: np.random.Generator) -> None:
    with_attrs = [n for n in m.graph.node if n.attribute]
    node = with_attrs[int(rng.integers(len(with_attrs)))] if with_attrs else _pick_node(m, rng)
    if not node.attribute:
        node.attribute.append(helper.make_attribute("axis", "oops"))
        return
    a = node.attribute[int(rng.integers(len(node.attribute)))]
    name = a.name
    replacement = [helper.make_attribute(name, 1.5), helper.make_attribute(name, "text"),
                   helper.make_attribute(name, [1.0, 2.0]), helper.make_attribute(name, 3),
                   helper.make_attribute(name, [b"\xff\xfe"])][int(rng.integers(5))]
    a.CopyFrom(replacement)


def bad_attribute_value(m: onnx.ModelProto, rng: np.random.Generator) -> None:
    """strides, kernel_shape, pads, dilations, group, axis at 0, negative or huge values."""
    with_ints = [(n, a) for n in m.graph.node for a in n.attribute
                 if a.type in (AttributeProto.INTS, AttributeProto.INT)]
    if not with_ints:
        return dangling_input(m, rng)
    node, a = with_ints[int(rng.integers(len(with_ints)))]
    value = [0, -1, -7, 2**31, 2**40][int(rng.integers(5))]
    if a.type == AttributeProto.INTS:
        a.ints[int(rng.integers(len(a.ints)))] = value if a.ints else value
    else:
        a.i = value


def bad_dims(m: onnx.ModelProto, rng: np.random.Generator) -> None:
    value = [-1, -5, 0, 2**31, 2**31 - 1, 10**12][int(rng.integers(6))]
    if rng.random() < 0.5 or not m.graph.initializer:
        dims = m.graph.input[0].type.tensor_type.shape.dim
        dims[int(rng.integers(len(dims)))].dim_value = value
    else:
        init = m.graph.initializer[int(rng.integers(len(m.graph.initializer)))]
        init.dims[int(rng.integers(len(init.dims)))] = value


def nan_weights(m: onnx.ModelProto, rng: np.random.Generator) -> None:
    floats = [t for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    t = floats[int(rng.integers(len(floats)))]
    array = numpy_helper.to_array(t).copy()
    array.flat[int(rng.integers(array.size))] = [np.nan, np.inf, -np.inf][int(rng.integers(3))]
    t.CopyFrom(numpy_helper.from_array(array, t.name))


def unknown_rank(m: onnx.ModelProto, rng: np.random.Generator) -> None:
    vi = [*m.graph.input, *m.graph.output][int(rng.integers(2))]
    vi.type.tensor_type.ClearField("shape")
    if rng.random() < 0.3:
        vi.type.tensor_type.elem_type = 0


def hostile_names(m: onnx.ModelProto, rng: np.random.Generator) -> None:
    names = ["*/ int injected = 1; /*", "a b*/c/*", "\n#error x\n", "x??/", 'q"uote\\',
             "é" * 300, "", "\x00nul"]
    _pick_node(m, rng).name = names[int(rng.integers(len(names)))]


def huge_graph(m: onnx.ModelProto, rng: np.random.Generator) -> None:
    """Thousands of Identity nodes after the output, or a Reshape to a vast shape."""
    out = m.graph.output[0].name
    if rng.random() < 0.5:
        name = out
        for k in range(int(rng.integers(500, 2500))):
            new = f"chain_{k}"
            m.graph.node.append(helper.make_node("Identity", [name], [new]))
            name = new
        m.graph.output[0].name = name
    else:
        shape = numpy_helper.from_array(np.array([2**20, 2**20, -1], np.int64), "vast_shape")
        m.graph.initializer.append(shape)
        m.graph.node.append(helper.make_node("Reshape", [out, "vast_shape"], ["vast"]))
        m.graph.output[0].name = "vast"
        m.graph.output[0].type.tensor_type.ClearField("shape")


GRAPH_MUTATIONS: dict[str, Mutation] = {
    "dangling input": dangling_input, "missing initializer": missing_initializer,
    "cycle": cycle, "reversed order": reversed_order,
    "wrong attribute type": wrong_attribute_type, "bad attribute value": bad_attribute_value,
    "negative or 2^31 dims": bad_dims, "NaN weights": nan_weights,
    "unknown rank": unknown_rank, "hostile names": hostile_names, "huge graph": huge_graph,
}
BYTE_MUTATIONS = {"byte flips": _byte_flips, "truncation": _truncate}
CATEGORIES = [*BYTE_MUTATIONS, *GRAPH_MUTATIONS]


def mutants(models: list[onnx.ModelProto], count: int, seed: int) -> Iterator[tuple[str, bytes]]:
    """`count` mutants, the categories taken in turn, models and positions drawn from `seed`."""
    rng = np.random.default_rng(seed)
    for k in range(count):
        category = CATEGORIES[k % len(CATEGORIES)]
        model = models[int(rng.integers(len(models)))]
        if category in BYTE_MUTATIONS:
            yield category, BYTE_MUTATIONS[category](model.SerializeToString(), rng)
            continue
        m = onnx.ModelProto()
        m.CopyFrom(model)
        GRAPH_MUTATIONS[category](m, rng)
        yield category, m.SerializeToString()
