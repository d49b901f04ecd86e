"""Shape and dtype inference (qcc.core.shapes) against references written by others: the output
arrays of ONNX's node conformance cases, onnxruntime's intermediate tensors on the zoo models, and
the NumPy integer interpreter (the arithmetic's specification) on integer graphs; code ranges
(qcc.core.ops.code_ranges) against the codes the interpreter writes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import backends.numpy_int  # noqa: F401  (registers the integer kernels)
from backends.c.emit import emit_source
from backends.numpy_int import run_integer
from passes import run_passes
from passes.calibrate import calibrate
from passes.quantize_graph import QuantConfig, quantize_graph
from qcc import zoo
from qcc.core.errors import QccError
from qcc.core.onnx_export import export_model, read_annotations
from qcc.core.onnx_import import import_model
from qcc.core.ops.code_ranges import code_ranges, storage_range
from qcc.core.registry import supported_ops
from qcc.core.shapes import value_types
from qcc.driver import conformance

SCHEMES = [("fixed", 8), ("affine", 8), ("apot", 4), ("binary", 8), ("ternary", 8)]


def _node_cases() -> list:
    supported = set(supported_ops())
    return [c for c in conformance.load_cases("node")
            if not conformance.missing_ops(conformance.case_model(c), supported)]


@pytest.mark.slow
def test_node_cases_output_shapes_match_onnx_reference_outputs() -> None:
    """Every graph output whose shape inference is static has the expected output's shape
    and dtype, and inference is static for nearly all of them (not where a shape is the value
    of a graph input: Reshape's shape, Pad's pads, Slice's starts given as inputs)."""
    checked = static = 0
    wrong = []
    for case in _node_cases():
        model = conformance.case_model(case)
        try:
            graph = import_model(model)
        except QccError:
            continue  # refused cases are the conformance test's business
        for inputs, expected in conformance.data_sets(case, model):
            feeds = dict(zip([v.name for v in graph.inputs], inputs))
            types = value_types(graph, {n: np.shape(x) for n, x in feeds.items()})
            for value, want in zip(graph.outputs, expected):
                checked += 1
                t = types[value.name]
                if t.shape is None or any(d < 0 for d in t.shape):
                    continue
                static += 1
                want = np.asarray(want)
                if t.shape != want.shape or t.dtype != want.dtype:
                    wrong.append(f"{case.name}/{value.name}: {t.shape} {t.dtype}, "
                                 f"expected {want.shape} {want.dtype}")
            break  # one data set per case: shapes do not depend on values
    assert not wrong, "\n".join(wrong[:20])
    assert checked > 400 and static >= 0.93 * checked, (static, checked)


@pytest.mark.parametrize("name", sorted(zoo.MODELS))
def test_zoo_float_shapes_match_onnxruntime(name: str) -> None:
    model = zoo.MODELS[name]()
    graph = import_model(model)
    shape = tuple(d if d > 0 else 2 for d in graph.inputs[0].shape)
    types = value_types(graph, {graph.inputs[0].name: shape})
    wanted = [v.name for n in graph.nodes for v in n.outputs]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    produced = {o for n in probe.graph.node for o in n.output}
    for name_ in wanted:
        if name_ in produced and name_ not in known:
            probe.graph.output.append(helper.make_empty_tensor_value_info(name_))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.zeros(shape, np.float32)
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, {graph.inputs[0].name: x})))
    compared = 0
    for value in wanted:
        if value in got:
            assert types[value].shape == got[value].shape, value
            assert types[value].dtype == got[value].dtype, value
            compared += 1
    assert compared >= len(graph.nodes) // 2


def _integer(name: str, scheme: str, bits: int):
    graph = run_passes(import_model(zoo.MODELS[name]()), ["fold_batchnorm"])
    x = np.random.default_rng(0).normal(size=(16, *graph.inputs[0].shape[1:]))
    return quantize_graph(graph, calibrate(graph, x.astype(np.float32)),
                          QuantConfig(scheme=scheme, default_bits=bits))


@pytest.mark.parametrize("scheme,bits", SCHEMES)
@pytest.mark.parametrize("name", ["mlp_digits", "resnet8"])
def test_integer_graph_types_match_the_interpreter(name: str, scheme: str, bits: int) -> None:
    integer = _integer(name, scheme, bits)
    inp = integer.inputs[0]
    shape = tuple(d if d > 0 else 3 for d in inp.shape)
    env, _ = run_integer(integer, {inp.name: np.zeros(shape, inp.dtype)}, keep_all=True)
    types = value_types(integer, {inp.name: shape})
    for tensor, array in env.items():
        assert (types[tensor].shape, types[tensor].dtype) == (array.shape, array.dtype), tensor


def test_written_integer_graph_reloads_with_shapes_dtypes_and_specs() -> None:
    integer = _integer("resnet8", "apot", 4)
    model = export_model(integer)
    loaded = import_model(model)
    read_annotations(model, loaded)
    assert set(loaded.values) == set(integer.values)
    for name, v in integer.values.items():
        w = loaded.values[name]
        assert w.shape is not None and w.shape == v.shape, name
        assert w.dtype == v.dtype and w.quant == v.quant, name


@pytest.mark.parametrize("scheme,bits", SCHEMES)
def test_code_ranges_bound_every_code_the_interpreter_writes(scheme: str, bits: int) -> None:
    integer = _integer("resnet8", scheme, bits)
    inp = integer.inputs[0]
    shape = (1, *inp.shape[1:])  # the zoo's models take one sample
    ranges = code_ranges(integer, value_types(integer, {inp.name: shape}))
    assert ranges
    rng = np.random.default_rng(1)
    for _ in range(4):
        x = 3 * rng.normal(size=shape).astype(np.float32)
        env, _ = run_integer(integer, {inp.name: x}, keep_all=True)
        for tensor, (lo, hi) in ranges.items():
            assert lo <= env[tensor].min() and env[tensor].max() <= hi, tensor
        for tensor, (lo, hi) in ranges.items():  # and never wider than the storage type
            assert storage_range(env[tensor].dtype)[0] <= lo <= hi <= storage_range(
                env[tensor].dtype)[1], tensor


def test_c_library_of_a_reloaded_graph_is_the_same() -> None:
    """The C emitter reads only the IR: the written and re-loaded graph gives the same C."""
    integer = _integer("convnet_cifar", "fixed", 8)
    model = export_model(integer)
    loaded = import_model(model)
    read_annotations(model, loaded)
    assert emit_source(loaded, "m").files == emit_source(integer, "m").files
