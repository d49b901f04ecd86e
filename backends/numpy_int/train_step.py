"""One fixed-point training step on the integer graph: forward, softmax cross-entropy gradient,
backward and update, in integers only, at the five per-tensor precisions of seeds/001
(B_W, B_A, B_GW, B_GA, B_acc) with the update rules of seeds/003 and the ternarized
back-propagation of seeds/000. This module, with qcc/core/numerics/softmax_ce.py,
training/vjps.py, training/gradients.py and training/updates.py, is the specification the C
train step mirrors bit for bit; the static part (formats, shifts, order) comes from
passes/training_program.py (TrainingProgram).

State (per trained layer, in graph order; arrays row-major in the weight's ONNX layout)
- weight codes: the layer's weight constant in the integer graph (B_W-bit codes; binary ±1);
- bias codes: the layer's bias constant (int32, step Δ_A·Δ_W);
- acc[layer], int32, weight shape: fx: A, the part of the weight below its LSB (acc_bits bits);
  bc: H, the whole high-precision weight (fixed: P·2^B + A; binary: the BinaryConnect weight);
  sr and r keep none;
- bias_master[layer], int32, one per output channel (updates.py);
- rng = (seed, counter), both uint32 (qcc.core.numerics.rounding's counter-based PRNG), and step.
train_state.npz stores `acc.<layer>`, `bias_master.<layer>`, `rng_seed`, `rng_counter`, `step`.

A step on x (N <= the compiled batch samples), labels y, learning rate 2^lr_exp:
1. Forward: the integer graph exactly as backends/numpy_int/interpreter.py runs it; every
   tensor is kept. Nothing is drawn.
2. Loss gradient: g = softmax(z) - onehot(y) in Q.24 from the logit codes z (softmax_ce.py);
   it carries the 1/N of the mean loss to the first rounding point (GradRep.per_batch).
3. Backward, nodes in program.backward_nodes order (reverse graph order):
   - weighted layer l: the incoming gradient, masked by (output code > 0) when the layer has a
     fused ReLU, is rounded to G_A(l) at step 2^ga_exp (gradients.round_gradient: DRAWS one per
     element unless exact) and saturated to B_GA bits. If l is trained:
       with --grad-ternary S: S stochastic ternarizations t_1..t_S of G_A(l)
       (qcc.core.numerics.binary.stochastic_ternarize: DRAWS one per element, sample after sample),
       s = max|G_A(l)|, G_W = s · Σ_k t_kᵀ A_l at step 2^(ga_exp + x_exp) with divisor S
       (seeds/000 Algorithm 1); without: G_W = G_A(l)ᵀ A_l exactly;
       G_W is rounded to step 2^gw_exp (DRAWS one per weight unless exact), saturated to B_GW
       bits; the bias gradient is Σ of G_A(l) over the batch and positions (exact).
     If the gradient flows on: dA_l = W_lᵀ G_A(l) exactly (with TBP: W_lᵀ (s · t_1)), step
     2^(ga_exp + w_exp); binary weights: W_lᵀ (G_A · alpha_mult_c), step 2^(ga_exp - alpha_shift).
     S is the layer's own (LayerProgram.samples: --grad-ternary S, or per layer with auto).
     Sign activations (layer.xnor): A_l = sign(x) ∈ {−1, +1} at step 2^0 in G_W, and dA_l is
     zeroed where the input code x is not strictly inside (ste_lo, ste_hi) (the
     straight-through estimator, passes/training_program.py).
   - MaxPool / GlobalMaxPool route each output's gradient to the first maximum of its window;
     Relu masks by input > 0; Flatten, Reshape, ... move it; Requantize and QAdd pass it
     unchanged (the gradient is of the real value) after their fused ReLU's mask (output >
     its zero point); averaging pools spread it unchanged and multiply the tensor's divisor by
     the window count. A tensor read by several nodes sums their gradients after
     left-shifting them to the finer step.
4. Update, trained layers in graph order: weights by the rule (training/updates.py; sr DRAWS
   one per weight), then the bias (no draw).
The PRNG counter advances by one per draw in exactly this order (each tensor row-major); which
roundings draw depends only on the formats and N, never on the data. Saturations are counted
per tensor (StepReport.clipped: `<layer>.G_A`, `<layer>.G_W`, `<layer>.weight`, `<layer>.bias`).

For C: every quantity is an integer of at most 64 bits (products and dot products in int64,
the Bernoulli tests in uint64); `x << k` of a negative x means x · 2^k and `>>` is the
arithmetic (floor) shift; every shift, divisor and loop bound above is a constant of
training.json except N. tests/backends/test_train_step.py compiles a C99 transcription of the
softmax, the stochastic division and the update rules and checks it bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from backends.numpy_int.interpreter import run_integer
from backends.numpy_int.training.updates import (
    step_units,
    update_bias,
    update_binary,
    update_fixed,
)
from backends.numpy_int.training.vjps import Backward
from passes.training_program import (
    GradRep,
    LayerProgram,
    TrainingProgram,
    TrainState,
)
from qcc.core.errors import QccError
from qcc.core.ir import Graph
from qcc.core.numerics.rounding import INT32_MAX, INT32_MIN, RngState, round_half_away
from qcc.core.numerics.softmax_ce import ce_gradient_q24, float_loss
from qcc.core.registry import training_lookup

I64 = NDArray[np.int64]
Grad = tuple[I64, GradRep]


@dataclass
class StepReport:
    """What one step observed: host-side loss (float, display only), correct predictions,
    saturations of the training tensors and of the forward pass."""

    loss: float
    correct: int
    samples: int
    clipped: dict[str, int] = field(default_factory=dict)
    overflows: dict[str, int] = field(default_factory=dict)


# -- state ----------------------------------------------------------------------------------
def init_state(program: TrainingProgram, integer: Graph, reference: Graph | None = None
               ) -> TrainState:
    """The initial state: accumulators holding the float weights' residual below the weight
    LSB (or zero without a float reference), master biases from the float biases (or from
    the bias codes), the PRNG at (seed, 0)."""
    acc, masters = {}, {}
    for layer in program.trained:
        real_w, real_b = _float_params(layer, reference)
        codes = integer.values[layer.weight].const.astype(np.int64)
        if layer.update in ("fx", "bc"):
            acc[layer.name] = _initial_accumulator(layer, layer.update, codes, real_w)
        if layer.bias is not None:
            masters[layer.name] = _initial_master(layer, integer, real_b)
    return TrainState(acc, masters, RngState(program.options.seed & 0xFFFFFFFF, 0))


def _float_params(layer: LayerProgram, reference: Graph | None
                  ) -> tuple[np.ndarray | None, np.ndarray | None]:
    if reference is None:
        return None, None
    node = reference.node(layer.name)
    w = node.inputs[1].const.astype(np.float64) * float(node.attrs.get("alpha", 1.0))
    b = node.input(2)
    bias = None if b is None else np.broadcast_to(
        b.const.astype(np.float64) * float(node.attrs.get("beta", 1.0)), (layer.out_channels,))
    return w, bias


def _initial_accumulator(layer: LayerProgram, rule: str, codes: I64,
                         real_w: np.ndarray | None) -> I64:
    scale = math.ldexp(1.0, -layer.acc_exp)
    if layer.binary:  # BinaryConnect: H starts at the float weight (clipped to ±α)
        a = np.asarray(layer.alpha_acc, np.int64).reshape(_channel_shape(layer))
        start = codes * a if real_w is None else round_half_away(real_w * scale)
        return np.clip(start, -a, a).astype(np.int64)
    b = layer.acc_bits
    half = 1 << (b - 1)
    residual = np.zeros(codes.shape, np.int64) if real_w is None else np.clip(
        round_half_away(real_w * scale) - (codes << b), -half, half - 1).astype(np.int64)
    return residual if rule == "fx" else (codes << b) + residual


def _initial_master(layer: LayerProgram, integer: Graph, real_b: np.ndarray | None) -> I64:
    if real_b is not None:
        master = round_half_away(real_b * math.ldexp(1.0, -layer.bias_master_exp))
    else:  # invert the code conversion once, on the host
        codes = integer.values[layer.bias].const.astype(np.float64)
        master = round_half_away(codes * np.ldexp(1.0, np.asarray(layer.bias_shift))
                                 / np.asarray(layer.bias_mult, np.float64))
    return np.clip(master, INT32_MIN, INT32_MAX).astype(np.int64)


def _channel_shape(layer: LayerProgram) -> tuple[int, ...]:
    shape = [1] * len(layer.weight_shape)
    shape[layer.channel_axis] = -1
    return tuple(shape)


# -- the step -------------------------------------------------------------------------------
def check_batch(program: TrainingProgram, x: np.ndarray, y: np.ndarray) -> None:
    """Refuse a batch the compiled program cannot take, before anything changes."""
    if len(x) == 0:
        raise QccError("empty training batch")
    if len(x) > program.options.batch:
        raise QccError(f"batch of {len(x)} samples is larger than the compiled training batch "
                       f"({program.options.batch}); recompile with a larger --train-batch")
    if np.shape(y) != (len(x),) or np.asarray(y).dtype.kind not in "iu":
        raise QccError("labels must be one integer per sample")
    if y.min() < 0 or y.max() >= program.classes:
        raise QccError(f"labels must be 0 .. {program.classes - 1} (the model has "
                       f"{program.classes} classes); got {int(y.min())} .. {int(y.max())}")


def train_step(program: TrainingProgram, integer: Graph, state: TrainState, x: np.ndarray,
               y: np.ndarray, lr_exp: int | None = None) -> StepReport:
    """One step on (x, y) with learning rate 2^lr_exp (default: the compiled one). Updates the
    weight / bias codes in `integer` and `state` in place; nothing changes if it raises."""
    lr_exp = program.options.lr_exp if lr_exp is None else lr_exp
    check_batch(program, x, y)
    check_lr(program, lr_exp)
    env, run = run_integer(integer, {program.input: x}, check=False, keep_all=True)
    z = env[program.logits]
    report = StepReport(float_loss(z, program.logits_exp, y),
                        int(np.sum(z.reshape(len(z), -1).argmax(axis=1) == y)), len(x),
                        overflows=dict(run.overflows))
    rng = state.rng
    seed = (ce_gradient_q24(z, program.logits_exp, y).reshape(z.shape),
            program.reps[program.logits])
    grads, rng = backward(program, integer, env, seed, len(x), rng, report.clipped)
    rng = _update(program, integer, state, grads, lr_exp, rng, report.clipped)
    state.rng, state.step = rng, state.step + 1
    return report


def check_lr(program: TrainingProgram, lr_exp: int) -> None:
    """eq. 4: every trained layer's accumulator must resolve lr · Δ_GW."""
    for layer in program.trained:
        step_units(layer, np.zeros(1, np.int64), lr_exp)


# -- backward -------------------------------------------------------------------------------
def backward(program: TrainingProgram, integer: Graph, env: dict[str, np.ndarray],
             seed: Grad, batch: int, rng: RngState, clipped: dict[str, int],
             operands: dict[str, tuple[I64, I64]] | None = None
             ) -> tuple[dict[str, tuple[I64, I64 | None]], RngState]:
    """Step 3: {trained layer: (G_W codes, bias gradient sum)} and the advanced PRNG. Each node
    runs its op's registered integer backward (training/vjps.py). `operands`, when given,
    receives each trained layer's (G_A codes, the activations its dot products read)."""
    pending: dict[str, Grad] = {program.logits: seed}
    step = Backward(program, env, batch, rng, clipped, record=operands is not None)
    for name in program.backward_nodes:
        node = integer.node(name)
        grad = pending.pop(node.outputs[0].name)
        vjp = training_lookup(node, "int_vjp")
        for value, (codes, rep) in vjp(step, node, grad):  # type: ignore[operator]
            if value is not None and value.name in program.reps:
                _accumulate(pending, value.name, codes, rep)
    if operands is not None:
        operands.update(step.operands)
    return step.results, step.rng


def _accumulate(pending: dict[str, Grad], name: str, codes: I64, rep: GradRep) -> None:
    if name not in pending:
        pending[name] = (codes, rep)
        return
    old, old_rep = pending[name]
    exp = min(old_rep.exp, rep.exp)
    total = (old << np.int64(old_rep.exp - exp)) + (codes << np.int64(rep.exp - exp))
    pending[name] = (total, GradRep(exp, rep.divisor, rep.per_batch))


# -- update ---------------------------------------------------------------------------------
def _update(program: TrainingProgram, integer: Graph, state: TrainState,
            grads: dict[str, tuple[I64, I64 | None]], lr_exp: int, rng: RngState,
            clipped: dict[str, int]) -> RngState:
    """Step 4: every trained layer in graph order, weights then bias. The results are computed
    first and written only when every layer succeeded."""
    writes = []
    for layer in program.trained:
        gw, gb = grads[layer.name]
        w_val = integer.values[layer.weight]
        u = step_units(layer, gw, lr_exp)
        fn = update_binary if layer.binary else update_fixed
        w, acc, rng = fn(layer, layer.update, w_val.const.astype(np.int64),
                         state.acc.get(layer.name), u, rng, clipped)
        writes.append((w_val, w.astype(w_val.const.dtype), state.acc, layer.name, acc))
        if layer.bias is not None and gb is not None:
            master, codes = update_bias(layer, state.bias_master[layer.name], gb, lr_exp,
                                        clipped)
            b_val = integer.values[layer.bias]
            writes.append((b_val, codes.astype(b_val.const.dtype), state.bias_master,
                           layer.name, master))
    for value, codes, table, name, array in writes:
        value.const = codes
        if array is not None:
            table[name] = array
    return rng

