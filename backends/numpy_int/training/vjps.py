"""The integer backward of every op training supports, one entry per op in the registry
(`int_vjp`), next to its static rule (passes/training_program.py `train_rule`) and its C twin
(backends/c/train_ops.py `c_train`).

An entry is called as fn(step, node, grad) with grad = (codes, GradRep) arriving at the node's
output and returns [(input Value, (codes, GradRep)), ...] for the inputs the gradient flows to.
The arithmetic is train_step.py's module docstring, step 3.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from backends.numpy_int import xnor
from backends.numpy_int.kernels import conv_accumulator, gemm_accumulator
from backends.numpy_int.training import gradients as G
from passes.training_program import GradRep, LayerProgram, TrainingProgram, backward_rep
from qcc.core.ir import Node, Value
from qcc.core.numerics.binary import stochastic_ternarize
from qcc.core.numerics.rounding import RngState
from qcc.core.ops.grads import global_maxpool_vjp, maxpool_vjp, pool_geometry, spread
from qcc.core.registry import training_entry

I64 = NDArray[np.int64]
Grad = tuple[I64, GradRep]
Flow = list[tuple[Value | None, Grad]]


@dataclass
class Backward:
    """What an op's integer backward sees and advances: the program, every forward tensor, the
    batch size, the PRNG position, the saturation counts and the trained layers' results
    {layer: (G_W codes, bias gradient sum)}. With `record`, each trained layer's rounded G_A
    and the input activations its dot products read are kept in `operands` (what
    training/tbp_samples.py measures the ternarization on)."""

    program: TrainingProgram
    env: dict[str, np.ndarray]
    batch: int
    rng: RngState
    clipped: dict[str, int]
    results: dict[str, tuple[I64, I64 | None]] = field(default_factory=dict)
    layers: dict[str, LayerProgram] = field(default_factory=dict)
    record: bool = False
    operands: dict[str, tuple[I64, I64]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.layers = {layer.name: layer for layer in self.program.layers}

    def rep(self, node: Node, rep: GradRep) -> GradRep:
        return backward_rep(node, rep, self.program.shapes)


# -- weighted layers ----------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightedVjp:
    """QConv / QGemm: mask, round and saturate G_A; G_W (exact, or from S ternarizations) and
    the bias gradient when trained; the input gradient when the gradient flows on. A layer with
    sign activations (layer.xnor) multiplies by a = sign(x) and sends its input gradient
    through the straight-through estimator (passes/training_program.py)."""

    weight_grad: Callable[[Node, np.ndarray, I64, tuple[int, ...]], I64]
    input_grad: Callable[[Node, np.ndarray, I64, tuple[int, ...]], I64]
    accumulator: Callable[[Node, np.ndarray, np.ndarray, np.ndarray | None], I64]

    def __call__(self, step: Backward, node: Node, grad: Grad) -> Flow:
        layer = step.layers[node.name]
        codes, rep = grad
        if layer.relu:
            codes = np.where(self._relu_passes(step, layer, node), codes, 0)
        ga, step.rng = G.round_gradient(codes, rep, layer.ga_exp, step.batch, step.rng)
        ga = G.saturate(ga, layer.ga_bits, step.clipped, f"{layer.name}.G_A")
        x_codes = step.env[layer.input]
        x = xnor.sign_codes(x_codes) if layer.xnor else x_codes.astype(np.int64)
        w = step.env[layer.weight]
        source = ga
        if step.record and layer.trainable:
            step.operands[layer.name] = (ga, x)
        if layer.trainable:
            gw, source = self._weight_gradient(step, layer, node, x, ga, w.shape)
            gw = G.saturate(gw, layer.gw_bits, step.clipped, f"{layer.name}.G_W")
            axes = (0,) + tuple(range(2, ga.ndim))
            step.results[layer.name] = (gw, ga.sum(axis=axes) if layer.bias is not None
                                        else None)
        if not layer.propagate:
            return []
        if layer.binary:
            mult = np.asarray(layer.alpha_mult, np.int64).reshape((1, -1) + (1,) * (ga.ndim - 2))
            source = source * mult
        dx = self.input_grad(node, w, source, x.shape)
        if layer.xnor:  # straight-through: sign'(x) = 1 inside the clipping range, else 0
            dx = np.where((x_codes > layer.ste_lo) & (x_codes < layer.ste_hi), dx, 0)
        return [(node.inputs[0], (dx, layer.dx_rep))]

    def _relu_passes(self, step: Backward, layer: LayerProgram, node: Node
                     ) -> NDArray[np.bool_]:
        """Where a fused ReLU passes the gradient: where its pre-activation, the accumulator
        before rounding, is > 0 (the straight-through estimator of the rounding, Bengio et al.
        2013). Masking by code > 0 instead would also block the positive pre-activations that
        round to code 0; with seeds/001's few activation bits (3 on digits at C_o) a fresh
        network's small activations all do, and no gradient ever reaches the earlier layers.
        A code above the floor implies acc > 0. Sign-activation layers keep the code mask (their
        forward is XNOR-popcounts)."""
        y = step.env[layer.output]
        if layer.xnor:
            return y > 0
        bias = None if layer.bias is None else step.env[layer.bias]
        return self.accumulator(node, step.env[layer.input], step.env[layer.weight], bias) > 0

    def _weight_gradient(self, step: Backward, layer: LayerProgram, node: Node, x: I64,
                         ga: I64, w_shape: tuple[int, ...]) -> tuple[I64, I64]:
        """(G_W codes at gw_exp, the gradient to propagate): exact or seeds/000 Alg. 1."""
        samples = layer.samples
        if not samples:
            exact = self.weight_grad(node, x, ga, w_shape)
            gw, step.rng = G.round_gradient(exact, GradRep(layer.ga_exp + layer.x_exp),
                                            layer.gw_exp, 1, step.rng)
            return gw, ga
        total = np.zeros(w_shape, np.int64)
        first = None
        for _ in range(samples):
            t, scale, step.rng = stochastic_ternarize(ga, step.rng)
            t = t.astype(np.int64)
            total += self.weight_grad(node, x, t, w_shape)
            first = t if first is None else first
        s = int(scale)
        gw, step.rng = G.round_gradient(total * s, GradRep(layer.ga_exp + layer.x_exp, samples),
                                        layer.gw_exp, 1, step.rng)
        return gw, first * s


training_entry("int_vjp", "QConv")(WeightedVjp(G.conv_weight_grad, G.conv_input_grad,
                                               conv_accumulator))
training_entry("int_vjp", "QGemm")(WeightedVjp(
    lambda node, x, dy, w_shape: G.gemm_weight_grad(node, x, dy),
    lambda node, w, dy, x_shape: G.gemm_input_grad(node, w, dy), gemm_accumulator))


# -- ops the gradient passes through ------------------------------------------------------------
@training_entry("int_vjp", "Requantize", "QAdd")
def requantize_vjp(step: Backward, node: Node, grad: Grad) -> Flow:
    """The gradient of the real value, unchanged to every input, after a fused ReLU's mask
    (output > its zero point)."""
    codes, rep = grad
    if node.attrs.get("relu", 0):
        y = step.env[node.outputs[0].name]
        codes = np.where(y > int(node.attrs.get("out_zero_point", 0)), codes, 0)
    return [(v, (codes, step.rep(node, rep))) for v in node.inputs]


@training_entry("int_vjp", "Relu")
def relu_vjp(step: Backward, node: Node, grad: Grad) -> Flow:
    codes, rep = grad
    x = step.env[node.inputs[0].name]
    return [(node.inputs[0], (np.where(x > 0, codes, 0), step.rep(node, rep)))]


def _routed_to_max(vjp: Callable) -> Callable[[Backward, Node, Grad], Flow]:
    """Each output's gradient to the first maximum of its window (qcc.core.ops.grads)."""

    def int_vjp(step: Backward, node: Node, grad: Grad) -> Flow:
        codes, rep = grad
        xf = step.env[node.inputs[0].name].astype(np.float64)
        yf = step.env[node.outputs[0].name].astype(np.float64)
        dx = vjp(node, [xf], [yf], [codes.astype(np.float64)])[0]
        return [(node.inputs[0], (np.rint(dx).astype(np.int64), step.rep(node, rep)))]

    return int_vjp


training_entry("int_vjp", "MaxPool")(_routed_to_max(maxpool_vjp))
training_entry("int_vjp", "GlobalMaxPool")(_routed_to_max(global_maxpool_vjp))


@training_entry("int_vjp", "GlobalAveragePool")
def global_average_vjp(step: Backward, node: Node, grad: Grad) -> Flow:
    """Every position gets its plane's gradient; the divisor goes into the GradRep."""
    codes, rep = grad
    x = step.env[node.inputs[0].name]
    return [(node.inputs[0], (np.broadcast_to(codes, x.shape).copy(), step.rep(node, rep)))]


@training_entry("int_vjp", "AveragePool")
def average_vjp(step: Backward, node: Node, grad: Grad) -> Flow:
    """Each output's gradient to every tap of its window, undivided (the GradRep divides)."""
    codes, rep = grad
    win = pool_geometry(node, step.env[node.inputs[0].name], step.env[node.outputs[0].name])
    return [(node.inputs[0], (spread(codes, win), step.rep(node, rep)))]


@training_entry("int_vjp", "Transpose")
def transpose_vjp(step: Backward, node: Node, grad: Grad) -> Flow:
    codes, rep = grad
    perm = node.attrs.get("perm", list(range(codes.ndim))[::-1])
    return [(node.inputs[0], (codes.transpose(np.argsort(perm)), step.rep(node, rep)))]


@training_entry("int_vjp", "Concat")
def concat_vjp(step: Backward, node: Node, grad: Grad) -> Flow:
    codes, rep = grad
    axis = node.attrs["axis"] % codes.ndim
    cuts = np.cumsum([step.env[v.name].shape[axis] for v in node.inputs])[:-1]
    out = step.rep(node, rep)
    return [(v, (part, out)) for v, part in zip(node.inputs, np.split(codes, cuts, axis))]


@training_entry("int_vjp", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Dropout")
def reshape_vjp(step: Backward, node: Node, grad: Grad) -> Flow:
    codes, rep = grad
    x = step.env[node.inputs[0].name]
    return [(node.inputs[0], (codes.reshape(x.shape), step.rep(node, rep)))]
