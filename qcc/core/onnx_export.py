"""Graph -> ONNX: the inverse of onnx_import, keeping QuantSpec annotations.

Annotations are stored as JSON in the model's metadata (key `qcc.quant`), so a compiled graph
saved as `model.qcc.onnx` loads back with its precisions.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qcc.core.ir import Graph, Value
from qcc.core.quant_spec import QuantSpec
from qcc.core.registry import QCC_DOMAIN

QUANT_KEY = "qcc.quant"


def export_model(graph: Graph) -> onnx.ModelProto:
    """A ModelProto equivalent to `graph` (constants become initializers)."""
    nodes = [
        helper.make_node(n.op_type, [v.name if v is not None else "" for v in n.inputs],
                         [v.name for v in n.outputs], name=n.name, domain=n.domain or None,
                         **{k: _attr(v) for k, v in n.attrs.items()})
        for n in graph.nodes
    ]
    inits = [numpy_helper.from_array(np.asarray(v.const), name) for name, v in graph.values.items()
             if v.is_const]
    g = helper.make_graph(nodes, graph.name, [_info(v) for v in graph.inputs],
                          [_info(v) for v in graph.outputs], initializer=inits,
                          value_info=[_info(v) for v in graph.values.values()
                                      if v.shape is not None and not v.is_const
                                      and v not in graph.inputs and v not in graph.outputs])
    opsets = [helper.make_opsetid("", graph.opset)]
    if any(n.domain == QCC_DOMAIN for n in graph.nodes):
        opsets.append(helper.make_opsetid(QCC_DOMAIN, 1))
    for domain in sorted({n.domain for n in graph.nodes} - {"", "ai.onnx", QCC_DOMAIN}):
        opsets.append(helper.make_opsetid(domain, 1))  # QONNX's quantizers (version 1)
    model = helper.make_model(g, opset_imports=opsets, producer_name="qcc")
    quant = {name: v.quant.to_dict() for name, v in graph.values.items() if v.quant is not None}
    if quant:
        helper.set_model_props(model, {QUANT_KEY: json.dumps(quant, sort_keys=True)})
    describe_for_netron(model, graph)
    return model


def describe_for_netron(model: onnx.ModelProto, graph: Graph) -> None:
    """Write each annotated value's precision where Netron shows it: the doc_string and
    metadata_props (qcc.format, qcc.bits, qcc.spec) of its ValueInfoProto, and the doc_string of
    the nodes that read or write it. Values without a value_info (constants, tensors of unknown
    shape) get one with an unset element type and shape, which import reads back as before."""
    g = model.graph
    infos = {vi.name: vi for vi in [*g.input, *g.output, *g.value_info]}
    described: dict[str, str] = {}
    for name, v in graph.values.items():
        if v.quant is None:
            continue
        info = infos.get(name)
        if info is None:
            info = g.value_info.add(name=name)
            info.type.tensor_type.SetInParent()
        described[name] = f"{v.quant} ({_format_words(v.quant)})"
        info.doc_string = f"qcc: {described[name]}"
        for key, text in (("qcc.format", v.quant.format), ("qcc.bits", str(v.quant.bits)),
                          ("qcc.spec", str(v.quant))):
            info.metadata_props.add(key=key, value=text)
    for proto in g.node:
        lines = [f"{name}: {described[name]}" for name in [*proto.input, *proto.output]
                 if name in described]
        if lines:
            proto.doc_string = "qcc precision\n" + "\n".join(lines)


def _format_words(spec: QuantSpec) -> str:
    """The spec in words: `fixed point, 6 bits, signed, range 2, step 0.0625`."""
    words = [{"fixed": "fixed point", "affine": "affine", "apot": "APoT", "pot": "power of two",
              "binary": "binary", "ternary": "ternary", "float": "float"}[spec.format],
             f"{spec.bits} bits", "signed" if spec.signed else "unsigned"]
    if spec.format == "fixed" and "pdrs" in spec.extra:
        pdrs = spec.extra["pdrs"]
        words += [f"range {min(pdrs):g} to {max(pdrs):g} per channel"]
    elif spec.format == "fixed" and spec.pdr:
        words += [f"range {spec.pdr:g}", f"step {spec.step:g}"]
    for label, value in (("scale", spec.scale), ("zero point", spec.zero_point),
                         ("k", spec.k), ("alpha", spec.alpha), ("gamma", spec.gamma)):
        if value is not None:
            words.append(f"{label} {value:g}")
    return ", ".join(words)


def read_annotations(model: onnx.ModelProto, graph: Graph) -> None:
    """Put the QuantSpecs saved by export_model back onto the graph's values."""
    for prop in model.metadata_props:
        if prop.key == QUANT_KEY:
            for name, spec in json.loads(prop.value).items():
                if name in graph.values:
                    graph.values[name].quant = QuantSpec.from_dict(spec)


def _info(v: Value) -> onnx.ValueInfoProto:
    shape = None if v.shape is None else [d if d >= 0 else None for d in v.shape]
    return helper.make_tensor_value_info(v.name, helper.np_dtype_to_tensor_dtype(v.dtype), shape)


def _attr(value: object) -> object:
    if isinstance(value, np.ndarray):
        return numpy_helper.from_array(value)
    return value
