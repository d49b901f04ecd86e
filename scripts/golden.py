"""Golden manifest: sha256 of everything qcc emits, to prove a restructuring changes no output.

Compiles examples/digits and the three zoo models (qcc's own builds of the bench models) under
every scheme (8 bits; APoT/PoT at 4; binary and ternary weights) with `--target c`, plus digits
with `--bits auto --train`, then hashes every emitted file and the integer interpreter's outputs
on fixed inputs. Run it before and after a change and diff the two manifests:

    python scripts/golden.py -o before.json   # on the old tree
    python scripts/golden.py -o after.json    # on the new tree
    python scripts/golden.py --compare before.json after.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "examples" / "digits"
SCHEMES = [("fixed", "8"), ("affine", "8"), ("apot", "4"), ("pot", "4"), ("binary", "8"),
           ("ternary", "8")]


def qcc(*args: str) -> None:
    # The installed `qcc` command: the manifest must not depend on where the CLI module lives.
    result = subprocess.run(["qcc", *args], capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"qcc {' '.join(args)} failed:\n{result.stderr}")


def hash_tree(folder: Path) -> dict[str, str]:
    digests = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digests[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def interpreter_outputs(outdir: Path, x: np.ndarray, workdir: Path) -> str:
    """sha256 of the integer interpreter's outputs for x, run as a user runs it."""
    np.save(workdir / "x.npy", x)
    qcc("run", str(outdir), "--input", str(workdir / "x.npy"), "--output",
        str(workdir / "y.npz"))
    with np.load(workdir / "y.npz") as y:
        h = hashlib.sha256()
        for key in sorted(y.files):
            h.update(key.encode())
            h.update(np.ascontiguousarray(y[key]).tobytes())
    return h.hexdigest()


def fixed_inputs(model: Path, n: int = 8) -> np.ndarray:
    """N(0, 1) inputs of the model's shape; a dynamic batch dimension takes n samples."""
    shape = [d.dim_value or n for d in
             onnx.load(model).graph.input[0].type.tensor_type.shape.dim]
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def job(name: str, model: Path, args: list[str], x: np.ndarray, work: Path) -> tuple[str, dict]:
    out = work / name
    qcc("compile", str(model), *args, "-o", str(out))
    tmp = work / f"{name}.run"
    tmp.mkdir()
    entry = {"args": args, "files": hash_tree(out), "outputs": interpreter_outputs(out, x, tmp)}
    return name, entry


def build_manifest(jobs: int) -> dict:
    from qcc import zoo

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = {"digits": DIGITS / "digits.onnx"}
        for name, build in zoo.MODELS.items():
            models[name] = work / f"{name}.onnx"
            onnx.save(build(), models[name])
        calib = str(DIGITS / "calib.npz")
        tasks = []
        for mname, path in models.items():
            x = np.load(DIGITS / "test.npz")["x"][:8] if mname == "digits" else fixed_inputs(path)
            for scheme, bits in SCHEMES:
                args = ["--bits", bits, "--scheme", scheme, "--target", "c"]
                if mname == "digits":
                    args += ["--calib", calib]
                tasks.append((f"{mname}-{scheme}{bits}", path, args, x))
        tasks.append(("digits-auto-train", DIGITS / "digits.onnx",
                      ["--bits", "auto", "--calib", calib, "--train-data",
                       str(DIGITS / "train.npz"), "--train", "--target", "c"],
                      np.load(DIGITS / "test.npz")["x"][:8]))
        with ThreadPoolExecutor(jobs) as pool:
            results = list(pool.map(lambda t: job(*t, work), tasks))
    return dict(sorted(results))


def compare(before: dict, after: dict) -> int:
    differences = 0
    for name in sorted(set(before) | set(after)):
        if name not in before or name not in after:
            print(f"{name}: only in {'after' if name in after else 'before'}")
            differences += 1
            continue
        b, a = before[name], after[name]
        if b["outputs"] != a["outputs"]:
            print(f"{name}: interpreter outputs differ")
            differences += 1
        for f in sorted(set(b["files"]) | set(a["files"])):
            if b["files"].get(f) != a["files"].get(f):
                print(f"{name}: {f} differs")
                differences += 1
    print("identical" if not differences else f"{differences} differences")
    return 1 if differences else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        sys.exit(compare(*(json.loads(p.read_text()) for p in args.compare)))
    manifest = build_manifest(args.jobs)
    text = json.dumps(manifest, indent=1, sort_keys=True)
    if args.output:
        args.output.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
