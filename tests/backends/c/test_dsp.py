"""The packed kernels for the DSP extension (backends/c/ops/dsp.py, runtime qcc_dsp.h).

- The weight packer against the way the kernel reads it (SXTB16 pairs times int16 activation
  pairs), and the requantization forms against rounding.round_shift: hypothesis, in Python.
- The same net with 4- and 2-bit weights: its convolutions on the packed kernels, the codes
  unpacked row by row, bit for bit on the host and on QEMU.
- A small net that reaches every packed kernel (2x2 blocks of a padded 3x3 conv with an odd
  channel count and odd output width, 1x1 convs, stride-1 and stride-2 depthwise convs, Gemms
  of one row in blocks of four rows and in pairs with a padded last pair), affine and fixed:
  the packed kernels on the host (<NAME>_DSP=1 on the portable twins of the intrinsics) under
  ASan/UBSan, and on QEMU's Cortex-M4 (the ACLE intrinsics and the assembly loops), bit for
  bit against the NumPy integer interpreter.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from backends.c.build import SANITIZE, build_host, build_mcu, missing_tools, run_host, run_qemu
from backends.c.library import emit_library
from backends.c.ops.common import Requant
from backends.c.ops.dsp import DspRequant, pack_byte_rows
from backends.c.packing import DSP_GROUP, dsp_taps, pack_dsp_rows
from qcc.core.numerics.rounding import round_shift
from qcc.driver.c_check import interpreter_outputs, sample_inputs
from qcc.driver.pipeline import compile_model


def sxtb16(word: int, rotate: int) -> tuple[int, int]:
    """SXTB16 (after ROR #rotate): bytes rotate/8 and rotate/8 + 2, sign-extended."""
    b = word.to_bytes(4, "little", signed=False)
    s = [v - 256 if v > 127 else v for v in b]
    return (s[0], s[2]) if rotate == 0 else (s[1], s[3])


def kernel_products(data: np.ndarray, rows: int, k: int, block: int,
                    x: np.ndarray) -> np.ndarray:
    """Σ_k w[r][k] · x[k] per row as the packed kernel reads `data`: per block, per word of
    four taps, the word of each row; its SXTB16 pair times (x0, x1), the rotated pair times
    (x2, x3)."""
    kp = dsp_taps(k)
    xp = np.zeros(kp, np.int64)
    xp[:k] = x
    raw = data.astype(np.uint8).tobytes()
    out = np.zeros(-(-rows // block) * block, np.int64)
    offset = 0
    for blk in range(len(out) // block):
        for g in range(kp // DSP_GROUP):
            for r in range(block):
                word = int.from_bytes(raw[offset:offset + 4], "little")
                offset += 4
                lo, hi = sxtb16(word, 0), sxtb16(word, 8)
                x0, x1, x2, x3 = xp[4 * g:4 * g + 4]
                out[blk * block + r] += lo[0] * x0 + lo[1] * x1 + hi[0] * x2 + hi[1] * x3
    return out[:rows]


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 9), k=st.integers(1, 40), block=st.sampled_from([2, 4]),
       seed=st.integers(0, 2**31 - 1))
def test_packed_rows_read_back_as_the_matrix_product(rows: int, k: int, block: int,
                                                     seed: int) -> None:
    rng = np.random.default_rng(seed)
    codes = rng.integers(-128, 128, (rows, k))
    x = rng.integers(-128, 256, k)
    data = pack_dsp_rows(codes, block)
    assert data.dtype == np.int8
    assert data.size == -(-rows // block) * block * dsp_taps(k)
    np.testing.assert_array_equal(kernel_products(data, rows, k, block, x), codes @ x)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 9), words=st.integers(1, 10), block=st.sampled_from([2, 4]),
       signed=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_byte_rows_read_back_as_the_matrix_product(rows: int, words: int, block: int,
                                                   signed: bool, seed: int) -> None:
    """pack_byte_rows as emit_byte_rows reads it: per word of four taps, the weight word's
    SXTB16 pair (t0, t2) times the activation word's UXTB16 / SXTB16 pair (x0, x2), and the
    rotated pairs (t1, t3) times (x1, x3)."""
    rng = np.random.default_rng(seed)
    k = 2 * DSP_GROUP * words
    codes = rng.integers(-128, 128, (rows, k))
    x = rng.integers(-128, 128, k) if signed else rng.integers(0, 256, k)
    raw = pack_byte_rows(codes, block).astype(np.uint8).tobytes()
    got = np.zeros(-(-rows // block) * block, np.int64)
    for blk in range(len(got) // block):
        for g in range(k // DSP_GROUP):
            xw = x[DSP_GROUP * g:DSP_GROUP * g + DSP_GROUP]
            for r in range(block):
                at = ((blk * (k // DSP_GROUP) + g) * block + r) * DSP_GROUP
                word = int.from_bytes(raw[at:at + DSP_GROUP], "little")
                (t0, t2), (t1, t3) = sxtb16(word, 0), sxtb16(word, 8)
                got[blk * block + r] += t0 * xw[0] + t2 * xw[2] + t1 * xw[1] + t3 * xw[3]
    np.testing.assert_array_equal(got[:rows], codes @ x)


def c_requantize(acc: int, req: DspRequant, channel: int) -> int:
    """qcc_dsp_requantize / _low / _word as the C computes them."""
    m, h = req.mults[channel], req.shifts[channel]
    tie = int(acc < 0 and req.lo < req.zero_point)
    if req.form == "word":
        x = acc * m
        assert abs(x) + (1 << h >> 1) < 1 << 31
        v = (x + (1 << h >> 1) - int(tie and h > 0)) >> h
    elif req.form == "high":
        v = ((acc * m + (1 << (31 + h)) - tie) >> 32) >> h
    else:
        p = acc * m + (1 << (h - 1)) - tie
        v = ((p & (2**64 - 1)) >> h) & 0xFFFFFFFF
        v = v - (1 << 32) if v >= 1 << 31 else v
    v += req.zero_point
    return min(max(v, req.lo), req.hi)


@settings(max_examples=300, deadline=None)
@given(m=st.integers(1, 2**24 - 1), s=st.integers(0, 45), zp=st.integers(-128, 127),
       relu=st.booleans(), bits=st.integers(2, 30), data=st.data())
def test_requantization_forms_equal_round_shift(m: int, s: int, zp: int, relu: bool,
                                                bits: int, data: st.DataObject) -> None:
    bound = (1 << bits) - 1
    lo = zp if relu else -128
    req = Requant([m], [s], zp, lo, 127, "rq")
    dreq = DspRequant.of(req, "rq", 1, bound)
    if dreq is None:  # no form is exact: the emitter keeps the portable path
        assert m << max(0, 32 - s) >= 1 << 31
        assert not (s <= 31 and bound * m + (1 << s >> 1) < 1 << 31)
        assert not (1 <= s <= 31 and bound * m < 1 << (31 + s))
        return
    for acc in [bound, -bound, 0, 1, -1] + data.draw(st.lists(st.integers(-bound, bound),
                                                                max_size=20)):
        want = int(round_shift(acc * m, s)) + zp
        assert c_requantize(acc, dreq, 0) == min(max(want, lo), 127), acc


def dsp_net(seed: int = 0) -> onnx.ModelProto:
    """conv 3x3 (7 channels, padded, odd width) -> depthwise s1 -> 1x1 -> depthwise s2 ->
    1x1 (8 channels) -> Gemm of one row (k = 8·3·3 = 72, 24 outputs: a widened row times
    blocks of four rows) -> Gemm of few rows (k = 24, 5 outputs: the row read as bytes, pairs
    of rows, the last one padded) -> Gemm (k = 5, 7 outputs: a widened row times pairs of
    rows, the last one padded)."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def init(name: str, shape: tuple[int, ...], scale: float = 0.3) -> str:
        inits.append(numpy_helper.from_array((rng.normal(size=shape) * scale)
                                             .astype(np.float32), name))
        return name

    def node(op: str, inputs: list[str], **attrs: object) -> str:
        out = f"t{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [out], name=f"{out}_node", **attrs))
        return out

    def conv(x: str, cout: int, cin: int, k: int, **attrs: object) -> str:
        name = f"w{len(nodes)}"
        w = init(name, (cout, cin, k, k))
        return node("Relu", [node("Conv", [x, w, init(f"b{len(nodes)}", (cout,), 0.1)],
                                  **attrs)])

    a = conv("input", 7, 3, 3, pads=[1, 1, 1, 1])  # (7, 9, 11)
    d = conv(a, 7, 1, 3, pads=[1, 1, 1, 1], group=7)
    p = conv(d, 10, 7, 1)
    d2 = conv(p, 10, 1, 3, pads=[1, 1, 1, 1], strides=[2, 2], group=10)  # (10, 5, 6)
    p2 = conv(d2, 8, 10, 1, strides=[2, 2])  # (8, 3, 3)
    flat = node("Flatten", [p2], axis=1)
    f1 = node("Relu", [node("Gemm", [flat, init("wf", (24, 72)), init("bf", (24,), 0.1)],
                            transB=1)])
    f2 = node("Relu", [node("Gemm", [f1, init("wg", (5, 24)), init("bg", (5,), 0.1)],
                            transB=1)])
    node("Gemm", [f2, init("wo", (7, 5)), init("bo", (7,), 0.1)], transB=1)
    graph = helper.make_graph(
        nodes, "dsp_net",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 9, 11])],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, [1, 7])],
        initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module", params=["affine", "fixed"])
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp(f"dsp_{request.param}")
    onnx.save(dsp_net(), tmp / "net.onnx")
    np.savez(tmp / "calib.npz", x=np.random.default_rng(4).normal(size=(16, 3, 9, 11))
             .astype(np.float32))
    graph = compile_model(tmp / "net.onnx", 8, request.param, calib=tmp / "calib.npz").integer
    summary = emit_library(graph, tmp, "dsp_net", measure=False)
    xs = sample_inputs(graph, 100, seed=5)
    codes, floats = interpreter_outputs(graph, xs)
    return graph, tmp, summary, xs, codes, floats


@pytest.fixture(scope="module", params=[(4, "affine", 4), (2, "affine", 2), (4, "fixed", 4),
                                        (8, "binary", 1)],
                ids=lambda p: f"{p[2]}bit-{p[1]}")
def built_sub_byte(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """dsp_net with 4- or 2-bit weights (and activations), or ±1 weights (8-bit activations):
    its convolutions and Gemms keep the codes packed in flash and unpack one weight row at a
    time into the int8 layout of the packed kernel, the depthwise convolutions one channel at
    a time (rounded to nearest: the kernels, not GPTQ, are under test)."""
    compile_bits, scheme, bits = request.param
    tmp = tmp_path_factory.mktemp(f"dsp_{bits}bit_{scheme}")
    onnx.save(dsp_net(), tmp / "net.onnx")
    np.savez(tmp / "calib.npz", x=np.random.default_rng(4).normal(size=(16, 3, 9, 11))
             .astype(np.float32))
    graph = compile_model(tmp / "net.onnx", compile_bits, scheme, calib=tmp / "calib.npz",
                          weight_rounding="nearest").integer
    summary = emit_library(graph, tmp, "dsp_net", measure=False)
    xs = sample_inputs(graph, 50, seed=5)
    codes, _ = interpreter_outputs(graph, xs)
    return bits, tmp, summary, xs, codes


def test_sub_byte_weights_take_the_packed_kernels_bit_exactly(built_sub_byte) -> None:
    bits, out, summary, xs, codes = built_sub_byte
    source = (out / "dsp_net.c").read_text()
    notes = [n["note"] for n in summary["nodes"] if n["op"] in ("QConv", "QGemm")]
    if bits == 1:  # ±1 weights: rows of more than 8 taps (a row is 32 sign bits)
        assert source.count("1-bit weights for the DSP kernel") == 4  # k = 27, 10, 72, 24
        notes = [n for n in notes if "1x5 by" not in n and "7x9x11 -> 10x9x11" not in n]
    else:
        assert source.count(f"{bits}-bit weights for the DSP kernel") == 6
    # every other layer too; the depthwise ones unpack a channel at a time
    assert all("DSP_NET_DSP" in note for note in notes), notes
    exe = build_host(out, "dsp_net", out / "host_dsp", opt="-O1",
                     extra=("-DDSP_NET_DSP=1", *SANITIZE))
    got, _ = run_host(exe, xs, codes.dtype, codes.shape[1], out)
    np.testing.assert_array_equal(got, codes)
    missing = missing_tools("arm-none-eabi-gcc", "qemu-system-arm")
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")
    np.testing.assert_array_equal(run_qemu(build_mcu(out, "dsp_net"), xs[:10], out).codes,
                                  codes[:10])


def test_every_weighted_layer_has_a_packed_kernel(built) -> None:
    summary = built[2]
    notes = [n["note"] for n in summary["nodes"] if n["op"] in ("QConv", "QGemm")]
    assert len(notes) == 8
    assert all("DSP_NET_DSP" in note for note in notes), notes


def test_packed_kernels_on_the_host_are_bit_exact(built) -> None:
    _, out, _, xs, codes, floats = built
    exe = build_host(out, "dsp_net", out / "host_dsp", opt="-O1",
                     extra=("-DDSP_NET_DSP=1", *SANITIZE))
    got, got_floats = run_host(exe, xs, codes.dtype, codes.shape[1], out)
    np.testing.assert_array_equal(got, codes)
    np.testing.assert_array_equal(got_floats.view(np.uint32), floats.view(np.uint32))


def test_packed_kernels_on_the_cortex_m4_are_bit_exact(built) -> None:
    missing = missing_tools("arm-none-eabi-gcc", "qemu-system-arm")
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")
    _, out, _, xs, codes, _ = built
    got = run_qemu(build_mcu(out, "dsp_net"), xs[:20], out)
    np.testing.assert_array_equal(got.codes, codes[:20])
