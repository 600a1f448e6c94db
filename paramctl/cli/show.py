"""`paramctl show PATH NAME…`: the values of tensors or parts of them (NumPy basic indexing), as NumPy prints them."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from paramctl.cli.app import FormatOption, JsonOption, app
from paramctl.cli.errors import escape, fail, handles_errors
from paramctl.cli.render import print_json, shape_text
from paramctl.registry import open as open_tree
from paramctl.tree import Opaque, Tensor, Value

if TYPE_CHECKING:  # the op imports NumPy: only `show` itself should pay for it, not every command's start-up
    from paramctl.ops.show import Selection, Shown


@app.command("show")
@handles_errors
def show_command(
    path: Annotated[str, typer.Argument(help="A checkpoint file.", show_default=False)],
    names: Annotated[
        list[str],
        typer.Argument(
            help="Names as `ls` prints them, or globs; NAME[INDEX] selects part of a tensor with NumPy's basic"
            " indexing: 'embed.weight[42]', '0.weight[:, :4]', 'x[::2, -1]', 'x[..., 0]'.",
            metavar="NAME[INDEX]...",
            show_default=False,
        ),
    ],
    full: Annotated[
        bool, typer.Option("--full", help="Print every value (at most 1,000,000), not a summary of large tensors.")
    ] = False,
    precision: Annotated[
        Optional[int], typer.Option("--precision", min=0, help="Digits after the point (NumPy's default: 8).")
    ] = None,
    out: Annotated[
        Optional[str],
        typer.Option(
            "--out",
            help="Write the selection to FILE.npy (numpy.save), or several to FILE.npz; bfloat16/float8 as float32.",
            metavar="FILE",
        ),
    ] = None,
    heatmap: Annotated[
        bool, typer.Option("--heatmap", help="Draw a 1-D or 2-D selection as coloured cells instead of numbers.")
    ] = False,
    width: Annotated[
        Optional[int], typer.Option("--width", min=4, help="Heatmap width in columns (default: the terminal's).")
    ] = None,
    height: Annotated[
        Optional[int], typer.Option("--height", min=1, help="Heatmap height in lines (default: the terminal's).")
    ] = None,
    png: Annotated[
        Optional[str],
        typer.Option(
            "--png",
            help="Write the heatmap (or a conv weight's filter grid) as a PNG; needs pip install 'paramctl\\[image]'.",
            metavar="FILE",
        ),
    ] = None,
    format: FormatOption = None,
    json: JsonOption = False,
) -> None:
    """Print the values of tensors (or of parts of them), formatted as NumPy prints arrays.

    Tensors with more than 1000 values print summarized, 3 items at each edge of each dimension (as NumPy and torch
    do), and only those items are read; a selection reads only the bytes it covers. Plain values print their
    value; placeholders their global and what they hold.

    Exit codes: 0 ok; 2 bad input (an unknown name, a malformed or out-of-range index).
    """
    from paramctl.ops.show import PRECISION, resolve, show, write_arrays

    if json and heatmap:
        raise fail("--json and --heatmap cannot be combined")
    if png is not None:
        from paramctl.cli.heatmap import require_pillow

        require_pillow()
    tree = open_tree(path, format)
    selections = resolve(tree, names)
    if png is not None:
        _write_png(selections, png)
    if out is not None:
        for note in write_arrays(selections, out):
            typer.echo(f"paramctl: note: {escape(note)}", err=True)
    if json:
        print_json(show(tree.file, selections, full).as_json())
    elif heatmap:
        _print_heatmaps(selections, width, height)
    elif out is None and png is None:
        _print_values(show(tree.file, selections, full).shown, PRECISION if precision is None else precision)


def _header(selection: Selection) -> str:
    leaf = selection.leaf
    assert isinstance(leaf, Tensor)
    shape = shape_text(selection.selected.shape)
    whole = f"  from {shape_text(leaf.shape)}" if selection.index is not None else ""
    return escape(f"{selection.label}  {leaf.dtype.name}  {shape}{whole}")


def _print_values(shown: list[Shown], precision: int) -> None:
    from paramctl.ops.show import FULL_LIMIT

    for number, item in enumerate(shown):
        selection, leaf = item.selection, item.selection.leaf
        if number and (isinstance(leaf, Tensor) or isinstance(shown[number - 1].selection.leaf, Tensor)):
            typer.echo("")  # a blank line around each block of numbers; plain values stay one per line
        if isinstance(leaf, Value):
            typer.echo(escape(f"{selection.label} = {leaf.value!r}"))
            continue
        if isinstance(leaf, Opaque):
            note = f" ({leaf.note})" if leaf.note else ""
            typer.echo(escape(f"{selection.label} = <{leaf.global_name}>{note}"))
            for name, held in selection.holds:
                typer.echo(escape(f"  {name} {_held_text(held)}"))
            continue
        summary = ""
        if item.summarized:
            numel = selection.selected.numel
            more = "--full for all" if numel <= FULL_LIMIT else "an index or --out FILE.npy for all"
            summary = f"  ({numel:,} values, edges shown; {more})"
        typer.secho(_header(selection) + summary, bold=True)
        typer.echo(item.text(precision))


def _held_text(leaf: Tensor | Value | Opaque) -> str:
    if isinstance(leaf, Tensor):
        return f" {leaf.dtype.name}  {shape_text(leaf.shape)}"
    if isinstance(leaf, Value):
        return f"= {leaf.value!r}"
    return f"= <{leaf.global_name}>"


def _print_heatmaps(selections: list[Selection], width: int | None, height: int | None) -> None:
    from paramctl.cli.heatmap import print_lines, terminal_heatmap

    terminal = shutil.get_terminal_size()
    width = width or terminal.columns
    height = height or max(4, terminal.lines - 4)
    for number, selection in enumerate(selections):
        lines: list[Any] = terminal_heatmap(selection, width, height)
        if number:
            typer.echo("")
        typer.secho(_header(selection), bold=True)
        print_lines(lines)


def _write_png(selections: list[Selection], path: str) -> None:
    from paramctl.cli.heatmap import write_png

    if len(selections) != 1:
        raise fail(f"--png {path}: draws one selection, but {len(selections)} were selected")
    description = write_png(selections[0], path)
    typer.echo(f"paramctl: wrote {escape(path)} ({escape(description)})", err=True)
