"""Speed of qcc's emitted C against onnxruntime, and instructions per MAC on a Cortex-M4.

    python benchmarks/c_backend.py [--runs 50] [--rounds 7] [--cflags="-O3 -march=native"]
                                   [--json results.json]

For qcc.zoo.convnet_cifar() and qcc.zoo.resnet8(), compiled by qcc with 8-bit fixed point
(calibrated on 64 N(0, 1) inputs), the C library is emitted and its host harness built with
gcc and --cflags (default -O3 -march=native: the same vector units onnxruntime picks at run
time). One thread everywhere. Three contestants run the same input:

- C: `<name>_host --time RUNS` (<name>_infer RUNS times, CPU time per inference), after
  checking that the C outputs equal the NumPy integer interpreter's bit for bit;
- onnxruntime float: the original model, intra_op_num_threads = inter_op_num_threads = 1;
- onnxruntime int8: the model after onnxruntime.quantization.quantize_static (QDQ format,
  per-channel int8 weights, uint8 activations, the same 64 calibration inputs), same session.

Timing alternates the three, round by round, so a busy machine slows all alike; the table
shows the median time per inference over the rounds and the ratios from those medians. The
target is C faster than onnxruntime float (ratio < 1); the script reports it and never fails
on time.

Instructions per MAC on the Cortex-M4: the library is cross-built with arm-none-eabi-gcc -Os
(mcu/ of the library folder) and run under qemu-system-arm -machine mps2-an386 with
-icount shift=0, where QEMU advances virtual time by exactly 1 ns per executed instruction.
The firmware reads SysTick (clocked at the board's 25 MHz: 40 ns, i.e. 40 instructions, per
tick; wraps counted by its interrupt) around <name>_infer, so instructions = 40 x ticks, to
within 40. Dividing by the model's MACs gives instructions per multiply-accumulate, everything
included (im2col, requantization, pools).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from rich.console import Console
from rich.table import Table

from backends.c.build import build_host, build_mcu, missing_tools, run_host, run_qemu, time_host
from backends.c.library import emit_library
from qcc import zoo
from qcc.driver.c_check import interpreter_outputs
from qcc.driver.pipeline import compile_model

MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "convnet_cifar": zoo.convnet_cifar, "resnet8": zoo.resnet8}
CALIBRATION = 64


class Reader(CalibrationDataReader):
    """The calibration inputs, one at a time, for onnxruntime's quantize_static."""

    def __init__(self, name: str, xs: np.ndarray) -> None:
        self.items = iter([{name: x[None]} for x in xs])

    def get_next(self) -> dict | None:
        return next(self.items, None)


def session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_time(sess: ort.InferenceSession, x: np.ndarray, runs: int) -> float:
    feed = {sess.get_inputs()[0].name: x}
    sess.run(None, feed)
    start = time.perf_counter()
    for _ in range(runs):
        sess.run(None, feed)
    return (time.perf_counter() - start) / runs


def prepare(name: str, work: Path, cflags: list[str]) -> dict:
    """Compile, emit, build and check one model; the ORT float and int8 models beside it."""
    model = MODELS[name]()
    path = work / f"{name}.onnx"
    onnx.save(model, path)
    rng = np.random.default_rng(0)
    calib = rng.normal(size=(CALIBRATION, 3, 32, 32)).astype(np.float32)
    np.savez(work / "calib.npz", x=calib)
    graph = compile_model(path, 8, "fixed", calib=work / "calib.npz").integer
    out = work / name
    out.mkdir()
    summary = emit_library(graph, out, name)
    opt = next((f for f in cflags if f.startswith("-O")), "-O3")
    exe = build_host(out, name, out / "host", opt=opt,
                     extra=tuple(f for f in cflags if not f.startswith("-O")))
    x = rng.normal(size=(1, 3, 32, 32)).astype(np.float32)
    codes, floats = interpreter_outputs(graph, x)
    got_codes, got_floats = run_host(exe, x, codes.dtype, codes.shape[1], out)
    if not (np.array_equal(got_codes, codes) and np.array_equal(got_floats, floats)):
        raise SystemExit(f"{name}: the C outputs differ from the integer interpreter's")
    int8 = work / f"{name}.int8.onnx"
    quantize_static(str(path), str(int8), Reader("input", calib), quant_format=QuantFormat.QDQ,
                    per_channel=True, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QUInt8)
    return {"name": name, "graph": graph, "out": out, "exe": exe, "x": x, "summary": summary,
            "float": session(path), "int8": session(int8)}


def race(m: dict, runs: int, rounds: int, work: Path) -> dict[str, float]:
    """Median seconds per inference of C, ORT float and ORT int8, timed round-robin."""
    times: dict[str, list[float]] = {"c": [], "float": [], "int8": []}
    for _ in range(rounds):
        times["c"].append(time_host(m["exe"], m["x"], runs, work))
        times["float"].append(ort_time(m["float"], m["x"], runs))
        times["int8"].append(ort_time(m["int8"], m["x"], runs))
    return {k: statistics.median(v) for k, v in times.items()}


def instructions_per_mac(m: dict, work: Path) -> float | None:
    if missing_tools("arm-none-eabi-gcc", "qemu-system-arm"):
        return None
    run = run_qemu(build_mcu(m["out"], m["name"]), m["x"], work)
    return float(run.instructions[0]) / m["summary"]["macs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="inferences per timing round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--cflags", default="-O3 -march=native")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    console = Console(width=180)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in MODELS:
            (work / name).mkdir()
            m = prepare(name, work / name, shlex.split(args.cflags))
            runs = max(1, args.runs // 10) if name == "convnet_cifar" else args.runs
            t = race(m, runs, args.rounds, work)
            s = m["summary"]
            results.append({
                "model": name, "macs": s["macs"], "c_s": t["c"], "ort_float_s": t["float"],
                "ort_int8_s": t["int8"], "c_over_ort_float": t["c"] / t["float"],
                "c_over_ort_int8": t["c"] / t["int8"],
                "c_gmac_per_s": s["macs"] / t["c"] / 1e9,
                "m4_instructions_per_mac": instructions_per_mac(m, work),
                "flash_bytes": s["flash_bytes"], "packed_weight_bytes": s["packed_weight_bytes"],
                "arena_bytes": s["arena_bytes"], "arena_lower_bound": s["arena_lower_bound"]})
    table = Table(title=f"qcc C ({args.cflags}, one thread) vs onnxruntime (one thread), "
                        f"medians of {args.rounds} rounds")
    for col in ("model", "C", "ORT float", "ORT int8", "C / float", "C / int8", "GMAC/s",
                "M4 instr/MAC", "flash / weights", "arena / bound"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in results:
        ipm = r["m4_instructions_per_mac"]
        table.add_row(r["model"], f"{r['c_s'] * 1e3:.3f} ms", f"{r['ort_float_s'] * 1e3:.3f} ms",
                      f"{r['ort_int8_s'] * 1e3:.3f} ms", f"{r['c_over_ort_float']:.2f}",
                      f"{r['c_over_ort_int8']:.2f}", f"{r['c_gmac_per_s']:.1f}",
                      "n/a" if ipm is None else f"{ipm:.2f}",
                      f"{r['flash_bytes']:,} / {r['packed_weight_bytes']:,}",
                      f"{r['arena_bytes']:,} / {r['arena_lower_bound']:,}")
    console.print(table)
    met = all(r["c_over_ort_float"] < 1 for r in results)
    console.print(f"target (C faster than onnxruntime float): {'met' if met else 'NOT met'}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
