"""Build, train (with qcc's own float trainer) and save the digits CNN and its data splits.

    python examples/digits/make_digits.py [--out DIR] [--stats stats.json]

Data: scikit-learn's bundled 8x8 digits (1797 images, no download), scaled to [0, 1], split
once by a seeded permutation into 1000 train / 397 calibration / 400 test samples.
Model (6218 weights): 1x8x8 -> Conv3x3 8 pad 1 -> Relu -> Conv3x3 16 -> Relu -> MaxPool 2 ->
Flatten -> Gemm 32 -> Relu -> Gemm 10 (logits). The batch axis is symbolic ("N").

Writes digits.onnx, {train,calib,test}.npz (keys x: float32 NCHW, y: int64) and sample.npy
(the first test input). Every byte is a function of the seeds: the .npz files are written with
fixed zip timestamps, and BLAS runs on one thread (its summation order, hence the trained
weights' last bits, depends on the thread count; on matrices this small one thread is also the
fastest).
"""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from threadpoolctl import threadpool_limits

from qcc.core.float_train import TrainConfig, TrainResult, accuracy, train
from qcc.core.onnx_import import import_model

HERE = Path(__file__).resolve().parent
SPLITS = {"train": 1000, "calib": 397, "test": 400}
CONFIG = TrainConfig(epochs=30, batch_size=32, lr=0.05, momentum=0.9, weight_decay=1e-4,
                     schedule="cosine", seed=0)


def load_splits(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (x float32 (n, 1, 8, 8) in [0, 1], y int64 (n,))}."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    splits, start = {}, 0
    for name, size in SPLITS.items():
        idx = order[start:start + size]
        splits[name] = (np.ascontiguousarray(x[idx]), y[idx])
        start += size
    return splits


def build_model(seed: int = 0) -> onnx.ModelProto:
    """The untrained CNN, He-normal weights from a seeded generator, zero biases."""
    rng = np.random.default_rng(seed)

    def he(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape).astype(np.float32)

    weights = {
        "conv1.W": he((8, 1, 3, 3), 9), "conv1.B": np.zeros(8, np.float32),
        "conv2.W": he((16, 8, 3, 3), 72), "conv2.B": np.zeros(16, np.float32),
        "fc1.W": he((32, 144), 144), "fc1.B": np.zeros(32, np.float32),
        "fc2.W": he((10, 32), 32), "fc2.B": np.zeros(10, np.float32),
    }
    node = helper.make_node
    nodes = [
        node("Conv", ["input", "conv1.W", "conv1.B"], ["conv1"], name="conv1",
             kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        node("Relu", ["conv1"], ["relu1"], name="relu1"),
        node("Conv", ["relu1", "conv2.W", "conv2.B"], ["conv2"], name="conv2",
             kernel_shape=[3, 3]),
        node("Relu", ["conv2"], ["relu2"], name="relu2"),
        node("MaxPool", ["relu2"], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        node("Flatten", ["pool"], ["flat"], name="flatten", axis=1),
        node("Gemm", ["flat", "fc1.W", "fc1.B"], ["fc1"], name="fc1", transB=1),
        node("Relu", ["fc1"], ["relu3"], name="relu3"),
        node("Gemm", ["relu3", "fc2.W", "fc2.B"], ["logits"], name="fc2", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "digits_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=[numpy_helper.from_array(a, n) for n, a in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="qcc.examples.digits")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def trained_model(model: onnx.ModelProto, result: TrainResult) -> onnx.ModelProto:
    """`model` with its initializers replaced by the trained constants of result.graph."""
    trained = onnx.ModelProto()
    trained.CopyFrom(model)
    for init in trained.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(result.graph.values[init.name].const, init.name))
    return trained


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """np.savez_compressed with a fixed timestamp, so the same arrays give the same bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buffer.getvalue())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder")
    parser.add_argument("--stats", type=Path, help="also write the training statistics (JSON)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    splits = load_splits()
    model = build_model()
    graph = import_model(model)
    config = TrainConfig(**{**CONFIG.__dict__, "progress": not args.quiet})
    with threadpool_limits(limits=1, user_api="blas"):
        result = train(graph, *splits["train"], config, *splits["calib"])
        test_error = 1.0 - accuracy(graph, *splits["test"])
    onnx.save(trained_model(model, result), args.out / "digits.onnx")
    for name, (x, y) in splits.items():
        save_npz(args.out / f"{name}.npz", x=x, y=y)
    np.save(args.out / "sample.npy", splits["test"][0][:1])  # one input for `qcc run`
    if args.stats:
        args.stats.write_text(result.to_json())
    print(f"digits CNN: trained {config.epochs} epochs in {result.seconds:.1f} s, "
          f"final loss {result.loss[-1]:.4f}, calibration accuracy "
          f"{result.val_accuracy[-1]:.4f}, float test error {100 * test_error:.2f} %")


if __name__ == "__main__":
    main()
