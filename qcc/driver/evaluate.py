"""Evaluation of an integer graph against its float reference: accuracy and mismatch p_m."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backends.numpy_int import RunReport
from backends.numpy_int.interpreter import integer_predictions
from qcc.core.errors import QccError
from qcc.core.float_exec import float_predictions
from qcc.core.ir import Graph
from qcc.core.progress import steps


@dataclass
class Evaluation:
    float_accuracy: float
    integer_accuracy: float
    mismatch: float  # p_m = Pr(argmax float != argmax integer), seeds/001 §2.1
    report: RunReport


def integer_decisions(graph: Graph, x: np.ndarray) -> np.ndarray:
    """Class decisions of the integer graph: what annotate_precision's B_min sweep measures."""
    return integer_predictions(graph, x)[0]


EVAL_BLOCK = 256  # samples per step of the progress bar


def evaluate_graphs(reference: Graph, integer: Graph, x: np.ndarray, y: np.ndarray
                    ) -> Evaluation:
    float_parts, int_parts, report = [], [], RunReport()
    with steps(f"evaluating {len(x)} samples (float and integer)", len(x)) as advance:
        for start in range(0, len(x), EVAL_BLOCK):
            part = x[start:start + EVAL_BLOCK]
            float_parts.append(float_predictions(reference, part))
            pred, part_report = integer_predictions(integer, part)
            int_parts.append(pred)
            for tensor, count in part_report.overflows.items():
                report.overflows[tensor] = report.overflows.get(tensor, 0) + count
            advance(len(part))
    float_pred, int_pred = np.concatenate(float_parts), np.concatenate(int_parts)
    return Evaluation(float(np.mean(float_pred == y)), float(np.mean(int_pred == y)),
                      float(np.mean(float_pred != int_pred)), report)


def evaluate_outdir(loaded, x: np.ndarray, y: np.ndarray) -> Evaluation:
    check_labels(y, loaded.reference)
    return evaluate_graphs(loaded.reference, loaded.integer, x, y)


def check_labels(y: np.ndarray, reference: Graph) -> None:
    """Labels must name one of the model's classes (the last axis of its output): a label
    outside them would count as a wrong answer and report a meaningless accuracy."""
    shape = reference.outputs[0].shape
    classes = shape[-1] if shape and shape[-1] > 0 else None
    if classes is None or not len(y):
        return
    outside = (y < 0) | (y >= classes)
    if outside.any():
        raise QccError(f"labels must be 0 .. {classes - 1} (the model has {classes} classes); "
                       f"{int(outside.sum())} label(s) are outside, from {int(y.min())} to "
                       f"{int(y.max())}")
