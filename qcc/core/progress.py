"""Progress of the long steps (calibration, noise gains, the B_min sweep, warm-up, evaluation,
conformance), shown as rich progress bars on stderr.

Passes and drivers wrap a loop in `steps(description, total)` and call the function it yields
once per item done. Nothing is shown unless the CLI called `enable()`, which it does only when
stderr is a terminal and CI is not set: tests, pipes and library use stay silent. Nested steps
share one live display (rich allows only one at a time), one row each; bars vanish when done.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

T = TypeVar("T")


class _Display:
    enabled = False
    live: Progress | None = None  # the one live display while any step runs
    depth = 0


_DISPLAY = _Display()


def wanted() -> bool:
    """Whether a user is watching: stderr is a terminal and the environment is not CI."""
    ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    return sys.stderr.isatty() and not ci and not os.environ.get("QCC_NO_PROGRESS")


def enable(on: bool = True) -> None:
    _DISPLAY.enabled = on


def enabled() -> bool:
    return _DISPLAY.enabled


def _noop(count: int = 1) -> None:
    return None


@contextmanager
def steps(description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """A progress row for `total` items (None: a spinner with the elapsed time); yields
    `advance(count=1)`."""
    if not _DISPLAY.enabled:
        yield _noop
        return
    live = _DISPLAY.live
    if live is None:
        live = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(),
                        console=Console(stderr=True), transient=True)
        live.start()
        _DISPLAY.live = live
    task = live.add_task(description, total=total)
    _DISPLAY.depth += 1
    try:
        yield lambda count=1: live.advance(task, count)
    finally:
        live.remove_task(task)
        _DISPLAY.depth -= 1
        if _DISPLAY.depth == 0:
            live.stop()
            _DISPLAY.live = None


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """`items`, advancing a progress row after each (total: len(items) when it has one)."""
    if total is None and isinstance(items, Sized):
        total = len(items)
    with steps(description, total) as advance:
        for item in items:
            yield item
            advance(1)
