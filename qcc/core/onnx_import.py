"""ONNX -> Graph: loading with safety checks, shape inference, attribute decoding and
folding of constant subgraphs.

Every problem with the file (not ONNX, truncated, external data outside the model's folder,
unsupported op, subgraphs) is raised as one QccError line.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper, helper, numpy_helper

from qcc.core.errors import QccError
from qcc.core.float_exec import run_node
from qcc.core.ir import Graph, Value
from qcc.core.onnx_checks import check_graph, check_shapes
from qcc.core.registry import QCC_DOMAIN, QONNX_DOMAINS, lookup
from qcc.core.shapes import infer_shapes

MIN_OPSET = 1
# ops whose output is not a function of their inputs alone: never fold them
NOT_FOLDABLE = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                "Multinomial", "Bernoulli",
                # kept so a pre-quantized model keeps its integer weight codes (passes/fuse_qdq)
                "QuantizeLinear", "DequantizeLinear",
                # kept so compile reads trained codes and scales (passes/fold_quantizers.py)
                "Quant", "BipolarQuant", "Trunc", "APoTQuant"}
# onnxruntime contrib ops (domain com.microsoft, in its QOperator models) -> the qcc op with the
# same inputs and semantics (backends/numpy_int/qlinear.py)
ORT_CONTRIB_OPS = {"QGemm": "QLinearGemm", "QLinearAdd": "QLinearAdd",
                   "QLinearGlobalAveragePool": "QLinearGlobalAveragePool",
                   "QLinearSoftmax": "QLinearSoftmax", "QLinearAveragePool": "QLinearAveragePool"}


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an .onnx file, refusing corrupt files and external data that leaves its folder."""
    path = Path(path)
    if not path.is_file():
        raise QccError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, UnicodeDecodeError) as e:
        raise QccError(f"{path}: not a valid ONNX model ({type(e).__name__})") from None
    if not model.graph.node and not model.graph.output:
        raise QccError(f"{path}: not a valid ONNX model (empty graph)")
    _load_external_data(model, path.parent.resolve(), path)
    return model


def _load_external_data(model: onnx.ModelProto, folder: Path, path: Path) -> None:
    for tensor in external_data_helper._get_all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        try:
            info = external_data_helper.ExternalDataInfo(tensor)
        except (ValueError, TypeError) as e:  # offset or length that is not an integer
            raise QccError(f"{path}: tensor {tensor.name!r} has invalid external data "
                           f"information ({e})") from None
        if "\0" in info.location or not info.location:
            raise QccError(f"{path}: tensor {tensor.name!r} has an invalid external data "
                           f"location {info.location!r}")
        if (info.offset or 0) < 0 or (info.length or 0) < 0:
            raise QccError(f"{path}: tensor {tensor.name!r} has a negative external data "
                           f"offset or length")
        target = (folder / info.location).resolve()
        if os.path.isabs(info.location) or not target.is_relative_to(folder):
            raise QccError(f"{path}: tensor {tensor.name!r} points to external data "
                           f"{info.location!r} outside the model's folder")
        if not target.is_file():
            raise QccError(f"{path}: external data file {info.location!r} of tensor "
                           f"{tensor.name!r} is missing")
    try:
        external_data_helper.load_external_data_for_model(model, str(folder))
    except (OSError, ValueError) as e:
        raise QccError(f"{path}: cannot read external data ({e})") from None


def import_model(source: str | os.PathLike | onnx.ModelProto, fold: bool = True,
                 dynamic_dims: int | None = None) -> Graph:
    """Build a Graph from an ONNX file or ModelProto; fold constant subgraphs if `fold`.

    `dynamic_dims`, if given, replaces every symbolic or unknown dimension of the graph
    inputs before shape inference (1 gives the per-sample shapes `qcc inspect` reports).
    """
    model = source if isinstance(source, onnx.ModelProto) else load_model(source)
    model = check_graph(model)  # references, cycles, attributes, sizes: before anything runs
    model = _adopt_ort_contrib_ops(model)
    opset = _default_opset(model)
    if dynamic_dims is not None:
        model = _fix_dynamic_dims(model, dynamic_dims)
    model = _infer_shapes(model)
    check_shapes(model)
    g = model.graph
    graph = Graph(g.name or "model", opset)

    for init in g.initializer:
        graph.add_value(_const_value(init.name, _to_array(init)))
    for sparse in g.sparse_initializer:
        graph.add_value(_const_value(sparse.values.name, numpy_helper.to_array(sparse)))
    typed = {vi.name: vi for vi in [*g.input, *g.value_info, *g.output]}
    for vi in g.input:
        if vi.name not in graph.values:
            graph.inputs.append(graph.add_value(_typed_value(vi)))

    node_names: set[str] = set()
    for index, proto in enumerate(g.node):
        if proto.domain not in ("", "ai.onnx", QCC_DOMAIN, *QONNX_DOMAINS):
            raise QccError(f"unsupported op {proto.domain}.{proto.op_type} (node "
                           f"{proto.name or index!r}): only the default ONNX domain, qcc's and "
                           f"QONNX's ({QONNX_DOMAINS[0]}) are supported")
        if any(name and name not in graph.values for name in proto.input):
            missing = next(n for n in proto.input if n and n not in graph.values)
            raise QccError(f"node {proto.name!r} ({proto.op_type}) reads undefined tensor "
                           f"{missing!r}")
        inputs = [graph.values[name] if name else None for name in proto.input]
        outputs = [_typed_value(typed[name]) if name in typed else Value(name)
                   for name in proto.output if name]
        name = proto.name or f"{proto.op_type}_{index}"
        if name in node_names:  # rare: Graph.unique_node_name scans every node
            name = graph.unique_node_name(name)
        node_names.add(name)
        node = graph.add_node(proto.op_type, inputs, outputs, _attributes(proto), name)
        node.opset, node.domain = opset, proto.domain
        lookup(node)  # refuse unsupported ops at import, naming op and node

    for vi in g.output:
        if vi.name not in graph.values:
            raise QccError(f"graph output {vi.name!r} is never produced")
        graph.outputs.append(graph.values[vi.name])
    if fold:
        fold_constants(graph)
    infer_shapes(graph)  # what ONNX's whole-model inference left open (qcc's own ops)
    return graph


def fold_constants(graph: Graph) -> bool:
    """Evaluate every node whose inputs are all constant (and Shape of statically known
    shapes), replacing its outputs by constants. Returns whether anything changed."""
    changed = False
    for node in list(graph.nodes):
        if node.op_type in NOT_FOLDABLE:
            continue
        if node.op_type == "Shape" and _static(node.inputs[0]) and not node.attrs:
            results = [np.array(node.inputs[0].shape, dtype=np.int64)]
        elif all(v is None or v.is_const for v in node.inputs):
            results = run_node(node, [v.const if v is not None else None for v in node.inputs])
        else:
            continue
        if any(v in graph.outputs for v in node.outputs):
            continue
        for value, array in zip(node.outputs, results):
            const = graph.add_const(value.name + "_folded", array)
            graph.replace_all_uses(value, const)
        graph.remove_node(node)
        changed = True
    graph.remove_unused()
    return changed


def _adopt_ort_contrib_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with onnxruntime's com.microsoft QGemm, QLinearAdd and QLinearGlobalAveragePool
    nodes moved to the qcc ops of the same inputs and semantics; other contrib ops are refused."""
    if not any(node.domain == "com.microsoft" for node in model.graph.node):
        return model
    model = copy.deepcopy(model)
    for node in model.graph.node:
        if node.domain != "com.microsoft":
            continue
        if node.op_type not in ORT_CONTRIB_OPS:
            raise QccError(f"unsupported op com.microsoft.{node.op_type} (node {node.name!r}); "
                           f"qcc runs the contrib ops {', '.join(sorted(ORT_CONTRIB_OPS))}")
        node.op_type, node.domain = ORT_CONTRIB_OPS[node.op_type], QCC_DOMAIN
    if QCC_DOMAIN not in {o.domain for o in model.opset_import}:
        model.opset_import.append(helper.make_opsetid(QCC_DOMAIN, 1))
    return model


def _fix_dynamic_dims(model: onnx.ModelProto, size: int) -> onnx.ModelProto:
    model = copy.deepcopy(model)
    initializers = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in initializers or not vi.type.HasField("tensor_type"):
            continue
        for dim in vi.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = size
    return model


def _static(v: Value | None) -> bool:
    return v is not None and v.shape is not None and all(d >= 0 for d in v.shape)


def _default_opset(model: onnx.ModelProto) -> int:
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return op.version
    return onnx.defs.onnx_opset_version()


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as e:  # onnx raises several unrelated types for a model it cannot type
        raise QccError(f"shape inference failed: {str(e).splitlines()[0]}") from None


def _to_array(tensor: onnx.TensorProto) -> np.ndarray:
    try:
        return numpy_helper.to_array(tensor)
    except Exception as e:  # truncated raw_data and unknown dtypes surface as various errors
        raise QccError(f"tensor {tensor.name!r} cannot be read: {e}") from None


def _const_value(name: str, array: np.ndarray) -> Value:
    return Value(name, tuple(array.shape), array.dtype, array)


def _typed_value(vi: onnx.ValueInfoProto) -> Value:
    t = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        raise QccError(f"tensor {vi.name!r} is not a plain tensor (sequences, maps and "
                       "optionals are not supported)")
    dtype = helper.tensor_dtype_to_np_dtype(t.elem_type) if t.elem_type else np.dtype(np.float32)
    shape = None
    if t.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
    return Value(vi.name, shape, np.dtype(dtype))


def _attributes(proto: onnx.NodeProto) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for a in proto.attribute:
        if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            raise QccError(f"unsupported op {proto.op_type} (node {proto.name!r}): "
                           "subgraph attributes are not supported")
        value = helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, onnx.TensorProto):
            value = _to_array(value)
        elif isinstance(value, list):
            value = [v.decode() if isinstance(v, bytes) else
                     _to_array(v) if isinstance(v, onnx.TensorProto) else v for v in value]
        attrs[a.name] = value
    return attrs
