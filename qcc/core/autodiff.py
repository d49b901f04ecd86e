"""Reverse-mode differentiation of a Graph, the classification loss, and the per-layer tensors
of the precision methodology (seeds/001 §2, Appendix A and C).

`backward` runs the registered VJPs (qcc.core.ops.grads) in reverse topological order over a forward
environment from `run_float(graph, feeds, keep_all=True)`, summing the gradients of a tensor
read by several nodes (fan-out).

Layer tensors, after Figure 1 / Appendix A of seeds/001. A *weighted layer* l is a Conv, Gemm or
MatMul node whose weight operand is a constant. For it:

- W_l     the constant weight;
- A_l     the node's other (activation) operand, its input;
- G_W     d loss / d W_l;
- G_A     d loss / d Z_l, where Z_l is the node's own output (bias included), i.e. the layer's
          output *before* its activation function. This is the tensor the paper writes
          G^{(A)}_{l+1}: the back-propagated gradient from which G_W is computed,
          G_W = g^{(W)}(A_l, G^{(A)}_{l+1}). With this choice Appendix C's observation holds
          exactly: d g_w / d g_a = d z / d w is an entry of A_l (times Gemm's alpha), so the
          square-Jacobian of G_W w.r.t. G_A has the squared input activations as entries.
          (d loss / d of the post-ReLU tensor would differ by the ReLU mask.)

The square-Jacobian is block diagonal over output channels and samples, far too large to use
as is; §3 aggregates it "spatially": activations across channels and mini-batch, weights across
filters. `square_jacobian` returns that aggregate, J̄ = the mean over filters m and samples n of
the diagonal block J[(m, c, k), (n, m, p)] = A_l[n, c, p + k]² (c input channel of m's group,
k kernel tap, p output position), a (C_in/group · K) x (output positions) matrix whose largest
singular value is λ_max (Lemma 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcc.core.errors import QccError
from qcc.core.ir import Graph, Node, Value
from qcc.core.layers import WeightedLayer
from qcc.core.ops.grads import conv_geometry, im2col
from qcc.core.registry import lookup


# -- backward -----------------------------------------------------------------------------------
def backward(graph: Graph, env: dict[str, np.ndarray], output_grads: dict[str, np.ndarray],
             wrt: set[str]) -> dict[str, np.ndarray]:
    """d loss / d v for every tensor name v in `wrt`.

    `output_grads` seeds the reverse pass: d loss / d t for some tensors t (usually the logits).
    `env` must hold every tensor of the forward pass. Tensors of `wrt` the seeds do not depend on
    get zeros. Only float tensors carry gradients.
    """
    live = _depends_on(graph, wrt)
    grads: dict[str, np.ndarray] = dict(output_grads)
    for node in reversed(graph.nodes):
        outs = [grads.get(v.name) for v in node.outputs]
        if all(g is None for g in outs) or not any(v is not None and v.name in live
                                                   for v in node.inputs):
            continue
        fn = lookup(node).vjp
        if fn is None:
            raise QccError(f"no gradient (VJP) for op {node.op_type} (node {node.name!r})")
        inputs = [env[v.name] if v is not None else None for v in node.inputs]
        in_grads = fn(node, inputs, [env[v.name] for v in node.outputs], outs)
        for v, g in zip(node.inputs, in_grads):
            if v is not None and g is not None and v.name in live:
                # never += : a VJP may hand back the very array it received
                grads[v.name] = grads[v.name] + g if v.name in grads else g
        for v in node.outputs:  # complete and consumed: free it unless asked for
            if v.name not in wrt:
                grads.pop(v.name, None)
    return {name: grads[name] if name in grads else np.zeros_like(env[name]) for name in wrt}


def _depends_on(graph: Graph, wrt: set[str]) -> set[str]:
    """Names of the float tensors that are, or are computed from, a tensor in `wrt`."""
    live = set(wrt)
    for node in graph.nodes:
        if any(v is not None and v.name in live for v in node.inputs):
            live.update(v.name for v in node.outputs if np.issubdtype(v.dtype, np.floating))
    return live


# -- loss ---------------------------------------------------------------------------------------
def logits_value(graph: Graph) -> Value:
    """The tensor the loss is taken on: the first graph output, or, if that output is made by a
    Softmax (or LogSoftmax) over the class axis, that node's input. Training through the
    Softmax-then-log would only lose precision; the logits give the same loss and argmax."""
    out = graph.outputs[0]
    node = out.producer
    if node is not None and node.op_type in ("Softmax", "LogSoftmax"):
        x = node.inputs[0]
        axis = node.attrs.get("axis", 1 if node.opset < 13 else -1)
        if x is not None and x.shape is not None and axis % len(x.shape) == len(x.shape) - 1:
            return x
    return out


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean over the batch of −log softmax(z)[label]; returns (loss, d loss / d logits).

    Logits are (N, classes) (trailing unit axes allowed). The mean makes the gradients those of
    the mini-batch average, as in the paper's training (its G_A scale depends on it).
    """
    z = logits.reshape(logits.shape[0], -1).astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n = z.shape[0]
    loss = -float(log_p[np.arange(n), labels].mean())
    d = np.exp(log_p)
    d[np.arange(n), labels] -= 1.0
    return loss, (d / n).astype(logits.dtype).reshape(logits.shape)


# -- weighted layers ------------------------------------------------------------------------------
@dataclass
class LayerTensors:
    """The four tensors of one layer for one forward-backward pass (see the module docstring)."""

    W: np.ndarray
    A: np.ndarray
    G_W: np.ndarray
    G_A: np.ndarray


def layer_tensors(layer: WeightedLayer, env: dict[str, np.ndarray],
                  grads: dict[str, np.ndarray]) -> LayerTensors:
    """W, A, G_W, G_A of `layer`; `grads` must come from backward(wrt ⊇ {weight, output})."""
    return LayerTensors(env[layer.weight], env[layer.input], grads[layer.weight],
                        grads[layer.output])


def gradient_names(layers: list[WeightedLayer]) -> set[str]:
    """The tensors `backward` must return to give every layer's G_W and G_A."""
    return {layer.weight for layer in layers} | {layer.output for layer in layers}


# -- square-Jacobian (seeds/001 Lemma 4) -------------------------------------------------------
def square_jacobian(node: Node, a: np.ndarray, out_shape: tuple[int, ...]) -> np.ndarray:
    """The spatially aggregated square-Jacobian J̄ of G_W w.r.t. G_A for one batch.

    Rows: one filter's weights (C_in/group · kernel taps, or K for Gemm/MatMul); columns: output
    positions of one channel (1 for a plain Gemm). Entry (r, p) is the mean over samples and
    filters of (d z_p / d w_r)² = A² at the position tap r reads for output p (Appendix C).
    """
    if node.op_type == "Conv":
        return _conv_square_jacobian(node, a, out_shape)
    if node.op_type == "Gemm":
        x = a.T if node.attrs.get("transA", 0) else a
        alpha = float(node.attrs.get("alpha", 1.0))
        return (alpha * alpha * np.mean(x.astype(np.float64) ** 2, axis=0))[:, None]
    if node.op_type == "MatMul":
        # leading axis = samples, the axes between it and K = positions (e.g. tokens)
        x = a.reshape(a.shape[0], -1, a.shape[-1]) if a.ndim > 1 else a[None, None]
        return np.mean(x.astype(np.float64) ** 2, axis=0).T
    raise QccError(f"{node.op_type} node {node.name!r} is not a weighted layer")


def _conv_square_jacobian(node: Node, a: np.ndarray, out_shape: tuple[int, ...]) -> np.ndarray:
    w_shape = node.inputs[1].const.shape
    geom = conv_geometry(node, a.shape, w_shape, out_shape)
    groups = int(node.attrs.get("group", 1))
    # im2col only selects (and zero-pads) positions, so the mean over samples can come first
    mean_square = np.mean(a.astype(np.float64) ** 2, axis=0)[:, None]  # (C, 1, *spatial)
    cols = im2col(geom.pad(mean_square), geom)  # (C, K, 1, *out)
    c = a.shape[1]
    cols = cols.reshape(groups, (c // groups) * int(np.prod(geom.kernel)), -1)
    # every group holds the same number of filters: the mean over filters is over groups
    return cols.mean(axis=0)


def largest_singular_value(matrix: np.ndarray, tol: float = 1e-10, max_iter: int = 1000
                           ) -> float:
    """Largest singular value by power iteration on J̄ᵀJ̄ (J̄ ≥ 0, so a positive start vector
    has a component along the top singular vector)."""
    if matrix.size == 0:
        return 0.0
    v = np.ones(matrix.shape[1]) / np.sqrt(matrix.shape[1])
    sigma = 0.0
    for _ in range(max_iter):
        u = matrix.T @ (matrix @ v)
        norm = float(np.linalg.norm(u))
        if norm == 0.0:
            return 0.0
        v = u / norm
        previous, sigma = sigma, float(np.sqrt(norm))
        if abs(sigma - previous) <= tol * sigma:
            break
    return sigma
