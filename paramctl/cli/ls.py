"""`paramctl ls PATH`: what a checkpoint holds, from its headers alone."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from paramctl.cli.app import FormatOption, JsonOption, PathArgument, app
from paramctl.cli.errors import EXIT_DIFFERENT, escape, fail, handles_errors
from paramctl.cli.render import console, human_bytes, print_json, shape_text, text
from paramctl.ops.listing import SORT_KEYS, Listing, Outline, TensorRow, ValueRow, list_tree, outline
from paramctl.ops.ties import ANCHOR, TRANSPOSED
from paramctl.registry import open as open_tree


@app.command("ls")
@handles_errors
def ls_command(
    path: PathArgument,
    tree: Annotated[bool, typer.Option("--tree", help="Draw the nesting with subtree totals.")] = False,
    depth: Annotated[
        Optional[int], typer.Option("--depth", min=0, help="With --tree: fold everything below depth N.")
    ] = None,
    filters: Annotated[
        Optional[list[str]],
        typer.Option("--filter", help="Keep names matching this glob (repeatable).", metavar="GLOB"),
    ] = None,
    sort: Annotated[str, typer.Option("--sort", help="file, name (natural order), numel or size.")] = "file",
    format: FormatOption = None,
    json: JsonOption = False,
) -> None:
    """List tensors (name, dtype, shape, numel, size, ties), plain values and totals. Reads headers only.

    Exit 1 when a sharded checkpoint's index disagrees with its shards (each problem is listed); 2 bad input."""
    if sort not in SORT_KEYS:
        raise fail(f"--sort must be one of {', '.join(SORT_KEYS)}, not {sort!r}")
    listing = list_tree(open_tree(path, format), filters, sort)
    if json:
        print_json(listing.as_json())
    elif tree:
        _print_outline(listing, depth)
    else:
        _print_table(listing)
    if not json:
        for problem in listing.inconsistencies:
            console().print(text(f"inconsistent: {problem['message']}"))
        if unused := listing.metadata.get("unreferenced_storages"):  # the file holds more than its pickles name
            shown = ", ".join(unused[:8]) + (", …" if len(unused) > 8 else "")
            console().print(text(f"unreferenced: {len(unused)} storage record(s) no listed tensor uses ({shown})"))
    if listing.inconsistencies:  # the listing is complete, but the index promises what the shards do not hold
        count = len(listing.inconsistencies)
        typer.echo(
            f"paramctl: {escape(listing.file)}: {count} inconsistenc{'y' if count == 1 else 'ies'} between the index "
            "and its shards",
            err=True,
        )
        raise typer.Exit(EXIT_DIFFERENT)


def _tie_text(row: TensorRow) -> str:
    tie = row.tie
    if tie is None:
        return ""
    if tie.relation == ANCHOR:
        return "shared"
    declared = " (metadata)" if row.tensor.declared_by else ""
    if tie.relation == TRANSPOSED:
        return f"= {tie.partner}ᵀ{declared}"
    if tie.relation == "overlapping":
        return f"overlaps {tie.partner}"
    return f"= {tie.partner}{declared}"


def _totals_line(listing: Listing) -> str:
    t = listing.totals
    return (
        f"{t.tensors:,} tensors · {t.numel:,} parameters ({t.unique_numel:,} unique) · {human_bytes(t.nbytes)}"
        f" · {listing.format}"
    )


def _print_table(listing: Listing) -> None:
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    sharded = any(row.shard is not None for row in listing.tensors)
    for column, justify in (
        ("name", "left"),
        ("dtype", "left"),
        ("shape", "left"),
        ("numel", "right"),
        ("size", "right"),
        ("tie", "left"),
        *((("shard", "left"),) if sharded else ()),
    ):
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for row in listing.tensors:
        t = row.tensor
        table.add_row(
            text(row.name or "<root>"),
            t.dtype.name,
            shape_text(t.shape),
            f"{t.numel:,}",
            human_bytes(t.nbytes),
            text(_tie_text(row)),
            *((text(row.shard or ""),) if sharded else ()),
        )
    out = console()
    if listing.tensors:
        out.print(table)
    for row in listing.values:
        out.print(text(f"{row.name or '<root>'} = {_value_text(row)}"))
    out.print(_totals_line(listing))


def _value_text(row: ValueRow) -> str:
    leaf: Any = row.leaf
    if hasattr(leaf, "global_name"):
        return f"<{leaf.global_name}>" + (f" ({leaf.note})" if leaf.note else "")
    shown = repr(leaf.value)
    return shown if len(shown) <= 200 else shown[:200] + f"… ({len(shown)} characters)"


def _print_outline(listing: Listing, depth: int | None) -> None:
    from rich.tree import Tree as RichTree

    root = outline(listing)
    top = RichTree(text(f"{listing.file}  {root.numel:,} params"), guide_style="dim")

    def add(parent: Any, node: Outline, level: int) -> None:
        for child in node.children.values():
            label = _outline_label(child, folded=depth is not None and level >= depth)
            branch = parent.add(label)
            if not (depth is not None and level >= depth):
                add(branch, child, level + 1)

    add(top, root, 1)
    out = console()
    out.print(top)
    out.print(_totals_line(listing))


def _outline_label(node: Outline, folded: bool) -> Any:
    row = node.row
    if isinstance(row, TensorRow) and not node.children:
        t = row.tensor
        tie = _tie_text(row)
        return text(f"{node.name}  {shape_text(t.shape)} {t.dtype.name}  {t.numel:,}" + (f"  [{tie}]" if tie else ""))
    if isinstance(row, ValueRow) and not node.children:
        return text(f"{node.name} = {_value_text(row)}")
    suffix = f"  ({node.tensors:,} tensors)" if folded and node.tensors else ""
    return text(f"{node.name}  {node.numel:,} params{suffix}")
