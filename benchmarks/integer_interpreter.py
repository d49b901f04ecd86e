"""Speed of qcc's NumPy integer interpreter against onnxruntime float and int8 (one thread).

    python benchmarks/integer_interpreter.py [--repeats 50]

For qcc.zoo.convnet_cifar() and qcc.zoo.resnet8(): compile with qcc at 8 bits (fixed point,
BatchNorm folded, calibrated on 64 N(0, 1) inputs), quantize the same model with
onnxruntime.quantization.quantize_static (QDQ, per-channel int8 weights, uint8 activations, the
same calibration inputs), and time one input through each: qcc integer, onnxruntime float,
onnxruntime int8. Runs alternate so background load hits all alike; the table shows medians and
the ratios qcc / onnxruntime. Target: qcc integer within 2x of onnxruntime float. Never fails on
time.

"im2col+GEMM" is the analytic limit of this design: the im2col copies (codes to float32) and
the float32 BLAS products that the interpreter's exact fast path runs for the model's
convolutions and Gemms, in the same shapes (patch matrices with the offset row, flat plans'
wasted columns included), timed bare, one after another. Everything above it is padding,
requantization, the other nodes and Python.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from float_interpreter import MODELS, ort_session, timed
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from rich.console import Console
from rich.table import Table
from threadpoolctl import threadpool_limits

from backends.numpy_int import run_integer
from passes import run_passes
from passes.calibrate import calibrate
from passes.quantize_graph import QuantConfig, quantize_graph
from qcc.core.ir import Graph
from qcc.core.onnx_import import import_model
from qcc.core.ops import nn

TARGET_RATIO = 2.0


class _Reader(CalibrationDataReader):
    def __init__(self, name: str, x: np.ndarray) -> None:
        self.items = iter([{name: x[i:i + 1]} for i in range(len(x))])

    def get_next(self) -> dict | None:
        return next(self.items, None)


def ort_int8(model: onnx.ModelProto, x: np.ndarray, folder: Path) -> onnx.ModelProto:
    src, dst = folder / "float.onnx", folder / "int8.onnx"
    onnx.save(model, src)
    quantize_static(str(src), str(dst), _Reader("input", x), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return onnx.load(str(dst))


def gemm_floor(graph: Graph, feeds: dict[str, np.ndarray]) -> Callable[[], None]:
    """The im2col copies and float32 GEMMs of every QConv / QGemm of one run, bare."""
    env, _ = run_integer(graph, feeds, check=False, keep_all=True)
    rng = np.random.default_rng(1)
    steps: list[Callable[[], object]] = []
    for node in graph.nodes:
        if node.op_type not in ("QConv", "QGemm"):
            continue
        x, w = env[node.inputs[0].name], env[node.inputs[1].name]
        if node.op_type == "QGemm":
            a = rng.normal(size=(x.shape[0], x.shape[1] + 1)).astype(np.float32)
            b = rng.normal(size=(x.shape[1] + 1, w.size // x.shape[1])).astype(np.float32)
            steps.append(lambda a=a, b=b: np.matmul(a, b))
            continue
        groups = int(node.attrs.get("group", 1))
        plan = nn.conv_plan(x.shape, w.shape, groups, nn.conv_window(node, x.shape, w.shape),
                            nn.FLAT_WASTE_LIMIT)
        padded = np.zeros(plan.buf_shape, x.dtype)  # the codes, channel-major, padded
        rows = w[0].size
        weights = rng.normal(size=(groups, w.shape[0] // groups, rows + 1)).astype(np.float32)
        cols = np.ones((groups, rows + 1, plan.length), np.float32)
        split = (groups, plan.cols_shape[0] // groups, *plan.cols_shape[1:])
        target = np.reshape(cols[:, :rows], split, copy=False)
        patches = nn.patch_view(padded, plan).reshape(split)
        steps.append(lambda t=target, p=patches: np.copyto(t, p, casting="unsafe"))
        steps.append(lambda w=weights, c=cols: np.matmul(w, c))

    def run() -> None:
        for step in steps:
            step()
    return run


def bench(name: str, repeats: int, folder: Path) -> dict[str, float]:
    model = MODELS[name]()
    rng = np.random.default_rng(0)
    calib = rng.normal(size=(64, 3, 32, 32)).astype(np.float32)
    graph = run_passes(import_model(model), ["fold_batchnorm"])
    integer = quantize_graph(graph, calibrate(graph, calib), QuantConfig(default_bits=8))
    float_sess = ort_session(model)
    int8_sess = ort_session(ort_int8(model, calib, folder))
    feeds = {"input": rng.normal(size=(1, 3, 32, 32)).astype(np.float32)}
    floor = gemm_floor(integer, feeds)
    runs = {"qcc_int": lambda: run_integer(integer, feeds, check=False),
            "gemm_floor": floor,
            "ort_float": lambda: float_sess.run(None, feeds),
            "ort_int8": lambda: int8_sess.run(None, feeds)}
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for key, fn in runs.items():
            times[key].append(timed(fn))
    return {k: 1e3 * float(np.median(v)) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    table = Table(title="integer interpreter vs onnxruntime (1 thread), median ms per input")
    for col in ("model", "qcc int", "ort float", "ort int8", "im2col+GEMM", "qcc/ort float",
                "qcc/ort int8", "im2col+GEMM/ort float", "target met"):
        table.add_column(col)
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(limits=1, user_api="blas"):
        for name in MODELS:
            r = bench(name, args.repeats, Path(tmp))
            ratio = r["qcc_int"] / r["ort_float"]
            table.add_row(name, f"{r['qcc_int']:.2f}", f"{r['ort_float']:.2f}",
                          f"{r['ort_int8']:.2f}", f"{r['gemm_floor']:.2f}", f"{ratio:.2f}",
                          f"{r['qcc_int'] / r['ort_int8']:.2f}",
                          f"{r['gemm_floor'] / r['ort_float']:.2f}",
                          "yes" if ratio <= TARGET_RATIO else "no")
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
