"""EmitContext: what the C kernels (backends/c/ops) see of the library being emitted: tensor
facts, constant definitions, names and the decisions nodes share."""

from __future__ import annotations

import numpy as np

from backends.c.packing import WeightRows, store_rows
from backends.c.tensors import TensorInfo
from backends.c.writer import CWriter
from qcc.core.ir import Graph, Node, Value

C_SIZES = {"int8_t": 1, "uint8_t": 1, "int16_t": 2, "uint16_t": 2, "int32_t": 4, "uint32_t": 4,
           "int64_t": 8}


class EmitContext:
    """What kernels see: tensor facts, constant definitions, names, shared decisions."""

    def __init__(self, graph: Graph, info: dict[str, TensorInfo], name: str) -> None:
        self.graph, self.info, self.name = graph, info, name
        self.rt = f"{name}_"  # runtime functions after the prefix rename
        self.memo: dict[str, tuple] = {}  # kernels cache their per-node setup here
        self.placed: dict[str, set[int]] = {}  # Concat -> inputs written into their slices
        self.functions: dict[str, str] = {}
        self.constants: dict[str, CWriter] = {}  # per node: its constant arrays
        self.defined: set[str] = set()
        self.current = ""
        self.weight_bytes = 0
        self.constant_bytes = 0

    @property
    def consts(self) -> CWriter:
        return self.constants.setdefault(self.current, CWriter())

    def t(self, value: Value) -> TensorInfo:
        return self.info[value.name]

    def cname(self, node: Node, label: str) -> str:
        return f"{self.functions[node.name]}_{label}"

    def weights(self, node: Node, label: str, codes: np.ndarray, xnor: bool = False
                ) -> WeightRows:
        """Store a weight matrix (rows = output channels) and define its arrays once."""
        return self.add_weights(store_rows(codes, self.cname(node, label), xnor=xnor))

    def add_weights(self, rows: WeightRows) -> WeightRows:
        """Define the arrays of `rows` in the current node's constants, counting their bytes."""
        rows.define(self.consts)
        self.weight_bytes += rows.nbytes
        self.constant_bytes += rows.nbytes
        return rows

    def const_array(self, node: Node, label: str, ctype: str, values: list) -> str:
        """Define `static const ctype name[] = {values}` once; returns the name."""
        name = self.cname(node, label)
        if name not in self.defined:
            self.defined.add(name)
            self.consts.array(f"static const {ctype} {name}[{max(len(values), 1)}]",
                              values or [0])
            self.constant_bytes += C_SIZES.get(ctype, 4) * max(len(values), 1)
        return name
