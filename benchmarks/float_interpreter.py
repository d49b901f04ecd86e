"""Speed of qcc's float interpreter against single-threaded onnxruntime on the zoo models.

    python benchmarks/float_interpreter.py [--repeats 200] [--blas-threads 1] [--batch 1]

For qcc.zoo.convnet_cifar() and qcc.zoo.resnet8(): import with qcc, run the same input through
a qcc.core.float_exec.Schedule (planned once, as an onnxruntime session is) and through onnxruntime
(intra_op_num_threads = inter_op_num_threads = 1, default graph optimisations), check that the
outputs agree (relative 1e-4), then time both; qcc also runs the graph after its fold_batchnorm
pass, the counterpart of the BatchNorm fusion onnxruntime's default optimisations apply.
The two are timed alternately, run by run, so a busy machine slows both alike; the table shows
medians. qcc's BLAS is limited to --blas-threads (default 1, like onnxruntime). The target is a
ratio qcc / onnxruntime <= 3.0; the script reports whether it is met and never fails on time.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
from rich.console import Console
from rich.table import Table
from threadpoolctl import threadpool_limits

from passes import run_passes
from qcc import zoo
from qcc.core.float_exec import Schedule
from qcc.core.onnx_import import import_model

TARGET_RATIO = 3.0
AGREEMENT = 1e-4
MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "convnet_cifar": zoo.convnet_cifar, "resnet8": zoo.resnet8}


def ort_session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])


def model_input_shape(model: onnx.ModelProto) -> tuple[int, ...]:
    return tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)


def agreement(got: np.ndarray, expected: np.ndarray) -> float:
    """Largest difference relative to the largest reference magnitude."""
    return float(np.abs(got - expected).max() / max(float(np.abs(expected).max()), 1e-30))


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def with_batch_dim(model: onnx.ModelProto) -> onnx.ModelProto:
    """The zoo models fix batch 1; make the batch dimension of input and output symbolic."""
    for vi in (model.graph.input[0], model.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_param = "batch"
    return model


def bench_model(name: str, repeats: int, warmup: int, batch: int) -> dict[str, float]:
    """Median milliseconds of qcc and onnxruntime on one model, and their output agreement."""
    model = MODELS[name]()
    if batch != 1:
        model = with_batch_dim(model)
    graph = import_model(model)
    schedule = Schedule(graph)
    # what onnxruntime's default optimisations do for BatchNorm, qcc's own pass does
    folded = Schedule(run_passes(import_model(model), ["fold_batchnorm"]))
    sess = ort_session(model)
    x_name = graph.inputs[0].name
    shape = (batch, *model_input_shape(model)[1:])
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    feeds = {x_name: x}
    out_name = graph.outputs[0].name

    def run_qcc() -> np.ndarray:
        return schedule.run(feeds)[out_name]

    def run_folded() -> np.ndarray:
        return folded.run(feeds)[out_name]

    def run_ort() -> np.ndarray:
        return sess.run([out_name], feeds)[0]

    rel = max(agreement(run_qcc(), run_ort()), agreement(run_folded(), run_ort()))
    for _ in range(warmup):
        run_qcc(), run_folded(), run_ort()
    times: dict[str, list[float]] = {"qcc": [], "folded": [], "ort": []}
    for _ in range(repeats):  # alternate, so background load hits all alike
        times["qcc"].append(timed(run_qcc))
        times["folded"].append(timed(run_folded))
        times["ort"].append(timed(run_ort))
    return {f"{k}_ms": 1e3 * float(np.median(v)) for k, v in times.items()} | {"rel_diff": rel}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200, help="timed runs per model")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs per model")
    parser.add_argument("--blas-threads", type=int, default=1,
                        help="BLAS threads for qcc (onnxruntime always uses 1)")
    parser.add_argument("--batch", type=int, default=1, help="images per inference")
    args = parser.parse_args()

    console = Console()
    table = Table(title=f"qcc float interpreter vs onnxruntime (1 thread; qcc BLAS threads: "
                        f"{args.blas_threads}; batch {args.batch}; medians of {args.repeats} runs)")
    for column in ("model", "qcc ms", "qcc ms (BN folded)", "ort ms", "ratio",
                   "ratio (BN folded)", "max rel diff"):
        table.add_column(column, justify="left" if column == "model" else "right")
    all_agree, all_fast = True, True
    with threadpool_limits(args.blas_threads):
        for name in MODELS:
            r = bench_model(name, args.repeats, args.warmup, args.batch)
            ratio = r["qcc_ms"] / r["ort_ms"]
            folded_ratio = r["folded_ms"] / r["ort_ms"]
            agree = r["rel_diff"] <= AGREEMENT
            all_agree &= agree
            all_fast &= ratio <= TARGET_RATIO
            table.add_row(name, f"{r['qcc_ms']:.3f}", f"{r['folded_ms']:.3f}",
                          f"{r['ort_ms']:.3f}", f"{ratio:.2f}", f"{folded_ratio:.2f}",
                          f"{r['rel_diff']:.1e}" + ("" if agree else " MISMATCH"))
    console.print(table)
    verdict = "met" if all_fast else "NOT met"
    console.print(f"target ratio <= {TARGET_RATIO} on the graph as given: {verdict}")
    if not all_agree:
        console.print(f"[red]outputs differ from onnxruntime by more than {AGREEMENT} "
                      "(relative)[/red]")
    return 0 if all_agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
