"""Graph IR invariants: consumer links, edits, order, liveness, JSON round trip of annotations."""

from __future__ import annotations

import json

import numpy as np
import onnx

from qcc import zoo
from qcc.core.float_exec import run_float
from qcc.core.ir import Graph, Value
from qcc.core.onnx_export import export_model, read_annotations
from qcc.core.onnx_import import import_model
from qcc.core.quant_spec import QuantSpec


def small_graph() -> Graph:
    g = Graph("g")
    x = g.add_value(Value("x", (2,)))
    g.inputs.append(x)
    one = g.add_const("one", np.ones(2, np.float32))
    a = g.add_node("Add", [x, one], [Value("a", (2,))]).outputs[0]
    b = g.add_node("Relu", [a], [Value("b", (2,))]).outputs[0]
    g.outputs.append(b)
    return g


def test_consumers_and_liveness() -> None:
    g = small_graph()
    g.check()
    assert [n.op_type for n in g.values["a"].consumers] == ["Relu"]
    assert g.liveness() == {"x": (0, 0), "a": (0, 1), "b": (1, 2)}


def test_replace_all_uses_keeps_graph_output_name() -> None:
    g = small_graph()
    relu = g.values["b"].producer
    g.replace_all_uses(g.values["b"], g.values["a"])
    g.remove_node(relu)
    g.check()
    assert [v.name for v in g.outputs] == ["b"] and g.outputs[0].producer.op_type == "Add"
    np.testing.assert_array_equal(run_float(g, {"x": np.array([-3, 1], np.float32)})["b"],
                                  [-2, 2])


def test_toposort_restores_order() -> None:
    g = small_graph()
    g.nodes.reverse()
    g.toposort()
    assert [n.op_type for n in g.nodes] == ["Add", "Relu"]


def test_quant_spec_strings_and_json() -> None:
    specs = [QuantSpec("fixed", 8, True, pdr=0.5), QuantSpec("apot", 4, True, k=2, alpha=1.5,
                                                             gamma=1.0),
             QuantSpec("affine", 8, False, scale=0.0123, zero_point=128), QuantSpec("binary", 1),
             QuantSpec("pot", 4), QuantSpec("ternary", 2), QuantSpec()]
    assert [str(s) for s in specs] == ["fx8(r=2^-1)", "apot4k2", "affine8u(s=0.0123,z=128)",
                                       "bin", "pot4", "ter", "float"]
    for spec in specs:
        assert QuantSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert specs[0].step == 2.0 ** -8


def test_annotations_survive_onnx_round_trip(tmp_path) -> None:
    g = import_model(zoo.mlp_digits())
    g.outputs[0].quant = QuantSpec("fixed", 8, True, pdr=4.0)
    path = tmp_path / "m.onnx"
    model = export_model(g)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    back = import_model(path)
    read_annotations(onnx.load(path), back)
    assert back.outputs[0].quant == g.outputs[0].quant
    x = np.random.default_rng(0).random((1, 64), np.float32)
    np.testing.assert_array_equal(run_float(back, {"input": x})["output"],
                                  run_float(g, {"input": x})["output"])


def test_constant_subgraphs_fold() -> None:
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape of a static shape folds away."""
    from onnx import helper
    h = helper
    nodes = [
        h.make_node("Shape", ["x"], ["s"]),
        h.make_node("Constant", [], ["i0"], value=onnx.numpy_helper.from_array(np.array(0))),
        h.make_node("Gather", ["s", "i0"], ["n"]),
        h.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
        h.make_node("Constant", [], ["m1"], value=onnx.numpy_helper.from_array(np.array([-1]))),
        h.make_node("Concat", ["n1", "m1"], ["shape"], axis=0),
        h.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", 1, [2, 3, 4])],
                         [h.make_tensor_value_info("y", 1, None)],
                         [onnx.numpy_helper.from_array(np.array([0]), "ax")])
    g = import_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]))
    assert [n.op_type for n in g.nodes] == ["Reshape"]
    np.testing.assert_array_equal(g.nodes[0].inputs[1].const, [2, -1])


def test_deepcopy_of_a_long_chain_keeps_links_and_leaves_the_original() -> None:
    """copy.deepcopy of a 2000-node chain (the default recursion follows producer / consumer
    links and overflows the stack well below that) gives an equal, independent graph."""
    import copy

    g = Graph()
    x = g.add_value(Value("x", (1, 4)))
    g.inputs = [x]
    for i in range(2000):
        y = g.add_value(Value(f"y{i}", (1, 4)))
        g.add_node("Relu", [x], [y], name=f"relu{i}")
        x = y
    g.outputs = [x]
    h = copy.deepcopy(g)
    assert [n.name for n in h.nodes] == [n.name for n in g.nodes]
    assert not {id(n) for n in h.nodes} & {id(n) for n in g.nodes}
    for node in h.nodes:
        x, y = node.inputs[0], node.outputs[0]
        assert y.producer is node and h.values[y.name] is y
        assert node in x.consumers and h.values[x.name] is x
    assert h.inputs[0] is h.values["x"] and h.outputs[0] is h.values["y1999"]
    h.outputs = [h.values["y1998"]]
    h.remove_node(h.nodes[-1])
    assert len(g.nodes) == 2000 and g.values["y1998"].consumers == [g.nodes[-1]]
