"""ONNX's own backend conformance suite (node, pytorch-converted, pytorch-operator) through qcc.

One test per in-scope case (every op of its model has a float kernel in qcc's registry): it must
pass on all its data sets with the case's tolerances, compared as onnx's runner compares. A case
that qcc declines with a one-line error ("refused") is reported as an expected failure with its
reason. The expected outputs were written by ONNX's authors, not by qcc.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from onnx.backend.test.case.test_case import TestCase

from qcc.core.errors import UnsupportedOpError
from qcc.core.ir import Node
from qcc.core.registry import OPS, lookup, supported_ops
from qcc.driver import conformance

CASES = {kind: conformance.load_cases(kind) for kind in conformance.KINDS}
SUPPORTED = set(supported_ops())
IN_SCOPE = [
    pytest.param(case, id=f"{kind}/{case.name}")
    for kind, cases in CASES.items() for case in cases
    if not conformance.missing_ops(conformance.case_model(case), SUPPORTED)
]

# the ops this project's float kernels cover; a case made only of them must be in scope
CORE_OPS = {
    "Add", "Sub", "Mul", "Div", "Sum", "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "Tanh",
    "HardSigmoid", "HardSwish", "Softmax", "LogSoftmax", "Flatten", "Reshape", "Transpose",
    "Concat", "Split", "Slice", "Squeeze", "Unsqueeze", "Pad", "Identity", "Constant",
    "ConstantOfShape", "Shape", "Gather", "Cast", "ReduceMean",
}


@pytest.mark.parametrize("case", IN_SCOPE)
def test_in_scope_case_passes(case: TestCase) -> None:
    result = conformance.run_case(case, SUPPORTED)
    if result.status == "refused":
        pytest.xfail(f"refused: {result.detail}")
    assert result.status == "passed", result.detail


def _registry_knows(domain: str, op_type: str) -> bool:
    """Ask the registry the way the importer does (lookup of a node), not supported_ops()."""
    try:
        lookup(Node(op_type, "probe", [], [], domain=domain))
    except UnsupportedOpError:
        return False
    return True


def test_out_of_scope_list_is_what_the_registry_implies() -> None:
    in_scope = {(p.values[0].kind, p.values[0].name) for p in IN_SCOPE}
    for kind, cases in CASES.items():
        for case in cases:
            nodes = conformance.case_model(case).graph.node
            unknown = sorted({n.op_type if n.domain in ("", "ai.onnx") else
                              f"{n.domain}.{n.op_type}" for n in nodes
                              if not _registry_knows(n.domain, n.op_type)})
            assert ((kind, case.name) in in_scope) == (not unknown), case.name
            if unknown:
                result = conformance.run_case(case, SUPPORTED)
                assert result.status == "out of scope" and result.missing == unknown, case.name
                assert not {n.op_type for n in nodes} <= CORE_OPS, case.name


def test_core_ops_are_registered() -> None:
    assert CORE_OPS <= SUPPORTED
    assert all(OPS[op].kernel is not None for op in CORE_OPS)


@pytest.mark.parametrize("bug", ["value", "dtype", "shape"])
def test_harness_detects_a_wrong_kernel(monkeypatch: pytest.MonkeyPatch, bug: str) -> None:
    case = next(c for c in CASES["node"] if c.name == "test_relu")
    original = OPS["Relu"].kernel
    wrong = {
        "value": lambda node, x: original(node, x) + np.float32(1e-3),
        "dtype": lambda node, x: original(node, x).astype(np.float64),
        "shape": lambda node, x: original(node, x)[:1],
    }[bug]
    monkeypatch.setattr(OPS["Relu"], "kernel", wrong)
    result = conformance.run_case(case, SUPPORTED)
    assert result.status == "failed" and result.detail.startswith("AssertionError")


def test_nan_in_expected_output_equals_nan() -> None:
    """Clip of NaN stays NaN (onnx's suite has no such case): NaN == NaN as in the runner."""
    x = np.array([np.nan, -2.0, 3.0], np.float32)
    model = conformance.one_node_model("Clip", {"x": x, "lo": np.float32(-1), "hi": np.float32(1)},
                                       {}, 13)
    got = conformance.run_qcc(model, {"x": x, "lo": np.float32(-1), "hi": np.float32(1)})
    conformance.Runner.assert_similar_outputs([np.array([np.nan, -1, 1], np.float32)], got,
                                              rtol=1e-3, atol=1e-7)


def test_command_line_reports_and_exits_zero() -> None:
    proc = subprocess.run([sys.executable, "-m", "qcc.driver.conformance", "--kind",
                           "pytorch-operator"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "pytorch-operator" in proc.stdout and "Out of scope" in proc.stdout
