"""The C side of the fixed-point train step: `<name>_train.[ch]` for `--train --target c`.

The emitted file mirrors backends/numpy_int/train_step.py (the specification) bit for bit:
its own forward over the integer graph (sample by sample: the frozen layers and every other
node through the inference library's kernels of backends/c/ops, the trained layers through
qcc_conv_forward on their RAM weights), the Q.24 softmax cross-entropy gradient, the backward
in program.backward_nodes order through each op's registered C emitter (backends/c/train_ops.py;
with --grad-ternary S: S stochastic ternarizations of each trained layer's G_A, seeds/000
Algorithm 1) and the updates (fx, bc, sr, r; fixed-point or binary ±α weights). The arithmetic
is the training section of the one runtime header (backends/c/runtime/qcc_runtime.h, copied as
`<name>_runtime.h`; <name>_train.c links with <name>_runtime.c). Trainable weight and bias
codes, accumulators, master biases and the PRNG position live in static RAM, initialised from
the compiled state (no malloc). Gradient buffers are int32_t when `gradient_bound` proves every
value fits, else int64_t.

API (<name>_train.h, documented there):
    int <name>_train_step(const <in_t> *x, const int32_t *labels, int batch);
    int <name>_export_weights(int32_t *out, int32_t size);  `export_layout` order
    int <name>_train_logits(int32_t *out, int32_t size);    the last step's logits codes
    uint32_t <name>_train_clipped(void);
Errors are positive, as the inference API's: <NAME>_TRAIN_ERR_NULL 1, _ERR_BATCH 2,
_ERR_LABEL 3, _ERR_SIZE 4; nothing changes when a call refuses.

Supported: every op NumPy training supports (passes/training_program.py), with 1-D and 2-D
windows.
Layers with sign activations (dot = "xnor") keep their ±1 weights also as packed sign rows
(`wb_<layer>`, repacked after each update) and run forward and backward through the qcc_xnor
kernels of the runtime header: XNOR-popcounts, sign selects and additions, no multiplier
(tests/backends/c/test_train_xnor.py checks the Cortex-M4 object code).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

import backends.c.train_ops  # noqa: F401  (registers every op's C backward: `c_train`)
from backends.c.build import arm_object_size
from backends.c.context import EmitContext
from backends.c.emit import c_identifier, node_identifiers, split_edges
from backends.c.library import SUMMARY
from backends.c.memory_plan import MemoryPlan, Slot, Storage, finish
from backends.c.ops import KernelPlan, kernel_for
from backends.c.tensors import analyse
from backends.c.train_ops import xnor_geometry, xnor_words
from backends.c.writer import CWriter
from passes.training_program import GradRep, TrainingProgram, TrainState, backward_rep
from qcc.core.errors import QccError
from qcc.core.ir import Graph, Node
from qcc.core.numerics.binary import pack_signs
from qcc.core.numerics.rounding import int_range
from qcc.core.numerics.softmax_ce import EXP2_LUT
from qcc.core.registry import training_lookup

HARNESS = Path(__file__).parent / "runtime" / "train_harness.c"
RULE_CHAR = {"fx": "f", "bc": "b", "sr": "s", "r": "r"}
CTYPE_BYTES = {"int8_t": 1, "uint8_t": 1, "int16_t": 2, "uint16_t": 2, "int32_t": 4,
               "uint32_t": 4, "int64_t": 8, "qcc_grad": 0}  # qcc_grad: the chosen type
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


def _check(program: TrainingProgram) -> None:
    for layer in program.trained:
        if layer.samples:
            if layer.ga_bits > 31:  # binary.stochastic_ternarize needs |G_A| < 2^31
                raise QccError(f"--grad-ternary needs B_GA <= 31 ({layer.name!r} has "
                               f"{layer.ga_bits})")


def _code_bound(integer: Graph, value: str) -> int:
    """max |code| of an activation tensor (its format's range; 2^31 without one)."""
    spec = integer.values[value].quant
    if spec is None:
        return INT32_LIMIT
    lo, hi = int_range(spec.bits, spec.signed)
    return max(-lo, hi)


def gradient_bound(integer: Graph, program: TrainingProgram) -> int:
    """An upper bound of |v| over every value a gradient buffer of the C step ever holds,
    transients included (the in-place left shift of a rounding, partial sums, the sum of two
    gradients meeting at one tensor), following train_step.backward with the compiled batch:
    the CE seed is at most 2^24; a layer's rounded G_A 2^(B_GA-1), its G_W 2^(B_GW-1); the
    exact weight gradient sums batch · positions (· S) products |G_A|·|A|; the input gradient
    fan-out · |W| · |G_A| (· α_mult); a pooled input gets at most one gradient per window
    covering it (the op's `growth`)."""
    n = program.options.batch
    layers = {layer.name: layer for layer in program.layers}
    pending = {program.logits: (1 << 24, program.reps[program.logits])}
    worst = 1 << 24
    for name in program.backward_nodes:
        node = integer.node(name)
        incoming, rep = pending.pop(node.outputs[0].name)
        if name in layers:
            layer = layers[name]
            worst = max(worst, incoming << max(0, rep.exp - layer.ga_exp))
            ga = 1 << (layer.ga_bits - 1)
            out = program.shapes[layer.output]
            if layer.trainable:
                positions = int(np.prod(out)) // layer.out_channels
                a = 1 if layer.xnor else _code_bound(integer, layer.input)  # sign: |a| = 1
                exact = max(layer.samples, 1) * n * positions * ga * a
                shift = layer.ga_exp + layer.x_exp - layer.gw_exp
                worst = max(worst, exact << max(0, shift), 1 << (layer.gw_bits - 1))
            if not layer.propagate:
                continue
            taps = layer.out_channels * int(np.prod(layer.weight_shape[2:]))
            w = max(layer.alpha_mult) if layer.binary else max(-layer.w_lo, layer.w_hi)
            flows = [(node.inputs[0], taps * w * ga, layer.dx_rep)]
        else:
            entry = training_lookup(node, "c_train")
            out_rep = backward_rep(node, rep, program.shapes)
            grown = incoming * entry.growth(None, node)  # type: ignore[attr-defined]
            flows = [(v, grown, out_rep) for v in node.inputs]
        for v, bound, out_rep in flows:
            if v is None or v.name not in program.reps:
                continue
            worst = max(worst, bound)
            if v.name in pending:  # two gradients meet: both shifted to the finer step
                old, old_rep = pending[v.name]
                exp = min(old_rep.exp, out_rep.exp)
                bound = (old << (old_rep.exp - exp)) + (bound << (out_rep.exp - exp))
                out_rep = replace(out_rep, exp=exp)
                worst = max(worst, bound)
            pending[v.name] = (bound, out_rep)
    return worst


class TrainEmitter:
    """Builds <name>_train.c. The forward runs sample by sample through the inference
    library's node kernels (backends/c/ops) on per-sample buffers of the tensors' own C types,
    except the trained layers (weights in RAM: qcc_conv_forward); the tensors the backward
    reads are kept for the whole batch as int32 (`wide`). The backward calls each op's
    registered C emitter (backends/c/train_ops.py) in program.backward_nodes order."""

    def __init__(self, integer: Graph, program: TrainingProgram, state: TrainState,
                 name: str) -> None:
        self.g, self.p, self.state, self.name = integer, program, state, name
        self.N = program.options.batch
        self.info = analyse(integer)
        self.ctx = EmitContext(integer, self.info, name)
        self.edges = split_edges(integer)
        self.node_ids = node_identifiers(self.edges.body)  # node name -> n<i>_<op>
        self.grad_bits = 32 if gradient_bound(integer, program) < INT32_LIMIT else 64
        self.ram: dict[str, int] = {}  # static arrays in RAM: name -> bytes
        self.layers = {layer.name: layer for layer in program.layers}
        self.trained = {layer.name for layer in program.trained}
        self.decl = CWriter()
        self.sizes: dict[str, int] = {v: int(np.prod(s)) for v, s in program.shapes.items()}
        self.ids: dict[str, str] = {}
        self.declared: set[str] = set()
        self.plans: dict[str, KernelPlan] = {}  # frozen nodes: their inference kernel's plan
        self.memory = MemoryPlan()  # the per-sample forward tensors' arena (plan_forward)
        self.wides: dict[str, str] = {}  # value -> batch buffer (int32) the backward reads
        self.grads: dict[str, int] = {}  # value -> gradient buffers made so far
        self.functions: list[tuple[str, CWriter]] = []  # frozen nodes' kernels (node, body)

    def cid(self, value: str) -> str:
        return self.ids.setdefault(value, f"t{len(self.ids)}")

    def rep(self, node: Node, rep: GradRep) -> GradRep:
        return backward_rep(node, rep, self.p.shapes)

    # -- declarations ------------------------------------------------------------------------
    def array(self, ctype: str, cname: str, values: list[int] | None, size: int = 0,
              const: bool = False) -> str:
        if cname in self.declared:
            return cname
        self.declared.add(cname)
        if not const:
            count = max(size if values is None else len(values), 1)
            self.ram[cname] = count * (CTYPE_BYTES[ctype] or self.grad_bits // 8)
        if values is None:
            self.decl.line(f"static {ctype} {cname}[{max(size, 1)}];")
        else:
            head = f"static {'const ' if const else ''}{ctype} {cname}[{max(len(values), 1)}]"
            self.decl.array(head, [int(v) for v in values] or [0])
        return cname

    def geometry(self, node: Node, fields: list[int]) -> str:
        """A qcc_conv constant for `node` (train_ops.window_geometry / gemm_geometry)."""
        cname = f"geom_{self.node_ids[node.name]}"
        if cname not in self.declared:
            self.declared.add(cname)
            self.decl.line(f"static const qcc_conv {cname} = {{{', '.join(map(str, fields))}}};")
        return cname

    def wide(self, value: str) -> str:
        """The whole batch of `value` as int32 (filled by the forward)."""
        if value not in self.wides:
            self.wides[value] = self.array("int32_t", f"a_{self.cid(value)}", None,
                                           self.N * self.sizes[value])
        return self.wides[value]

    def gradient_buffer(self, value: str) -> str:
        """A fresh gradient buffer for (one contribution to) `value`'s gradient."""
        k = self.grads.get(value, 0)
        self.grads[value] = k + 1
        return self.array("qcc_grad", f"g_{self.cid(value)}" + (f"_{k}" if k else ""), None,
                          self.N * self.sizes[value])

    def copy_gradient(self, w: CWriter, src: str, value: str) -> str:
        dst = self.gradient_buffer(value)
        with w.block(f"for (i = 0; i < batch * {self.sizes[value]}; ++i)"):
            w.line(f"{dst}[i] = {src}[i];")
        return dst

    def weights(self, node: Node) -> str:
        """The int32 weight codes of a layer: in RAM when trained, else constant."""
        n = self.node_ids[node.name]
        return self.array("int32_t", f"w_{n}", list(node.inputs[1].const.ravel()),
                          const=node.name not in self.trained)

    def bias(self, node: Node) -> str:
        """The int32 bias codes of a layer ("0" without one): in RAM when trained."""
        if node.input(2) is None:
            return "0"
        return self.array("int32_t", f"b_{self.node_ids[node.name]}",
                          list(node.inputs[2].const.ravel()),
                          const=node.name not in self.trained)

    def sign_rows(self, node: Node) -> str:
        """The ±1 weight rows of a layer with sign activations as packed sign bits
        (binary.pack_signs, xnor.py's layout): in RAM, repacked after every update, when
        trained, else constant."""
        n = self.node_ids[node.name]
        codes = node.inputs[1].const
        words = pack_signs(codes.reshape(codes.shape[0], -1).astype(np.int64)).ravel()
        return self.array("uint32_t", f"wb_{n}", [int(v) for v in words],
                          const=node.name not in self.trained)

    # -- forward -----------------------------------------------------------------------------
    def forward(self, w: CWriter) -> None:
        """Sample s of the batch through every node; the kept tensors widened into the batch
        buffers."""
        codes_in = self.edges.input_codes.name
        x_buf = self.typed(codes_in)
        w.line(f"const int32_t at_{self.cid(codes_in)} = s * {self.sizes[codes_in]};")
        with w.block(f"for (i = 0; i < {self.sizes[codes_in]}; ++i)"):
            w.line(f"{x_buf}[i] = x[at_{self.cid(codes_in)} + i];")
        self.widen(w, codes_in)
        for node in self.edges.body:
            if node.name in self.trained:
                self.trained_forward(w, node)
            else:
                self.kernel_forward(w, node)
            for v in node.outputs:
                if node.name not in self.trained:
                    self.widen(w, v.name)

    def plan_forward(self) -> None:
        """The inference kernels' plans and one arena for the per-sample tensors and scratch
        areas of the forward (backends/c/memory_plan.py: aliases, lifetimes, offsets)."""
        body = self.edges.body
        last: dict[str, int] = {}
        for i, node in enumerate(body):
            if node.name not in self.trained:
                self.ctx.functions[node.name] = self.node_ids[node.name]
                self.ctx.current = node.name
                self.plans[node.name] = kernel_for(node).plan(node, self.ctx)
            for v in node.inputs:
                if v is not None and not v.is_const:
                    last[v.name] = i
        codes_in = self.edges.input_codes.name
        slots = [Slot(codes_in, self.info[codes_in].nbytes, -1, last.get(codes_in, -1))]
        for i, node in enumerate(body):
            slots += [Slot(v.name, self.info[v.name].nbytes, i, last.get(v.name, i))
                      for v in node.outputs if v.name in self.info]
            plan = self.plans.get(node.name)
            slots += [Slot(f"{node.name}/s{k}", sc.nbytes, i, i)
                      for k, sc in enumerate(plan.scratch if plan else [])]
        storage = Storage(slots)
        for node in body:
            plan = self.plans.get(node.name)
            if plan is not None and plan.alias:
                live = [v for v in node.inputs if v is not None and not v.is_const]
                storage.alias(node.outputs[0].name, live[0].name)
        self.memory = finish(storage)
        if self.memory.arena_size:
            self.array("int64_t", "f_arena", None, -(-self.memory.arena_size // 8))

    def typed(self, value: str, ctype: str | None = None) -> str:
        """Where the forward keeps one sample of `value` (or a scratch area) in the arena."""
        ctype = ctype or self.info[value].ctype
        return f"(({ctype} *)(arena + {self.memory.where[value][1]}))"

    def widen(self, w: CWriter, value: str) -> None:
        if value in self.wides:
            with w.block(f"for (i = 0; i < {self.sizes[value]}; ++i)"):
                w.line(f"{self.wides[value]}[s * {self.sizes[value]} + i] = "
                       f"{self.typed(value)}[i];")

    def kernel_forward(self, w: CWriter, node: Node) -> None:
        """The inference library's kernel of `node` (backends/c/ops) as a static function."""
        ctx = self.ctx
        ctx.current = node.name
        kernel = kernel_for(node)
        plan = self.plans[node.name]
        live = [v for v in node.inputs if v is not None and not v.is_const]
        if plan.alias:
            return  # the output is the input's bytes (the arena aliases them)
        fn = ctx.functions[node.name]
        params = [f"const {ctx.t(v).ctype} *restrict x{k}" for k, v in enumerate(live)]
        params += [f"{ctx.t(v).ctype} *restrict y{k}" for k, v in enumerate(node.outputs)]
        params += [f"{sc.ctype} *restrict s{k}" for k, sc in enumerate(plan.scratch)]
        body = CWriter()
        body.comment(f"{node.op_type} {node.name!r} (frozen): {plan.note}")
        with body.block(f"static void {fn}({', '.join(params)})"):
            kernel.emit(node, ctx, body)
        self.functions.append((node.name, body))
        args = [self.typed(v.name) for v in live] + [self.typed(v.name) for v in node.outputs]
        args += [self.typed(f"{node.name}/s{k}", sc.ctype) for k, sc in enumerate(plan.scratch)]
        w.line(f"{fn}({', '.join(args)});")

    def trained_forward(self, w: CWriter, node: Node) -> None:
        """kernels.qconv / qgemm of a trained layer on the batch buffers (weights in RAM)."""
        n = self.node_ids[node.name]
        a = node.attrs
        layer = self.layers[node.name]
        x, y = node.inputs[0].name, node.outputs[0].name
        m = layer.out_channels
        wb, bb = self.weights(node), self.bias(node)
        mult = np.broadcast_to(np.asarray(a.get("multiplier", 1), np.int64), (m,))
        shift = np.broadcast_to(np.asarray(a.get("shift", 0), np.int64), (m,))
        self.array("int32_t", f"mult_{n}", list(mult), const=True)
        self.array("int32_t", f"shift_{n}", list(shift), const=True)
        zp, lo, hi = int(a.get("out_zero_point", 0)), int(a["out_lo"]), int(a["out_hi"])
        floor_ = max(lo, zp) if a.get("relu", 0) else lo
        xs, ys = self.sizes[x], self.sizes[y]
        if layer.xnor:  # XNOR-popcounts on the packed weight rows, then the requantization
            xgeom = xnor_geometry(self, node)
            patch = self.array("uint32_t", f"patch_{n}", None, 2 * xnor_words(node))
            acc = self.array("int32_t", f"xacc_{n}", None, ys)
            w.line(f"qcc_xnor_forward(&{xgeom}, 1, {self.wide(x)} + s * {xs}, "
                   f"{self.sign_rows(node)}, {patch}, {acc});")
            w.line(f"qcc_requantize_channels({acc}, 1, {m}, {ys // m}, {bb}, mult_{n}, "
                   f"shift_{n}, {zp}, {floor_}, {hi}, {self.wide(y)} + s * {ys});")
        else:
            geom = training_lookup(node, "c_train").geometry(self, node)  # type: ignore
            w.line(f"qcc_conv_forward(&{geom}, 1, {self.wide(x)} + s * {xs}, {wb}, {bb}, "
                   f"mult_{n}, shift_{n}, {zp}, {floor_}, {hi}, {self.wide(y)} + s * {ys});")
        out_t = self.info[y].ctype
        with w.block(f"for (i = 0; i < {ys}; ++i)"):
            w.line(f"{self.typed(y)}[i] = ({out_t}){self.wide(y)}[s * {ys} + i];")

    # -- backward ----------------------------------------------------------------------------
    def backward(self, w: CWriter) -> None:
        """Each node's registered C backward; contributions meeting at a tensor are summed at
        the finer step (train_step._accumulate)."""
        seed = self.gradient_buffer(self.p.logits)
        with w.block("for (i = 0; i < batch; ++i)"):
            w.line(f"qcc_ce_gradient({self.wide(self.p.logits)} + i * {self.p.classes}, "
                   f"{self.p.classes}, {self.p.logits_exp}, labels[i], EXP2_LUT, "
                   f"{seed} + i * {self.p.classes});")
        pending: dict[str, tuple[str, GradRep]] = {
            self.p.logits: (seed, self.p.reps[self.p.logits])}
        for name in self.p.backward_nodes:
            node = self.g.node(name)
            gy, rep = pending.pop(node.outputs[0].name)
            entry = training_lookup(node, "c_train")
            flows = entry.backward(self, w, node, gy, rep)  # type: ignore[attr-defined]
            for value, buf, out_rep in flows:
                if value.name not in self.p.reps:
                    continue
                if value.name not in pending:
                    pending[value.name] = (buf, out_rep)
                    continue
                old, old_rep = pending[value.name]
                exp = min(old_rep.exp, out_rep.exp)
                w.line(f"qcc_add_grad({old}, batch * {self.sizes[value.name]}, "
                       f"{old_rep.exp - exp}, {buf}, {out_rep.exp - exp});")
                pending[value.name] = (old, replace(out_rep, exp=exp))

    # -- update ------------------------------------------------------------------------------
    def update(self, w: CWriter) -> None:
        lr = self.p.options.lr_exp
        for layer in self.p.trained:
            n = self.node_ids[layer.name]
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
                w.line(f"qcc_update_binary('{rule}', {size}, {size // layer.out_channels}, "
                       f"w_{n}, {acc}, gw_{n}, {ushift}, {alpha}, &rng, &clipped);")
                if layer.xnor:
                    node = self.g.node(layer.name)
                    w.line(f"qcc_xnor_pack_weights(&{xnor_geometry(self, node)}, "
                           f"{layer.out_channels}, w_{n}, {self.sign_rows(node)});")
            else:
                w.line(f"qcc_update_fixed('{rule}', {size}, w_{n}, {acc}, gw_{n}, {ushift}, "
                       f"{layer.acc_bits}, {layer.w_lo}, {layer.w_hi}, &rng, &clipped);")
            if layer.bias is not None:
                self.array("int32_t", f"bm_{n}", list(self.state.bias_master[layer.name]))
                self.array("int32_t", f"bmult_{n}", list(layer.bias_mult), const=True)
                self.array("int32_t", f"bshift_{n}", list(layer.bias_shift), const=True)
                w.line(f"qcc_update_bias({layer.out_channels}, bm_{n}, b_{n}, gb_{n}, "
                       f"{ushift}, bmult_{n}, bshift_{n}, &clipped);")

    def export(self, w: CWriter) -> None:
        for e in export_layout(self.p):
            if e.kind == "rng":
                w.lines_of(["out[at++] = (int32_t)rng.seed;", "out[at++] = (int32_t)rng.counter;",
                            "out[at++] = (int32_t)steps;"])
                continue
            prefix = {"weight": "w", "bias": "b", "acc": "acc", "bias_master": "bm"}[e.kind]
            n = self.node_ids[e.layer]
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
    _check(program)
    name = c_identifier(name)
    upper = name.upper()
    e = TrainEmitter(integer, program, state, name)
    for layer in program.trained:  # the trained layers' forward reads and writes the batch
        e.wide(layer.input)
        e.wide(layer.output)
    e.wide(program.logits)
    fwd, bwd, upd, exp = CWriter(), CWriter(), CWriter(), CWriter()
    e.plan_forward()
    e.backward(bwd)  # first: it decides which tensors the forward keeps
    e.update(upd)
    e.forward(fwd)
    e.export(exp)
    export_size = sum(s.size for s in export_layout(program))
    harness = HARNESS.read_text().replace("@NAME@", name).replace("@UPPER@", upper)
    files = {f"{name}_train.h": _header(name, upper, in_ctype, program, export_size),
             "train_harness.c": harness.replace("@INPUT_T@", in_ctype),
             f"{name}_train.c": _source(e, name, upper, fwd, bwd, upd, exp, program)}
    ram = dict(e.ram, scalars=SCALAR_BYTES)
    return TrainSource(files, f"int{e.grad_bits}_t", ram)


def _header(name: str, upper: str, in_ctype: str, program: TrainingProgram,
            export_size: int) -> str:
    o = program.options
    w = CWriter()
    per_layer = ", ".join(f"{la.name} {la.samples}" for la in program.trained if la.samples)
    ternary = f", ternarized gradient samples per layer: {per_layer}" if per_layer else ""
    w.comment(f"{name}_train.h: generated by qcc; do not edit.\n"
              f"The fixed-point train step of {name} (update {o.update}, learning rate "
              f"2^{o.lr_exp}, batch up to {o.batch}{ternary}): forward, softmax cross-entropy "
              "gradient, backward and update in integers only, the same bits as qcc's NumPy "
              "train step. The trained weights, accumulators and PRNG live in static RAM (no "
              "malloc): the functions are not reentrant. Input codes are those of "
              f"{name}_quantize_input ({name}.h). Every function returns {upper}_TRAIN_OK (0) "
              "or a count, or a positive error code, and changes nothing when it refuses.")
    w.lines_of([f"#ifndef {upper}_TRAIN_H", f"#define {upper}_TRAIN_H", "",
                "#include <stdint.h>", "", "#ifdef __cplusplus", 'extern "C" {', "#endif", "",
                f"#define {upper}_TRAIN_OK 0",
                f"#define {upper}_TRAIN_ERR_NULL 1  /* a null pointer */",
                f"#define {upper}_TRAIN_ERR_BATCH 2  /* batch < 1 or above MAX_BATCH */",
                f"#define {upper}_TRAIN_ERR_LABEL 3  /* a label outside 0 .. CLASSES - 1 */",
                f"#define {upper}_TRAIN_ERR_SIZE 4  /* an output array too small */", "",
                f"#define {upper}_TRAIN_MAX_BATCH {o.batch}  /* the compiled --train-batch */",
                f"#define {upper}_TRAIN_CLASSES {program.classes}",
                f"#define {upper}_TRAIN_INPUT_SIZE {int(np.prod(program.shapes[program.input]))}"
                "  /* codes per sample */",
                f"#define {upper}_TRAIN_EXPORT_SIZE {export_size}  /* int32 values exported */",
                "", f"typedef {in_ctype} {name}_train_input_t; /* the input codes */", ""])
    for comment, decl in (
            (f"One training step on `batch` samples: x holds batch * {upper}_TRAIN_INPUT_SIZE "
             f"input codes (sample after sample), labels one class per sample. Returns {upper}"
             "_TRAIN_OK or ERR_NULL, ERR_BATCH, ERR_LABEL.",
             f"int {name}_train_step(const {name}_train_input_t *x, const int32_t *labels, "
             "int batch);"),
            (f"The training state into out (size >= {upper}_TRAIN_EXPORT_SIZE): per trained "
             "layer in graph order its weight codes, bias codes, accumulator (fx, bc) and "
             "master bias, then the PRNG seed, counter and step count. Returns the number "
             "written or ERR_NULL, ERR_SIZE.",
             f"int {name}_export_weights(int32_t *out, int32_t size);"),
            (f"The last step's logits codes (batch * {upper}_TRAIN_CLASSES, sample after "
             "sample) into out. Returns the number written or ERR_NULL, ERR_SIZE.",
             f"int {name}_train_logits(int32_t *out, int32_t size);"),
            ("Gradient, weight and bias values saturated so far (all steps).",
             f"uint32_t {name}_train_clipped(void);")):
        w.comment(comment)
        w.line(decl)
    w.lines_of(["", "#ifdef __cplusplus", "}", "#endif", "", f"#endif /* {upper}_TRAIN_H */"])
    return w.text()


def _source(e: TrainEmitter, name: str, upper: str, fwd: CWriter, bwd: CWriter,
            upd: CWriter, exp: CWriter, program: TrainingProgram) -> str:
    w = CWriter()
    w.comment(f"{name}_train.c: generated by qcc; do not edit. One fixed-point train step, the\n"
              "same bits as backends/numpy_int/train_step.py (its docstring is the spec).\n"
              f"Links with {name}_runtime.c; the frozen layers run the inference kernels.")
    w.lines_of(["#include <stddef.h>", "#include <stdint.h>", "", f'#include "{name}_train.h"'])
    w.directive(f"#define {upper}_GRAD_BITS {e.grad_bits} /* train_emit.gradient_bound */")
    w.lines_of([f'#include "{name}_runtime.h"', ""])
    w.lines_of([f"#ifndef {upper}_PATCH_BLOCK", "#if defined(__arm__) && !defined(__aarch64__)",
                f"#define {upper}_PATCH_BLOCK 4", "#else", f"#define {upper}_PATCH_BLOCK 8",
                "#endif", "#endif", ""])
    w.array("static const int64_t EXP2_LUT[257]", [int(v) for v in EXP2_LUT])
    w.line("")
    w.lines_of(e.decl.lines)
    w.line("")
    for node_name, body in e.functions:
        consts = e.ctx.constants.get(node_name)
        if consts is not None:
            w.lines_of(consts.lines)
        w.lines_of(body.text().rstrip("\n").split("\n"))
        w.line("")
    w.lines_of([f"static qcc_rng rng = {{{e.state.rng.seed}u, {e.state.rng.counter}u}};",
                f"static uint32_t steps = {e.state.step}u;", "static uint32_t clipped = 0u;",
                "static int32_t last_batch = 0;", ""])
    with w.block(f"int {name}_train_step(const {name}_train_input_t *x, "
                 "const int32_t *labels, int batch)"):
        w.line("int32_t i, s;" + (" int32_t k;" if program.options.ternary else ""))
        if e.memory.arena_size:
            w.line("uint8_t *const arena = (uint8_t *)f_arena;")
        with w.block("if (x == NULL || labels == NULL)"):
            w.line(f"return {upper}_TRAIN_ERR_NULL;")
        with w.block(f"if (batch < 1 || batch > {upper}_TRAIN_MAX_BATCH)"):
            w.line(f"return {upper}_TRAIN_ERR_BATCH;")
        with w.block("for (i = 0; i < batch; ++i)"):
            with w.block(f"if (labels[i] < 0 || labels[i] >= {upper}_TRAIN_CLASSES)"):
                w.line(f"return {upper}_TRAIN_ERR_LABEL;")
        w.comment("1. forward, sample by sample; the tensors the backward reads are kept")
        with w.block("for (s = 0; s < batch; ++s)"):
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
    logits = e.wide(program.logits)
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
    # the runtime is copied with its `qcc_` prefix renamed to the model's (library.py)
    return re.sub(r"\bqcc_", f"{name}_", w.text())


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
               "ternary_samples": {la.name: la.samples for la in program.trained if la.samples},
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
