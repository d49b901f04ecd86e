"""The compile pipeline, one straight line: ONNX -> Graph -> passes -> integer graph -> OUTDIR.

    load + import  ->  fold_batchnorm  ->  calibrate  ->  [--bits auto: annotate_precision]
                   ->  quantize_graph  ->  write OUTDIR (model.qcc.onnx, reference.onnx,
                                                        precision.json)

A model trained by `qcc qat` carries its α history in its metadata (key `qcc.qat`); compile
copies it into OUTDIR/qat.json unchanged (the `QatRun.summary()` of qcc/driver/qat.py: options,
per-epoch loss and accuracy, α per layer and role before training and after every epoch, the
quantizers), which `qcc report` draws as α per layer over training.

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

from backends.c import emit_library
from backends.c.emit import emit_source
from backends.c.train_emit import write_train
from passes import run_passes
from passes.allocate_widths import MemoryBudget
from passes.annotate_precision import annotate_precision
from passes.calibrate import TensorStats, calibrate
from passes.fold_quantizers import fold_quantizers, has_quantizers
from passes.quantize_graph import LayerConfig, QuantConfig, quantize_graph
from passes.schemes import SCHEMES, get_scheme
from passes.weight_rounding import MAX_BITS as WEIGHT_ROUNDING_BITS
from passes.weight_rounding import MODES as ROUNDING_MODES
from passes.weight_rounding import layer_inputs
from qcc.core.errors import QccError
from qcc.core.ir import Graph
from qcc.core.layers import weighted_nodes
from qcc.core.onnx_export import export_model
from qcc.core.onnx_import import import_model
from qcc.driver.c_check import interpreter_outputs
from qcc.driver.evaluate import integer_decisions
from qcc.driver.io import atomic_dir, load_npz
from qcc.driver.outdir import (
    EXPECTED_CODES,
    INTEGER_MODEL,
    PRECISION_FILE,
    QAT_HISTORY_FILE,
    QAT_METADATA_KEY,
    REFERENCE_MODEL,
)
from qcc.driver.train_outdir import prepare_training, write_training

PRE_QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul",
                     "ConvInteger", "MatMulInteger", "QLinearGemm", "QLinearAdd"}
DEFAULT_PM_TARGET = 0.01  # --bits auto without --pm-target
DEFAULT_CALIBRATION = 256  # samples of N(0, 1) noise when no --calib file is given
MAX_WEIGHT = 2.0**32  # largest weight or activation magnitude qcc quantizes


@dataclass
class Compiled:
    """What a compile produced, in memory (the CLI writes it out)."""

    reference: Graph  # the float graph after fold_batchnorm
    integer: Graph
    config: QuantConfig
    stats: dict[str, TensorStats]
    precision: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # lines for stderr
    training: Any = None  # --train: qcc.driver.train_outdir.Training
    qat_history: dict | None = None  # a `qcc qat` model's record (OUTDIR/qat.json)


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


# The settings an override may give, and the type of each (the schema of --overrides).
OVERRIDE_KEYS = {"scheme": str, "bits": int, "weight_bits": int, "act_bits": int,
                 "binary_activations": bool}


def read_overrides(path: Path | None, graph: Graph, base: QuantConfig) -> dict[str, LayerConfig]:
    """Per-layer scheme and bits from a JSON file: {"layer name" | "@first" | "@last":
    {"scheme": S, "bits": N, "weight_bits": N, "act_bits": N, "binary_activations": bool}}.
    Unknown keys, wrong types and widths the scheme does not take are refused."""
    if path is None:
        return {}
    entries = _read_json(Path(path), "override file")
    if not isinstance(entries, dict):
        raise QccError(f"override file {path}: expected an object of layer name -> settings")
    layers = [n.name for n in weighted_nodes(graph)]
    aliases = {"@first": layers[0], "@last": layers[-1]} if layers else {}
    result = {}
    for key, setting in entries.items():
        name = aliases.get(key, key)
        where = f"override file {path}: {key!r}"
        if name not in layers:
            raise QccError(f"override file {path}: no weighted layer named {key!r} "
                           f"(layers: {', '.join(layers)})")
        if not isinstance(setting, dict):
            raise QccError(f"{where}: the settings must be an object")
        _check_override_types(setting, where)
        current = base.layer(name)
        bits = setting.get("bits")
        scheme = setting.get("scheme", current.scheme)
        get_scheme(scheme)
        weight_bits = setting.get("weight_bits", current.weight_bits if bits is None else bits)
        act_bits = setting.get("act_bits", current.act_bits if bits is None else bits)
        result[name] = LayerConfig(check_bits(weight_bits), check_bits(act_bits), scheme,
                                   setting.get("binary_activations",
                                               current.binary_activations))
    return result


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise QccError(f"{what}: no such file {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise QccError(f"{what} {path}: not valid JSON ({e})") from None
    except RecursionError:
        raise QccError(f"{what} {path}: nested too deeply") from None


def _check_override_types(setting: dict, where: str) -> None:
    for key, value in setting.items():
        if key not in OVERRIDE_KEYS:
            raise QccError(f"{where}: unknown setting {key!r} (known: "
                           f"{', '.join(OVERRIDE_KEYS)})")
        want = OVERRIDE_KEYS[key]
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise QccError(f"{where}: {key!r} must be {_TYPE_NAMES[want]}, got "
                           f"{json.dumps(value)[:60]}")
        if want is int and not 1 <= value <= 16:
            raise QccError(f"{where}: {key!r} must be from 1 to 16, got {value}")


_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false"}


def check_bits(bits: object) -> int:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 16:
        raise QccError(f"bits must be an integer from 1 to 16, got {bits!r}")
    return bits


def compile_model(model: Path, bits: int | str, scheme: str, calib: Path | None = None,
                  overrides: Path | None = None, train_data: Path | None = None,
                  pm_target: float | None = None, lr_min: float | None = None,
                  binary_activations: bool = False, flash_budget: int | None = None,
                  ram_budget: int | None = None, for_training: bool = False,
                  weight_rounding: str = "gptq") -> Compiled:
    """Import, fold, calibrate and quantize MODEL: every tensor at `bits` bits, or with
    bits == "auto" by the seeds/001 methodology (passes/annotate_precision.py). `pm_target`
    None: 1 %, certified as far as the held-out samples allow (an explicit target they cannot
    certify is an error); the budgets (bytes) apply to --bits auto only. `for_training`: the
    graph will run the training step (--train; QuantConfig.for_training). `weight_rounding`
    "gptq": weights below 8 bits get GPTQ's codes on the --calib inputs (passes/weight_rounding),
    "nearest" (or no --calib): round to nearest."""
    get_scheme(scheme)
    if weight_rounding not in ROUNDING_MODES:
        raise QccError(f"--weight-rounding must be one of {', '.join(ROUNDING_MODES)}, "
                       f"got {weight_rounding!r}")
    if bits != "auto":
        check_bits(bits)
    imported = import_model(model)
    if any(node.op_type in PRE_QUANTIZED_OPS for node in imported.nodes):
        if bits == "auto":
            raise QccError("the model is already quantized (QuantizeLinear / QLinear ops): "
                           "--bits auto needs a float model")
        return _compile_prequantized(imported)
    if has_quantizers(imported):
        if bits == "auto":
            raise QccError("the model carries its own quantizers (QONNX Quant / qcc APoTQuant): "
                           "their trained widths are kept, --bits auto does not apply")
        compiled = _compile_trained_quantizers(imported, calib)
        compiled.qat_history = read_qat_history(model, compiled.notes)
        return compiled
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
    check_weights(graph)
    if bits == "auto":
        return _compile_auto(graph, x, scheme, overrides, train_data, pm_target, lr_min, notes,
                             MemoryBudget(flash_budget, ram_budget), for_training,
                             weight_rounding if calib is not None else "nearest")
    if flash_budget is not None or ram_budget is not None:
        raise QccError("--flash-budget and --ram-budget choose widths: they need --bits auto")
    stats = check_stats(calibrate(graph, x))
    config = QuantConfig(scheme=scheme, default_bits=bits, output_bits=max(bits, 16),
                         for_training=for_training)
    if binary_activations:  # sign activations everywhere but the first layer (the raw input)
        if scheme != "binary":
            raise QccError("--binary-activations needs --scheme binary (±1 weights)")
        for node in weighted_nodes(graph)[1:]:
            config.layers[node.name] = LayerConfig(bits, bits, scheme, True)
    config.layers.update(read_overrides(overrides, graph, config))
    for node in weighted_nodes(graph):  # each layer's widths within what its format takes
        cfg = config.layer(node.name)
        get_scheme(cfg.scheme).check_widths(cfg.weight_bits, cfg.act_bits, f"layer {node.name!r}")
    if calib is not None and weight_rounding == "gptq" and any(
            config.layer(node.name).weight_bits <= WEIGHT_ROUNDING_BITS
            for node in weighted_nodes(graph)):
        config.weight_rounding = layer_inputs(graph, x)
    for node in weighted_nodes(graph):
        x = node.inputs[0]
        if config.layer(node.name).binary_activations and x.name in stats \
                and stats[x.name].lo >= 0:
            notes.append(f"layer {node.name!r} takes sign activations of {x.name!r}, which is "
                         "never negative on the calibration data (a ReLU output?): sign(x) is "
                         "+1 everywhere and carries nothing; binarized networks put the sign "
                         "in place of the ReLU")
    integer = quantize_graph(graph, stats, config)
    return Compiled(graph, integer, config, stats, precision_report(graph, integer, config),
                    notes)


def check_weights(graph: Graph) -> None:
    """Refuse weights qcc cannot quantize: NaN or Inf, or beyond MAX_WEIGHT in magnitude
    (their requantization multipliers would not fit in 64 bits)."""
    for node in weighted_nodes(graph):
        for v in node.inputs[1:]:
            if v is None or not v.is_const or v.const.dtype.kind != "f" or not v.const.size:
                continue
            finite = np.isfinite(v.const)
            if not finite.all():
                raise QccError(f"layer {node.name!r}: {v.name!r} holds "
                               f"{int(v.const.size - finite.sum())} NaN or Inf value(s)")
            peak = float(np.max(np.abs(v.const)))
            if peak > MAX_WEIGHT:
                raise QccError(f"layer {node.name!r}: {v.name!r} reaches {peak:.3g}; qcc "
                               f"quantizes weights up to {MAX_WEIGHT:.3g} in magnitude")


def check_stats(stats: dict[str, TensorStats]) -> dict[str, TensorStats]:
    """Calibration ranges must be finite: a float overflow in the model is no range."""
    for name, s in stats.items():
        peak = max(abs(s.lo), abs(s.hi))
        if not np.isfinite(peak) or peak > MAX_WEIGHT:
            raise QccError(f"calibration: tensor {name!r} reaches {peak:.3g} on the "
                           f"calibration data (NaN, Inf or beyond {MAX_WEIGHT:.3g}); the float "
                           "model overflows")
    return stats


def _compile_trained_quantizers(graph: Graph, calib: Path | None) -> Compiled:
    """A QAT.onnx of `qcc qat` or a QONNX model: its quantizers fix the codes, scales and widths
    (passes/fold_quantizers.py); the reference is the fake-quantized float model."""
    notes = ["the model carries its own quantizers: their trained codes, scales and widths are "
             "kept (--bits and --scheme do not apply)"]
    if calib is None:
        x = default_calibration(graph)
        notes.append(f"no --calib file: the tensors no quantizer fixes (the outputs) are "
                     f"calibrated on {len(x)} samples of N(0, 1) noise")
    else:
        x, _ = load_data(calib, graph, "calibration data")
    folded = fold_quantizers(graph, x)
    integer = quantize_graph(folded.plain, folded.stats, folded.config)
    by_name = {n.name: n for n in integer.nodes}
    for layer in folded.layers:  # the input format the integer layer reads, as fixed-bits has
        node = by_name.get(layer["name"])
        layer["activation_format"] = str(node.inputs[0].quant) if node is not None else None
    report = {"mode": "trained quantizers", "scheme": folded.config.scheme,
              "layers": folded.layers}
    return Compiled(folded.reference, integer, folded.config, folded.stats, report, notes)


def read_qat_history(model: Path, notes: list[str]) -> dict | None:
    """The `qcc qat` record in MODEL's metadata (None for a model trained elsewhere, e.g. a
    Brevitas QONNX export); a record that is not a JSON object is left out with a note."""
    proto = onnx.load(str(model), load_external_data=False)
    text = next((p.value for p in proto.metadata_props if p.key == QAT_METADATA_KEY), None)
    if text is None:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("alpha"), dict):
        notes.append(f"the model's metadata {QAT_METADATA_KEY!r} is not a qcc qat record; "
                     f"no {QAT_HISTORY_FILE} written")
        return None
    return record


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
                  train_data: Path | None, pm_target: float | None, lr_min: float | None,
                  notes: list[str], budget: MemoryBudget, for_training: bool,
                  weight_rounding: str) -> Compiled:

    if overrides is not None:
        raise QccError("--overrides sets bits by hand and cannot be combined with --bits auto")
    train_x = train_y = None
    if train_data is not None:
        train_x, train_y = load_data(train_data, graph, "training data", need_labels=True)
    else:
        notes.append("no --train-data: gradient statistics come from a short float warm-up on "
                     "the calibration inputs labelled by the model's own predictions")
    result = annotate_precision(graph, x, integer_decisions,
                                DEFAULT_PM_TARGET if pm_target is None else pm_target, train_x,
                                train_y, lr_min, scheme, strict_target=pm_target is not None,
                                budget=budget, memory=c_memory, for_training=for_training,
                                weight_rounding=weight_rounding)
    return Compiled(graph, result.integer, result.config, result.stats, result.report, notes)


def c_memory(integer: Graph) -> tuple[int, int]:
    """(packed weight bytes, arena bytes) of the C backend's plan for `integer` (no build)."""
    summary = emit_source(integer, "model").summary()
    return summary["packed_weight_bytes"], summary["arena_bytes"]


def precision_report(graph: Graph, integer: Graph, config: QuantConfig) -> dict[str, Any]:
    """precision.json content for a fixed-bits compile: one entry per weighted layer."""
    layers = []
    by_name = {n.name: n for n in integer.nodes}
    for node in weighted_nodes(graph):
        cfg = config.layer(node.name)
        q = by_name.get(node.name)
        w_spec = q.inputs[1].quant if q is not None else None
        x_spec = q.inputs[0].quant if q is not None else None
        entry = {"name": node.name, "op": node.op_type, "scheme": cfg.scheme,
                 # the bits the weights really take: 1 for binary, 2 for ternary, whatever --bits
                 "B_W": w_spec.bits if w_spec is not None else cfg.weight_bits,
                 "B_A": x_spec.bits if x_spec is not None else cfg.act_bits,  # as stored
                 "weight_format": str(w_spec), "activation_format": str(x_spec),
                 "alpha": w_spec.alpha if w_spec else None,
                 "weight_spec": w_spec.to_dict() if w_spec else None}
        if cfg.binary_activations:  # the layer reads sign(x): XNOR-popcount dot products
            entry["binary_activations"] = True
        layers.append(entry)
    return {"mode": "fixed-bits", "scheme": config.scheme, "bits": config.default_bits,
            "layers": layers}


def write_outdir(compiled: Compiled, outdir: Path, target: str = "numpy", name: str = "model",
                 samples: np.ndarray | None = None, force: bool = False) -> dict | None:
    """Write OUTDIR; with target "c" also the C library of backends/c (named `name`, with
    `samples` inputs for its MCU example, default: 4 of the default calibration noise) and
    return its summary (summary.json). An existing OUTDIR is replaced only if qcc wrote it
    or it is empty (or `force`: qcc.driver.io.check_output_dir)."""
    with atomic_dir(outdir, force) as tmp:
        onnx.save(export_model(compiled.integer), tmp / INTEGER_MODEL)
        onnx.save(export_model(compiled.reference), tmp / REFERENCE_MODEL)
        (tmp / PRECISION_FILE).write_text(json.dumps(compiled.precision, indent=2) + "\n")
        if compiled.qat_history is not None:
            (tmp / QAT_HISTORY_FILE).write_text(json.dumps(compiled.qat_history, indent=1)
                                                + "\n")
        if compiled.training is not None:  # --train: training.json, train_state.npz
            write_training(tmp, compiled.training)
        if target == "c":
            if samples is None:
                samples = default_calibration(compiled.reference, 4)
            summary = emit_library(compiled.integer, tmp, name, samples, source_model=name)
            write_expected_codes(tmp / EXPECTED_CODES, compiled.integer, samples)
            if compiled.training is not None:  # --train: <name>_train.[ch] (backends/c)
                summary["training"] = write_train(tmp, compiled.integer,
                                                  compiled.training.program,
                                                  compiled.training.state, name)
            return summary
    return None


def write_expected_codes(path: Path, integer: Graph, samples: np.ndarray) -> None:
    """The integer interpreter's output codes for the MCU example's samples, as int32: what
    `make run-mcu` compares the Cortex-M4's outputs with (backends/c/mcu/main.c)."""
    codes, _ = interpreter_outputs(integer, samples)
    np.ascontiguousarray(codes, dtype=np.int32).tofile(path)


def attach_training(compiled: Compiled, options: Any, calib: Path | None,
                    train_data: Path | None) -> None:
    """--train: the fixed-point training program and its initial state
    (passes/training_program.py, qcc/driver/train_outdir.py)."""
    x = y = None
    if train_data is not None:
        x, y = load_data(train_data, compiled.reference, "training data", need_labels=True)
    elif calib is not None:
        x, _ = load_data(calib, compiled.reference, "calibration data")
    else:
        x = default_calibration(compiled.reference)
    compiled.training = prepare_training(compiled.reference, compiled.integer, options, x, y)


def known_schemes() -> list[str]:
    get_scheme("fixed")  # loads the scheme modules
    return sorted(SCHEMES)
