"""Training a binary network with sign activations (XNOR-popcount forward, straight-through
backward) and ternarized back-propagation (seeds/000) in C against the NumPy specification
(backends/numpy_int/train_step.py): the digits network with binary weights and sign activations
in every layer but the first and last, bit for bit after 100 host steps (exact gradients and
`--grad-ternary auto`) and after 20 steps on the emulated Cortex-M4; and the claim that the
binary layers' dot products need no multiplier, checked on the Cortex-M4 object code."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from backends.c.build import ARM_ARCH, ARM_FLAGS, QEMU_MACHINE
from backends.c.emit import node_identifiers, split_edges
from qcc.core.numerics.softmax_ce import float_loss
from qcc.driver.cli import main
from qcc.driver.outdir import load_outdir
from qcc.driver.train_outdir import load_training
from tests.backends.c.test_train import (
    BATCH,
    DIGITS,
    assert_same_state,
    batches,
    numpy_run,
    parse,
    run_host,
    sources,
    write_data,
)
from tests.backends.c.test_train_ops import (
    CLASSES,
    STEPS,
    Net,
    assert_numpy_matches,
    compile_train,
    host_run,
    random_data,
)

FIRST_LAST_FIXED = {"@first": {"scheme": "fixed"},
                    "@last": {"scheme": "fixed", "binary_activations": False}}
# ARMv7E-M multiplies, multiply-accumulates and divides (mul, mla, mls, smull, umlal, smlabb,
# smmul, smuad, umaal, sdiv, udiv, ...) and the FPU's (vmul, vmla, vfma, vdiv, ...)
MUL = re.compile(r"\t(?:[su]?(?:mul|mla|mls|div)|smm|smu|umaal|"
                 r"v(?:n?mul|n?mla|n?mls|fma|fms|fnma|fnms|div))\w*")
XNOR_KERNELS = ("xnor_forward", "xnor_weight_grad", "xnor_input_grad", "xnor_patch",
                "popcount_adds")


def binary_digits(folder: Path) -> Path:
    """digits.onnx without the ReLUs in front of sign layers (a binarized network's activation
    is the sign itself), saved as digits.onnx (the C library's name) in `folder`."""
    model = onnx.load(DIGITS / "digits.onnx")
    last_input = [n for n in model.graph.node if n.op_type == "Gemm"][-1].input[0]
    for relu in [n for n in model.graph.node if n.op_type == "Relu"]:
        if relu.output[0] != last_input:
            for node in model.graph.node:
                node.input[:] = [relu.input[0] if v == relu.output[0] else v
                                 for v in node.input]
            model.graph.node.remove(relu)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "digits.onnx")
    (folder / "overrides.json").write_text(json.dumps(FIRST_LAST_FIXED))
    return folder / "digits.onnx"


def compile_binary(tmp: Path, ternary: str) -> Path:
    model = binary_digits(tmp / "model")
    out = tmp / "digits"
    result = CliRunner().invoke(main, [
        "compile", str(model), "--bits", "8", "--scheme", "binary", "--binary-activations",
        "--overrides", str(tmp / "model" / "overrides.json"), "--calib",
        str(DIGITS / "calib.npz"), "--train-data", str(DIGITS / "train.npz"), "--train",
        "--update", "bc", "--lr", "2^-4", "--train-batch", str(BATCH), "--target", "c",
        "--grad-ternary", ternary, "-o", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out


def check_against_numpy(out: Path, data, logits, flat) -> None:
    integer, program, state, losses = numpy_run(out, data)
    c_losses = [float_loss(z, program.logits_exp, y) for z, (_, _, y) in zip(logits, data)]
    assert c_losses == losses
    assert_same_state(program, integer, state, flat, len(data))
    assert [la.name for la in program.layers if la.xnor] == ["conv2", "fc1"]


@pytest.mark.slow
@pytest.mark.parametrize("ternary", ["0", "auto"])
def test_sign_activation_training_host_c_matches_numpy_after_100_steps(tmp_path: Path,
                                                                       ternary: str) -> None:
    out = compile_binary(tmp_path, ternary)
    data = batches(load_outdir(out).integer, 100)
    write_data(tmp_path / "data.i32", data)
    logits, flat = parse(run_host(out, tmp_path / "data.i32"), 100)
    check_against_numpy(out, data, logits, flat)
    program = load_training(out, load_outdir(out).integer).program
    assert all((layer.samples > 0) == (ternary == "auto") for layer in program.trained)


def test_sign_activation_training_20_steps_on_cortex_m4(tmp_path: Path) -> None:
    """TBP with S per layer (auto) on QEMU's mps2-an386: the same logits every step and the
    same final state as NumPy."""
    missing = [t for t in ("arm-none-eabi-gcc", "qemu-system-arm") if shutil.which(t) is None]
    assert not missing, f"{missing} required (DESIGN.md: the MCU target is tested)"
    out = compile_binary(tmp_path, "auto")
    data = batches(load_outdir(out).integer, 20, seed=3)
    data_path = tmp_path / "data.i32"
    write_data(data_path, data)
    elf = tmp_path / "train.elf"
    mcu = out / "mcu"
    subprocess.run(["arm-none-eabi-gcc", *ARM_ARCH, *ARM_FLAGS, f"-I{out}", "-nostartfiles",
                    f'-DTRAIN_DATA="{data_path}"', "--specs=rdimon.specs", "-T",
                    str(mcu / "mps2_an386.ld"), "-Wl,--gc-sections", str(mcu / "startup.c"),
                    *sources(out), "-o", str(elf)], check=True)
    run = subprocess.run(["qemu-system-arm", *QEMU_MACHINE, "-kernel", str(elf)],
                         capture_output=True, text=True, timeout=300, check=True)
    logits, flat = parse(run.stdout.splitlines(), 20)
    check_against_numpy(out, data, logits, flat)


LIBC = ("memset", "memcpy")  # the zeroing loops gcc turns into calls: no arithmetic


def functions(objdump: str) -> dict[str, list[str]]:
    """{function: its instruction and relocation lines} of `arm-none-eabi-objdump -dr`
    output (gcc's clone suffixes such as `.constprop.0` dropped)."""
    bodies: dict[str, list[str]] = {}
    current = None
    for line in objdump.splitlines():
        head = re.match(r"^[0-9a-f]+ <([\w.]+)>:$", line)
        if head:
            current = bodies.setdefault(head.group(1).split(".")[0], [])
        elif current is not None and line.strip():
            current.append(line)
    return bodies


def test_binary_layers_dot_products_use_no_multiplier(tmp_path: Path) -> None:
    """The emitted train step with TBP (--grad-ternary 3) built for the Cortex-M4 at -Os with
    inlining off, so every kernel is a function of its own: the functions the sign layers'
    forward and backward dot products run in (XNOR-popcount forward, ternary weight gradient,
    binary input gradient, the patch packing and popcount they call, and whatever they call)
    contain no multiply, multiply-accumulate or divide instruction, while the generic kernels
    of the fixed-point first and last layers do (so the check can see one); the sign layers
    call only those kernels."""
    if shutil.which("arm-none-eabi-objdump") is None:
        pytest.fail("arm-none-eabi-gcc / objdump required (DESIGN.md: the MCU target is tested)")
    out = compile_binary(tmp_path, "3")
    obj = tmp_path / "train.o"
    subprocess.run(["arm-none-eabi-gcc", *ARM_ARCH, *ARM_FLAGS, "-fno-inline", f"-I{out}", "-c",
                    str(out / "digits_train.c"), "-o", str(obj)], check=True)
    dump = subprocess.run(["arm-none-eabi-objdump", "-dr", "--no-show-raw-insn", str(obj)],
                          capture_output=True, text=True, check=True).stdout
    bodies = functions(dump)
    todo = [f"digits_{k}" for k in XNOR_KERNELS]
    checked: set[str] = set()
    while todo:  # the kernels and everything they call
        name = todo.pop()
        if name in checked or name in LIBC:
            continue
        assert name in bodies, f"{name} not found in the object"
        checked.add(name)
        muls = [ln for ln in bodies[name] if MUL.search(ln)]
        assert not muls, f"{name} multiplies:\n" + "\n".join(muls)
        todo += re.findall(r"R_ARM_THM_(?:CALL|JUMP24)\t(\w+)", "\n".join(bodies[name]))
    assert any(MUL.search(ln) for ln in bodies["digits_conv_weight_grad"])
    text = (out / "digits_train.c").read_text()
    integer = load_outdir(out).integer
    ids = node_identifiers(split_edges(integer).body)
    for layer in ("conv2", "fc1"):
        n = ids[layer]
        assert not re.search(rf"\bgeom_{n}\b", text)  # no generic kernel gets its geometry
        for kernel in ("xnor_forward", "xnor_weight_grad", "xnor_input_grad"):
            assert re.search(rf"digits_{kernel}\(&xgeom_{n},", text), (layer, kernel)


@pytest.mark.parametrize("extra", [
    pytest.param(("--grad-ternary", "2"), id="all-trained-tbp2"),
    pytest.param(("--trainable", "Conv_t0,Gemm_t5"), id="sign-layers-frozen-exact",
                 marks=pytest.mark.slow),
    pytest.param(("--trainable", "Gemm_t3,Gemm_t5", "--grad-ternary", "3"),
                 id="sign-gemm-first-trained-tbp3", marks=pytest.mark.slow)])
def test_padded_strided_grouped_sign_conv_trains_bit_exact(tmp_path: Path,
                                                           extra: tuple[str, ...]) -> None:
    """The qcc_xnor kernels' window arithmetic: a sign-activation conv with zero padding
    (masked taps), stride 2 and two groups, then a sign-activation Gemm, between a fixed-point
    first and last layer; 20 host C steps against NumPy, every step's logits and the final
    state: every layer trained with TBP (S = 2); only the first and last with exact
    gradients (the frozen sign layers run the inference kernels forward and pass the gradient
    back through their constant packed weights); or the sign Gemm and the last layer with S = 3
    (the trained sign layer sends no gradient on)."""
    n = Net((1, 4, 6, 6))
    a = n.conv("x", 4, 4, pads=[1, 1, 1, 1])
    b = n.conv(a, 4, 8, pads=[1, 1, 1, 1], strides=[2, 2], group=2)
    h = n.op("Relu", [n.gemm(n.op("Flatten", [b], axis=1), 72, 16)])
    model = n.save(n.gemm(h, 16, CLASSES), tmp_path / "net.onnx")
    overrides = tmp_path / "overrides.json"
    overrides.write_text(json.dumps(FIRST_LAST_FIXED))
    data = random_data(tmp_path / "data.npz", n.shape, CLASSES)
    out = tmp_path / "out"
    compile_train(model, out, "--scheme", "binary", "--binary-activations", "--overrides",
                  overrides, "--update", "bc", "--calib", data, *extra)
    program = load_training(out, load_outdir(out).integer).program
    sign = {"Conv_t0": False, "Conv_t1": True, "Gemm_t3": True, "Gemm_t5": False}
    for layer in program.layers:  # the layers the backward visits
        assert layer.xnor == sign[layer.name]
        assert layer.trainable == ("--trainable" not in extra or layer.name in extra[1])
    assert any(layer.xnor for layer in program.layers)
    assert_numpy_matches(out, data, host_run(out, data, STEPS), STEPS)
