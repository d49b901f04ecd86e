"""`qcc eval OUTDIR --mcu-layers`: instructions per layer of the C library on the emulated
Cortex-M4, stored in OUTDIR/mcu_layers.json for `qcc report`.

How it is measured. QEMU's mps2-an386 runs with `-icount shift=0`: virtual time advances 1 ns
per executed instruction, and SysTick, clocked at the board's 25 MHz, ticks every 40 ns, so
40 x ticks counts instructions to within one tick (this is how `make run-mcu` times whole
inferences, backends/c/mcu/main.c). QEMU 7.2 does not model the DWT cycle counter (reads of
0xE0001004 hit "unassigned area of PPB" and return 0), so SysTick is the only counter there is.

To split an inference by layer, the model source (<name>.c, where every layer is one function)
is rebuilt at the shipped flags plus `-finstrument-functions`: GCC calls
`__cyg_profile_func_enter/_exit` around each of its functions, inlined or not, and
backends/c/mcu/layer_ticks.c sums SysTick ticks per function address. The runtime headers are
excluded (`-finstrument-functions-exclude-file-list`), so per-element helpers stay plain inline
code. Addresses become layer functions through `arm-none-eabi-nm`, and layers through
summary.json (node -> function). The outputs of that build must equal the NumPy interpreter's,
and the shipped firmware is run on the same samples so the two inference totals can be compared
(the hooks change GCC's inlining and scheduling a little: on examples/digits the instrumented
inference ran 1.2 % fewer instructions than the shipped one at --bits 8 and 8.8 % more at
--bits auto, so per-layer counts are the instrumented build's, and both totals are stored).

mcu_layers.json:
    {"model_sha256", "samples", "instructions_per_tick": 40,
     "infer_instructions": per inference, instrumented build (inclusive),
     "shipped_infer_instructions": per inference, the firmware `make run-mcu` builds,
     "layers": [{"name", "function", "instructions"}, ...] (per inference, in node order),
     "outside_layers": infer_instructions - sum(layers): the inference function's own calls
                       and the hooks}
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from backends.c.build import (
    ARM_ARCH,
    ARM_FLAGS,
    INSTRUCTIONS_PER_TICK,
    QEMU_MACHINE,
    build_mcu,
    library_sources,
    missing_tools,
    parse_mcu_output,
    run_qemu,
)
from backends.c.library import MCU, SUMMARY
from qcc.core.errors import QccError
from qcc.driver.c_check import interpreter_outputs
from qcc.driver.io import atomic_file
from qcc.driver.outdir import INTEGER_MODEL, Loaded

MCU_LAYERS_FILE = "mcu_layers.json"
MCU_SAMPLES = 4  # samples of --data run on the emulated Cortex-M4 (ticks are averaged)
HOOKS = MCU / "layer_ticks.c"
TOOLS = ("arm-none-eabi-gcc", "arm-none-eabi-nm", "qemu-system-arm")


def measure_layers(outdir: Path, loaded: Loaded, x: np.ndarray) -> dict:
    """Instructions per layer of OUTDIR's C library on the first MCU_SAMPLES of `x` (see the
    module doc); refuses a folder without a C library, missing tools, or outputs that differ
    from the interpreter's."""
    outdir = Path(outdir)
    check_measurable(outdir)
    summary = json.loads((outdir / SUMMARY).read_text())
    name = summary["name"]
    samples = np.ascontiguousarray(x[:MCU_SAMPLES], dtype=np.float32)
    expected, _ = interpreter_outputs(loaded.integer, samples)
    with tempfile.TemporaryDirectory(prefix="qcc-mcu-layers-") as tmp:
        work = Path(tmp)
        elf = _build_instrumented(outdir, name, work)
        out = _qemu(elf, samples, work)
        shipped = run_qemu(build_mcu(outdir, name, work / "shipped.elf"), samples, work)
        symbols = _symbols(elf)
    codes = parse_mcu_output(out).codes
    if codes.shape != expected.shape or not np.array_equal(codes, expected):
        raise QccError("--mcu-layers: the instrumented Cortex-M4 build's outputs differ from the "
                       "NumPy interpreter's; not measured")
    ticks = _function_ticks(out, symbols)
    per_call = {fn: INSTRUCTIONS_PER_TICK * t / calls for fn, (calls, t) in ticks.items()}
    layers = [{"name": n["name"], "function": n["function"],
               "instructions": round(per_call[n["function"]])}
              for n in summary["nodes"] if n["function"] in per_call]
    if f"{name}_infer" not in per_call:
        raise QccError(f"--mcu-layers: no SysTick count for {name}_infer in the instrumented "
                       "build; not measured")
    infer = round(per_call[f"{name}_infer"])
    return {"model_sha256": _digest(outdir), "samples": len(samples),
            "instructions_per_tick": INSTRUCTIONS_PER_TICK, "infer_instructions": infer,
            "shipped_infer_instructions": round(float(np.mean(shipped.instructions))),
            "layers": layers,
            "outside_layers": infer - sum(la["instructions"] for la in layers)}


def check_measurable(outdir: Path) -> None:
    """One QccError unless OUTDIR holds a C library and the ARM tools and QEMU are installed
    (checked before `qcc eval` runs, so a refusal writes nothing)."""
    if not (Path(outdir) / SUMMARY).is_file():
        raise QccError(f"--mcu-layers: {outdir} holds no C library (compile with --target c)")
    missing = missing_tools(*TOOLS)
    if missing:
        raise QccError(f"--mcu-layers needs {', '.join(missing)} (Debian: gcc-arm-none-eabi, "
                       "libnewlib-arm-none-eabi, qemu-system-arm)")


def write_layers(outdir: Path, record: dict) -> Path:
    path = Path(outdir) / MCU_LAYERS_FILE
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        tmp.chmod(0o644)
    return path


def _digest(outdir: Path) -> str:
    """sha256 of model.qcc.onnx: ties the measurement to the model (`qcc train` rewrites it)."""
    return hashlib.sha256((outdir / INTEGER_MODEL).read_bytes()).hexdigest()


def _build_instrumented(outdir: Path, name: str, work: Path) -> Path:
    """The firmware of `make mcu` with the model source instrumented (not its runtime)."""
    runtime_headers = sorted(p.name for p in outdir.glob("*.h") if p.name != f"{name}.h")
    model_source, runtime_source = library_sources(outdir, name)
    obj = work / "model.o"
    flags = [*ARM_ARCH, *ARM_FLAGS, f"-I{outdir}"]
    _run(["arm-none-eabi-gcc", *flags, "-finstrument-functions",
          f"-finstrument-functions-exclude-file-list={','.join(runtime_headers)}", "-c",
          model_source, "-o", str(obj)])
    elf = work / "layers.elf"
    mcu = outdir / "mcu"
    _run(["arm-none-eabi-gcc", *flags, "-nostartfiles", "--specs=rdimon.specs", "-T",
          str(mcu / "mps2_an386.ld"), "-Wl,--gc-sections", str(mcu / "startup.c"),
          str(mcu / "main.c"), str(HOOKS), str(obj), runtime_source, "-o", str(elf)])
    return elf


def _qemu(elf: Path, samples: np.ndarray, work: Path) -> str:
    path = work / "layers_input.f32"
    samples.tofile(path)
    return _run(["qemu-system-arm", *QEMU_MACHINE, "-kernel", str(elf), "-append", str(path)])


def _run(cmd: list[str]) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise QccError(f"--mcu-layers: {Path(cmd[0]).name} failed: "
                       f"{(result.stderr or result.stdout).strip()[:300]}")
    return result.stdout


def _symbols(elf: Path) -> dict[int, str]:
    """Function address (Thumb bit cleared) -> name, without GCC's clone suffixes
    (`n4_qgemm.constprop.0` is n4_qgemm)."""
    text = _run(["arm-none-eabi-nm", str(elf)])
    return {int(m.group(1), 16): m.group(2).split(".")[0]
            for m in re.finditer(r"^([0-9a-f]+) [tT] (\S+)$", text, re.M)}


def _function_ticks(text: str, symbols: dict[int, str]) -> dict[str, tuple[int, int]]:
    """layer_ticks.c's `qcc-function 0xADDRESS CALLS TICKS` lines -> {name: (calls, ticks)}."""
    result = {}
    for m in re.finditer(r"^qcc-function (0x[0-9a-f]+) (\d+) (\d+)$", text, re.M):
        address = int(m.group(1), 16) & ~1  # Thumb functions' addresses carry bit 0
        calls, ticks = int(m.group(2)), int(m.group(3))
        if address in symbols and calls:
            before = result.get(symbols[address], (0, 0))
            result[symbols[address]] = (before[0] + calls, before[1] + ticks)
    return result
