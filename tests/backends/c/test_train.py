"""The emitted C train step (backends/c/train_emit.py, `qcc compile --train --target c`) against
the NumPy specification (backends/numpy_int/train_step.py): the digits model at C_o
(`--bits auto`) and with 1-bit (±α) weights, the same batches, bit for bit on every step's
logits (hence the loss), the final weight and bias codes, accumulators, master biases and PRNG
position (<name>_export_weights), for every update rule and with ternarized gradients
(--grad-ternary); the error codes; the training RAM in the summary; and the same run on the
emulated Cortex-M4 (QEMU mps2-an386)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from backends.c.build import ARM_ARCH, ARM_FLAGS, HOST_WARNINGS, QEMU_MACHINE
from backends.c.train_emit import unpack_export
from backends.numpy_int.interpreter import run_integer
from backends.numpy_int.train_step import train_step
from qcc.core.numerics.softmax_ce import float_loss
from qcc.driver.cli import main
from qcc.driver.outdir import load_outdir
from qcc.driver.train_outdir import load_training

DIGITS = Path(__file__).resolve().parents[3] / "examples" / "digits"
BATCH = 16
STEPS = 100


def scrambled_digits(path: Path) -> Path:
    """digits.onnx with fc2's weights replaced by random ones of the same spread (the trained
    model's loss is ~1e-3 and has nowhere to fall)."""
    model = onnx.load(DIGITS / "digits.onnx")
    rng = np.random.default_rng(7)
    for i, t in enumerate(model.graph.initializer):
        if t.name == "fc2.W":
            w = numpy_helper.to_array(t)
            new = (rng.standard_normal(w.shape) * w.std()).astype(w.dtype)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(new, t.name))
    onnx.save(model, path)
    return path


AUTO = ("--bits", "auto")
ONE_BIT = ("--bits", "8", "--scheme", "binary")  # ±α weights, 8-bit activations (seeds/003)


def compile_digits(out: Path, rule: str, model: Path = DIGITS / "digits.onnx",
                   precision: tuple[str, ...] = AUTO, ternary: int = 0) -> str:
    result = CliRunner().invoke(main, [
        "compile", str(model), *precision, "--calib",
        str(DIGITS / "calib.npz"), "--train-data", str(DIGITS / "train.npz"), "--train",
        "--update", rule, "--lr", "2^-4", "--train-batch", str(BATCH), "--target", "c",
        "--grad-ternary", str(ternary), "-o", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def batches(integer, steps: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(float x, input codes, labels) per step: random training samples."""
    train = np.load(DIGITS / "train.npz")
    rng = np.random.default_rng(seed)
    codes_name = integer.nodes[0].outputs[0].name  # the input Quantize's output
    out = []
    for _ in range(steps):
        idx = rng.choice(len(train["x"]), BATCH, replace=False)
        x = train["x"][idx].astype(np.float32)
        env, _ = run_integer(integer, {integer.inputs[0].name: x}, check=False, keep_all=True)
        out.append((x, env[codes_name], train["y"][idx].astype(np.int64)))
    return out


def write_data(path: Path, data) -> None:
    parts = [np.array([len(data), BATCH], np.int32)]
    for _, codes, y in data:
        parts += [codes.astype(np.int32).ravel(), y.astype(np.int32)]
    np.concatenate(parts).tofile(path)


def sources(out: Path) -> list[str]:
    return [str(out / "train_harness.c"), str(out / "digits_train.c"),
            str(out / "digits_runtime.c")]


def run_host(out: Path, data_path: Path) -> list[str]:
    exe = out / "train_host"
    subprocess.run(["gcc", *HOST_WARNINGS, "-O2", f"-I{out}", f'-DTRAIN_DATA="{data_path}"',
                    *sources(out), "-o", str(exe)], check=True)
    return subprocess.run([str(exe)], capture_output=True, text=True, check=True,
                          timeout=120).stdout.splitlines()


def parse(lines: list[str], steps: int) -> tuple[list[np.ndarray], np.ndarray]:
    logits = [np.array(ln.split()[1:], np.int64).reshape(BATCH, -1)
              for ln in lines if ln.startswith("logits:")]
    state = [np.array(ln.split()[1:], np.int64) for ln in lines if ln.startswith("state:")]
    assert len(logits) == steps and len(state) == 1, lines[-3:]
    return logits, state[0]


def numpy_run(out: Path, data) -> tuple[object, object, object, list[float]]:
    integer = load_outdir(out).integer
    training = load_training(out, integer)
    losses = [train_step(training.program, integer, training.state, x, y).loss
              for x, _, y in data]
    return integer, training.program, training.state, losses


def assert_same_state(program, integer, state, flat: np.ndarray, steps: int) -> None:
    c = unpack_export(program, flat)
    for layer in program.trained:
        assert np.array_equal(c[f"weight.{layer.name}"],
                              integer.values[layer.weight].const.ravel()), layer.name
        if layer.bias is not None:
            assert np.array_equal(c[f"bias.{layer.name}"],
                                  integer.values[layer.bias].const.ravel()), layer.name
            assert np.array_equal(c[f"bias_master.{layer.name}"],
                                  state.bias_master[layer.name].ravel()), layer.name
        if layer.update in ("fx", "bc"):
            assert np.array_equal(c[f"acc.{layer.name}"], state.acc[layer.name].ravel())
    seed, counter, step = (int(v) & 0xFFFFFFFF for v in c["rng"])
    assert (seed, counter, step) == (state.rng.seed, state.rng.counter, steps)


@pytest.fixture(scope="module")
def gcc() -> str:
    path = shutil.which("gcc")
    assert path, "gcc is required (DESIGN.md: the C backend is part of the test suite)"
    return path


# the quick subset (-m "not slow") keeps fx and bc-1bit; the full suite runs every rule
@pytest.mark.parametrize(("rule", "precision", "ternary"), [
    pytest.param(*case, marks=() if name in ("fx", "bc-1bit") else pytest.mark.slow, id=name)
    for name, case in (("fx", ("fx", AUTO, 0)), ("sr", ("sr", AUTO, 0)), ("r", ("r", AUTO, 0)),
                       ("bc", ("bc", AUTO, 0)), ("sr-tern2", ("sr", AUTO, 2)),
                       ("fx-tern3", ("fx", AUTO, 3)), ("bc-1bit", ("bc", ONE_BIT, 0)),
                       ("sr-1bit", ("sr", ONE_BIT, 0)), ("r-1bit", ("r", ONE_BIT, 0)),
                       ("bc-1bit-tern2", ("bc", ONE_BIT, 2)))])
def test_host_c_matches_numpy_bit_for_bit(tmp_path: Path, gcc: str, rule: str,
                                          precision: tuple[str, ...], ternary: int) -> None:
    out = tmp_path / "digits"
    compile_digits(out, rule, precision=precision, ternary=ternary)
    data = batches(load_outdir(out).integer, STEPS)
    write_data(tmp_path / "data.i32", data)
    logits, flat = parse(run_host(out, tmp_path / "data.i32"), STEPS)
    integer, program, state, losses = numpy_run(out, data)
    c_losses = [float_loss(z, program.logits_exp, y) for z, (_, _, y) in zip(logits, data)]
    assert c_losses == losses  # the logits are equal, so the float loss is the same float
    assert_same_state(program, integer, state, flat, STEPS)
    assert state.rng.counter > 0  # stochastic roundings happened (and matched)
    assert program.options.grad_ternary == ternary
    assert all(layer.binary == (precision == ONE_BIT) for layer in program.layers)


def with_softmax(path: Path) -> Path:
    """digits.onnx ending in Softmax, as Keras/TFLite classifiers do."""
    model = onnx.load(DIGITS / "digits.onnx")
    logits = model.graph.output[0].name
    model.graph.node.append(onnx.helper.make_node("Softmax", [logits], ["probs"], axis=-1))
    model.graph.output[0].name = "probs"
    onnx.save(model, path)
    return path


def test_a_final_integer_softmax_stays_and_the_loss_takes_its_logits(tmp_path: Path,
                                                                    gcc: str) -> None:
    """Inference keeps its integer Softmax (the C library returns probabilities); the train
    step takes the loss on the codes that Softmax reads, bit-exact in NumPy and host C."""
    out = tmp_path / "digits"
    compile_digits(out, "fx", model=with_softmax(tmp_path / "digits.onnx"),
                   precision=("--bits", "8"))
    integer = load_outdir(out).integer
    softmax = next(n for n in integer.nodes if n.op_type == "QSoftmax")
    data = batches(integer, 20)
    write_data(tmp_path / "data.i32", data)
    logits, flat = parse(run_host(out, tmp_path / "data.i32"), 20)
    integer, program, state, losses = numpy_run(out, data)
    assert program.logits == softmax.inputs[0].name
    c_losses = [float_loss(z, program.logits_exp, y) for z, (_, _, y) in zip(logits, data)]
    assert c_losses == losses
    assert_same_state(program, integer, state, flat, 20)


ERRORS = r"""
#include <stdio.h>
#include <string.h>
#include "digits_train.h"

static digits_train_input_t x[DIGITS_TRAIN_MAX_BATCH * DIGITS_TRAIN_INPUT_SIZE];
static int32_t y[DIGITS_TRAIN_MAX_BATCH + 1], before[DIGITS_TRAIN_EXPORT_SIZE],
    after[DIGITS_TRAIN_EXPORT_SIZE];

int main(void)
{
    int rc[6];
    digits_export_weights(before, DIGITS_TRAIN_EXPORT_SIZE);
    rc[0] = digits_train_step(NULL, y, 1);
    rc[1] = digits_train_step(x, NULL, 1);
    rc[2] = digits_train_step(x, y, 0);
    rc[3] = digits_train_step(x, y, DIGITS_TRAIN_MAX_BATCH + 1);
    y[1] = DIGITS_TRAIN_CLASSES;
    rc[4] = digits_train_step(x, y, 2);
    y[1] = -1;
    rc[5] = digits_train_step(x, y, 2);
    digits_export_weights(after, DIGITS_TRAIN_EXPORT_SIZE);
    printf("%d %d %d %d %d %d %d %d\n", rc[0], rc[1], rc[2], rc[3], rc[4], rc[5],
           memcmp(before, after, sizeof before) == 0, digits_export_weights(after, 1));
    return 0;
}
"""


@pytest.mark.parametrize(("rule", "precision", "ternary"), [("fx", AUTO, 0),
                                                           ("bc", ONE_BIT, 2)],
                         ids=["fx", "bc-1bit-tern2"])
def test_refusals_return_error_codes_and_change_nothing(tmp_path: Path, gcc: str, rule: str,
                                                        precision: tuple[str, ...],
                                                        ternary: int) -> None:
    """NULL arrays, batch 0 or above the compiled one, labels outside 0 .. 9 and a short
    export array return their error codes; the exported weights stay the same."""
    out = tmp_path / "digits"
    compile_digits(out, rule, precision=precision, ternary=ternary)
    (out / "errors.c").write_text(ERRORS)
    exe = tmp_path / "errors"
    subprocess.run([gcc, *HOST_WARNINGS, f"-I{out}", str(out / "errors.c"),
                    str(out / "digits_train.c"), str(out / "digits_runtime.c"), "-o", str(exe)],
                   check=True)
    run = subprocess.run([str(exe)], capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["1", "1", "2", "2", "3", "3", "1", "4"]


QEMU_STEPS = 50


@pytest.mark.slow
def test_qemu_matches_host_and_loss_falls(tmp_path: Path, gcc: str) -> None:
    """50 sr steps on the emulated Cortex-M4 (-Os, hard float ABI) from a scrambled last
    layer: the same logits and state as the host build, and the mean loss of the last 10
    steps below half the first 10 steps'. The compile reports the train step's RAM: the
    Cortex-M4 object's data + bss, equal to the static arrays train_emit declares."""
    missing = [t for t in ("arm-none-eabi-gcc", "qemu-system-arm") if shutil.which(t) is None]
    assert not missing, f"{missing} required (DESIGN.md: the MCU target is tested)"
    out = tmp_path / "digits"
    printed = compile_digits(out, "sr", scrambled_digits(tmp_path / "digits.onnx"))
    ram = json.loads((out / "summary.json").read_text())["training"]
    assert ram["batch"] == BATCH and ram["gradient_ctype"] == "int32_t"
    assert ram["ram_bytes"] == ram["static_ram_bytes"] > 0
    assert f"RAM {ram['ram_bytes']:,} B" in printed
    integer = load_outdir(out).integer
    data = batches(integer, QEMU_STEPS, seed=1)
    data_path = tmp_path / "data.i32"
    write_data(data_path, data)
    host = parse(run_host(out, data_path), QEMU_STEPS)
    elf = tmp_path / "train.elf"
    mcu = out / "mcu"
    subprocess.run(["arm-none-eabi-gcc", *ARM_ARCH, *ARM_FLAGS, f"-I{out}", "-nostartfiles",
                    f'-DTRAIN_DATA="{data_path}"', "--specs=rdimon.specs", "-T",
                    str(mcu / "mps2_an386.ld"), "-Wl,--gc-sections", str(mcu / "startup.c"),
                    *sources(out), "-o", str(elf)], check=True)
    run = subprocess.run(["qemu-system-arm", *QEMU_MACHINE, "-kernel", str(elf)],
                         capture_output=True, text=True, timeout=300, check=True)
    logits, flat = parse(run.stdout.splitlines(), QEMU_STEPS)
    assert all(np.array_equal(a, b) for a, b in zip(logits, host[0]))
    assert np.array_equal(flat, host[1])
    training = load_training(out, integer)
    losses = [float_loss(z, training.program.logits_exp, y) for z, (_, _, y) in zip(logits, data)]
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10]), losses
