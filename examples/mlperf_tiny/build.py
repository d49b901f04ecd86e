"""Build the four MLPerf Tiny reference models for the Cortex-M4, from ONNX to a running firmware.

For each model (and the `*_nhwc` variants with --nhwc): make calibration inputs (make_data.py),
`qcc compile MODEL.onnx --bits 8 --scheme SCHEME --calib ... --target c`, then `make run-mcu`
(cross-build with arm-none-eabi-gcc, run under QEMU mps2-an386), and print flash, RAM and the
MCU's verdict against the interpreter.

    python examples/mlperf_tiny/build.py [-o build/mlperf_tiny] [--scheme fixed|affine] [--nhwc]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
from make_data import CALIB_SEED, MODELS, model_inputs  # noqa: E402


def run(*cmd: str) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result.stdout


def build(model: str, nhwc: bool, scheme: str, out: Path, calib_count: int) -> dict:
    name = model + ("_nhwc" if nhwc else "")
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    calib = data / f"{name}_calib.npz"
    np.savez(calib, x=model_inputs(model, calib_count, CALIB_SEED, nhwc))
    outdir = out / f"{name}_{scheme}8"
    run("qcc", "compile", str(HERE / f"{name}.onnx"), "--bits", "8", "--scheme", scheme,
        "--calib", str(calib), "--target", "c", "-o", str(outdir), "--force")
    mcu = run("make", "-s", "-C", str(outdir), "run-mcu")
    summary = json.loads((outdir / "summary.json").read_text())
    return {"model": name, "outdir": str(outdir), "summary": summary,
            "mcu_last_line": mcu.strip().splitlines()[-1] if mcu.strip() else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=Path("build/mlperf_tiny"))
    parser.add_argument("--scheme", default="fixed", choices=["fixed", "affine"])
    parser.add_argument("--nhwc", action="store_true", help="also the *_nhwc variants")
    parser.add_argument("--calib", type=int, default=64, help="calibration inputs per model")
    args = parser.parse_args()
    for model in MODELS:
        for nhwc in (False, True) if args.nhwc and model != "autoencoder_ad" else (False,):
            result = build(model, nhwc, args.scheme, args.output, args.calib)
            s = result["summary"]
            print(f"{result['model']:<22} flash {s.get('flash_bytes', '?'):>9} B  "
                  f"RAM {s.get('ram_bytes', '?'):>8} B  -> {result['outdir']}")
            print(f"  MCU: {result['mcu_last_line']}")


if __name__ == "__main__":
    main()
