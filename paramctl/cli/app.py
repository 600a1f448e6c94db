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
    timeout = 30.0  # seconds a remote request may wait for a byte (paramctl/remote.py)
    allow_full_download = False  # download a large file from a server without range support


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
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", min=0.001, metavar="SECONDS", help="URLs: fail a request after this long without data."
        ),
    ] = Settings.timeout,
    allow_full_download: Annotated[
        bool,
        typer.Option(
            "--allow-full-download",
            help="URLs: download a file over 256 MiB whole (to a temporary file) from a server without range support.",
        ),
    ] = False,
) -> None:
    from paramctl import remote  # no fsspec: that is imported only when a URL is opened

    Settings.debug = debug
    Settings.timeout, Settings.allow_full_download = timeout, allow_full_download
    remote.configure(timeout=timeout, allow_full_download=allow_full_download)
