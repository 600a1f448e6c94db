"""Turns exceptions into one line on stderr and an exit code: the only place that does."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from paramctl.cli.app import Settings
from paramctl.errors import ParamctlError

EXIT_OK, EXIT_DIFFERENT, EXIT_BAD_INPUT = 0, 1, 2

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str) -> typer.Exit:
    """Print `paramctl: message` on stderr; the caller raises the returned Exit (code 2)."""
    typer.echo(f"paramctl: {escape(message)}", err=True)
    return typer.Exit(EXIT_BAD_INPUT)


def handles_errors(command: F) -> F:
    """Library errors become one line and exit 2; so does any other error (with a hint), unless --debug."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except BrokenPipeError:
            sys.stderr.close()  # the reader went away (`| head`): not an error
            raise typer.Exit(EXIT_OK) from None
        except ParamctlError as error:
            if Settings.debug:
                raise
            raise fail(str(error)) from None
        except (MemoryError, RecursionError, OSError, ValueError) as error:
            if Settings.debug:
                raise
            raise fail(f"{type(error).__name__}: {error}") from None
        except Exception as error:
            if Settings.debug:
                raise
            raise fail(
                f"internal error ({type(error).__name__}: {error}); run with --debug for the traceback"
            ) from None

    return wrapper  # type: ignore[return-value]


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def escape(text: str) -> str:
    """Control characters as `\\xNN`, so a file's names cannot move the cursor or recolour the terminal; lone
    surrogates (a pickle can hold them) as `\\udcNN`, so the output stays valid UTF-8."""
    return text.translate(_CONTROL).encode("utf-8", "backslashreplace").decode("utf-8")
