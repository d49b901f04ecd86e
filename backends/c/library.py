"""Writes an emitted model as a drop-in C library folder, and measures it.

OUTDIR/
    <name>.h, <name>.c              the model (backends/c/emit.py)
    <name>_runtime.h, _runtime.c    backends/c/runtime/qcc_runtime.[ch], prefix `qcc_` -> `<name>_`
    harness.c                       host harness: float32 samples in, output codes/floats out
    Makefile, CMakeLists.txt        library, harness, `make mcu`, `make run-mcu`, `make size`
    mcu/                            QEMU mps2-an386: linker script, startup, semihosting main
    sample_input.f32                a few input samples for `make run-mcu`
    summary.json                    flash, RAM, packed weights, arena and its bound, MACs
                                    (with --train, "training": the train step's RAM)

The runtime, harness, build files and MCU support are real files in backends/c/runtime and
backends/c/mcu with `@NAME@` / `@UPPER@` placeholders; nothing here is C in a Python string.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from backends.c.build import arm_size
from backends.c.emit import CSource, emit_source
from qcc.core.ir import Graph

HERE = Path(__file__).parent
RUNTIME = HERE / "runtime"
MCU = HERE / "mcu"
SUMMARY = "summary.json"
SAMPLE_INPUT = "sample_input.f32"
FLASH_BUDGET = 16 * 1024  # flash <= packed weight bytes + 16 KiB (the target)


def fill(text: str, name: str) -> str:
    """A template with its model placeholders filled in."""
    return text.replace("@NAME@", name).replace("@UPPER@", name.upper())


def runtime_sources(name: str) -> dict[str, str]:
    """qcc_runtime.[ch] renamed for one model: `qcc_` -> `<name>_`, `QCC_` -> `<NAME>_`."""
    files = {}
    for suffix in ("h", "c"):
        text = (RUNTIME / f"qcc_runtime.{suffix}").read_text()
        text = text.replace("qcc_runtime", f"{name}_runtime").replace("QCC_", f"{name.upper()}_")
        files[f"{name}_runtime.{suffix}"] = text.replace("qcc_", f"{name}_")
    dsp = (RUNTIME / "qcc_dsp.h").read_text().replace("QCC_", f"{name.upper()}_")
    files[f"{name}_dsp.h"] = dsp.replace("qcc_", f"{name}_")  # included by the runtime header
    return files


def library_files(source: CSource) -> dict[str, str]:
    """Every text file of the library folder (relative path -> content)."""
    name = source.name
    files = dict(source.files)
    files.update(runtime_sources(name))
    files["harness.c"] = fill((RUNTIME / "harness.c").read_text(), name)
    files["Makefile"] = fill((RUNTIME / "Makefile.in").read_text(), name)
    files["CMakeLists.txt"] = fill((RUNTIME / "CMakeLists.txt.in").read_text(), name)
    for path in ("mps2_an386.ld", "startup.c", "main.c"):
        files[f"mcu/{path}"] = fill((MCU / path).read_text(), name)
    return files


def emit_library(graph: Graph, outdir: Path, name: str, samples: np.ndarray | None = None,
                 source_model: str = "", measure: bool = True) -> dict:
    """Emit `graph` as a C library into `outdir` (which must exist); returns the summary.

    `samples` (float32, N x input shape) are written as sample_input.f32 for `make run-mcu`.
    With `measure`, the library is cross-built for Cortex-M4 at -Os and sized (when
    arm-none-eabi-gcc is installed; otherwise flash and RAM are null, with a note).
    """
    outdir = Path(outdir)
    source = emit_source(graph, name, source_model)
    for rel, text in library_files(source).items():
        path = outdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if samples is not None:
        np.ascontiguousarray(samples, dtype=np.float32).tofile(outdir / SAMPLE_INPUT)
    summary = source.summary()
    summary.update(arm_size(outdir, source.name) if measure else
                   {"flash_bytes": None, "ram_bytes": None, "note": "not measured"})
    if summary.get("flash_bytes") is not None:
        summary["flash_budget_bytes"] = source.weight_bytes + FLASH_BUDGET
    (outdir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def summary_lines(summary: dict) -> list[str]:
    """The compile summary as a few lines for stdout."""
    def kib(n: int | None) -> str:
        return "n/a" if n is None else f"{n:,} B ({n / 1024:.1f} KiB)"

    bound = summary["arena_lower_bound"]
    ratio = summary["arena_bytes"] / bound if bound else 1.0
    lines = [f"C library {summary['name']}: {summary['macs']:,} MACs per inference",
             f"  packed weights {kib(summary['packed_weight_bytes'])}, all constants "
             f"{kib(summary['constant_bytes'])}",
             f"  arena {kib(summary['arena_bytes'])}, lower bound {kib(bound)} "
             f"(x{ratio:.3f})"]
    if summary.get("flash_bytes") is not None:
        lines.append(f"  Cortex-M4 -Os: flash {kib(summary['flash_bytes'])} (budget "
                     f"{kib(summary['flash_budget_bytes'])}), RAM {kib(summary['ram_bytes'])}")
    else:
        lines.append(f"  flash / RAM not measured: {summary.get('note', '')}")
    train = summary.get("training")
    if train is not None:  # --train: backends/c/train_emit.py write_train
        lines.append(f"  train step (batch {train['batch']}, update {train['update']}, "
                     f"{train['gradient_ctype']} gradients): static RAM arrays "
                     f"{kib(train['static_ram_bytes'])}")
        lines.append(f"    Cortex-M4 -Os: RAM {kib(train['ram_bytes'])}, flash "
                     f"{kib(train['flash_bytes'])}" if train.get("ram_bytes") is not None else
                     f"    RAM not measured: {train.get('note', '')}")
    return lines
