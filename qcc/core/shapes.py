"""Shape and dtype inference over a Graph, through the op registry.

Each op's rule is its registry entry's `shape` function (qcc's own integer ops register theirs in
qcc.core.ops.integer); an ONNX op without one uses ONNX's schema inference
(`onnx.shape_inference.infer_node_outputs`), which is the specification of those ops' shapes.

Integer graphs run ONNX's code-moving ops (Relu, MaxPool, Reshape, Gather, AveragePool, ...) on
integer codes, types their schemas may not list (MaxPool of int16 codes, Gather with int8
indices). Those inputs are typed with a type the schema accepts for the inference, and an output
bound to the same type variable gets the codes' real dtype back: the op moves the codes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import defs, helper, numpy_helper
from onnx.shape_inference import infer_node_outputs

from qcc.core.float_exec import run_node
from qcc.core.ir import Graph, Node, Value
from qcc.core.registry import TensorType, registered

# constants up to this size are handed to ONNX's inference as data (Reshape's shape, Slice's
# starts, Pad's pads); weights never decide a shape
DATA_LIMIT = 4096
# the types tried, in order, for an input whose dtype the schema does not accept
STAND_INS = ("tensor(float)", "tensor(int64)", "tensor(int32)")
_NUMPY_NAMES = {"float32": "float", "float64": "double"}
# ops whose outputs are not a function of their inputs alone: never evaluated
NOT_FOLDABLE = ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                "Multinomial", "Bernoulli")


def infer_shapes(graph: Graph) -> None:
    """Fill `shape` and `dtype` of every node output of `graph` in place.

    A dimension inference cannot tell (-1) keeps a value the Value already had, so shapes ONNX
    inferred for the whole model at import are never made vaguer."""
    types = value_types(graph)
    for node in graph.nodes:
        for value in node.outputs:
            inferred = types.get(value.name)
            if inferred is None:
                continue
            value.shape = _merge(value.shape, inferred.shape)
            value.dtype = inferred.dtype


def value_types(graph: Graph, input_shapes: dict[str, tuple[int, ...]] | None = None
                ) -> dict[str, TensorType]:
    """The TensorType of every value of `graph`, with the graph inputs' shapes replaced by
    `input_shapes` where given (the C backend asks for batch 1); nothing is modified."""
    input_shapes = input_shapes or {}
    env: dict[str, TensorType] = {}
    for name, v in graph.values.items():
        if v.is_const:
            env[name] = TensorType(tuple(v.const.shape), v.const.dtype, v.const)
    for v in graph.inputs:
        env[v.name] = TensorType(tuple(input_shapes.get(v.name, v.shape or ())) if (
            v.name in input_shapes or v.shape is not None) else None, v.dtype)
    for node in graph.nodes:
        ins = [None if v is None else env.get(v.name) or _known(v) for v in node.inputs]
        outs = _with_data(node, ins, output_types(node, ins))
        for value, t in zip(node.outputs, outs):
            env[value.name] = t if t.shape is not None or value.shape is None else TensorType(
                value.shape, t.dtype)
        for value in node.outputs[len(outs):]:
            env[value.name] = _known(value)
    return env


def _with_data(node: Node, inputs: list[TensorType | None], outs: list[TensorType]
               ) -> list[TensorType]:
    """`outs` with their values where they are small constants of the inputs (a Shape of a
    static shape, arithmetic on such), so a later Reshape or Slice gets a static shape: ONNX's
    data propagation, which per-node inference does not do."""
    if node.op_type == "Shape" and not node.attrs and inputs[0] is not None and \
            inputs[0].shape is not None and all(d >= 0 for d in inputs[0].shape):
        return [TensorType((len(inputs[0].shape),), np.dtype(np.int64),
                           np.array(inputs[0].shape, np.int64))]
    small = all(t is None or (t.const is not None and t.const.size <= DATA_LIMIT)
                for t in inputs)
    entry = registered(node.op_type)
    if not small or not inputs or entry is None or entry.kernel is None or \
            node.op_type in NOT_FOLDABLE:
        return outs
    try:
        arrays = run_node(node, [None if t is None else t.const for t in inputs])
    except Exception:  # a kernel refusing odd constants: the types alone stand
        return outs
    return [TensorType(tuple(a.shape), a.dtype, a) for a in arrays]


def output_types(node: Node, inputs: list[TensorType | None]) -> list[TensorType]:
    """One TensorType per output of `node` given its inputs' (registry rule, else ONNX's)."""
    entry = registered(node.op_type)
    if entry is not None and entry.shape is not None:
        return entry.shape(node, inputs)
    if node.domain in ("", "ai.onnx"):
        return onnx_output_types(node, inputs)
    return []


def onnx_output_types(node: Node, inputs: list[TensorType | None], op_type: str | None = None,
                      attrs: dict | None = None) -> list[TensorType]:
    """ONNX's schema inference for one node (as `op_type` with `attrs` if given: qcc's
    QConv asks for Conv's rule); an output it cannot type comes back with shape None."""
    op_type = op_type or node.op_type
    attrs = node.attrs if attrs is None else attrs
    try:
        schema = defs.get_schema(op_type, node.opset, "")
    except defs.SchemaError:
        return []
    names = [f"in{i}" if t is not None else "" for i, t in enumerate(inputs)]
    outs = [f"out{i}" for i in range(len(node.outputs))]
    proto = helper.make_node(op_type, names, outs,
                             **{k: _attr(v) for k, v in attrs.items()})
    types, data, restored = {}, {}, {}
    for i, (name, t) in enumerate(zip(names, inputs)):
        if t is None:
            continue
        formal = schema.inputs[min(i, len(schema.inputs) - 1)] if schema.inputs else None
        elem, real = _elem_type(t.dtype, formal, schema)
        if real is not None:
            restored[formal.type_str] = real
        shape = None if t.shape is None else [d if d >= 0 else None for d in t.shape]
        types[name] = helper.make_tensor_type_proto(elem, shape)
        if t.const is not None and t.const.size <= DATA_LIMIT and real is None:
            data[name] = numpy_helper.from_array(np.asarray(t.const), name)
    try:
        result = infer_node_outputs(schema, proto, types, data,
                                    opset_imports=[helper.make_opsetid("", node.opset)])
    except Exception:  # onnx raises several unrelated types for a node it cannot type
        return []
    typed = []
    for i, name in enumerate(outs):
        formal = schema.outputs[min(i, len(schema.outputs) - 1)] if schema.outputs else None
        typed.append(_from_proto(result.get(name),
                                 restored.get(formal.type_str) if formal else None))
    return typed


def _elem_type(dtype: np.dtype, formal: defs.OpSchema.FormalParameter | None,
               schema: defs.OpSchema) -> tuple[int, np.dtype | None]:
    """The ONNX element type to infer with, and the real dtype when a stand-in replaced it."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    if formal is None:
        return elem, None
    allowed = next((c.allowed_type_strs for c in schema.type_constraints
                    if c.type_param_str == formal.type_str), None)
    name = f"tensor({_NUMPY_NAMES.get(np.dtype(dtype).name, np.dtype(dtype).name)})"
    if not allowed or name in allowed:
        return elem, None
    stand_in = next((s for s in STAND_INS if s in allowed), None)
    if stand_in is None:
        return elem, None
    stand_dtype = {"tensor(float)": np.float32, "tensor(int64)": np.int64,
                   "tensor(int32)": np.int32}[stand_in]
    return helper.np_dtype_to_tensor_dtype(np.dtype(stand_dtype)), np.dtype(dtype)


def _from_proto(proto: onnx.TypeProto | None, real: np.dtype | None) -> TensorType:
    if proto is None or not proto.HasField("tensor_type"):
        return TensorType(None, real or np.dtype(np.float32))
    t = proto.tensor_type
    dtype = real or (np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)) if t.elem_type
                     else np.dtype(np.float32))
    shape = None
    if t.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
    return TensorType(shape, dtype)


def same_shape(x: TensorType | None, dtype: np.dtype) -> TensorType:
    """An elementwise op's output: x's shape in `dtype`."""
    return TensorType(None if x is None else x.shape, np.dtype(dtype))


def _known(v: Value) -> TensorType:
    return TensorType(v.shape, v.dtype, v.const)


def _merge(old: tuple[int, ...] | None, new: tuple[int, ...] | None) -> tuple[int, ...] | None:
    if new is None:
        return old
    if old is None or len(old) != len(new):
        return new
    return tuple(n if n >= 0 else o for o, n in zip(old, new))


def _attr(value: object) -> object:
    if isinstance(value, np.ndarray):
        return numpy_helper.from_array(value)
    return value
