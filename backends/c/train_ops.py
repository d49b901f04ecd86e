"""The C train step's backward of every op training supports, one entry per op in the registry
(`c_train`), next to the static rule (passes/training_program.py `train_rule`) and the NumPy
backward (backends/numpy_int/training/vjps.py `int_vjp`) it mirrors bit for bit.

An entry has two methods the emitter (backends/c/train_emit.py) calls while it walks
program.backward_nodes:
- `backward(e, w, node, gy, rep)`: write C into `w` that turns the gradient buffer `gy` of the
  node's output (codes of `rep`) into its inputs' gradients, and return [(input Value, buffer,
  GradRep), ...]; the emitter sums contributions that meet at one tensor;
- `growth(e, node)`: by how much one input gradient value can exceed the largest incoming one
  (the windows that overlap at one position), for train_emit.gradient_bound.
The forward of every node is the inference library's kernel (backends/c/ops), except for the
trained layers, whose weights live in RAM (qcc_conv_forward; qcc_xnor_forward for a layer with
sign activations, whose backward is `WeightedTrain.xnor_backward`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from backends.c.writer import CWriter
from passes.training_program import GradRep, LayerProgram, TrainingProgram
from qcc.core.errors import QccError
from qcc.core.ir import Node, Value
from qcc.core.ops.nn import conv_window, pool_window
from qcc.core.registry import registered, training_entry


class TrainEmitter(Protocol):
    """What an entry reads from and asks of the emitter (backends/c/train_emit.TrainEmitter,
    which imports this module for the entries: the one-way dependency is this interface)."""

    p: TrainingProgram
    sizes: dict[str, int]  # per-sample elements of each tensor
    layers: dict[str, LayerProgram]
    node_ids: dict[str, str]  # node name -> its C identifier n<i>_<op>
    decl: CWriter  # file-scope declarations
    declared: set[str]

    def array(self, ctype: str, cname: str, values: list[int] | None, size: int = 0,
              const: bool = False) -> str: ...

    def rep(self, node: Node, rep: GradRep) -> GradRep: ...

    def geometry(self, node: Node, fields: list[int]) -> str: ...

    def wide(self, value: str) -> str: ...

    def gradient_buffer(self, value: str) -> str: ...

    def copy_gradient(self, w: CWriter, src: str, value: str) -> str: ...

    def weights(self, node: Node) -> str: ...

    def sign_rows(self, node: Node) -> str: ...

Flow = list[tuple[Value, str, GradRep]]


def window_geometry(e: TrainEmitter, node: Node, weighted: bool) -> list[int]:
    """The qcc_conv fields of a 1-D or 2-D Conv / pool node from its per-sample shapes; a 1-D
    window is the 2-D one of unit height (the same memory order, (C, 1, L))."""
    x = e.p.shapes[node.inputs[0].name]
    y = e.p.shapes[node.outputs[0].name]
    if len(x) not in (2, 3):
        raise QccError(f"the C train step handles 1-D and 2-D windows ({node.op_type} "
                       f"{node.name!r} has {len(x) - 1})")
    if weighted:
        win = conv_window(node, (1, *x), tuple(node.inputs[1].const.shape))
    else:
        win = pool_window(node, np.empty((1, *x), np.int8))
    groups = int(node.attrs.get("group", 1))
    unit = () if len(x) == 3 else (1,)  # the height of a 1-D window
    return [x[0], *unit, *x[1:], y[0], *unit, *y[1:], *unit, *win.kernel, *unit, *win.strides,
            *unit, *win.dilations, *(0,) * len(unit), *win.pads_begin, groups, 0]


def conv_geometry(e: TrainEmitter, node: Node) -> list[int]:
    """A QConv's qcc_conv fields (window_geometry of a weighted window)."""
    return window_geometry(e, node, True)


def gemm_geometry(e: TrainEmitter, node: Node) -> list[int]:
    """A QGemm as the 1 x 1 case; `wt` when the weight is stored (K, M) (no transB)."""
    x = e.p.shapes[node.inputs[0].name]
    y = e.p.shapes[node.outputs[0].name]
    return [x[-1], 1, 1, y[-1], 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1,
            0 if node.attrs.get("transB", 0) else 1]


def xnor_words(node: Node) -> int:
    """uint32 words of one packed patch / weight row (taps of one group)."""
    return -(-int(np.prod(node.inputs[1].const.shape[1:])) // 32)


def xnor_geometry(e: TrainEmitter, node: Node) -> str:
    """The qcc_xnor constant of a layer with sign activations: its window with every product
    of two sizes precomputed (the kernels only add). Binary weights are stored output channel
    first (passes/training_program.py), so row m is at m · taps."""
    cname = f"xgeom_{e.node_ids[node.name]}"
    if cname in e.declared:
        return cname
    c, h, wd, m, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw, groups, _ = \
        registered(node.op_type).c_train.fields(e, node)
    cg, mg = c // groups, m // groups
    taps = cg * kh * kw
    words = xnor_words(node)
    fields = [cg, h, wd, mg, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw, groups, taps, words,
              h * wd, dh * wd, sh * wd, -ph * wd, cg * h * wd, oh * ow, mg * oh * ow,
              mg * words, taps, 1, mg * taps, c * h * wd, m * oh * ow]
    e.declared.add(cname)
    e.decl.line(f"static const qcc_xnor {cname} = {{{', '.join(map(str, fields))}}};")
    return cname


class WeightedTrain:
    """QConv (any groups) / QGemm: train_step's weighted backward (vjps.WeightedVjp)."""

    def __init__(self, fields: Callable[[TrainEmitter, Node], list[int]]) -> None:
        self.fields = fields  # the layer's qcc_conv fields (conv_geometry / gemm_geometry)

    def geometry(self, e: TrainEmitter, node: Node) -> str:
        return e.geometry(node, self.fields(e, node))

    def growth(self, e: TrainEmitter | None, node: Node) -> int:
        return 1  # the input gradient's bound is the layer's own (gradient_bound)

    def backward(self, e: TrainEmitter, w: CWriter, node: Node, gy: str, rep: GradRep) -> Flow:
        """Mask, round and saturate G_A; G_W (exact, or from S ternarizations) rounded and
        saturated, the bias gradient; the input gradient."""
        layer = e.layers[node.name]
        n = e.node_ids[node.name]
        count = f"batch * {e.sizes[layer.output]}"
        if layer.relu and layer.xnor:
            w.line(f"qcc_mask_grad({gy}, {count}, {e.wide(layer.output)}, 0);")
        elif layer.relu:  # vjps.WeightedVjp._relu_passes: the accumulator's sign (STE)
            floor_ = max(int(node.attrs["out_lo"]), int(node.attrs.get("out_zero_point", 0)))
            w.line(f"qcc_relu_accumulator_mask(&{self.geometry(e, node)}, batch, "
                   f"{e.wide(layer.input)}, {e.weights(node)}, {e.bias(node)}, "
                   f"{e.wide(layer.output)}, {floor_}, {gy});")
        w.line(f"qcc_round_gradient({gy}, {count}, {rep.exp}, {rep.divisor}, "
               f"{int(rep.per_batch)}, {layer.ga_exp}, batch, &rng);")
        w.line(f"qcc_saturate({gy}, {count}, {layer.ga_bits}, &clipped);")
        if layer.xnor:
            return self.xnor_backward(e, w, node, gy, count)
        geom = self.geometry(e, node)
        samples = layer.samples
        tern, scale = "0", "tbp_s" if samples else "1"  # how the input gradient reads G_A
        flow: Flow = []
        with w.block(""):
            if samples:
                w.lines_of([f"const int64_t tbp_s = qcc_absmax({gy}, {count});",
                            "const qcc_tern tbp = {&rng, tbp_s};"])
            if samples and layer.propagate:  # t_1 · s flows on: sample 1 replayed from here
                w.lines_of(["qcc_rng first = rng;",
                            "const qcc_tern tbp_first = {&first, tbp_s};"])
                tern = "&tbp_first"
            if layer.trainable:
                self.weight_gradient(e, w, geom, layer, gy, count, samples)
            if layer.propagate:
                mult = "0"
                if layer.binary:
                    mult = e.array("int32_t", f"amult_{n}", list(layer.alpha_mult), const=True)
                dx = e.gradient_buffer(layer.input)
                w.line(f"qcc_conv_input_grad(&{geom}, batch, {e.weights(node)}, {gy}, {tern}, "
                       f"{scale}, {mult}, {dx});")
                flow.append((node.inputs[0], dx, layer.dx_rep))
        return flow

    def xnor_backward(self, e: TrainEmitter, w: CWriter, node: Node, gy: str,
                      count: str) -> Flow:
        """A layer with sign activations: G_W and the input gradient by the qcc_xnor kernels
        (sign selects and additions only; the ternarizations drawn into int8 buffers first,
        in the order vjps.WeightedVjp draws them), then the straight-through mask."""
        layer = e.layers[node.name]
        n = e.node_ids[node.name]
        geom = xnor_geometry(e, node)
        samples = layer.samples
        t1 = e.array("int8_t", f"tern_{n}", None, e.N * e.sizes[layer.output]) if samples else "0"
        flow: Flow = []
        with w.block(""):
            if samples:
                w.line(f"const int64_t tbp_s = qcc_absmax({gy}, {count});")
            if layer.trainable:
                patch = e.array("uint32_t", f"patch_{n}", None, 2 * xnor_words(node))
                size = int(np.prod(layer.weight_shape))
                gw = e.array("qcc_grad", f"gw_{n}", None, size)
                xb = e.wide(layer.input)
                with w.block(f"for (i = 0; i < {size}; ++i)"):
                    w.line(f"{gw}[i] = 0;")
                if samples:
                    w.comment(f"Banner et al. 2018, Algorithm 1: G_W = s/{samples} sum of "
                              f"{samples} ternarizations of G_A times sign(A); sample 1 is kept "
                              "for the input gradient")
                    w.line(f"qcc_ternarize({gy}, {count}, tbp_s, &rng, {t1});")
                    w.line(f"qcc_xnor_weight_grad(&{geom}, batch, {xb}, 0, {t1}, {patch}, {gw});")
                    if samples > 1:
                        tk = e.array("int8_t", f"ternk_{n}", None, e.N * e.sizes[layer.output])
                        with w.block(f"for (k = 1; k < {samples}; ++k)"):
                            w.line(f"qcc_ternarize({gy}, {count}, tbp_s, &rng, {tk});")
                            w.line(f"qcc_xnor_weight_grad(&{geom}, batch, {xb}, 0, {tk}, "
                                   f"{patch}, {gw});")
                    w.line(f"qcc_scale({gw}, {size}, tbp_s);")
                else:
                    w.line(f"qcc_xnor_weight_grad(&{geom}, batch, {xb}, {gy}, 0, {patch}, {gw});")
                self.finish_weight_gradient(e, w, layer, gy, count, samples)
            if layer.propagate:
                mult = e.array("int32_t", f"amult_{n}", list(layer.alpha_mult), const=True)
                wbits = e.sign_rows(node)
                dx = e.gradient_buffer(layer.input)
                m = layer.out_channels
                if samples:
                    scaled = e.array("int64_t", f"ascale_{n}", None, m)
                    w.line(f"qcc_channel_scale({m}, {mult}, tbp_s, {scaled});")
                    w.line(f"qcc_xnor_input_grad(&{geom}, batch, 0, {t1}, {scaled}, {wbits}, "
                           f"{dx});")
                else:
                    src = e.array("qcc_grad", f"gsrc_{n}", None, e.N * e.sizes[layer.output])
                    w.line(f"qcc_channel_product({gy}, batch, {m}, "
                           f"{e.sizes[layer.output] // m}, {mult}, {src});")
                    w.line(f"qcc_xnor_input_grad(&{geom}, batch, {src}, 0, 0, {wbits}, {dx});")
                w.line(f"qcc_ste_mask({dx}, batch * {e.sizes[layer.input]}, "
                       f"{e.wide(layer.input)}, {layer.ste_lo}, {layer.ste_hi});")
                flow.append((node.inputs[0], dx, layer.dx_rep))
        return flow

    def weight_gradient(self, e: TrainEmitter, w: CWriter, geom: str, layer: LayerProgram,
                        ga: str, count: str, samples: int) -> None:
        """vjps.WeightedVjp._weight_gradient and the bias gradient sum (exact, int64)."""
        n = e.node_ids[layer.name]
        size = int(np.prod(layer.weight_shape))
        gw = e.array("qcc_grad", f"gw_{n}", None, size)
        xb = e.wide(layer.input)
        if samples:
            w.comment(f"Banner et al. 2018, Algorithm 1: G_W = s/{samples} sum of {samples} "
                      "ternarizations of G_A times A")
            with w.block(f"for (k = 0; k < {samples}; ++k)"):
                w.line(f"qcc_conv_weight_grad(&{geom}, batch, {xb}, {ga}, &tbp, k > 0, {gw});")
            w.line(f"qcc_scale({gw}, {size}, tbp_s);")
        else:
            w.line(f"qcc_conv_weight_grad(&{geom}, batch, {xb}, {ga}, 0, 0, {gw});")
        self.finish_weight_gradient(e, w, layer, ga, count, samples)

    def finish_weight_gradient(self, e: TrainEmitter, w: CWriter, layer: LayerProgram, ga: str,
                               count: str, samples: int) -> None:
        """G_W rounded to its step (divided by S) and saturated; the bias gradient sum."""
        n = e.node_ids[layer.name]
        size = int(np.prod(layer.weight_shape))
        gw = f"gw_{n}"
        w.line(f"qcc_round_gradient({gw}, {size}, {layer.ga_exp + layer.x_exp}, "
               f"{max(samples, 1)}, 0, {layer.gw_exp}, 1, &rng);")
        w.line(f"qcc_saturate({gw}, {size}, {layer.gw_bits}, &clipped);")
        if layer.bias is None:
            return
        gb = e.array("int64_t", f"gb_{n}", None, layer.out_channels)
        plane = e.sizes[layer.output] // layer.out_channels
        with w.block(f"for (i = 0; i < {layer.out_channels}; ++i)"):
            w.line(f"{gb}[i] = 0;")
        with w.block(f"for (i = 0; i < {count}; ++i)"):
            w.line(f"{gb}[(i / {plane}) % {layer.out_channels}] += {ga}[i];")


training_entry("c_train", "QConv")(WeightedTrain(conv_geometry))
training_entry("c_train", "QGemm")(WeightedTrain(gemm_geometry))


class MovedTrain:
    """Ops that only move codes (Flatten, Reshape, ...): the gradient buffer is the input's."""

    def growth(self, e: TrainEmitter | None, node: Node) -> int:
        return 1

    def backward(self, e: TrainEmitter, w: CWriter, node: Node, gy: str, rep: GradRep) -> Flow:
        return [(node.inputs[0], gy, e.rep(node, rep))]


class ReluTrain(MovedTrain):
    """Relu: masked in place by input > 0."""

    def backward(self, e: TrainEmitter, w: CWriter, node: Node, gy: str, rep: GradRep) -> Flow:
        x = node.inputs[0].name
        w.line(f"qcc_mask_grad({gy}, batch * {e.sizes[x]}, {e.wide(x)}, 0);")
        return [(node.inputs[0], gy, e.rep(node, rep))]


class RequantizeTrain(MovedTrain):
    """Requantize / QAdd: a fused ReLU masks by output > zero point; every input gets it."""

    def backward(self, e: TrainEmitter, w: CWriter, node: Node, gy: str, rep: GradRep) -> Flow:
        y = node.outputs[0].name
        if node.attrs.get("relu", 0):
            zp = int(node.attrs.get("out_zero_point", 0))
            w.line(f"qcc_mask_grad({gy}, batch * {e.sizes[y]}, {e.wide(y)}, {zp});")
        out = e.rep(node, rep)
        flow: Flow = []
        for v in node.inputs:
            if v is None or v.name not in e.p.reps:
                continue
            buf = gy if not flow else e.copy_gradient(w, gy, v.name)
            flow.append((v, buf, out))
        return flow


class MaxPoolTrain(MovedTrain):
    """MaxPool: each output's gradient to the first maximum of its window."""

    def growth(self, e: TrainEmitter | None, node: Node) -> int:
        """Windows covering one input position: per axis at most ceil(span / stride), and
        at most one per tap."""
        k = node.attrs["kernel_shape"]
        st = node.attrs.get("strides") or [1] * len(k)
        dl = node.attrs.get("dilations") or [1] * len(k)
        return int(np.prod([min(a, -(-((a - 1) * d + 1) // b)) for a, b, d in zip(k, st, dl)]))

    def backward(self, e: TrainEmitter, w: CWriter, node: Node, gy: str, rep: GradRep) -> Flow:
        x = node.inputs[0].name
        geom = e.geometry(node, window_geometry(e, node, False))
        dx = e.gradient_buffer(x)
        w.line(f"qcc_maxpool_backward(&{geom}, batch * {e.p.shapes[x][0]}, {e.wide(x)}, {gy}, "
               f"{dx});")
        return [(node.inputs[0], dx, e.rep(node, rep))]


class GlobalMaxPoolTrain(MovedTrain):
    """GlobalMaxPool: a MaxPool whose one window is the plane."""

    def backward(self, e: TrainEmitter, w: CWriter, node: Node, gy: str, rep: GradRep) -> Flow:
        x = node.inputs[0].name
        c, *spatial = e.p.shapes[x]
        if len(spatial) not in (1, 2):
            raise QccError(f"the C train step handles 1-D and 2-D windows ({node.name!r} has "
                           f"{len(spatial)})")
        h, wd = spatial if len(spatial) == 2 else (1, spatial[0])
        geom = e.geometry(node, [c, h, wd, c, 1, 1, h, wd, 1, 1, 1, 1, 0, 0, 1, 0])
        dx = e.gradient_buffer(x)
        w.line(f"qcc_maxpool_backward(&{geom}, batch * {c}, {e.wide(x)}, {gy}, {dx});")
        return [(node.inputs[0], dx, e.rep(node, rep))]


class AveragePoolTrain(MaxPoolTrain):
    """AveragePool: each output's gradient to every tap of its window (the divisor is in the
    GradRep)."""

    def backward(self, e: TrainEmitter, w: CWriter, node: Node, gy: str, rep: GradRep) -> Flow:
        x = node.inputs[0].name
        geom = e.geometry(node, window_geometry(e, node, False))
        dx = e.gradient_buffer(x)
        w.line(f"qcc_avgpool_backward(&{geom}, batch * {e.p.shapes[x][0]}, {gy}, {dx});")
        return [(node.inputs[0], dx, e.rep(node, rep))]


class GlobalAveragePoolTrain(MovedTrain):
    """GlobalAveragePool: every position gets its plane's gradient."""

    def backward(self, e: TrainEmitter, w: CWriter, node: Node, gy: str, rep: GradRep) -> Flow:
        x = node.inputs[0].name
        c = e.p.shapes[x][0]
        dx = e.gradient_buffer(x)
        w.line(f"qcc_broadcast_grad(batch * {c}, {e.sizes[x] // c}, {gy}, {dx});")
        return [(node.inputs[0], dx, e.rep(node, rep))]


class GatherTrain(MovedTrain):
    """Transpose / Concat: each input element reads its output element through a table."""

    def backward(self, e: TrainEmitter, w: CWriter, node: Node, gy: str, rep: GradRep) -> Flow:
        y = node.outputs[0].name
        flow: Flow = []
        for k, (v, table) in enumerate(zip(node.inputs, self.maps(e, node))):
            if v is None or v.name not in e.p.reps:
                continue
            n = e.node_ids[node.name]
            cmap = e.array("uint32_t", f"map{k}_{n}", table.tolist(), const=True)
            dx = e.gradient_buffer(v.name)
            w.line(f"qcc_gather_grad(batch, {table.size}, {e.sizes[y]}, {cmap}, {gy}, {dx});")
            flow.append((v, dx, e.rep(node, rep)))
        return flow

    def maps(self, e: TrainEmitter, node: Node) -> list[np.ndarray]:
        """Per input: the per-sample output position of each of its elements."""
        y_shape = (1, *e.p.shapes[node.outputs[0].name])
        where = np.arange(int(np.prod(y_shape)), dtype=np.int64).reshape(y_shape)
        return self.split(node, where, e)

    def split(self, node: Node, where: np.ndarray, e: TrainEmitter) -> list[np.ndarray]:
        raise NotImplementedError


class TransposeTrain(GatherTrain):
    def split(self, node: Node, where: np.ndarray, e: TrainEmitter) -> list[np.ndarray]:
        perm = list(node.attrs.get("perm", list(range(where.ndim))[::-1]))
        if perm[0] != 0:
            raise QccError(f"the C train step needs a Transpose that keeps the batch axis "
                           f"first ({node.name!r})")
        return [where.transpose(np.argsort(perm)).ravel()]


class ConcatTrain(GatherTrain):
    def split(self, node: Node, where: np.ndarray, e: TrainEmitter) -> list[np.ndarray]:
        axis = node.attrs["axis"] % where.ndim
        if axis == 0:
            raise QccError(f"the C train step cannot concatenate along the batch axis "
                           f"({node.name!r})")
        sizes = [(1, *e.p.shapes[v.name])[axis] if not v.is_const else v.const.shape[axis]
                 for v in node.inputs]
        return [part.ravel() for part in np.split(where, np.cumsum(sizes)[:-1], axis)]


for _ops, _entry in (
        (("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Dropout"), MovedTrain()),
        (("Relu",), ReluTrain()), (("Requantize", "QAdd"), RequantizeTrain()),
        (("MaxPool",), MaxPoolTrain()), (("GlobalMaxPool",), GlobalMaxPoolTrain()),
        (("AveragePool",), AveragePoolTrain()), (("GlobalAveragePool",), GlobalAveragePoolTrain()),
        (("Transpose",), TransposeTrain()), (("Concat",), ConcatTrain())):
    training_entry("c_train", *_ops)(_entry)
