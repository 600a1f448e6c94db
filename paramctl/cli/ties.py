"""`paramctl ties PATH`: which names are one buffer in memory (or hold the same values), and CI assertions on it."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from paramctl.cli.app import FormatOption, JsonOption, app
from paramctl.cli.errors import EXIT_BAD_INPUT, EXIT_DIFFERENT, escape, fail, handles_errors
from paramctl.cli.render import console, print_json, shape_text, text
from paramctl.errors import ParamctlError
from paramctl.ops.ties import (
    ANCHOR,
    BY_STORAGE,
    BY_VALUE,
    OVERLAPPING,
    PACKED,
    RESHAPED,
    TIE,
    TRANSPOSED,
    Member,
    TieGroup,
    TiesResult,
    check_expectations,
    check_no_ties,
    compare_baseline,
    find_ties,
    load_baseline,
    parse_expect,
)
from paramctl.registry import open as open_tree


@app.command("ties")
@handles_errors
def ties_command(
    paths: Annotated[
        Optional[list[str]],
        typer.Argument(
            help="Checkpoint files or folders (each checked alone); without one, the tie rules of the repository's "
            "configuration.",
            metavar="[PATH]...",
            show_default=False,
        ),
    ] = None,
    by: Annotated[
        str,
        typer.Option(
            "--by",
            help="storage: names that are one buffer (headers only). "
            "value: identical or transposed contents, in any format (reads data).",
        ),
    ] = BY_STORAGE,
    include_packed: Annotated[
        bool, typer.Option("--all", help="Also list packed buffers: parameters side by side in one storage.")
    ] = False,
    expect: Annotated[
        Optional[list[str]],
        typer.Option(
            "--expect",
            help="Exit 1 unless these names are one tie group (repeatable; A=B=C for more).",
            metavar="A=B",
        ),
    ] = None,
    expect_none: Annotated[bool, typer.Option("--expect-none", help="Exit 1 if any tie exists.")] = False,
    baseline: Annotated[
        Optional[str],
        typer.Option(
            "--baseline", help="Exit 1 if the ties differ from this earlier `ties --json` output.", metavar="FILE"
        ),
    ] = None,
    format: FormatOption = None,
    json: JsonOption = False,
) -> None:
    """Show tied parameters: shared storage (tied, transposed, overlapping views) or identical values; assert them.

    Several PATHs (as a pre-commit hook passes them) are checked one by one (JSON: {"files": [...]}): exit 2 if one
    cannot be read, else 1 if an assertion fails for any."""
    if not paths:
        from paramctl.cli.check import run_configured_rules
        from paramctl.ops.check import TIE_RULES

        return run_configured_rules(TIE_RULES, "tie", json)
    if by not in (BY_STORAGE, BY_VALUE):
        raise fail(f"--by must be {BY_STORAGE} or {BY_VALUE}, not {by!r}")
    if by == BY_VALUE and include_packed:
        raise fail("--all (packed buffers) applies to --by storage only")
    expects = [parse_expect(item) for item in expect or []]
    previous = load_baseline(baseline) if baseline is not None else None
    if previous is not None and previous["by"] != by:
        raise fail(f"{baseline}: made with --by {previous['by']}; compare it with --by {previous['by']}")
    documents, failed, unreadable = [], False, False
    for path in paths:
        try:
            tree = open_tree(path, format)
            if by == BY_VALUE:
                from paramctl.ops.value_ties import find_value_ties  # reads data: NumPy only when asked

                result = find_value_ties(tree)
            else:
                result = find_ties(tree, include_packed)
        except ParamctlError as error:
            if len(paths) == 1:
                raise
            typer.echo(f"paramctl: {escape(str(error))}", err=True)  # the other files are still checked
            unreadable = True
            continue
        problems = check_expectations(result, expects, (name for name, _ in tree.tensors()))
        if expect_none:
            problems += check_no_ties(result)
        if previous is not None:
            problems += compare_baseline(result, previous)
        if json:
            documents.append({**result.as_json(), "problems": problems})
        else:
            if len(paths) > 1:
                console().print(text(f"{tree.file}:", "bold"))
            _print(result)
        for problem in problems:
            typer.echo(f"paramctl: {escape(tree.file)}: {escape(problem)}", err=True)
        failed = failed or bool(problems)
    if json:
        print_json(documents[0] if len(paths) == 1 else {"files": documents})
    if unreadable:
        raise typer.Exit(EXIT_BAD_INPUT)
    if failed:
        raise typer.Exit(EXIT_DIFFERENT)


def _relation_text(member: Member) -> str:
    partner = member.partner or ""
    return {
        ANCHOR: "anchor",
        TRANSPOSED: f"= {partner}ᵀ (transposed)",
        RESHAPED: f"= {partner} (reshaped)",
        OVERLAPPING: f"overlaps {partner}",
        PACKED: f"packed beside {partner}",
    }.get(member.relation, f"= {partner} (tied)")


def _heading(number: int, group: TieGroup, by: str) -> str:
    where = f"storage {group.storage.key}" if group.storage is not None else "separate storages"
    if group.kind != TIE:
        return f"packed buffer · {where} · {len(group.members)} parts side by side, not tied"
    declared = " · declared by metadata" if group.declared_by else ""
    what = "identical contents" if by == BY_VALUE else where
    return f"tie {number} · {what}{declared} · saves {group.saved_numel:,} parameters"


def _print(result: TiesResult) -> None:
    out = console()
    rows = [[_cells(member, result.by) for member in group.members] for group in result.groups]
    widths = [max(len(cells[i]) for block in rows for cells in block) for i in range(5)] if rows else []
    number = 0
    for group, block in zip(result.groups, rows):
        number += group.kind == TIE
        out.print(text(_heading(number, group, result.by)))
        for cells in block:
            aligned = [cell.rjust(w) if i == 3 else cell.ljust(w) for i, (cell, w) in enumerate(zip(cells, widths))]
            out.print(text("  " + "  ".join([*aligned, cells[5]]).rstrip()))
    if not result.ties:
        out.print(f"no ties (by {result.by})")
    if result.skipped:
        out.print(text(f"not compared (no NumPy dtype): {', '.join(result.skipped)}"))
    ties = len(result.ties)
    out.print(
        f"{result.numel:,} parameters as listed · {result.unique_numel:,} unique · "
        f"{result.saved_numel:,} saved by {ties} tie{'s' if ties != 1 else ''}"
    )


def _cells(member: Member, by: str) -> list[str]:
    """name, dtype, shape, where (offset and strides, or the storage), numel, relation."""
    tensor = member.tensor
    where = (
        f"offset {tensor.offset:,} strides {shape_text(tensor.strides)}"
        if by == BY_STORAGE
        else f"storage {tensor.storage.key}"
    )
    return [
        member.name or "<root>",
        tensor.dtype.name,
        shape_text(tensor.shape),
        f"{tensor.numel:,}",
        where,
        _relation_text(member),
    ]
