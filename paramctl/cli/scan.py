"""`paramctl scan PATH`: what a checkpoint's pickles would import and call if loaded for real, and whether the file
is well formed. Exit 1 when anything dangerous is referenced; 2 when the file is broken (or not a file)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from paramctl.cli.app import FormatOption, JsonOption, app
from paramctl.cli.errors import EXIT_BAD_INPUT, EXIT_DIFFERENT, EXIT_OK, escape, handles_errors
from paramctl.cli.render import console, print_json, text
from paramctl.errors import ParamctlError

_STYLES = {"dangerous": "bold red", "unknown": "yellow", "inert": "", "rebuilt": "dim"}
_WHERE_SHOWN = 3  # places listed per global in the table; --json lists them all


if TYPE_CHECKING:  # the scanner is imported only when `scan` runs
    from paramctl.ops.scan import Finding, ScanResult


@app.command("scan")
@handles_errors
def scan_command(
    paths: Annotated[
        list[str],
        typer.Argument(help="Checkpoint files (or bare pickles).", metavar="PATH...", show_default=False),
    ],
    format: FormatOption = None,
    json: JsonOption = False,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Exit 1 for any global outside torch's weights_only allowlist and paramctl's own inert types "
            "(a gate for plain state dicts).",
        ),
    ] = False,
) -> None:
    """List every global the file's pickles reference, where, and how dangerous it is; what
    torch.load(weights_only=True) would refuse; and whether the file is well formed. Nothing is executed.

    Exit 1 if anything dangerous is referenced (with --strict: anything outside torch's weights_only allowlist and
    paramctl's inert types), else 2 if the file is broken, else 0. Several files (as a
    pre-commit hook passes them) are scanned one by one (JSON: {"files": [...]}), with the same rule over all."""
    from paramctl.ops.scan import scan

    results, dangerous, broken = [], False, False
    for path in paths:
        try:
            result = scan(path, format)
        except ParamctlError as error:
            if len(paths) == 1:
                raise
            typer.echo(f"paramctl: {escape(str(error))}", err=True)  # the other files are still scanned
            broken = True
            continue
        results.append(result)
        if not json:
            _print_report(result, strict)
        dangerous = dangerous or bool(result.dangerous) or (strict and bool(result.strict_refused))
        if not result.valid:
            if len(paths) > 1 or not result.dangerous:  # one file: exit 1 says it all, as before
                typer.echo(f"paramctl: {escape(result.file)}: {escape(result.problems[0])}", err=True)
            broken = True
    if json:
        print_json(results[0].as_json() if len(paths) == 1 else {"files": [r.as_json() for r in results]})
    if dangerous:
        raise typer.Exit(EXIT_DIFFERENT)
    if broken:
        raise typer.Exit(EXIT_BAD_INPUT)
    raise typer.Exit(EXIT_OK)


def _where_text(finding: Finding) -> str:
    shown = []
    for where in finding.where[:_WHERE_SHOWN]:
        place = f"{where.pickle}@{where.offset} {where.opcode}"
        if where.path is not None:
            place += f" → {where.path or '<root>'}"
        shown.append(place)
    more = len(finding.where) - _WHERE_SHOWN
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


def _print_report(result: ScanResult, strict: bool = False) -> None:
    from rich.table import Table

    from paramctl.pickles import BLOCKED, DANGEROUS, PSEUDO_MODULES, UNKNOWN, torch_name

    out = console()
    counts = ", ".join(f"{n} {cls}" for cls, n in reversed(result.counts().items()) if n) or "none"
    pickles = len(result.pickles)
    out.print(text(f"{result.file}: {result.format} · {pickles} pickle{'s' * (pickles != 1)} · globals: {counts}"))
    if result.globals:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("class", "global", "why", "where"):
            table.add_column(column, overflow="fold")
        for finding in result.globals:
            table.add_row(
                text(finding.cls, _STYLES[finding.cls]),
                text(
                    finding.qualname + (f" (imports {finding.imports})" if finding.imports != finding.qualname else "")
                ),
                text(finding.reason),
                text(_where_text(finding)),
            )
        out.print(table)
    refused = result.weights_only_refused
    if refused is not None:
        if refused or result.weights_only_unsupported_opcodes:
            out.print(text("torch.load(weights_only=True) would refuse this file:"))
            findings = {torch_name(f.module, f.name): f for f in result.globals}
            for name in refused:
                if findings[name].weights_only == BLOCKED:
                    out.print(text(f"  {name}  (its module is blocked: it can never be allowlisted)"))
                elif findings[name].cls == DANGEROUS:
                    out.print(text(f"  {name}  (dangerous: do not allowlist it)"))
                else:
                    out.print(text(f"  {name}  (if trusted: torch.serialization.add_safe_globals([{name}]))"))
            if result.weights_only_unsupported_opcodes:
                opcodes = ", ".join(result.weights_only_unsupported_opcodes)
                out.print(text(f"  pickle opcodes it does not implement: {opcodes}"))
        else:
            out.print(text("torch.load(weights_only=True) would accept every global and opcode"))
    for note in result.notes:
        out.print(text(f"note: {note}"))
    for problem in result.problems:
        out.print(text(f"problem: {problem}", "red"))
    if strict and result.strict_refused:
        names = ", ".join(result.strict_refused)
        refused = f"STRICT: refused (outside the weights_only allowlist and paramctl's inert types): {names}"
        out.print(text(refused, "bold red"))
    if result.dangerous:
        called = [f for f in result.dangerous if f.module not in PSEUDO_MODULES]
        if called:
            names = ", ".join(dict.fromkeys(f.imports for f in called))
            load = "loading this file with pickle or torch.load(weights_only=False)"
            out.print(text(f"DANGEROUS: {load} would call {names}", "bold red"))
        for finding in result.dangerous:
            if finding.module in PSEUDO_MODULES:
                out.print(text(f"DANGEROUS: {finding.reason}", "bold red"))
    elif any(f.cls == UNKNOWN for f in result.globals):
        out.print(text("unknown globals: loading imports and calls them; trust their packages before loading"))
    elif result.valid:
        out.print(text("valid" + (", nothing dangerous referenced" if result.pickles else "")))
