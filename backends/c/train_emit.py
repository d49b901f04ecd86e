"""The C side of the fixed-point train step: `<name>_train.[ch]` for `--train --target c`.

The emitted file mirrors backends/numpy_int/train_step.py (the specification) bit for bit:
its own forward over the integer graph that keeps every tensor (static buffers sized for the
compiled batch), the Q.24 softmax cross-entropy gradient, the backward in
program.backward_nodes order (with --grad-ternary S: S stochastic ternarizations of each
trained layer's G_A, seeds/000 Algorithm 1) and the updates (fx, bc, sr, r; fixed-point or
binary ±α weights), with the arithmetic in backends/c/runtime/qcc_train.h (copied as
`<name>_train_rt.h`). Trainable weight and bias codes, accumulators, master biases and the
PRNG position live in static RAM, initialised from the compiled state (no malloc). Gradient
buffers are int32_t when `gradient_bound` proves every value fits, else int64_t.

API (<name>_train.h):
    int <name>_train_step(const <in_t> *x, const int32_t *labels, int batch);
    int <name>_export_weights(int32_t *out, int32_t size);  `export_layout` order: weights,
        biases, accumulators, master biases per trained layer, then the PRNG and step count
    int <name>_train_logits(int32_t *out, int32_t size);    the last step's logits codes
Errors: <NAME>_TRAIN_ERR_NULL, _ERR_BATCH (batch < 1 or above the compiled one),
_ERR_LABEL (a label outside 0 .. classes - 1), _ERR_SIZE (an output array too small);
nothing changes when a call refuses.

Supported (refused otherwise with a QccError): QConv (group 1) / QGemm (transB) with input
zero point 0 and multiplier-and-shift requantization, MaxPool without padding, Relu and the
reshapes (Flatten, Reshape, Squeeze, Unsqueeze, Identity, Dropout); every tensor read by one
node.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backends.c.build import arm_object_size
from backends.c.emit import c_identifier, split_edges
from backends.c.library import SUMMARY
from backends.c.tensors import analyse
from backends.c.writer import CWriter
from backends.numpy_int.train_step import TrainState
from backends.numpy_int.training.softmax_ce import EXP2_LUT
from passes.training_program import (
    WEIGHTED_INT,
    GradRep,
    LayerProgram,
    TrainingProgram,
    backward_rep,
)
from qcc.errors import QccError
from qcc.ir import Graph, Node
from qcc.numerics.rounding import int_range

RUNTIME = Path(__file__).parent / "runtime" / "qcc_train.h"
HARNESS = Path(__file__).parent / "runtime" / "train_harness.c"
RESHAPES = ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Dropout")
RULE_CHAR = {"fx": "f", "bc": "b", "sr": "s", "r": "r"}
CTYPE_BYTES = {"int32_t": 4, "int64_t": 8, "qt_grad": 0}  # qt_grad: the chosen gradient type
INT32_LIMIT = 1 << 31
SCALAR_BYTES = 20  # rng (8), steps, clipped, last_batch


@dataclass(frozen=True)
class ExportEntry:
    """One array <name>_export_weights writes: `kind` weight | bias | acc | bias_master | rng."""

    layer: str
    kind: str
    size: int


def export_layout(program: TrainingProgram) -> list[ExportEntry]:
    """The order <name>_export_weights writes: per trained layer (graph order) weight codes,
    bias codes, accumulator (fx / bc), master bias; then rng seed, rng counter, step."""
    entries = []
    for layer in program.trained:
        size = int(np.prod(layer.weight_shape))
        entries.append(ExportEntry(layer.name, "weight", size))
        if layer.bias is not None:
            entries.append(ExportEntry(layer.name, "bias", layer.out_channels))
        if layer.update in ("fx", "bc"):
            entries.append(ExportEntry(layer.name, "acc", size))
        if layer.bias is not None:
            entries.append(ExportEntry(layer.name, "bias_master", layer.out_channels))
    entries.append(ExportEntry("", "rng", 3))
    return entries


def unpack_export(program: TrainingProgram, flat: np.ndarray) -> dict[str, np.ndarray]:
    """<name>_export_weights' int32 array as {"<kind>.<layer>": array, "rng": [seed, counter,
    step]}."""
    out, at = {}, 0
    for e in export_layout(program):
        part = flat[at:at + e.size].astype(np.int64)
        out["rng" if e.kind == "rng" else f"{e.kind}.{e.layer}"] = part
        at += e.size
    return out


def _check(program: TrainingProgram, integer: Graph) -> None:
    if program.options.grad_ternary:
        for layer in program.trained:
            if layer.ga_bits > 31:  # binary.stochastic_ternarize needs |G_A| < 2^31
                raise QccError(f"--grad-ternary needs B_GA <= 31 ({layer.name!r} has "
                               f"{layer.ga_bits})")
    for node in integer.nodes:
        if node.op_type in ("Quantize", "Dequantize"):
            continue
        if node.op_type in WEIGHTED_INT:
            a = node.attrs
            if int(a.get("x_zero_point", 0)) or a.get("dot") == "xnor" or \
                    int(a.get("group", 1)) != 1 or a.get("auto_pad", "NOTSET") != "NOTSET":
                raise QccError(f"the C train step cannot run layer {node.name!r} "
                               "(zero point, xnor, groups or auto_pad)")
            if node.op_type == "QGemm" and not int(a.get("transB", 0)):
                raise QccError(f"the C train step needs QGemm with transB ({node.name!r})")
        elif node.op_type == "MaxPool":
            if any(node.attrs.get("pads", [0])) or node.attrs.get("ceil_mode", 0):
                raise QccError(f"the C train step needs MaxPool without padding ({node.name})")
        elif node.op_type not in RESHAPES + ("Relu",):
            raise QccError(f"the C train step cannot run {node.op_type} ({node.name!r})")
        for v in node.outputs:
            if len(v.consumers) > 1:
                raise QccError(f"the C train step needs every tensor read once ({v.name!r})")


def _code_bound(integer: Graph, value: str) -> int:
    """max |code| of an activation tensor (its format's range; 2^31 without one)."""
    spec = integer.values[value].quant
    if spec is None:
        return INT32_LIMIT
    lo, hi = int_range(spec.bits, spec.signed)
    return max(-lo, hi)


def gradient_bound(integer: Graph, program: TrainingProgram) -> int:
    """An upper bound of |v| over every value a gradient buffer of the C step ever holds,
    transients included (the in-place left shift of a rounding, partial sums), following
    train_step.backward with the compiled batch: the CE seed is at most 2^24; a layer's
    rounded G_A 2^(B_GA-1), its G_W 2^(B_GW-1); the exact weight gradient sums batch ·
    positions (· S) products |G_A|·|A|; the input gradient fan-out · |W| · |G_A| (· α_mult);
    a MaxPool input gets at most one gradient per window covering it."""
    n, samples = program.options.batch, max(program.options.grad_ternary, 1)
    layers = {layer.name: layer for layer in program.layers}
    pending = {program.logits: (1 << 24, program.reps[program.logits])}
    worst = 1 << 24
    for name in program.backward_nodes:
        node = integer.node(name)
        incoming, rep = pending.pop(node.outputs[0].name)
        x = node.inputs[0].name
        if node.op_type in WEIGHTED_INT:
            layer = layers[name]
            worst = max(worst, incoming << max(0, rep.exp - layer.ga_exp))
            ga = 1 << (layer.ga_bits - 1)
            out = program.shapes[layer.output]
            if layer.trainable:
                positions = int(np.prod(out)) // layer.out_channels
                exact = samples * n * positions * ga * _code_bound(integer, x)
                shift = layer.ga_exp + layer.x_exp - layer.gw_exp
                worst = max(worst, exact << max(0, shift), 1 << (layer.gw_bits - 1))
            if not layer.propagate:
                continue
            taps = layer.out_channels * int(np.prod(layer.weight_shape[2:]))
            w = max(layer.alpha_mult) if layer.binary else max(-layer.w_lo, layer.w_hi)
            flows = (taps * w * ga, layer.dx_rep)
        else:
            overlap = 1
            if node.op_type == "MaxPool":
                k, st = node.attrs["kernel_shape"], node.attrs.get("strides", [1, 1])
                overlap = int(np.prod([-(-a // b) for a, b in zip(k, st)]))
            flows = (incoming * overlap, backward_rep(node, rep, program.shapes))
        worst = max(worst, flows[0])
        if x in program.reps:
            pending[x] = flows
    return worst


class _Emitter:
    """Builds <name>_train.c: buffers, forward, backward and update of one step."""

    def __init__(self, integer: Graph, program: TrainingProgram, state: TrainState,
                 name: str) -> None:
        self.g, self.p, self.state, self.name = integer, program, state, name
        self.N = program.options.batch
        self.buf: dict[str, str] = {}  # value name -> activation buffer (int32)
        self.gbuf: dict[str, str] = {}  # value name -> gradient buffer (qt_grad)
        self.grad_bits = 32 if gradient_bound(integer, program) < INT32_LIMIT else 64
        self.ram: dict[str, int] = {}  # static arrays in RAM: name -> bytes
        self.layers = {layer.name: layer for layer in program.layers}
        self.decl = CWriter()
        self.sizes: dict[str, int] = {v: int(np.prod(s)) for v, s in program.shapes.items()}
        self.ids: dict[str, str] = {}
        self.geoms: set[str] = set()  # qt_conv constants declared so far

    def cid(self, value: str) -> str:
        return self.ids.setdefault(value, f"t{len(self.ids)}")

    # -- declarations ------------------------------------------------------------------------
    def array(self, ctype: str, cname: str, values: list[int] | None, size: int = 0,
              const: bool = False) -> str:
        if not const:
            count = max(size if values is None else len(values), 1)
            self.ram[cname] = count * (CTYPE_BYTES[ctype] or self.grad_bits // 8)
        if values is None:
            self.decl.line(f"static {ctype} {cname}[{max(size, 1)}];")
        else:
            head = f"static {'const ' if const else ''}{ctype} {cname}[{max(len(values), 1)}]"
            self.decl.array(head, [int(v) for v in values] or [0])
        return cname

    def geometry(self, node: Node) -> str:
        """A qt_conv for a QConv / QGemm / MaxPool node from its per-sample shapes."""
        x = self.p.shapes[node.inputs[0].name]
        y = self.p.shapes[node.outputs[0].name]
        a = node.attrs
        if node.op_type == "QGemm":
            vals = [x[-1], 1, 1, y[-1], 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]
        else:
            k = list(a["kernel_shape"]) if "kernel_shape" in a else \
                list(node.inputs[1].shape[2:])
            st = list(a.get("strides", [1, 1]))
            dl = list(a.get("dilations", [1, 1]))
            pads = list(a.get("pads", [0, 0, 0, 0]))
            if len(x) != 3:
                raise QccError(f"the C train step handles 2-D windows only ({node.name!r})")
            vals = [x[0], x[1], x[2], y[0], y[1], y[2], *k, *st, *dl, pads[0], pads[1]]
        cname = f"geom_{c_identifier(node.name)}"
        if cname in self.geoms:
            return cname
        self.geoms.add(cname)
        self.decl.line(f"static const qt_conv {cname} = {{{', '.join(map(str, vals))}}};")
        return cname

    def activation(self, value: str) -> str:
        if value not in self.buf:
            self.buf[value] = self.array("int32_t", f"a_{self.cid(value)}", None,
                                         self.N * self.sizes[value])
        return self.buf[value]

    def gradient(self, value: str) -> str:
        if value not in self.gbuf:
            self.gbuf[value] = self.array("qt_grad", f"g_{self.cid(value)}", None,
                                          self.N * self.sizes[value])
        return self.gbuf[value]

    # -- forward -----------------------------------------------------------------------------
    def forward(self, w: CWriter) -> None:
        for node in self.g.nodes:
            op = node.op_type
            if op in ("Quantize", "Dequantize"):
                continue
            x, y = node.inputs[0].name, node.outputs[0].name
            if op in RESHAPES:
                self.buf[y] = self.activation(x)  # same elements, same order
                continue
            xb, yb = self.activation(x), self.activation(y)
            if op == "Relu":
                with w.block(f"for (i = 0; i < batch * {self.sizes[y]}; ++i)"):
                    w.line(f"{yb}[i] = {xb}[i] > 0 ? {xb}[i] : 0;")
            elif op == "MaxPool":
                geom = self.geometry(node)
                w.line(f"qt_maxpool(&{geom}, batch * {self.p.shapes[x][0]}, {xb}, {yb}, 0, 0);")
            else:
                self.weighted_forward(w, node, xb, yb)

    def weighted_forward(self, w: CWriter, node: Node, xb: str, yb: str) -> None:
        n = c_identifier(node.name)
        a = node.attrs
        m = int(node.inputs[1].const.shape[0])  # QConv, QGemm with transB (_check)
        wb = self.array("int32_t", f"w_{n}", list(node.inputs[1].const.ravel()))
        bb = "0"
        if node.input(2) is not None:
            bb = self.array("int32_t", f"b_{n}", list(node.inputs[2].const.ravel()))
        mult = np.broadcast_to(np.asarray(a.get("multiplier", 1), np.int64), (m,))
        shift = np.broadcast_to(np.asarray(a.get("shift", 0), np.int64), (m,))
        self.array("int32_t", f"mult_{n}", list(mult), const=True)
        self.array("int32_t", f"shift_{n}", list(shift), const=True)
        zp, lo, hi = int(a.get("out_zero_point", 0)), int(a["out_lo"]), int(a["out_hi"])
        floor_ = max(lo, zp) if a.get("relu", 0) else lo
        geom = self.geometry(node)
        w.line(f"qt_conv_forward(&{geom}, batch, {xb}, {wb}, {bb}, mult_{n}, shift_{n}, "
               f"{zp}, {floor_}, {hi}, {yb});")

    # -- backward ----------------------------------------------------------------------------
    def backward(self, w: CWriter) -> None:
        pending: dict[str, GradRep] = {self.p.logits: self.p.reps[self.p.logits]}
        for name in self.p.backward_nodes:
            node = self.g.node(name)
            out = node.outputs[0].name
            rep = pending.pop(out)
            if node.op_type in WEIGHTED_INT:
                layer = self.layers[name]
                self.weighted_backward(w, node, layer, rep)
                if not layer.propagate:
                    continue
                flows = layer.dx_rep
            else:
                flows = backward_rep(node, rep, self.p.shapes)
                self.pass_backward(w, node)
            x = node.inputs[0].name
            if x in self.p.reps:
                pending[x] = flows

    def pass_backward(self, w: CWriter, node: Node) -> None:
        x, y = node.inputs[0].name, node.outputs[0].name
        gy = self.gradient(y)
        if node.op_type in RESHAPES:
            self.gbuf[x] = gy
            return
        if node.op_type == "Relu":
            self.gbuf[x] = gy  # masked in place by input > 0
            with w.block(f"for (i = 0; i < batch * {self.sizes[x]}; ++i)"):
                w.line(f"if ({self.activation(x)}[i] <= 0) {gy}[i] = 0;")
            return
        geom = self.geometry(node)
        w.line(f"qt_maxpool(&{geom}, batch * {self.p.shapes[x][0]}, {self.activation(x)}, 0, "
               f"{gy}, {self.gradient(x)});")

    def weighted_backward(self, w: CWriter, node: Node, layer: LayerProgram,
                          rep: GradRep) -> None:
        """train_step._weighted_backward: mask, round and saturate G_A; G_W (exact, or from S
        ternarizations) rounded and saturated; the bias gradient; the input gradient."""
        n = c_identifier(node.name)
        ga = self.gradient(layer.output)
        count = f"batch * {self.sizes[layer.output]}"
        if layer.relu:
            with w.block(f"for (i = 0; i < {count}; ++i)"):
                w.line(f"if ({self.activation(layer.output)}[i] <= 0) {ga}[i] = 0;")
        w.line(f"qt_round_gradient({ga}, {count}, {rep.exp}, {rep.divisor}, "
               f"{int(rep.per_batch)}, {layer.ga_exp}, batch, &rng);")
        w.line(f"qt_saturate({ga}, {count}, {layer.ga_bits}, &clipped);")
        samples = self.p.options.grad_ternary if layer.trainable else 0
        tern, scale = "0", "tbp_s" if samples else "1"  # how the input gradient reads G_A
        with w.block(""):
            if samples:
                w.lines_of([f"const int64_t tbp_s = qt_absmax({ga}, {count});",
                            "const qt_tern tbp = {&rng, tbp_s};"])
            if samples and layer.propagate:  # t_1 · s flows on: sample 1 replayed from here
                w.lines_of(["qt_rng first = rng;", "const qt_tern tbp_first = {&first, tbp_s};"])
                tern = "&tbp_first"
            if layer.trainable:
                self.weight_gradient(w, node, layer, ga, count, samples)
            if layer.propagate:
                mult = "0"
                if layer.binary:
                    mult = self.array("int32_t", f"amult_{n}", list(layer.alpha_mult),
                                      const=True)
                w.line(f"qt_conv_input_grad(&geom_{n}, batch, w_{n}, {ga}, {tern}, {scale}, "
                       f"{mult}, {self.gradient(layer.input)});")

    def weight_gradient(self, w: CWriter, node: Node, layer: LayerProgram, ga: str,
                        count: str, samples: int) -> None:
        """train_step._weight_gradient and the bias gradient sum (exact, int64)."""
        n = c_identifier(node.name)
        size = int(np.prod(layer.weight_shape))
        gw = self.array("qt_grad", f"gw_{n}", None, size)
        xb = self.activation(layer.input)
        if samples:
            w.comment(f"seeds/000 Algorithm 1: G_W = s/{samples} sum of {samples} "
                      "ternarizations of G_A times A")
            with w.block(f"for (k = 0; k < {samples}; ++k)"):
                w.line(f"qt_conv_weight_grad(&geom_{n}, batch, {xb}, {ga}, &tbp, k > 0, {gw});")
            w.line(f"qt_scale({gw}, {size}, tbp_s);")
        else:
            w.line(f"qt_conv_weight_grad(&geom_{n}, batch, {xb}, {ga}, 0, 0, {gw});")
        w.line(f"qt_round_gradient({gw}, {size}, {layer.ga_exp + layer.x_exp}, "
               f"{max(samples, 1)}, 0, {layer.gw_exp}, 1, &rng);")
        w.line(f"qt_saturate({gw}, {size}, {layer.gw_bits}, &clipped);")
        if layer.bias is None:
            return
        gb = self.array("int64_t", f"gb_{n}", None, layer.out_channels)
        plane = self.sizes[layer.output] // layer.out_channels
        with w.block(f"for (i = 0; i < {layer.out_channels}; ++i)"):
            w.line(f"{gb}[i] = 0;")
        with w.block(f"for (i = 0; i < {count}; ++i)"):
            w.line(f"{gb}[(i / {plane}) % {layer.out_channels}] += {ga}[i];")

    # -- update ------------------------------------------------------------------------------
    def update(self, w: CWriter) -> None:
        lr = self.p.options.lr_exp
        for layer in self.p.trained:
            n = c_identifier(layer.name)
            size = int(np.prod(layer.weight_shape))
            ushift = lr + layer.gw_exp - layer.acc_exp
            if ushift < 0:
                raise QccError(f"layer {layer.name!r}: the learning rate is below what its "
                               "accumulator resolves (eq. 4)")
            acc = "0"
            if layer.update in ("fx", "bc"):
                acc = self.array("int32_t", f"acc_{n}", list(self.state.acc[layer.name].ravel()))
            rule = RULE_CHAR[layer.update]
            if layer.binary:
                alpha = self.array("int32_t", f"aacc_{n}", list(layer.alpha_acc), const=True)
                w.line(f"qt_update_binary('{rule}', {size}, {size // layer.out_channels}, w_{n}, "
                       f"{acc}, gw_{n}, {ushift}, {alpha}, &rng, &clipped);")
            else:
                w.line(f"qt_update_fixed('{rule}', {size}, w_{n}, {acc}, gw_{n}, {ushift}, "
                       f"{layer.acc_bits}, {layer.w_lo}, {layer.w_hi}, &rng, &clipped);")
            if layer.bias is not None:
                self.array("int32_t", f"bm_{n}", list(self.state.bias_master[layer.name]))
                self.array("int32_t", f"bmult_{n}", list(layer.bias_mult), const=True)
                self.array("int32_t", f"bshift_{n}", list(layer.bias_shift), const=True)
                w.line(f"qt_update_bias({layer.out_channels}, bm_{n}, b_{n}, gb_{n}, {ushift}, "
                       f"bmult_{n}, bshift_{n}, &clipped);")

    def export(self, w: CWriter) -> None:
        for e in export_layout(self.p):
            n = c_identifier(e.layer)
            if e.kind == "rng":
                w.lines_of(["out[at++] = (int32_t)rng.seed;", "out[at++] = (int32_t)rng.counter;",
                            "out[at++] = (int32_t)steps;"])
                continue
            prefix = {"weight": "w", "bias": "b", "acc": "acc", "bias_master": "bm"}[e.kind]
            with w.block(f"for (i = 0; i < {e.size}; ++i)"):
                w.line(f"out[at++] = {prefix}_{n}[i];")


@dataclass
class TrainSource:
    """The emitted train step: {file name: text}, the gradient type and the bytes of every
    static RAM array of <name>_train.c (what it adds to the inference library's RAM)."""

    files: dict[str, str]
    grad_ctype: str
    ram: dict[str, int]

    @property
    def ram_bytes(self) -> int:
        return sum(self.ram.values())


def emit_train(integer: Graph, program: TrainingProgram, state: TrainState, name: str,
               in_ctype: str) -> TrainSource:
    """The train step of `integer` (the compiled state's values) as C."""
    _check(program, integer)
    name = c_identifier(name)
    upper = name.upper()
    e = _Emitter(integer, program, state, name)
    fwd, bwd, upd, exp = CWriter(), CWriter(), CWriter(), CWriter()
    e.forward(fwd)
    logits = e.activation(program.logits)
    bwd.line(f"qt_grad *const seed = {e.gradient(program.logits)};")
    with bwd.block("for (i = 0; i < batch; ++i)"):
        bwd.line(f"qt_ce_gradient({logits} + i * {program.classes}, {program.classes}, "
                 f"{program.logits_exp}, labels[i], EXP2_LUT, seed + i * {program.classes});")
    e.backward(bwd)
    e.update(upd)
    e.export(exp)
    export_size = sum(s.size for s in export_layout(program))
    harness = HARNESS.read_text().replace("@NAME@", name).replace("@UPPER@", upper)
    files = {f"{name}_train.h": _header(name, upper, in_ctype, program, export_size),
             "train_harness.c": harness.replace("@INPUT_T@", in_ctype),
             f"{name}_train_rt.h": RUNTIME.read_text(),
             f"{name}_train.c": _source(e, name, upper, in_ctype, fwd, bwd, upd, exp,
                                        program)}
    ram = dict(e.ram, scalars=SCALAR_BYTES)
    return TrainSource(files, f"int{e.grad_bits}_t", ram)


def _header(name: str, upper: str, in_ctype: str, program: TrainingProgram,
            export_size: int) -> str:
    w = CWriter()
    w.comment(f"{name}_train.h: generated by qcc; the fixed-point train step of {name} "
              f"(update {program.options.update}, lr 2^{program.options.lr_exp}).")
    w.lines_of([f"#ifndef {upper}_TRAIN_H", f"#define {upper}_TRAIN_H", "",
                "#include <stdint.h>", "",
                f"#define {upper}_TRAIN_OK 0", f"#define {upper}_TRAIN_ERR_NULL -1",
                f"#define {upper}_TRAIN_ERR_BATCH -2", f"#define {upper}_TRAIN_ERR_LABEL -3",
                f"#define {upper}_TRAIN_ERR_SIZE -4",
                f"#define {upper}_TRAIN_MAX_BATCH {program.options.batch}",
                f"#define {upper}_TRAIN_CLASSES {program.classes}",
                f"#define {upper}_TRAIN_INPUT_SIZE {int(np.prod(program.shapes[program.input]))}",
                f"#define {upper}_TRAIN_EXPORT_SIZE {export_size}", "",
                f"typedef {in_ctype} {name}_train_input_t; /* the input codes */", "",
                f"int {name}_train_step(const {name}_train_input_t *x, const int32_t *labels, "
                "int batch);",
                f"int {name}_export_weights(int32_t *out, int32_t size);",
                f"int {name}_train_logits(int32_t *out, int32_t size);",
                f"uint32_t {name}_train_clipped(void);", "",
                f"#endif /* {upper}_TRAIN_H */"])
    return w.text()


def _source(e: _Emitter, name: str, upper: str, in_ctype: str, fwd: CWriter, bwd: CWriter,
            upd: CWriter, exp: CWriter, program: TrainingProgram) -> str:
    w = CWriter()
    w.comment(f"{name}_train.c: generated by qcc; do not edit. One fixed-point train step, the\n"
              "same bits as backends/numpy_int/train_step.py (its docstring is the spec).")
    w.lines_of(["#include <stddef.h>", "#include <stdint.h>", "", f'#include "{name}_train.h"'])
    w.directive(f"#define QT_GRAD_BITS {e.grad_bits} /* train_emit.gradient_bound */")
    w.lines_of([f'#include "{name}_train_rt.h"', ""])
    w.array("static const int64_t EXP2_LUT[257]", [int(v) for v in EXP2_LUT])
    w.line("")
    codes_in = split_edges(e.g).input_codes.name
    x_buf = e.activation(codes_in)
    w.lines_of(e.decl.lines)
    w.lines_of([f"static qt_rng rng = {{{e.state.rng.seed}u, {e.state.rng.counter}u}};",
                f"static uint32_t steps = {e.state.step}u;", "static uint32_t clipped = 0u;",
                "static int32_t last_batch = 0;", ""])
    size = e.sizes[codes_in]
    with w.block(f"int {name}_train_step(const {name}_train_input_t *x, "
                 "const int32_t *labels, int batch)"):
        w.line("int32_t i, k;" if program.options.grad_ternary else "int32_t i;")
        with w.block("if (x == NULL || labels == NULL)"):
            w.line(f"return {upper}_TRAIN_ERR_NULL;")
        with w.block(f"if (batch < 1 || batch > {upper}_TRAIN_MAX_BATCH)"):
            w.line(f"return {upper}_TRAIN_ERR_BATCH;")
        with w.block("for (i = 0; i < batch; ++i)"):
            with w.block(f"if (labels[i] < 0 || labels[i] >= {upper}_TRAIN_CLASSES)"):
                w.line(f"return {upper}_TRAIN_ERR_LABEL;")
        with w.block(f"for (i = 0; i < batch * {size}; ++i)"):
            w.line(f"{x_buf}[i] = (int32_t)x[i];")
        w.comment("1. forward, every tensor kept")
        w.lines_of(fwd.lines)
        w.comment("2. loss gradient (Q.24), 3. backward")
        w.lines_of(bwd.lines)
        w.comment("4. update, trained layers in graph order")
        w.lines_of(upd.lines)
        w.line("steps += 1u;")
        w.line("last_batch = batch;")
        w.line(f"return {upper}_TRAIN_OK;")
    w.line("")
    with w.block(f"int {name}_export_weights(int32_t *out, int32_t size)"):
        w.line("int32_t i, at = 0;")
        with w.block(f"if (out == NULL || size < {upper}_TRAIN_EXPORT_SIZE)"):
            w.line(f"return out == NULL ? {upper}_TRAIN_ERR_NULL : {upper}_TRAIN_ERR_SIZE;")
        w.lines_of(exp.lines)
        w.line("return at;")
    w.line("")
    logits = e.activation(program.logits)
    with w.block(f"int {name}_train_logits(int32_t *out, int32_t size)"):
        w.line("int32_t i;")
        with w.block(f"if (out == NULL || size < last_batch * {upper}_TRAIN_CLASSES)"):
            w.line(f"return out == NULL ? {upper}_TRAIN_ERR_NULL : {upper}_TRAIN_ERR_SIZE;")
        with w.block(f"for (i = 0; i < last_batch * {upper}_TRAIN_CLASSES; ++i)"):
            w.line(f"out[i] = {logits}[i];")
        w.line(f"return last_batch * {upper}_TRAIN_CLASSES;")
    w.line("")
    with w.block(f"uint32_t {name}_train_clipped(void)"):
        w.line("return clipped;")
    return w.text()


def write_train(outdir: Path, integer: Graph, program: TrainingProgram, state: TrainState,
                name: str, measure: bool = True) -> dict:
    """Write the train step files into `outdir` (next to the library) and return the training
    part of the compile summary, also added to OUTDIR/summary.json as "training": the batch,
    the gradient type, the static RAM arrays' bytes as emitted, and (`measure`, with
    arm-none-eabi-gcc) the Cortex-M4 -Os object's flash and RAM (data + bss)."""
    outdir = Path(outdir)
    in_ctype = analyse(integer)[split_edges(integer).input_codes.name].ctype
    source = emit_train(integer, program, state, name, in_ctype)
    for rel, text in source.files.items():
        (outdir / rel).write_text(text)
    o = program.options
    summary = {"batch": o.batch, "update": o.update, "grad_ternary": o.grad_ternary,
               "gradient_ctype": source.grad_ctype, "static_ram_bytes": source.ram_bytes,
               "files": sorted(source.files)}
    train_c = str(outdir / f"{c_identifier(name)}_train.c")
    summary.update(arm_object_size([train_c], outdir / "mcu") if measure else
                   {"flash_bytes": None, "ram_bytes": None, "note": "not measured"})
    path = outdir / SUMMARY
    if path.is_file():
        whole = json.loads(path.read_text())
        whole["training"] = summary
        path.write_text(json.dumps(whole, indent=2) + "\n")
    return summary
