"""build_training_program: the static part of fixed-point training, read off the integer graph.

Given the integer graph of passes/quantize_graph.py whose QConv / QGemm nodes carry the gradient
and accumulator formats of `--bits auto` (passes/annotate_precision.py writes `precision` =
[B_W, B_A, B_GW, B_GA, B_acc] and `step_gw_exp`, `step_ga_exp`, `step_acc_exp`, ...), this pass
works out everything about a train step that does not depend on the data:

- per weighted layer l (`LayerProgram`): the steps (log2) of its input A_l, weights W_l, bias,
  activation gradient G_A (d loss / d Z_l, Z_l the layer's output before its ReLU: seeds/001
  Figure 1's G_{l+1}^(A)), weight gradient G_W and accumulator, their code ranges, whether the
  layer is trained (`--trainable`), whether its G_A must be computed and whether the gradient
  must flow on to its input;
- the backward order (reverse graph order) and, for every tensor a gradient reaches, how its
  integer codes relate to the real gradient (`GradRep`): value = codes · 2^exp / divisor, times
  1/N (the batch) until the first rounding point. Every shift and divisor of the backward pass
  is therefore known here, once, and checked (stochastic shifts <= 31 bits, divisors < 2^32);
- per-sample tensor shapes (qcc.core.shapes, batch 1), so the C side can size its buffers.

Every op takes part through its registry entry `train_rule` (a `TrainRule`, registered at the
end of this file): weighted layers (QConv, incl. grouped / depthwise, and QGemm) and the ops the
gradient passes through (MaxPool, GlobalMaxPool, (Global)AveragePool with one window count,
Relu, Flatten/Reshape/Squeeze/Unsqueeze/Identity/Dropout/Transpose, Concat, Requantize, QAdd).
Each backend registers its integer backward of the same ops next to it (`int_vjp`:
backends/numpy_int/training/vjps.py; `c_train`: backends/c/train_ops.py), so both walk this one
plan. Supported formats: fixed-point activations (power-of-two steps, zero point 0) and
fixed-point or binary (±1 · α_c) weights on trained and gradient-carrying layers; layers before
the first trained one only run forward (any format the backends run).

Sign activations (a layer marked dot = "xnor", `--binary-activations`): the forward reads
a = sign(x) ∈ {−1, +1} (sign(0) = +1) and runs as XNOR-popcounts (backends/numpy_int/xnor.py),
so the layer's input activation as the dot product sees it has step 2^0 (x_exp = 0). The
backward goes through the sign with the straight-through estimator of binarized networks
(Hubara et al. 2016, BNN: g_x = g_a · 1_{|x| <= 1}), with the clipping range the input
tensor's own format: the gradient passes where the input code lies strictly inside its code
range (ste_lo < x < ste_hi, i.e. the value was not saturated) and is zero outside.

Ternarized back-propagation (seeds/000, TBP): every trained layer has its number of
stochastic ternarization samples S (`LayerProgram.samples`, 0: exact gradients): one S for all
(`--grad-ternary S`) or one per layer (`TrainOptions.layer_samples`, which `--grad-ternary
auto` fills with the smallest S whose averaged ternarized weight gradient keeps a correlation
R >= 0.7 with the exact one, backends/numpy_int/training/tbp_samples.py). The logits are the input
of the output's Dequantize. backends/numpy_int/train_step.py executes the program; its module
docstring is the arithmetic specification.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from passes.quantize_graph import multiplier_shift
from qcc.core.errors import QccError, UnsupportedOpError
from qcc.core.ir import Graph, Node, Value
from qcc.core.numerics.fixed import FixedFormat
from qcc.core.numerics.rounding import RngState
from qcc.core.registry import OPS, registered, training_entry
from qcc.core.shapes import value_types

UPDATE_RULES = ("fx", "bc", "sr", "r")
CE_FRAC_BITS = 24  # the softmax cross-entropy gradient in Q.24 (qcc/core/numerics/softmax_ce.py)
MAX_STOCHASTIC_SHIFT = 31  # qcc.core.numerics.rounding.stochastic_round_shift draws 32-bit numbers
ALPHA_BITS = 23  # binary layers: α_c ≈ alpha_mult_c · 2^-alpha_shift, multipliers < 2^24
MAX_TERNARY_SAMPLES = 64  # S per layer; also the default limit of --grad-ternary auto
PRECISION_KEYS = ("B_W", "B_A", "B_GW", "B_GA", "B_acc")
I64 = NDArray[np.int64]


@dataclass(frozen=True)
class TrainOptions:
    """What the user chose: update rule (with per-layer exceptions in `layer_updates`),
    learning rate 2^lr_exp, TBP samples S (0: off; per-layer exceptions in `layer_samples`),
    trainable layer names (None: every weighted layer), the compiled batch and the PRNG seed.
    `grad_ternary_auto` > 0 asks for S per layer by the R >= 0.7 criterion with at most that
    many samples (`--grad-ternary auto`); the compile resolves it into `layer_samples`."""

    update: str = "fx"
    lr_exp: int = -4
    grad_ternary: int = 0
    trainable: tuple[str, ...] | None = None
    batch: int = 32
    seed: int = 0
    layer_updates: tuple[tuple[str, str], ...] = ()
    layer_samples: tuple[tuple[str, int], ...] = ()
    grad_ternary_auto: int = 0

    def __post_init__(self) -> None:
        for rule in (self.update, *(r for _, r in self.layer_updates)):
            if rule not in UPDATE_RULES:
                raise QccError(f"unknown update rule {rule!r}; known: {', '.join(UPDATE_RULES)}")
        for samples in (self.grad_ternary, self.grad_ternary_auto,
                        *(s for _, s in self.layer_samples)):
            if not 0 <= samples <= MAX_TERNARY_SAMPLES:
                raise QccError(f"--grad-ternary takes 0 (off) to {MAX_TERNARY_SAMPLES} samples, "
                               f"got {samples}")
        if not 1 <= self.batch <= 1 << 16:
            raise QccError(f"the training batch must be 1 to 65536 samples, got {self.batch}")
        if not -30 <= self.lr_exp <= 0:
            raise QccError(f"the learning rate must be 2^-30 to 2^0, got 2^{self.lr_exp}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["trainable"] = list(self.trainable) if self.trainable is not None else None
        d["layer_updates"] = dict(self.layer_updates)
        d["layer_samples"] = dict(self.layer_samples)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainOptions:
        d = dict(d)
        if d.get("trainable") is not None:
            d["trainable"] = tuple(d["trainable"])
        d["layer_updates"] = tuple(sorted(d.get("layer_updates", {}).items()))
        d["layer_samples"] = tuple(sorted(d.get("layer_samples", {}).items()))
        return cls(**d)

    def rule(self, layer: str) -> str:
        return dict(self.layer_updates).get(layer, self.update)

    def samples(self, layer: str) -> int:
        """S of `layer`'s ternarized weight gradient (0: exact)."""
        return dict(self.layer_samples).get(layer, self.grad_ternary)

    @property
    def ternary(self) -> bool:
        """Whether any layer ternarizes its gradients."""
        return bool(self.grad_ternary or any(s for _, s in self.layer_samples))


@dataclass(frozen=True)
class GradRep:
    """How a gradient tensor's integer codes c relate to the real gradient g:
    g = c · 2^exp / divisor (/ N, the batch size, when `per_batch`)."""

    exp: int
    divisor: int = 1
    per_batch: bool = False


@dataclass(frozen=True)
class LayerProgram:
    """The static training data of one QConv / QGemm (exponents are log2 of steps)."""

    name: str
    op: str
    weight: str  # constant names in the integer graph
    bias: str | None
    input: str  # value names
    output: str
    weight_shape: tuple[int, ...]
    out_channels: int
    channel_axis: int  # the output-channel axis of the weight tensor
    trainable: bool
    update: str  # the update rule of this layer (fx, bc, sr, r)
    needs_grad: bool  # G_A of this layer is computed (trained, or gradient flows through)
    propagate: bool  # the gradient flows on to the layer's input
    binary: bool  # weights ±1 · α_c (else fixed point)
    relu: bool  # a fused ReLU: the incoming gradient is masked by pre-activation > 0
    precision: tuple[int, int, int, int, int]  # B_W, B_A, B_GW, B_GA, B_acc as annotated
    x_exp: int
    w_exp: int  # fixed: the weight step; binary: 0 (codes ±1)
    w_lo: int
    w_hi: int
    ga_exp: int
    ga_bits: int
    gw_exp: int
    gw_bits: int
    acc_exp: int  # the accumulator step: every update is an integer in these units
    acc_bits: int  # fixed weights: B = w_exp - acc_exp bits below the weight LSB
    bias_master_exp: int  # = acc_exp + ga_exp - gw_exp: bias updates are exact there too
    bias_mult: tuple[int, ...]  # bias code = round_shift(master · bias_mult_c, bias_shift_c)
    bias_shift: tuple[int, ...]
    alpha_mult: tuple[int, ...] = ()  # binary: α_c = alpha_mult_c · 2^-alpha_shift
    alpha_shift: int = 0
    alpha_acc: tuple[int, ...] = ()  # binary: α_c in accumulator units, round(α_c 2^-acc_exp)
    in_rep: GradRep = field(default_factory=lambda: GradRep(0))  # gradient arriving at output
    dx_rep: GradRep | None = None  # gradient the layer sends to its input
    xnor: bool = False  # reads sign(x): XNOR-popcount forward, straight-through backward
    ste_lo: int = 0  # xnor: the input gradient passes where ste_lo < x code < ste_hi
    ste_hi: int = 0
    samples: int = 0  # TBP: stochastic ternarization samples S of G_A (0: exact G_W)

    @property
    def update_shift(self) -> int:
        """k with lr · G_W = G_W codes · 2^(lr_exp + k) in accumulator units (lr_exp added)."""
        return self.gw_exp - self.acc_exp

    def min_lr_exp(self) -> int:
        """eq. 4: the accumulator resolves lr · Δ_GW only while lr >= 2^(acc_exp - gw_exp)."""
        return self.acc_exp - self.gw_exp


@dataclass
class TrainingProgram:
    """Everything static about one train step; `layers` in graph order."""

    options: TrainOptions
    layers: list[LayerProgram]
    input: str
    logits: str  # the codes the loss is taken on
    logits_exp: int
    classes: int
    reps: dict[str, GradRep]  # every value a gradient reaches
    backward_nodes: list[str]  # node names, in the order the backward pass visits them
    shapes: dict[str, tuple[int, ...]]  # per-sample shapes of every tensor

    def layer(self, name: str) -> LayerProgram:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise QccError(f"no weighted layer named {name!r}")

    @property
    def trained(self) -> list[LayerProgram]:
        return [layer for layer in self.layers if layer.trainable]

    def min_lr_exp(self) -> int:
        return max(layer.min_lr_exp() for layer in self.trained)

    def to_dict(self) -> dict[str, Any]:
        """The program as plain data (training.json): options, per-layer formats, order."""
        layers = []
        for layer in self.layers:
            d = asdict(layer)
            d["in_rep"] = asdict(layer.in_rep)
            d["dx_rep"] = asdict(layer.dx_rep) if layer.dx_rep else None
            layers.append(d)
        return {"options": self.options.to_dict(), "input": self.input, "logits": self.logits,
                "logits_exp": self.logits_exp, "classes": self.classes,
                "ce_frac_bits": CE_FRAC_BITS, "backward_nodes": self.backward_nodes,
                "layers": layers,
                "grad_reps": {k: asdict(v) for k, v in self.reps.items()},
                "shapes": {k: list(v) for k, v in self.shapes.items()}}


@dataclass
class TrainState:
    """The mutable training state besides the graph's weight and bias codes (the layout is
    backends/numpy_int/train_step.py's module docstring; both backends start from it)."""

    acc: dict[str, I64]
    bias_master: dict[str, I64]
    rng: RngState
    step: int = 0

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {f"acc.{k}": v.astype(np.int32)
                                         for k, v in self.acc.items()}
        arrays.update({f"bias_master.{k}": v.astype(np.int32)
                       for k, v in self.bias_master.items()})
        arrays.update(rng_seed=np.uint32(self.rng.seed), rng_counter=np.uint32(self.rng.counter),
                      step=np.uint32(self.step & 0xFFFFFFFF))
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> TrainState:
        def part(prefix: str) -> dict[str, I64]:
            return {k[len(prefix):]: np.asarray(v, np.int64) for k, v in arrays.items()
                    if k.startswith(prefix)}

        return cls(part("acc."), part("bias_master."),
                   RngState(int(arrays["rng_seed"]), int(arrays["rng_counter"])),
                   int(arrays["step"]))


# -- formats ----------------------------------------------------------------------------------
def _fixed(value: Value, what: str, layer: str) -> FixedFormat:
    spec = value.quant
    if spec is None or spec.format != "fixed" or spec.pdr is None:
        raise QccError(f"training needs fixed-point {what} (layer {layer!r} has "
                       f"{spec if spec is not None else 'no format'}); compile with --scheme "
                       "fixed (or binary weights)")
    if "pdrs" in spec.extra:
        raise QccError(f"layer {layer!r}: training needs one range for the whole weight tensor, "
                       "not one per channel; compile with --train (QuantConfig.for_training)")
    return FixedFormat.from_spec(spec)


def set_training_formats(integer: Graph, rows: dict[str, dict[str, float]]) -> None:
    """Write gradient and accumulator formats onto QConv / QGemm nodes as annotate_precision
    does: rows[layer] has B_W ... B_acc and r_gw, step_gw, r_ga, step_ga, r_acc, step_acc."""
    for name, row in rows.items():
        node = integer.node(name)
        node.attrs["precision"] = [int(row[k]) for k in PRECISION_KEYS]
        for key in ("r_gw", "step_gw", "r_ga", "step_ga", "r_acc", "step_acc"):
            node.attrs[f"{key}_exp"] = int(round(math.log2(row[key])))


def _gradient_formats(node: Node) -> tuple[tuple[int, ...], int, int, int]:
    """(precision row, G_A step exp, G_W step exp, accumulator step exp) from the node attrs."""
    a = node.attrs
    missing = [k for k in ("precision", "step_ga_exp", "step_gw_exp", "step_acc_exp")
               if k not in a]
    if missing:
        raise QccError(f"layer {node.name!r} has no gradient / accumulator formats "
                       f"({', '.join(missing)}): compile with --train (or --bits auto)")
    return (tuple(int(b) for b in a["precision"]), int(a["step_ga_exp"]),
            int(a["step_gw_exp"]), int(a["step_acc_exp"]))


def _binary_alpha(node: Node, x_exp: int, out_exp: int, channels: int
                  ) -> tuple[tuple[int, ...], int]:
    """α_c from the forward requantization M_c 2^-S_c = Δ_x α_c / Δ_out, as integers over a
    common shift: α_c = alpha_mult_c · 2^-alpha_shift."""
    mult = np.broadcast_to(np.asarray(node.attrs["multiplier"], np.int64), (channels,))
    shift = np.broadcast_to(np.asarray(node.attrs["shift"], np.int64), (channels,))
    exps = -shift + out_exp - x_exp  # α_c = M_c · 2^exps_c
    common = int(ALPHA_BITS - math.floor(math.log2(float((mult * 2.0 ** exps).max()))))
    aligned = [int(round(float(m) * 2.0 ** (int(e) + common))) for m, e in zip(mult, exps)]
    return tuple(max(1, m) for m in aligned), common


def _bias_conversion(master_exp: int, bias_exps: np.ndarray) -> tuple[tuple[int, ...],
                                                                       tuple[int, ...]]:
    """(M_c, S_c) with 2^master_exp / Δ_bias_c ≈ M_c 2^-S_c (exact for power-of-two steps)."""
    pairs = [multiplier_shift(2.0 ** (master_exp - float(e))) for e in bias_exps]
    return tuple(m for m, _ in pairs), tuple(s for _, s in pairs)


# -- the program ------------------------------------------------------------------------------
def _layer_program(node: Node, out_value: Value, trainable: bool, update: str,
                   propagate: bool, samples: int) -> LayerProgram:
    name = node.name
    if int(node.attrs.get("x_zero_point", 0)) != 0:
        raise QccError(f"layer {name!r}: training needs activations without a zero point")
    x_fmt = _fixed(node.inputs[0], "activations", name)
    xnor = node.attrs.get("dot") == "xnor"
    ste_lo, ste_hi = x_fmt.code_range
    x_exp = 0 if xnor else x_fmt.step_exp  # sign activations are ±1: step 2^0
    w_val = node.inputs[1]
    channel_axis = train_rule(node).channel_axis(node)
    channels = w_val.const.shape[channel_axis]
    precision, ga_exp, gw_exp, acc_exp = _gradient_formats(node)
    binary = w_val.quant is not None and w_val.quant.format == "binary"
    if binary and trainable and update == "fx":
        raise QccError(f"layer {name!r} has binary weights: use --update bc, sr or r (fx needs "
                       "fixed-point weights)")
    weights = (_binary_weights(node, x_exp, _fixed(out_value, "activations", name), channels,
                               acc_exp, channel_axis) if binary else
               _fixed_weights(node, x_exp, channels, acc_exp, update))
    bias_master_exp = acc_exp + ga_exp - gw_exp
    bias_mult, bias_shift = _bias_conversion(bias_master_exp, weights.pop("bias_exps"))
    bias = node.input(2)
    return LayerProgram(
        name=name, op=node.op_type, weight=w_val.name, bias=bias.name if bias else None,
        input=node.inputs[0].name, output=node.outputs[0].name,
        weight_shape=tuple(w_val.const.shape), out_channels=int(channels),
        channel_axis=channel_axis, trainable=trainable, update=update, needs_grad=True,
        propagate=propagate, binary=binary, relu=bool(node.attrs.get("relu", 0)),
        precision=precision, x_exp=x_exp, ga_exp=ga_exp, ga_bits=precision[3],
        gw_exp=gw_exp, gw_bits=precision[2], acc_exp=acc_exp, bias_master_exp=bias_master_exp,
        bias_mult=bias_mult, bias_shift=bias_shift, xnor=xnor, ste_lo=ste_lo, ste_hi=ste_hi,
        samples=samples if trainable else 0, **weights)


def _fixed_weights(node: Node, x_exp: int, channels: int, acc_exp: int,
                   update: str) -> dict[str, Any]:
    """Weight fields of a fixed-point layer: B = w_exp - acc_exp accumulator bits."""
    w_fmt = _fixed(node.inputs[1], "weights", node.name)
    acc_bits = w_fmt.step_exp - acc_exp
    if acc_bits < 1:
        raise QccError(f"layer {node.name!r}: the accumulator step 2^{acc_exp} is not below "
                       f"the weight step 2^{w_fmt.step_exp}")
    held = acc_bits + (w_fmt.bits if update == "bc" else 0)  # bc: P·2^B + A in one word
    if held > 31:
        raise QccError(f"layer {node.name!r}: the {update} accumulator needs {held} bits; at "
                       "most 31 fit its int32")
    lo, hi = w_fmt.code_range
    return {"w_exp": w_fmt.step_exp, "w_lo": lo, "w_hi": hi, "acc_bits": acc_bits,
            "bias_exps": np.full(channels, float(x_exp + w_fmt.step_exp))}


def _binary_weights(node: Node, x_exp: int, out_fmt: FixedFormat, channels: int,
                    acc_exp: int, channel_axis: int) -> dict[str, Any]:
    """Weight fields of a ±α_c layer: α_c as integers, and in accumulator units."""
    if channel_axis != 0:
        raise QccError(f"layer {node.name!r}: binary weights must be stored output channel "
                       "first (Gemm: transposed)")
    alpha_mult, alpha_shift = _binary_alpha(node, x_exp, out_fmt.step_exp, channels)
    alpha = np.asarray(alpha_mult, np.float64) * 2.0 ** -alpha_shift
    alpha_acc = tuple(max(1, int(round(a * 2.0 ** -acc_exp))) for a in alpha)
    if max(alpha_acc) >= 1 << 30:
        raise QccError(f"layer {node.name!r}: α / Δ_acc = {max(alpha_acc)} does not fit 30 bits")
    return {"w_exp": 0, "w_lo": -1, "w_hi": 1,
            "acc_bits": int(math.ceil(math.log2(max(alpha_acc)))) + 1,
            "alpha_mult": alpha_mult, "alpha_shift": alpha_shift, "alpha_acc": alpha_acc,
            "bias_exps": x_exp + np.log2(alpha)}


def _logits(graph: Graph) -> tuple[Value, int]:
    """The codes the loss is taken on: the input of the Dequantize making the first output,
    or of the integer or float Softmax / LogSoftmax before it, which the loss replaces (the
    ops' LossEdge rules)."""
    producer = graph.outputs[0].producer
    while producer is not None:
        entry = registered(producer.op_type)
        rule = entry.train_rule if entry is not None else None
        if not isinstance(rule, LossEdge):
            break
        codes = producer.inputs[0]
        head = codes.producer
        head_entry = registered(head.op_type) if head is not None else None
        if rule.dequantizes and head_entry is not None and \
                isinstance(head_entry.train_rule, LossEdge) and head_entry.train_rule.on_codes:
            return head.inputs[0], _step_exp(head.inputs[0], head.name)
        if rule.dequantizes:
            scale = float(producer.attrs["scale"])
            return codes, int(round(math.log2(scale)))
        producer = head
    raise QccError("training needs the model's first output to be dequantized logits "
                   "(optionally followed by Softmax)")


def sample_shapes(graph: Graph) -> dict[str, tuple[int, ...]]:
    """Per-sample shapes of every non-constant tensor, by shape inference at batch 1."""
    inp = graph.inputs[0]
    shape = tuple(d if d > 0 else 1 for d in inp.shape[1:])
    types = value_types(graph, {inp.name: (1, *shape)})
    shapes = {}
    for name, t in types.items():
        if name in graph.values and not graph.values[name].is_const:
            if t.shape is None or any(d < 0 for d in t.shape):
                raise QccError(f"training needs static shapes; tensor {name!r} has {t.shape}")
            shapes[name] = tuple(int(d) for d in t.shape[1:])
    return shapes


def _trainable_ancestry(graph: Graph, trainable: set[str]) -> set[str]:
    """Value names that are computed from the output of a trainable layer (or are one)."""
    seen: set[str] = set()
    for node in graph.nodes:
        if node.name in trainable or any(v is not None and v.name in seen for v in node.inputs):
            seen.update(v.name for v in node.outputs)
    return seen


# -- the ops' static backward (registry entries `train_rule`) ----------------------------------
Shapes = dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class TrainRule:
    """How one op takes part in the backward walk. `rep` gives the representation of the
    gradient the node hands to its activation inputs from the one arriving at its output;
    a weighted op (`channel_axis` set: the output-channel axis of its weight) rounds there
    instead (its LayerProgram's dx_rep)."""

    rep: Callable[[Node, GradRep, Shapes], GradRep]
    channel_axis: Callable[[Node], int] | None = None

    @property
    def weighted(self) -> bool:
        return self.channel_axis is not None


def _same_rep(node: Node, rep: GradRep, shapes: Shapes) -> GradRep:
    return rep  # the gradient of the real value moves (or is masked) unchanged


def _global_average_rep(node: Node, rep: GradRep, shapes: Shapes) -> GradRep:
    count = int(np.prod(shapes[node.inputs[0].name][1:]))
    return GradRep(rep.exp, rep.divisor * count, rep.per_batch)


def _average_rep(node: Node, rep: GradRep, shapes: Shapes) -> GradRep:
    return GradRep(rep.exp, rep.divisor * _uniform_pool_count(node), rep.per_batch)


def _weighted_rep(node: Node, rep: GradRep, shapes: Shapes) -> GradRep:
    raise QccError(f"layer {node.name!r}: a weighted layer's input gradient is its dx_rep")


@dataclass(frozen=True)
class LossEdge:
    """The ops between the logits codes and the model's output: the Dequantize whose input the
    loss is taken on (`dequantizes`), and a final (Log)Softmax the loss replaces."""

    dequantizes: bool
    on_codes: bool = False  # an integer (Log)Softmax: the loss is taken on its input codes


def _step_exp(value: Value, head: str) -> int:
    """log2 of the fixed-point step of the logits codes a final integer (Log)Softmax reads."""
    spec = value.quant
    if spec is None or spec.format != "fixed" or spec.step is None:
        raise QccError(f"training takes the loss on the logits {head!r} reads, which need a "
                       f"fixed-point format (they have {spec}); compile with --scheme fixed")
    return int(round(math.log2(spec.step)))


training_entry("train_rule", "Dequantize")(LossEdge(True))
training_entry("train_rule", "Softmax", "LogSoftmax")(LossEdge(False))
training_entry("train_rule", "QSoftmax", "QLogSoftmax")(LossEdge(False, on_codes=True))

for _ops, _rule in (
        (("QConv",), TrainRule(_weighted_rep, lambda node: 0)),
        (("QGemm",), TrainRule(_weighted_rep,
                               lambda node: 0 if node.attrs.get("transB", 0) else 1)),
        (("MaxPool", "GlobalMaxPool", "Relu", "Flatten", "Reshape", "Squeeze", "Unsqueeze",
          "Identity", "Dropout", "Transpose", "Concat", "Requantize", "QAdd"),
         TrainRule(_same_rep)),
        (("GlobalAveragePool",), TrainRule(_global_average_rep)),
        (("AveragePool",), TrainRule(_average_rep))):
    training_entry("train_rule", *_ops)(_rule)


def train_rule(node: Node) -> TrainRule:
    """The op's TrainRule, or one QccError naming the op, the node and the supported ops."""
    entry = registered(node.op_type)
    rule = entry.train_rule if entry is not None else None
    if not isinstance(rule, TrainRule):
        known = sorted(op for op, d in OPS.items() if isinstance(d.train_rule, TrainRule))
        raise UnsupportedOpError(f"op {node.op_type} (node {node.name!r}) has no integer "
                                 f"backward; training supports {', '.join(known)}")
    return rule


def is_weighted(node: Node) -> bool:
    """Whether `node` is a weighted layer training can update (QConv, QGemm)."""
    entry = registered(node.op_type)
    rule = entry.train_rule if entry is not None else None
    return isinstance(rule, TrainRule) and rule.weighted


def backward_rep(node: Node, rep: GradRep, shapes: Shapes,
                 layer: LayerProgram | None = None) -> GradRep:
    """The representation of the gradient a node hands to its (activation) inputs, given the
    one arriving at its output. Shared by the pass (statically) and the executors."""
    if layer is not None:  # after the rounding point: G_A codes at ga_exp
        if layer.binary:
            return GradRep(layer.ga_exp - layer.alpha_shift)
        return GradRep(layer.ga_exp + layer.w_exp)
    return train_rule(node).rep(node, rep, shapes)


def _uniform_pool_count(node: Node) -> int:
    """The one window count of an AveragePool whose windows all count the same positions."""
    kernel = list(node.attrs["kernel_shape"])
    pads = list(node.attrs.get("pads", [0] * 2 * len(kernel)))
    if (any(pads) and not node.attrs.get("count_include_pad", 0)) or node.attrs.get(
            "ceil_mode", 0) or node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise QccError(f"AveragePool {node.name!r}: training supports only windows of one "
                       "size (no excluded padding, no ceil_mode)")
    return int(np.prod(kernel))


def _merge(a: GradRep | None, b: GradRep, where: str) -> GradRep:
    """Two gradients meeting at one tensor (fan-out): the finer exp; divisors must agree."""
    if a is None:
        return b
    if a.divisor != b.divisor or a.per_batch != b.per_batch:
        raise QccError(f"tensor {where!r}: gradients with different divisors meet there; "
                       "training does not support this graph")
    return GradRep(min(a.exp, b.exp), a.divisor, a.per_batch)


def _check_rounding(rep: GradRep, target_exp: int, batch: int, where: str) -> None:
    """A rounding point must shift by at most 31 bits and divide by less than 2^32."""
    shift = target_exp - rep.exp
    divisor = rep.divisor * (batch if rep.per_batch else 1) * 2 ** max(shift, 0)
    if divisor >= 1 << 32 or (divisor & (divisor - 1) == 0 and divisor > 1 << 31):
        raise QccError(f"{where}: rounding the gradient needs a divisor of {divisor} "
                       "(at most 2^31 supported); the formats are too far apart")


def build_training_program(integer: Graph, options: TrainOptions) -> TrainingProgram:
    """The TrainingProgram of `integer` (see the module docstring); raises QccError naming the
    layer or op when the graph cannot be trained."""
    names, chosen = _chosen_layers(integer, options)
    logits, logits_exp = _logits(integer)
    shapes = sample_shapes(integer)
    ancestry = _trainable_ancestry(integer, chosen)
    if logits.name not in ancestry:
        raise QccError("the trainable layers do not reach the logits")
    reps: dict[str, GradRep] = {logits.name: GradRep(-CE_FRAC_BITS, 1, True)}
    layers: dict[str, LayerProgram] = {}
    order: list[str] = []
    for node in reversed(integer.nodes[:integer.nodes.index(logits.producer) + 1]):
        out = node.outputs[0]
        if out.name in reps and out.name in ancestry:
            order.append(node.name)
            _visit(node, options, chosen, ancestry, shapes, reps, layers)
    for name in chosen - set(layers):
        raise QccError(f"layer {name!r} does not reach the logits")
    return TrainingProgram(options, [layers[n] for n in names if n in layers],
                           integer.inputs[0].name, logits.name, logits_exp,
                           int(np.prod(shapes[logits.name])), reps, order, shapes)


def _chosen_layers(integer: Graph, options: TrainOptions) -> tuple[list[str], set[str]]:
    """(every weighted layer, the trainable ones), refusing names the graph does not have."""
    if len(integer.inputs) != 1:
        raise QccError("training needs a model with one input")
    names = [n.name for n in integer.nodes if is_weighted(n)]
    if not names:
        raise QccError("the model has no weighted layer (QConv / QGemm) to train")
    chosen = set(names) if options.trainable is None else set(options.trainable)
    if not chosen:
        raise QccError("no trainable layer: --trainable names none of the model's layers")
    for what, given in (("--trainable", chosen), ("update rule", set(dict(options.layer_updates))),
                        ("ternarization samples", set(dict(options.layer_samples)))):
        unknown = sorted(given - set(names))
        if unknown:
            raise QccError(f"{what}: no weighted layer named {', '.join(map(repr, unknown))} "
                           f"(layers: {', '.join(names)})")
    return names, chosen


def _visit(node: Node, options: TrainOptions, chosen: set[str], ancestry: set[str],
           shapes: dict[str, tuple[int, ...]], reps: dict[str, GradRep],
           layers: dict[str, LayerProgram]) -> None:
    """One node of the backward walk: its LayerProgram (weighted) and its inputs' GradReps."""
    out = node.outputs[0]
    layer = None
    if train_rule(node).weighted:
        propagate = node.inputs[0].name in ancestry
        layer = _layer_program(node, out, node.name in chosen, options.rule(node.name),
                               propagate, options.samples(node.name))
        where = f"layer {node.name!r}"
        _check_rounding(reps[out.name], layer.ga_exp, options.batch, where)
        _check_rounding(GradRep(layer.ga_exp + layer.x_exp, max(1, layer.samples)),
                        layer.gw_exp, options.batch, where + " (G_W)")
        if not propagate:
            layers[node.name] = replace(layer, in_rep=reps[out.name])
            return
    rep = backward_rep(node, reps[out.name], shapes, layer)
    if layer is not None:
        layers[node.name] = replace(layer, in_rep=reps[out.name], dx_rep=rep)
    for v in node.inputs:
        if v is not None and not v.is_const and v.name in ancestry:
            reps[v.name] = _merge(reps.get(v.name), rep, v.name)
