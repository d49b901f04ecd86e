"""insert_quantizers: fake quantizers for quantization-aware training (seeds/004 Algorithm 1).

Precondition: BatchNormalization folded into the layers (passes/fold_batchnorm.py runs first:
this pass calls it), so every weighted layer's weight is one constant W and nothing after the
layer renormalizes its output. For every weighted layer l (Conv, Gemm, MatMul with a constant
weight) the pass rewrites, in ordinary ONNX ops plus the quantizer nodes of qcc.core.ops.qonnx:

    weight:      W̃ = (W − μ) / (σ + ε)                           WN, eq. 9 (ReduceMean, Sub, Mul,
                                                                   ReduceMean, Sqrt, Add, Div)
                 Ŵ = Q_W(W̃; α_W)                                  RCF + projection, eq. 7
                 W_l = Ŵ · (σ + ε)                                 the layer's scale restored
    activation:  Â_l = Q_A(A_l; α_A)                               Algorithm 1 step 3

Algorithm 1 convolves with Ŵ itself; its ResNets renormalize with BatchNorm right after. Here
BN is folded, so the normalized layer would be 1/σ times off: the σ of WN multiplies back in
(a per-layer scale, folded into the integer scale at compile time). μ is not added back: the
levels stay symmetric about 0 (§2.4, "the benefits of the symmetric design") and the layer's
bias absorbs the difference during training.

Quantizer per scheme (weights; activations in brackets), α learned by eq. 8 unless `rcf` is off:
- apot: qcc APoTQuant, k = 2 (k = 1 at 2 bits: {-α, 0, α}, §4) [APoTQuant, unsigned k = 2 /
  signed uniform: the same levels as passes/schemes/apot.activation_format]
- pot: APoTQuant with one term (k = b − 1, eq. 3)  [as apot]
- affine (uniform, eq. 2): QONNX Quant, narrow signed, scale α/(2^(b−1) − 1)  [Quant, scale
  α/max_int: the levels passes/schemes/affine gives for range [0, α] or [−α·(1+1/max), α]]
- fixed: Quant with a power-of-two step r·2^-(B−1) from the range (seeds/001 §2.1) [Quant, step
  r·2^-B unsigned]; the step is a power of two, so α is not learned (RCF does not apply)
- binary: QONNX BipolarQuant, α·sign(W̃)  [fixed-point activations, as passes/schemes/binary]
- ternary: Quant of 2 bits, narrow: {−α, 0, α}  [fixed-point activations]

Without RCF (`rcf=False`) the weight α is max|W̃| (no clipping, seeds/004 Table 3's "✗" column)
and follows the weights during training; activation α stays at its calibrated value. Without
WN the quantizer reads W directly. Initial α: the MSE-optimal α (qcc.core.numerics.apot
.optimal_alpha) for level sets, mean|W̃| for binary (XNOR-Net's closed form), TWN's for ternary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from passes.calibrate import TensorStats
from passes.fold_batchnorm import fold_batchnorm
from passes.schemes.apot import APoTScheme, PoTScheme
from passes.schemes.binary import ternarize_channels
from qcc.core.errors import QccError
from qcc.core.ir import Graph, Node, Value
from qcc.core.layers import weighted_nodes
from qcc.core.numerics import apot
from qcc.core.numerics.fixed import choose_pdr_exp
from qcc.core.registry import QCC_DOMAIN, QONNX_DOMAINS

QAT_SCHEMES = ("apot", "pot", "affine", "fixed", "binary", "ternary")
WN_EPS = 1e-5  # eq. 9's ε
QONNX = QONNX_DOMAINS[0]
ALPHA_SAMPLE = 1 << 14  # activation values used to choose an initial α
MAX_LEVEL_BITS = 8  # wider APoT activations are uniform (passes/schemes/apot.py)


@dataclass
class Quantizer:
    """One inserted quantizer: where it is, what α it uses and whether training moves α."""

    layer: str
    role: str  # "weight" or "activation"
    node: str  # the quantizer node
    kind: str  # apot, pot, uniform, fixed, binary, ternary
    alpha: str  # the constant holding α (for Quant: α, divided by `divisor` into the scale)
    bits: int
    signed: bool
    learned: bool
    # the constant that divides α into the value of code 1: Quant's max_int, APoT's max level L
    divisor: str | None = None
    bit_width: str | None = None  # Quant: the bit-width constant
    tracks: str | None = None  # without RCF: the tensor whose max|.| α follows (W̃)


@dataclass
class QatGraph:
    graph: Graph
    quantizers: list[Quantizer]
    parameters: list[str]  # constants SGD updates: weights, biases, learned α
    history: dict[str, list[float]] = field(default_factory=dict)


def insert_quantizers(graph: Graph, scheme: str, bits: int, act_bits: int,
                      stats: dict[str, TensorStats], samples: dict[str, np.ndarray],
                      wn: bool = True, rcf: bool = True) -> QatGraph:
    """Rewrite `graph` (in place) for QAT; see the module docstring.

    `stats` and `samples` (activation values per tensor name, for the initial α) come from
    calibrating the BN-folded float graph on training inputs.
    """
    if scheme not in QAT_SCHEMES:
        raise QccError(f"unknown QAT scheme {scheme!r}; known: {', '.join(QAT_SCHEMES)}")
    fold_batchnorm(graph)
    inserter = _Inserter(graph, scheme, stats, samples, wn, rcf)
    layers = weighted_nodes(graph)
    if not layers:
        raise QccError("the model has no weighted layer (Conv, Gemm or MatMul with constant "
                       "weights) to train")
    params: list[str] = []
    for node in layers:
        params.append(node.inputs[1].name)
        if node.input(2) is not None and node.inputs[2].is_const:
            params.append(node.inputs[2].name)
        inserter.activation(node, act_bits)
        inserter.weight(node, bits)
        inserter.bias(node)
    graph.toposort()
    params += [q.alpha for q in inserter.quantizers if q.learned]
    graph.history.append(f"insert_quantizers: {scheme} W{bits}A{act_bits}, "
                         f"{len(inserter.quantizers)} quantizers (WN {'on' if wn else 'off'}, "
                         f"RCF {'on' if rcf else 'off'})")
    return QatGraph(graph, inserter.quantizers, params)


class _Inserter:
    def __init__(self, graph: Graph, scheme: str, stats: dict[str, TensorStats],
                 samples: dict[str, np.ndarray], wn: bool, rcf: bool) -> None:
        self.graph, self.scheme, self.stats, self.samples = graph, scheme, stats, samples
        self.wn, self.rcf = wn, rcf
        self.quantizers: list[Quantizer] = []
        self.quantized: dict[str, Value] = {}  # activation name -> its quantized value
        self.lsb: dict[str, Value] = {}  # quantizer output -> the value of its code 1

    # -- helpers ------------------------------------------------------------------------
    def node(self, op: str, inputs: list[Value], name: str, attrs: dict | None = None,
             domain: str = "") -> Value:
        out = Value(self.graph.unique_name(name), None, np.dtype(np.float32))
        n = self.graph.add_node(op, inputs, [out], attrs, self.graph.unique_node_name(name))
        n.domain = domain
        return out

    def const(self, name: str, value: float | np.ndarray) -> Value:
        return self.graph.add_const(name, np.asarray(value, dtype=np.float32))

    # -- weights ------------------------------------------------------------------------
    def weight(self, layer: Node, bits: int) -> None:
        w_value = layer.inputs[1]
        w = w_value.const.astype(np.float64)
        name = layer.name
        if self.wn:
            mean = self.node("ReduceMean", [w_value], f"{name}_wn_mean", {"keepdims": 1})
            centred = self.node("Sub", [w_value, mean], f"{name}_wn_centred")
            square = self.node("Mul", [centred, centred], f"{name}_wn_square")
            var = self.node("ReduceMean", [square], f"{name}_wn_var", {"keepdims": 0})
            sigma = self.node("Sqrt", [var], f"{name}_wn_sigma")
            spread = self.node("Add", [sigma, self.const(f"{name}_wn_eps", WN_EPS)],
                               f"{name}_wn_spread")
            w_in = self.node("Div", [centred, spread], f"{name}_wn")  # eq. 9
            w_tilde, _, _ = apot.weight_normalize(w, WN_EPS)
        else:
            w_in, w_tilde, spread = w_value, w, None
        q = self.quantize_weight(layer, w_in, w_tilde, bits)
        lsb = self.lsb[q.name]
        if spread is not None:
            q = self.node("Mul", [q, spread], f"{name}_w_rescaled")
            lsb = self.lsb[q.name] = self.node("Mul", [lsb, spread], f"{name}_w_lsb")
        self.graph.set_input(layer, 1, q)

    def bias(self, layer: Node) -> None:
        """The bias on the accumulator's grid Δ_A·Δ_W (an int32 Quant), as the integer layer
        adds it (passes/quantize_graph.py): its rounding is then part of the trained model."""
        b = layer.input(2)
        if b is None or not b.is_const:
            return
        w_lsb = self.lsb[layer.inputs[1].name]
        step = self.node("Mul", [self.lsb[layer.inputs[0].name], w_lsb], f"{layer.name}_b_step")
        if layer.op_type == "Gemm" and layer.attrs.get("beta", 1.0) != 1.0:
            raise QccError(f"Gemm {layer.name!r}: qat needs beta = 1")
        out = self.node("Quant", [b, step, self.const(f"{layer.name}_b_zero_point", 0.0),
                                  self.const(f"{layer.name}_b_bits", 32.0)],
                        f"{layer.name}_b_q", {"signed": 1, "narrow": 0,
                                              "rounding_mode": "ROUND"}, domain=QONNX)
        self.graph.set_input(layer, 2, out)

    def quantize_weight(self, layer: Node, w_in: Value, w_tilde: np.ndarray, bits: int
                        ) -> Value:
        scheme, name = self.scheme, layer.name
        tracks = None if self.rcf else w_in.name
        peak = float(np.max(np.abs(w_tilde))) or 1.0
        if scheme in ("apot", "pot"):
            fmt = weight_format(scheme, bits)
            alpha = apot.optimal_alpha(w_tilde.ravel(), fmt) if self.rcf else peak
            return self.apot(layer, "weight", w_in, fmt, alpha, self.rcf, tracks)
        if scheme == "affine":
            fmt = apot.APoTFormat(bits, k=1, signed=True)  # eq. 2's levels
            alpha = apot.optimal_alpha(w_tilde.ravel(), fmt) if self.rcf else peak
            return self.quant(layer, "weight", w_in, "uniform", alpha, bits, True, True,
                              self.rcf, tracks)
        if scheme == "fixed":
            step = 2.0 ** (choose_pdr_exp(w_tilde) - (bits - 1))
            return self.quant(layer, "weight", w_in, "fixed", step, bits, True, False, False,
                              None, divisor=1.0)
        if scheme == "binary":
            alpha = float(np.mean(np.abs(w_tilde))) if self.rcf else peak
            a = self.const(f"{name}_w_alpha", alpha)
            out = self.node("BipolarQuant", [w_in, a], f"{name}_w_q", domain=QONNX)
            self.lsb[out.name] = a
            self.record(layer, "weight", out, "binary", a, 1, True, self.rcf, tracks=tracks)
            return out
        # ternary: {-α, 0, α} as a 2-bit narrow Quant
        _, alphas = ternarize_channels(w_tilde.reshape(1, -1), 0)
        alpha = float(alphas[0]) if self.rcf else peak
        return self.quant(layer, "weight", w_in, "ternary", alpha, 2, True, True, self.rcf,
                          tracks)

    # -- activations --------------------------------------------------------------------
    def activation(self, layer: Node, bits: int) -> None:
        x = layer.inputs[0]
        if x.name not in self.quantized:
            self.quantized[x.name] = self.quantize_activation(layer, x, bits)
        self.graph.set_input(layer, 0, self.quantized[x.name])

    def quantize_activation(self, layer: Node, x: Value, bits: int) -> Value:
        if x.name not in self.stats:
            raise QccError(f"no calibration statistics for {x.name!r}")
        st = self.stats[x.name]
        signed = st.lo < 0
        sample = np.asarray(self.samples.get(x.name, np.array([st.lo, st.hi])), np.float64)
        peak = (st.absmax if signed else st.hi) or 1.0
        if self.scheme in ("apot", "pot"):
            fmt = activation_format(bits, signed)
            alpha = apot.optimal_alpha(sample, fmt) if self.rcf else peak
            return self.apot(layer, "activation", x, fmt, alpha, self.rcf, None)
        if self.scheme == "affine":
            fmt = apot.APoTFormat(bits + int(not signed), k=1, signed=True)
            alpha = apot.optimal_alpha(np.abs(sample) if not signed else sample, fmt) \
                if self.rcf else peak
            return self.quant(layer, "activation", x, "uniform", alpha, bits, signed, False,
                              self.rcf, None)
        # fixed, binary, ternary: fixed-point activations (power-of-two range, seeds/001 §2.1)
        step = 2.0 ** (choose_pdr_exp(np.array([st.absmax])) - (bits - int(signed)))
        return self.quant(layer, "activation", x, "fixed", step, bits, signed, False, False,
                          None, divisor=1.0)

    # -- quantizer nodes ------------------------------------------------------------------
    def apot(self, layer: Node, role: str, x: Value, fmt: apot.APoTFormat, alpha: float,
             learned: bool, tracks: str | None) -> Value:
        """Weights project exactly (their codes are computed once, at compile time);
        activations as the integer graph will, from its integer grid (grid_rounding)."""
        tag = "w" if role == "weight" else "a"
        a = self.const(f"{layer.name}_{tag}_alpha", alpha)
        out = self.node("APoTQuant", [x, a], f"{layer.name}_{tag}_q",
                        {"bits": fmt.bits, "k": fmt.k, "signed": int(fmt.signed),
                         "grid_rounding": int(role == "activation")}, domain=QCC_DOMAIN)
        top = self.const(f"{layer.name}_{tag}_max_level", float(fmt.integer_levels.max()))
        self.lsb[out.name] = self.node("Div", [a, top], f"{layer.name}_{tag}_lsb")  # α·γ·2^-E
        self.record(layer, role, out, "pot" if fmt.k == fmt.magnitude_bits and fmt.k > 1
                    else "apot", a, fmt.bits, fmt.signed, learned, top.name, tracks=tracks)
        return out

    def quant(self, layer: Node, role: str, x: Value, kind: str, alpha: float, bits: int,
              signed: bool, narrow: bool, learned: bool, tracks: str | None,
              divisor: float | None = None) -> Value:
        """Quant(x, α / max_int, 0, bits): α is the largest level (RCF's clipping threshold)."""
        tag = "w" if role == "weight" else "a"
        top = float((1 << (bits - 1)) - 1 if signed else (1 << bits) - 1)
        if divisor is not None:  # fixed: `alpha` is the power-of-two step itself
            alpha, top = alpha * top, top
        a = self.const(f"{layer.name}_{tag}_alpha", alpha)
        d = self.const(f"{layer.name}_{tag}_max_int", top)
        scale = self.node("Div", [a, d], f"{layer.name}_{tag}_scale")
        b = self.const(f"{layer.name}_{tag}_bits", float(bits))
        zero = self.const(f"{layer.name}_{tag}_zero_point", 0.0)
        out = self.node("Quant", [x, scale, zero, b], f"{layer.name}_{tag}_q",
                        {"signed": int(signed), "narrow": int(narrow),
                         "rounding_mode": "ROUND"}, domain=QONNX)
        self.lsb[out.name] = scale
        self.record(layer, role, out, kind, a, bits, signed, learned, d.name, b.name, tracks)
        return out

    def record(self, layer: Node, role: str, out: Value, kind: str, alpha: Value, bits: int,
               signed: bool, learned: bool, divisor: str | None = None,
               bit_width: str | None = None, tracks: str | None = None) -> None:
        self.quantizers.append(Quantizer(layer.name, role, out.producer.name, kind, alpha.name,
                                         bits, signed, learned, divisor, bit_width, tracks))


def weight_format(scheme: str, bits: int) -> apot.APoTFormat:
    """The signed weight levels of passes/schemes/apot.py (APoT 2-8 bits, PoT 2-6)."""
    return (PoTScheme() if scheme == "pot" else APoTScheme()).weight_format(bits)


def activation_format(bits: int, signed: bool) -> apot.APoTFormat:
    """passes/schemes/apot.activation_format's levels: unsigned APoT k = 2, else uniform."""
    k = 1 if signed or bits > MAX_LEVEL_BITS else 2
    return apot.APoTFormat(bits, k=min(k, bits - int(signed)), signed=signed)


def set_bits(qat: QatGraph, weight_bits: int, act_bits: int | None) -> None:
    """Progressive initialization (seeds/004 §4): move every quantizer of the weights (and of
    the activations when `act_bits` is given) to a new width, keeping the trained α."""
    graph = qat.graph
    for q in qat.quantizers:
        if q.role == "activation" and act_bits is None:
            continue
        bits = weight_bits if q.role == "weight" else act_bits
        node = graph.node(q.node)
        if q.kind in ("apot", "pot"):
            fmt = weight_format(q.kind, bits) if q.role == "weight" else \
                activation_format(bits, q.signed)
            node.attrs.update(bits=fmt.bits, k=fmt.k)
            graph.values[q.divisor].const = np.asarray(fmt.integer_levels.max(), np.float32)
        elif q.kind in ("uniform", "fixed"):
            top = (1 << (bits - 1)) - 1 if q.signed else (1 << bits) - 1
            old_top = float(graph.values[q.divisor].const)
            if q.kind == "fixed":  # keep the range r = 2^e: the step halves per added bit
                step = float(graph.values[q.alpha].const) / old_top * 2.0 ** (q.bits - bits)
                graph.values[q.alpha].const = np.asarray(step * top, np.float32)
            graph.values[q.divisor].const = np.asarray(top, np.float32)
            graph.values[q.bit_width].const = np.asarray(bits, np.float32)
        else:
            continue  # binary and ternary have one width
        q.bits = bits
