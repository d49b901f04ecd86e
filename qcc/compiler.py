"""The compile pipeline, one straight line: ONNX -> Graph -> passes -> integer graph -> OUTDIR.

    load + import  ->  fold_batchnorm  ->  calibrate  ->  [--bits auto: annotate_precision]
                   ->  quantize_graph  ->  write OUTDIR (model.qcc.onnx, reference.onnx,
                                                        precision.json)

The output folder is written to a temporary name and renamed into place only when everything
succeeded, so a failed compile never leaves a half-written OUTDIR.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from passes import run_passes
from passes.calibrate import TensorStats, calibrate
from passes.quantize_graph import LayerConfig, QuantConfig, quantize_graph
from passes.schemes import SCHEMES, get_scheme
from qcc.errors import QccError
from qcc.io import atomic_dir, load_npz
from qcc.ir import Graph
from qcc.layers import weighted_nodes
from qcc.onnx_export import export_model, read_annotations
from qcc.onnx_import import import_model

INTEGER_MODEL = "model.qcc.onnx"
REFERENCE_MODEL = "reference.onnx"
PRE_QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul",
                     "ConvInteger", "MatMulInteger", "QLinearGemm", "QLinearAdd"}
PRECISION_FILE = "precision.json"
DEFAULT_CALIBRATION = 256  # samples of N(0, 1) noise when no --calib file is given


@dataclass
class Compiled:
    """What a compile produced, in memory (the CLI writes it out)."""

    reference: Graph  # the float graph after fold_batchnorm
    integer: Graph
    config: QuantConfig
    stats: dict[str, TensorStats]
    precision: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # lines for stderr
    training: Any = None  # --train: backends.numpy_int.training.outdir.Training


def load_data(path: Path | None, graph: Graph, what: str, need_labels: bool = False
              ) -> tuple[np.ndarray, np.ndarray | None]:
    """x (and y) from an .npz with keys `x` and `y`, checked against the model's input."""
    if path is None:
        raise QccError(f"no {what} file given")
    data = load_npz(Path(path), what, keys=("x", "y") if need_labels else ("x",))
    x = data["x"]
    inp = graph.inputs[0]
    if x.dtype != inp.dtype:
        raise QccError(f"{what}: {path}: x has dtype {x.dtype}, the model expects {inp.dtype}")
    if inp.shape is not None and (x.ndim != len(inp.shape) or any(
            d > 0 and d != s for d, s in zip(inp.shape[1:], x.shape[1:]))):
        raise QccError(f"{what}: {path}: x has shape {list(x.shape)}, the model expects "
                       f"N x {list(inp.shape[1:])}")
    if len(x) == 0:
        raise QccError(f"{what}: {path}: x holds no samples")
    y = data.get("y")
    if y is not None and (y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "iu"):
        raise QccError(f"{what}: {path}: y must be one integer label per sample of x")
    return x, y


def default_calibration(graph: Graph, count: int = DEFAULT_CALIBRATION) -> np.ndarray:
    shape = tuple(d if d > 0 else 1 for d in graph.inputs[0].shape[1:])
    rng = np.random.default_rng(0)
    return rng.normal(size=(count, *shape)).astype(graph.inputs[0].dtype)


def read_overrides(path: Path | None, graph: Graph, base: QuantConfig) -> dict[str, LayerConfig]:
    """Per-layer scheme and bits from a JSON file: {"layer name" | "@first" | "@last":
    {"scheme": S, "bits": N, "weight_bits": N, "act_bits": N, "binary_activations": bool}}."""
    if path is None:
        return {}
    if not Path(path).is_file():
        raise QccError(f"override file: no such file {path}")
    try:
        entries = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise QccError(f"override file {path}: not valid JSON ({e})") from None
    if not isinstance(entries, dict):
        raise QccError(f"override file {path}: expected an object of layer name -> settings")
    layers = [n.name for n in weighted_nodes(graph)]
    aliases = {"@first": layers[0], "@last": layers[-1]} if layers else {}
    result = {}
    for key, setting in entries.items():
        name = aliases.get(key, key)
        if name not in layers:
            raise QccError(f"override file {path}: no weighted layer named {key!r} "
                           f"(layers: {', '.join(layers)})")
        if not isinstance(setting, dict):
            raise QccError(f"override file {path}: settings of {key!r} must be an object")
        current = base.layer(name)
        bits = setting.get("bits")
        scheme = setting.get("scheme", current.scheme)
        get_scheme(scheme)
        result[name] = LayerConfig(check_bits(setting.get("weight_bits", bits or
                                                          current.weight_bits)),
                                   check_bits(setting.get("act_bits", bits or current.act_bits)),
                                   scheme, bool(setting.get("binary_activations",
                                                            current.binary_activations)))
    return result


def check_bits(bits: object) -> int:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 16:
        raise QccError(f"bits must be an integer from 1 to 16, got {bits!r}")
    return bits


def compile_model(model: Path, bits: int | str, scheme: str, calib: Path | None = None,
                  overrides: Path | None = None, train_data: Path | None = None,
                  pm_target: float = 0.01, lr_min: float | None = None,
                  binary_activations: bool = False) -> Compiled:
    """Import, fold, calibrate and quantize MODEL: every tensor at `bits` bits, or with
    bits == "auto" by the seeds/001 methodology (passes/annotate_precision.py)."""
    get_scheme(scheme)
    if bits != "auto":
        check_bits(bits)
    imported = import_model(model)
    if any(node.op_type in PRE_QUANTIZED_OPS for node in imported.nodes):
        if bits == "auto":
            raise QccError("the model is already quantized (QuantizeLinear / QLinear ops): "
                           "--bits auto needs a float model")
        return _compile_prequantized(imported)
    graph = run_passes(imported, ["fold_batchnorm"])
    if not weighted_nodes(graph):
        raise QccError("the model has no weighted layer (Conv, Gemm or MatMul with constant "
                       "weights) to quantize")
    notes = []
    if calib is None:
        x = default_calibration(graph)
        notes.append(f"no --calib file: calibrating on {len(x)} samples of N(0, 1) noise "
                     "(give --calib DATA.npz with real inputs for real ranges)")
    else:
        x, _ = load_data(calib, graph, "calibration data")
    if bits == "auto":
        return _compile_auto(graph, x, scheme, overrides, train_data, pm_target, lr_min, notes)
    stats = calibrate(graph, x)
    config = QuantConfig(scheme=scheme, default_bits=bits, output_bits=max(bits, 16))
    if binary_activations:  # sign activations everywhere but the first layer (the raw input)
        if scheme != "binary":
            raise QccError("--binary-activations needs --scheme binary (±1 weights)")
        for node in weighted_nodes(graph)[1:]:
            config.layers[node.name] = LayerConfig(bits, bits, scheme, True)
    config.layers.update(read_overrides(overrides, graph, config))
    integer = quantize_graph(graph, stats, config)
    return Compiled(graph, integer, config, stats, precision_report(graph, integer, config),
                    notes)


def _compile_prequantized(graph: Graph) -> Compiled:
    """A QDQ or QOperator model (e.g. from onnxruntime.quantization): its own quantization is
    kept and its integer ops run as onnxruntime runs them (passes/fuse_qdq.py)."""
    integer = run_passes(copy.deepcopy(graph), ["fuse_qdq"])
    layers = []
    for node in integer.nodes:
        if node.op_type in ("QLinearConv", "QLinearMatMul", "QLinearGemm", "ConvInteger",
                            "MatMulInteger"):
            w_index = 3 if node.op_type.startswith("QLinear") else 1
            w = node.inputs[w_index]
            layers.append({"name": node.name, "op": node.op_type, "scheme": "affine",
                           "B_W": 8 * w.dtype.itemsize, "B_A": 8 * node.inputs[0].dtype.itemsize,
                           "weight_format": str(w.dtype), "activation_format":
                               str(node.inputs[0].dtype), "alpha": None})
    report = {"mode": "pre-quantized", "scheme": "affine (the model's own)", "layers": layers}
    return Compiled(graph, integer, QuantConfig(scheme="affine"), {}, report,
                    ["the model is already quantized: its scales and zero points are kept "
                     "(--bits, --scheme and --calib do not apply)"])


def _compile_auto(graph: Graph, x: np.ndarray, scheme: str, overrides: Path | None,
                  train_data: Path | None, pm_target: float, lr_min: float | None,
                  notes: list[str]) -> Compiled:
    from passes.annotate_precision import annotate_precision

    if overrides is not None:
        raise QccError("--overrides sets bits by hand and cannot be combined with --bits auto")
    train_x = train_y = None
    if train_data is not None:
        train_x, train_y = load_data(train_data, graph, "training data", need_labels=True)
    else:
        notes.append("no --train-data: gradient statistics come from a short float warm-up on "
                     "the calibration inputs labelled by the model's own predictions")
    result = annotate_precision(graph, x, pm_target, train_x, train_y, lr_min, scheme)
    return Compiled(graph, result.integer, result.config, result.stats, result.report, notes)


def precision_report(graph: Graph, integer: Graph, config: QuantConfig) -> dict[str, Any]:
    """precision.json content for a fixed-bits compile: one entry per weighted layer."""
    layers = []
    by_name = {n.name: n for n in integer.nodes}
    for node in weighted_nodes(graph):
        cfg = config.layer(node.name)
        q = by_name.get(node.name)
        w_spec = q.inputs[1].quant if q is not None else None
        x_spec = q.inputs[0].quant if q is not None else None
        layers.append({"name": node.name, "op": node.op_type, "scheme": cfg.scheme,
                       "B_W": cfg.weight_bits, "B_A": cfg.act_bits,
                       "weight_format": str(w_spec), "activation_format": str(x_spec),
                       "alpha": w_spec.alpha if w_spec else None,
                       "weight_spec": w_spec.to_dict() if w_spec else None})
    return {"mode": "fixed-bits", "scheme": config.scheme, "bits": config.default_bits,
            "layers": layers}


def write_outdir(compiled: Compiled, outdir: Path, target: str = "numpy", name: str = "model",
                 samples: np.ndarray | None = None) -> dict | None:
    """Write OUTDIR; with target "c" also the C library of backends/c (named `name`, with
    `samples` inputs for its MCU example, default: 4 of the default calibration noise) and
    return its summary (summary.json)."""
    with atomic_dir(outdir) as tmp:
        onnx.save(export_model(compiled.integer), tmp / INTEGER_MODEL)
        onnx.save(export_model(compiled.reference), tmp / REFERENCE_MODEL)
        (tmp / PRECISION_FILE).write_text(json.dumps(compiled.precision, indent=2) + "\n")
        if compiled.training is not None:  # --train: training.json, train_state.npz
            from backends.numpy_int.training.outdir import write_training

            write_training(tmp, compiled.training)
        if target == "c":
            from backends.c import emit_library

            if samples is None:
                samples = default_calibration(compiled.reference, 4)
            summary = emit_library(compiled.integer, tmp, name, samples, source_model=name)
            if compiled.training is not None:  # --train: <name>_train.[ch] (backends/c)
                from backends.c.train_emit import write_train

                summary["training"] = write_train(tmp, compiled.integer,
                                                  compiled.training.program,
                                                  compiled.training.state, name)
            return summary
    return None


def attach_training(compiled: Compiled, options: Any, calib: Path | None,
                    train_data: Path | None) -> None:
    """--train: the fixed-point training program and its initial state
    (passes/training_program.py, backends/numpy_int/training/outdir.py)."""
    from backends.numpy_int.training.outdir import prepare_training

    x = y = None
    if train_data is not None:
        x, y = load_data(train_data, compiled.reference, "training data", need_labels=True)
    elif calib is not None:
        x, _ = load_data(calib, compiled.reference, "calibration data")
    else:
        x = default_calibration(compiled.reference)
    compiled.training = prepare_training(compiled.reference, compiled.integer, options, x, y)


@dataclass
class Loaded:
    integer: Graph
    reference: Graph
    precision: dict[str, Any]


def load_outdir(outdir: Path) -> Loaded:
    """The integer graph, float reference and precision.json of a compiled OUTDIR."""
    outdir = Path(outdir)
    missing = [f for f in (INTEGER_MODEL, REFERENCE_MODEL, PRECISION_FILE)
               if not (outdir / f).is_file()]
    if missing:
        raise QccError(f"{outdir} is not a qcc output folder (missing {', '.join(missing)})")
    integer = import_model(outdir / INTEGER_MODEL)
    read_annotations(onnx.load(str(outdir / INTEGER_MODEL), load_external_data=False), integer)
    try:
        precision = json.loads((outdir / PRECISION_FILE).read_text())
    except json.JSONDecodeError as e:
        raise QccError(f"{outdir / PRECISION_FILE}: not valid JSON ({e})") from None
    return Loaded(integer, import_model(outdir / REFERENCE_MODEL), precision)


def known_schemes() -> list[str]:
    get_scheme("fixed")  # loads the scheme modules
    return sorted(SCHEMES)
