"""Running the CLI in-process on one mutant, with a time limit, and judging how it ended."""

from __future__ import annotations

import signal
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

from qcc.driver.cli import main

RUN_SECONDS = 20  # per command; a mutant that takes longer counts as a hang (test_fuzz.py)


class RunTimeout(BaseException):
    """Raised by the alarm inside a run; a BaseException, so qcc's handler lets it through."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: object) -> None:
        raise RunTimeout()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Outcome:
    kind: str  # "ok", "refused" (one qcc: error: line), "internal", "traceback", "timeout",
    #            "several lines", "silent failure"
    detail: str


def run_cli(args: list[str], cwd: Path, seconds: float = RUN_SECONDS) -> Outcome:
    runner = CliRunner()
    try:
        # the warning filters of a user's shell, not the suite's warnings-as-errors: a float
        # model with NaN weights runs to NaN outputs there, with NumPy's RuntimeWarning
        with time_limit(seconds), warnings.catch_warnings():
            warnings.resetwarnings()
            result = runner.invoke(main, args, catch_exceptions=True, env={"QCC_DEBUG": "",
                                                                          "CI": "true"})
    except RunTimeout:
        return Outcome("timeout", " ".join(args))
    if isinstance(result.exception, RunTimeout):
        return Outcome("timeout", " ".join(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return Outcome("traceback", f"{type(result.exception).__name__}: {result.exception}")
    stderr = result.stderr
    errors = [line for line in stderr.splitlines() if not line.startswith("qcc: note:")]
    if result.exit_code == 0:
        return Outcome("ok", "")
    if "Traceback" in stderr or "Traceback" in result.stdout:
        return Outcome("traceback", stderr[-300:])
    if len(errors) != 1 or not errors[0].startswith("qcc: error: "):
        return Outcome("several lines" if errors else "silent failure", stderr[-300:])
    if errors[0].startswith("qcc: error: internal error"):
        return Outcome("internal", errors[0])
    return Outcome("refused", errors[0])
