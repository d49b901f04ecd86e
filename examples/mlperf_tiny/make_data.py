"""Inputs for the four MLPerf Tiny reference models, made offline (no dataset ships with them).

- ResNet-8 (CIFAR-10, raw pixels 0..255) and MobileNetV1-0.25 VWW (pixels / 255): random crops of
  scikit-learn's two bundled photographs (`load_sample_images`), of random size and position,
  randomly mirrored, area-averaged down to the model's input size. Natural-image statistics,
  which is what calibration needs, though neither photograph is a CIFAR class or a person.
- DS-CNN KWS: MFCC-like features, 49 frames x 10 coefficients, in the model range (about -124..26):
  a strongly negative, slowly varying c0 (log energy) and coefficients that shrink with their
  index, correlated across neighbouring frames.
- FC autoencoder AD: log-mel-like (5 x 128 mel bands, dB, about -85..15): a smooth
  spectral envelope falling with frequency plus frame-to-frame noise.

Every set is deterministic for its seed; calibration and held-out sets use different seeds, so
agreement is measured on inputs the quantizer never saw. Layout is NCHW unless `nhwc=True`
(the `*_nhwc.onnx` variants).

    python examples/mlperf_tiny/make_data.py OUTDIR [--calib 256] [--held-out 512]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

MODELS = {
    "resnet8_ic": (3, 32, 32),
    "dscnn_kws": (1, 49, 10),
    "mobilenet_vww": (3, 96, 96),
    "autoencoder_ad": (640,),
}
CALIB_SEED, HELD_OUT_SEED = 1, 2


def image_crops(count: int, size: int, seed: int) -> np.ndarray:
    """count x 3 x size x size float32 crops in 0..255 (NCHW)."""
    from sklearn.datasets import load_sample_images  # needs pillow; only the image models use it

    photos = [np.asarray(p, dtype=np.float64) for p in load_sample_images().images]
    rng = np.random.default_rng(seed)
    out = np.empty((count, 3, size, size), np.float32)
    for i in range(count):
        photo = photos[rng.integers(len(photos))]
        h, w, _ = photo.shape
        factor = int(rng.integers(1, min(h, w) // size + 1))  # crop side = factor * size
        side = factor * size
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = photo[top:top + side, left:left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        pooled = crop.reshape(size, factor, size, factor, 3).mean(axis=(1, 3))  # area average
        out[i] = pooled.transpose(2, 0, 1)
    return out


def mfcc_like(count: int, seed: int) -> np.ndarray:
    """count x 1 x 49 x 10 MFCC-like features."""
    rng = np.random.default_rng(seed)
    frames, coeffs = 49, 10
    scale = 20.0 / (1.0 + np.arange(coeffs))  # higher coefficients vary less
    smooth = _smooth_noise(rng, (count, frames, coeffs), axis=1, width=3)
    x = smooth * scale
    x[..., 0] = -60.0 + 25.0 * _smooth_noise(rng, (count, frames), axis=1, width=5)
    return np.clip(x, -124.0, 26.0).astype(np.float32)[:, None]


def logmel_like(count: int, seed: int) -> np.ndarray:
    """count x 640 log-mel-like frames (5 x 128 bands, dB)."""
    rng = np.random.default_rng(seed)
    bands = np.arange(128)
    envelope = -20.0 - 35.0 * bands / 127.0  # energy falls with frequency
    level = rng.normal(0.0, 8.0, size=(count, 1, 1))
    texture = 6.0 * _smooth_noise(rng, (count, 1, 128), axis=2, width=4)
    frames = envelope + level + texture + rng.normal(0.0, 3.0, size=(count, 5, 128))
    return np.clip(frames, -85.0, 15.0).reshape(count, 640).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], axis: int,
                  width: int) -> np.ndarray:
    """Unit-variance Gaussian noise correlated over `width` neighbours along `axis`."""
    noise = rng.standard_normal(shape)
    kernel = np.ones(width) / np.sqrt(width)
    return np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), axis, noise)


def model_inputs(model: str, count: int, seed: int, nhwc: bool = False) -> np.ndarray:
    """count inputs for one of MODELS (the model name without `_nhwc`)."""
    if model == "resnet8_ic":
        x = image_crops(count, 32, seed)
    elif model == "mobilenet_vww":
        x = image_crops(count, 96, seed) / np.float32(255.0)
    elif model == "dscnn_kws":
        x = mfcc_like(count, seed)
    elif model == "autoencoder_ad":
        x = logmel_like(count, seed)
    else:
        raise ValueError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if nhwc and x.ndim == 4 else x


def write_sets(outdir: Path, calib: int, held_out: int) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    for model in MODELS:
        for nhwc in (False, True) if model != "autoencoder_ad" else (False,):
            name = model + ("_nhwc" if nhwc else "")
            np.savez(outdir / f"{name}_calib.npz", x=model_inputs(model, calib, CALIB_SEED, nhwc))
            np.savez(outdir / f"{name}_held_out.npz",
                     x=model_inputs(model, held_out, HELD_OUT_SEED, nhwc))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--calib", type=int, default=256)
    parser.add_argument("--held-out", type=int, default=512)
    args = parser.parse_args()
    write_sets(args.outdir, args.calib, args.held_out)


if __name__ == "__main__":
    main()
