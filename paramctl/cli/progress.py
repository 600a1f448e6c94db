"""A progress bar on stderr for commands that read data: only on a terminal, and only for large work.

Piped or captured stderr (CI logs, `--json` consumers) gets nothing at all.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

MIN_BYTES = 64 << 20  # below this the work is over before a bar would help


class Advance(Protocol):
    def __call__(self, nbytes: int) -> None: ...


@contextmanager
def progress(total_bytes: int, description: str) -> Iterator[Advance]:
    """Yield `advance(nbytes)`; draws a bar when stderr is a terminal and the work is large."""
    if total_bytes < MIN_BYTES or not sys.stderr.isatty():
        yield lambda nbytes: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    bar = Progress(
        "{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with bar:
        task = bar.add_task(description, total=total_bytes)
        yield lambda nbytes: bar.advance(task, nbytes)
