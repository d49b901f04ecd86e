"""fuse_qdq: a QDQ graph (QuantizeLinear / DequantizeLinear around float ops) -> integer ops.

onnxruntime.quantization.quantize_static(..., quant_format=QDQ) writes every quantized op as
DQ -> float op -> Q. onnxruntime's QDQ transformers (qdq_selector_action_transformer.cc) turn
these "node units" into integer kernels; this pass does the same, under the same conditions,
into ops whose integer kernels (backends/numpy_int/qlinear.py) reproduce ORT's arithmetic:

- DQ(x), DQ(w), DQ(int32 bias) -> Conv -> Q              => QLinearConv (ONNX)
- DQ(a), DQ(b) -> MatMul -> Q                            => QLinearMatMul (ONNX)
- DQ(a), DQ(b), DQ(int32 c) -> Gemm (beta 1) -> Q         => qcc.QLinearGemm (ORT's QGemm)
- DQ(a), DQ(b) -> Add -> Q                               => qcc.QLinearAdd
- DQ(x) -> GlobalAveragePool -> Q                        => qcc.QLinearGlobalAveragePool
- DQ(x) -> AveragePool over the whole map, no padding -> Q => qcc.QLinearGlobalAveragePool
  (ORT fuses it into QLinearAveragePool, whose kernel falls back to the global pool exactly
  then: qlinear_pool.cc `fallback_to_global`; other windows stay float here)
- DQ(x) -> Softmax -> Q                                  => qcc.QLinearSoftmax (ORT's
  com.microsoft QLinearSoftmax: a table of exponentials, float32 sum and division; equal to
  onnxruntime 1.32 except at some exact rounding ties, where it differs by one code:
  tests/backends/c/test_ort_quantized_c.py)
- a Relu / Clip between the op and its Q that the Q's saturation makes redundant is dropped;
- DQ(x) -> ops that only move codes (MaxPool, Reshape, Flatten, Transpose, Squeeze, Unsqueeze,
  Slice, Gather, GlobalMaxPool, Identity, Relu) -> Q     => the same ops on the codes, followed
  by qcc.QLinearRequantize (ORT's float DQ -> Q, emulated exactly) unless DQ and Q share their
  scale and zero point (ORT drops both then; Q(DQ(c)) = c exactly). DQ commutes with these ops
  because scales are positive.

As in ORT: a node unit's inputs and output must be 8-bit with the input and output types equal
(int8 activations need int8 weights), its float output must feed only the Q and not be a graph
output, activations are per tensor and weights per tensor or per output channel. The int32 bias
codes are used as they are (ORT ignores the bias DequantizeLinear's scale too). Anything else
stays as DQ -> float op -> Q, which the NumPy interpreter runs in float as ORT does.

Preconditions: the weights' DequantizeLinear nodes are still in the graph (the importer never
folds QuantizeLinear / DequantizeLinear); onnxruntime's com.microsoft contrib ops were mapped to
qcc ops at import (qcc.core.onnx_import). Every Q/DQ scale must be a positive finite constant:
anything else is refused with one QccError line.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx

from passes.registry import graph_pass
from qcc.core.errors import QccError
from qcc.core.ir import Graph, Node, Value
from qcc.core.registry import QCC_DOMAIN

EIGHT_BIT = (np.dtype(np.uint8), np.dtype(np.int8))
# single-data-input ops whose integer kernel moves or selects codes (backends/numpy_int/kernels)
CODE_MOVERS = ("MaxPool", "GlobalMaxPool", "Reshape", "Flatten", "Transpose", "Squeeze",
               "Unsqueeze", "Slice", "Gather", "Identity", "Relu")


@dataclass(frozen=True)
class QParams:
    """The constant scale and zero point of one QuantizeLinear / DequantizeLinear node."""

    scale: Value
    zero_point: Value | None
    dtype: np.dtype  # the codes' type
    axis: int  # the quantization axis when the scale is a vector

    @property
    def per_tensor(self) -> bool:
        return self.scale.const.size == 1

    @property
    def zero(self) -> int:
        return 0 if self.zero_point is None else int(self.zero_point.const.ravel()[0])

    def same(self, other: QParams) -> bool:
        """Same codes: equal scales, zero points and type."""
        return (self.dtype == other.dtype and np.array_equal(
            self.scale.const.astype(np.float32), other.scale.const.astype(np.float32))
            and np.array_equal(_zp_array(self), _zp_array(other)))


def _zp_array(p: QParams) -> np.ndarray:
    return np.zeros(1, np.int64) if p.zero_point is None else p.zero_point.const.astype(
        np.int64).ravel()


@graph_pass("fuse_qdq")
def fuse_qdq(graph: Graph) -> Graph:
    """Rewrite QDQ node units into integer ops, as onnxruntime's QDQ transformers fuse them."""
    check_qdq_scales(graph)
    counts = _Fuser(graph).run()
    counts.update(whole_map_qlinear_pools(graph))
    if counts:
        done = ", ".join(f"{n} {op}" for op, n in sorted(counts.items()))
        graph.history.append(f"fuse_qdq: {done}")
    return graph


def whole_map_qlinear_pools(graph: Graph) -> Counter[str]:
    """QOperator models: com.microsoft QLinearAveragePool over the whole unpadded map is the
    global pool (ORT's own fallback, qlinear_pool.cc); other windows are refused."""
    counts: Counter[str] = Counter()
    for node in graph.nodes:
        if node.op_type != "QLinearAveragePool":
            continue
        if not _whole_map(node) or node.attrs.get("channels_last", 0):
            raise QccError(f"QLinearAveragePool {node.name!r}: qcc runs it over the whole "
                           "unpadded NCHW map only (the global average pool)")
        node.op_type, node.attrs = "QLinearGlobalAveragePool", {}
        out, zero_point = node.outputs[0], node.input(4)
        out.dtype = np.dtype(zero_point.dtype if zero_point is not None else node.inputs[0].dtype)
        out.shape = tuple(node.inputs[0].shape[:2]) + (1,) * (len(node.inputs[0].shape) - 2)
        counts["QLinearGlobalAveragePool"] += 1
    return counts


def _whole_map(node: Node) -> bool:
    """An average pool whose window is its whole unpadded, undilated input map."""
    shape = node.inputs[0].shape
    kernel = [int(k) for k in node.attrs.get("kernel_shape", ())]
    return not (shape is None or len(shape) != len(kernel) + 2 or list(shape[2:]) != kernel
                or any(int(p) for p in node.attrs.get("pads", ()))
                or any(int(d) != 1 for d in node.attrs.get("dilations", ()))
                or node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID", b"NOTSET",
                                                                b"VALID"))


def check_qdq_scales(graph: Graph) -> None:
    """Every Q/DQ scale and zero point must be a constant, every scale positive and finite."""
    for node in graph.nodes:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale, zero_point = node.inputs[1], node.input(2)
        if not scale.is_const or (zero_point is not None and not zero_point.is_const):
            raise QccError(f"{node.op_type} {node.name!r}: scale and zero point must be "
                           "constants to run on integers")
        values = scale.const.astype(np.float64).ravel()
        bad = values[~(np.isfinite(values) & (values > 0))]
        if values.size == 0 or bad.size:
            shown = f"{bad[0]:.6g}" if bad.size else "an empty tensor"
            raise QccError(f"{node.op_type} {node.name!r}: quantization scale {scale.name!r} "
                           f"must be positive and finite, got {shown}")


def _params(node: Node) -> QParams | None:
    """QParams of a Q/DQ node, or None for forms this pass leaves alone (blocked, 16-bit...)."""
    if node.attrs.get("block_size", 0):
        return None
    zero_point = node.input(2)
    if node.op_type == "DequantizeLinear":
        codes = node.inputs[0]
        dtype = np.dtype(codes.const.dtype if codes.is_const else codes.dtype)
        rank = codes.const.ndim if codes.is_const else len(codes.shape or ())
    else:
        dtype = np.dtype(zero_point.const.dtype) if zero_point is not None else _q_dtype(node)
        rank = len(node.inputs[0].shape or ())
    axis = int(node.attrs.get("axis", 1))
    return QParams(node.inputs[1], zero_point, dtype, axis % rank if rank else axis)


def _q_dtype(node: Node) -> np.dtype:
    code = int(node.attrs.get("output_dtype", 0))
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(code)) if code else np.dtype(np.uint8)


def _dq(value: Value | None) -> Node | None:
    producer = None if value is None else value.producer
    return producer if producer is not None and producer.op_type == "DequantizeLinear" else None


class _Fuser:
    """Finds the node unit ending in each QuantizeLinear and rewrites it in place."""

    def __init__(self, graph: Graph) -> None:
        self.g = graph
        self.counts: Counter[str] = Counter()

    def run(self) -> Counter[str]:
        targets = {"Conv": self.conv, "MatMul": self.matmul, "Gemm": self.gemm,
                   "Add": self.add, "GlobalAveragePool": self.global_average_pool,
                   "AveragePool": self.whole_map_average_pool, "Softmax": self.softmax}
        for q in [n for n in self.g.nodes if n.op_type == "QuantizeLinear"]:
            out_params = _params(q)
            if out_params is None or not out_params.per_tensor or (
                    out_params.dtype not in EIGHT_BIT):
                continue
            target = self._unit_target(q, out_params)
            rewrite = targets.get(target.op_type) if target is not None else None
            out = rewrite(target, out_params, q) if rewrite is not None else None
            if out is None:
                out = self.code_chain(q, out_params)
            if out is not None:
                self.g.replace_all_uses(q.outputs[0], out)
        self.g.remove_unused()
        return self.counts

    # -- node units ------------------------------------------------------------------------
    def _unit_target(self, q: Node, out: QParams) -> Node | None:
        """The op whose float output the Q quantizes, past a Relu/Clip the Q makes redundant."""
        value = q.inputs[0]
        if not self._only_reader(value, q):
            return None
        node = value.producer
        if node is not None and node.op_type in ("Relu", "Clip") and _redundant_clip(node, out):
            value = node.inputs[0]
            if not self._only_reader(value, node):
                return None
            node = value.producer
        return node

    def _only_reader(self, value: Value, reader: Node) -> bool:
        return value.consumers == [reader] and value not in self.g.outputs

    def _activation(self, value: Value | None) -> tuple[Value, QParams] | None:
        """The codes and per-tensor 8-bit params behind DQ(value), if that is what it is."""
        dq = _dq(value)
        params = _params(dq) if dq is not None else None
        if params is None or not params.per_tensor or params.dtype not in EIGHT_BIT:
            return None
        return dq.inputs[0], params

    def _weight(self, value: Value, axis: int, dtype: np.dtype) -> tuple[Value, QParams] | None:
        """Codes and params of DQ(value), per tensor or per channel along `axis`; int8
        activations need int8 weights (ORT's rule)."""
        dq = _dq(value)
        params = _params(dq) if dq is not None else None
        if params is None or params.dtype not in EIGHT_BIT:
            return None
        if dtype == np.int8 and params.dtype != np.int8:
            return None
        if not params.per_tensor and params.axis != axis:
            return None
        return dq.inputs[0], params

    def _bias(self, value: Value | None) -> Value | None | bool:
        """The int32 codes of DQ(bias); None without bias; False if the bias is not DQ(int32)."""
        if value is None:
            return None
        dq = _dq(value)
        if dq is None or np.dtype(dq.inputs[0].dtype) != np.int32:
            return False
        return dq.inputs[0]

    def conv(self, node: Node, out: QParams, q: Node) -> Value | None:
        x = self._activation(node.inputs[0])
        w = self._weight(node.inputs[1], 0, x[1].dtype) if x is not None else None
        bias = self._bias(node.input(2))
        if x is None or w is None or bias is False or x[1].dtype != out.dtype:
            return None
        inputs = [*self._triple(*x), *self._triple(*w), *self._pair(out)]
        if bias is not None:
            inputs.append(bias)
        attrs = {k: v for k, v in node.attrs.items() if k in (
            "auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")}
        return self._emit("QLinearConv", inputs, attrs, q, "")

    def matmul(self, node: Node, out: QParams, q: Node) -> Value | None:
        a = self._activation(node.inputs[0])
        b_rank = len(node.inputs[1].shape or ())
        b = self._weight(node.inputs[1], b_rank - 1, a[1].dtype) if a is not None else None
        if a is None or b is None or b_rank != 2 or a[1].dtype != out.dtype:
            return None
        inputs = [*self._triple(*a), *self._triple(*b), *self._pair(out)]
        return self._emit("QLinearMatMul", inputs, {}, q, "")

    def gemm(self, node: Node, out: QParams, q: Node) -> Value | None:
        trans_b = int(node.attrs.get("transB", 0))
        a = self._activation(node.inputs[0])
        b = self._weight(node.inputs[1], 0 if trans_b else 1, a[1].dtype) if a else None
        c = self._bias(node.input(2))
        if a is None or b is None or c is False or a[1].dtype != out.dtype or (
                c is not None and float(node.attrs.get("beta", 1.0)) != 1.0):
            return None
        inputs = [*self._triple(*a), *self._triple(*b), c, *self._pair(out)]
        attrs = {"alpha": float(node.attrs.get("alpha", 1.0)), "transA":
                 int(node.attrs.get("transA", 0)), "transB": trans_b}
        return self._emit("QLinearGemm", inputs, attrs, q, QCC_DOMAIN)

    def add(self, node: Node, out: QParams, q: Node) -> Value | None:
        a, b = (self._activation(v) for v in node.inputs[:2])
        if a is None or b is None or not a[1].dtype == b[1].dtype == out.dtype:
            return None
        inputs = [*self._triple(*a), *self._triple(*b), *self._pair(out)]
        return self._emit("QLinearAdd", inputs, {}, q, QCC_DOMAIN)

    def global_average_pool(self, node: Node, out: QParams, q: Node) -> Value | None:
        x = self._activation(node.inputs[0])
        if x is None or x[1].dtype != out.dtype:
            return None
        inputs = [*self._triple(*x), *self._pair(out)]
        return self._emit("QLinearGlobalAveragePool", inputs, {}, q, QCC_DOMAIN)

    def softmax(self, node: Node, out: QParams, q: Node) -> Value | None:
        x = self._activation(node.inputs[0])
        if x is None or x[1].dtype != out.dtype:
            return None
        inputs = [*self._triple(*x), *self._pair(out)]
        opset = int(node.opset)
        attrs = {"axis": int(node.attrs.get("axis", -1 if opset >= 13 else 1)), "opset": opset}
        return self._emit("QLinearSoftmax", inputs, attrs, q, QCC_DOMAIN)

    def whole_map_average_pool(self, node: Node, out: QParams, q: Node) -> Value | None:
        """An AveragePool whose window is the whole (unpadded) map is the global pool."""
        return self.global_average_pool(node, out, q) if _whole_map(node) else None

    def code_chain(self, q: Node, out: QParams) -> Value | None:
        """DQ -> code-moving ops -> Q: the ops on the codes, then one exact requantization."""
        chain, value = [], q.inputs[0]
        reader = q
        while value.producer is not None and _moves_codes(value.producer) and (
                self._only_reader(value, reader)):
            reader = value.producer
            chain.append(reader)
            value = reader.inputs[0]
        x = self._activation(value)
        if x is None:
            return None
        codes, params = x
        relu = any(n.op_type == "Relu" for n in chain)
        for node in reversed(chain):
            if node.op_type != "Relu":
                codes = self._copy_on_codes(node, codes, q)
        if params.same(out) and (not relu or out.zero == int(np.iinfo(out.dtype).min)):
            self.counts["dropped DQ/Q pairs"] += 1
            if q.outputs[0] in self.g.outputs and (
                    codes.is_const or codes in self.g.inputs or codes in self.g.outputs):
                return self._emit("Identity", [codes], {}, q, "")  # an output needs a producer
            return codes
        inputs = [codes, *self._pair(params), *self._pair(out)]
        return self._emit("QLinearRequantize", inputs, {"relu": int(relu)}, q, QCC_DOMAIN)

    # -- emission --------------------------------------------------------------------------
    def _pair(self, params: QParams) -> list[Value]:
        return [params.scale, self._zero_point(params)]

    def _triple(self, codes: Value, params: QParams) -> list[Value]:
        return [codes, *self._pair(params)]

    def _zero_point(self, params: QParams) -> Value:
        if params.zero_point is not None:
            return params.zero_point
        return self.g.add_const("zero_point", np.zeros((), params.dtype))

    def _copy_on_codes(self, node: Node, codes: Value, q: Node) -> Value:
        """`node` (a code-moving op) applied to integer codes instead of its float input."""
        source = node.outputs[0]
        out = Value(self.g.unique_name(f"{source.name}_codes"), source.shape, codes.dtype)
        self.g.add_node(node.op_type, [codes, *node.inputs[1:]], [out], dict(node.attrs),
                        self.g.unique_node_name(f"{node.name}_codes"), index=self.g.nodes.index(q))
        self.counts[f"{node.op_type} on codes"] += 1
        return out

    def _emit(self, op_type: str, inputs: list[Value | None], attrs: dict, q: Node,
              domain: str) -> Value:
        source = q.outputs[0]
        out = Value(self.g.unique_name(f"{source.name}_{op_type}"), source.shape, source.dtype)
        node = self.g.add_node(op_type, inputs, [out], attrs,
                               self.g.unique_node_name(f"{q.name}_{op_type}"),
                               index=self.g.nodes.index(q))
        node.domain = domain
        self.counts[op_type] += 1
        return out


def _moves_codes(node: Node) -> bool:
    """A single-output op of CODE_MOVERS whose inputs other than the data are constants."""
    return (node.op_type in CODE_MOVERS and len(node.outputs) == 1
            and all(v is None or v.is_const for v in node.inputs[1:]))


def _redundant_clip(node: Node, out: QParams) -> bool:
    """Relu / Clip whose clamping the following Q's saturation already does (ORT's
    IsClipMadeRedundantByQ): the clip range contains the Q's whole representable range."""
    info = np.iinfo(out.dtype)
    scale = float(out.scale.const.ravel()[0])
    lowest, highest = (info.min - out.zero) * scale, (info.max - out.zero) * scale
    if node.op_type == "Relu":
        return out.zero == info.min
    lo, hi = (node.input(i) for i in (1, 2))
    if any(v is not None and not v.is_const for v in (lo, hi)):
        return False
    lo_value = float(lo.const) if lo is not None else float(node.attrs.get("min", -np.inf))
    hi_value = float(hi.const) if hi is not None else float(node.attrs.get("max", np.inf))
    return lo_value <= lowest and hi_value >= highest
