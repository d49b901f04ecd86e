"""Wall time of `qcc compile --bits auto` on a CIFAR-sized ConvNet with 256 calibration samples.

Target (the --bits auto issue): under 60 s on 2 cores. Prints the time, the target and the
ratio; never asserts on time. Usage: python benchmarks/compile_auto.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from rich.console import Console
from rich.table import Table

from qcc import zoo

TARGET_SECONDS = 60.0


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        onnx.save(zoo.convnet_cifar(), folder / "convnet.onnx")
        rng = np.random.default_rng(0)
        np.savez(folder / "calib.npz", x=rng.normal(size=(256, 3, 32, 32)).astype(np.float32))
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "qcc.driver.cli", "compile",
                                 folder / "convnet.onnx", "--bits", "auto", "--calib",
                                 folder / "calib.npz", "-o", folder / "out"],
                                capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"compile failed: {result.stderr.strip()}")
    table = Table(title="qcc compile --bits auto, CIFAR ConvNet (1.54 M weights), 256 samples")
    for col in ("wall time", "target", "time / target", "met"):
        table.add_column(col)
    table.add_row(f"{seconds:.1f} s", f"{TARGET_SECONDS:.0f} s", f"{seconds / TARGET_SECONDS:.2f}",
                  "yes" if seconds <= TARGET_SECONDS else "no")
    Console().print(table)


if __name__ == "__main__":
    main()
