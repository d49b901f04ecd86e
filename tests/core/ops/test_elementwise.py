"""Property tests: qcc's elementwise, activation, softmax-family and ReduceMean kernels agree
with onnxruntime (onnx's reference evaluator where onnxruntime lacks the dtype, e.g. bfloat16)
on one-node models over random shapes, broadcasts, dtypes, attributes and opsets."""

from __future__ import annotations

import ml_dtypes
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qcc.driver.conformance import assert_matches_onnxruntime

FAST = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck))
FLOATS = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16]
INTS = [np.int8, np.int32, np.int64, np.uint8]


def values(dtype: type, shape: tuple[int, ...], bound: float = 10.0,
           nonzero: bool = False) -> st.SearchStrategy[np.ndarray]:
    """Arrays of `dtype` with entries in [-bound, bound] (integers clipped to the dtype)."""
    dt = np.dtype(dtype)
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        ints = st.integers(max(int(-bound), info.min), min(int(bound), info.max))
        elements = ints.filter(bool) if nonzero else ints
        return hnp.arrays(dt, shape, elements=elements)
    floats = st.floats(-bound, bound, width=32, allow_subnormal=False)
    if nonzero:
        floats = floats.filter(lambda v: abs(v) > 1e-2)
    return hnp.arrays(np.float32, shape, elements=floats).map(lambda a: a.astype(dt))


def tolerance(dtype: type) -> dict[str, float]:
    """Half-precision results are compared to a few units in the last place."""
    if np.dtype(dtype).itemsize <= 2 and not np.issubdtype(np.dtype(dtype), np.integer):
        return {"rtol": 2e-2, "atol": 2e-2}
    return {"rtol": 1e-5, "atol": 1e-6}


def two_shapes(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[int, ...]]:
    shapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=4, max_side=4))
    return shapes.input_shapes


@FAST
@given(st.data(), st.sampled_from(["Add", "Sub", "Mul", "Div"]),
       st.sampled_from(FLOATS + INTS), st.sampled_from([7, 13, 14]))
def test_binary_broadcast(data: st.DataObject, op: str, dtype: type, opset: int) -> None:
    if dtype in (ml_dtypes.bfloat16, np.int8, np.uint8) and opset < 14:
        opset = 14  # these dtypes arrived in opset 13/14
    sa, sb = data.draw(st.composite(two_shapes)())
    a = data.draw(values(dtype, sa, 100))
    b = data.draw(values(dtype, sb, 100, nonzero=op == "Div"))
    assert_matches_onnxruntime(op, {"a": a, "b": b}, opset=opset, **tolerance(dtype))


def test_integer_division_truncates_toward_zero() -> None:
    a = np.array([7, -7, 7, -7, 0, np.iinfo(np.int64).max], np.int64)
    b = np.array([2, 2, -2, -2, 3, -3], np.int64)
    assert_matches_onnxruntime("Div", {"a": a, "b": b}, opset=14)


@FAST
@given(st.data(), st.integers(1, 4), st.sampled_from([np.float32, np.float64]))
def test_sum_variadic_broadcast(data: st.DataObject, n: int, dtype: type) -> None:
    shapes = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=n, max_dims=3, max_side=3))
    inputs = {f"x{i}": data.draw(values(dtype, s)) for i, s in enumerate(shapes.input_shapes)}
    assert_matches_onnxruntime("Sum", inputs, opset=13)


@FAST
@given(st.data(), st.sampled_from([np.float32, np.float16, np.float64, np.int8, np.int32]))
def test_relu(data: st.DataObject, dtype: type) -> None:
    x = data.draw(values(dtype, data.draw(hnp.array_shapes(min_dims=0, max_dims=4))))
    assert_matches_onnxruntime("Relu", {"x": x}, opset=14, **tolerance(dtype))


@FAST
@given(st.data(), st.floats(-2, 2, width=32), st.sampled_from([np.float32, np.float16]))
def test_leaky_relu(data: st.DataObject, alpha: float, dtype: type) -> None:
    x = data.draw(values(dtype, data.draw(hnp.array_shapes(max_dims=4))))
    assert_matches_onnxruntime("LeakyRelu", {"x": x}, {"alpha": alpha}, opset=16,
                               **tolerance(dtype))


@FAST
@given(st.data(), st.sampled_from([np.float32, np.float16, np.int32, np.int64]))
def test_prelu_slope_broadcasts(data: st.DataObject, dtype: type) -> None:
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=4, max_side=4))
    # the slope is unidirectionally broadcastable: a suffix of x's shape with some dims 1
    suffix = shape[data.draw(st.integers(0, len(shape))):]
    slope_shape = tuple(d if data.draw(st.booleans()) else 1 for d in suffix)
    x = data.draw(values(dtype, shape))
    slope = data.draw(values(dtype, slope_shape, 3))
    assert_matches_onnxruntime("PRelu", {"x": x, "slope": slope}, opset=16, **tolerance(dtype))


@FAST
@given(st.data(), st.floats(-5, 5, width=32), st.floats(-5, 5, width=32),
       st.sampled_from(["both", "min", "max", "none"]))
def test_clip_attributes_before_opset_11(data: st.DataObject, lo: float, hi: float,
                                         which: str) -> None:
    lo, hi = min(lo, hi), max(lo, hi)  # onnxruntime's Clip-6 refuses min > max
    attrs = {"both": {"min": lo, "max": hi}, "min": {"min": lo}, "max": {"max": hi},
             "none": {}}[which]
    x = data.draw(values(np.float32, data.draw(hnp.array_shapes(max_dims=3))))
    assert_matches_onnxruntime("Clip", {"x": x}, attrs, opset=6)


@FAST
@given(st.data(), st.sampled_from([np.float32, np.float64, np.float16, np.int8, np.int32,
                                   np.int64, np.uint8]),
       st.booleans(), st.booleans(), st.booleans())
def test_clip_inputs_from_opset_11(data: st.DataObject, dtype: type, has_lo: bool,
                                   has_hi: bool, lo_const: bool) -> None:
    x = data.draw(values(dtype, data.draw(hnp.array_shapes(max_dims=3))))
    lo = data.draw(values(dtype, ())) if has_lo else None  # min > max is allowed: all -> max
    hi = data.draw(values(dtype, ())) if has_hi else None
    constants = ["lo"] if lo_const and has_lo else []
    assert_matches_onnxruntime("Clip", {"x": x, "lo": lo, "hi": hi}, opset=13,
                               constants=constants, **tolerance(dtype))


@FAST
@given(st.data(), st.sampled_from(["Sigmoid", "Tanh", "HardSwish"]),
       st.sampled_from([np.float32, np.float16, np.float64, ml_dtypes.bfloat16]))
def test_activations(data: st.DataObject, op: str, dtype: type) -> None:
    x = data.draw(values(dtype, data.draw(hnp.array_shapes(max_dims=4)), bound=1e4))
    if op == "HardSwish" and dtype == ml_dtypes.bfloat16:
        dtype, x = np.float32, x.astype(np.float32)  # bfloat16 is not a HardSwish type
    assert_matches_onnxruntime(op, {"x": x}, opset=14, **tolerance(dtype))


@FAST
@given(st.data(), st.floats(-1, 1, width=32), st.floats(-1, 1, width=32),
       st.sampled_from([np.float32, np.float16]))
def test_hard_sigmoid(data: st.DataObject, alpha: float, beta: float, dtype: type) -> None:
    x = data.draw(values(dtype, data.draw(hnp.array_shapes(max_dims=4))))
    assert_matches_onnxruntime("HardSigmoid", {"x": x}, {"alpha": alpha, "beta": beta},
                               opset=6, **tolerance(dtype))


# -- softmax family and ReduceMean (qcc/ops/reduce.py) -----------------------------------------

@FAST
@given(st.data(), st.sampled_from(["Softmax", "LogSoftmax"]), st.sampled_from([11, 13]),
       st.sampled_from([np.float32, np.float16, np.float64]))
def test_softmax_family(data: st.DataObject, op: str, opset: int, dtype: type) -> None:
    """Opset 11 coerces the input to 2-D at `axis`; opset 13 normalises along `axis` only.
    Inputs reach ±1e3, where an unshifted exp() would overflow."""
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=4, max_side=4))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = data.draw(values(dtype, shape, bound=1e3))
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype != np.float16 else tolerance(dtype)
    if op == "LogSoftmax" and dtype == np.float16:
        tol = {"rtol": 2e-2, "atol": 0.5}  # log-probabilities near -2000 in half precision
    assert_matches_onnxruntime(op, {"x": x}, {"axis": axis}, opset=opset, **tol)


@FAST
@given(st.data(), st.sampled_from([np.float32, np.float16, np.int32, np.int64]),
       st.booleans(), st.booleans())
def test_reduce_mean_axes_attribute(data: st.DataObject, dtype: type, keepdims: bool,
                                    all_axes: bool) -> None:
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=4, max_side=4))
    axes = data.draw(st.lists(st.integers(-len(shape), len(shape) - 1), min_size=1,
                              unique_by=lambda a: a % len(shape)))
    attrs = {"keepdims": int(keepdims)} | ({} if all_axes else {"axes": axes})
    x = data.draw(values(dtype, shape, 100))
    assert_matches_onnxruntime("ReduceMean", {"x": x}, attrs, opset=13, **tolerance(dtype))


@FAST
@given(st.data(), st.sampled_from([np.float32, np.float64, np.int32]), st.booleans(),
       st.booleans(), st.booleans())
def test_reduce_mean_axes_input_opset_18(data: st.DataObject, dtype: type, keepdims: bool,
                                         empty: bool, noop: bool) -> None:
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=4, max_side=4))
    axes = [] if empty else data.draw(st.lists(st.integers(-len(shape), len(shape) - 1),
                                               min_size=1, unique_by=lambda a: a % len(shape)))
    x = data.draw(values(dtype, shape, 100))
    attrs = {"keepdims": int(keepdims), "noop_with_empty_axes": int(noop)}
    assert_matches_onnxruntime("ReduceMean", {"x": x, "axes": np.array(axes, np.int64)}, attrs,
                               opset=18, constants=["axes"], **tolerance(dtype))
