"""The fixed-point train step (backends/numpy_int/train_step.py): the integer softmax
cross-entropy against float, the integer backward against the float VJPs of core/ops/grads on the
same forward, the update rules of seeds/003 against their definitions, the unbiasedness of every
stochastic rounding, the PRNG draw order, --trainable, and refusals that change nothing."""

from __future__ import annotations

import copy
import math
import shutil
import subprocess
from decimal import Decimal, getcontext
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.numpy_int.interpreter import run_integer
from backends.numpy_int.kernels import conv_accumulator, gemm_accumulator
from backends.numpy_int.train_step import TrainState, backward, init_state, train_step
from backends.numpy_int.training import gradients as G
from backends.numpy_int.training.loop import write_float_weights
from backends.numpy_int.training.updates import update_binary, update_fixed
from passes import run_passes
from passes.calibrate import calibrate
from passes.quantize_graph import LayerConfig, QuantConfig, quantize_graph
from passes.training_program import (
    GradRep,
    LayerProgram,
    TrainOptions,
    build_training_program,
    set_training_formats,
)
from qcc import zoo
from qcc.core.autodiff import backward as float_backward
from qcc.core.autodiff import softmax_cross_entropy
from qcc.core.errors import QccError
from qcc.core.numerics.binary import stochastic_ternarize
from qcc.core.numerics.rounding import RngState
from qcc.core.numerics.softmax_ce import EXP2_LUT, ce_gradient_q24, softmax_q24
from qcc.core.onnx_import import import_model

DIGITS = Path(__file__).resolve().parents[3] / "examples" / "digits"


def wide_rows(integer, names, ga=-19, gw=-24, acc=-29) -> dict:
    """Gradient formats far finer and wider than any gradient: the backward is then exact up
    to the softmax table, so it must match float VJPs closely."""
    rows = {}
    for name in names:
        node = integer.node(name)
        w_bits = node.inputs[1].quant.bits
        rows[name] = {"B_W": w_bits, "B_A": node.inputs[0].quant.bits, "B_GW": 25,
                      "B_GA": 20, "B_acc": 20, "r_gw": 2.0 ** (gw + 24), "step_gw": 2.0 ** gw,
                      "r_ga": 2.0 ** (ga + 19), "step_ga": 2.0 ** ga, "r_acc": 1.0,
                      "step_acc": 2.0 ** acc}
    return rows


def compile_digits(bits: int = 8, scheme: str = "fixed"):
    reference = run_passes(import_model(DIGITS / "digits.onnx"), ["fold_batchnorm"])
    calib = np.load(DIGITS / "calib.npz")["x"]
    config = QuantConfig(scheme=scheme, default_bits=bits, for_training=True)
    if scheme == "binary":
        config = QuantConfig(scheme="fixed", default_bits=bits, layers={
            n: LayerConfig(1, bits, "binary") for n in ("conv1", "conv2", "fc1", "fc2")},
            for_training=True)
    return reference, quantize_graph(reference, calibrate(reference, calib), config)


@pytest.fixture(scope="module")
def digits():
    train = np.load(DIGITS / "train.npz")
    reference, integer = compile_digits()
    return reference, integer, train["x"][:32], train["y"][:32]


def program_for(integer, rows=None, **options):
    integer = copy.deepcopy(integer)
    layers = [n.name for n in integer.nodes if n.op_type in ("QConv", "QGemm")]
    set_training_formats(integer, rows or wide_rows(integer, layers))
    return integer, build_training_program(integer, TrainOptions(**options))


# -- softmax cross-entropy -------------------------------------------------------------------
def test_exp2_table_is_correctly_rounded() -> None:
    """Every entry is 2^30 · 2^(-k/256) rounded to nearest, checked in 40-digit decimals (and
    none lies within 10^-6 of a tie, so the C side may copy or recompute it)."""
    getcontext().prec = 40
    for k, entry in enumerate(EXP2_LUT):
        exact = Decimal(2) ** (30 - Decimal(k) / 256)
        assert int(entry) == int((exact + Decimal("0.5")).to_integral_value(rounding="ROUND_FLOOR"))
        assert abs(exact - int(exact) - Decimal("0.5")) > Decimal("1e-6")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(1 << 15), (1 << 15) - 1), min_size=2, max_size=12),
       st.integers(-12, 2))
def test_integer_softmax_matches_float(logits: list[int], z_exp: int) -> None:
    z = np.array([logits], np.int64)
    p = softmax_q24(z, z_exp) / 2.0 ** 24
    x = z * 2.0 ** z_exp
    q = np.exp(x - x.max())
    q /= q.sum()
    # table error 2^-9 ln 2 relative per exponential, Q.16 exponent and Q.24 output rounding
    assert np.all(np.abs(p - q) <= 4e-3 * q + 2 ** -23)


def test_ce_gradient_matches_autodiff() -> None:
    rng = np.random.default_rng(0)
    z = rng.integers(-4000, 4000, (64, 10))
    y = rng.integers(0, 10, 64)
    g = ce_gradient_q24(z, -9, y) / 2.0 ** 24 / len(z)
    _, ref = softmax_cross_entropy(z * 2.0 ** -9, y)
    np.testing.assert_allclose(g, ref, atol=2e-3 / len(z))


def test_ce_gradient_refuses_bad_labels() -> None:
    with pytest.raises(QccError, match="labels must be 0 .. 9"):
        ce_gradient_q24(np.zeros((2, 10), np.int64), -9, np.array([0, 10]))


# -- backward against float VJPs ---------------------------------------------------------------
def float_env(reference, integer, ienv) -> dict:
    """The integer forward, dequantized, under the float graph's tensor names. A fused ReLU's
    pre-activation is the layer's exact integer accumulator: the float Relu VJP reads only its
    sign, which the integer backward masks by (the straight-through estimator of the
    rounding; a code of 0 can hide a positive accumulator)."""
    env = dict(reference.constants)
    for v in reference.values.values():
        for name in (v.name + "_codes", v.name, v.name + "_q_codes"):
            iv = integer.values.get(name)
            if not v.is_const and iv is not None and iv.quant is not None and name in ienv:
                env[v.name] = (ienv[name] * iv.quant.step).astype(np.float64)
                break
    accumulators = {"QConv": conv_accumulator, "QGemm": gemm_accumulator}
    for node in reference.nodes:
        if node.op_type != "Relu" or node.inputs[0].name in env:
            continue
        layer = next((n for n in integer.nodes if n.name == node.inputs[0].producer.name), None)
        if layer is not None and layer.op_type in accumulators:
            bias = layer.input(2)
            acc = accumulators[layer.op_type](layer, ienv[layer.inputs[0].name],
                                              ienv[layer.inputs[1].name],
                                              None if bias is None else ienv[bias.name])
            env[node.inputs[0].name] = acc.astype(np.float64)
        else:  # a ReLU fused into a Requantize / QAdd masks by its output code
            env[node.inputs[0].name] = env[node.outputs[0].name]
    return env


def test_backward_matches_float_vjps_on_the_same_forward(digits) -> None:
    """With wide gradient formats every G_W equals the float VJP chain (Gemm, Relu, Flatten,
    MaxPool routing, Conv) on the integer forward's tensors, to the softmax table's accuracy."""
    reference, integer, x, y = digits
    names = [n.name for n in integer.nodes if n.op_type in ("QConv", "QGemm")]
    integer, program = program_for(integer, wide_rows(integer, names, ga=-28, gw=-30, acc=-28))
    ienv, _ = run_integer(integer, {"input": x}, keep_all=True)
    seed = (ce_gradient_q24(ienv[program.logits], program.logits_exp, y),
            program.reps[program.logits])
    grads, _ = backward(program, integer, ienv, seed, len(x), RngState(1), {})
    reference = copy.deepcopy(reference)
    write_float_weights(reference, integer, program)  # the weights the integers stand for
    env = float_env(reference, integer, ienv)
    _, d_logits = softmax_cross_entropy(env["logits"], y)
    weights = {reference.node(la.name).inputs[1].name: la for la in program.layers}
    ref = float_backward(reference, env, {"logits": d_logits}, set(weights))
    for name, layer in weights.items():
        got = grads[layer.name][0] * 2.0 ** layer.gw_exp
        scale = np.abs(ref[name]).max()
        assert np.abs(got - ref[name]).max() <= 2e-3 * scale, layer.name
        bias = reference.node(layer.name).inputs[2].name
        got_b = grads[layer.name][1] * 2.0 ** layer.ga_exp
        np.testing.assert_allclose(got_b, float_backward(reference, env, {"logits": d_logits},
                                                         {bias})[bias], atol=2e-3 * scale)


def test_backward_through_residual_add_and_global_pool() -> None:
    """ResNet-8 (QAdd fan-out, GlobalAveragePool divisor, Requantize): G_W agrees with the
    float VJPs on the dequantized forward up to the requantizations the integer forward made."""
    reference = run_passes(import_model(zoo.resnet8()), ["fold_batchnorm"])
    x = np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32)
    integer = quantize_graph(reference, calibrate(reference, x),
                             QuantConfig(scheme="fixed", default_bits=12, for_training=True))
    names = [n.name for n in integer.nodes if n.op_type in ("QConv", "QGemm")]
    integer, program = program_for(integer, wide_rows(integer, names, ga=-18, gw=-20, acc=-28),
                                   batch=4)
    write_float_weights(reference, integer, program)
    assert {"QAdd", "GlobalAveragePool"} <= {integer.node(n).op_type
                                              for n in program.backward_nodes}
    y = np.arange(4) % 10
    ienv, _ = run_integer(integer, {"input": x}, keep_all=True, check=False)  # zoo: batch 1
    seed = (ce_gradient_q24(ienv[program.logits], program.logits_exp, y),
            program.reps[program.logits])
    grads, _ = backward(program, integer, ienv, seed, len(x), RngState(1), {})
    env = float_env(reference, integer, ienv)
    logits = reference.outputs[0].name
    _, d_logits = softmax_cross_entropy(env[logits], y)
    names = {reference.node(la.name).inputs[1].name: la for la in program.layers}
    ref = float_backward(reference, env, {logits: d_logits}, set(names))
    for name, layer in names.items():
        got = (grads[layer.name][0] * 2.0 ** layer.gw_exp).ravel()
        assert np.corrcoef(got, ref[name].ravel())[0, 1] > 0.99, layer.name


# -- stochastic rounding: unbiased ---------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.integers(-(1 << 20), 1 << 20), st.integers(1, (1 << 20)), st.integers(0, 2**32 - 1))
def test_stochastic_divide_is_unbiased(x: int, divisor: int, seed: int) -> None:
    n = 4000
    q, state = G.stochastic_divide(np.full(n, x, np.int64), divisor, RngState(seed))
    assert state.counter == n
    assert set(np.unique(q)) <= {x // divisor, x // divisor + 1}
    frac = x / divisor - x // divisor
    # the sample mean of Bernoulli(frac) draws: within 5 standard errors of frac
    assert abs(q.mean() - x / divisor) <= 5 * math.sqrt(frac * (1 - frac) / n) + 1e-12


@settings(max_examples=60, deadline=None)
@given(st.integers(-(1 << 30), 1 << 30), st.integers(-4, 12), st.sampled_from([1, 3, 32, 24]),
       st.booleans(), st.integers(0, 2**32 - 1))
def test_round_gradient_is_unbiased(x: int, shift: int, divisor: int, per_batch: bool,
                                    seed: int) -> None:
    rep = GradRep(-20, divisor, per_batch)
    n = 4000
    out, state = G.round_gradient(np.full(n, x, np.int64), rep, -20 + shift, 5, RngState(seed))
    exact = x * 2.0 ** -shift / (divisor * (5 if per_batch else 1))
    total = divisor * (5 if per_batch else 1) * 2 ** max(shift, 0)
    assert state.counter == (0 if total == 1 else n)  # an exact conversion draws nothing
    frac = exact - math.floor(exact)
    assert abs(out.mean() - exact) <= 5 * math.sqrt(frac * (1 - frac) / n) + 1e-9


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-500, 500), min_size=1, max_size=8), st.integers(0, 2**32 - 1))
def test_stochastic_ternarization_is_unbiased(values: list[int], seed: int) -> None:
    """seeds/000 Algorithm 1's StcTern: E[s·t] = g element by element (the mean of S samples
    therefore converges to the gradient it replaces)."""
    g = np.array(values, np.int64)
    n = 3000
    # n independent samples: one ternarization of n stacked copies (its scale is max|g| too)
    t, s, state = stochastic_ternarize(np.tile(g, (n, 1)), RngState(seed))
    assert s == np.abs(g).max() and state.counter == n * len(g)
    p = np.abs(g) / max(s, 1)
    assert np.all(np.abs((s * t).mean(axis=0) - g) <= 5 * s * np.sqrt(p * (1 - p) / n) + 1e-9)


# -- update rules ------------------------------------------------------------------------------
def fixed_layer(acc_bits: int = 6, w_bits: int = 4) -> LayerProgram:
    lo, hi = -(1 << (w_bits - 1)), (1 << (w_bits - 1)) - 1
    return LayerProgram(
        name="l", op="QGemm", weight="w", bias=None, input="x", output="y",
        weight_shape=(1, 64), out_channels=1, channel_axis=0, trainable=True, update="fx",
        needs_grad=True, propagate=False, binary=False, relu=False,
        precision=(w_bits, 8, 8, 8, acc_bits), x_exp=-7, w_exp=-3, w_lo=lo, w_hi=hi,
        ga_exp=-10, ga_bits=8, gw_exp=-12, gw_bits=8, acc_exp=-3 - acc_bits, acc_bits=acc_bits,
        bias_master_exp=0, bias_mult=(1,), bias_shift=(0,))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-300, 300), min_size=1, max_size=40), st.integers(-8, 7),
       st.integers(-32, 31))
def test_fx_accumulator_carries_into_the_weight(updates: list[int], w0: int, a0: int) -> None:
    """fx: weight + accumulator is the exact high-precision weight (clipped to the weight's
    range); the weight is always the nearest code to it, moving by one LSB each time the
    accumulator crosses half an LSB; bc (fixed point) stores that same number whole."""
    layer = fixed_layer()
    b, half = layer.acc_bits, 1 << (layer.acc_bits - 1)
    w, acc = np.array([w0]), np.array([a0])
    bc_high = np.array([(w0 << b) + a0])
    exact = (w0 << b) + a0
    for u in updates:
        w, acc, _ = update_fixed(layer, "fx", w, acc, np.array([u]), RngState(0), {})
        _, bc_high, _ = update_fixed(layer, "bc", w, bc_high, np.array([u]), RngState(0), {})
        exact = min(max(exact - u, (layer.w_lo << b) - half), (layer.w_hi << b) + half - 1)
        assert (w[0] << b) + acc[0] == exact == bc_high[0]
        assert -half <= acc[0] < half
        assert w[0] == (exact + half) >> b


def test_rounding_rule_loses_small_updates_and_sr_keeps_them_on_average() -> None:
    """seeds/003 eq. 4 vs eq. 6: updates below half an LSB never move R's weights; SR moves
    them with probability |u| / LSB, so the mean weight follows the exact sum."""
    layer = fixed_layer()
    w = np.zeros(4096, np.int64)
    u = np.full(4096, 10)  # 10 / 64 of an LSB per step
    w_r, w_sr, state = w.copy(), w.copy(), RngState(3)
    for _ in range(20):
        w_r, _, _ = update_fixed(layer, "r", w_r, None, u, state, {})
        w_sr, _, state = update_fixed(layer, "sr", w_sr, None, u, state, {})
    assert np.all(w_r == 0)
    expected = -20 * 10 / 64
    assert abs(w_sr.mean() - expected) < 5 * math.sqrt(20 * 0.16 * 0.84 / 4096)
    assert state.counter == 20 * 4096  # one draw per weight per sr update


def binary_layer() -> LayerProgram:
    return LayerProgram(
        name="b", op="QConv", weight="w", bias=None, input="x", output="y",
        weight_shape=(2, 1, 1, 1), out_channels=2, channel_axis=0, trainable=True,
        update="bc", needs_grad=True, propagate=False, binary=True, relu=False,
        precision=(1, 8, 8, 8, 10), x_exp=-7, w_exp=0, w_lo=-1, w_hi=1, ga_exp=-10, ga_bits=8,
        gw_exp=-12, gw_bits=8, acc_exp=-20, acc_bits=10, bias_master_exp=0, bias_mult=(1, 1),
        bias_shift=(0, 0), alpha_mult=(3, 5), alpha_shift=2, alpha_acc=(100, 300))


def test_binary_rules() -> None:
    """BC: the real weight is clipped to ±α and its sign is the forward weight (eq. 7);
    R: sign(w·α - u) (eq. 3-4); SR: +1 with probability (v + α) / 2α (eq. 5-6)."""
    layer = binary_layer()
    w = np.array([1, -1]).reshape(2, 1, 1, 1)
    high = np.array([10, -10]).reshape(2, 1, 1, 1)
    u = np.array([30, -500]).reshape(2, 1, 1, 1)
    wb, hb, _ = update_binary(layer, "bc", w, high, u, RngState(0), {})
    assert hb.ravel().tolist() == [-20, 300] and wb.ravel().tolist() == [-1, 1]
    wr, _, _ = update_binary(layer, "r", w, None, u, RngState(0), {})
    assert wr.ravel().tolist() == [1, 1]  # 100 - 30 > 0; -300 + 500 > 0
    n = 20000
    w_many = np.ones((n, 1, 1, 1), np.int64)
    layer_n = LayerProgram(**{**layer.__dict__, "weight_shape": (n, 1, 1, 1), "out_channels": n,
                              "alpha_acc": (100,) * n})
    ws, _, state = update_binary(layer_n, "sr", w_many, None, np.full((n, 1, 1, 1), 50),
                                 RngState(9), {})
    assert state.counter == n
    assert abs((ws == 1).mean() - 0.75) < 0.02  # v = 50: P(+1) = 150 / 200


# -- the step: draws, determinism, --trainable, refusals -----------------------------------------
def draws(rep: GradRep, target_exp: int, batch: int) -> int:
    """1 if a rounding point draws (its divisor is not 1), else 0: fixed by the formats."""
    divisor = rep.divisor * (batch if rep.per_batch else 1) << max(target_exp - rep.exp, 0)
    return int(divisor != 1)


def test_draw_order_count_and_determinism(digits) -> None:
    """The PRNG counter advances by exactly the documented draws: one per element of each
    G_A(l) and G_W(l) rounding (and S per G_A element for TBP, one per weight for sr); the same
    state and batch give the same bits."""
    _, integer, x, y = digits
    for rule, samples in (("fx", 0), ("sr", 0), ("fx", 3)):
        g1, program = program_for(integer, update=rule, grad_ternary=samples)
        g2 = copy.deepcopy(g1)
        s1, s2 = init_state(program, g1), init_state(program, g2)
        train_step(program, g1, s1, x, y, -3)
        train_step(program, g2, s2, x, y, -3)
        expected = 0
        for layer in program.layers:
            ga = len(x) * math.prod(program.shapes[layer.output])
            weights = math.prod(layer.weight_shape)
            gw_rep = GradRep(layer.ga_exp + layer.x_exp, max(samples, 1))
            expected += ga * (draws(layer.in_rep, layer.ga_exp, len(x)) + samples)
            expected += weights * (draws(gw_rep, layer.gw_exp, 1) + (rule == "sr"))
        assert s1.rng.counter == expected
        for layer in program.layers:
            np.testing.assert_array_equal(g1.values[layer.weight].const,
                                          g2.values[layer.weight].const)


def test_trainable_limits_updates_and_backward(digits) -> None:
    reference, integer, x, y = digits
    g, program = program_for(integer, trainable=("fc1",))
    before = {la.name: g.values[la.weight].const.copy() for la in program.layers}
    assert [la.name for la in program.layers] == ["fc1", "fc2"]  # no backward below fc1
    assert not program.layer("fc2").trainable and not program.layer("fc1").propagate
    state = init_state(program, g, reference)
    for _ in range(3):
        train_step(program, g, state, x, y, -3)
    assert np.array_equal(g.values["fc2_w"].const, before["fc2"])
    assert not np.array_equal(g.values["fc1_w"].const, before["fc1"])
    assert np.array_equal(g.values["conv1_w"].const, integer.values["conv1_w"].const)


def test_refusals_change_nothing(digits) -> None:
    reference, integer, x, y = digits
    g, program = program_for(integer, batch=16)
    state = init_state(program, g, reference)
    snapshot = (copy.deepcopy(state), {n: v.const.copy() for n, v in g.values.items()
                                       if v.is_const})
    bad_labels = y[:16].copy()
    bad_labels[3] = 10
    for xb, yb, match in ((x[:16], bad_labels, "labels must be 0 .. 9"),
                          (x, y, "larger than the compiled training batch")):
        with pytest.raises(QccError, match=match):
            train_step(program, g, state, xb, yb)
    with pytest.raises(QccError, match="below what its accumulator resolves"):
        train_step(program, g, state, x[:16], y[:16], -20)
    assert state.rng == snapshot[0].rng and state.step == 0
    for name, const in snapshot[1].items():
        np.testing.assert_array_equal(g.values[name].const, const)
    with pytest.raises(QccError, match="no weighted layer named 'fc9'"):
        program_for(integer, trainable=("fc9",))
    with pytest.raises(QccError, match="no gradient / accumulator formats"):
        build_training_program(integer, TrainOptions())


def test_binary_weights_train_with_bc_and_refuse_fx() -> None:
    reference, integer = compile_digits(8, "binary")
    train = np.load(DIGITS / "train.npz")
    with pytest.raises(QccError, match="binary weights"):
        program_for(integer, update="fx")
    g, program = program_for(integer, update="bc")
    state = init_state(program, g, reference)
    for i in range(5):
        train_step(program, g, state, train["x"][32 * i:32 * i + 32],
                   train["y"][32 * i:32 * i + 32], -3)
    assert all(set(np.unique(g.values[la.weight].const)) <= {-1, 1} for la in program.layers)
    a = np.asarray(program.layer("conv1").alpha_acc).reshape(-1, 1, 1, 1)
    assert np.all(np.abs(state.acc["conv1"]) <= a)


def test_state_round_trips_through_arrays(digits) -> None:
    reference, integer, x, y = digits
    g, program = program_for(integer)
    state = init_state(program, g, reference)
    train_step(program, g, state, x, y, -3)
    back = TrainState.from_arrays(state.to_arrays())
    assert back.rng == state.rng and back.step == 1
    for k in state.acc:
        np.testing.assert_array_equal(back.acc[k], state.acc[k])
    for k in state.bias_master:
        np.testing.assert_array_equal(back.bias_master[k], state.bias_master[k])


# -- the shipped C runtime gives the same bits ---------------------------------------------------
RUNTIME = Path(__file__).resolve().parents[3] / "backends" / "c" / "runtime"
C_DRIVER = r"""
#include <stdint.h>
#include <stdio.h>

#include "qcc_runtime.h"

static const int64_t EXP2_LUT[257] = { %(lut)s };

int main(void) {
    char op;
    long long a, b, c, d, e;
    while (scanf(" %%c %%lld %%lld %%lld %%lld %%lld", &op, &a, &b, &c, &d, &e) == 6) {
        qcc_rng rng;
        uint32_t clipped = 0u;
        rng.seed = (uint32_t)c;
        rng.counter = (uint32_t)d;
        if (op == 'S') {  /* softmax of a row of `a` logits read next, step 2^b (no label) */
            int32_t z[64];
            qcc_grad p[64];
            long long v;
            int j;
            for (j = 0; j < a; j++) { if (scanf("%%lld", &v) != 1) return 1; z[j] = (int32_t)v; }
            qcc_ce_gradient(z, (int32_t)a, (int32_t)b, -1, EXP2_LUT, p);
            for (j = 0; j < a; j++) printf("%%lld ", (long long)p[j]);
            printf("\n");
        } else if (op == 'D') {
            printf("%%lld\n", (long long)qcc_stochastic_divide(a, b, &rng));
        } else if (op == 'F') {  /* fx update of one 4-bit weight a, accumulator b (6 bits) */
            int32_t w = (int32_t)a, acc = (int32_t)b;
            const qcc_grad u = (qcc_grad)e;
            qcc_update_fixed('f', 1, &w, &acc, &u, 0, 6, -8, 7, &rng, &clipped);
            printf("%%lld %%lld\n", (long long)w, (long long)acc);
        } else if (op == 'B') {  /* binary sr update of weight a with alpha b, draw at (c, d) */
            int32_t w = (int32_t)a, alpha = (int32_t)b;
            const qcc_grad u = (qcc_grad)e;
            qcc_update_binary('s', 1, 1, &w, 0, &u, 0, &alpha, &rng, &clipped);
            printf("%%lld\n", (long long)w);
        } else {
            return 1;
        }
    }
    return 0;
}
"""


def test_shipped_c_runtime_matches_the_training_arithmetic(tmp_path: Path) -> None:
    """softmax_ce, stochastic_divide and the fx / binary-sr updates of the shipped runtime
    header (backends/c/runtime/qcc_runtime.h, the one the C train step includes) agree with
    NumPy bit for bit."""
    gcc = shutil.which("gcc")
    assert gcc, "gcc is required (DESIGN.md: the C backend is part of the test suite)"
    source, exe = tmp_path / "train.c", tmp_path / "train"
    source.write_text(C_DRIVER % {"lut": ", ".join(str(int(v)) for v in EXP2_LUT)})
    subprocess.run([gcc, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic",
                    f"-I{RUNTIME}", str(source), str(RUNTIME / "qcc_runtime.c"), "-o", str(exe)],
                   check=True)
    rng = np.random.default_rng(5)
    lines, expected = [], []
    for _ in range(200):
        m, z_exp = int(rng.integers(2, 12)), int(rng.integers(-12, 3))
        z = rng.integers(-(1 << 15), 1 << 15, m)
        lines.append(f"S {m} {z_exp} 0 0 0 " + " ".join(map(str, z)))
        expected.append(" ".join(map(str, softmax_q24(z[None], z_exp)[0])))
    layer = fixed_layer()
    for _ in range(300):
        x, div = int(rng.integers(-(1 << 40), 1 << 40)), int(rng.integers(1, 1 << 32))
        seed, ctr = int(rng.integers(0, 1 << 32)), int(rng.integers(0, 1 << 32))
        lines.append(f"D {x} {div} {seed} {ctr} 0")
        q, _ = G.stochastic_divide(np.array([x]), div, RngState(seed, ctr))
        expected.append(str(int(q[0])))
        w, a, u = int(rng.integers(-8, 8)), int(rng.integers(-32, 32)), int(rng.integers(-900, 900))
        lines.append(f"F {w} {a} 0 0 {u}")
        nw, na, _ = update_fixed(layer, "fx", np.array([w]), np.array([a]), np.array([u]),
                                 RngState(0), {})
        expected.append(f"{nw[0]} {na[0]}")
        alpha = int(rng.integers(1, 1 << 30))
        b = int(rng.choice([-1, 1]))
        ub = int(rng.integers(-2 * alpha, 2 * alpha))
        lines.append(f"B {b} {alpha} {seed} {ctr} {ub}")
        single = LayerProgram(**{**binary_layer().__dict__, "weight_shape": (1, 1, 1, 1),
                                 "out_channels": 1, "alpha_acc": (alpha,)})
        nb, _, _ = update_binary(single, "sr", np.array([b]).reshape(1, 1, 1, 1), None,
                                 np.array([ub]).reshape(1, 1, 1, 1), RngState(seed, ctr), {})
        expected.append(str(int(nb.ravel()[0])))
    run = subprocess.run([str(exe)], input="\n".join(lines) + "\n", capture_output=True,
                         text=True, check=True)
    assert [ln.strip() for ln in run.stdout.splitlines()] == expected
