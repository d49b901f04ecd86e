"""Reading user arrays (.npy / .npz) with one-line errors, and atomic writes of outputs."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np

from qcc.core.errors import QccError


def load_array(path: Path, what: str = "array") -> np.ndarray:
    """A .npy file as an array; refuses missing, unreadable, object and non-finite data, an
    .npz archive, and a header declaring more data than the file holds."""
    path = Path(path)
    if not path.is_file():
        raise QccError(f"{what}: no such file {path}")
    if path.stat().st_size == 0:
        raise QccError(f"{what}: {path} is empty")
    if zipfile.is_zipfile(path):
        raise QccError(f"{what}: {path} is an .npz archive, expected a single .npy array")
    try:
        with open(path, "rb") as f:
            _check_npy_header(f, path.stat().st_size, f"{what}: {path}")
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise QccError(f"{what}: {path} is not a readable .npy file ({_first_line(e)})") from None
    return check_finite(array, f"{what} ({path})")


def load_npz(path: Path, what: str = "data", keys: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """All arrays of an .npz file; `keys` must be present. Every member must be a .npy array
    whose header fits its size; float arrays must be finite."""
    path = Path(path)
    if not path.is_file():
        raise QccError(f"{what}: no such file {path}")
    if path.stat().st_size == 0:
        raise QccError(f"{what}: {path} is empty")
    if not zipfile.is_zipfile(path):
        raise QccError(f"{what}: {path} is not a readable .npz file (not a zip archive; "
                       "save the arrays with numpy.savez(PATH, x=..., y=...))")
    try:
        arrays = {}
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    raise QccError(f"{what}: {path}: member {info.filename!r} is not a .npy "
                                   "array")
                key = info.filename[:-4]
                with archive.open(info) as f:
                    _check_npy_header(f, info.file_size, f"{what}: {path}:{key}")
                with archive.open(info) as f:
                    arrays[key] = np.lib.format.read_array(f, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError) as e:
        raise QccError(f"{what}: {path} is not a readable .npz file ({_first_line(e)})") from None
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise QccError(f"{what}: {path} has no array {missing[0]!r} (has: "
                       f"{', '.join(arrays) or 'nothing'})")
    for k, a in arrays.items():
        check_finite(a, f"{what} ({path}:{k})")
    return arrays


def _check_npy_header(f: BinaryIO, size: int, what: str) -> None:
    """Refuse a .npy stream whose header declares more bytes than `size` holds (a header can
    claim 10^12 samples in a 200-byte file) or an object dtype, before anything is allocated."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    if dtype.hasobject:
        raise QccError(f"{what}: object arrays are not supported")
    declared = math.prod(shape) * dtype.itemsize
    if declared > size - f.tell():
        raise QccError(f"{what}: the header declares shape {list(shape)} ({declared:,} bytes) "
                       f"but the file holds {max(size - f.tell(), 0):,} bytes of data")


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


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
    """Yield a temporary path next to `path`; rename it into place only on success. A folder
    or an unwritable place is one QccError line."""
    if path.is_dir():
        raise QccError(f"output file {path} is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as e:
        raise QccError(f"output file {path}: cannot write in {path.parent} ({e.strerror})"
                       ) from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


OUTPUT_MARKER = ".qcc-output"  # written into every folder qcc writes; marks it as replaceable
MARKER_TEXT = "This folder was written by qcc; `qcc compile -o` may replace it.\n"


def check_output_dir(path: Path, force: bool = False) -> Path:
    """Refuse an output folder qcc must not replace; return it made absolute.

    A folder is replaced only if it is missing, empty, or holds OUTPUT_MARKER (qcc wrote it);
    `force` also allows any other folder. Never replaced, even with `force`: the current folder
    or one of its parents, a symbolic link, a file, or a path that is not a folder name.
    """
    if str(path) in ("", "."):
        raise QccError("output folder: give a folder name (refusing to replace the current "
                       "folder)")
    if "\0" in str(path):
        raise QccError("output folder: the path contains a NUL byte")
    absolute = Path(os.path.abspath(path))
    if absolute.is_symlink():
        raise QccError(f"output folder {path} is a symbolic link; give the folder itself")
    cwd = Path.cwd().resolve()
    resolved = absolute.resolve()
    if resolved == cwd or resolved in cwd.parents or absolute.parent == absolute:
        raise QccError(f"output folder {path} is the current folder or one of its parents; "
                       "refusing to replace it")
    if absolute.exists() and not absolute.is_dir():
        raise QccError(f"output folder {path} exists and is not a folder")
    if absolute.is_dir() and not force and not _replaceable(absolute):
        raise QccError(f"output folder {path} exists and was not written by qcc (no "
                       f"{OUTPUT_MARKER} file); choose another folder, empty it, or pass "
                       "--force to replace it")
    return absolute


def _replaceable(folder: Path) -> bool:
    try:
        return (folder / OUTPUT_MARKER).is_file() or not any(folder.iterdir())
    except OSError as e:
        raise QccError(f"output folder {folder}: cannot read it ({e.strerror})") from None


@contextmanager
def atomic_dir(path: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to `path` (marked with OUTPUT_MARKER); on success it takes
    the place of `path`.

    The old folder is first renamed aside and deleted only after the new one is in place, so an
    interruption leaves either the old folder or the new one whole (plus a hidden sibling
    `.NAME.*` to delete), never a half-deleted folder. check_output_dir decides whether
    `path` may be replaced, before anything is written.
    """
    path = check_output_dir(Path(path), force)
    created = _make_parents(path.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError as e:
        _remove_created(created)
        raise QccError(f"output folder {path}: cannot write in {path.parent} "
                       f"({e.strerror})") from None
    try:
        (tmp / OUTPUT_MARKER).write_text(MARKER_TEXT)
        yield tmp
        check_output_dir(path, force)  # the folder may have changed while qcc worked
        old = path.parent / f"{tmp.name}.old"
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if not path.exists():  # failed: parents made for it go too
            _remove_created(created)


def _make_parents(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; return the ones created, innermost first."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    for p in reversed(missing):
        try:
            p.mkdir()
        except OSError as e:
            _remove_created(missing)
            raise QccError(f"output folder: cannot create {p} ({e.strerror})") from None
    return missing


def _remove_created(created: list[Path]) -> None:
    for p in created:  # innermost first; only folders that are still empty
        try:
            p.rmdir()
        except OSError:
            pass
