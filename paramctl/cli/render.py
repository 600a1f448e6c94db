"""Output helpers shared by commands: JSON, human sizes, and a rich console that never truncates silently."""

from __future__ import annotations

import json
import sys
from typing import Any

from paramctl.cli.errors import escape


def print_json(obj: Any) -> None:
    """One JSON document, serialised whole before anything is written (an error never leaves half of one)."""
    document = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False)
    sys.stdout.write(document.encode("utf-8", "backslashreplace").decode("utf-8") + "\n")


def console() -> Any:
    """A rich console on stdout. Piped output gets an unbounded width, so no column is ever cut, and loses rich's
    trailing padding."""
    from rich.console import Console

    if sys.stdout.isatty():
        return Console(highlight=False)
    return Console(file=_TrimmedLines(sys.stdout), highlight=False, width=1_000_000, no_color=True, soft_wrap=True)


class _TrimmedLines:
    """A text stream that strips trailing spaces from every line it passes on."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.pending = ""

    def write(self, data: str) -> int:
        lines = (self.pending + data).split("\n")
        self.pending = lines.pop()
        if lines:
            self.stream.write("".join(line.rstrip() + "\n" for line in lines))
        return len(data)

    def flush(self) -> None:
        if self.pending:
            self.stream.write(self.pending.rstrip())
            self.pending = ""
        self.stream.flush()

    def isatty(self) -> bool:
        return False


def text(value: str, style: str | None = None) -> Any:
    """File-controlled text as a rich Text: escaped, and never parsed as markup."""
    from rich.text import Text

    return Text(escape(value), style=style or "")


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"
