"""`-o OUTDIR` never destroys what qcc did not write (issue 15): a folder is replaced only if it
is empty or holds qcc's marker file; `.`, `..`, `''`, files and symbolic links are refused; a
missing parent is created (and removed again on failure); an interruption leaves the old folder
or the new one whole."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from qcc.driver.cli import main
from qcc.driver.io import OUTPUT_MARKER, atomic_dir

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits"


def compile_to(out: str, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["compile", str(DIGITS / "digits.onnx"), "--calib",
                                       str(DIGITS / "calib.npz"), "-o", out, *extra])
    return result.exit_code, result.stderr


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if not line.startswith("qcc: note:")]
    assert len(lines) == 1 and lines[0].startswith("qcc: error: "), stderr
    return lines[0]


def user_folder(path: Path) -> Path:
    (path / "docs").mkdir(parents=True)
    (path / "thesis.txt").write_text("x")
    return path


def test_a_folder_qcc_did_not_write_is_refused_and_untouched(tmp_path: Path) -> None:
    user = user_folder(tmp_path / "user")
    code, stderr = compile_to(str(user))
    assert code != 0 and "--force" in one_error_line(stderr)
    assert (user / "thesis.txt").read_text() == "x" and (user / "docs").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user"]  # no temporary sibling


def test_force_replaces_it(tmp_path: Path) -> None:
    user = user_folder(tmp_path / "user")
    code, _ = compile_to(str(user), "--force")
    assert code == 0 and not (user / "thesis.txt").exists()
    assert (user / OUTPUT_MARKER).is_file() and (user / "model.qcc.onnx").is_file()


@pytest.mark.parametrize("name", [".", "", ".."])
def test_the_current_folder_and_its_parents_are_refused(tmp_path: Path, name: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    work = user_folder(tmp_path / "work")
    monkeypatch.chdir(work)
    for force in ((), ("--force",)):  # not even with --force
        code, stderr = compile_to(name, *force)
        assert code != 0 and "current folder" in one_error_line(stderr)
    assert sorted(p.name for p in work.iterdir()) == ["docs", "thesis.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_a_file_and_a_symlink_are_refused(tmp_path: Path) -> None:
    target = user_folder(tmp_path / "target")
    (tmp_path / "link").symlink_to(target)
    (tmp_path / "file").write_text("keep")
    for name, fragment in (("link", "symbolic link"), ("file", "not a folder")):
        code, stderr = compile_to(str(tmp_path / name), "--force")
        assert code != 0 and fragment in one_error_line(stderr)
    assert (tmp_path / "file").read_text() == "keep" and (target / "thesis.txt").exists()


def test_qcc_folders_and_empty_folders_are_replaced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert compile_to(str(out))[0] == 0
    (out / "stale.txt").write_text("from an older compile")
    assert compile_to(str(out))[0] == 0 and not (out / "stale.txt").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert compile_to(str(empty))[0] == 0 and (empty / OUTPUT_MARKER).is_file()


def test_missing_parents_are_created_and_removed_on_failure(tmp_path: Path) -> None:
    assert compile_to(str(tmp_path / "a" / "b" / "out"))[0] == 0
    assert (tmp_path / "a" / "b" / "out" / "model.qcc.onnx").is_file()
    code, stderr = compile_to(str(tmp_path / "c" / "d" / "out"), "--bits", "99")
    assert code != 0 and not (tmp_path / "c").exists()


def test_an_unwritable_parent_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    def denied(**kwargs: object) -> str:  # what mkdtemp raises in a read-only folder
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    code, stderr = compile_to(str(tmp_path / "ro" / "out"))
    assert code != 0 and "Permission denied" in one_error_line(stderr)
    assert not (tmp_path / "ro").exists()


def old_qcc_folder(path: Path) -> Path:
    path.mkdir()
    (path / OUTPUT_MARKER).write_text("")
    for i in range(20):
        (path / f"old{i}.txt").write_text(str(i))
    return path


def test_an_interrupted_write_keeps_the_old_folder_whole(tmp_path: Path) -> None:
    out = old_qcc_folder(tmp_path / "out")
    with pytest.raises(KeyboardInterrupt), atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("half")
        raise KeyboardInterrupt
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [OUTPUT_MARKER] + [f"old{i}.txt" for i in range(20)])
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_an_interruption_while_deleting_the_old_folder_leaves_the_new_one_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = old_qcc_folder(tmp_path / "out")
    real_rmtree = shutil.rmtree

    def interrupted(path: str | os.PathLike, *args: object, **kwargs: object) -> None:
        if str(path).endswith(".old"):  # the old folder, already renamed aside
            raise KeyboardInterrupt
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", interrupted)
    with pytest.raises(KeyboardInterrupt), atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("whole")
    assert (out / "new.txt").read_text() == "whole" and (out / OUTPUT_MARKER).is_file()
    aside = [p for p in tmp_path.iterdir() if p.name != "out"]
    assert len(aside) == 1 and len(list(aside[0].iterdir())) == 21  # complete, hidden sibling
