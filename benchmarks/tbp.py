"""Ternarized back-propagation (seeds/000) on examples/digits: a binary network trained on the
device model (the NumPy fixed-point train step, bit for bit the C one) with TBP at S = 1, 2, 4
and `--grad-ternary auto`, against the same network trained with BinaryConnect and
full-precision (exact integer) gradients.

The network: digits.onnx with binary weights and sign activations in every layer but the first
and last (conv2, fc1: XNOR-popcount forward), the first and last layer in fixed point at the
widths `--bits auto` (seeds/001) gives them on the float model. A sign activation replaces the
ReLU in front of a sign layer (a BNN's activation is the sign: sign(ReLU(x)) would be +1
everywhere), so the float model the compile starts from is digits.onnx without those ReLUs.
Every run: `qcc compile ... --train --update bc --grad-ternary S`, `qcc train` for EPOCHS
passes over train.npz with the learning rate stepped down (half the epochs at 2^-4, a fifth at
2^-5, the rest at 2^-6: at a constant 2^-4 some runs of every variant diverge late), `qcc eval`
on test.npz; the mean over SEEDS minibatch orders.

    python benchmarks/tbp.py [--epochs 10] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

DIGITS = Path(__file__).resolve().parents[1] / "examples" / "digits"
CONFIGS = [("BC, full-precision gradients", "0"), ("TBP S = 1", "1"), ("TBP S = 2", "2"),
           ("TBP S = 4", "4"), ("TBP auto (R >= 0.7)", "auto")]
BATCH = 32


def schedule(epochs: int) -> list[tuple[int, int]]:
    """(lr exponent, epochs) phases: half at 2^-4, a fifth at 2^-5, the rest at 2^-6."""
    first, second = epochs // 2, epochs // 5
    return [(e, n) for e, n in ((-4, first), (-5, second), (-6, epochs - first - second)) if n]


def qcc(*args: str) -> str:
    run = subprocess.run([sys.executable, "-m", "qcc", *args], capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"qcc {' '.join(args)} failed:\n{run.stderr}")
    return run.stdout


def binary_float_model(path: Path) -> Path:
    """digits.onnx without the ReLUs whose outputs only sign layers read (all but the one in
    front of the last layer)."""
    model = onnx.load(DIGITS / "digits.onnx")
    weighted = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    last_input = weighted[-1].input[0]
    for relu in [n for n in model.graph.node if n.op_type == "Relu"]:
        if relu.output[0] == last_input:
            continue
        for node in model.graph.node:
            node.input[:] = [relu.input[0] if v == relu.output[0] else v for v in node.input]
        model.graph.node.remove(relu)
    onnx.save(model, path)
    return path


def methodology_widths(model: Path, work: Path) -> dict[str, dict]:
    """{"@first" | "@last": override} at the widths `--bits auto` chooses for those layers."""
    out = work / "auto"
    qcc("compile", str(model), "--bits", "auto", "--calib", str(DIGITS / "calib.npz"),
        "--train-data", str(DIGITS / "train.npz"), "-o", str(out))
    layers = json.loads((out / "precision.json").read_text())["layers"]
    return {key: {"scheme": "fixed", "weight_bits": row["B_W"], "act_bits": row["B_A"],
                  "binary_activations": False}
            for key, row in (("@first", layers[0]), ("@last", layers[-1]))}


def accuracy(outdir: Path) -> float:
    qcc("eval", str(outdir), "--data", str(DIGITS / "test.npz"))
    return float(json.loads((outdir / "eval.json").read_text())["integer_accuracy"])


def run(model: Path, overrides: Path, ternary: str, epochs: int, seed: int, work: Path
        ) -> tuple[float, dict]:
    out = work / f"run_{ternary}_{seed}"
    qcc("compile", str(model), "--bits", "8", "--scheme", "binary", "--binary-activations",
        "--overrides", str(overrides), "--calib", str(DIGITS / "calib.npz"), "--train-data",
        str(DIGITS / "train.npz"), "--train", "--update", "bc", "--lr",
        f"2^{min(e for e, _ in schedule(epochs))}", "--train-batch", str(BATCH),
        "--grad-ternary", ternary, "-o", str(out))
    samples = len(np.load(DIGITS / "train.npz")["y"])
    for phase, (lr_exp, phase_epochs) in enumerate(schedule(epochs)):
        qcc("train", str(out), "--data", str(DIGITS / "train.npz"), "--steps",
            str(phase_epochs * -(-samples // BATCH)), "--lr", f"2^{lr_exp}", "--seed",
            str(100 * seed + phase))
    program = json.loads((out / "training.json").read_text())
    return accuracy(out), program.get("grad_ternary_auto", {}).get("layers", {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = binary_float_model(work / "digits.onnx")
        widths = methodology_widths(model, work)
        overrides = work / "overrides.json"
        overrides.write_text(json.dumps(widths))
        print(f"binary digits network: first / last layer {widths}; conv2, fc1 binary weights "
              f"and sign activations; update bc, batch {BATCH}, (lr exponent, epochs) "
              f"{schedule(args.epochs)}, "
              f"mean of {args.seeds} minibatch orders\n")
        rows, chosen = [], {}
        for label, ternary in CONFIGS:
            results = [run(model, overrides, ternary, args.epochs, seed, work)
                       for seed in range(args.seeds)]
            accs = [a for a, _ in results]
            chosen = results[0][1] or chosen
            rows.append((label, float(np.mean(accs)), accs))
        base = rows[0][1]
        print(f"{'training':<30} {'test accuracy':>14}  {'vs BC':>7}   per seed")
        for label, mean, accs in rows:
            print(f"{label:<30} {100 * mean:>13.2f}%  {100 * (mean - base):>+6.2f}   "
                  + " ".join(f"{100 * a:.2f}" for a in accs))
        print("\n--grad-ternary auto: S and R per layer (R = correlation of the averaged "
              "ternarized weight gradient with the exact one)")
        for layer, c in chosen.items():
            print(f"  {layer:<6} S = {c['S']:>2}  R = {c['R']:.3f}  (R by S: "
                  f"{', '.join(f'{r:.3f}' for r in c['R_by_S'])})")


if __name__ == "__main__":
    main()
