"""The command line: typer commands, one module each, that call the library and render its results."""

from paramctl.cli import check, diff, formats, ls, scan, show, stat, ties  # noqa: F401  (each module registers its command on `app`)
from paramctl.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
