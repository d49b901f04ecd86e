"""Top-1 agreement with onnxruntime float of qcc's integer graphs, beside onnxruntime's own int8.

    python benchmarks/agreement.py [--inputs 1000]

For qcc.zoo.convnet_cifar() and qcc.zoo.resnet8() (random He-normal weights, BatchNorm folded),
calibrated on 64 N(0, 1) images and run on --inputs other N(0, 1) images: the share of inputs
whose arg-max equals onnxruntime float's, and the relative L2 error of the logits, for the
fixed and affine schemes with 8 or 16 bits on the weights and on the activations separately,
next to onnxruntime.quantization.quantize_static (QDQ, per-channel int8 weights, uint8
activations, the same calibration images). The 8/16 split shows which rounding costs the
agreement: if 8-bit weights with 16-bit activations already fall short of a target, no choice
of activation format reaches it. The issue's target is 99 % at 8/8. Never fails.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from float_interpreter import MODELS, ort_session
from integer_interpreter import ort_int8
from rich.console import Console
from rich.table import Table
from threadpoolctl import threadpool_limits

from backends.numpy_int import run_integer
from passes import run_passes
from passes.calibrate import calibrate
from passes.quantize_graph import LayerConfig, QuantConfig, quantize_graph
from qcc.core.onnx_import import import_model

TARGET = 0.99
SPLITS = [(8, 8), (8, 16), (16, 8), (16, 16)]  # (weight bits, activation bits)


def run_ort(session, x: np.ndarray) -> np.ndarray:
    return np.concatenate([session.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])


def scores(logits: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    agree = float(np.mean(logits.argmax(1) == reference.argmax(1)))
    return agree, float(np.linalg.norm(logits - reference) / np.linalg.norm(reference))


def rows(name: str, count: int, folder: Path) -> list[tuple[str, str, float, float]]:
    model = MODELS[name]()
    calib = np.random.default_rng(0).normal(size=(64, 3, 32, 32)).astype(np.float32)
    x = np.random.default_rng(5).normal(size=(count, 3, 32, 32)).astype(np.float32)
    reference = run_ort(ort_session(model), x)
    out = [(name, "onnxruntime int8 (w8 a8)",
            *scores(run_ort(ort_session(ort_int8(model, calib, folder)), x), reference))]
    graph = run_passes(import_model(model), ["fold_batchnorm"])
    stats = calibrate(graph, calib)
    weighted = [n.name for n in graph.nodes if n.op_type in ("Conv", "Gemm")]
    for scheme in ("fixed", "affine"):
        for weight_bits, act_bits in SPLITS:
            config = QuantConfig(scheme=scheme, layers={
                n: LayerConfig(weight_bits, act_bits, scheme) for n in weighted})
            integer = quantize_graph(graph, stats, config)
            logits, _ = run_integer(integer, {"input": x}, check=False)
            out.append((name, f"qcc {scheme} w{weight_bits} a{act_bits}",
                        *scores(next(iter(logits.values())), reference)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=1000)
    args = parser.parse_args()
    table = Table(title=f"top-1 agreement with onnxruntime float over {args.inputs} N(0, 1) "
                        f"inputs (target {TARGET:.0%} at 8 bits)")
    for col in ("model", "quantization", "top-1 agreement", "logit rel. L2 error"):
        table.add_column(col)
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(limits=1, user_api="blas"):
        for name in MODELS:
            for model, label, agree, error in rows(name, args.inputs, Path(tmp)):
                table.add_row(model, label, f"{agree:.3f}", f"{error:.4f}")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
