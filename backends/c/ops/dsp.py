"""The packed kernels for cores with the DSP extension (Cortex-M4/M7/M33: SMLAD does two 16-bit
multiply-accumulates per instruction), emitted beside the portable loops of conv.py / gemm.py
under `#if <NAME>_DSP` (backends/c/runtime/qcc_dsp.h says when that holds).

One inner product serves 2-D convolution (im2col strips), 1x1 convolution and Gemm:

    acc[r][c] = init[r] + Σ_k w[r][k] · x[c][k],

with x the raw activation codes widened to int16 (a convolution's strip, a Gemm's widened
row) and the input zero point folded into init = b − zx·Σ_k w (gemmlowp's offset trick, seeds/000
§B: Σ (x − zx)·w = Σ x·w − zx·Σ w), so no subtraction runs per tap. Blocks:

- convolution strips: one weight row times four columns. Per word of four taps the row's word
  is loaded and split by SXTB16 into its two pairs once (weights stored t0 t2 t1 t3, so the
  pairs are (t0, t1), (t2, t3)), then each column's activation pairs come in one LDRD and go
  through two SMLAD: 15 instructions per 16 MACs;
- two rows times two columns (strips whose columns LDRD cannot reach, Gemms of several rows):
  17 per 16; four rows times one column (a Gemm of one widened row);
- a Gemm of one 8-bit row and few weight rows reads the row as bytes (UXTB16 / SXTB16 of each
  word of activations, weights stored t0 t1 t2 t3): no widening pass (emit_byte_rows).

Where gcc targets the DSP extension the tap loop is one asm statement (gcc at -Os reloads the
activation pairs per row otherwise); elsewhere it is C on the intrinsics' portable twins, which
the host tests run. 4-, 2- and 1-bit (±1) weights stay packed in flash (pack_sub_byte_rows)
and are unpacked one row at a time into the int8 layout. A layer's kernel body is one static
function per distinct text (emit_shared_body), so layers of one shape share their code.

Requantization (`DspRequant`) takes one of three forms of kernels.requantize that stay in 32
bits or use one SMLAL / SMMLA / SMMULR; the bound that makes a form exact is computed per layer
here, and a layer where no form is exact keeps the portable path.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from backends.c.ops.common import INT32_LIMIT, Requant, int_literal
from backends.c.packing import DSP_GROUP, dsp_taps, pack_dsp_rows
from backends.c.writer import CWriter

# activation codes the kernels take as int16 (SMLAD multiplies 16-bit halves)
DSP_TYPES = ("int8_t", "uint8_t", "int16_t")
COLUMN_BLOCK = 4  # columns per block of one weight row (convolution strips)
LDRD_REACH = 1020  # the largest LDRD immediate offset, bytes
SHARED_BODIES = "dsp/bodies"  # EmitContext.memo key: kernel body text -> its function
# words of four taps per loop trip of a one-row block: four would save the SUBS / BNE pair of
# every other trip (3 % fewer instructions on ResNet-8) for ~120 bytes of code per layer;
# flash is the scarcer resource (ResNet-8's would grow past what it was before these kernels)
UNROLL_WORDS = 2


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
    ram: bool = False  # a body reads {prefix}_mult, filled in RAM from the exponents (fill_ram)

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

    def shared_args(self, placeholder: str, ram_table: str = "") -> list[SharedArg]:
        """The tables `define` may write, as a shared body rendered with prefix `placeholder`
        reads them (the multipliers from `ram_table` where fill_ram wrote them)."""
        mult = ram_table or f"{self.prefix}_mult"
        return [SharedArg("const int32_t *", f"{placeholder}_mult", mult),
                *(SharedArg(f"const {t} *", f"{placeholder}_{label}", f"{self.prefix}_{label}")
                  for t, label in (("uint8_t", "shift"), ("uint8_t", "mexp")))]

    def fill_ram(self, w: CWriter, table: str) -> None:
        """The multipliers base << exponent into the int32 RAM table `table` (one per
        channel, once per inference): a body then reads them as it reads an affine layer's
        table, without the per-use shift or the register it holds."""
        w.line("int32_t ch;")
        with w.block(f"for (ch = 0; ch < {len(self.mults)}; ++ch)"):
            w.line(f"{table}[ch] = (int32_t)((uint32_t){self.mult_base} << "
                   f"{self.prefix}_mexp[ch]);")

    def declare(self, w: CWriter, channel: str, tag: str, fused: bool = False) -> None:
        """Declare m<tag>, h<tag>, f<tag>: the channel's multiplier, shift and rounding half
        (the multiplier alone for a `fused` block)."""
        base = None if self.ram else self.mult_base
        m = str(self.mults[0]) if len(set(self.mults)) == 1 else \
            f"(int32_t)((uint32_t){base} << {self.prefix}_mexp[{channel}])" if base else \
            f"{self.prefix}_mult[{channel}]"
        h = str(self.shifts[0]) if len(set(self.shifts)) == 1 else \
            f"{self.prefix}_shift[{channel}]"
        if fused:
            w.line(f"const int32_t m{tag} = {m};")
            return
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
    def fused(self) -> bool:
        """Whether an asm block may end in SMMULR by the channel's multiplier (the `high` form
        with shift 0 and no tie: qcc_dsp_requantize_relu is then clamp(SMMULR(acc, m)))."""
        return self.form == "high" and self.tie == 0 and set(self.shifts) == {0}

    def clamp(self, value: str, rt: str) -> str:
        """The rest of a fused requantization: the zero point and the clamp."""
        return (f"{rt}dsp_clamp({value}, {self.zero_point}, {int_literal(self.lo)}, "
                f"{int_literal(self.hi)})")

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
    byte_x: bool = False  # a Gemm of one 8-bit row read as bytes (emit_byte_rows)
    bits: int = 8  # stored bits per weight: 8, or 4 / 2 (unpacked per row, emit_row_blocks)
    offset: int = 0  # sub-byte codes are stored as code + offset (offset binary when signed)

    @property
    def kp(self) -> int:
        """Taps per row: whole loop trips of words, and whole packed words of 2-bit codes."""
        whole = {1: 32, 2: 16}.get(self.bits, 2 * DSP_GROUP)  # taps per packed word
        return -(-self.k // whole) * whole

    @property
    def weights_t(self) -> str:
        return "int8_t" if self.bits == 8 else "uint32_t"

    @property
    def init_t(self) -> str:
        """int16_t where every start value fits (half the flash), else int32_t."""
        return "int16_t" if all(-(1 << 15) <= v < 1 << 15 for v in self.init) else "int32_t"

    def renamed(self, cname: str) -> DspLayer:
        """The same layer with its constants named after `cname` (a shared body's parameters)."""
        return replace(self, cname=cname, req=replace(self.req, prefix=f"{cname}_rq"))

    def shared_args(self, placeholder: str, ram_table: str = "") -> list[SharedArg]:
        """The constants a body rendered for `renamed(placeholder)` may read."""
        return [SharedArg(f"const {self.weights_t} *", placeholder, self.cname),
                SharedArg(f"const {self.init_t} *", f"{placeholder}_init", f"{self.cname}_init"),
                *self.req.shared_args(f"{placeholder}_rq", ram_table)]


def dsp_sub_bits(codes: np.ndarray) -> int:
    """1, 2 or 4: the DSP storage width of sub-byte codes (±1 signs: one bit; signed: two's
    complement ranges)."""
    if codes.size and np.all(np.abs(codes) == 1):
        return 1
    lo, hi = int(codes.min(initial=0)), int(codes.max(initial=0))
    return 2 if (-2 <= lo and hi <= 1) or (lo >= 0 and hi <= 3) else 4


def dsp_layer(codes: np.ndarray, bias: np.ndarray, zx: int, x_absmax: int, req: Requant,
              cname: str, block: int = 2, byte_x: bool = False, bits: int = 8
              ) -> DspLayer | None:
    """The packed kernel's constants for weight rows `codes` (rows, k), or None when the layer
    needs the portable path: codes beyond int8 (beyond `bits` for sub-byte storage), rows
    half padding, or partial sums of raw codes (whose bound is computed here: k · max|x| ·
    max|w| + max|init|) beyond int32, or a requantization DspRequant cannot do exactly."""
    codes = np.asarray(codes, np.int64)
    if codes.size == 0 or codes.min() < -128 or codes.max() > 127:
        return None
    offset = (1 << (bits - 1)) if codes.min() < 0 else 0
    if bits == 1 and (not np.all(np.abs(codes) == 1) or -(-codes.shape[1] // 32) * 32 >=
                      4 * codes.shape[1]):  # 1 bit: ±1 signs, rows of 32 taps (k > 8)
        return None
    if bits in (2, 4) and (codes.min() + offset < 0 or codes.max() + offset >= 1 << bits):
        return None
    rows, k = codes.shape
    if dsp_taps(k) >= 2 * k and bits != 1:  # as many zero taps as taps (k <= 4): the portable
        return None  # loop wins (but over unpacking signs one at a time)
    init = bias.astype(np.int64) - zx * codes.sum(axis=1)
    bound = k * x_absmax * int(np.abs(codes).max()) + int(np.abs(init).max(initial=0))
    if bound >= INT32_LIMIT:
        return None
    dreq = DspRequant.of(req, f"{cname}_rq", block, bound)
    if dreq is None:
        return None
    padded = [int(v) for v in init] + [0] * (-rows % block)
    return DspLayer(cname, rows, k, padded, dreq, block, byte_x and k % (2 * DSP_GROUP) == 0,
                    bits, offset if bits < 8 else 0)


@dataclass(frozen=True)
class SharedArg:
    """One parameter of a shared kernel body: its C type, its name in the body, and what the
    calling layer passes."""

    decl: str
    name: str
    value: str


def emit_shared_body(w: CWriter, ctx, args: list[SharedArg],
                     render: Callable[[CWriter], None]) -> None:
    """The body `render` writes (in terms of the parameter names of `args`) as one static
    function per distinct text, which `w` calls: layers of one shape and requantization form
    share one copy of the code (the function is defined in the current node's constants,
    inside its `#if <NAME>_DSP`, before any layer that calls it). A body only one layer uses
    is a static function called once, which gcc inlines."""
    body = CWriter()
    body.depth = 1
    render(body)
    text = body.text()
    used = [a for a in args if re.search(rf"\b{re.escape(a.name)}\b", text)]
    key = (text, tuple(f"{a.decl}{a.name}" for a in used))
    bodies = ctx.memo.setdefault(SHARED_BODIES, ({},))[0]
    fn = bodies.get(key)
    if fn is None:
        fn = bodies[key] = f"dsp{len(bodies)}_body"
        ctx.consts.line(f"static void {fn}({', '.join(a.decl + a.name for a in used)})")
        ctx.consts.line("{")
        ctx.consts.lines_of(text.rstrip("\n").split("\n"))
        ctx.consts.line("}")
    w.line(f"{fn}({', '.join(a.value for a in used)});")


def pack_byte_rows(codes: np.ndarray, block: int) -> np.ndarray:
    """pack_dsp_rows with the taps of a word in their own order t0 t1 t2 t3: SXTB16 of the
    word gives (t0, t2) and, rotated, (t1, t3), the pairs UXTB16 / SXTB16 make of a word of
    four 8-bit activations, which emit_byte_rows reads without widening them first."""
    shuffled = pack_dsp_rows(codes, block).reshape(-1, DSP_GROUP)
    return shuffled[:, [0, 2, 1, 3]].reshape(-1)  # t0 t2 t1 t3 back to t0 t1 t2 t3


def pack_sub_byte_rows(codes: np.ndarray, kp: int, bits: int, offset: int) -> np.ndarray:
    """(rows, k) codes of `bits` (4, 2, or 1 for ±1 signs) as uint32 words, row after row,
    each word holding the next 8 / bits words of pack_dsp_rows (block 1, padded to kp taps):
    byte j of word g + i at bits 8·j + bits·i, as code + offset (a sign as (code + 1) / 2).
    emit_row_blocks unpacks a word into its int8 words with a shift, a mask, an add and an
    exclusive or each (one more shift for signs)."""
    rows, k = codes.shape
    padded = np.zeros((rows, kp), np.int64)
    padded[:, :k] = codes
    words = pack_dsp_rows(padded, 1).astype(np.int64).reshape(rows, -1, 8 // bits, DSP_GROUP)
    fields = np.maximum(words, 0) if bits == 1 else words + offset  # padding: any bit
    shifts = 8 * np.arange(DSP_GROUP) + bits * np.arange(8 // bits)[:, None]
    return (fields << shifts).sum(axis=(2, 3)).astype(np.uint32).ravel()


def define_layer(w: CWriter, layer: DspLayer, codes: np.ndarray) -> int:
    """The packed weights, init and requantization tables; returns the weight bytes."""
    if layer.bits < 8:
        data = pack_sub_byte_rows(np.asarray(codes, np.int64), layer.kp, layer.bits,
                                  layer.offset)
        stored = "(code + 1) / 2" if layer.bits == 1 else f"code + {layer.offset}"
        w.comment(f"{layer.rows} x {layer.k} {layer.bits}-bit weights for the DSP kernel, "
                  f"{32 // layer.bits} per word as {stored}, padded to "
                  f"{layer.kp} ({4 * data.size} bytes)")
        w.array(f"static const uint32_t {layer.cname}[{data.size}]",
                [f"0x{int(v):08X}u" for v in data])
        w.array(f"static const {layer.init_t} {layer.cname}_init[{len(layer.init)}]",
                [int_literal(v) for v in layer.init])
        layer.req.define(w)
        return 4 * int(data.size)
    data = (pack_byte_rows if layer.byte_x else pack_dsp_rows)(codes, layer.block)
    order = "t0 t1 t2 t3" if layer.byte_x else "t0 t2 t1 t3"
    w.comment(f"{layer.rows} x {layer.k} weights for the DSP kernel: blocks of {layer.block} "
              f"rows, taps in words of four stored {order}, padded to {layer.kp} "
              f"({data.size} bytes)")
    w.array(f"static const int8_t {layer.cname}[{data.size}]", data.tolist())
    w.array(f"static const {layer.init_t} {layer.cname}_init[{len(layer.init)}]",
            [int_literal(v) for v in layer.init])
    layer.req.define(w)
    return int(data.size)


def emit_row_blocks(w: CWriter, ctx, layer: DspLayer, cols: int, x_col: Callable[[str], str],
                    store: Callable[[str, str, str], str], step: int,
                    row_scratch: str = "") -> None:
    """For every block of rows oc .. oc + block − 1, the columns 0 .. cols − 1: four at a
    time with one-row blocks (the last ones together, _last_columns), in pairs with blocks of
    two rows (a last odd column alone), one by one with blocks of four. `x_col(c)`
    is the C pointer (const int16_t *) to column c's taps, `step` int16 after column c − 1's;
    `store(row, col, value)` the C statement writing one requantized output. Sub-byte rows
    are unpacked one at a time into kp int8 at `row_scratch` (a word-aligned C address)."""
    b = layer.block
    last = _last_columns(cols, step)  # one-row blocks: the columns after the blocks of four
    looped = cols > 1 and (b > 1 or cols - last > 0)  # a loop over column blocks
    w.line("int32_t oc, c;" if looped else "int32_t oc;")
    if layer.bits < 8:  # one row at a time, unpacked into int8 at row_scratch
        assert b == 1 and row_scratch
        w.line(f"int8_t *const wu = (int8_t *)(void *)({row_scratch});")
        header = f"for (oc = 0; oc < {layer.rows}; ++oc)"
    else:
        w.line(f"const int8_t *wp = {layer.cname};")
        header = f"for (oc = 0; oc < {layer.rows}; oc += {b}, wp += {b * layer.kp})"
    with w.block(header):
        if layer.bits < 8:
            _unpack_row(w, layer, "oc", "wu")
            w.line("const int8_t *const wp = wu;")
        starts = ", ".join(f"i{r} = {layer.cname}_init[{_row(r)}]" for r in range(b))
        w.line(f"const int32_t {starts};")
        for r in range(b):
            layer.req.declare(w, _row(r), str(r))
        if cols == 1:
            _column_block(w, ctx, layer, 1, x_col, store, "0", step)
            return
        if b == 1:  # one row times four columns, then the last columns at once
            if cols - last:
                with w.block(f"for (c = 0; c + {COLUMN_BLOCK - 1} < {cols - last}; "
                             f"c += {COLUMN_BLOCK})"):
                    _column_block(w, ctx, layer, COLUMN_BLOCK, x_col, store, "c", step)
            if last:
                with w.block(""):
                    _column_block(w, ctx, layer, last, x_col, store, str(cols - last), step)
            return
        per = 2 if b == 2 else 1  # columns per block
        with w.block(f"for (c = 0; c + {per - 1} < {cols}; c += {per})"):
            _column_block(w, ctx, layer, per, x_col, store, "c", step)
        if per == 2 and cols % 2:
            with w.block(""):
                _column_block(w, ctx, layer, 1, x_col, store, f"{cols - 1}", step)


def _unpack_row(w: CWriter, layer: DspLayer, row: str, dst: str) -> None:
    """Row `row` of the sub-byte words (pack_sub_byte_rows) into kp int8 at `dst`: per field
    of a word, (field + 0x80 − offset) ^ 0x80 in every byte is the code as an int8 (the add
    never carries into the next byte: a field is at most 15 + 0x80)."""
    per = 8 // layer.bits
    count = layer.kp * layer.bits // 32
    mask = int("".join(["%02X" % ((1 << layer.bits) - 1)] * 4), 16)
    # a sign bit s is the int8 2s − 1: (2s + 0x7F) ^ 0x80
    add = 0x7F7F7F7F if layer.bits == 1 else (0x80 - layer.offset) * 0x01010101
    double = " << 1" if layer.bits == 1 else ""
    with w.block(""):
        w.line(f"const uint32_t *const src = {layer.cname} + {row} * {count};")
        w.line(f"uint32_t *const out = (uint32_t *)(void *){dst};")
        w.line("int32_t i;")
        with w.block(f"for (i = 0; i < {count}; ++i)"):
            w.line("const uint32_t v = src[i];")
            for j in range(per):
                field = f"(v >> {layer.bits * j})" if j else "v"
                w.line(f"out[{per} * i + {j}] = ((({field} & 0x{mask:08X}u){double}) + "
                       f"0x{add:08X}u) ^ 0x80808080u;")
        if layer.bits == 1:  # signs have no zero: the padding taps past k are cleared here
            for g in range(layer.k // DSP_GROUP, layer.kp // DSP_GROUP):
                keep = [t < layer.k for t in range(g * DSP_GROUP, (g + 1) * DSP_GROUP)]
                bytes_kept = [keep[0], keep[2], keep[1], keep[3]]  # stored t0 t2 t1 t3
                word = sum(0xFF << (8 * j) for j, kept in enumerate(bytes_kept) if kept)
                w.line(f"out[{g}] &= 0x{word:08X}u;" if word else f"out[{g}] = 0u;")


def emit_byte_rows(w: CWriter, ctx, layer: DspLayer, x_t: str,
                   store: Callable[[str, str, str], str]) -> None:
    """A Gemm of one 8-bit input row (layer.byte_x) without the int16 copy: per word of four
    activations, one LDR and two UXTB16 (SXTB16 for int8) give the pairs (x0, x2), (x1, x3),
    then per weight row of the block one LDR, two SXTB16 and two SMLAD: 3 + 5·rows
    instructions per 4·rows MACs, where widening the row first costs ~2.5 instructions per
    activation, which few weight rows do not repay."""
    b, rt = layer.block, ctx.rt
    ext = "uxtb16" if x_t == "uint8_t" else "sxtb16"
    w.line(f"const int8_t *wp = {layer.cname};")
    w.line("int32_t oc;")
    with w.block(f"for (oc = 0; oc < {layer.rows}; oc += {b}, wp += {b * layer.kp})"):
        w.line(f"int32_t {', '.join(f'a{r}0 = {layer.cname}_init[{_row(r)}]' for r in range(b))};")
        for r in range(b):
            layer.req.declare(w, _row(r), str(r))
        w.line(f"const {x_t} *xq = x0;")
        w.line("const int8_t *wq = wp;")
        words = layer.kp // DSP_GROUP
        w.directive("#if defined(__ARM_FEATURE_DSP) && defined(__GNUC__)")
        per_trip = 4 if words % 4 == 0 else 2
        looped = words > per_trip
        text = ["1:"] if looped else []
        for _ in range(per_trip):
            text += ["ldr %[x], [%[xq]], #4", f"{ext} %[e], %[x]", f"{ext} %[x], %[x], ror #8"]
            for r in range(b):
                text += ["ldr %[w], [%[wq]], #4", "sxtb16 %[t], %[w]",
                         f"smlad %[a{r}0], %[t], %[e], %[a{r}0]", "sxtb16 %[t], %[w], ror #8",
                         f"smlad %[a{r}0], %[t], %[x], %[a{r}0]"]
        if looped:
            text += ["subs %[n], %[n], #1", "bne 1b"]
        count = f"n = {words // per_trip}, " if looped else ""
        w.line(f"uint32_t {count}r_x, r_e, r_w, r_t;")
        outs = [f'[a{r}0] "+r"(a{r}0)' for r in range(b)] + ['[xq] "+r"(xq)', '[wq] "+r"(wq)']
        outs += ['[n] "+r"(n)'] if looped else []
        outs += [f'[{v}] "=&r"(r_{v})' for v in ("x", "e", "w", "t")]
        _asm_statement(w, text, outs, looped)
        w.directive("#else")
        with w.block(f"for (int32_t g = 0; g < {words}; ++g)"):
            w.line(f"const uint32_t x = {rt}dsp_load32(xq + {DSP_GROUP} * g);")
            w.line(f"const uint32_t e = {rt}dsp_{ext}(x), o = {rt}dsp_{ext}_ror8(x);")
            for r in range(b):
                w.line(f"const uint32_t w{r} = {rt}dsp_load32(wq + {DSP_GROUP} * ({b} * g + {r}));")
                w.line(f"a{r}0 = {rt}dsp_smlad({rt}dsp_sxtb16(w{r}), e, a{r}0);")
                w.line(f"a{r}0 = {rt}dsp_smlad({rt}dsp_sxtb16_ror8(w{r}), o, a{r}0);")
        w.directive("#endif")
        padded_rows = layer.rows % b != 0
        for r in range(b):
            if r and padded_rows:
                w.line(f"if (oc + {r} < {layer.rows}) {{")
                w.depth += 1
            w.line(store(f"({_row(r)})", "0", layer.req.expr(f"a{r}0", str(r), rt)))
            if r and padded_rows:
                w.depth -= 1
                w.line("}")


def _last_columns(cols: int, step: int) -> int:
    """The columns a one-row block takes after the blocks of four: cols % 4, or five where
    one would be left alone (a lone column costs 6 instructions per 4 MACs, a block of five
    18 per 20 on 12 registers) and one pointer reaches all five."""
    last = cols % COLUMN_BLOCK
    if last == 1 and cols > COLUMN_BLOCK and COLUMN_BLOCK * 2 * step - 8 <= LDRD_REACH:
        last += COLUMN_BLOCK
    return last


def _row(r: int) -> str:
    return f"oc + {r}" if r else "oc"


def _column_block(w: CWriter, ctx, layer: DspLayer, ncols: int, x_col: Callable[[str], str],
                  store: Callable[[str, str, str], str], col: str, step: int) -> None:
    """One block: `b` rows times `ncols` columns (the second column `step` int16 after the
    first), the taps' loop in Thumb-2 assembly where gcc targets the DSP extension (its
    register allocation at -Os reloads the activation pairs per row), else in C on the
    portable twins of qcc_dsp.h; both compute the same sums."""
    rt, b = ctx.rt, layer.block
    cols = [col] + [f"{col} + {c}" for c in range(1, ncols)]
    accs = [[f"a{r}{c}" for c in range(ncols)] for r in range(b)]
    w.line(f"const int16_t *z0 = {x_col(cols[0])};")
    w.line(f"int32_t {', '.join(f'{a} = i{r}' for r in range(b) for a in accs[r])};")
    w.line("const int8_t *wq = wp;")
    trips = layer.kp // (2 * DSP_GROUP)
    w.directive("#if defined(__ARM_FEATURE_DSP) && defined(__GNUC__)")
    if b == 1:
        _asm_columns(w, ncols, 2 * step, layer.kp // DSP_GROUP)
    else:
        _asm_loop(w, b, ncols, 2 * step, layer.kp // DSP_GROUP)
    w.directive("#else")
    for c in range(1, ncols):
        w.line(f"const int16_t *z{c} = z0 + {c * step};")
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


def column_block_fits(step: int) -> bool:
    """Whether the one-row blocks can address COLUMN_BLOCK columns `step` int16 apart from
    two pointers (LDRD offsets reach ±1020 bytes)."""
    return (COLUMN_BLOCK // 2 - 1) * 2 * step - 8 <= LDRD_REACH


def _asm_columns(w: CWriter, ncols: int, step_bytes: int, words: int) -> None:
    """One weight row times `ncols` columns as one asm statement: per word of four taps, the
    row's word and its two SXTB16 pairs once, then per column one LDRD of its activation pairs
    (two LDR where the column is not word-aligned) and two SMLAD: 3 + 3·ncols instructions
    per 4·ncols MACs (15 per 16 for four columns, where two rows times two columns take 17).
    Columns past LDRD's reach take a second pointer; UNROLL_WORDS words per loop trip,
    straight code where that is all of them."""
    per_trip = UNROLL_WORDS if words % UNROLL_WORDS == 0 else 2
    looped = words > per_trip
    split = ncols if (ncols - 1) * step_bytes - 8 <= LDRD_REACH else ncols // 2
    text = ["1:"] if looped else []
    for _ in range(per_trip):
        text += ["ldr %[w], [%[wq]], #4", "sxtb16 %[t], %[w]", "sxtb16 %[w], %[w], ror #8"]
        for c in range(ncols):
            base, first = ("z", 0) if c < split else ("z2", split)
            aligned = c * step_bytes % 4 == 0  # LDRD takes word-aligned addresses only
            if c == first:  # the pointer moves on to the next word
                load = ([f"ldrd %[x0], %[x1], [%[{base}]], #8"] if aligned else
                        [f"ldr %[x0], [%[{base}]], #8", f"ldr %[x1], [%[{base}], #-4]"])
            else:
                at = (c - first) * step_bytes - 8
                load = ([f"ldrd %[x0], %[x1], [%[{base}], #{at}]"] if aligned and at % 4 == 0
                        else [f"ldr %[x0], [%[{base}], #{at}]",
                              f"ldr %[x1], [%[{base}], #{at + 4}]"])
            text += load + [f"smlad %[a0{c}], %[t], %[x0], %[a0{c}]",
                            f"smlad %[a0{c}], %[w], %[x1], %[a0{c}]"]
    if looped:
        text += ["subs %[n], %[n], #1", "bne 1b"]
    pointers = ["z"] + (["z2"] if split < ncols else [])
    if split < ncols:
        w.line(f"const int16_t *z2 = z0 + {split * step_bytes // 2};")
    count = f"n = {words // per_trip}, " if looped else ""
    w.line(f"uint32_t {count}r_w, r_t, r_x0, r_x1;")
    outs = [f'[a0{c}] "+r"(a0{c})' for c in range(ncols)]
    outs += ['[wq] "+r"(wq)'] + [f'[{p}] "+r"({"z0" if p == "z" else p})' for p in pointers]
    outs += ['[n] "+r"(n)'] if looped else []
    outs += [f'[{v}] "=&r"(r_{v})' for v in ("w", "t", "x0", "x1")]
    _asm_statement(w, text, outs, looped)


def _asm_loop(w: CWriter, b: int, ncols: int, step_bytes: int, words: int) -> None:
    """The taps' loop as one asm statement: per word of four taps, the activation pairs once
    (LDRD where the column is word-aligned: the first of two columns, at an even column of
    an aligned strip), then per row one weight word, two SXTB16 and an SMLAD per column and
    pair. `words` (even) words of taps, four per loop trip where they divide (the SUBS / BNE
    pair over 64 MACs of a 2 x 2 block instead of 32), straight code for two words."""
    per_trip = 4 if words % 4 == 0 else 2
    looped = words > per_trip
    text = ["1:"] if looped else []
    for _ in range(per_trip):
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
    if looped:
        text += ["subs %[n], %[n], #1", "bne 1b"]
    temps = ["w", "t", "x0", "x1"] + (["y0", "y1"] if ncols == 2 else [])
    count = f"n = {words // per_trip}, " if looped else ""
    w.line(f"uint32_t {count}{', '.join(f'r_{v}' for v in temps)};")
    outs = [f'[a{r}{c}] "+r"(a{r}{c})' for r in range(b) for c in range(ncols)]
    outs += ['[wq] "+r"(wq)', '[z] "+r"(z0)'] + (['[n] "+r"(n)'] if looped else [])
    outs += [f'[{v}] "=&r"(r_{v})' for v in temps]
    _asm_statement(w, text, outs, looped)


def _asm_statement(w: CWriter, text: list[str], outs: list[str], looped: bool) -> None:
    """One GCC extended-asm statement: the instructions, the read-write and scratch operands
    four to a line, no inputs; a looped body also clobbers the flags (subs/bne)."""
    w.line("__asm__(")
    w.depth += 1
    for line in text:
        w.line(f'"{line}\\n\\t"')
    w.line(": " + ", ".join(outs[:4]))
    for i in range(4, len(outs), 4):
        w.line("  , " + ", ".join(outs[i:i + 4]))
    w.line(":")
    w.line(': "cc", "memory");' if looped else ': "memory");')
    w.depth -= 1
