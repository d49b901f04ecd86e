"""The four MLPerf Tiny reference models through qcc, beside the published Cortex-M4 engines.

    python benchmarks/mlperf_tiny.py [--schemes fixed,affine] [--calib 256] [--held-out 512]
                                     [--models resnet8_ic,...] [--json results.json]

Per model (examples/mlperf_tiny) and scheme, at 8 bits, in one run:
- agreement with the float model (onnxruntime) on held-out inputs that calibration never saw
  (examples/mlperf_tiny/make_data.py): top-1 agreement for the three classifiers, relative L2
  error of the reconstruction for the autoencoder;
- packed weight bytes, flash and RAM of the library from arm-none-eabi-size (-Os), the arena
  against its liveness lower bound, MACs;
- Cortex-M4 instructions per inference under QEMU mps2-an386 (-icount shift=0: one instruction
  per ns, read from SysTick around <name>_infer) and per MAC, beside the published MLPerf Tiny
  v1.1 latencies on a Cortex-M4F at 120 MHz converted to cycles per MAC (the M4 retires at most
  one instruction per cycle, so instructions per MAC bound cycles per MAC from below).
The MCU outputs are checked against the integer interpreter before anything is printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from backends.c.build import build_mcu, missing_tools, run_qemu
from backends.c.library import emit_library
from qcc.driver.c_check import interpreter_outputs
from qcc.driver.pipeline import compile_model

ROOT = Path(__file__).resolve().parent.parent
MLPERF = ROOT / "examples" / "mlperf_tiny"
# published MLPerf Tiny v1.1 latencies (ms) on NUCLEO-L4R5ZI, Cortex-M4F at 120 MHz, int8
PUBLISHED_MS = {
    "Plumerai": {"resnet8_ic": 167.8, "dscnn_kws": 47.8, "mobilenet_vww": 98.8,
                 "autoencoder_ad": 4.1},
    "X-CUBE-AI": {"resnet8_ic": 214.0, "dscnn_kws": 62.9, "mobilenet_vww": 118.7,
                  "autoencoder_ad": 6.9},
    "microTVM+CMSIS-NN": {"resnet8_ic": 389.6, "dscnn_kws": 99.8, "mobilenet_vww": 300.8,
                          "autoencoder_ad": 8.6},
}
CLOCK_HZ = 120e6
MCU_SAMPLES = 2


def make_data():
    spec = importlib.util.spec_from_file_location("make_data", MLPERF / "make_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def float_outputs(model: Path, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def measure(model: str, scheme: str, data, calib: int, held_out: int, work: Path) -> dict:
    path = MLPERF / f"{model}.onnx"
    np.savez(work / "calib.npz", x=data.model_inputs(model, calib, data.CALIB_SEED))
    x = data.model_inputs(model, held_out, data.HELD_OUT_SEED)
    graph = compile_model(path, 8, scheme, calib=work / "calib.npz").integer
    _, y_int = interpreter_outputs(graph, x, chunk=1)
    y_float = float_outputs(path, x)
    if model == "autoencoder_ad":
        quality = float(np.linalg.norm(y_int - y_float) / np.linalg.norm(y_float))
    else:
        quality = float(np.mean(y_int.argmax(axis=1) == y_float.argmax(axis=1)))
    out = work / f"{model}_{scheme}"
    out.mkdir()
    summary = emit_library(graph, out, model)
    row = {"model": model, "scheme": scheme, "quality": quality, **{
        k: summary.get(k) for k in ("packed_weight_bytes", "flash_bytes", "ram_bytes",
                                    "arena_bytes", "arena_lower_bound", "macs")}}
    if not missing_tools("arm-none-eabi-gcc", "qemu-system-arm"):
        run = run_qemu(build_mcu(out, model), x[:MCU_SAMPLES], out, timeout=1800)
        codes, _ = interpreter_outputs(graph, x[:MCU_SAMPLES], chunk=1)
        if not np.array_equal(run.codes, codes):
            raise SystemExit(f"{model} {scheme}: the MCU outputs differ from the interpreter's")
        row["instructions"] = int(np.median(run.instructions))
        row["instructions_per_mac"] = row["instructions"] / summary["macs"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemes", default="fixed,affine")
    parser.add_argument("--models", default="resnet8_ic,dscnn_kws,mobilenet_vww,autoencoder_ad")
    parser.add_argument("--calib", type=int, default=256)
    parser.add_argument("--held-out", type=int, default=512)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    data = make_data()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            for scheme in args.schemes.split(","):
                work = Path(tmp) / f"{model}_{scheme}_work"
                work.mkdir()
                rows.append(measure(model, scheme, data, args.calib, args.held_out, work))
    table = Table(title="MLPerf Tiny, 8 bits: qcc on a Cortex-M4 (QEMU) beside published engines")
    for col in ("model", "scheme", "top-1 agr. / rel. err", "packed B", "flash B", "RAM B",
                "arena/bound", "MACs", "M4 instr/inf", "instr/MAC",
                *(f"{e} cyc/MAC" for e in PUBLISHED_MS)):
        table.add_column(col, justify="left" if col in ("model", "scheme") else "right")
    for r in rows:
        published = [PUBLISHED_MS[e][r["model"]] * 1e-3 * CLOCK_HZ / r["macs"]
                     for e in PUBLISHED_MS]
        quality = (f"{r['quality']:.3f}" if r["model"] != "autoencoder_ad"
                   else f"{100 * r['quality']:.2f} %")
        table.add_row(r["model"], r["scheme"], quality, f"{r['packed_weight_bytes']:,}",
                      f"{r['flash_bytes']:,}" if r["flash_bytes"] else "-",
                      f"{r['ram_bytes']:,}" if r["ram_bytes"] else "-",
                      f"{r['arena_bytes'] / max(r['arena_lower_bound'], 1):.3f}",
                      f"{r['macs']:,}", f"{r.get('instructions', 0):,}",
                      f"{r.get('instructions_per_mac', float('nan')):.2f}",
                      *(f"{p:.2f}" for p in published))
    Console(width=220).print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
