"""`qcc qat`: quantization-aware training on the IR (seeds/004 Algorithm 1) -> QAT.onnx.

    import -> fold_batchnorm -> calibrate (training inputs) -> insert_quantizers (passes/qat.py)
           -> SGD with momentum over [progressive widths] x epochs -> QAT.onnx + QAT.qat.json

The loop is Algorithm 1: forward through WN, RCF and the projections (qcc's float interpreter),
softmax cross-entropy, reverse mode through the quantizers' VJPs (STE, eq. 8), one SGD step for
W, b and every learned α (lr cosine-annealed per epoch; α kept > 0; weight decay on α as
seeds/004 §C.2: 1e-5, 1e-4 below 4 bits). Without RCF the weight α follows max|W̃|.
Shuffling is seeded and BLAS runs on one thread (the CLI's default), so a seed gives the same
QAT.onnx on a machine.

QAT.onnx holds the trained weights W and the quantizers in the graph (QONNX Quant / BipolarQuant,
qcc APoTQuant, WN as ONNX ops); its float forward is the trained fake-quantized model, and
`qcc compile QAT.onnx` folds it into integers (passes/fold_quantizers.py). α per layer after
every epoch goes into its metadata (key `qcc.qat`) and into QAT.qat.json next to it, both
holding `QatRun.summary()`:

    {"options": {...}, "float_val_accuracy": float | null, "seconds": float,
     "epochs": [{"stage", "bits", "act_bits", "epoch", "lr", "loss", "train_accuracy",
                 "val_accuracy"}, ...],
     "alpha": {layer: {"weight": [α before training, after epoch 1, ...],
                       "activation": [...]}},
     "quantizers": [{"layer", "role", "node", "kind", "alpha", "bits", "signed", "learned",
                     ...}, ...]}
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import numpy as np
import onnx
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from passes.calibrate import calibrate
from passes.fold_batchnorm import fold_batchnorm
from passes.qat import QAT_SCHEMES, QatGraph, insert_quantizers, set_bits
from qcc.core.autodiff import backward, logits_value, softmax_cross_entropy
from qcc.core.errors import QccError
from qcc.core.float_exec import Schedule, run_batched
from qcc.core.float_train import accuracy
from qcc.core.ir import Graph
from qcc.core.layers import weighted_nodes
from qcc.core.onnx_export import export_model
from qcc.core.onnx_import import import_model
from qcc.driver.io import atomic_file
from qcc.driver.outdir import QAT_METADATA_KEY
from qcc.driver.pipeline import load_data

QAT_KEY = QAT_METADATA_KEY  # `qcc compile` copies it into OUTDIR/qat.json
CALIBRATION_SAMPLES = 256
ALPHA_FLOOR = 1e-4


@dataclass
class QatOptions:
    scheme: str = "apot"
    bits: int = 4
    act_bits: int | None = None  # None: `bits` (8 for binary and ternary)
    epochs: int = 10
    lr: float = 0.02
    progressive: tuple[int, ...] = ()
    wn: bool = True
    rcf: bool = True
    seed: int = 0
    batch_size: int = 32
    momentum: float = 0.9

    @property
    def activation_bits(self) -> int:
        if self.act_bits is not None:
            return self.act_bits
        return 8 if self.scheme in ("binary", "ternary") else self.bits

    def stages(self) -> list[int]:
        if not self.progressive:
            return [self.bits]
        if self.progressive[-1] != self.bits:
            raise QccError(f"--progressive {','.join(map(str, self.progressive))} must end at "
                           f"--bits {self.bits}")
        return list(self.progressive)


@dataclass
class QatRun:
    qat: QatGraph
    options: QatOptions
    float_val_accuracy: float | None
    epochs: list[dict] = field(default_factory=list)
    alpha: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict:
        return {"options": {**asdict(self.options), "progressive": list(self.options.progressive)},
                "float_val_accuracy": self.float_val_accuracy, "epochs": self.epochs,
                "alpha": self.alpha, "seconds": self.seconds,
                "quantizers": [asdict(q) for q in self.qat.quantizers]}


def check_options(options: QatOptions) -> None:
    if options.scheme not in QAT_SCHEMES:
        raise QccError(f"unknown scheme {options.scheme!r}; qat supports {', '.join(QAT_SCHEMES)}")
    for b in (options.bits, options.activation_bits, *options.progressive):
        if not 1 <= b <= 16:
            raise QccError(f"bits must be from 1 to 16, got {b}")
    if options.scheme in ("apot", "pot", "affine", "fixed") and options.bits < 2:
        raise QccError(f"--scheme {options.scheme} needs at least 2 weight bits")
    if options.activation_bits < 2:
        raise QccError("activations need at least 2 bits")
    if options.epochs < 1 or not options.lr > 0:
        raise QccError("--epochs must be >= 1 and --lr > 0")


def prepare(graph: Graph, x: np.ndarray, options: QatOptions) -> QatGraph:
    """BN folded, calibrated on (a seeded subset of) the training inputs, quantizers inserted
    at the first width trained (their initial α chosen for it)."""
    fold_batchnorm(graph)
    rng = np.random.default_rng(options.seed)
    part = x[rng.permutation(len(x))[:CALIBRATION_SAMPLES]]
    stats = calibrate(graph, part)
    inputs = {n.inputs[0].name for n in weighted_nodes(graph)}
    samples: dict[str, list[np.ndarray]] = {}
    for env in run_batched(graph, part, keep_all=True):
        for name in inputs:
            samples.setdefault(name, []).append(env[name].ravel())
    flat = {k: np.concatenate(v)[:: max(1, sum(map(len, v)) // (1 << 14))]
            for k, v in samples.items()}
    bits = options.stages()[0]
    return insert_quantizers(graph, options.scheme, bits, _act_bits(options, bits), stats, flat,
                             options.wn, options.rcf)


def _act_bits(options: QatOptions, bits: int) -> int:
    """Activation width at weight width `bits`: with --progressive and no --act-bits the
    activations follow the weights (W5A5 -> W4A4 -> W3A3), as in seeds/004 §4."""
    if options.progressive and options.act_bits is None and \
            options.scheme not in ("binary", "ternary"):
        return bits
    return options.activation_bits


def train_qat(graph: Graph, x: np.ndarray, y: np.ndarray, options: QatOptions,
              x_val: np.ndarray | None = None, y_val: np.ndarray | None = None,
              progress: bool = True) -> QatRun:
    """Train `graph` (a float model, changed in place into the QAT graph); see the module doc."""
    check_options(options)
    float_acc = accuracy(graph, x_val, y_val) if x_val is not None else None
    qat = prepare(graph, x, options)
    run = QatRun(qat, options, float_acc)
    stages = options.stages()
    batches = math.ceil(len(x) / options.batch_size)
    rng = np.random.default_rng(options.seed)
    logits = logits_value(graph).name
    schedule = Schedule(graph)
    velocity = {n: np.zeros_like(graph.values[n].const) for n in qat.parameters}
    alphas = {q.alpha for q in qat.quantizers}
    start = time.perf_counter()
    _record_alpha(run)
    with _progress_bar(progress) as bar:
        task = bar.add_task("qat", total=len(stages) * options.epochs * batches,
                            loss=float("nan"), val="-")
        for stage, bits in enumerate(stages):
            act = _act_bits(options, bits)
            set_bits(qat, bits, act)
            for epoch in range(options.epochs):
                lr = _cosine(options.lr, epoch, options.epochs)
                decay = 1e-5 if bits >= 4 else 1e-4  # α's weight decay, seeds/004 §C.2
                order = rng.permutation(len(x))
                total, hits = 0.0, 0
                for b in range(batches):
                    idx = order[b * options.batch_size:(b + 1) * options.batch_size]
                    env = schedule.run({graph.inputs[0].name: x[idx]}, keep_all=True,
                                       check=False)
                    loss, d_logits = softmax_cross_entropy(env[logits], y[idx])
                    if not math.isfinite(loss):
                        raise QccError(f"qat: the loss is not finite at epoch {epoch + 1} "
                                       f"(learning rate {lr:.3g}); try a smaller --lr")
                    grads = backward(graph, env, {logits: d_logits}, set(qat.parameters))
                    _sgd(graph, qat.parameters, grads, velocity, lr, options.momentum,
                         alphas, decay)
                    _track_max(qat, env)
                    total += loss * len(idx)
                    hits += int(np.sum(env[logits].reshape(len(idx), -1).argmax(1) == y[idx]))
                    bar.update(task, advance=1, loss=loss)
                val = accuracy(graph, x_val, y_val) if x_val is not None else None
                run.epochs.append({"stage": stage, "bits": bits, "act_bits": act,
                                   "epoch": epoch + 1, "lr": lr, "loss": total / len(x),
                                   "train_accuracy": hits / len(x), "val_accuracy": val})
                _record_alpha(run)
                bar.update(task, val="-" if val is None else f"{100 * val:.1f}%")
    run.seconds = time.perf_counter() - start
    return run


def _cosine(lr: float, epoch: int, epochs: int) -> float:
    return lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs)) if epochs > 1 else lr


def _sgd(graph: Graph, names: list[str], grads: dict[str, np.ndarray],
         velocity: dict[str, np.ndarray], lr: float, momentum: float, alphas: set[str],
         decay: float) -> None:
    """v ← μv + g (+ decay·α for α); w ← w − lr·v; α ≥ ALPHA_FLOOR (a scale must stay > 0)."""
    for name in names:
        value = graph.values[name]
        w = value.const
        g = grads[name].astype(w.dtype, copy=False)
        if name in alphas:
            g = g + w.dtype.type(decay) * w
        v = velocity[name] = w.dtype.type(momentum) * velocity[name] + g
        new = (w - w.dtype.type(lr) * v).astype(w.dtype, copy=False)
        value.const = np.maximum(new, w.dtype.type(ALPHA_FLOOR)) if name in alphas else new


def _track_max(qat: QatGraph, env: dict[str, np.ndarray]) -> None:
    """Without RCF: α = max|W̃| (no clipping), from this step's forward."""
    for q in qat.quantizers:
        if q.tracks is not None and q.tracks in env:
            peak = float(np.max(np.abs(env[q.tracks]))) or 1.0
            qat.graph.values[q.alpha].const = np.asarray(peak, np.float32)


def _record_alpha(run: QatRun) -> None:
    for q in run.qat.quantizers:
        alpha = float(run.qat.graph.values[q.alpha].const)
        run.alpha.setdefault(q.layer, {}).setdefault(q.role, []).append(alpha)


def _progress_bar(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}  val {task.fields[val]}"),
                    TimeElapsedColumn(), disable=not enabled, transient=True)


def sidecar_path(output: Path) -> Path:
    """QAT.onnx -> QAT.qat.json."""
    return output.with_name(output.name[:-5] if output.name.endswith(".onnx") else
                            output.name).with_suffix(".qat.json")


def write_qat(run: QatRun, output: Path) -> Path:
    """QAT.onnx and its sidecar, both renamed into place only when both are written."""
    model = export_model(run.qat.graph)
    summary = json.dumps(run.summary(), indent=1)
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                        QAT_KEY: summary})
    side = sidecar_path(output)
    with atomic_file(output) as tmp_model, atomic_file(side) as tmp_side:
        onnx.save(model, tmp_model)
        tmp_side.write_text(summary + "\n")
    return side


def parse_widths(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise QccError(f"--progressive takes widths like 5,4,3, not {text!r}") from None


def run_command(model: Path, scheme: str, bits: int, act_bits: int | None, train_data: Path,
                val_data: Path | None, epochs: int, lr: float, progressive: str | None,
                no_wn: bool, no_rcf: bool, seed: int, output: Path) -> None:
    """Quantization-aware training of MODEL (seeds/004: WN, RCF, APoT) -> QAT.onnx."""
    options = QatOptions(scheme, bits, act_bits, epochs, lr, parse_widths(progressive),
                         not no_wn, not no_rcf, seed)
    check_options(options)
    options.stages()
    if not str(output).endswith(".onnx"):
        raise QccError(f"-o {output}: give a file name ending in .onnx")
    graph = import_model(model)
    x, y = load_data(train_data, graph, "training data", need_labels=True)
    x_val = y_val = None
    if val_data is not None:
        x_val, y_val = load_data(val_data, graph, "validation data", need_labels=True)
    _check_labels(graph, y, "training data")
    if y_val is not None:
        _check_labels(graph, y_val, "validation data")
    run = train_qat(copy.deepcopy(graph), x, y, options, x_val, y_val)
    side = write_qat(run, output)
    last = run.epochs[-1]
    val = last["val_accuracy"]
    click.echo(f"qat: {scheme} W{bits}A{options.activation_bits}, {len(run.epochs)} epochs in "
               f"{run.seconds:.1f} s, loss {last['loss']:.4f}"
               + (f", val accuracy {100 * val:.2f} % (float {100 * run.float_val_accuracy:.2f}"
                  " %)" if val is not None else ""))
    for layer, roles in run.alpha.items():
        moves = ", ".join(f"α_{r[0].upper()} {v[0]:.4g} -> {v[-1]:.4g}" for r, v in roles.items())
        click.echo(f"  {layer}: {moves}")
    click.echo(f"wrote {output} and {side}")


def _check_labels(graph: Graph, y: np.ndarray, what: str) -> None:
    out = graph.outputs[0].shape
    classes = out[-1] if out and out[-1] > 0 else None
    if y.min() < 0 or (classes is not None and y.max() >= classes):
        raise QccError(f"{what}: labels must be from 0 to {(classes or 1) - 1}, got "
                       f"{int(y.min())} .. {int(y.max())}")
