"""The C emitter: an integer graph (passes/quantize_graph.py) -> a C99 library.

    graph --analyse--> tensors (shape, C type, code range)
          --kernels.plan--> scratch needs and legal sharing per node
          --memory_plan--> one static arena (aliases, in place, concat slices, greedy offsets)
          --kernels.emit--> <name>.c: weights, one static function per node, <name>_infer
          --header--> <name>.h: API, shapes, quantization of input and output, arena size

The graph's float edges stay out of <name>_infer: its qcc.Quantize becomes
<name>_quantize_input and its qcc.Dequantize <name>_dequantize_output, the only functions with
float code. Every public symbol starts with `<name>_`; everything else is static, and the
runtime is copied as <name>_runtime.[ch] with its prefix renamed, so several models link into
one firmware. No identifier comes from a model's names: a node's function and constants are
`n<index>_<op>...` (node_identifiers); its ONNX name appears in comments only, escaped by
backends/c/writer.py c_text like every other string taken from a model.
"""

from __future__ import annotations

import contextlib
import hashlib
import keyword
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from backends.c.context import EmitContext
from backends.c.memory_plan import MemoryPlan, Slot, Storage, finish, scratch_slot
from backends.c.ops import KernelPlan, kernel_for
from backends.c.ops.movement import concat_layout
from backends.c.ops.qlinear import edge_format
from backends.c.tensors import TensorInfo, analyse
from backends.c.writer import CWriter, c_comment
from qcc.core.errors import QccError
from qcc.core.ir import Graph, Node, Value
from qcc.core.registry import registered

C_KEYWORDS = {"auto", "break", "case", "char", "const", "continue", "default", "do", "double",
              "else", "enum", "extern", "float", "for", "goto", "if", "inline", "int", "long",
              "register", "restrict", "return", "short", "signed", "sizeof", "static",
              "struct", "switch", "typedef", "union", "unsigned", "void", "volatile", "while",
              "main", "harness"}  # harness.c is the host harness's file


MAX_PREFIX = 24  # characters of the model prefix: `<name>_dequantize_output` stays ~40


def c_identifier(name: str) -> str:
    """The model prefix of every public symbol, from the model's name (its file stem):
    lower-case ASCII letters, digits and `_` (`ResNet-8.v2` -> `resnet_8_v2`). A name longer
    than MAX_PREFIX keeps its first characters plus six hex digits of its SHA-256, so distinct
    long names stay distinct and a name always gives the same prefix."""
    ident = re.sub(r"[^0-9a-z_]+", "_", name.lower()).strip("_") or "model"
    if ident[0].isdigit():
        ident = "m_" + ident
    if ident in C_KEYWORDS or keyword.iskeyword(ident):
        ident += "_model"
    if len(ident) > MAX_PREFIX:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:6]
        ident = f"{ident[:MAX_PREFIX - 7].rstrip('_')}_{digest}"
    return ident


def node_identifiers(nodes: list[Node]) -> dict[str, str]:
    """Node name -> `n<index>_<op>` (`n12_qconv`): the stem of every C identifier made for a
    node (its function, its constants). Built from the node's position in `nodes` and its op
    type only, never from a model's names, so identifiers are short, stable across runs and
    distinct however the model names its nodes; the name appears in comments only, escaped by
    backends/c/writer.py c_text."""
    return {node.name: f"n{i}_{_op_identifier(node.op_type)}" for i, node in enumerate(nodes)}


def _op_identifier(op_type: str) -> str:
    return re.sub(r"[^0-9a-z]+", "", op_type.lower())[:20] or "op"


@dataclass
class NodeRecord:
    """One node of the emitted library, for the summary."""

    name: str
    op: str
    function: str | None  # None: a view or an in-place concat, no code
    note: str
    macs: int


@dataclass
class CSource:
    """The emitted library in memory: file name -> text, and what the summary reports."""

    name: str
    files: dict[str, str]
    memory: MemoryPlan
    weight_bytes: int
    constant_bytes: int
    macs: int
    nodes: list[NodeRecord] = field(default_factory=list)

    def summary(self) -> dict:
        return {"name": self.name, "arena_bytes": self.memory.arena_size,
                "arena_lower_bound": self.memory.lower_bound,
                "arena_lower_bound_unshared": self.memory.tensor_bound,
                "packed_weight_bytes": self.weight_bytes, "constant_bytes": self.constant_bytes,
                "macs": self.macs, "nodes": [asdict(n) for n in self.nodes]}


@dataclass
class Edges:
    """The float edges of the graph and the integer nodes between them."""

    quantize: Node
    dequantize: Node
    body: list[Node]

    @property
    def input_codes(self) -> Value:
        return self.quantize.outputs[0]

    @property
    def output_codes(self) -> Value:
        return self.dequantize.inputs[0]


def split_edges(graph: Graph) -> Edges:
    """Find the input Quantize and output Dequantize; refuse float code elsewhere."""
    inp, out = graph.inputs[0], graph.outputs[0]
    readers = [n for n in graph.nodes if inp in n.inputs]
    if len(readers) != 1 or _float_edge(readers[0]) != "quantize":
        raise QccError("the C backend needs the graph input read by one qcc.Quantize only")
    producer = out.producer
    if producer is None or _float_edge(producer) != "dequantize":
        op = producer.op_type if producer is not None else "nothing"
        raise QccError(f"the C backend emits the integer graph up to its qcc.Dequantize; the "
                       f"output {out.name!r} is made by {op} (float post-processing such as a "
                       "final Softmax stays outside the library)")
    body = [n for n in graph.nodes if n is not readers[0] and n is not producer]
    return Edges(readers[0], producer, body)


def refuse_float_body(edges: Edges, info: dict[str, TensorInfo]) -> None:
    """The library's body is integer: a node computing in float (e.g. a QDQ node unit that
    passes/fuse_qdq.py leaves to float) is refused, naming it."""
    for node in edges.body:
        for v in node.outputs:
            if v.name in info and info[v.name].dtype.kind == "f":
                raise QccError(f"the C backend runs integer ops only; node {node.name!r} "
                               f"({node.op_type}) computes in float")


def _float_edge(node: Node) -> str | None:
    entry = registered(node.op_type)
    return entry.float_edge if entry is not None else None


def emit_source(graph: Graph, name: str, source_model: str = "") -> CSource:
    """The library of `graph` as C source text (nothing is written)."""
    name = c_identifier(name)
    info = analyse(graph)
    edges = split_edges(graph)
    refuse_float_body(edges, info)
    ctx = EmitContext(graph, info, name)
    ctx.functions.update(node_identifiers(edges.body))
    plans: dict[str, KernelPlan] = {}
    for node in edges.body:
        ctx.current = node.name
        plans[node.name] = kernel_for(node).plan(node, ctx)
    storage = share_storage(edges, plans, ctx)
    memory = finish(storage)
    nodes, functions = _emit_functions(edges, plans, ctx)
    files = {
        f"{name}.c": _source(name, edges, ctx, memory, functions, plans, source_model),
        f"{name}.h": _header(name, edges, ctx, memory, source_model),
    }
    macs = sum(p.macs for p in plans.values())
    return CSource(name, files, memory, ctx.weight_bytes, ctx.constant_bytes, macs, nodes)


# -- storage ---------------------------------------------------------------------------------
def _live_inputs(node: Node) -> list[Value]:
    return [v for v in node.inputs if v is not None and not v.is_const]


def share_storage(edges: Edges, plans: dict[str, KernelPlan], ctx: EmitContext) -> Storage:
    """Slots with lifetimes, then the aliases, in-place writes and concat slices that hold."""
    body, steps = edges.body, len(edges.body)
    last: dict[str, int] = {}
    for i, node in enumerate(body):
        for v in _live_inputs(node):
            last[v.name] = i
    out_name = edges.output_codes.name
    last[out_name] = steps
    slots = [Slot(edges.input_codes.name, ctx.info[edges.input_codes.name].nbytes, -1,
                  last.get(edges.input_codes.name, -1))]
    for i, node in enumerate(body):
        for v in node.outputs:
            if v.name in ctx.info:
                slots.append(Slot(v.name, ctx.info[v.name].nbytes, i, last.get(v.name, i)))
        for k, s in enumerate(plans[node.name].scratch):
            slots.append(Slot(scratch_slot(node.name, k, ctx.info), s.nbytes, i, i))
    storage = Storage(slots)
    storage.pinned[edges.input_codes.name] = "input"
    for node in body:
        plan, live = plans[node.name], _live_inputs(node)
        out = node.outputs[0].name
        if plan.alias:
            storage.alias(out, live[0].name)
        elif plan.in_place and out != out_name:
            for k in plan.in_place:
                if storage.in_place(out, live[k].name):
                    ctx.memo[f"{node.name}/in_place"] = (k,)
                    break
        elif plan.concat:
            ctx.placed[node.name] = _place_slices(node, storage, ctx)
    root, offset = storage.root(out_name)
    if offset == 0 and root not in storage.pinned and \
            storage.extent(root) == ctx.info[out_name].nbytes:
        storage.pinned[root] = "output"  # the last node writes the caller's buffer
    return storage


def _place_slices(node: Node, storage: Storage, ctx: EmitContext) -> set[int]:
    """Inputs of a Concat that can be written straight into their slice of the output."""
    _, offsets = concat_layout(node, ctx)
    placed, live = set(), 0
    names = [v.name for v in node.inputs if v is not None]
    for v, offset in zip(node.inputs, offsets):
        if v is None or v.is_const:
            continue
        root, at = storage.root(v.name)
        alone = at == 0 and storage.extent(root) == ctx.info[v.name].nbytes
        if alone and names.count(v.name) == 1 and v.producer is not None and \
                storage.place_slice(v.name, node.outputs[0].name, offset):
            placed.add(live)
        live += 1
    return placed


# -- functions -------------------------------------------------------------------------------
def _emit_functions(edges: Edges, plans: dict[str, KernelPlan], ctx: EmitContext
                    ) -> tuple[list[NodeRecord], dict[str, str]]:
    """The C function of every node that computes something, and one record per node."""
    records, functions = [], {}
    for node in edges.body:
        plan = plans[node.name]
        fn = ctx.functions[node.name]
        quiet = plan.alias or (plan.concat and _all_placed(node, ctx))
        records.append(NodeRecord(node.name, node.op_type, None if quiet else fn, plan.note,
                                  plan.macs))
        if quiet:
            continue
        ctx.current = node.name
        w = CWriter()
        w.comment(f"{_origin(node)} {node.name!r}: {plan.note}")
        params = _params(node, plan, ctx)
        with w.block(f"static void {fn}({', '.join(params)})"):
            if f"{node.name}/in_place" in ctx.memo:
                k = ctx.memo[f"{node.name}/in_place"][0]
                ctype = ctx.t(_live_inputs(node)[k]).ctype
                w.line(f"const {ctype} *const x{k} = y0; /* in place: y0 overwrites x{k} */")
            kernel_for(node).emit(node, ctx, w)
        functions[node.name] = w.text()
    return records, functions


def _all_placed(node: Node, ctx: EmitContext) -> bool:
    live = [v for v in node.inputs if v is not None]
    return all(not v.is_const for v in live) and \
        len(ctx.placed.get(node.name, ())) == len(live)


def _origin(node: Node) -> str:
    return kernel_for(node).describe(node)


def _params(node: Node, plan: KernelPlan, ctx: EmitContext) -> list[str]:
    """x0.. (inputs), y0.. (outputs), s0.. (scratch), all restrict: an input overwritten in
    place is no parameter, the function reads it through y0."""
    in_place = ctx.memo.get(f"{node.name}/in_place", (None,))[0]
    params = [f"const {ctx.t(v).ctype} *restrict x{i}"
              for i, v in enumerate(_live_inputs(node)) if i != in_place]
    params += [f"{ctx.t(v).ctype} *restrict y{i}" for i, v in enumerate(node.outputs)]
    params += [f"{s.ctype} *restrict s{i}" for i, s in enumerate(plan.scratch)]
    return params


def _pointer(name: str, ctype: str, memory: MemoryPlan, info: dict[str, TensorInfo],
             edges: Edges) -> str:
    kind, offset = memory.where[name]
    if kind == "arena":
        return f"({ctype} *)(arena + {offset})"
    end = edges.input_codes if kind == "input" else edges.output_codes
    own = info[end.name].ctype
    if offset == 0 and ctype == own:
        return kind
    qual = "const " if kind == "input" else ""
    return f"({qual}{ctype} *)(({qual}uint8_t *){kind} + {offset})"


# -- files -----------------------------------------------------------------------------------
def _source(name: str, edges: Edges, ctx: EmitContext, memory: MemoryPlan,
            functions: dict[str, str], plans: dict[str, KernelPlan], model: str) -> str:
    upper = name.upper()
    in_t, out_t = ctx.t(edges.input_codes).ctype, ctx.t(edges.output_codes).ctype
    w = CWriter()
    w.comment(f"{name}.c: generated by qcc from {model or ctx.graph.name}; do not edit.\n"
              f"The integer graph as C99: weights as static const arrays packed at their bit\n"
              f"width, one function per node, one static arena of {memory.arena_size} bytes\n"
              f"(lower bound {memory.lower_bound}: the largest set of buffers live at once).")
    w.lines_of(["#include <stddef.h>", "#include <stdint.h>", "", f'#include "{name}.h"',
                f'#include "{name}_runtime.h"', ""])
    w.comment("output positions per im2col block of a conv: 4 on 32-bit Arm, whose 13 usable\n"
              "core registers hold 4 accumulators, 8 elsewhere (see backends/c/ops/conv.py)")
    w.lines_of([f"#ifndef {upper}_PATCH_BLOCK", "#if defined(__arm__) && !defined(__aarch64__)",
                f"#define {upper}_PATCH_BLOCK 4", "#else", f"#define {upper}_PATCH_BLOCK 8",
                "#endif", "#endif", ""])
    if memory.arena_size:
        w.comment("the arena: every intermediate tensor and scratch area, 8-byte aligned")
        w.line(f"static int64_t {name}_arena[{-(-memory.arena_size // 8)}];")
        w.line("")
    for node in edges.body:
        if node.name in ctx.constants and ctx.constants[node.name].lines:
            w.lines_of(ctx.constants[node.name].lines)
        if node.name in functions:
            w.lines_of(functions[node.name].rstrip("\n").split("\n"))
        if node.name in ctx.constants or node.name in functions:
            w.line("")
    _infer(w, name, edges, ctx, memory, plans, in_t, out_t)
    w.line("")
    _edges_functions(w, name, upper, edges, ctx, in_t, out_t)
    return w.text()


def _infer(w: CWriter, name: str, edges: Edges, ctx: EmitContext, memory: MemoryPlan,
           plans: dict[str, KernelPlan], in_t: str, out_t: str) -> None:
    upper = name.upper()
    calls = []
    for node in edges.body:
        plan = plans[node.name]
        fn = ctx.functions[node.name]
        if plan.alias:
            calls.append(c_comment(f"{node.op_type} {node.name}: a view of its input, no code"))
            continue
        if plan.concat and _all_placed(node, ctx):
            calls.append(c_comment(f"Concat {node.name}: inputs were written into their slices"))
            continue
        in_place = ctx.memo.get(f"{node.name}/in_place", (None,))[0]
        args = [_pointer(v.name, ctx.t(v).ctype, memory, ctx.info, edges)
                for i, v in enumerate(_live_inputs(node)) if i != in_place]
        args += [_pointer(v.name, ctx.t(v).ctype, memory, ctx.info, edges)
                 for v in node.outputs]
        args += [_pointer(scratch_slot(node.name, k, ctx.info), s.ctype, memory, ctx.info, edges)
                 for k, s in enumerate(plan.scratch)]
        calls.append(f"{fn}({', '.join(args)});")
    out_kind = memory.where[edges.output_codes.name][0]
    with w.block(f"int {name}_infer(const {name}_input_t *input, {name}_output_t *output)"):
        if memory.arena_size:
            w.line(f"uint8_t *const arena = (uint8_t *){name}_arena;")
        with w.block("if (input == NULL || output == NULL)"):
            w.line(f"return {upper}_ERR_NULL;")
        w.lines_of(calls)
        if out_kind != "output":
            n = ctx.t(edges.output_codes).numel
            src = _pointer(edges.output_codes.name, out_t, memory, ctx.info, edges)
            w.comment("the output tensor lives elsewhere: copy it to the caller's buffer")
            with w.block(""):
                w.line("int32_t i;")
                w.line(f"const {out_t} *const src = {src};")
                with w.block(f"for (i = 0; i < {n}; ++i)"):
                    w.line("output[i] = src[i];")
        w.line(f"return {upper}_OK;")


def _edges_functions(w: CWriter, name: str, upper: str, edges: Edges, ctx: EmitContext,
                     in_t: str, out_t: str) -> None:
    """<name>_quantize_input and <name>_dequantize_output: the float edges."""
    onnx = edge_format(edges.quantize).onnx, edge_format(edges.dequantize).onnx
    quantize = f"{name}_quantize{'_linear' if onnx[0] else ''}(x[{{}}], {upper}_INPUT_SCALE, " \
               f"{upper}_INPUT_ZERO_POINT, {upper}_INPUT_MIN, {upper}_INPUT_MAX)"
    perm = edges.quantize.attrs.get("perm")
    with w.block(f"int {name}_quantize_input(const float *x, {name}_input_t *codes)"):
        w.line("int32_t i;" if perm is None else "int32_t o = 0;")
        with w.block("if (x == NULL || codes == NULL)"):
            w.line(f"return {upper}_ERR_NULL;")
        if perm is None:
            with w.block(f"for (i = 0; i < {upper}_INPUT_SIZE; ++i)"):
                w.line(f"codes[i] = ({in_t}){quantize.format('i')};")
        else:  # a folded NHWC Transpose: codes in `perm` order, read from the caller's layout
            _permuted_loops(w, ctx.t(edges.quantize.outputs[0]).shape, [int(p) for p in perm],
                            lambda src: f"codes[o++] = ({in_t}){quantize.format(src)};")
        w.line(f"return {upper}_OK;")
    w.line("")
    with w.block(f"int {name}_dequantize_output(const {name}_output_t *codes, float *y)"):
        w.line("int32_t i;")
        with w.block("if (codes == NULL || y == NULL)"):
            w.line(f"return {upper}_ERR_NULL;")
        with w.block(f"for (i = 0; i < {upper}_OUTPUT_SIZE; ++i)"):
            w.line(f"y[i] = {name}_dequantize{'_linear' if onnx[1] else ''}(codes[i], "
                   f"{upper}_OUTPUT_ZERO_POINT, {upper}_OUTPUT_SCALE);")
        w.line(f"return {upper}_OK;")


def _permuted_loops(w: CWriter, out_shape: tuple[int, ...], perm: list[int],
                    body: Callable[[str], str]) -> None:
    """Nested loops over `out_shape` in C order; `body` gets the source index of the element in
    the input layout (the input's dim perm[k] is the output's dim k)."""
    in_shape = [0] * len(perm)
    for k, p in enumerate(perm):
        in_shape[p] = out_shape[k]
    strides = [int(np.prod(in_shape[d + 1:], dtype=np.int64)) for d in range(len(in_shape))]
    terms = [f"i{k} * {strides[p]}" for k, p in enumerate(perm) if out_shape[k] > 1]
    loops = [k for k in range(len(perm)) if out_shape[k] > 1]
    if not loops:
        w.line(body("0"))
        return
    with contextlib.ExitStack() as stack:
        for k in loops:
            stack.enter_context(w.block(f"for (int32_t i{k} = 0; i{k} < {out_shape[k]}; ++i{k})"))
        w.line(body(" + ".join(terms)))


def _header(name: str, edges: Edges, ctx: EmitContext, memory: MemoryPlan, model: str) -> str:
    upper = name.upper()
    q, dq = edge_format(edges.quantize), edge_format(edges.dequantize)
    x, y = ctx.t(edges.input_codes), ctx.t(edges.output_codes)
    w = CWriter()
    w.comment(f"{name}.h: generated by qcc from {model or ctx.graph.name}; do not edit.\n\n"
              f"float x -> {name}_quantize_input -> codes -> {name}_infer -> codes ->\n"
              f"{name}_dequantize_output -> float y. real = (code - ZERO_POINT) * SCALE.\n"
              f"{name}_infer uses one static arena: it is not reentrant.")
    w.lines_of([f"#ifndef {upper}_H", f"#define {upper}_H", "", "#include <stdint.h>", "",
                "#ifdef __cplusplus", 'extern "C" {', "#endif", ""])
    w.lines_of([f"#define {upper}_OK 0", f"#define {upper}_ERR_NULL 1  /* a null pointer */",
                ""])
    for label, t, scale, zp, value in (("INPUT", x, q.scale, q.zero_point,
                                        edges.quantize.inputs[0]),
                                       ("OUTPUT", y, dq.scale, dq.zero_point,
                                        edges.dequantize.outputs[0])):
        w.comment(f"{label.lower()} {value.name!r}: shape {list(t.shape)}, {t.ctype} codes "
                  f"in [{t.lo}, {t.hi}]")
        w.line(f"typedef {t.ctype} {name}_{label.lower()}_t;")
        w.lines_of([f"#define {upper}_{label}_SIZE {t.numel}",
                    f"#define {upper}_{label}_RANK {len(t.shape)}",
                    f"#define {upper}_{label}_SHAPE {{{', '.join(map(str, t.shape))}}}",
                    f"#define {upper}_{label}_SCALE {float(scale)!r}",
                    f"#define {upper}_{label}_ZERO_POINT {int(zp)}",
                    f"#define {upper}_{label}_MIN ({t.lo})",
                    f"#define {upper}_{label}_MAX ({t.hi})", ""])
    w.lines_of([f"#define {upper}_ARENA_SIZE {memory.arena_size}  /* bytes, static */",
                f"#define {upper}_ARENA_LOWER_BOUND {memory.lower_bound}",
                f"#define {upper}_WEIGHT_BYTES {ctx.weight_bytes}", ""])
    w.comment("Run the model on one sample of input codes; 0 or an error code.")
    w.line(f"int {name}_infer(const {name}_input_t *input, {name}_output_t *output);")
    w.comment(f"Float input -> codes (round half {'to even' if q.onnx else 'away from zero'}, "
              "saturating).")
    w.line(f"int {name}_quantize_input(const float *x, {name}_input_t *codes);")
    w.comment("Output codes -> float.")
    w.line(f"int {name}_dequantize_output(const {name}_output_t *codes, float *y);")
    w.lines_of(["", "#ifdef __cplusplus", "}", "#endif", "", f"#endif /* {upper}_H */"])
    return w.text()
