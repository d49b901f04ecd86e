"""The integer primitives are written so that plain C99 (uint32_t / int32_t / int64_t only)
reproduces them bit for bit: the shipped C runtime (backends/c/runtime/qcc_runtime.h: the PRNG
draw, round_shift, the stochastic shift, popcount), plus a transcription of gemmlowp's
fixed-point multiply that the runtime does not ship, compiled with gcc, must agree with the
NumPy functions on random and edge inputs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from qcc.core.numerics import binary
from qcc.core.numerics import rounding as R

RUNTIME = Path(__file__).resolve().parents[3] / "backends" / "c" / "runtime"
C_SOURCE = r"""
#include <stdint.h>
#include <stdio.h>

#include "qcc_runtime.h"

static uint32_t rand_u32(uint32_t seed, uint32_t i) {
    qcc_rng rng;
    rng.seed = seed;
    rng.counter = i;
    return qcc_draw(&rng);
}

static int32_t srdhm(int32_t a, int32_t b) {
    int64_t ab = (int64_t)a * (int64_t)b;
    int32_t nudge = ab >= 0 ? (1 << 30) : (1 - (1 << 30));
    if (a == b && a == INT32_MIN) return INT32_MAX;
    return (int32_t)((ab + nudge) / ((int64_t)1 << 31));
}
static int32_t mbqm(int32_t x, int32_t m, int shift) {
    int left = shift > 0 ? shift : 0, right = shift > 0 ? 0 : -shift;
    int64_t wide = (int64_t)x * ((int64_t)1 << left);
    int32_t sat = wide > INT32_MAX ? INT32_MAX : wide < INT32_MIN ? INT32_MIN : (int32_t)wide;
    return qcc_round_shift32(srdhm(sat, m), right);
}
static int32_t sr_shift(int32_t x, int s, uint32_t seed, uint32_t counter) {
    qcc_rng rng;
    rng.seed = seed;
    rng.counter = counter;
    return (int32_t)qcc_stochastic_shift(x, s, &rng);
}

int main(void) {
    char op;
    long long a, b, c, d;
    while (scanf(" %c %lld %lld %lld %lld", &op, &a, &b, &c, &d) == 5) {
        switch (op) {
        case 'M': printf("%lu\n", (unsigned long)rand_u32((uint32_t)a, (uint32_t)b)); break;
        case 'S': printf("%ld\n", (long)srdhm((int32_t)a, (int32_t)b)); break;
        case 'R': printf("%ld\n", (long)qcc_round_shift32((int32_t)a, (int)b)); break;
        case 'Q': printf("%ld\n", (long)mbqm((int32_t)a, (int32_t)b, (int)c)); break;
        case 'T': printf("%ld\n", (long)sr_shift((int32_t)a, (int)b, (uint32_t)c,
                                                 (uint32_t)d)); break;
        case 'P': printf("%lu\n", (unsigned long)qcc_popcount32((uint32_t)a)); break;
        default: return 1;
        }
    }
    return 0;
}
"""


def build(tmp_path: Path) -> Path:
    gcc = shutil.which("gcc")
    assert gcc, "gcc is required (DESIGN.md: the C backend is part of the test suite)"
    source, exe = tmp_path / "mirror.c", tmp_path / "mirror"
    source.write_text(C_SOURCE)
    subprocess.run([gcc, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic",
                    f"-I{RUNTIME}", str(source), str(RUNTIME / "qcc_runtime.c"), "-o", str(exe)],
                   check=True)
    return exe


def test_c_runtime_agrees_with_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 400
    edges = np.array([R.INT32_MIN, R.INT32_MIN + 1, -(2**30), -1, 0, 1, 2**30, R.INT32_MAX])
    xs = np.concatenate([edges, rng.integers(R.INT32_MIN, R.INT32_MAX, n, endpoint=True)])
    ys = np.concatenate([edges[::-1], rng.integers(R.INT32_MIN, R.INT32_MAX, n, endpoint=True)])
    es = rng.integers(0, 32, xs.size)
    seeds = rng.integers(0, 2**32, xs.size)
    counters = rng.integers(0, 2**32, xs.size)
    reals = np.exp(rng.uniform(np.log(2.0**-30), np.log(2.0**6), xs.size))
    mult, shift = R.quantize_multiplier(reals)

    lines, expected = [], []
    for i in range(xs.size):
        x, y, e = int(xs[i]), int(ys[i]), int(es[i])
        seed, counter = int(seeds[i]), int(counters[i])
        lines += [f"M {seed} {counter} 0 0", f"S {x} {y} 0 0", f"R {x} {e} 0 0",
                  f"Q {x} {int(mult[i])} {int(shift[i])} 0", f"T {x} {e} {seed} {counter}",
                  f"P {x & 0xFFFFFFFF} 0 0 0"]
        expected += [
            int(R.rand_u32(seed, counter)),
            int(R.saturating_rounding_doubling_high_mul(x, y)),
            int(R.rounding_divide_by_pot(x, e)),
            int(R.multiply_by_quantized_multiplier(x, mult[i], shift[i])),
            int(R.stochastic_round_shift(x, e, R.RngState(seed, counter))[0]),
            int(binary.popcount32(x & 0xFFFFFFFF)),
        ]
    run = subprocess.run([str(build(tmp_path))], input="\n".join(lines), capture_output=True,
                         text=True, check=True)
    got = [int(v) for v in run.stdout.split()]
    assert got == expected
