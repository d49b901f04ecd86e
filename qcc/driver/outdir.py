"""What a compiled OUTDIR holds, by file name, and reading it back.

- model.qcc.onnx: the integer graph with every tensor's QuantSpec (qcc.core.onnx_export);
- reference.onnx: the float graph it was made from (BatchNorm folded);
- precision.json: the precision of every layer (and with --bits auto the whole methodology);
- qat.json: a QAT model's α per layer over training (from its metadata key QAT_METADATA_KEY);
- sample_expected.i32: the interpreter's output codes on sample_input.f32 (with --target c).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

import backends.numpy_int  # noqa: F401  (registers the integer graph's ops, which import checks)
from qcc.core.errors import QccError
from qcc.core.ir import Graph
from qcc.core.onnx_export import read_annotations
from qcc.core.onnx_import import import_model

INTEGER_MODEL = "model.qcc.onnx"
REFERENCE_MODEL = "reference.onnx"
PRECISION_FILE = "precision.json"
QAT_HISTORY_FILE = "qat.json"  # a QAT model's training record (metadata key QAT_METADATA_KEY)
QAT_METADATA_KEY = "qcc.qat"  # written by `qcc qat` (qcc/driver/qat.py)
EXPECTED_CODES = "sample_expected.i32"  # interpreter output codes of sample_input.f32


@dataclass
class Loaded:
    integer: Graph
    reference: Graph
    precision: dict[str, Any]


def load_outdir(outdir: Path) -> Loaded:
    """The integer graph, float reference and precision.json of a compiled OUTDIR."""
    outdir = Path(outdir)
    missing = [f for f in (INTEGER_MODEL, REFERENCE_MODEL, PRECISION_FILE)
               if not (outdir / f).is_file()]
    if missing:
        raise QccError(f"{outdir} is not a qcc output folder (missing {', '.join(missing)})")
    integer = import_model(outdir / INTEGER_MODEL)
    read_annotations(onnx.load(str(outdir / INTEGER_MODEL), load_external_data=False), integer)
    try:
        precision = json.loads((outdir / PRECISION_FILE).read_text())
    except json.JSONDecodeError as e:
        raise QccError(f"{outdir / PRECISION_FILE}: not valid JSON ({e})") from None
    return Loaded(integer, import_model(outdir / REFERENCE_MODEL), precision)
