"""Property tests: qcc's shape and data-movement kernels, constants and Cast agree with
onnxruntime (onnx's reference evaluator where onnxruntime lacks the dtype) on one-node models
over random shapes, attributes, opset forms (attribute vs input) and dtypes."""

from __future__ import annotations

import itertools

import ml_dtypes
import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qcc.driver.conformance import (
    assert_matches_onnxruntime,
    one_node_model,
    run_onnx_reference,
    run_qcc,
)

FAST = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck))
DTYPES = [np.float32, np.float16, np.int64, np.int8, np.uint8, np.bool_, ml_dtypes.bfloat16]
I64 = np.int64


def tensor(draw: st.DrawFn, dtype: type = np.float32, min_dims: int = 0, max_dims: int = 4,
           max_side: int = 4) -> np.ndarray:
    shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=0,
                                  max_side=max_side))
    return np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape).astype(dtype)


def _params(inputs: dict[str, np.ndarray | None]) -> list[str]:
    """Every given input but the data: they become initializers, as exporters write them."""
    return [k for k, v in inputs.items() if k != "x" and v is not None]


def axis_of(draw: st.DrawFn, ndim: int, extra: int = 0) -> int:
    return draw(st.integers(-ndim - extra, ndim - 1 + extra))


@FAST
@given(st.data(), st.sampled_from(DTYPES), st.sampled_from([9, 13]))
def test_flatten(data: st.DataObject, dtype: type, opset: int) -> None:
    opset = 13 if dtype == ml_dtypes.bfloat16 else opset
    x = data.draw(st.composite(tensor)(dtype, min_dims=1))
    if dtype == ml_dtypes.bfloat16 and x.size == 0:
        x = np.zeros((2, 1, 3), dtype)  # onnx's reference Flatten fails on empty tensors
    axis = data.draw(st.integers(-x.ndim if opset >= 11 else 0, x.ndim))  # negative: opset 11
    assert_matches_onnxruntime("Flatten", {"x": x}, {"axis": axis}, opset=opset)


@FAST
@given(st.data(), st.booleans())
def test_reshape_zero_and_minus_one(data: st.DataObject, allowzero: bool) -> None:
    x = data.draw(st.composite(tensor)(min_dims=1, max_side=3))
    target = list(np.random.default_rng(data.draw(st.integers(0, 99))).permutation(x.shape))
    if data.draw(st.booleans()):  # copy some dims with 0 (or, with allowzero, keep them 0)
        target = [0 if i < x.ndim and target[i] == x.shape[i] and not allowzero else d
                  for i, d in enumerate(target)]
    if x.size and data.draw(st.booleans()):
        target[data.draw(st.integers(0, len(target) - 1))] = -1
    if -1 in target and 0 in target and allowzero:
        target = [d if d != -1 else 1 for d in target]
    expected_size = x.size
    dims = [x.shape[i] if d == 0 and not allowzero else d for i, d in enumerate(target)]
    if -1 not in dims and int(np.prod(dims)) != expected_size:
        return
    assert_matches_onnxruntime("Reshape", {"x": x, "shape": np.array(target, I64)},
                               {"allowzero": int(allowzero)}, opset=14, constants=["shape"])


@FAST
@given(st.data(), st.sampled_from(DTYPES), st.booleans())
def test_transpose(data: st.DataObject, dtype: type, default: bool) -> None:
    x = data.draw(st.composite(tensor)(dtype))
    perm = list(data.draw(st.permutations(range(x.ndim))))
    attrs = {} if default or not perm else {"perm": perm}
    assert_matches_onnxruntime("Transpose", {"x": x}, attrs,
                               opset=13)


@FAST
@given(st.data(), st.integers(1, 4), st.sampled_from(DTYPES))
def test_concat(data: st.DataObject, n: int, dtype: type) -> None:
    base = data.draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=3))
    axis = axis_of(data.draw, len(base))
    inputs = {}
    for i in range(n):
        shape = list(base)
        shape[axis] = data.draw(st.integers(0, 3))
        inputs[f"x{i}"] = np.full(shape, i, np.float32).astype(dtype)
    assert_matches_onnxruntime("Concat", inputs, {"axis": axis}, opset=13)


@FAST
@given(st.data(), st.sampled_from(["attr11", "input13", "equal13", "num_outputs18"]))
def test_split(data: st.DataObject, form: str) -> None:
    x = data.draw(st.composite(tensor)(min_dims=1, max_side=6))
    axis = axis_of(data.draw, x.ndim)
    dim = x.shape[axis]
    parts = data.draw(st.integers(1, 4))
    sizes = list(np.diff([0, *sorted(data.draw(st.lists(st.integers(0, dim), min_size=parts - 1,
                                                        max_size=parts - 1))), dim]))
    attrs: dict = {"axis": axis}
    inputs: dict = {"x": x}
    opset = {"attr11": 11, "input13": 13, "equal13": 13, "num_outputs18": 18}[form]
    if form == "attr11":
        attrs["split"] = [int(s) for s in sizes]
    elif form == "input13":
        inputs["split"] = np.array(sizes, I64)
    elif form == "equal13":
        parts = data.draw(st.sampled_from([d for d in range(1, 5) if dim % d == 0] or [1]))
        if dim % parts:
            return
    else:
        # may be uneven: the last part shrinks (but may not go negative)
        parts = data.draw(st.integers(1, max(dim, 1)).filter(
            lambda n: (n - 1) * -(-dim // n) <= dim))
        attrs["num_outputs"] = parts
    n_out = len(sizes) if form in ("attr11", "input13") else parts
    assert_matches_onnxruntime("Split", inputs, attrs, opset=opset, n_outputs=n_out,
                               constants=["split"] if "split" in inputs else [])


@FAST
@given(st.data(), st.sampled_from([9, 13]), st.booleans())
def test_slice(data: st.DataObject, opset: int, with_axes: bool) -> None:
    """Random starts/ends (negative, out of range, INT64 extremes) and steps of either sign."""
    x = data.draw(st.composite(tensor)(min_dims=1, max_side=6))
    axes = data.draw(st.lists(st.integers(-x.ndim, x.ndim - 1), min_size=1, max_size=x.ndim,
                              unique_by=lambda a: a % x.ndim))
    bound = st.one_of(st.integers(-8, 8), st.sampled_from([np.iinfo(I64).min, np.iinfo(I64).max]))
    starts = [data.draw(bound) for _ in axes]
    ends = [data.draw(bound) for _ in axes]
    steps = [data.draw(st.sampled_from([1, 2, 3, -1, -2])) for _ in axes]
    if opset < 10:
        steps = [1] * len(axes)
    # onnxruntime reads end = INT64_MAX with a negative step as "through index 0"; the spec
    # clamps it to dim - 1 (test_slice_int64_max_end_with_negative_step checks that case)
    ends = [e if s > 0 or e != np.iinfo(I64).max else 8 for e, s in zip(ends, steps)]
    if not with_axes:
        axes = list(range(len(axes)))
    if opset < 10:
        attrs = {"starts": starts, "ends": ends} | ({"axes": axes} if with_axes else {})
        assert_matches_onnxruntime("Slice", {"x": x}, attrs, opset=opset)
        return
    inputs = {"x": x, "starts": np.array(starts, I64), "ends": np.array(ends, I64),
              "axes": np.array(axes, I64) if with_axes else None, "steps": np.array(steps, I64)}
    assert_matches_onnxruntime("Slice", inputs, opset=opset, constants=_params(inputs))


def test_slice_int64_max_end_with_negative_step() -> None:
    """End INT64_MAX clamps to dim - 1, so a slice starting at 0 with step -1 is empty
    (onnx's reference evaluator agrees; onnxruntime 1.32 returns one element)."""
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    inputs = {"x": x, "starts": np.array([0, 2], I64),
              "ends": np.array([np.iinfo(I64).max] * 2, I64), "axes": None,
              "steps": np.array([-1, -1], I64)}
    consts = ["starts", "ends", "steps"]
    expected = run_onnx_reference(one_node_model("Slice", inputs, {}, 13, constants=consts), inputs)
    model = one_node_model("Slice", inputs, {}, 13, constants=consts, outputs=expected)
    assert expected[0].shape == (0, 0)
    np.testing.assert_array_equal(run_qcc(model, inputs)[0], expected[0])


@FAST
@given(st.data(), st.sampled_from([11, 13]), st.booleans())
def test_squeeze_unsqueeze(data: st.DataObject, opset: int, all_unit: bool) -> None:
    x = data.draw(st.composite(tensor)(max_dims=3, max_side=3))
    out_rank = x.ndim + data.draw(st.integers(1, 3))
    axes = data.draw(st.lists(st.integers(-out_rank, out_rank - 1), min_size=out_rank - x.ndim,
                              max_size=out_rank - x.ndim, unique_by=lambda a: a % out_rank))
    expanded = np.expand_dims(x, tuple(axes))
    squeeze_axes = None if all_unit else axes
    for op, arr, ax in (("Unsqueeze", x, axes), ("Squeeze", expanded, squeeze_axes)):
        if opset < 13:
            assert_matches_onnxruntime(op, {"x": arr}, {} if ax is None else {"axes": ax},
                                       opset=opset)
        else:
            ax_in = None if ax is None else np.array(ax, I64)
            assert_matches_onnxruntime(op, {"x": arr, "axes": ax_in}, opset=opset,
                                       constants=[] if ax is None else ["axes"])


@FAST
@given(st.data(), st.sampled_from(["constant", "reflect", "edge", "wrap"]),
       st.sampled_from([np.float32, np.int32, np.uint8]), st.booleans())
def test_pad_opset_19_modes_and_axes(data: st.DataObject, mode: str, dtype: type,
                                     with_axes: bool) -> None:
    x = data.draw(st.composite(tensor)(dtype, min_dims=1, max_dims=3, max_side=4))
    if mode != "constant" and min(x.shape) == 0:
        return
    axes = list(range(x.ndim))
    if with_axes:
        axes = data.draw(st.lists(st.integers(-x.ndim, x.ndim - 1), min_size=1,
                                  unique_by=lambda a: a % x.ndim))
    # reflect needs pads < dim; wrap and edge pads up to dim; constant pads may be negative
    limit = {a % x.ndim: x.shape[a] - (mode == "reflect") for a in axes}
    low = -1 if mode == "constant" else 0
    pads = ([data.draw(st.integers(min(low, 0), limit[a % x.ndim])) for a in axes] +
            [data.draw(st.integers(min(low, 0), limit[a % x.ndim])) for a in axes])
    if any(x.shape[a] + pads[i] + pads[i + len(axes)] < 0 for i, a in enumerate(axes)):
        return
    inputs = {"x": x, "pads": np.array(pads, I64),
              "value": np.array(7, dtype) if mode == "constant" else None,
              "axes": np.array(axes, I64) if with_axes else None}
    assert_matches_onnxruntime("Pad", inputs, {"mode": mode}, opset=19, constants=_params(inputs))


@FAST
@given(st.data(), st.sampled_from(["constant", "reflect", "edge"]))
def test_pad_attributes_before_opset_11(data: st.DataObject, mode: str) -> None:
    x = data.draw(st.composite(tensor)(min_dims=1, max_dims=3, max_side=4))
    if min(x.shape) == 0:
        return
    pads = [data.draw(st.integers(0, d - 1)) for d in x.shape * 2]
    attrs = {"mode": mode, "pads": pads} | ({"value": 2.5} if mode == "constant" else {})
    assert_matches_onnxruntime("Pad", {"x": x}, attrs, opset=10)


@FAST
@given(st.data(), st.sampled_from([np.int64, np.int32]), st.sampled_from(DTYPES))
def test_gather_negative_indices(data: st.DataObject, index_dtype: type, dtype: type) -> None:
    x = data.draw(st.composite(tensor)(dtype, min_dims=1, max_side=4))
    axis = axis_of(data.draw, x.ndim)
    dim = x.shape[axis]
    if dim == 0:
        return
    idx_shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=2, max_side=3))
    idx = data.draw(hnp.arrays(index_dtype, idx_shape, elements=st.integers(-dim, dim - 1)))
    assert_matches_onnxruntime("Gather", {"x": x, "i": idx}, {"axis": axis}, opset=13)


@FAST
@given(st.data(), st.integers(-6, 6), st.integers(-6, 6), st.booleans(), st.booleans())
def test_shape_start_end(data: st.DataObject, start: int, end: int, has_start: bool,
                         has_end: bool) -> None:
    x = data.draw(st.composite(tensor)())
    attrs = ({"start": start} if has_start else {}) | ({"end": end} if has_end else {})
    assert_matches_onnxruntime("Shape", {"x": x}, attrs, opset=15)


@FAST
@given(st.data(), st.sampled_from([np.float32, np.int64, np.int32, np.float16, np.bool_]),
       st.booleans())
def test_constant_of_shape(data: st.DataObject, dtype: type, default: bool) -> None:
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3))
    attrs = {} if default else {"value": onnx.numpy_helper.from_array(np.array([3], dtype))}
    assert_matches_onnxruntime("ConstantOfShape", {"shape": np.array(shape, I64)}, attrs,
                               opset=20, constants=["shape"])


CAST_TYPES = [np.float32, np.float64, np.float16, np.int8, np.uint8, np.int32, np.int64,
              np.bool_, ml_dtypes.bfloat16]


@FAST
@given(st.data(), st.sampled_from(CAST_TYPES), st.sampled_from(CAST_TYPES))
def test_cast_numeric(data: st.DataObject, src: type, dst: type) -> None:
    """Values that every pair of types represents (small integers and halves)."""
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, max_side=4))
    x = data.draw(hnp.arrays(np.float32, shape, elements=st.integers(0, 100).map(float)))
    x = np.asarray(x / (1 if np.issubdtype(np.dtype(src), np.integer) else 2)).astype(src)
    to = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dst))
    assert_matches_onnxruntime("Cast", {"x": x}, {"to": to}, opset=13)


F8 = [onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E4M3FNUZ,
      onnx.TensorProto.FLOAT8E5M2, onnx.TensorProto.FLOAT8E5M2FNUZ]


@FAST
@given(st.data(), st.sampled_from(F8), st.booleans(), st.sampled_from([np.float32, np.float16]))
def test_cast_float8_saturate(data: st.DataObject, to: int, saturate: bool, src: type) -> None:
    """Finite values beyond the float8 range clamp to ±max with saturate=1 (opset 19)."""
    shape = data.draw(hnp.array_shapes(max_dims=2, max_side=5))
    x = data.draw(hnp.arrays(np.float32, shape, elements=st.floats(-6e4, 6e4, width=16)))
    assert_matches_onnxruntime("Cast", {"x": x.astype(src)}, {"to": to, "saturate": int(saturate)},
                               opset=19)


def test_cast_strings_both_ways() -> None:
    text = np.array(["1.5", "-2", "1e-3", "INF", "-inf", "+INF", "NaN", "1E8"], dtype=object)
    assert_matches_onnxruntime("Cast", {"x": text}, {"to": onnx.TensorProto.FLOAT}, opset=13)
    ints = np.array(["12", "-7", "0"], dtype=object)
    assert_matches_onnxruntime("Cast", {"x": ints}, {"to": onnx.TensorProto.INT64}, opset=13)
    for numbers in (np.array([1, -7, 300], np.int32), np.array([True, False]),
                    np.array([0.1, -2, 1e-7, 1e20, np.inf, -np.inf, np.nan, 123456789], np.float32),
                    np.array([0.1, 2.5, 1 / 3], np.float64)):
        assert_matches_onnxruntime("Cast", {"x": numbers}, {"to": onnx.TensorProto.STRING},
                                   opset=13)


@pytest.mark.parametrize(("attr", "value", "expected"), [
    ("value_float", 2.5, np.array(2.5, np.float32)),
    ("value_floats", [1.0, 2.0], np.array([1.0, 2.0], np.float32)),
    ("value_int", 7, np.array(7, np.int64)),
    ("value_ints", [1, -2, 3], np.array([1, -2, 3], np.int64)),
    ("value", onnx.numpy_helper.from_array(np.eye(2, dtype=np.float16)),
     np.eye(2, dtype=np.float16)),
])
def test_constant_attribute_forms(attr: str, value: object, expected: np.ndarray) -> None:
    model = one_node_model("Constant", {}, {attr: value}, 13)
    assert_matches_onnxruntime("Constant", {}, {attr: value}, opset=13)
    (got,) = run_qcc(model, {})
    assert got.dtype == expected.dtype and np.array_equal(got, expected)


def test_constant_strings_and_sparse() -> None:
    """value_string(s) give object arrays; sparse_value (linear or coordinate indices) is
    densified. onnxruntime runs the string forms; the sparse form is checked element-wise."""
    assert_matches_onnxruntime("Constant", {}, {"value_strings": ["a", "bc"]}, opset=13)
    values = onnx.numpy_helper.from_array(np.array([5.0, 6.0], np.float32), "v")
    for indices in (np.array([1, 5], I64), np.array([[0, 1], [1, 2]], I64)):
        sparse = onnx.helper.make_sparse_tensor(values, onnx.numpy_helper.from_array(indices, "i"),
                                                [2, 3])
        model = one_node_model("Constant", {}, {"sparse_value": sparse}, 13)
        (got,) = run_qcc(model, {})
        expected = np.zeros((2, 3), np.float32)
        expected[0, 1], expected[1, 2] = 5.0, 6.0
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.int8, np.bool_, object])
def test_identity(dtype: type) -> None:
    x = np.array(list(itertools.islice(itertools.cycle([1, 0, 2]), 6))).reshape(2, 3)
    assert_matches_onnxruntime("Identity", {"x": x.astype(str).astype(object) if dtype is object
                                            else x.astype(dtype)}, opset=16)
