"""seeds/004 Table 3-style ablation of quantization-aware training on examples/digits.

For every width b in --bits (default 2, 3, 4; weights and activations both at b bits) and every
weight quantizer (APoT, PoT, uniform), QAT (`qcc qat`'s loop, qcc/driver/qat.py) with the four
combinations of WN (eq. 9) and RCF (eq. 7-8; without it α = max|W̃|), over --seeds seeds: mean
and spread (min..max) of the test accuracy of the fake-quantized model (the compiled integer
graph equals it: tests/driver/test_qat.py). Then post-training quantization (`qcc compile
--scheme S --bits b`, calibrated on calib.npz) against QAT with WN + RCF, compiled to integers,
for each scheme, and binary / ternary weights with 8-bit activations (binary trains 3x the
epochs at 2.5x the learning rate: one sign bit per weight moves slowly).

Notes for reading it against Table 3: with the sign bit counted, 2-bit weights are {-α, 0, α}
for every quantizer and 3-bit APoT (k = 2, one term) is PoT; APoT and PoT differ from 4 bits
on. Nothing here is tuned to agree with the paper.

    python benchmarks/qat.py [--bits 2,3,4] [--seeds 3] [--epochs 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from threadpoolctl import threadpool_limits

from backends.numpy_int.interpreter import integer_predictions
from qcc.core.float_train import accuracy
from qcc.core.onnx_export import export_model
from qcc.core.onnx_import import import_model
from qcc.driver.pipeline import compile_model
from qcc.driver.qat import QatOptions, train_qat

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits"
QUANTIZERS = {"APoT": "apot", "PoT": "pot", "uniform": "affine"}
ABLATION = [(True, True), (True, False), (False, True), (False, False)]  # (WN, RCF)


def qat_accuracy(scheme: str, bits: int, wn: bool, rcf: bool, seed: int, epochs: int,
                 lr: float, data: dict, act_bits: int | None = None):
    graph = import_model(DIGITS / "digits.onnx")
    run = train_qat(graph, data["x"], data["y"], QatOptions(
        scheme, bits, act_bits, epochs, lr, wn=wn, rcf=rcf, seed=seed), progress=False)
    return accuracy(run.qat.graph, data["xt"], data["yt"]), run


def integer_accuracy(model, scheme: str, bits: int, data: dict, tmp: Path) -> float:
    """Compile (a path or a QAT graph) with the real pipeline; accuracy of the integer graph."""
    if not isinstance(model, Path):
        path = tmp / "qat.onnx"
        onnx.save(export_model(model), path)
        model = path
    integer = compile_model(model, bits, scheme, calib=DIGITS / "calib.npz").integer
    pred = integer_predictions(integer, data["xt"])[0]
    return float(np.mean(pred == data["yt"]))


def spread(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    return f"{mean:5.2f} ({100 * min(values):.2f}..{100 * max(values):.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", default="2,3,4")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    widths = [int(b) for b in args.bits.split(",")]
    train, test = np.load(DIGITS / "train.npz"), np.load(DIGITS / "test.npz")
    data = {"x": train["x"], "y": train["y"], "xt": test["x"], "yt": test["y"]}
    tmp = Path(tempfile.mkdtemp(prefix="qcc_qat_bench_"))
    start = time.perf_counter()
    float_acc = accuracy(import_model(DIGITS / "digits.onnx"), data["xt"], data["yt"])
    results: dict = {"float": float_acc, "epochs": args.epochs, "lr": args.lr,
                     "seeds": args.seeds, "ablation": [], "ptq_vs_qat": []}
    print(f"float test accuracy {100 * float_acc:.2f} %  ({args.epochs} epochs, lr {args.lr}, "
          f"{args.seeds} seeds; mean (min..max) test accuracy in %)")
    print("\n| W/A | quantizer | WN | RCF | QAT accuracy |")
    print("|---|---|---|---|---|")
    for bits in widths:
        for label, scheme in QUANTIZERS.items():
            if scheme == "pot" and bits > 6:
                continue
            for wn, rcf in ABLATION:
                accs = [qat_accuracy(scheme, bits, wn, rcf, seed, args.epochs, args.lr,
                                     data)[0] for seed in range(args.seeds)]
                results["ablation"].append({"bits": bits, "quantizer": label, "wn": wn,
                                            "rcf": rcf, "accuracy": accs})
                print(f"| {bits}/{bits} | {label} | {'✓' if wn else '✗'} | "
                      f"{'✓' if rcf else '✗'} | {spread(accs)} |", flush=True)
    print("\n| scheme | W/A | post-training (integer) | QAT WN+RCF (integer) |")
    print("|---|---|---|---|")
    rows = [(s, b, b) for b in widths for s in QUANTIZERS.values()] + \
        [("binary", 1, 8), ("ternary", 2, 8)]
    for scheme, bits, act in rows:
        ptq_bits = act if scheme in ("binary", "ternary") else bits
        ptq = integer_accuracy(DIGITS / "digits.onnx", scheme, ptq_bits, data, tmp)
        accs = []
        for seed in range(args.seeds):
            _, run = qat_accuracy(scheme, bits, True, True, seed, args.epochs * (
                3 if scheme == "binary" else 1), args.lr * (2.5 if scheme == "binary" else 1),
                data, act)
            accs.append(integer_accuracy(run.qat.graph, scheme, bits, data, tmp))
        results["ptq_vs_qat"].append({"scheme": scheme, "bits": bits, "act_bits": act,
                                      "post_training": ptq, "qat": accs})
        print(f"| {scheme} | {bits}/{act} | {100 * ptq:.2f} | {spread(accs)} |", flush=True)
    results["seconds"] = time.perf_counter() - start
    print(f"\n{results['seconds']:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    with threadpool_limits(1):
        sys.exit(main())
