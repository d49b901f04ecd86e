"""Building and running an emitted library: host gcc, arm-none-eabi-gcc, arm-none-eabi-size,
and qemu-system-arm (machine mps2-an386). Used by the compile summary, the tests and the
benchmark; the Makefile in the library folder does the same for a person.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qcc.core.errors import QccError

HOST_WARNINGS = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic")
ARM_ARCH = ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16")
ARM_FLAGS = ("-std=c99", "-Os", "-Wall", "-Wextra", "-Werror", "-pedantic",
             "-ffunction-sections", "-fdata-sections")
SANITIZE = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer")
QEMU_MACHINE = ("-machine", "mps2-an386", "-nographic", "-semihosting", "-icount", "shift=0")
INSTRUCTIONS_PER_TICK = 40  # SysTick at 25 MHz = 40 ns; -icount shift=0: 1 instruction per ns


def missing_tools(*tools: str) -> list[str]:
    return [t for t in tools if shutil.which(t) is None]


def _run(cmd: list[str], cwd: Path | None = None, timeout: float = 600) -> str:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n"
                           f"{result.stdout[-4000:]}{result.stderr[-4000:]}")
    return result.stdout


def library_sources(outdir: Path, name: str) -> list[str]:
    return [str(outdir / f"{name}.c"), str(outdir / f"{name}_runtime.c")]


def build_host(outdir: Path, name: str, exe: Path, opt: str = "-O2",
               extra: tuple[str, ...] = (), cc: str = "gcc") -> Path:
    """The host harness (harness.c + the library) with the strict warning flags."""
    _run([cc, *HOST_WARNINGS, opt, *extra, str(outdir / "harness.c"),
          *library_sources(outdir, name), "-o", str(exe)])
    return exe


def run_host(exe: Path, inputs: np.ndarray, out_dtype: np.dtype, out_size: int,
             workdir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(output codes, output floats) of the harness on float32 `inputs` (N samples)."""
    src, codes, floats = workdir / "in.f32", workdir / "out.codes", workdir / "out.f32"
    np.ascontiguousarray(inputs, dtype=np.float32).tofile(src)
    _run([str(exe), str(src), str(codes), str(floats)])
    n = len(inputs)
    return (np.fromfile(codes, dtype=out_dtype).reshape(n, out_size),
            np.fromfile(floats, dtype=np.float32).reshape(n, out_size))


def time_host(exe: Path, inputs: np.ndarray, runs: int, workdir: Path) -> float:
    """Seconds per inference of the harness on the first sample (CPU time, one thread)."""
    src = workdir / "time.f32"
    np.ascontiguousarray(inputs[:1], dtype=np.float32).tofile(src)
    out = _run([str(exe), "--time", str(runs), str(src)])
    return float(out.split()[0]) * 1e-6


def build_mcu(outdir: Path, name: str, elf: Path | None = None, opt: str = "-Os") -> Path:
    """The QEMU mps2-an386 firmware: startup + semihosting main + the library, at -Os (or
    `opt`)."""
    elf = elf or outdir / "mcu" / f"{name}.elf"
    mcu = outdir / "mcu"
    flags = [opt if f == "-Os" else f for f in ARM_FLAGS]
    _run(["arm-none-eabi-gcc", *ARM_ARCH, *flags, f"-I{outdir}", "-nostartfiles",
          "--specs=rdimon.specs", "-T", str(mcu / "mps2_an386.ld"), "-Wl,--gc-sections",
          str(mcu / "startup.c"), str(mcu / "main.c"), *library_sources(outdir, name),
          "-o", str(elf)])
    return elf


@dataclass
class McuRun:
    codes: np.ndarray  # (N, output size) int64
    float_bits: np.ndarray  # (N, output size) uint32: the output floats' IEEE bits
    ticks: np.ndarray  # (N,) SysTick ticks of each <name>_infer

    @property
    def instructions(self) -> np.ndarray:
        return self.ticks * INSTRUCTIONS_PER_TICK


def run_qemu(elf: Path, inputs: np.ndarray | None, workdir: Path,
             timeout: float = 600) -> McuRun:
    """Run the firmware under qemu-system-arm on float32 `inputs` (read through semihosting)."""
    path = workdir / "mcu_input.f32"
    if inputs is not None:
        np.ascontiguousarray(inputs, dtype=np.float32).tofile(path)
    out = _run(["qemu-system-arm", *QEMU_MACHINE, "-kernel", str(elf), "-append",
                str(path)], timeout=timeout)
    return parse_mcu_output(out)


def parse_mcu_output(text: str) -> McuRun:
    codes, floats, ticks = [], [], []
    for line in text.splitlines():
        m = re.match(r"sample (\d+) (codes|floats|ticks):(.*)", line)
        if not m:
            continue
        values = m.group(3).split()
        if m.group(2) == "codes":
            codes.append([int(v) for v in values])
        elif m.group(2) == "floats":
            floats.append([int(v, 16) for v in values])
        else:
            ticks.append(int(values[0]))
    return McuRun(np.array(codes, dtype=np.int64), np.array(floats, dtype=np.uint32),
                  np.array(ticks, dtype=np.int64))


def arm_size(outdir: Path, name: str) -> dict:
    """Flash (text + rodata) and RAM (data + bss) of the library objects built for Cortex-M4
    with -Os, from `arm-none-eabi-size -A` (initialised data counts for both)."""
    return arm_object_size(library_sources(outdir, name), outdir / "mcu")


def arm_object_size(sources: list[str], objdir: Path) -> dict:
    """Flash and RAM as in `arm_size` of the objects of `sources` (built in `objdir`, then
    removed); flash and RAM are None, with a note, without the ARM toolchain."""
    missing = missing_tools("arm-none-eabi-gcc", "arm-none-eabi-size")
    if missing:
        return {"flash_bytes": None, "ram_bytes": None,
                "note": f"{', '.join(missing)} not installed: flash and RAM not measured"}
    objects = []
    for src in sources:
        obj = Path(objdir) / (Path(src).stem + ".o")
        obj.parent.mkdir(exist_ok=True)
        try:
            _run(["arm-none-eabi-gcc", *ARM_ARCH, *ARM_FLAGS, "-c", src, "-o", str(obj)])
        except RuntimeError as e:  # a bug of the emitter, but say so in one clear line first
            raise QccError(f"the emitted C does not build for Cortex-M4 ({src}):\n{e}") from None
        objects.append(obj)
    sections = {"text": 0, "rodata": 0, "data": 0, "bss": 0}
    for line in _run(["arm-none-eabi-size", "-A", *map(str, objects)]).splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit():
            kind = parts[0].split(".")[1]
            if kind in sections:
                sections[kind] += int(parts[1])
    for obj in objects:
        obj.unlink()
    return {"flash_bytes": sections["text"] + sections["rodata"] + sections["data"],
            "ram_bytes": sections["data"] + sections["bss"], "sections": sections,
            "toolchain": "arm-none-eabi-gcc -mcpu=cortex-m4 -mthumb -mfloat-abi=hard -Os"}
