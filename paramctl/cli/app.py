"""The typer application and the options every command shares. Command modules register themselves on `app`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from paramctl import __version__

app = typer.Typer(
    name="paramctl",
    help="Look inside neural-network checkpoints (.pt, .safetensors, .npz) without torch, and assert facts in CI.\n\n"
    "Exit codes: 0 ok or same, 1 a difference or a failed expectation, 2 bad input or usage.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Arguments and options shared by commands that open files.
PathArgument = Annotated[str, typer.Argument(help="A checkpoint file or folder.", metavar="PATH", show_default=False)]
FormatOption = Annotated[
    Optional[str], typer.Option("--format", help="Force a loader by name (see `paramctl formats`).", metavar="NAME")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object (schema in the README).")]


class Settings:
    debug = False


def _version(value: bool) -> None:
    if value:
        typer.echo(f"paramctl {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    Settings.debug = debug
