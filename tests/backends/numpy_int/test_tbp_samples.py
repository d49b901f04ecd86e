"""`--grad-ternary auto` (backends/numpy_int/training/tbp_samples.py) and the sign-activation
backward it measures on: R against numpy's corrcoef and against an independent run of
seeds/000 Algorithm 1 (qcc.core.numerics.binary.tbp_weight_grad, float matmuls); the chosen S is
the smallest reaching R >= 0.7; too few samples allowed is one error naming the layer; the
straight-through estimator zeroes exactly the saturated inputs' gradients."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.numpy_int.interpreter import run_integer
from backends.numpy_int.train_step import backward
from backends.numpy_int.training import tbp_samples
from backends.numpy_int.training.loop import batch_order
from backends.numpy_int.training.vjps import Backward
from passes.training_program import TrainOptions, build_training_program
from qcc.core.errors import QccError
from qcc.core.numerics.binary import tbp_weight_grad
from qcc.core.numerics.rounding import RngState
from qcc.core.numerics.softmax_ce import ce_gradient_q24
from qcc.core.registry import training_lookup
from qcc.driver.pipeline import compile_model
from qcc.driver.train_outdir import annotate_training_formats
from tests.backends.c.test_train_xnor import binary_digits

DIGITS = Path(__file__).resolve().parents[3] / "examples" / "digits"


@given(st.integers(2, 40), st.integers(0, 2**32 - 1))
@settings(max_examples=50, deadline=None)
def test_correlation_is_pearsons_r(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.integers(-50, 50, n)
    b = a * rng.integers(-3, 4) + rng.integers(-20, 20, n)
    got = tbp_samples.correlation(a, b)
    if np.std(a) == 0 or np.std(b) == 0:
        assert got == (1.0 if np.array_equal(a, b) else 0.0)
    else:
        assert got == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-12)


@pytest.fixture(scope="module")
def binary_network(tmp_path_factory: pytest.TempPathFactory):
    """The digits network with sign activations in conv2 and fc1 (first and last layer fixed
    point), its training formats and data."""
    folder = tmp_path_factory.mktemp("bnn")
    model = binary_digits(folder)
    compiled = compile_model(model, 8, "binary", DIGITS / "calib.npz",
                             folder / "overrides.json", binary_activations=True,
                             for_training=True)
    train = np.load(DIGITS / "train.npz")
    x, y = train["x"].astype(np.float32), train["y"].astype(np.int64)
    annotate_training_formats(compiled.reference, compiled.integer, x, y, -4)
    return compiled.integer, x, y


def test_chosen_samples_are_the_smallest_reaching_the_target(binary_network) -> None:
    integer, x, y = binary_network
    program = build_training_program(integer, TrainOptions(update="bc", batch=32))
    choices = tbp_samples.choose_samples(program, integer, x, y, 64)
    assert [c.layer for c in choices] == ["conv1", "conv2", "fc1", "fc2"]
    for c in choices:
        assert c.samples == len(c.curve) and c.correlation == c.curve[-1] >= 0.7
        assert all(r < 0.7 for r in c.curve[:-1])
    assert max(c.samples for c in choices) > 1  # conv2 needs more than one sample


def test_correlation_matches_an_independent_algorithm_1(binary_network) -> None:
    """One minibatch, layer fc1 (sign activations): R(S) for S = 1 .. 6 equals np.corrcoef of
    binary.tbp_weight_grad (its own loop over S samples, the same PRNG stream) against
    G_Aᵀ sign(x) in float."""
    integer, x, y = binary_network
    program = build_training_program(integer, TrainOptions(update="bc", batch=32,
                                                           trainable=("fc1",)))
    idx = batch_order(len(x), 1, 32, 0)[0]
    env, _ = run_integer(integer, {program.input: x[idx]}, check=False, keep_all=True)
    z = env[program.logits]
    operands: dict = {}
    backward(program, integer, env, (ce_gradient_q24(z, program.logits_exp, y[idx]).reshape(
        z.shape), program.reps[program.logits]), 32, RngState(0, 0), {}, operands)
    ga, a = operands["fc1"]
    layer = program.layer("fc1")
    x_in = env[layer.input]
    assert np.array_equal(a, np.where(x_in >= 0, 1, -1))  # the sign activations, sign(0) = +1
    exact = ga.astype(np.float64).T @ np.where(x_in >= 0, 1.0, -1.0)
    curve = tbp_samples.choose_samples(program, integer, x, y, 64, batches=1)[0].curve
    for samples in range(1, min(len(curve), 6) + 1):
        total, scale, _ = tbp_weight_grad(ga, a, samples, RngState(tbp_samples.MEASURE_SEED, 0))
        assert curve[samples - 1] == pytest.approx(
            np.corrcoef((total * scale).ravel(), exact.ravel())[0, 1], abs=1e-9)


def test_too_few_samples_allowed_is_one_error_naming_the_layer(binary_network) -> None:
    integer, x, y = binary_network
    program = build_training_program(integer, TrainOptions(update="bc", batch=32))
    with pytest.raises(QccError, match=r"layer 'conv2' reaches R = 0\.\d+ at S = 1"):
        tbp_samples.choose_samples(program, integer, x, y, 1)


def test_straight_through_estimator_zeroes_saturated_inputs(binary_network) -> None:
    """fc1's input gradient (to the pooled conv2 output) is the binary layer's Wᵀ(α G_A) where
    that input lies strictly inside its code range, and zero where it is saturated (some
    input codes set to the ends of the range: the calibrated range holds the data)."""
    integer, x, y = binary_network
    program = build_training_program(integer, TrainOptions(update="bc", batch=64))
    layer = program.layer("fc1")
    assert layer.xnor and layer.x_exp == 0 and (layer.ste_lo, layer.ste_hi) == (-128, 127)
    env, _ = run_integer(integer, {program.input: x[:64]}, check=False, keep_all=True)
    x_in = env[layer.input]
    x_in[:, ::7], x_in[:, 3::11] = layer.ste_hi, layer.ste_lo  # as if saturated in the forward
    saturated = (x_in <= layer.ste_lo) | (x_in >= layer.ste_hi)
    assert saturated.any() and not saturated.all()
    z = env[program.logits]
    grad = (ce_gradient_q24(z, program.logits_exp, y[:64]).reshape(z.shape),
            program.reps[program.logits])
    step = Backward(program, env, 64, RngState(0, 0), {}, record=True)
    for name in program.backward_nodes:  # fc2, then fc1
        node = integer.node(name)
        (value, grad), = training_lookup(node, "int_vjp")(step, node, grad)
        if name == "fc1":
            break
    ga = step.operands["fc1"][0]
    w = integer.values[layer.weight].const.astype(np.int64)  # (M, K): transB
    expected = (ga * np.asarray(layer.alpha_mult, np.int64)) @ w
    expected[saturated] = 0
    assert value.name == layer.input and grad[1] == layer.dx_rep
    assert np.array_equal(grad[0], expected)
