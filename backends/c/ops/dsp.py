"""The packed kernels for cores with the DSP extension (Cortex-M4/M7/M33: SMLAD does two 16-bit
multiply-accumulates per instruction), emitted beside the portable loops of conv.py / gemm.py
under `#if <NAME>_DSP` (backends/c/runtime/qcc_dsp.h says when that holds).

One inner product serves 2-D convolution (im2col strips), 1x1 convolution and Gemm: a block of
two output channels (weight rows) times two columns (output positions, or input rows of a
Gemm), or of four rows times one column (a Gemm of one input row):

    acc[r][c] = init[r] + Σ_k w[r][k] · x[c][k],

with x the raw activation codes widened to int16 (a convolution's strip, a Gemm's widened
row) and the input zero point folded into init = b − zx·Σ_k w (gemmlowp's offset trick, seeds/000
§B: Σ (x − zx)·w = Σ x·w − zx·Σ w), so no subtraction runs per tap. Per word of four taps the
block loads the activation pairs once, then per row one weight word (the rows' words stored
next to each other by packing.pack_dsp_rows, taps in the order SXTB16 unpacks them), two
SXTB16 and one SMLAD per column and pair: 16 MACs in 17 instructions for 2 x 2, two words per
loop trip. Where gcc targets the DSP extension the loop is one asm statement (gcc at -Os
reloads the activation pairs per row otherwise); elsewhere it is C on the intrinsics'
portable twins, which the host tests run.

Requantization (`DspRequant`) takes one of three forms of kernels.requantize that stay in 32
bits or use one SMLAL / SMMLA / SMMULR; the bound that makes a form exact is computed per layer
here, and a layer where no form is exact keeps the portable path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from backends.c.ops.common import INT32_LIMIT, Requant, int_literal
from backends.c.packing import DSP_GROUP, dsp_taps, pack_dsp_rows
from backends.c.writer import CWriter

# activation codes the kernels take as int16 (SMLAD multiplies 16-bit halves)
DSP_TYPES = ("int8_t", "uint8_t", "int16_t")


def widen(x_t: str, rt: str) -> str:
    """The qcc_dsp.h function copying codes of C type x_t into int16."""
    return f"{rt}dsp_widen_{ {'uint8_t': 'u8', 'int8_t': 's8', 'int16_t': 's16'}[x_t]}"


def dsp_macro(ctx) -> str:
    return f"{ctx.name.upper()}_DSP"


@dataclass
class DspRequant:
    """Per channel (padded to whole blocks of rows): the multiplier and shift of
    qcc_dsp_requantize_word (`word` form: all in 32 bits, where the layer's accumulator bound
    proves |acc · M| + 2^(S−1) < 2^31), qcc_dsp_requantize (`high`: shift = S − 32 >= 0, the
    product's high word shifted) or qcc_dsp_requantize_low (`low`: 1 <= shift = S <= 31,
    where the bound proves |acc · M| < 2^(31+S)); each equals kernels.requantize's (M, S) bit
    for bit (qcc_dsp.h). `tie` is 0 where lo >= the zero point: every negative accumulator
    is clamped to lo whichever way its tie rounds."""

    mults: list[int]
    shifts: list[int]
    form: str  # "word", "high" or "low"
    zero_point: int
    lo: int
    hi: int
    prefix: str

    @classmethod
    def of(cls, req: Requant, prefix: str, block: int, bound: int) -> DspRequant | None:
        """The cheapest exact form for the accumulator bound `bound`; None when no form is
        exact for every channel, or the code range is too wide for the int32 clamp."""
        if max(abs(req.lo), abs(req.hi), abs(req.zero_point)) >= 1 << 30:
            return None
        pairs = list(zip(req.multipliers, req.shifts))
        high = [(m, s - 32) if s >= 32 else (m << (32 - s), 0) for m, s in pairs]
        # round_shift(a·M, S) = round_shift(a·M·2^t, S+t): every channel at S >= 32, and at
        # one common S where the multipliers allow (the shift is then a constant of the code)
        high_ok = all(m < INT32_LIMIT for m, _ in high)
        top = max(h for _, h in high)
        if high_ok and all(m << (top - h) < INT32_LIMIT for m, h in high):
            high = [(m << (top - h), top) for m, h in high]
        if high_ok:  # SMMULR / SMMLA (a fused ReLU), or SMLAL and the high word
            return cls._padded(high, "high", req, prefix, block)
        top = max(s for _, s in pairs)
        for form in ([(m << (top - s), top) for m, s in pairs], pairs):  # one shift first
            if all(s <= 31 and bound * m + (1 << s >> 1) < INT32_LIMIT for m, s in form):
                return cls._padded(form, "word", req, prefix, block)
        if all(1 <= s <= 31 and bound * m < 1 << (31 + s) for m, s in pairs):
            return cls._padded(pairs, "low", req, prefix, block)
        return None

    @classmethod
    def _padded(cls, pairs: list[tuple[int, int]], form: str, req: Requant, prefix: str,
                block: int) -> DspRequant:
        pairs = pairs + [pairs[-1]] * (-len(pairs) % block)  # rows completing the last block
        return cls([m for m, _ in pairs], [s for _, s in pairs], form, req.zero_point, req.lo,
                   req.hi, prefix)

    @property
    def mult_base(self) -> int | None:
        """The common odd part of the multipliers when they differ only by powers of two (a
        fixed-point layer's M = 2^(32−S)): a table of exponents then replaces the int32 one."""
        odd = {m >> ((m & -m).bit_length() - 1) for m in self.mults}
        return odd.pop() if len(odd) == 1 and len(set(self.mults)) > 1 else None

    def define(self, w: CWriter) -> None:
        """Per-channel tables of the multipliers and shifts that are not one constant."""
        base = self.mult_base
        if base is not None:
            exps = [(m // base).bit_length() - 1 for m in self.mults]
            w.array(f"static const uint8_t {self.prefix}_mexp[{len(exps)}]", exps)
        elif len(set(self.mults)) > 1:
            w.array(f"static const int32_t {self.prefix}_mult[{len(self.mults)}]", self.mults)
        if len(set(self.shifts)) > 1:
            w.array(f"static const uint8_t {self.prefix}_shift[{len(self.shifts)}]",
                    self.shifts)

    def declare(self, w: CWriter, channel: str, tag: str) -> None:
        """Declare m<tag>, h<tag>, f<tag>: the channel's multiplier, shift and rounding half."""
        base = self.mult_base
        m = str(self.mults[0]) if len(set(self.mults)) == 1 else \
            f"(int32_t)((uint32_t){base} << {self.prefix}_mexp[{channel}])" if base else \
            f"{self.prefix}_mult[{channel}]"
        h = str(self.shifts[0]) if len(set(self.shifts)) == 1 else \
            f"{self.prefix}_shift[{channel}]"
        w.line(f"const int32_t m{tag} = {m}, h{tag} = {h};")
        if self.form != "high" or self.tie == 0:  # 2^(h-1) (SMMLA's addend for `high`)
            w.line(f"const int32_t f{tag} = (int32_t)(((uint32_t)1 << h{tag}) >> 1);")
            return
        w.line(f"const int64_t f{tag} = (int64_t)1 << (31 + h{tag});")

    def expr(self, acc: str, tag: str, rt: str) -> str:
        tail = f"{self.zero_point}, {int_literal(self.lo)}, {int_literal(self.hi)}"
        if self.form == "high" and self.tie == 0:
            return f"{rt}dsp_requantize_relu({acc}, m{tag}, h{tag}, f{tag}, {tail})"
        fn = {"word": "dsp_requantize_word", "high": "dsp_requantize",
              "low": "dsp_requantize_low"}[self.form]
        return f"{rt}{fn}({acc}, m{tag}, h{tag}, f{tag}, {self.tie}, {tail})"

    @property
    def tie(self) -> int:
        """0 where lo >= the zero point (every negative accumulator ends at lo), else 1."""
        return 0 if self.lo >= self.zero_point else 1


@dataclass
class DspLayer:
    """The constants of one layer's packed kernel."""

    cname: str  # the packed weights
    rows: int  # output channels (before padding to whole blocks)
    k: int  # real taps per row
    init: list[int]  # per padded row: b − zx·Σw
    req: DspRequant
    block: int  # rows per block: 2 (times 2 columns) or 4 (times 1, a Gemm of one row)

    @property
    def kp(self) -> int:
        return dsp_taps(self.k)


def dsp_layer(codes: np.ndarray, bias: np.ndarray, zx: int, x_absmax: int, req: Requant,
              cname: str, block: int = 2) -> DspLayer | None:
    """The packed kernel's constants for weight rows `codes` (rows, k), or None when the layer
    needs the portable path: codes beyond int8, rows half padding, or partial sums of raw
    codes (whose bound is computed here: k · max|x| · max|w| + max|init|) beyond int32, or a
    requantization DspRequant cannot do exactly."""
    codes = np.asarray(codes, np.int64)
    if codes.size == 0 or codes.min() < -128 or codes.max() > 127:
        return None
    rows, k = codes.shape
    if dsp_taps(k) >= 2 * k:  # as many zero taps as taps (k <= 4): the portable loop wins
        return None
    init = bias.astype(np.int64) - zx * codes.sum(axis=1)
    bound = k * x_absmax * int(np.abs(codes).max()) + int(np.abs(init).max(initial=0))
    if bound >= INT32_LIMIT:
        return None
    dreq = DspRequant.of(req, f"{cname}_rq", block, bound)
    if dreq is None:
        return None
    padded = [int(v) for v in init] + [0] * (-rows % block)
    return DspLayer(cname, rows, k, padded, dreq, block)


def define_layer(w: CWriter, layer: DspLayer, codes: np.ndarray) -> int:
    """The packed weights, init and requantization tables; returns the weight bytes."""
    data = pack_dsp_rows(codes, layer.block)
    w.comment(f"{layer.rows} x {layer.k} weights for the DSP kernel: blocks of {layer.block} "
              f"rows, taps in words of four stored t0 t2 t1 t3, padded to {layer.kp} "
              f"({data.size} bytes)")
    w.array(f"static const int8_t {layer.cname}[{data.size}]", data.tolist())
    w.array(f"static const int32_t {layer.cname}_init[{len(layer.init)}]",
            [int_literal(v) for v in layer.init])
    layer.req.define(w)
    return int(data.size)


def emit_row_blocks(w: CWriter, ctx, layer: DspLayer, cols: int, x_col: Callable[[str], str],
                    store: Callable[[str, str, str], str], step: int) -> None:
    """For every block of rows oc .. oc + block − 1, the columns 0 .. cols − 1: in pairs with
    blocks of two rows (a last odd column alone), one by one with blocks of four. `x_col(c)`
    is the C pointer (const int16_t *) to column c's taps, `step` int16 after column c − 1's;
    `store(row, col, value)` the C statement writing one requantized output."""
    b = layer.block
    w.line(f"const int8_t *wp = {layer.cname};")
    w.line("int32_t oc;" if cols == 1 else "int32_t oc, c;")
    with w.block(f"for (oc = 0; oc < {layer.rows}; oc += {b}, wp += {b * layer.kp})"):
        starts = ", ".join(f"i{r} = {layer.cname}_init[{_row(r)}]" for r in range(b))
        w.line(f"const int32_t {starts};")
        for r in range(b):
            layer.req.declare(w, _row(r), str(r))
        if cols == 1:
            _column_block(w, ctx, layer, 1, x_col, store, "0", step)
            return
        per = 2 if b == 2 else 1  # columns per block
        with w.block(f"for (c = 0; c + {per - 1} < {cols}; c += {per})"):
            _column_block(w, ctx, layer, per, x_col, store, "c", step)
        if per == 2 and cols % 2:
            with w.block(""):
                _column_block(w, ctx, layer, 1, x_col, store, f"{cols - 1}", step)


def _row(r: int) -> str:
    return f"oc + {r}" if r else "oc"


def _column_block(w: CWriter, ctx, layer: DspLayer, ncols: int, x_col: Callable[[str], str],
                  store: Callable[[str, str, str], str], col: str, step: int) -> None:
    """One block: `b` rows times `ncols` columns (the second column `step` int16 after the
    first), the taps' loop in Thumb-2 assembly where gcc targets the DSP extension (its
    register allocation at -Os reloads the activation pairs per row), else in C on the
    portable twins of qcc_dsp.h; both compute the same sums."""
    rt, b = ctx.rt, layer.block
    cols = [col] if ncols == 1 else [col, f"{col} + 1"]
    accs = [[f"a{r}{c}" for c in range(ncols)] for r in range(b)]
    w.line(f"const int16_t *z0 = {x_col(cols[0])};")
    w.line(f"int32_t {', '.join(f'{a} = i{r}' for r in range(b) for a in accs[r])};")
    w.line("const int8_t *wq = wp;")
    trips = layer.kp // (2 * DSP_GROUP)
    w.directive("#if defined(__ARM_FEATURE_DSP) && defined(__GNUC__)")
    _asm_loop(w, b, ncols, 2 * step, trips)
    w.directive("#else")
    if ncols == 2:
        w.line(f"const int16_t *z1 = z0 + {step};")
    w.line("int32_t g;")
    word = DSP_GROUP * b  # bytes of one word of every row of the block
    with w.block(f"for (g = 0; g < {trips}; ++g)"):
        for half in range(2):  # two words per trip: half the loop overhead
            for c in range(ncols):
                xo = DSP_GROUP * half
                w.line(f"const uint32_t z{c}a{half} = {rt}dsp_load_pair(z{c} + {xo}), "
                       f"z{c}b{half} = {rt}dsp_load_pair(z{c} + {xo + 2});")
            for r in range(b):
                o = word * half + DSP_GROUP * r
                w.line(f"const uint32_t u{r}{half} = {rt}dsp_load32(wq + {o});")
                w.line(f"const uint32_t lo{r}{half} = {rt}dsp_sxtb16(u{r}{half}), "
                       f"hi{r}{half} = {rt}dsp_sxtb16_ror8(u{r}{half});")
                for c in range(ncols):
                    a = accs[r][c]
                    w.line(f"{a} = {rt}dsp_smlad(lo{r}{half}, z{c}a{half}, {a});")
                    w.line(f"{a} = {rt}dsp_smlad(hi{r}{half}, z{c}b{half}, {a});")
        w.line(f"wq += {2 * word};")
        for c in range(ncols):
            w.line(f"z{c} += {2 * DSP_GROUP};")
    w.directive("#endif")
    padded_rows = layer.rows % b != 0
    for r in range(b):
        if r and padded_rows:
            w.line(f"if (oc + {r} < {layer.rows}) {{")
            w.depth += 1
        for c, at in enumerate(cols):
            w.line(store(f"({_row(r)})", at, layer.req.expr(accs[r][c], str(r), rt)))
        if r and padded_rows:
            w.depth -= 1
            w.line("}")


def _asm_loop(w: CWriter, b: int, ncols: int, step_bytes: int, trips: int) -> None:
    """The taps' loop as one asm statement: per word of four taps, the activation pairs once
    (LDRD where the column is word-aligned: the first of two columns, at an even column of
    an aligned strip), then per row one weight word, two SXTB16 and an SMLAD per column and
    pair. `trips` >= 1 iterations of two words."""
    text = ["1:"]
    for _ in range(2):
        if ncols == 2:
            text += ["ldrd %[x0], %[x1], [%[z]], #8",
                     f"ldr %[y0], [%[z], #{step_bytes - 8}]",
                     f"ldr %[y1], [%[z], #{step_bytes - 4}]"]
        else:
            text += ["ldr %[x0], [%[z]], #8", "ldr %[x1], [%[z], #-4]"]
        for r in range(b):
            text += ["ldr %[w], [%[wq]], #4", "sxtb16 %[t], %[w]"]
            text += [f"smlad %[a{r}{c}], %[t], %[{'xy'[c]}0], %[a{r}{c}]" for c in range(ncols)]
            text += ["sxtb16 %[t], %[w], ror #8"]
            text += [f"smlad %[a{r}{c}], %[t], %[{'xy'[c]}1], %[a{r}{c}]" for c in range(ncols)]
    text += ["subs %[n], %[n], #1", "bne 1b"]
    temps = ["w", "t", "x0", "x1"] + (["y0", "y1"] if ncols == 2 else [])
    w.line(f"uint32_t n = {trips}, {', '.join(f'r_{v}' for v in temps)};")
    w.line("__asm__(")
    w.depth += 1
    for line in text:
        w.line(f'"{line}\\n\\t"')
    outs = [f'[a{r}{c}] "+r"(a{r}{c})' for r in range(b) for c in range(ncols)]
    outs += ['[wq] "+r"(wq)', '[z] "+r"(z0)', '[n] "+r"(n)']
    outs += [f'[{v}] "=&r"(r_{v})' for v in temps]
    w.line(": " + ", ".join(outs[:4]))
    for i in range(4, len(outs), 4):
        w.line("  , " + ", ".join(outs[i:i + 4]))
    w.line(":")
    w.line(': "cc", "memory");')
    w.depth -= 1
