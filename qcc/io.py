"""Reading user arrays (.npy / .npz) with one-line errors, and atomic writes of outputs."""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from qcc.errors import QccError


def load_array(path: Path, what: str = "array") -> np.ndarray:
    """A .npy file as an array; refuses missing, unreadable, object and non-finite data."""
    if not path.is_file():
        raise QccError(f"{what}: no such file {path}")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise QccError(f"{what}: {path} is not a readable .npy file ({e})") from None
    if isinstance(array, np.lib.npyio.NpzFile):
        raise QccError(f"{what}: {path} is an .npz archive, expected a single .npy array")
    return check_finite(array, f"{what} ({path})")


def load_npz(path: Path, what: str = "data", keys: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """All arrays of an .npz file; `keys` must be present. Float arrays must be finite."""
    if not path.is_file():
        raise QccError(f"{what}: no such file {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise QccError(f"{what}: {path} is not an .npz archive")
            arrays = {k: archive[k] for k in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise QccError(f"{what}: {path} is not a readable .npz file ({e})") from None
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise QccError(f"{what}: {path} has no array {missing[0]!r} (has: "
                       f"{', '.join(arrays) or 'nothing'})")
    for k, a in arrays.items():
        check_finite(a, f"{what} ({path}:{k})")
    return arrays


def check_finite(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype == object:
        raise QccError(f"{what}: object arrays are not supported")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise QccError(f"{what}: contains {bad} NaN or Inf value(s)")
    return array


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """One array as .npy, several as .npz; written atomically."""
    path = Path(path)
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            if len(arrays) == 1 and path.suffix != ".npz":
                np.save(f, next(iter(arrays.values())))
            else:
                np.savez(f, **arrays)


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it into place only on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary directory next to `path`; it replaces `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
