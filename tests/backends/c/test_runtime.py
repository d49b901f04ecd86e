"""The C runtime (backends/c/runtime/qcc_runtime.[ch], compiled as shipped) against the NumPy
functions it mirrors: rounding.round_shift, kernels.requantize / divide_round / quantize /
dequantize, packing.unpack_bits, binary.popcount32 and xnor.xnor_matmul, on random and edge
inputs. A small driver reads one call per line and prints the result."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from backends.c.library import RUNTIME
from backends.numpy_int import kernels, xnor
from qcc.core.ir import Node, Value
from qcc.core.numerics import binary
from qcc.core.numerics.packing import pack_bits, unpack_bits
from qcc.core.numerics.rounding import round_shift

DRIVER = r"""
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include "qcc_runtime.h"

static float as_float(uint32_t bits) { float f; memcpy(&f, &bits, sizeof f); return f; }
static uint32_t bits_of(float f) { uint32_t u; memcpy(&u, &f, sizeof u); return u; }

int main(void)
{
    char op;
    static uint8_t data[4096];
    static int8_t out[4096];
    static uint32_t words[3][64];
    while (scanf(" %c", &op) == 1) {
        int64_t a, b, c, d, e, f;
        uint32_t u;
        double scale;
        int i, n;
        switch (op) {
        case 'R': scanf("%" SCNd64 " %" SCNd64, &a, &b);
                  printf("%" PRId64 "\n", qcc_round_shift(a, (int32_t)b)); break;
        case 'r': scanf("%" SCNd64 " %" SCNd64, &a, &b);
                  printf("%" PRId32 "\n", qcc_round_shift32((int32_t)a, (int32_t)b)); break;
        case 'Q': scanf("%" SCNd64 " %" SCNd64 " %" SCNd64 " %" SCNd64 " %" SCNd64
                        " %" SCNd64, &a, &b, &c, &d, &e, &f);
                  printf("%" PRId32 "\n", qcc_requantize(a, (int32_t)b, (int32_t)c,
                         (int32_t)d, (int32_t)e, (int32_t)f)); break;
        case 'q': scanf("%" SCNd64 " %" SCNd64 " %" SCNd64 " %" SCNd64 " %" SCNd64
                        " %" SCNd64, &a, &b, &c, &d, &e, &f);
                  printf("%" PRId32 "\n", qcc_requantize32((int32_t)a, (int32_t)b,
                         (int32_t)c, (int32_t)d, (int32_t)e, (int32_t)f)); break;
        case 'D': scanf("%" SCNd64 " %" SCNd64, &a, &b);
                  printf("%" PRId64 "\n", qcc_divide_round(a, b)); break;
        case 'P': scanf("%" SCNu32, &u);
                  printf("%" PRIu32 "\n", qcc_popcount32(u)); break;
        case 'F': scanf("%" SCNu32 " %la %" SCNd64 " %" SCNd64 " %" SCNd64, &u, &scale, &a,
                        &b, &c);
                  printf("%" PRId32 "\n", qcc_quantize(as_float(u), scale, (int32_t)a,
                         (int32_t)b, (int32_t)c)); break;
        case 'G': scanf("%" SCNd64 " %" SCNd64 " %la", &a, &b, &scale);
                  printf("%" PRIu32 "\n", bits_of(qcc_dequantize((int32_t)a, (int32_t)b,
                         scale))); break;
        case 'U': case 'S':
                  scanf("%d", &n);
                  for (i = 0; i < n; ++i) { scanf("%" SCNu32, &u); data[i] = (uint8_t)u; }
                  scanf("%" SCNd64 " %" SCNd64 " %" SCNd64 " %" SCNd64, &a, &b, &c, &d);
                  if (op == 'U') {
                      qcc_unpack_bits(data, (int32_t)a, (int32_t)b, (int32_t)c, (int32_t)d, out);
                  } else {
                      qcc_unpack_signs(data, (int32_t)c, (int32_t)d, out);
                  }
                  for (i = 0; i < (int)d; ++i) printf("%d ", out[i]);
                  printf("\n"); break;
        case 'X': scanf("%d", &n);
                  for (i = 0; i < 3 * n; ++i) scanf("%" SCNu32, &words[i / n][i % n]);
                  printf("%" PRId32 "\n", qcc_xnor_dot(words[0], words[1], words[2], n));
                  break;
        default: return 1;
        }
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    assert gcc, "gcc is required: the C backend is part of the test suite"
    tmp = tmp_path_factory.mktemp("c_runtime")
    (tmp / "driver.c").write_text(DRIVER)
    exe = tmp / "driver"
    subprocess.run([gcc, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic",
                    "-Wno-unused-result", "-fsanitize=address,undefined",
                    "-fno-sanitize-recover=all", f"-I{RUNTIME}", str(tmp / "driver.c"),
                    str(RUNTIME / "qcc_runtime.c"), "-o", str(exe)], check=True)
    return exe


def call(exe: Path, lines: list[str]) -> list[str]:
    run = subprocess.run([str(exe)], input="\n".join(lines) + "\n", capture_output=True,
                         text=True, check=True)
    return run.stdout.splitlines()


def edges_and_random(rng: np.random.Generator, n: int, lo: int, hi: int) -> np.ndarray:
    edges = np.array([lo, lo + 1, -1, 0, 1, hi - 1, hi], dtype=np.int64)
    return np.concatenate([edges, rng.integers(lo, hi, n, endpoint=True)])


def test_round_shift_matches_numpy(driver: Path) -> None:
    rng = np.random.default_rng(0)
    x64 = edges_and_random(rng, 300, -(2**62), 2**62)
    s64 = rng.integers(0, 63, x64.size)
    x32 = edges_and_random(rng, 300, -(2**31), 2**31 - 1)
    s32 = rng.integers(0, 32, x32.size)
    # exact ties: odd multiples of 2^(s-1) round away from zero
    ties = (2 * rng.integers(-1000, 1000, 50) + 1) << 4
    lines = [f"R {x} {s}" for x, s in zip(x64, s64)] + [f"r {x} {s}" for x, s in zip(x32, s32)]
    lines += [f"r {t} 5" for t in ties]
    expected = np.concatenate([round_shift(x64, s64), round_shift(x32, s32),
                               round_shift(ties, 5)])
    assert [int(v) for v in call(driver, lines)] == expected.tolist()


def requantize_node(m: int, s: int, zp: int, lo: int, hi: int, relu: int) -> Node:
    attrs = {"multiplier": m, "shift": s, "out_zero_point": zp, "out_lo": lo, "out_hi": hi,
             "relu": relu}
    return Node("QConv", "t", [], [Value("y")], attrs)


def test_requantize_matches_numpy(driver: Path) -> None:
    rng = np.random.default_rng(1)
    lines, expected = [], []
    for i in range(400):
        wide = i % 2 == 0
        m = int(rng.integers(1, 1 << 23)) if i % 4 else 1 << int(rng.integers(0, 20))
        s = int(rng.integers(0, 63 if wide else 32))
        lo, hi = [(-128, 127), (0, 255), (-32768, 32767), (0, 65535)][i % 4]
        zp = int(rng.integers(lo, hi + 1)) if i % 3 == 0 else 0
        relu = int(i % 5 == 0)
        limit = ((1 << 61) if wide else (1 << 31) - 1) // m
        acc = int(rng.integers(-limit, limit + 1))
        floor = max(lo, zp) if relu else lo
        ref = kernels.requantize(np.array([acc]), requantize_node(m, s, zp, lo, hi, relu))
        lines.append(f"{'Q' if wide else 'q'} {acc} {m} {s} {zp} {floor} {hi}")
        expected.append(int(ref[0]))
    assert [int(v) for v in call(driver, lines)] == expected


def test_divide_round_matches_numpy(driver: Path) -> None:
    rng = np.random.default_rng(2)
    counts = rng.integers(1, 5000, 300)
    totals = rng.integers(-(2**40), 2**40, 300)
    totals[:50] = counts[:50] * rng.integers(-99, 99, 50) + counts[:50] // 2  # near ties
    lines = [f"D {t} {c}" for t, c in zip(totals, counts)]
    expected = kernels.divide_round(totals, counts)
    assert [int(v) for v in call(driver, lines)] == expected.tolist()


def test_quantize_and_dequantize_match_numpy(driver: Path) -> None:
    rng = np.random.default_rng(3)
    node_lines, expected = [], []
    for scale, zp, lo, hi in [(2.0**-4, 0, -128, 127), (0.0123, 128, 0, 255),
                              (0.5747369357517788, 0, -7, 7), (2.0**-10, 0, -32768, 32767)]:
        x = np.concatenate([rng.normal(0, (hi - lo) * scale / 4, 200),
                            (rng.integers(lo, hi, 50) - zp + 0.5) * scale,  # ties
                            [1e30, -1e30, 3e38, -3e38, 0.0, -0.0]]).astype(np.float32)
        node = Node("Quantize", "q", [], [Value("y")], {"scale": scale, "out_zero_point": zp,
                                                         "out_lo": lo, "out_hi": hi})
        ref = kernels.quantize(node, x)
        node_lines += [f"F {int(b)} {scale.hex()} {zp} {lo} {hi}" for b in x.view(np.uint32)]
        expected += ref.astype(np.int64).tolist()
        codes = rng.integers(lo, hi, 100, endpoint=True)
        dq = Node("Dequantize", "d", [], [Value("y")], {"scale": scale, "zero_point": zp})
        node_lines += [f"G {c} {zp} {scale.hex()}" for c in codes]
        expected += kernels.dequantize(dq, codes).view(np.uint32).astype(np.int64).tolist()
    assert [int(v) for v in call(driver, node_lines)] == expected


@pytest.mark.parametrize("bits, signed", [(1, False), (2, True), (2, False), (4, True),
                                          (4, False)])
def test_unpack_bits_matches_packing(driver: Path, bits: int, signed: bool) -> None:
    rng = np.random.default_rng(bits)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    codes = rng.integers(lo, hi, 301, endpoint=True)
    data = pack_bits(codes, bits, signed)
    lines, expected = [], []
    for start, count in [(0, 301), (7, 50), (123, 178), (300, 1)]:
        lines.append(f"U {data.size} {' '.join(map(str, data))} {bits} {int(signed)} {start} "
                     f"{count}")
        expected.append(unpack_bits(data, bits, signed, start + count)[start:].tolist())
    got = [[int(v) for v in line.split()] for line in call(driver, lines)]
    assert got == expected


def test_unpack_signs_and_xnor_match_numpy(driver: Path) -> None:
    rng = np.random.default_rng(7)
    signs = rng.choice([-1, 1], 200)
    data = pack_bits(signs > 0, 1, signed=False)
    line = f"S {data.size} {' '.join(map(str, data))} 1 0 13 150"
    assert [int(v) for v in call(driver, [line])[0].split()] == signs[13:163].tolist()

    words = rng.integers(0, 2**32, (40, 3, 5), dtype=np.uint64).astype(np.uint32)
    lines, expected = [], []
    for a, w, valid in words:
        lines.append("X 5 " + " ".join(str(int(v)) for v in np.concatenate([a, w, valid])))
        expected.append(int(xnor.xnor_matmul(a[None], w[None], valid[None])[0, 0]))
        lines.append(f"P {int(a[0])}")
        expected.append(int(binary.popcount32(a[0])))
    assert [int(v) for v in call(driver, lines)] == expected
