"""`paramctl formats`: the loaders this installation has, built-in and from plugins."""

from __future__ import annotations

import typer

from paramctl.cli.app import JsonOption, app
from paramctl.cli.errors import handles_errors
from paramctl.cli.render import print_json
from paramctl.registry import loaders


@app.command("formats")
@handles_errors
def formats_command(json: JsonOption = False) -> None:
    """List the loaders; formats are recognised by content, in this order."""
    found = loaders()
    if json:
        print_json({"loaders": [{"name": f.name, "description": f.description, "origin": f.origin} for f in found]})
        return
    width = max(len(f.name) for f in found)
    for f in found:
        typer.echo(f"{f.name:<{width}}  {f.description}  [{f.origin}]")
