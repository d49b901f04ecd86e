"""How codes are stored and how far a requantization multiplier may go: facts of the number
formats that the quantization pass decides and every backend (int64 kernels, their exact float
fast paths, the C emitter) reads."""

from __future__ import annotations

import functools

import numpy as np

MAX_MULTIPLIER = 1 << 24  # requantization multipliers M satisfy 1 <= M < 2^24


@functools.lru_cache(maxsize=64)  # np.iinfo is slow, and every Quantize asks
def storage_dtype(lo: int, hi: int) -> np.dtype:
    """The narrowest NumPy integer type holding [lo, hi] (the C backend uses the same)."""
    for dtype in (np.int8, np.uint8, np.int16, np.uint16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


# ops whose float kernel only moves, selects or compares elements: exact on codes, so the
# integer graph runs them unchanged and their output keeps the input's format
CODE_PRESERVING = ("Relu", "MaxPool", "GlobalMaxPool", "Flatten", "Reshape", "Transpose",
                   "Identity", "Dropout", "Squeeze", "Unsqueeze", "Concat", "Slice", "Split",
                   "Gather", "Shape", "Constant", "ConstantOfShape")
