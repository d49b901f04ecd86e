"""Checking an emitted library against the NumPy integer interpreter (the tests' and the
benchmark's common ground): test inputs including the extremes of the input format, and the
interpreter's output codes and floats for them.
"""

from __future__ import annotations

import numpy as np

from backends.c.emit import split_edges
from backends.c.ops.qlinear import edge_format
from backends.c.tensors import analyse, input_shape
from backends.numpy_int import run_integer
from qcc.core.errors import QccError
from qcc.core.ir import Graph

EXTREMES = 8  # leading samples of `sample_inputs` that sit at the edges of the input format


def sample_inputs(graph: Graph, count: int, seed: int = 0) -> np.ndarray:
    """`count` float32 samples: EXTREMES at the edges of the input codes (huge values that
    saturate to the lowest and highest codes, exact ties between two codes, the zero point,
    alternating extremes), the rest N(0, σ) with σ a third of the input range."""
    edges = split_edges(graph)
    quantize = edge_format(edges.quantize)  # qcc.Quantize or a pre-quantized model's ONNX one
    scale, zp = quantize.scale, quantize.zero_point
    codes_info = analyse(graph)[edges.input_codes.name]
    lo, hi = codes_info.lo, codes_info.hi
    shape = input_shape(graph)[1:]
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    codes = rng.integers(lo, hi, size=size, endpoint=True)
    edges = [np.full(size, -1e30), np.full(size, 1e30),
             (lo - zp - 0.5) * scale * np.ones(size), (hi - zp + 0.5) * scale * np.ones(size),
             (codes - zp + 0.5) * scale,  # ties: round half away from zero decides
             np.zeros(size), np.where(np.arange(size) % 2, 1e30, -1e30),
             (codes - zp) * scale]
    sigma = (hi - lo) * scale / 6
    normal = rng.normal(0.0, sigma, size=(max(count - len(edges), 0), size))
    samples = np.concatenate([np.stack(edges), normal])[:count]
    return samples.astype(np.float32).reshape((count, *shape))


def interpreter_outputs(graph: Graph, xs: np.ndarray, chunk: int = 25
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(output codes, output floats), one row per sample, from backends.numpy_int.

    Samples run in chunks (every op acts per sample along the batch axis); a graph whose
    fixed batch of 1 does not stretch to a chunk (a Reshape to a constant shape) runs one
    sample at a time."""
    try:
        return _run(graph, xs, chunk)
    except (QccError, ValueError):
        return _run(graph, xs, 1)


def _run(graph: Graph, xs: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    inp, codes_name = graph.inputs[0], split_edges(graph).output_codes.name
    out = graph.outputs[0].name
    codes, floats = [], []
    for start in range(0, len(xs), chunk):
        part = xs[start:start + chunk]
        env, _ = run_integer(graph, {inp.name: part}, check=chunk == 1, keep_all=True)
        c, f = np.asarray(env[codes_name]), np.asarray(env[out])
        if c.shape[0] != len(part) or f.shape[0] != len(part):
            raise ValueError("the batch axis did not survive the graph")
        codes.append(c.reshape(len(part), -1))
        floats.append(f.reshape(len(part), -1))
    return np.concatenate(codes), np.concatenate(floats)
