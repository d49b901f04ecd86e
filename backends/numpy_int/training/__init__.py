"""Pieces of the fixed-point train step (backends/numpy_int/train_step.py): the integer softmax
cross-entropy, gradient rounding and exact backward products, the update rules, the host-side
training loop, OUTDIR files and the from-scratch experiment of seeds/001 §4."""
