"""Shared fixtures: models built in-repo (qcc.zoo) and a helper to run the CLI as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from hypothesis import settings
from threadpoolctl import threadpool_limits

from qcc import zoo

# The same examples on every run (a red CI is then reproducible), and no example database
# written into the working tree.
settings.register_profile("qcc", derandomize=True, database=None)
settings.load_profile("qcc")
# One BLAS thread, as the CLI defaults to: small GEMMs only lose from more on 2 cores.
threadpool_limits(limits=1, user_api="blas")


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The zoo models saved as .onnx files in a temporary folder."""
    folder = tmp_path_factory.mktemp("zoo")
    for name, build in zoo.MODELS.items():
        onnx.save(build(), folder / f"{name}.onnx")
    return folder


def run_qcc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `qcc ARGS...` in a subprocess, exactly as a user's shell would."""
    return subprocess.run([sys.executable, "-m", "qcc", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=600)
