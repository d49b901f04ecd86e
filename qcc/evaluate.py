"""Evaluation of an integer graph against its float reference: accuracy and mismatch p_m."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backends.numpy_int import RunReport, run_integer
from qcc.float_exec import run_batched
from qcc.ir import Graph


@dataclass
class Evaluation:
    float_accuracy: float
    integer_accuracy: float
    mismatch: float  # p_m = Pr(argmax float != argmax integer), seeds/001 §2.1
    report: RunReport


def float_predictions(graph: Graph, x: np.ndarray) -> np.ndarray:
    out = graph.outputs[0].name
    return np.concatenate([r[out] for r in run_batched(graph, x)]).argmax(axis=1)


def integer_predictions(graph: Graph, x: np.ndarray, batch: int = 256
                        ) -> tuple[np.ndarray, RunReport]:
    """Class predictions of the integer graph, with the saturation counts summed over batches."""
    total = RunReport()
    preds = []
    for start in range(0, len(x), batch):
        out, report = run_integer(graph, {graph.inputs[0].name: x[start:start + batch]},
                                  check=False)
        preds.append(out[graph.outputs[0].name].argmax(axis=1))
        for tensor, count in report.overflows.items():
            total.overflows[tensor] = total.overflows.get(tensor, 0) + count
    return np.concatenate(preds), total


def evaluate_graphs(reference: Graph, integer: Graph, x: np.ndarray, y: np.ndarray
                    ) -> Evaluation:
    float_pred = float_predictions(reference, x)
    int_pred, report = integer_predictions(integer, x)
    return Evaluation(float(np.mean(float_pred == y)), float(np.mean(int_pred == y)),
                      float(np.mean(float_pred != int_pred)), report)


def evaluate_outdir(loaded, x: np.ndarray, y: np.ndarray) -> Evaluation:
    return evaluate_graphs(loaded.reference, loaded.integer, x, y)
