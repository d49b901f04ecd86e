"""`--bits auto` on real trained models: the issue-17 table.

    python benchmarks/bits_auto.py [--calib 1024] [--test 1024] [--models resnet8,dscnn,digits]

For MLPerf Tiny's ResNet-8 and DS-CNN (examples/mlperf_tiny, the final Softmax cut off with
onnx.utils.extract_model so the methodology sees the logits) and examples/digits, compiles:
`--bits 8 --scheme affine` (the uniform int8 reference), `--bits auto`, and `--bits auto
--flash-budget` at 1x and 0.75x the uniform int8 weight bytes (fixed point, the default scheme,
and `--scheme affine`); prints for each: B_min, the
measured p_m with its one-sided 95 % Clopper-Pearson bound on the held-out calibration half,
the weight bytes and arena, and the top-1 agreement with float on separate test inputs.

Inputs (no dataset ships): ResNet-8 gets random crops of scikit-learn's bundled
`load_sample_images()` area-averaged to 32x32 (raw pixels 0..255); DS-CNN gets MFCC-like
Gaussian features (coefficient 0 around -60, the others around 0 with falling spread, smoothed
over time, clipped to about -124..26). The float model's own decisions label them. Never fails
on a number; compiles run one after another (they are CPU-heavy).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.utils
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
MLPERF = ROOT / "examples" / "mlperf_tiny"
DIGITS = ROOT / "examples" / "digits"
LOGITS = {"resnet8": ("resnet8_ic.onnx", "model/dense/MatMul;model/dense/BiasAdd"),
          "dscnn": ("dscnn_kws.onnx", "functional_1/dense/BiasAdd")}


def image_crops(count: int, seed: int) -> np.ndarray:
    """(count, 3, 32, 32) float32 raw pixels: random square crops of the sample images, each
    side a multiple of 32 so the area average is an exact block mean."""
    from sklearn.datasets import load_sample_images  # optional: the test extra installs it

    images = [np.asarray(im, dtype=np.float64) for im in load_sample_images().images]
    rng = np.random.default_rng(seed)
    out = np.empty((count, 3, 32, 32), np.float32)
    for n in range(count):
        image = images[rng.integers(len(images))]
        k = int(rng.integers(1, 7))  # crop side 32·k pixels
        side = 32 * k
        top = int(rng.integers(0, image.shape[0] - side + 1))
        left = int(rng.integers(0, image.shape[1] - side + 1))
        crop = image[top:top + side, left:left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out[n] = crop.reshape(32, k, 32, k, 3).mean(axis=(1, 3)).transpose(2, 0, 1)
    return out


def mfcc_like(count: int, seed: int) -> np.ndarray:
    """(count, 1, 49, 10) float32 MFCC-like features, about -124..26."""
    rng = np.random.default_rng(seed)
    mean = np.array([-60.0] + [0.0] * 9)
    spread = np.array([25.0] + [12.0 / (1 + 0.5 * c) for c in range(1, 10)])
    noise = rng.normal(size=(count, 49 + 2, 10))
    smooth = (noise[:, :-2] + noise[:, 1:-1] + noise[:, 2:]) / np.sqrt(3)  # over time
    x = np.clip(mean + spread * smooth, -124.0, 26.0)
    return x[:, None].astype(np.float32)


def logits_model(name: str, folder: Path) -> Path:
    """The MLPerf model cut at its Gemm output (the Softmax removed)."""
    file, logits = LOGITS[name]
    path = folder / f"{name}.onnx"
    model = onnx.load(str(MLPERF / file))
    onnx.utils.extract_model(str(MLPERF / file), str(path),
                             [model.graph.input[0].name], [logits])
    return path


def make_models_and_data(folder: Path, calib: int, test: int) -> dict[str, tuple[Path, ...]]:
    """name -> (model, calib.npz, test.npz) for the three models."""
    from qcc.core.float_exec import float_predictions
    from qcc.core.onnx_import import import_model

    folder.mkdir(parents=True, exist_ok=True)
    made = {"digits": (DIGITS / "digits.onnx", DIGITS / "calib.npz", DIGITS / "test.npz")}
    for name, inputs in (("resnet8", image_crops), ("dscnn", mfcc_like)):
        model = logits_model(name, folder)
        graph = import_model(model)
        paths = []
        for split, count, seed in (("calib", calib, 1), ("test", test, 2)):
            x = inputs(count, seed)
            path = folder / f"{name}_{split}.npz"
            np.savez(path, x=x, y=float_predictions(graph, x).astype(np.int64))
            paths.append(path)
        made[name] = (model, *paths)
    return made


def compile_and_measure(model: Path, calib: Path, test: Path, out: Path, args: list[str]
                        ) -> dict:
    """One `qcc compile` as a user runs it, then its agreement with float on the test inputs."""
    from qcc.driver.evaluate import evaluate_graphs
    from qcc.driver.outdir import load_outdir
    from qcc.driver.pipeline import c_memory

    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "qcc", "compile", str(model), "--calib",
                          str(calib), "-o", str(out), *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        return {"error": run.stderr.strip().splitlines()[-1], "seconds": seconds}
    loaded = load_outdir(out)
    data = np.load(test)
    ev = evaluate_graphs(loaded.reference, loaded.integer, data["x"], data["y"])
    flash, ram = c_memory(loaded.integer)
    precision = loaded.precision
    row = {"agreement": 1 - ev.mismatch, "flash": flash, "ram": ram, "seconds": seconds,
           "test_samples": len(data["x"])}
    if precision.get("mode") == "auto":
        certified = precision["certified"]
        layers = precision["layers"]
        grad_bits = [layer[k] for layer in layers for k in ("B_GW", "B_GA", "B_acc")]
        row.update(B_min=precision["B_min"], p_m=certified["mismatches"] / certified["samples"],
                   bound=certified["p_m_upper"], goal=certified["target"],
                   held_out=certified["samples"], loss_fell=precision["warm_up"]["loss_fell"],
                   grad_bits=(min(grad_bits), max(grad_bits)) if None not in grad_bits
                   else "unavailable", widths=(sorted(set(precision["compiled"]["B_W"])),
                                               sorted(set(precision["compiled"]["B_A"]))))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib", type=int, default=1024, help="calibration inputs (half "
                        "held out)")
    parser.add_argument("--test", type=int, default=1024)
    parser.add_argument("--models", default="resnet8,dscnn,digits")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        made = make_models_and_data(folder, args.calib, args.test)
        for name in args.models.split(","):
            model, calib, test = made[name]
            int8 = compile_and_measure(model, calib, test, folder / f"{name}_int8",
                                       ["--bits", "8", "--scheme", "affine"])
            rows.append((name, "--bits 8 --scheme affine", int8))
            runs = [("--bits auto", [])]
            if "flash" in int8:  # the budget under both schemes: fixed (the default), affine
                runs += [(f"--bits auto{s} --flash-budget {f:g}x int8",
                          ["--flash-budget", str(int(f * int8["flash"])), *s.split()])
                         for s in ("", " --scheme affine") for f in (1.0, 0.75)]
            for label, extra in runs:
                rows.append((name, label, compile_and_measure(
                    model, calib, test, folder / f"{name}_auto", ["--bits", "auto", *extra])))
    table = Table(title="--bits auto on trained models (agreement: top-1 vs float on test "
                        "inputs; p_m and its 95 % bound: held-out calibration half)")
    for col in ("model", "compile", "agreement", "flash", "RAM", "B_min", "p_m (bound) / target",
                "B_W | B_A", "B_GW..B_acc", "warm-up loss fell", "time"):
        table.add_column(col)
    for name, label, r in rows:
        if "error" in r:
            table.add_row(name, label, f"error: {r['error']}", *[""] * 8)
            continue
        auto = "B_min" in r
        table.add_row(
            name, label, f"{100 * r['agreement']:.2f} %", f"{r['flash']:,} B", f"{r['ram']:,} B",
            str(r.get("B_min", "")),
            f"{100 * r['p_m']:.2f} % ({100 * r['bound']:.2f} %) / {100 * r['goal']:.2f} % "
            f"on {r['held_out']}" if auto else "",
            f"{r['widths'][0]} | {r['widths'][1]}" if auto else "",
            str(r.get("grad_bits", "")), str(r.get("loss_fell", "")), f"{r['seconds']:.0f} s")
    Console(width=200).print(table)
    if args.json:
        args.json.write_text(json.dumps([{"model": n, "compile": c, **r} for n, c, r in rows],
                                        indent=1, default=str))


if __name__ == "__main__":
    main()
