"""qcc's Cortex-M4 kernels layer by layer beside CMSIS-NN's, then the four MLPerf Tiny models whole.

    python benchmarks/mcu_kernels.py [--opt=-Os] [--models resnet8_ic,...] [--schemes affine,fixed]
                                     [--cmsis PATH] [--skip-layers] [--skip-models]
                                     [--no-sub-byte] [--json F]

1. Every distinct Conv / Gemm shape of the four MLPerf Tiny models (examples/mlperf_tiny): the
   layer alone (random weights, a fused ReLU) compiled by qcc at 8 bits (affine) and run from
   its library on QEMU mps2-an386 (Cortex-M4F, -icount: one instruction per ns, SysTick
   around <name>_infer), and the same shape through CMSIS-NN (arm_convolve_wrapper_s8,
   arm_depthwise_conv_wrapper_s8, arm_fully_connected_s8: CMSIS-NN picks its fast variants
   itself), built from the CMSIS-NN sources at --cmsis (default ../shared/anchors/cmsis-nn;
   the table says so when they are missing) with the same compiler and flags. CMSIS-NN is only
   the measuring stick: nothing of it goes into qcc.
   Then the same shapes with 4- and 2-bit weights and activations, and with ±1 weights (qcc
   only: CMSIS-NN has no sub-byte convolutions), instructions per MAC beside the 8-bit ones.
2. The four models whole (32 calibration inputs, one inference checked against the NumPy
   interpreter), instructions per MAC, beside the issue's starting point and the published
   MLPerf Tiny v1.1 engines on a Cortex-M4 at 120 MHz (cycles per MAC).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference
from rich.console import Console
from rich.table import Table

from backends.c.build import ARM_ARCH, build_mcu, missing_tools, run_qemu
from backends.c.library import MCU, emit_library
from qcc.driver.c_check import interpreter_outputs, sample_inputs
from qcc.driver.pipeline import compile_model

ROOT = Path(__file__).resolve().parent.parent
MLPERF = ROOT / "examples" / "mlperf_tiny"
CMSIS_DEFAULT = ROOT.parent / "shared" / "anchors" / "cmsis-nn"
MODELS = ("resnet8_ic", "dscnn_kws", "mobilenet_vww", "autoencoder_ad")
# issue 13's starting point: 8-bit qcc under QEMU, instructions per MAC (fixed, affine)
BEFORE = {"resnet8_ic": (3.39, 3.70), "dscnn_kws": (6.79, 7.70),
          "mobilenet_vww": (5.58, 7.81), "autoencoder_ad": (None, 6.41)}
TARGET = {"resnet8_ic": 1.5, "dscnn_kws": 2.0, "mobilenet_vww": 1.5, "autoencoder_ad": 1.8}
CMSIS_SOURCES = ("ConvolutionFunctions/*_s8*.c", "NNSupportFunctions/*.c",
                 "FullyConnectedFunctions/arm_fully_connected_s8.c",
                 "FullyConnectedFunctions/arm_vector_sum_s8.c",
                 "FullyConnectedFunctions/arm_fully_connected_get_buffer_sizes_s8.c")
TICK = 40  # instructions per SysTick tick (backends/c/build.py INSTRUCTIONS_PER_TICK)
# the sub-byte table's columns: label, bits, scheme (binary: ±1 weights, 8-bit activations)
SUB_BYTE = (("4-bit", 4, "affine"), ("2-bit", 2, "affine"), ("±1", 8, "binary"))


@dataclass(frozen=True)
class Layer:
    """One layer shape, NCHW: a conv (groups = 1 or depthwise) or a Gemm (h = w = kh = kw = 1)."""

    kind: str  # "conv", "depthwise" or "fc"
    cin: int
    h: int
    w: int
    cout: int
    kh: int
    kw: int
    sh: int
    sw: int
    pads: tuple[int, int, int, int]  # top, left, bottom, right

    @property
    def out_hw(self) -> tuple[int, int]:
        t, left, b, r = self.pads
        return ((self.h + t + b - self.kh) // self.sh + 1,
                (self.w + left + r - self.kw) // self.sw + 1)

    @property
    def macs(self) -> int:
        oh, ow = self.out_hw
        per = self.kh * self.kw * (1 if self.kind == "depthwise" else self.cin)
        return self.cout * oh * ow * per

    def describe(self) -> str:
        if self.kind == "fc":
            return f"fc {self.cin}->{self.cout}"
        oh, ow = self.out_hw
        return (f"{self.kind} {self.cin}x{self.h}x{self.w}->{self.cout}x{oh}x{ow} "
                f"k{self.kh}x{self.kw} s{self.sh}")


def model_layers(model: str) -> list[Layer]:
    proto = shape_inference.infer_shapes(onnx.load(MLPERF / f"{model}.onnx"))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*proto.graph.value_info, *proto.graph.input, *proto.graph.output]}
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    layers = []
    for node in proto.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            _, c, h, w = shapes[node.input[0]]
            m, _, kh, kw = inits[node.input[1]].shape
            group = attrs.get("group", 1)
            kind = "depthwise" if group > 1 else "conv"
            sh, sw = attrs.get("strides", [1, 1])
            pads = attrs.get("pads", [0, 0, 0, 0])
            if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                oh, ow = shapes[node.output[0]][2:]
                ph, pw = max(0, (oh - 1) * sh + kh - h), max(0, (ow - 1) * sw + kw - w)
                pads = [ph // 2, pw // 2, ph - ph // 2, pw - pw // 2]
            layers.append(Layer(kind, c, h, w, m, kh, kw, sh, sw,
                                (pads[0], pads[1], pads[2], pads[3])))
        elif node.op_type == "Gemm":
            wt = inits[node.input[1]]
            m, k = wt.shape if attrs.get("transB", 0) else wt.shape[::-1]
            layers.append(Layer("fc", k, 1, 1, m, 1, 1, 1, 1, (0, 0, 0, 0)))
    return layers


def layer_model(layer: Layer) -> onnx.ModelProto:
    """The layer alone with random weights and a ReLU, float32 in and out."""
    rng = np.random.default_rng(0)
    if layer.kind == "fc":
        x_shape = [1, layer.cin]
        w = rng.normal(0, layer.cin ** -0.5, (layer.cout, layer.cin)).astype(np.float32)
        op = helper.make_node("Gemm", ["x", "w", "b"], ["z"], transB=1)
        y_shape = [1, layer.cout]
    else:
        x_shape = [1, layer.cin, layer.h, layer.w]
        cg = 1 if layer.kind == "depthwise" else layer.cin
        k = cg * layer.kh * layer.kw
        w = rng.normal(0, k ** -0.5, (layer.cout, cg, layer.kh, layer.kw)).astype(np.float32)
        op = helper.make_node("Conv", ["x", "w", "b"], ["z"], kernel_shape=[layer.kh, layer.kw],
                              strides=[layer.sh, layer.sw], pads=list(layer.pads),
                              group=layer.cin if layer.kind == "depthwise" else 1)
        y_shape = [1, layer.cout, *layer.out_hw]
    b = rng.normal(0, 0.1, layer.cout).astype(np.float32)
    graph = helper.make_graph(
        [op, helper.make_node("Relu", ["z"], ["y"])], "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def qcc_layer(layer: Layer, work: Path, opt: str, bits: int = 8, scheme: str = "affine") -> int:
    """Instructions of the layer's qcc kernel (one inference, checked against the interpreter)
    with weights and activations at `bits` of `scheme` (below 8 rounded to nearest: the
    kernel's speed, not GPTQ's codes, is measured)."""
    work.mkdir(parents=True)
    onnx.save(layer_model(layer), work / "layer.onnx")
    x_shape = [1, layer.cin] if layer.kind == "fc" else [1, layer.cin, layer.h, layer.w]
    calib = np.random.default_rng(1).uniform(0, 1, [16] + x_shape[1:]).astype(np.float32)
    np.savez(work / "calib.npz", x=calib)
    graph = compile_model(work / "layer.onnx", bits, scheme, calib=work / "calib.npz",
                          weight_rounding="nearest").integer
    emit_library(graph, work, "layer", measure=False)
    xs = sample_inputs(graph, 1, seed=3)
    run = run_qemu(build_mcu(work, "layer", opt=opt), xs, work)
    codes, _ = interpreter_outputs(graph, xs, chunk=1)
    if not np.array_equal(run.codes, codes):
        raise SystemExit(f"{layer.describe()}: the MCU outputs differ from the interpreter's")
    return int(run.instructions[0])


class Cmsis:
    """CMSIS-NN built once for Cortex-M4 into an archive, then one firmware per layer."""

    def __init__(self, root: Path, work: Path, opt: str) -> None:
        self.root, self.work, self.opt = root, work, opt
        self.flags = [*ARM_ARCH, opt, "-ffunction-sections", "-fdata-sections",
                      f"-I{root / 'Include'}"]
        objects = []
        for pattern in CMSIS_SOURCES:
            for src in sorted((root / "Source").glob(pattern)):
                if re.search(r"_f16|_f32|_flt", src.stem):  # the integer kernels only
                    continue
                obj = work / (src.stem + ".o")
                _run(["arm-none-eabi-gcc", *self.flags, "-c", str(src), "-o", str(obj)])
                objects.append(str(obj))
        self.archive = work / "libcmsisnn.a"
        _run(["arm-none-eabi-ar", "rcs", str(self.archive), *objects])

    def instructions(self, layer: Layer) -> int:
        kind = {"conv": 0, "depthwise": 1, "fc": 2}[layer.kind]
        oh, ow = layer.out_hw
        t, left, _, _ = layer.pads
        defines = dict(KIND=kind, IN_H=layer.h, IN_W=layer.w, IN_C=layer.cin, OUT_H=oh, OUT_W=ow,
                       OUT_C=layer.cout, K_H=layer.kh, K_W=layer.kw, S_H=layer.sh, S_W=layer.sw,
                       P_H=t, P_W=left)
        elf = self.work / "layer.elf"
        _run(["arm-none-eabi-gcc", *self.flags, *(f"-D{k}={v}" for k, v in defines.items()),
              "-nostartfiles", "--specs=rdimon.specs", "-T", str(MCU / "mps2_an386.ld"),
              "-Wl,--gc-sections", str(MCU / "startup.c"),
              str(Path(__file__).with_name("mcu_kernels_cmsis.c")), str(self.archive),
              "-o", str(elf)])
        out = _run(["qemu-system-arm", "-machine", "mps2-an386", "-nographic", "-semihosting",
                    "-icount", "shift=0", "-kernel", str(elf)])
        found = re.search(r"ticks (\d+) status 0", out)
        if found is None:
            raise SystemExit(f"CMSIS-NN failed on {layer.describe()}: {out.strip()}")
        return int(found.group(1)) * TICK


def _run(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed:\n{done.stdout[-2000:]}"
                         f"{done.stderr[-2000:]}")
    return done.stdout


def make_data():
    spec = importlib.util.spec_from_file_location("make_data", MLPERF / "make_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def whole_model(model: str, scheme: str, data, work: Path, opt: str) -> dict:
    work.mkdir(parents=True)
    np.savez(work / "calib.npz", x=data.model_inputs(model, 32, data.CALIB_SEED))
    graph = compile_model(MLPERF / f"{model}.onnx", 8, scheme, calib=work / "calib.npz").integer
    summary = emit_library(graph, work, model)
    x = data.model_inputs(model, 1, data.HELD_OUT_SEED)
    run = run_qemu(build_mcu(work, model, opt=opt), x, work, timeout=1800)
    codes, _ = interpreter_outputs(graph, x, chunk=1)
    if not np.array_equal(run.codes, codes):
        raise SystemExit(f"{model} {scheme}: the MCU outputs differ from the interpreter's")
    return {"model": model, "scheme": scheme, "macs": summary["macs"],
            "instructions": int(run.instructions[0]),
            "per_mac": int(run.instructions[0]) / summary["macs"],
            "flash_bytes": summary.get("flash_bytes"),
            "packed_weight_bytes": summary["packed_weight_bytes"],
            "arena_bytes": summary["arena_bytes"],
            "arena_lower_bound": summary["arena_lower_bound"]}


def published() -> dict:
    spec = importlib.util.spec_from_file_location("mlperf_tiny",
                                                  Path(__file__).with_name("mlperf_tiny.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.PUBLISHED_MS), module.CLOCK_HZ


def layer_table(args, work: Path, console: Console) -> list[dict]:
    layers: dict[Layer, list[str]] = {}
    for model in args.models.split(","):
        for layer in model_layers(model):
            layers.setdefault(layer, []).append(model)
    cmsis = None
    if args.cmsis.is_dir():
        (work / "cmsis").mkdir()
        cmsis = Cmsis(args.cmsis, work / "cmsis", args.opt)
    else:
        console.print(f"CMSIS-NN is missing ({args.cmsis}): qcc's column only")
    table = Table(title=f"Per layer shape, Cortex-M4 instructions under QEMU ({args.opt}, "
                        f"affine 8-bit qcc vs CMSIS-NN s8)")
    for col in ("layer", "models", "MACs", "qcc instr", "qcc instr/MAC", "CMSIS-NN instr",
                "CMSIS-NN instr/MAC", "qcc / CMSIS-NN"):
        table.add_column(col, justify="left" if col in ("layer", "models") else "right")
    rows = []
    for i, (layer, models) in enumerate(layers.items()):
        ours = qcc_layer(layer, work / f"layer{i}", args.opt)
        theirs = cmsis.instructions(layer) if cmsis else None
        rows.append({**asdict(layer), "models": sorted(set(models)), "macs": layer.macs,
                     "qcc": ours, "cmsis_nn": theirs})
        table.add_row(layer.describe(), ",".join(sorted({m.split("_")[0] for m in models})),
                      f"{layer.macs:,}", f"{ours:,}", f"{ours / layer.macs:.2f}",
                      f"{theirs:,}" if theirs else "-",
                      f"{theirs / layer.macs:.2f}" if theirs else "-",
                      f"{ours / theirs:.2f}" if theirs else "-")
    console.print(table)
    if args.sub_byte:
        sub_byte_table(args, layers, rows, work, console)
    return rows


def sub_byte_table(args, layers: dict[Layer, list[str]], rows: list[dict], work: Path,
                   console: Console) -> None:
    """The same shapes with 4- and 2-bit weights and activations (affine) and with ±1
    weights (binary, 8-bit activations): the packed kernels on weights unpacked row by row
    (a depthwise channel at a time) from their sub-byte storage; rows of fewer than 16 sign
    bits and sign activations (XNOR) keep the portable path."""
    table = Table(title=f"Per layer shape, sub-byte weights, Cortex-M4 instructions per MAC "
                        f"under QEMU ({args.opt}, qcc)")
    for col in ("layer", "models", "8-bit", *(label for label, _, _ in SUB_BYTE)):
        table.add_column(col, justify="left" if col in ("layer", "models") else "right")
    for i, ((layer, models), row) in enumerate(zip(layers.items(), rows)):
        per_mac = {label: qcc_layer(layer, work / f"layer{i}_{scheme}{bits}", args.opt, bits,
                                    scheme) / layer.macs for label, bits, scheme in SUB_BYTE}
        row.update({f"qcc_{label}_per_mac": v for label, v in per_mac.items()})
        table.add_row(layer.describe(), ",".join(sorted({m.split("_")[0] for m in models})),
                      f"{row['qcc'] / layer.macs:.2f}", *(f"{v:.2f}" for v in per_mac.values()))
    console.print(table)


def model_table(args, work: Path, console: Console) -> list[dict]:
    data = make_data()
    engines, clock = published()
    rows = [whole_model(m, s, data, work / f"{m}_{s}", args.opt)
            for m in args.models.split(",") for s in args.schemes.split(",")]
    table = Table(title=f"Whole models, 8 bits, Cortex-M4 instructions per MAC under QEMU "
                        f"({args.opt})")
    for col in ("model", "scheme", "MACs", "instr/MAC", "before (issue 13)", "target",
                "flash B", "packed B", *(f"{e} cyc/MAC" for e in engines)):
        table.add_column(col, justify="left" if col in ("model", "scheme") else "right")
    for r in rows:
        before = BEFORE[r["model"]][0 if r["scheme"] == "fixed" else 1]
        table.add_row(r["model"], r["scheme"], f"{r['macs']:,}", f"{r['per_mac']:.3f}",
                      f"{before:.2f}" if before else "-",
                      f"<= {TARGET[r['model']]}" if r["scheme"] == "affine" else "<= affine",
                      f"{r['flash_bytes']:,}" if r["flash_bytes"] else "-",
                      f"{r['packed_weight_bytes']:,}",
                      *(f"{engines[e][r['model']] * 1e-3 * clock / r['macs']:.2f}"
                        for e in engines))
    console.print(table)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--opt", default="-Os", help="optimisation flag of both builds")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--schemes", default="affine,fixed")
    parser.add_argument("--cmsis", type=Path, default=CMSIS_DEFAULT)
    parser.add_argument("--skip-layers", action="store_true")
    parser.add_argument("--skip-models", action="store_true")
    parser.add_argument("--sub-byte", action=argparse.BooleanOptionalAction, default=True,
                        help="also the layer shapes with 4-, 2- and 1-bit (±1) weights")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    missing = missing_tools("arm-none-eabi-gcc", "qemu-system-arm")
    if missing:
        raise SystemExit(f"needs {', '.join(missing)}")
    console = Console(width=200)
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_layers:
            result["layers"] = layer_table(args, Path(tmp), console)
        if not args.skip_models:
            result["models"] = model_table(args, Path(tmp), console)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
