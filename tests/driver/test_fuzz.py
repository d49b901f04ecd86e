"""Fuzzing the CLI with mutated models (issue 15): every run of `qcc inspect`, `qcc run` and
`qcc compile` on a mutant ends in success or in exactly one `qcc: error:` line with a non-zero
exit, never a traceback or an internal error, within RUN_SECONDS (fuzz_run.py, 20 s) per
command; a failed compile leaves no output folder and no temporary sibling behind.

The mutants (mutants.py) are seeded: a failure names its category and index and reproduces.
The category counts are printed (`pytest -s`).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from qcc import zoo
from tests.driver.fuzz_run import run_cli
from tests.driver.mutants import CATEGORIES, mutants

ROOT = Path(__file__).resolve().parents[2]
SEED = 15
COUNT = 221  # 17 per category: ~40 s of CPU
SMOKE_COUNT = 26  # 2 per category, in the fast suite


def _models() -> list[onnx.ModelProto]:
    return [onnx.load(str(ROOT / "examples" / "digits" / "digits.onnx")),
            zoo.convnet_cifar(width=4), zoo.resnet8()]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[int, ...], Path]:
    """A one-sample .npy and a 16-sample calibration .npz per input shape of the models."""
    folder = tmp_path_factory.mktemp("fuzz_inputs")
    rng = np.random.default_rng(0)
    files = {}
    for model in _models():
        shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
        x = rng.normal(size=(16, *shape[1:])).astype(np.float32)
        np.save(folder / f"x{len(files)}.npy", x[:1])
        np.savez(folder / f"c{len(files)}.npz", x=x)
        files[shape] = (folder / f"x{len(files)}.npy", folder / f"c{len(files)}.npz")
    return files


def test_no_mutant_ends_in_a_traceback_smoke(tmp_path: Path, inputs: dict) -> None:
    _fuzz(tmp_path, inputs, SMOKE_COUNT, SEED + 1)


@pytest.mark.slow
def test_no_mutant_ends_in_a_traceback(tmp_path: Path, inputs: dict) -> None:
    _fuzz(tmp_path, inputs, COUNT, SEED)


def _fuzz(tmp_path: Path, inputs: dict, count: int, seed: int) -> None:
    counts: Counter = Counter()
    failures = []
    sample, calib = next(iter(inputs.values()))
    for index, (category, data) in enumerate(mutants(_models(), count, seed)):
        model = tmp_path / f"m{index}.onnx"
        model.write_bytes(data)
        shape = _input_shape(data)
        sample, calib = inputs.get(shape, (sample, calib))
        out = tmp_path / f"out{index}"
        for command in (["inspect", str(model)], ["run", str(model), "--input", str(sample)],
                        ["compile", str(model), "--calib", str(calib), "-o", str(out)]):
            outcome = run_cli(command, tmp_path)
            counts[(category, command[0], outcome.kind)] += 1
            if outcome.kind not in ("ok", "refused"):
                failures.append(f"mutant {index} ({category}) {command[0]}: {outcome.kind}: "
                                f"{outcome.detail}")
            if command[0] == "compile" and outcome.kind != "ok" and out.exists():
                failures.append(f"mutant {index} ({category}): a failed compile left {out}")
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
        if leftovers:
            failures.append(f"mutant {index} ({category}): temporary files left: {leftovers}")
    _print_counts(counts, count, seed)
    assert not failures, "\n".join(failures[:20])


def _input_shape(data: bytes) -> tuple[int, ...] | None:
    try:
        m = onnx.load_from_string(data)
        return tuple(d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim)
    except Exception:  # a mutant that does not parse: any input file will do
        return None


def _print_counts(counts: Counter, count: int, seed: int) -> None:
    print(f"\nfuzz: {count} mutants x 3 commands, seed {seed}")
    for category in CATEGORIES:
        row = Counter()
        for (c, _, kind), n in counts.items():
            if c == category:
                row[kind] += n
        print(f"  {category:24s} " + ", ".join(f"{k} {n}" for k, n in sorted(row.items())))
