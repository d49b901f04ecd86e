"""quantize_graph: rewrite a float graph into qcc's integer graph.

Preconditions: BatchNormalization folded (passes/fold_batchnorm.py); calibration statistics for
every float tensor (passes/calibrate.py). The result runs on backends/numpy_int and the C backend:

- the graph input passes through `qcc.Quantize`, each graph output through `qcc.Dequantize`;
- each weighted layer (Conv, Gemm, MatMul with a constant weight) becomes `QConv` / `QGemm` on the
  codes of its input A_l at B_A bits, with weight codes at B_W bits (the scheme's format), the bias
  as an integer at the accumulator scale Δ_A·Δ_W, and one requantization of the exact accumulator
  to the output format; a Relu that is the layer's only reader is fused into it as a clamp;
- Add of two tensors becomes `QAdd` (both inputs rescaled to the output format);
- ops that only move codes (MaxPool, Reshape, Concat, ...) and average pools keep their format;
- a tensor whose format differs from what its reader needs passes through `Requantize`;
- Softmax of codes becomes `QSoftmax` (exp tables, one integer division; probabilities as uint8
  with scale 1/256, or int16 with scale 1/32768 where the tensor gets 16 bits);
- LogSoftmax of codes becomes `QLogSoftmax` (the same exp tables, an integer log2; log
  probabilities in [-r, 0], r a power of two from the input's range, 8 or 16 bits);
- Sigmoid, Tanh, HardSigmoid and HardSwish of codes become a lookup of a constant table (Gather):
  the correctly rounded output code for every input code (inputs of more than TABLE_BITS bits
  are requantized to TABLE_BITS first, so a table has at most 2^TABLE_BITS entries);
- other float ops are allowed only after the last integer result, behind Dequantize.

The format of a tensor follows from its readers: the input of layer l gets B_A(l) bits
(seeds/001 eq. 1 chooses them), and its range from calibration (a power-of-two PDR for fixed
point). A tensor no weighted layer reads (the logits, a residual branch) gets the config's
`default_bits` (`output_bits` for graph outputs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from passes.calibrate import TensorStats
from passes.schemes import CodeFormat, get_scheme
from passes.weight_rounding import WeightRounding
from qcc.core.errors import QccError
from qcc.core.ir import Graph, Node, Value
from qcc.core.layers import WEIGHTED_OPS, output_channel_axis, weighted_nodes
from qcc.core.numerics import log_softmax, lut
from qcc.core.numerics.codes import CODE_PRESERVING, storage_dtype
from qcc.core.numerics.rounding import int_range
from qcc.core.numerics.softmax import SoftmaxTables, softmax_tables
from qcc.core.ops import nn
from qcc.core.ops.integer import POOL_ATTRS
from qcc.core.ops.qonnx import trunc_params
from qcc.core.quant_spec import QuantSpec
from qcc.core.registry import QCC_DOMAIN, lookup
from qcc.core.requant import multiplier_shift
from qcc.core.shapes import infer_shapes

SAME_FORMAT = CODE_PRESERVING + ("AveragePool", "GlobalAveragePool")
# elementwise ops that become a table lookup on codes (the float kernel fills the table)
TABLE_OPS = ("Sigmoid", "Tanh", "HardSigmoid", "HardSwish")
TABLE_BITS = 10


@dataclass
class LayerConfig:
    weight_bits: int
    act_bits: int
    scheme: str
    # sign activations: the layer uses sign(x) ∈ {-1, +1} of its input and needs ±1 weights
    # (binary scheme); its dot products run as XNOR-popcounts (backends/numpy_int/xnor.py)
    binary_activations: bool = False
    # trained weight codes and their format (passes/fold_quantizers.py), used as they are
    weights: tuple[np.ndarray, CodeFormat] | None = None


@dataclass
class QuantConfig:
    """Bits and scheme per weighted layer (by node name), with defaults for the rest."""

    scheme: str = "fixed"
    default_bits: int = 8
    output_bits: int = 16
    layers: dict[str, LayerConfig] = field(default_factory=dict)
    # the graph will run the training step: schemes whose training needs one weight scale per
    # tensor (Scheme.trains_per_channel) give it one
    for_training: bool = False
    # codes of weights below 8 bits chosen for the layer's output error on calibration data
    # (passes/weight_rounding.py, GPTQ); None: round to nearest
    weight_rounding: WeightRounding | None = None

    def layer(self, name: str) -> LayerConfig:
        return self.layers.get(name, LayerConfig(self.default_bits, self.default_bits,
                                                 self.scheme))


class _Rewriter:
    def __init__(self, graph: Graph, stats: dict[str, TensorStats], config: QuantConfig):
        self.src, self.stats, self.config = graph, stats, config
        self.out = Graph(graph.name, graph.opset)
        self.codes: dict[str, tuple[Value, CodeFormat]] = {}  # float value -> its codes
        self.float_tail: dict[str, Value] = {}  # float values after dequantization
        self.level_tables: dict[tuple, Value] = {}  # APoT level tables (see `snap`)
        self.layers = {n.name: n for n in weighted_nodes(graph)}
        self.fused_relu = self._fusable_relus()

    # -- formats ------------------------------------------------------------------------
    def _fusable_relus(self) -> dict[str, Node]:
        """producer node name -> its Relu reader, where that Relu is the only reader."""
        fused = {}
        for node in self.src.nodes:
            single_reader = len(node.outputs[0].consumers) == 1
            if node.op_type in WEIGHTED_OPS + ("Add", "Sum") and single_reader:
                reader = node.outputs[0].consumers[0]
                if reader.op_type == "Relu" and node.outputs[0] not in self.src.outputs:
                    fused[node.name] = reader
        return fused

    def wanted_bits(self, value: Value) -> int:
        """B_A of the weighted layers that read `value` (through code-moving ops), else default."""
        bits = [self.config.layer(reader.name).act_bits
                for reader, read in _downstream(value, lambda n: n.op_type in SAME_FORMAT)
                if reader.name in self.layers and reader.inputs[0] is read]
        if bits:
            return max(bits)
        return self.config.output_bits if self.reaches_output(value) else self.config.default_bits

    def reaches_output(self, value: Value) -> bool:
        """Whether `value` is a graph output or is read by something other than a layer."""
        return value in self.src.outputs or any(
            c.op_type not in SAME_FORMAT for c in value.consumers if c.name not in self.layers)

    def format_for(self, value: Value, scheme: str, bits: int | None = None) -> CodeFormat:
        if value.name not in self.stats:
            raise QccError(f"no calibration statistics for tensor {value.name!r}")
        stats = self.stats[value.name]
        if self.reaches_output(value):
            # Outputs keep their whole calibrated range: clipping outliers (the chunk averages
            # of seeds/000 §B) helps inner activations, but on logits it flattens the largest
            # ones, which are the ones that decide the class.
            stats = replace(stats, chunk_lo=stats.lo, chunk_hi=stats.hi)
        bits = bits or self.wanted_bits(value)
        fmt = get_scheme(scheme).activation(stats, bits)
        if value in self.src.inputs:
            return self.cover_input(fmt, stats, scheme, bits)
        return fmt

    def cover_input(self, fmt: CodeFormat, stats: TensorStats, scheme: str, bits: int
                    ) -> CodeFormat:
        """A graph input's format: `fmt` (the scheme's at B_A bits), unless a power-of-two
        range stops one code short of the calibration inputs' own extremes (pixels at exactly
        1.0 against r = 1, whose top code is r - Δ): then one bit more at the same step, which
        doubles the range and covers them. The step B_A chose (its quantization noise, eq. 1
        of Sakr & Shanbhag) stays; only the code that could not hold the data is added.
        Schemes that clip on purpose (affine's chunk-averaged range, Banner et al. §B) keep
        their format: their wider format would change the step."""
        if _covers(fmt, stats.lo, stats.hi) or fmt.levels is not None:
            return fmt
        doubled = replace(stats, lo=2 * stats.lo, hi=2 * stats.hi, chunk_lo=2 * stats.chunk_lo,
                          chunk_hi=2 * stats.chunk_hi)
        wider = get_scheme(scheme).activation(doubled, bits + 1)
        if _covers(wider, stats.lo, stats.hi) and np.array_equal(wider.scales, fmt.scales):
            return wider
        return fmt

    # -- emission -----------------------------------------------------------------------
    def emit(self, op: str, inputs: list[Value | None], name: str, fmt: CodeFormat,
             attrs: dict, src_name: str) -> Value:
        out = Value(self.out.unique_name(f"{name}_codes"), None, storage_dtype(fmt.lo, fmt.hi),
                    quant=fmt.spec)
        self.out.add_node(op, inputs, [out], attrs, self.out.unique_node_name(src_name))
        self.out.nodes[-1].domain = QCC_DOMAIN if op[0] == "Q" or op in (
            "Requantize", "Dequantize") else ""
        return self.snap(out, fmt, src_name)

    def snap(self, codes: Value, fmt: CodeFormat, name: str) -> Value:
        """Codes of a format with `levels` (APoT): the value requantized to the integer grid,
        then its nearest level, by a table lookup (Gather)."""
        if fmt.levels is None:
            return codes
        key = (fmt.levels, fmt.lo, fmt.hi)
        if key not in self.level_tables:  # one table per level set, shared by its tensors
            self.level_tables[key] = self.const(self.out.unique_name(f"{name}_levels"),
                                                _level_table(fmt))
        table = self.level_tables[key]
        out = Value(self.out.unique_name(f"{codes.name}_lv"), None, codes.dtype, quant=fmt.spec)
        self.out.add_node("Gather", [table, codes], [out], {"axis": 0},
                          self.out.unique_node_name(f"{name}_snap"))
        return out

    def const(self, name: str, array: np.ndarray, spec=None) -> Value:
        v = self.out.add_const(name, array)
        v.quant = spec
        return v

    def in_format(self, value: Value, fmt: CodeFormat, reader: str) -> Value:
        """The codes of float `value` in format `fmt`, requantized if they are in another."""
        codes, have = self.codes[value.name]
        if have.same_codes(fmt):
            return codes
        m, s = multiplier_shift(float(have.scales[0] / fmt.scales[0]))
        return self.emit("Requantize", [codes], f"{value.name}_rq", fmt,
                         {"multipliers": [m], "zero_points": [have.zero_point], "shift": s,
                          **_out_attrs(fmt)}, f"{reader}_requantize")

    def output_format(self, node: Node, scheme: str) -> tuple[Value, CodeFormat, bool]:
        """The float value a rewritten node stands for (its fused Relu's output, if any)."""
        relu = self.fused_relu.get(node.name)
        value = relu.outputs[0] if relu is not None else node.outputs[0]
        return value, self.format_for(value, scheme), relu is not None

    # -- node rewrites ------------------------------------------------------------------
    def run(self) -> Graph:
        folded = set()
        for v in self.src.inputs:
            fmt = self.format_for(v, self.config.scheme)
            inp = self.out.add_value(Value(v.name, v.shape, v.dtype))
            self.out.inputs.append(inp)
            attrs = {"scale": float(fmt.scales[0]), **_out_attrs(fmt)}
            transpose = _leading_transpose(v, self.src)
            if transpose is not None:  # NHWC input: the quantizer writes NCHW codes
                attrs["perm"] = [int(p) for p in transpose.attrs["perm"]]
                folded.add(transpose.name)
            codes = self.emit("Quantize", [inp], f"{v.name}_q", fmt, attrs, f"{v.name}_quantize")
            self.codes[v.name] = (codes, fmt)
            if transpose is not None:
                self.codes[transpose.outputs[0].name] = (codes, fmt)
        fused_readers = {r.name for r in self.fused_relu.values()} | folded
        for node in self.src.nodes:
            if node.name in fused_readers:
                continue
            if node.name in self.layers:
                self.weighted(node)
            elif node.op_type in ("Add", "Sum") and all(not v.is_const for v in node.inputs):
                self.add(node)
            elif node.op_type in ("AveragePool", "GlobalAveragePool") and \
                    self.requantizing_pool(node) is not None:
                self.average_pool(node, self.requantizing_pool(node))
            elif node.op_type in SAME_FORMAT and node.inputs[0].name in self.codes:
                self.same_format(node)
            elif node.op_type == "Softmax" and node.inputs[0].name in self.codes:
                self.softmax(node)
            elif node.op_type == "LogSoftmax" and node.inputs[0].name in self.codes:
                self.log_softmax(node)
            elif node.op_type in TABLE_OPS and node.inputs[0].name in self.codes:
                self.table_op(node)
            elif node.op_type == "Trunc" and node.inputs[0].name in self.codes:
                self.trunc(node)
            else:
                self.float_op(node)
        self.finish_outputs()
        return self.out

    def weighted(self, node: Node) -> None:
        cfg = self.config.layer(node.name)
        scheme = get_scheme(cfg.scheme)
        x = node.inputs[0]
        x_fmt = self.format_for(x, cfg.scheme, cfg.act_bits)
        x_codes = self.in_format(x, x_fmt, node.name)
        w = node.inputs[1].const.astype(np.float64)
        axis = output_channel_axis(node)
        trans = node.op_type == "Gemm" and axis == 0
        if node.op_type == "Gemm":
            w = w * node.attrs.get("alpha", 1.0)
            if node.attrs.get("transA", 0):
                raise QccError(f"Gemm {node.name!r} with transA is not supported in integer form")
        # sign activations are ±1 (magnitude 1) whatever the format of the codes they come from
        x_scale = 1.0 if cfg.binary_activations else x_fmt.scales[0]
        bias = node.input(2)
        b = min_scale = None
        if bias is not None:
            b = np.broadcast_to(bias.const.astype(np.float64), (w.shape[axis],))
            b = b * (node.attrs.get("beta", 1.0) if node.op_type == "Gemm" else 1.0)
            min_scale = np.abs(b) / (x_scale * BIAS_HEADROOM)
        if cfg.weights is not None:
            w_codes, w_fmt = cfg.weights
        elif self.config.for_training and not scheme.trains_per_channel:
            w_codes, w_fmt = scheme.weight_per_tensor(
                w, cfg.weight_bits, None if min_scale is None else float(min_scale.max()))
        else:
            w_codes, w_fmt = scheme.weight(w, cfg.weight_bits, axis, min_scale)
        if self.config.weight_rounding is not None and cfg.weights is None:
            w_codes, w_fmt, b = self.config.weight_rounding.apply(node, w, w_codes, w_fmt, b,
                                                                  min_scale)
        if cfg.binary_activations and w_fmt.levels != (-1, 1):
            raise QccError(f"layer {node.name!r}: binary activations need binary weights")
        if b is not None:
            w_fmt = _bias_representable(w_fmt, b, x_scale)
        acc_scale = x_scale * np.broadcast_to(w_fmt.scales, (w.shape[axis],))
        value, out_fmt, relu = self.output_format(node, cfg.scheme)
        inputs = [x_codes, self.const(f"{node.name}_w", w_codes.astype(
            storage_dtype(int(w_codes.min(initial=0)), int(w_codes.max(initial=0)))), w_fmt.spec)]
        if b is not None:
            inputs.append(self.const(f"{node.name}_b", _bias_codes(b, acc_scale, node)))
        pairs = [multiplier_shift(float(r)) for r in acc_scale / out_fmt.scales[0]]
        attrs = {"x_zero_point": x_fmt.zero_point, "multiplier": [m for m, _ in pairs],
                 "shift": [s for _, s in pairs], "relu": int(relu), **_out_attrs(out_fmt)}
        if cfg.binary_activations:
            attrs["dot"] = "xnor"
        if node.op_type == "Conv":
            attrs.update({k: v for k, v in node.attrs.items()
                          if k in ("strides", "pads", "dilations", "group", "kernel_shape",
                                   "auto_pad")})
            op = "QConv"
        else:
            attrs["transB"] = int(trans)
            op = "QGemm"
        self.codes[value.name] = (self.emit(op, inputs, value.name, out_fmt, attrs, node.name),
                                  out_fmt)

    def add(self, node: Node) -> None:
        value, out_fmt, relu = self.output_format(node, self.config.scheme)
        codes, fmts = zip(*(self.codes[v.name] for v in node.inputs))
        # common fine scale: every input ratio becomes an integer multiplier over 2^S
        ratios = [float(f.scales[0] / out_fmt.scales[0]) for f in fmts]
        pairs = [multiplier_shift(r) for r in ratios]
        shift = max(s for _, s in pairs)
        multipliers = [m << (shift - s) for m, s in pairs]
        self.codes[value.name] = (self.emit(
            "QAdd", list(codes), value.name, out_fmt,
            {"multipliers": multipliers, "zero_points": [f.zero_point for f in fmts],
             "shift": shift, "relu": int(relu), **_out_attrs(out_fmt)}, node.name), out_fmt)

    def requantizing_pool(self, node: Node) -> dict | None:
        """The QAveragePool attributes of an average pool whose windows all count the same
        n taps (kernel_shape etc. and n), else None (the pool then keeps its input's format).
        Not for training graphs, whose backward passes pools on the input's format."""
        x = node.inputs[0]
        if self.config.for_training or x.name not in self.codes or x.shape is None:
            return None
        _, fmt = self.codes[x.name]
        if fmt.scales.size != 1 or fmt.levels is not None or len(x.shape) < 3:
            return None
        if node.op_type == "GlobalAveragePool":
            attrs = {"kernel_shape": [int(d) for d in x.shape[2:]]}
        else:
            attrs = {k: v for k, v in node.attrs.items() if k in POOL_ATTRS}
        probe = Node("AveragePool", node.name, [], [], attrs)
        win = nn.window(probe, tuple(int(d) for d in x.shape[2:]),
                        tuple(int(k) for k in attrs["kernel_shape"]),
                        bool(attrs.get("ceil_mode", 0)))
        counts = nn.window_counts(win, bool(attrs.get("count_include_pad", 0)))
        if counts.size == 0 or not np.all(counts == counts.flat[0]) or counts.flat[0] < 1:
            return None
        return {**attrs, "taps": int(counts.flat[0])}

    def average_pool(self, node: Node, pool: dict) -> None:
        """QAveragePool: Σ_window (x − z_x) · s_x / (n · s_y), one rounding into the pool
        output's own calibrated format. The mean of a window has a smaller range than its
        input (a global pool of ReLU maps: several times smaller), which the input's step
        would waste; requantizing the rounded mean again would round twice."""
        codes, fmt = self.codes[node.inputs[0].name]
        value = node.outputs[0]
        out_fmt = self.format_for(value, self.config.scheme)
        taps = pool.pop("taps")
        m, s = multiplier_shift(float(fmt.scales[0] / (taps * out_fmt.scales[0])))
        attrs = {**pool, "x_zero_point": fmt.zero_point, "multiplier": [m], "shift": [s],
                 "relu": 0, **_out_attrs(out_fmt)}
        self.codes[value.name] = (self.emit("QAveragePool", [codes], value.name, out_fmt, attrs,
                                            node.name), out_fmt)

    def same_format(self, node: Node) -> None:
        first_codes, fmt = self.codes[node.inputs[0].name]
        inputs = []
        for v in node.inputs:
            if v is None:
                inputs.append(None)
            elif v.is_const:
                inputs.append(self.const(f"{node.name}_{v.name}", v.const))
            else:
                inputs.append(self.in_format(v, fmt, node.name))
        if node.op_type == "Relu" and fmt.zero_point != 0:
            raise QccError(f"Relu {node.name!r} on zero-point codes must be fused")
        outs = [Value(self.out.unique_name(o.name), None, inputs[0].dtype, quant=fmt.spec)
                for o in node.outputs]
        op_type, attrs = node.op_type, dict(node.attrs)
        perm = [int(p) for p in attrs.get("perm", [])]
        if op_type == "Transpose" and perm and _unit_dims_only(node.inputs[0].shape, perm):
            # only unit dims move (an NHWC flatten after a global pool): the same bytes
            shape = [0] + [int(node.inputs[0].shape[p]) for p in perm[1:]]
            inputs.append(self.const(self.out.unique_name(f"{node.name}_shape"),
                                     np.asarray(shape, dtype=np.int64)))
            op_type, attrs = "Reshape", {}
        self.out.add_node(op_type, inputs, outs, attrs, node.name)
        if node.op_type in ("AveragePool", "GlobalAveragePool"):
            outs[0] = self.snap(outs[0], fmt, node.name)  # a mean of levels is not a level
        for o, new in zip(node.outputs, outs):
            self.codes[o.name] = (new, fmt)

    def softmax(self, node: Node) -> None:
        """QSoftmax on the input's codes (qcc.core.numerics.softmax: within one LSB of the
        correctly rounded float Softmax)."""
        codes, fmt = self.codes[node.inputs[0].name]
        if fmt.scales.size != 1:
            raise QccError(f"Softmax {node.name!r}: its input needs one scale")
        value = node.outputs[0]
        wide = self.wanted_bits(value) >= 16
        signed = wide  # int16 with scale 1/32768, or uint8 with scale 1/256
        tables = softmax_tables(float(fmt.scales[0]), _code_bits(fmt), 16 if wide else 8, signed)
        out_fmt = _probability_format(self.config.scheme, tables)
        flatten = node.opset < 13
        axis = int(node.attrs.get("axis", 1 if flatten else -1))
        low = self.const(self.out.unique_name(f"{node.name}_exp_low"),
                         tables.low.astype(np.int32))
        high = self.const(self.out.unique_name(f"{node.name}_exp_high"),
                          tables.high.astype(np.int32))
        attrs = {"axis": axis, "flatten": int(flatten), "out_frac_bits": tables.out_frac_bits,
                 **_out_attrs(out_fmt)}
        self.codes[value.name] = (self.emit("QSoftmax", [codes, low, high], value.name, out_fmt,
                                            attrs, node.name), out_fmt)

    def log_softmax(self, node: Node) -> None:
        """QLogSoftmax on the input's codes (qcc.core.numerics.log_softmax: within 1/2 + eps
        LSB of the float LogSoftmax; the output range from the input's)."""
        codes, fmt = self.codes[node.inputs[0].name]
        if fmt.scales.size != 1:
            raise QccError(f"LogSoftmax {node.name!r}: its input needs one scale")
        value, flatten = node.outputs[0], node.opset < 13
        axis = int(node.attrs.get("axis", 1 if flatten else -1))
        in_step = float(fmt.scales[0])
        bits = 16 if self.wanted_bits(value) >= 16 else 8
        out_range = log_softmax.output_range(
            in_step, fmt.hi - fmt.lo, _row_length(node.inputs[0].shape, axis, flatten), bits)
        out_fmt = _log_probability_format(self.config.scheme, out_range, bits)
        params = log_softmax.log_softmax_params(in_step, _code_bits(fmt), float(out_fmt.scale),
                                                out_fmt.zero_point, out_fmt.lo, out_fmt.hi)
        low = self.const(self.out.unique_name(f"{node.name}_exp_low"),
                         params.low.astype(np.int32))
        high = self.const(self.out.unique_name(f"{node.name}_exp_high"),
                          params.high.astype(np.int32))
        attrs = {"axis": axis, "flatten": int(flatten), "diff_mult": params.diff_mult,
                 "log_mult": params.log_mult, "d_cap": params.d_cap, **_out_attrs(out_fmt)}
        self.codes[value.name] = (self.emit("QLogSoftmax", [codes, low, high], value.name,
                                            out_fmt, attrs, node.name), out_fmt)

    def table_op(self, node: Node) -> None:
        """An elementwise nonlinearity as a lookup: entry c holds the correctly rounded output
        code of input code c (negative codes wrap, as Gather indices do)."""
        x = node.inputs[0]
        codes, fmt = self.codes[x.name]
        if _code_bits(fmt) > TABLE_BITS or fmt.scales.size != 1:
            fmt = self.format_for(x, self.config.scheme, TABLE_BITS)
            codes = self.in_format(x, fmt, node.name)
        value = node.outputs[0]
        out_fmt = self.format_for(value, self.config.scheme)
        if out_fmt.levels is not None or out_fmt.scales.size != 1:
            raise QccError(f"{node.op_type} {node.name!r}: a table op needs a uniform output "
                           "format (fixed or affine)")
        kernel = lookup(node).kernel
        grid = np.arange(fmt.lo, fmt.hi + 1, dtype=np.int64)
        src = lut.CodeFormat(float(fmt.scales[0]), fmt.zero_point, _code_bits(fmt), fmt.lo < 0)
        dst = lut.CodeFormat(float(out_fmt.scales[0]), out_fmt.zero_point,
                             _code_bits(out_fmt), out_fmt.lo < 0)

        def f(v: np.ndarray) -> np.ndarray:
            return np.asarray(kernel(node, v.astype(np.float32)), dtype=np.float64)

        entries = lut.correctly_rounded(f, grid, src, dst)
        entries = np.clip(entries, out_fmt.lo, out_fmt.hi)
        table = self.const(self.out.unique_name(f"{node.name}_table"),
                           np.roll(entries, fmt.lo).astype(storage_dtype(out_fmt.lo,
                                                                         out_fmt.hi)))
        out = Value(self.out.unique_name(f"{value.name}_codes"), None, table.dtype,
                    quant=out_fmt.spec)
        self.out.add_node("Gather", [table, codes], [out], {"axis": 0},
                          self.out.unique_node_name(node.name))
        self.codes[value.name] = (out, out_fmt)

    def trunc(self, node: Node) -> None:
        """QONNX Trunc -> QTrunc (qcc.core.ops.qonnx): the input codes on the Trunc's input grid
        (a Requantize onto it is QONNX's first rounding, round(x / scale)), shifted right with
        its rounding mode and clamped. passes/fold_quantizers.py fixed both grids."""
        params = trunc_params(node)
        x, value = node.inputs[0], node.outputs[0]
        in_fmt = self.format_for(x, self.config.scheme, params.in_bits)
        out_fmt = self.format_for(value, self.config.scheme, params.out_bits)
        for fmt, scale, where in ((in_fmt, params.scale, "input"),
                                  (out_fmt, params.out_scale, "output")):
            if fmt.levels is not None or not np.allclose(fmt.scales, scale, rtol=1e-6):
                raise QccError(f"Trunc {node.name!r}: its {where} grid (scale {scale:g}) is not "
                               f"a format of scheme {self.config.scheme}")
        signed = out_fmt.lo < out_fmt.zero_point if params.signed is None else params.signed
        clamp_lo, clamp_hi = params.clamp(signed)
        attrs = {"x_zero_point": in_fmt.zero_point, "shift": params.shift,
                 "rounding_mode": params.rounding_mode, "clamp_lo": clamp_lo,
                 "clamp_hi": clamp_hi, **_out_attrs(out_fmt)}
        codes = self.in_format(x, in_fmt, node.name)
        self.codes[value.name] = (self.emit("QTrunc", [codes], value.name, out_fmt, attrs,
                                            node.name), out_fmt)

    def float_op(self, node: Node) -> None:
        """A float op is allowed only on dequantized values that lead to outputs alone."""
        if any(_reaches_integer_op(o, self) for o in node.outputs):
            raise QccError(f"op {node.op_type} (node {node.name!r}) has no integer form in qcc; "
                           "float ops may only follow the last integer result")
        inputs = [self.dequantized(v) if v is not None else None for v in node.inputs]
        outs = [Value(self.output_name(o.name) if o in self.src.outputs else
                      self.out.unique_name(o.name), o.shape, o.dtype) for o in node.outputs]
        self.out.add_node(node.op_type, inputs, outs, dict(node.attrs), node.name)
        for o, new in zip(node.outputs, outs):
            self.float_tail[o.name] = new

    def dequantized(self, v: Value) -> Value:
        if v.is_const:
            return self.const(v.name, v.const)
        if v.name in self.float_tail:
            return self.float_tail[v.name]
        codes, fmt = self.codes[v.name]
        name = self.output_name(v.name) if v in self.src.outputs else \
            self.out.unique_name(f"{v.name}_dq")
        out = Value(name, v.shape, np.dtype(np.float32))
        self.out.add_node("Dequantize", [codes], [out],
                          {"scale": float(fmt.scales[0]), "zero_point": fmt.zero_point},
                          self.out.unique_node_name(f"{v.name}_dequantize"))
        self.out.nodes[-1].domain = QCC_DOMAIN
        self.float_tail[v.name] = out
        return out

    def output_name(self, name: str) -> str:
        """A graph output keeps its name: a value made earlier under that name (the codes of
        a Relu writing the output, say) is renamed."""
        taken = self.out.values.get(name)
        if taken is not None and taken.producer is not None:
            del self.out.values[name]
            taken.name = self.out.unique_name(f"{name}_codes")
            self.out.values[taken.name] = taken
        return name

    def finish_outputs(self) -> None:
        for v in self.src.outputs:
            self.out.outputs.append(self.dequantized(v))


def _level_table(fmt: CodeFormat) -> np.ndarray:
    """Entry c (c in [lo, hi]; negative c wraps, as Gather indices do): the level nearest code c,
    ties toward zero (numerics.apot.project's rule)."""
    levels = np.asarray(fmt.levels, dtype=np.int64)
    grid = np.arange(fmt.lo, fmt.hi + 1)
    midpoints = (levels[:-1] + levels[1:]) / 2
    nearest = np.where(grid >= 0, levels[np.searchsorted(midpoints, grid, side="left")],
                       levels[np.searchsorted(midpoints, grid, side="right")])
    return np.roll(nearest, fmt.lo).astype(storage_dtype(fmt.lo, fmt.hi))


BIAS_HEADROOM = 2.0 ** 30  # bias codes stay below 2^30 accumulator steps, inside int32


def _bias_representable(w_fmt: CodeFormat, b: np.ndarray, x_scale: float) -> CodeFormat:
    """For codes made outside the schemes (QAT's trained quantizers; the schemes honour the
    same bound through `min_scale`). Binary and ternary codes do not depend on α: a channel
    whose α is so small that its bias would need more than 2^30 accumulator steps (a dead
    channel, weights ~1e-30 after BatchNorm folding) gets the smallest α that holds the bias.
    Its weights then add at most n·max|x|·|b|/(x_scale·2^30) to an output of size |b|: a 2^-30
    fraction per accumulated code."""
    if w_fmt.spec.format not in ("binary", "ternary"):
        return w_fmt
    scales = np.broadcast_to(w_fmt.scales, b.shape)
    needed = np.abs(b) / (x_scale * BIAS_HEADROOM)
    if np.all(scales >= needed):
        return w_fmt
    return replace(w_fmt, scale=tuple(float(s) for s in np.maximum(scales, needed)))


def _bias_codes(b: np.ndarray, acc_scale: np.ndarray, node: Node) -> np.ndarray:
    """The bias at the accumulator scale Δ_A·Δ_W as int32, or one clear error where it cannot
    be (a NaN/Inf bias, or a bias beyond 2^31 accumulator steps), never a silent wrap."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        codes = np.round(b / acc_scale)
    if not np.all(np.isfinite(codes)) or np.abs(codes).max(initial=0) > np.iinfo(np.int32).max:
        raise QccError(f"layer {node.name!r}: its bias does not fit int32 at the accumulator "
                       "scale (a NaN or Inf bias, or weights far smaller than the bias)")
    return codes.astype(np.int32)


def _leading_transpose(value: Value, graph: Graph) -> Node | None:
    """The Transpose that is a graph input's only reader (a model exported from TFLite/Keras
    taking NHWC), folded into the input quantizer so no transpose copy runs on the codes."""
    readers = value.consumers
    if len(readers) != 1 or readers[0].op_type != "Transpose" or value in graph.outputs:
        return None
    node = readers[0]
    if "perm" not in node.attrs or node.outputs[0] in graph.outputs:
        return None
    return node


def _unit_dims_only(shape: tuple[int, ...] | None, perm: list[int]) -> bool:
    """Whether a Transpose of `shape` keeps its non-unit dims in order: a reshape in memory."""
    if shape is None or perm[0] != 0 or any(d is None or d < 0 for d in shape[1:]):
        return False
    moved = [p for p in perm if p == 0 or shape[p] != 1]
    return moved == sorted(moved)


def _code_bits(fmt: CodeFormat) -> int:
    """The width of a format's code range [lo, hi] (narrow ranges round up)."""
    return max(1, (fmt.hi - fmt.lo).bit_length())


def _probability_format(scheme: str, tables: SoftmaxTables) -> CodeFormat:
    """Softmax output codes: fixed point with range 1 (step 2^-P), or affine with the same scale
    and zero point for the affine scheme; other schemes' activations use the fixed form."""
    lo, hi = int_range(tables.out_bits, tables.out_signed)
    step = 2.0 ** -tables.out_frac_bits
    if scheme == "affine":
        spec = QuantSpec("affine", tables.out_bits, tables.out_signed, scale=step,
                         zero_point=tables.out_zero_point)
    else:
        spec = QuantSpec("fixed", tables.out_bits, tables.out_signed, pdr=1.0)
    return CodeFormat(step, tables.out_zero_point, lo, hi, spec)


def _row_length(shape: tuple | None, axis: int, flatten: bool) -> int | None:
    """The classes per row of a (Log)Softmax (softmax_layout), None when not static."""
    if shape is None:
        return None
    axis = axis + len(shape) if axis < 0 else axis
    dims = shape[axis:] if flatten else shape[axis:axis + 1]
    if any(d is None or d <= 0 for d in dims):
        return None
    return int(np.prod(dims, dtype=np.int64))


def _log_probability_format(scheme: str, out_range: float, bits: int) -> CodeFormat:
    """LogSoftmax output codes for values in [-out_range, 0] (qcc.core.numerics.log_softmax):
    signed fixed point with PDR out_range, or for the affine scheme scale out_range 2^-bits
    and zero point 2^(bits-1) - 1 (TFLite's int8 LogSoftmax for out_range 16)."""
    lo, hi = int_range(bits, True)
    if scheme == "affine":
        step = out_range * 2.0 ** -bits
        return CodeFormat(step, hi, lo, hi, QuantSpec("affine", bits, True, scale=step,
                                                      zero_point=hi))
    spec = QuantSpec("fixed", bits, True, pdr=out_range)
    return CodeFormat(spec.step, 0, lo, hi, spec)


def _covers(fmt: CodeFormat, lo: float, hi: float) -> bool:
    """Whether `lo` and `hi` quantize into fmt's codes without saturating (round to nearest)."""
    scale = float(np.max(fmt.scales))
    return (fmt.lo - fmt.zero_point - 0.5) * scale <= lo and \
        hi < (fmt.hi - fmt.zero_point + 0.5) * scale


def _out_attrs(fmt: CodeFormat) -> dict:
    return {"out_zero_point": fmt.zero_point, "out_lo": fmt.lo, "out_hi": fmt.hi}


def _reaches_integer_op(value: Value, rw: _Rewriter) -> bool:
    """Whether a float op's output flows into a node that would need codes again."""
    return any(reader.name in rw.layers or reader.op_type in ("Add", "Sum")
               for reader, _ in _downstream(value, lambda n: True))


def _downstream(value: Value, descend: Callable[[Node], bool]) -> Iterator[tuple[Node, Value]]:
    """Each node reading `value`, or an output of a node `descend` accepts, once, with the
    tensor it reads there."""
    stack, seen = [value], set()
    while stack:
        v = stack.pop()
        for reader in v.consumers:
            if reader.name not in seen:
                seen.add(reader.name)
                yield reader, v
                if descend(reader):
                    stack.extend(reader.outputs)


def quantize_graph(graph: Graph, stats: dict[str, TensorStats], config: QuantConfig) -> Graph:
    """The integer graph of `graph` (see the module docstring); seeds/001 §2.1 fixed point,
    seeds/000 §B affine, seeds/004 eq. 5-6 APoT weights, per the config's schemes."""
    if not weighted_nodes(graph):
        raise QccError("the model has no weighted layer (Conv, Gemm or MatMul with constant "
                       "weights) to quantize")
    out = _Rewriter(graph, stats, config).run()
    infer_shapes(out)  # every code tensor's shape and storage type, for the backends
    out.history = graph.history + [f"quantize_graph: {len(weighted_nodes(graph))} weighted "
                                   f"layers, scheme {config.scheme}"]
    return out
