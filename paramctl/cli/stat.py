"""`paramctl stat PATH [NAME-GLOB …]`: value statistics per tensor, per subtree and for the whole file."""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from paramctl.cli.app import FormatOption, JsonOption, app
from paramctl.cli.errors import EXIT_BAD_INPUT, EXIT_DIFFERENT, escape, fail, handles_errors
from paramctl.cli.progress import progress
from paramctl.cli.render import console, print_json, shape_text, text
from paramctl.errors import ParamctlError
from paramctl.registry import open as open_tree

if TYPE_CHECKING:  # the op imports NumPy: only `stat` itself should pay for it, not every command's start-up
    from paramctl.ops.stats import Histogram, Moments, Stats

SPARKS = "▁▂▃▄▅▆▇█"


@app.command("stat")
@handles_errors
def stat_command(
    path: Annotated[
        Optional[str],
        typer.Argument(
            help="A checkpoint file or folder; with --check-finite and without it, the finite rules of the "
            "repository's configuration.",
            metavar="[PATH]",
            show_default=False,
        ),
    ] = None,
    names: Annotated[
        Optional[list[str]],
        typer.Argument(
            help="Only tensors whose names match these globs.", metavar="[NAME-GLOB]...", show_default=False
        ),
    ] = None,
    depth: Annotated[
        Optional[int],
        typer.Option("--depth", min=1, help="Merge the statistics per subtree: names' first N path segments."),
    ] = None,
    hist: Annotated[
        bool, typer.Option("--hist", help="A 16-bin histogram of each tensor between its min and max (second pass).")
    ] = False,
    check_finite: Annotated[
        bool, typer.Option("--check-finite", help="Exit 1 and list the tensors that hold a NaN or an infinity.")
    ] = False,
    files: Annotated[
        bool,
        typer.Option(
            "--files",
            help="Every argument is a checkpoint PATH (no NAME-GLOBs): several files, as pre-commit passes them.",
        ),
    ] = False,
    format: FormatOption = None,
    json: JsonOption = False,
) -> None:
    """Min, max, mean, std, L2 norm, max |x|, zeros and NaN/±Inf counts of every tensor, and totals.

    std is the population standard deviation (ddof=0, as numpy.std).

    min, max, mean, std, L2 and max |x| describe the finite values; NaN, +Inf and -Inf are counted apart.

    Complex tensors: statistics of the magnitude |x|. Names that share memory (tied weights) are read once.

    Exit codes: 0 ok; 1 with --check-finite when a NaN or an infinity is present; 2 bad input.
    With --files and several files: each file in turn (JSON: {"files": [...]}), 2 if any is unreadable, else 1 if
    any holds a NaN or an infinity under --check-finite.
    """
    from paramctl.ops.stats import stat_tree

    if path is None:
        if not check_finite:
            raise fail("missing PATH")
        from paramctl.cli.check import run_configured_rules
        from paramctl.ops.check import FINITE_RULES

        return run_configured_rules(FINITE_RULES, "finite", json)
    if files:  # a pre-commit hook passes any number of files
        return _stat_files([path, *(names or [])], depth, hist, check_finite, format, json)
    tree = open_tree(path, format)
    stats = stat_tree(tree, names, depth=depth, hist=hist, progress=partial(progress, description="stat"))
    if json:
        print_json(stats.as_json())
    else:
        _print_table(stats, hist)
        if check_finite:
            _print_finite_check(stats)
    if check_finite and stats.nonfinite:
        raise typer.Exit(EXIT_DIFFERENT)


def _stat_files(
    paths: list[str], depth: int | None, hist: bool, check_finite: bool, format: str | None, json: bool
) -> None:
    """`stat --files A B …`: each file as `stat A` shows it; a file that cannot be read is reported and skipped."""
    from paramctl.ops.stats import stat_tree

    documents, unreadable, nonfinite = [], False, False
    for path in paths:
        try:
            stats = stat_tree(open_tree(path, format), depth=depth, hist=hist)
        except ParamctlError as error:
            typer.echo(f"paramctl: {escape(str(error))}", err=True)
            unreadable = True
            continue
        nonfinite = nonfinite or bool(stats.nonfinite)
        if json:
            documents.append(stats.as_json())
            continue
        console().print(text(f"{stats.file}:", "bold"))
        _print_table(stats, hist)
        if check_finite:
            _print_finite_check(stats)
    if json:
        print_json({"files": documents})
    if unreadable:
        raise typer.Exit(EXIT_BAD_INPUT)
    if check_finite and nonfinite:
        raise typer.Exit(EXIT_DIFFERENT)


def number(value: float | int | None) -> str:
    """Compact: 4 significant digits; integers (int tensors' extremes) in full while short."""
    if value is None:
        return "–"
    if isinstance(value, int) and abs(value) < 10**7:
        return str(value)
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def zeros_text(zeros: int, numel: int) -> str:
    if not zeros:
        return "0"
    share = 100 * zeros / numel
    return f"{zeros:,} ({share:.1f}%)" if share >= 0.1 else f"{zeros:,} (<0.1%)"


def sparkline(hist: Histogram | None) -> str:
    """One character per bin, its height relative to the fullest bin; an empty bin is a space."""
    if hist is None:
        return ""
    top = max(hist.counts)
    return "".join(
        " " if not count else SPARKS[min(len(SPARKS) - 1, math.ceil(count / top * len(SPARKS)) - 1)]
        for count in hist.counts
    )


def _figures(m: Moments | None, numel: int) -> list[str]:
    if m is None:
        return ["not readable"] + ["–"] * 6
    return [
        number(m.min if m.count else None),
        number(m.max if m.count else None),
        number(m.mean if m.count else None),
        number(m.std),
        number(m.l2),
        number(m.absmax),
        zeros_text(m.zeros, numel),
    ]


def _print_table(stats: Stats, hist: bool) -> None:
    from rich.table import Table

    by_subtree = stats.depth is not None
    every = [r.moments for r in stats.tensors if r.moments is not None]
    nonfinite_columns = [
        (label, attribute)
        for label, attribute in (("NaN", "nan"), ("+Inf", "posinf"), ("-Inf", "neginf"))
        if any(getattr(m, attribute) for m in every)
    ]
    table = Table(box=None, pad_edge=False, header_style="bold")
    leading = ("subtree", "tensors") if by_subtree else ("name", "dtype", "shape")
    for column in leading:
        table.add_column(column, justify="right" if column == "tensors" else "left", overflow="fold")
    for column in ("min", "max", "mean", "std", "L2", "max|x|", "zeros", *(label for label, _ in nonfinite_columns)):
        table.add_column(column, justify="right")
    if hist and not by_subtree:
        table.add_column("histogram", justify="left", no_wrap=True)

    def counts(m: Moments | None) -> list[str]:
        return [f"{getattr(m, attribute):,}" if m is not None else "–" for _, attribute in nonfinite_columns]

    if by_subtree:
        for group in stats.groups:
            m = group.moments
            table.add_row(text(group.name or "<root>"), f"{group.tensors:,}", *_figures(m, m.numel), *counts(m))
    else:
        for row in stats.tensors:
            dtype = row.tensor.dtype.name + (" |x|" if row.magnitude else "")
            cells = [text(row.name or "<root>"), dtype, shape_text(row.tensor.shape)]
            cells += _figures(row.moments, row.tensor.numel) + counts(row.moments)
            if hist:
                cells.append(sparkline(row.histogram))
            table.add_row(*cells)
    total = stats.totals
    lead = ["total", ""] if by_subtree else ["total", "", f"{total.numel:,} values"]
    table.add_row(*lead, *_figures(total, total.numel), *counts(total), style="bold", end_section=False)
    out = console()
    out.print(table)
    notes = [
        f"total: {stats.unique:,} unique of {plural(len(stats.tensors), 'tensor')} (tied names counted once)",
        "std: population (ddof=0)",
        "min…max|x| over finite values",
    ]
    if any(r.magnitude for r in stats.tensors):
        notes.append("|x|: complex tensors, statistics of the magnitude")
    out.print(text(" · ".join(notes), style="dim"))


def _print_finite_check(stats: Stats) -> None:
    out = console()
    bad = [row for row in stats.tensors if row.moments is not None and row.moments.nonfinite]
    if not bad:
        out.print(f"all values finite in {plural(len(stats.tensors), 'tensor')}")
        return
    for row in bad:
        m: Any = row.moments
        found = [f"{n:,} {label}" for n, label in ((m.nan, "NaN"), (m.posinf, "+Inf"), (m.neginf, "-Inf")) if n]
        out.print(text(f"non-finite: {row.name or '<root>'} ({', '.join(found)})"))
