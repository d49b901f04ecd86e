"""ONNX's backend conformance suite, run through qcc's float reference path.

`QccBackend` is an `onnx.backend.base.Backend`: prepare = `qcc.core.onnx_import.import_model`,
run = `qcc.core.float_exec.run_float`. `run_kind` walks the cases of one kind of
`onnx.backend.test.loader.load_model_tests` (`node`, `pytorch-converted`, `pytorch-operator`):

- out of scope: the model uses an op qcc's registry has no float kernel for (listed with those ops);
- refused: every op is known but qcc declines the model with a one-line error: a QccError at
  import (e.g. a sequence-typed input) or an UnsupportedOpError from a kernel (reason kept);
- passed / failed: every test_data_set compared as onnx's own runner does
  (`Runner.assert_similar_outputs`: shape, dtype equality, allclose with the case's rtol/atol,
  NaN equal to NaN).

`one_node_model`, `run_onnxruntime` and `run_qcc` let tests compare a single kernel with
onnxruntime. `python -m qcc.driver.conformance [--kind KIND ...] [--verbose]` prints the tables and
exits 1 if any in-scope case fails.
"""

from __future__ import annotations

import glob
import os
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import click
import numpy as np
import onnx
from onnx import numpy_helper
from onnx.backend.base import Backend, BackendRep
from onnx.backend.test.case.test_case import TestCase
from onnx.backend.test.loader import load_model_tests
from onnx.backend.test.runner import Runner
from rich.console import Console
from rich.table import Table

import backends.numpy_int  # noqa: F401  (its kernels, the pre-quantized ops' among them, run here)
from qcc.core import progress
from qcc.core.errors import QccError, UnsupportedOpError
from qcc.core.float_exec import run_float
from qcc.core.ir import Graph
from qcc.core.onnx_import import import_model
from qcc.core.progress import track
from qcc.core.registry import supported_ops

KINDS = ("node", "pytorch-converted", "pytorch-operator")
DataSet = tuple[list[Any], list[Any]]


class QccBackendRep(BackendRep):
    """A model imported into qcc, run by the float executor."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        """`inputs`: one array per graph input (initializers excluded), or a name -> array dict."""
        names = [v.name for v in self.graph.inputs]
        feeds = dict(inputs) if isinstance(inputs, dict) else dict(zip(names, inputs))
        outputs = run_float(self.graph, feeds)
        return tuple(outputs[v.name] for v in self.graph.outputs)


class QccBackend(Backend):
    """onnx.backend interface to qcc (CPU only)."""

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> QccBackendRep:
        super().prepare(model, device, **kwargs)  # onnx.checker, as every backend does
        return QccBackendRep(import_model(model))

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"


@dataclass
class CaseResult:
    """The outcome of one conformance case."""

    kind: str
    name: str
    status: str  # "passed", "failed", "refused" or "out of scope"
    detail: str = ""  # first error line, refusal reason
    missing: list[str] = field(default_factory=list)  # ops qcc lacks (out of scope)
    seconds: float = 0.0

    @property
    def in_scope(self) -> bool:
        return self.status != "out of scope"


def load_cases(kind: str) -> list[TestCase]:
    """The cases of one kind, sorted by name (node cases are built in memory by onnx)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    with warnings.catch_warnings():  # onnx's case generators warn about their own overflows
        warnings.simplefilter("ignore")
        return sorted(load_model_tests(kind=kind), key=lambda t: t.name)


def case_model(case: TestCase) -> onnx.ModelProto:
    """The case's model: in memory (node cases) or its folder's model.onnx."""
    if case.model is not None:
        return case.model
    return onnx.load(os.path.join(case.model_dir, "model.onnx"))


def missing_ops(model: onnx.ModelProto, supported: set[str]) -> list[str]:
    """Op types of `model` that qcc cannot run (other domains spelled domain.op)."""
    missing = set()
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            missing.add(f"{node.domain}.{node.op_type}")
        elif node.op_type not in supported:
            missing.add(node.op_type)
    return sorted(missing)


def data_sets(case: TestCase, model: onnx.ModelProto) -> Iterator[DataSet]:
    """(inputs, expected outputs) per data set: in memory for node cases, else every
    test_data_set_*/input_i.pb, output_i.pb in the case folder."""
    if case.model_dir is None:
        for inputs, outputs in case.data_sets:
            yield [_array(t) for t in inputs], [_array(t) for t in outputs]
        return
    for folder in sorted(glob.glob(os.path.join(case.model_dir, "test_data_set*"))):
        yield _load_folder(folder, "input"), _load_folder(folder, "output")


def _load_folder(folder: str, prefix: str) -> list[np.ndarray]:
    count = len(glob.glob(os.path.join(folder, f"{prefix}_*.pb")))
    return [numpy_helper.to_array(onnx.load_tensor(os.path.join(folder, f"{prefix}_{i}.pb")))
            for i in range(count)]


def _array(item: Any) -> Any:
    return numpy_helper.to_array(item) if isinstance(item, onnx.TensorProto) else item


def first_line(error: BaseException) -> str:
    """A one-line reason: the exception type, its first non-empty line and, for a NumPy
    assertion, the lines that say what differs (shape, dtype, largest difference)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    text += "".join(f"; {ln}" for ln in lines[1:] if ln.startswith(_TELLING))
    return f"{type(error).__name__}: {text}"[:300]


_TELLING = ("Max absolute", "ACTUAL", "DESIRED", "Output", "(shapes")


def run_case(case: TestCase, supported: set[str] | None = None) -> CaseResult:
    """Classify and (if in scope) run one case on all its data sets."""
    supported = set(supported_ops()) if supported is None else supported
    model = case_model(case)
    result = CaseResult(case.kind, case.name, "passed")
    result.missing = missing_ops(model, supported)
    if result.missing:
        result.status = "out of scope"
        return result
    start = time.perf_counter()
    result.status, result.detail = _outcome(case, model)
    result.seconds = time.perf_counter() - start
    return result


def _outcome(case: TestCase, model: onnx.ModelProto) -> tuple[str, str]:
    """(status, detail) of an in-scope case. A QccError while importing, or an
    UnsupportedOpError at any point, is qcc declining the model: "refused", with its reason."""
    try:
        rep = QccBackend.prepare(model)
    except QccError as e:
        return "refused", str(e).splitlines()[0]
    except Exception as e:  # onnx.checker and import bugs are failures, reported, not raised
        return "failed", first_line(e)
    try:
        _compare(case, model, rep)
    except UnsupportedOpError as e:
        return "refused", str(e).splitlines()[0]
    except Exception as e:  # every other error is a failure of this case
        return "failed", first_line(e)
    return "passed", ""


def _compare(case: TestCase, model: onnx.ModelProto, rep: QccBackendRep) -> None:
    """Run every data set and compare as onnx's runner does (raises AssertionError)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        for inputs, expected in data_sets(case, model):
            outputs = list(rep.run(inputs))
            Runner.assert_similar_outputs(expected, outputs, rtol=case.rtol, atol=case.atol,
                                          model_dir=case.name)


def run_kind(kind: str, cases: Sequence[TestCase] | None = None) -> list[CaseResult]:
    supported = set(supported_ops())
    cases = cases if cases is not None else load_cases(kind)
    return [run_case(c, supported) for c in track(cases, f"conformance: {kind} cases")]


# -- one-node models, for comparing single kernels with onnxruntime ----------------------------

def one_node_model(op_type: str, inputs: dict[str, np.ndarray | None], attrs: dict[str, Any],
                   opset: int, n_outputs: int = 1, constants: Sequence[str] = (),
                   outputs: Sequence[np.ndarray] | None = None) -> onnx.ModelProto:
    """A model of one `op_type` node. `inputs` in ONNX order (None: an omitted optional input);
    those named in `constants` become initializers, the others graph inputs of static shape.
    Output types are those of `outputs` (e.g. a reference's results) or onnx's inference."""
    names = [k if v is not None else "" for k, v in inputs.items()]
    while names and not names[-1]:
        names.pop()  # trailing omitted inputs are left out, as exporters do
    node = onnx.helper.make_node(op_type, names, [f"y{i}" for i in range(n_outputs)], **attrs)
    graph_inputs = [_value_info(k, np.asarray(v)) for k, v in inputs.items()
                    if v is not None and k not in constants]
    inits = [numpy_helper.from_array(np.asarray(inputs[k]), k) for k in constants]
    graph = onnx.helper.make_graph([node], op_type, graph_inputs,
                                   [onnx.ValueInfoProto(name=n) for n in node.output], inits)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    if outputs is not None:
        known = {n: _value_info(n, np.asarray(a)) for n, a in zip(node.output, outputs)}
    else:
        inferred = onnx.shape_inference.infer_shapes(model)
        known = {vi.name: vi for vi in inferred.graph.value_info}
    for out in model.graph.output:
        if out.name in known:
            out.CopyFrom(known[out.name])
    return model


def _value_info(name: str, array: np.ndarray) -> onnx.ValueInfoProto:
    elem = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
    return onnx.helper.make_tensor_value_info(name, elem, array.shape)


def _feeds(model: onnx.ModelProto, inputs: dict[str, np.ndarray | None]) -> dict[str, np.ndarray]:
    return {vi.name: np.asarray(inputs[vi.name]) for vi in model.graph.input}


def run_onnxruntime(model: onnx.ModelProto, inputs: dict[str, np.ndarray | None]) -> list:
    """The model's outputs computed by onnxruntime's CPU provider."""
    import onnxruntime  # imported here: only the comparison tests need it

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
    results = session.run(None, _feeds(model, inputs))
    return [_ort_typed(r, o.type) for r, o in zip(results, session.get_outputs())]


def _ort_typed(array: Any, ort_type: str) -> Any:
    """onnxruntime hands float8/4-bit outputs back as their raw uint8 codes: view them as the
    ml_dtypes type the model declares ("tensor(float8e4m3fn)" -> float8_e4m3fn)."""
    name = ort_type.removeprefix("tensor(").removesuffix(")").upper()
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or name == "UINT8":
        return array
    elem = onnx.TensorProto.DataType.Value(name)
    return array.view(onnx.helper.tensor_dtype_to_np_dtype(elem))


def run_qcc(model: onnx.ModelProto, inputs: dict[str, np.ndarray | None]) -> list:
    """The model's outputs computed by qcc (import with constant folding, float executor)."""
    return list(QccBackend.prepare(model).run(_feeds(model, inputs)))


def run_onnx_reference(model: onnx.ModelProto, inputs: dict[str, np.ndarray | None]) -> list:
    """The model's outputs computed by onnx's reference evaluator (onnx.reference)."""
    from onnx.reference import ReferenceEvaluator

    return list(ReferenceEvaluator(model).run(None, _feeds(model, inputs)))


def assert_matches_onnxruntime(op_type: str, inputs: dict[str, np.ndarray | None],
                               attrs: dict[str, Any] | None = None, opset: int = 17,
                               n_outputs: int = 1, constants: Sequence[str] = (),
                               rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """qcc's outputs of a one-node model equal onnxruntime's (onnx's reference evaluator where
    onnxruntime has no kernel for the dtype, e.g. bfloat16): same count, shapes and dtypes,
    values within rtol/atol (NaN equal to NaN), as onnx's runner compares."""
    from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtMissing

    model = one_node_model(op_type, inputs, attrs or {}, opset, n_outputs, constants)
    try:
        expected = run_onnxruntime(model, inputs)
    except (OrtMissing, RuntimeError) as e:
        if not isinstance(e, OrtMissing) and not any(m in str(e) for m in _ORT_DTYPE_GAPS):
            raise
        expected = run_onnx_reference(model, inputs)
    # the reference's results declare the output types, so that onnx.checker accepts the model
    model = one_node_model(op_type, inputs, attrs or {}, opset, n_outputs, constants, expected)
    Runner.assert_similar_outputs(expected, run_qcc(model, inputs), rtol=rtol, atol=atol)


# onnxruntime's Python binding cannot pass these dtypes (bfloat16 inputs, FNUZ float8 outputs)
_ORT_DTYPE_GAPS = ("MLDataType", "No corresponding Numpy type")


# -- report ----------------------------------------------------------------------------------

def summary_table(results: dict[str, list[CaseResult]]) -> Table:
    table = Table(title="ONNX backend conformance (qcc float reference)")
    for col in ("kind", "cases", "in scope", "passed", "failed", "refused", "out of scope"):
        table.add_column(col, justify="left" if col == "kind" else "right")
    for kind, rs in results.items():
        count = defaultdict(int, {s: sum(r.status == s for r in rs) for s in
                                  ("passed", "failed", "refused", "out of scope")})
        table.add_row(kind, str(len(rs)), str(sum(r.in_scope for r in rs)), str(count["passed"]),
                      str(count["failed"]), str(count["refused"]), str(count["out of scope"]))
    return table


def cases_table(title: str, rows: list[CaseResult], verbose: bool) -> Table:
    table = Table(title=title, show_lines=False)
    table.add_column("kind")
    table.add_column("case")
    table.add_column("reason")
    if verbose:
        table.add_column("s", justify="right")
    for r in rows:
        table.add_row(r.kind, r.name, r.detail, *([f"{r.seconds:.2f}"] if verbose else []))
    return table


def out_of_scope_table(rows: list[CaseResult], verbose: bool) -> Table:
    """Out-of-scope cases grouped by the set of ops they miss (one row per case if verbose)."""
    table = Table(title="Out of scope (ops qcc has no kernel for)")
    table.add_column("missing ops")
    table.add_column("n", justify="right")
    table.add_column("cases")
    groups: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for r in rows:
        groups[tuple(r.missing)].append(f"{r.kind}/{r.name}" if verbose else r.name)
    for missing, names in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        table.add_row(", ".join(missing), str(len(names)), ", ".join(names))
    return table


@click.command()
@click.option("--kind", "kinds", multiple=True, type=click.Choice(KINDS),
              help="Kind(s) of cases to run (default: all three).")
@click.option("-k", "pattern", default="", help="Only cases whose name contains this text.")
@click.option("--verbose", is_flag=True, help="Also list passed cases and per-case timings.")
def main(kinds: tuple[str, ...], pattern: str, verbose: bool) -> None:
    """Run ONNX's backend conformance cases through qcc and print the results."""
    console = Console()
    progress.enable(progress.wanted())
    if not console.is_terminal:  # a log file: keep case names and reasons on one line
        console.width = 200
    results = {}
    for kind in kinds or KINDS:
        cases = [c for c in load_cases(kind) if pattern in c.name]
        results[kind] = run_kind(kind, cases)
    every = [r for rs in results.values() for r in rs]
    console.print(summary_table(results))
    failed = [r for r in every if r.status == "failed"]
    refused = [r for r in every if r.status == "refused"]
    if verbose:
        console.print(cases_table("Passed", [r for r in every if r.status == "passed"], True))
    if refused:
        console.print(cases_table("Refused (op form qcc does not support)", refused, verbose))
    console.print(out_of_scope_table([r for r in every if not r.in_scope], verbose))
    if failed:
        console.print(cases_table("Failed", failed, verbose))
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
