"""Pieces of the fixed-point train step (backends/numpy_int/train_step.py): every op's integer
backward (vjps.py, registered as `int_vjp`), gradient rounding and exact backward products
(gradients.py), the update rules (updates.py), the host-side training loop (loop.py) and
the number of ternarization samples per layer of `--grad-ternary auto` (tbp_samples.py). The
integer softmax cross-entropy is backend-independent: qcc/core/numerics/softmax_ce.py."""
