"""qcc's core: the IR, the op registry and its op definitions, number formats, the
quantization spec, ONNX import and export, float execution and training.

Importing any part of it fills the op registry (qcc.core.ops registers every op definition;
the registry itself imports none, so the two never import each other). Backends add their
kernels when the driver imports them; core never imports a backend.
"""

import qcc.core.ops  # noqa: F401  (each module of qcc.core.ops registers its ops)
