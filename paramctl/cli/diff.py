"""`paramctl diff A B`: what a fine-tune, a conversion or a refactor changed; exit 1 when anything did."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from paramctl.cli.app import FormatOption, JsonOption, app
from paramctl.cli.errors import EXIT_DIFFERENT, EXIT_OK, handles_errors
from paramctl.cli.progress import progress
from paramctl.cli.render import console, print_json, shape_text, text
from paramctl.errors import UsageError
from paramctl.registry import open as open_tree
from paramctl.remote import is_url

if TYPE_CHECKING:  # the diff itself imports NumPy: only when the command runs, so `ls` stays light
    from paramctl.ops.diff import DiffResult, OnlyIn, TensorDiff

SUBTREE_SEPARATOR = "::"


def parse_operand(operand: str) -> tuple[str, str | None]:
    """`PATH` or `PATH::SUBTREE` as (path, subtree or None).

    The last `::` separates the subtree, so a path may contain `::` but a subtree may not. A trailing `::` means
    the whole file. When both readings name an existing file, the operand is ambiguous and refused. In a URL the
    authority is never split: `http://[::1]:8000/m.pt` is an IPv6 host, and only a `::` in the URL's path is a
    subtree separator.
    """
    if operand.endswith(SUBTREE_SEPARATOR):
        return operand[: -len(SUBTREE_SEPARATOR)], None
    searched_from = _after_authority(operand)
    if SUBTREE_SEPARATOR not in operand[searched_from:]:
        return operand, None
    path, subtree = operand.rsplit(SUBTREE_SEPARATOR, 1)
    if is_url(operand):
        return path, subtree
    if os.path.exists(operand):
        if os.path.exists(path):
            raise UsageError(
                f"{operand!r} is ambiguous: both the file {operand!r} and the subtree {subtree!r} of {path!r}"
                f" exist; write {operand + SUBTREE_SEPARATOR!r} for the whole file"
            )
        return operand, None
    return path, subtree


def _after_authority(operand: str) -> int:
    """Where a URL's path starts (`scheme://host[:port]` is skipped), or 0 for a local path."""
    if not is_url(operand):
        return 0
    start = operand.index("://") + 3
    slash = operand.find("/", start)
    return len(operand) if slash < 0 else slash


def parse_rename(rule: str) -> tuple[str, str]:
    """`REGEX=REPLACEMENT` split at the last `=`: a regex may hold `=` (a lookahead `(?=…)`), a replacement not."""
    regex, equals, replacement = rule.rpartition("=")
    if not equals or not regex:
        raise UsageError(f"--rename {rule!r}: expected REGEX=REPLACEMENT")
    return regex, replacement


@app.command("diff")
@handles_errors
def diff_command(
    a: Annotated[
        str, typer.Argument(help="The reference checkpoint: PATH, or PATH::SUBTREE.", metavar="A", show_default=False)
    ],
    b: Annotated[
        str,
        typer.Argument(
            help="The checkpoint compared with it: PATH, or PATH::SUBTREE.", metavar="B", show_default=False
        ),
    ],
    atol: Annotated[float, typer.Option("--atol", help="Absolute tolerance: |a−b| ≤ atol + rtol·|b|.")] = 0.0,
    rtol: Annotated[float, typer.Option("--rtol", help="Relative tolerance, relative to B (as numpy.isclose).")] = 0.0,
    nan_unequal: Annotated[
        bool, typer.Option("--nan-unequal", help="A NaN differs even from a NaN at the same position.")
    ] = False,
    ignore_dtype: Annotated[
        bool, typer.Option("--ignore-dtype", help="Compare values across dtypes (both upcast to float64).")
    ] = False,
    strip_prefix: Annotated[
        Optional[list[str]],
        typer.Option(
            "--strip-prefix", help="Remove this prefix from names on both sides (repeatable).", metavar="PREFIX"
        ),
    ] = None,
    select: Annotated[
        Optional[list[str]],
        typer.Option("--select", help="Compare only names matching this glob (repeatable).", metavar="GLOB"),
    ] = None,
    exclude: Annotated[
        Optional[list[str]],
        typer.Option("--exclude", help="Skip names matching this glob (repeatable).", metavar="GLOB"),
    ] = None,
    rename: Annotated[
        Optional[list[str]],
        typer.Option(
            "--rename",
            help="Rename B's names: re.sub(REGEX, REPLACEMENT), split at the last '=' (repeatable, in order).",
            metavar="REGEX=REPLACEMENT",
        ),
    ] = None,
    transpose: Annotated[
        Optional[list[str]],
        typer.Option(
            "--transpose",
            help="Compare B's 2-D tensor transposed where the name (after renaming) matches this glob (repeatable).",
            metavar="GLOB",
        ),
    ] = None,
    allow_dropped_ties: Annotated[
        bool,
        typer.Option(
            "--allow-dropped-ties", help="A tied name dropped on one side (its partner equal) is no difference."
        ),
    ] = False,
    ignore_metadata: Annotated[bool, typer.Option("--ignore-metadata", help="Do not compare file metadata.")] = False,
    show_all: Annotated[bool, typer.Option("--all", help="List equal tensors and values too.")] = False,
    format: FormatOption = None,
    json: JsonOption = False,
) -> None:
    """Compare two checkpoints: names on one side only, shape, dtype and value changes, plain values, metadata.

    Exit 0 when equal under the tolerance, 1 when anything differs, 2 on bad input.

    PATH::SUBTREE compares the names under SUBTREE: `paramctl diff train.pt::model model.safetensors`.

    A Flax checkpoint against its PyTorch port: `paramctl diff model.pt flax.msgpack
    --rename 'params\\.layers_(\\d+)\\.kernel=\\1.weight' --rename 'params\\.layers_(\\d+)\\.bias=\\1.bias'
    --transpose '*.weight'`.
    """
    from paramctl.ops.diff import Comparison, DiffOptions

    path_a, subtree_a = parse_operand(a)
    path_b, subtree_b = parse_operand(b)
    options = DiffOptions(
        atol=atol,
        rtol=rtol,
        nan_equal=not nan_unequal,
        ignore_dtype=ignore_dtype,
        subtree_a=subtree_a,
        subtree_b=subtree_b,
        strip_prefixes=tuple(strip_prefix or ()),
        select=tuple(select or ()),
        exclude=tuple(exclude or ()),
        rename=tuple(parse_rename(rule) for rule in rename or ()),
        transpose=tuple(transpose or ()),
        allow_dropped_ties=allow_dropped_ties,
        compare_metadata=not ignore_metadata,
        list_all=show_all,
    )
    comparison = Comparison(open_tree(path_a, format), open_tree(path_b, format), options)
    with progress(comparison.nbytes, "comparing") as advance:
        result = comparison.run(advance)
    if json:
        print_json(result.as_json())
    else:
        _print_result(result)
    raise typer.Exit(EXIT_OK if result.equal else EXIT_DIFFERENT)


def _operand_text(label: str, operand: Any) -> str:
    subtree = f"{SUBTREE_SEPARATOR}{operand.subtree}" if operand.subtree else ""
    return f"{label}: {operand.file}{subtree} ({operand.format})"


def _name(name: str) -> str:
    return name or "<root>"


def _number(value: float | int | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):  # an integer pair's exact distance: every digit counts (2**53 + 1 is not 2**53)
        return str(value)
    return f"{value:.6g}"


def _print_result(result: DiffResult) -> None:
    out = console()
    out.print(text(_operand_text("A", result.a)))
    out.print(text(_operand_text("B", result.b)))
    for title, rows in (("only in A", result.only_in_a), ("only in B", result.only_in_b)):
        if rows:
            out.print(f"\n{title}")
            out.print(_only_table(rows))
    if result.changed:
        out.print("\nchanged")
        out.print(_tensor_table(result.changed))
    if result.dropped_ties:
        allowed = " (allowed)" if result.options.allow_dropped_ties else ""
        out.print(f"\ndropped ties{allowed}")
        for tie in result.dropped_ties:
            side = "A" if tie.side == "a" else "B"
            mark = "ᵀ" if tie.relation == "transposed" else ""
            out.print(text(f"  {_name(tie.name)} (only in {side}) = {_name(tie.partner)}{mark}, equal on both sides"))
    if result.values_changed:
        out.print("\nvalues changed")
        for change in result.values_changed:
            out.print(text(f"  {_name(change.name)}: {change.a!r} → {change.b!r}"))
    if result.metadata_changed:
        out.print("\nmetadata changed")
        for meta in result.metadata_changed:
            out.print(text(f"  {meta.key}: {meta.a!r} → {meta.b!r}"))
    if result.metadata_not_compared:
        out.print(text(f"\nmetadata not compared: {result.metadata_not_compared}"))
    if result.unchanged:
        out.print("\nequal")
        out.print(_tensor_table(result.unchanged))
    if result.values_unchanged:
        out.print("\nvalues equal")
        for change in result.values_unchanged:
            out.print(text(f"  {_name(change.name)}: {change.a!r}"))
    verdict = "equal" if result.equal else "different"
    out.print(f"\n{result.equal_count:,} equal, {result.different_count:,} different: {verdict}")


def _only_table(rows: list[OnlyIn]) -> Any:
    from rich.table import Table

    table = Table(box=None, pad_edge=False, show_header=False)
    table.add_column(overflow="fold")
    table.add_column(overflow="fold")
    for row in rows:
        layout = f"{row.dtype} {shape_text(row.shape)}" if row.shape is not None else row.kind
        table.add_row(text("  " + _name(row.name)), layout)
    return table


def _tensor_table(rows: list[TensorDiff]) -> Any:
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column, justify in (
        ("  name", "left"),
        ("reason", "left"),
        ("dtype", "left"),
        ("shape", "left"),
        ("mismatched", "right"),
        ("max |a−b|", "right"),
        ("max rel", "right"),
        ("rel L2", "right"),
        ("cosine", "right"),
    ):
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for row in rows:
        dtype = row.dtype_a if row.dtype_a == row.dtype_b else f"{row.dtype_a} → {row.dtype_b}"
        shape = (
            shape_text(row.shape_a)
            if row.shape_a == row.shape_b
            else f"{shape_text(row.shape_a)} → {shape_text(row.shape_b)}"
        )
        s = row.stats
        metrics = (
            [
                f"{s.mismatched:,}/{s.numel:,}",
                _number(s.max_abs),
                _number(s.max_rel),
                _number(s.rel_l2),
                _number(s.cosine),
            ]
            if s
            else ["", "", "", "", ""]
        )
        table.add_row(text("  " + _name(row.name)), row.reason or "equal", dtype, shape, *metrics)
    return table
