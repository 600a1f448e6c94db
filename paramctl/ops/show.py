"""`show`: the values of named tensors, or of parts of them, printed as NumPy prints arrays.

Only the bytes the output needs are read. A selection (`embed.weight[42]`) is resolved to a layout by arithmetic
(`ops/index.py`) and read through `reader.window`, which hands out only the span between its first and last element;
a large selection prints summarized, and then only its edge blocks are read: NumPy itself formats a summarized array
from its edge items alone (`numpy._core.arrayprint._leading_trailing`), so formatting the gathered edges with the
same options reproduces NumPy's output exactly.
"""

from __future__ import annotations

import difflib
import fnmatch
import itertools
import math
import os
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from paramctl import reader
from paramctl.dtypes import numpy_dtype
from paramctl.errors import FileError, UsageError
from paramctl.ops.index import Layout, select, split_groups
from paramctl.ops.listing import jsonable
from paramctl.tree import Leaf, Opaque, Tensor, Tree, Value, name_of

THRESHOLD = 1000  # NumPy's and torch's default: more elements than this print summarized
EDGEITEMS = 3  # items kept at each end of a summarized dimension (NumPy's and torch's default)
PRECISION = 8  # NumPy's default number of digits
LINE_WIDTH = 75  # NumPy's default line width
SLACK_BYTES = 16 << 10  # a window may hand out this much (4 pages) beyond what it needs before it is split
RELEASE_BYTES = 1 << 20  # reads spanning more than this drop their pages as they go, so memory stays flat
FULL_LIMIT = 1_000_000  # --full: NumPy's formatter needs ~0.5 KB and ~8 µs per value; beyond this, use --out
ROOT = "<root>"  # how `ls` names a leaf with an empty path (a file holding one bare tensor)
_GLOB_CHARACTERS = frozenset("*?[")


# --------------------------------------------------------------------------- naming what to show


@dataclass(frozen=True)
class Selection:
    """One thing to show: a leaf of the file, and for a tensor the layout of the part that was asked for."""

    file: str
    name: str
    index: str | None  # the `[...]` text as given, or None for the whole leaf
    leaf: Leaf
    layout: Layout | None = None  # tensors only
    holds: tuple[tuple[str, Leaf], ...] = ()  # placeholders only: the leaves listed beneath them

    @property
    def label(self) -> str:
        return (self.name or ROOT) + (self.index or "")

    @property
    def tensor(self) -> Tensor:
        if not isinstance(self.leaf, Tensor):
            raise UsageError(f"{self.file}: {self.label} is a plain value, not a tensor")
        return self.leaf

    @property
    def selected(self) -> Layout:
        """The layout of the selected part of the tensor (a UsageError for a plain value)."""
        if self.layout is None:
            raise UsageError(f"{self.file}: {self.label} is a plain value, not a tensor")
        return self.layout


def resolve(tree: Tree, specs: list[str]) -> list[Selection]:
    """The selections NAME[INDEX] texts ask for, in the order asked (a glob in file order), each once.

    A text naming a leaf exactly is that leaf, even when it ends in brackets; otherwise trailing `[...]` groups are
    an index on the name before them (or on every tensor a glob before them matches); otherwise the whole text is
    a glob. A name that matches nothing is an error that suggests the closest names.
    """
    entries = [(name_of(path), path, leaf) for path, leaf in tree.leaves]
    selections: list[Selection] = []
    seen: set[tuple[int, str | None]] = set()
    for spec in specs:
        positions, index, by_glob = _lookup(tree.file, entries, spec)
        picked = 0
        for position in positions:
            name, _, leaf = entries[position]
            if index is not None and not isinstance(leaf, Tensor):
                if by_glob:
                    continue  # a glob with an index selects from the tensors it matches
                raise UsageError(f"{tree.file}: {name or ROOT} is a plain value, not a tensor: it takes no index")
            picked += 1
            if (position, index) in seen:
                continue
            seen.add((position, index))
            selections.append(_selection(tree.file, entries, position, index))
        if not picked:
            raise UsageError(f"{tree.file}: {spec!r} matches no tensor (an index needs a tensor)")
    return selections


def _lookup(file: str, entries: list[tuple[str, Any, Leaf]], spec: str) -> tuple[list[int], str | None, bool]:
    """(positions of the matching leaves, index text or None, matched by a glob)."""

    def exact(name: str) -> list[int]:
        name = "" if name == ROOT else name
        return [i for i, (n, _, _) in enumerate(entries) if n == name]

    def glob(pattern: str) -> list[int]:
        return [i for i, (n, _, _) in enumerate(entries) if fnmatch.fnmatchcase(n, pattern)]

    if hits := exact(spec):
        return hits, None, False
    groups = split_groups(spec)
    # Longest name first: `a[0][1]` is `a[0]` indexed by `[1]` when a leaf is named `a[0]`.
    splits = [(spec[: len(spec) - len("".join(groups[k:]))], "".join(groups[k:])) for k in reversed(range(len(groups)))]
    for base, index in splits:
        if hits := exact(base):
            return hits, index, False
    for base, index in splits:
        if _GLOB_CHARACTERS & set(base) and (hits := glob(base)):
            return hits, index, True
    if _GLOB_CHARACTERS & set(spec) and (hits := glob(spec)):
        return hits, None, True
    target = splits[-1][0] if splits else spec
    if "[" in spec and (hits := exact(spec[: spec.index("[")])):  # a known name with an index beyond basic indexing
        name, _, leaf = entries[hits[0]]
        shape = f" has shape {_shape_text(leaf.shape)}" if isinstance(leaf, Tensor) else " is a plain value"
        raise UsageError(
            f"{file}: {spec}: {name or ROOT}{shape}: cannot parse index {spec[spec.index('[') :]!r}"
            " (NumPy's basic indexing: integers, slices, '...', None)"
        )
    names = list(dict.fromkeys(n or ROOT for n, _, _ in entries))
    close = difflib.get_close_matches(target, names, n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else " (`paramctl ls` lists them)"
    raise UsageError(f"{file}: no tensor or value named {target!r}{hint}")


def _selection(file: str, entries: list[tuple[str, Any, Leaf]], position: int, index: str | None) -> Selection:
    name, path, leaf = entries[position]
    if isinstance(leaf, Tensor):
        layout = Layout(leaf.offset, leaf.shape, leaf.strides)
        if index is not None:
            try:
                layout = select(layout, index)
            except UsageError as error:
                shape = _shape_text(leaf.shape)
                raise UsageError(f"{file}: {name or ROOT}{index}: {name or ROOT} has shape {shape}: {error}") from None
        return Selection(file, name, index, leaf, layout)
    holds: tuple[tuple[str, Leaf], ...] = ()
    if isinstance(leaf, Opaque):  # a placeholder's contents are the leaves listed beneath its path
        holds = tuple((n, held) for n, p, held in entries[position + 1 :] if p[: len(path)] == path and n != name)
    return Selection(file, name, None, leaf, None, holds)


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


# --------------------------------------------------------------------------- reading only what is needed


def readable_dtype(selection: Selection) -> np.dtype:
    """The NumPy dtype of a selection's values, or a UsageError for types NumPy lacks (quantized, complex32)."""
    try:
        return numpy_dtype(selection.tensor.dtype)  # type: ignore[no-any-return]
    except TypeError:
        raise UsageError(
            f"{selection.file}: {selection.label}: values of dtype {selection.tensor.dtype.name} cannot be read"
            " (NumPy has no such type)"
        ) from None


def read(tensor: Tensor, layout: Layout) -> np.ndarray:
    """The values at `layout` as a fresh C-ordered array, reading only the bytes that hold them.

    A piece whose span would hand out more than twice its bytes (and more than SLACK_BYTES) is split along its
    widest-strided axis, so a column of a wide matrix reads its elements, not the rows between them.
    """
    out = np.empty(layout.shape, numpy_dtype(tensor.dtype))
    if out.size == 0:
        return out
    if reader.sequential(tensor):  # every window is a pass over the stream: one pass for all
        out[...] = reader.window(tensor, layout.offset, layout.shape, layout.strides)
        return out
    slack = max(1, SLACK_BYTES // out.itemsize)
    first, last = layout.span
    releasing = (last - first) * out.itemsize >= RELEASE_BYTES
    pending: tuple[int, int] | None = None  # the element range read since pages were last dropped
    for index, piece in _pieces(layout, slack, (slice(None),) * layout.ndim):
        out[index] = reader.window(tensor, piece.offset, piece.shape, piece.strides)
        if releasing:
            low, high = piece.span
            pending = (low, high) if pending is None else (min(pending[0], low), max(pending[1], high))
            if (pending[1] - pending[0]) * out.itemsize >= RELEASE_BYTES:
                _release(tensor, *pending)
                pending = None
    if pending is not None:
        _release(tensor, *pending)
    return out


def _release(tensor: Tensor, low: int, high: int) -> None:
    """Drop the pages under storage elements [low, high], gaps included: a strided read (a column) maps the pages
    around each element it touches, and they would otherwise stay in memory however large the file."""
    reader.release(Tensor(tensor.dtype, (high - low + 1,), (1,), tensor.storage, low))


def _pieces(layout: Layout, slack: int, index: tuple[slice, ...]) -> Iterator[tuple[tuple[slice, ...], Layout]]:
    first, last = layout.span
    if last - first + 1 <= max(slack, 2 * layout.numel):
        yield index, layout
        return
    axis = max((a for a, n in enumerate(layout.shape) if n > 1), key=lambda a: abs(layout.strides[a]))
    for i in range(layout.shape[axis]):
        yield from _pieces(layout.narrow(axis, i, i + 1), slack, index[:axis] + (slice(i, i + 1),) + index[axis + 1 :])


def read_edges(tensor: Tensor, layout: Layout) -> np.ndarray:
    """The leading and trailing EDGEITEMS of every dimension longer than 2·EDGEITEMS (NumPy's summary corners)."""
    ranges = [
        [(0, EDGEITEMS, 0), (n - EDGEITEMS, n, EDGEITEMS)] if n > 2 * EDGEITEMS else [(0, n, 0)] for n in layout.shape
    ]
    out = np.empty(tuple(min(n, 2 * EDGEITEMS) for n in layout.shape), numpy_dtype(tensor.dtype))
    for corner in itertools.product(*ranges):
        piece, index = layout, []
        for axis, (start, stop, at) in enumerate(corner):
            piece = piece.narrow(axis, start, stop)
            index.append(slice(at, at + stop - start))
        out[tuple(index)] = read(tensor, piece)
    return out


def blocks(layout: Layout, limit: int, axis: int = 0, index: tuple[slice, ...] = ()) -> Iterator[tuple[Any, Layout]]:
    """Row-major rectangular blocks of at most `limit` elements: (index into the whole, block layout)."""
    if layout.numel <= limit or axis >= layout.ndim:
        yield index, layout
        return
    n = layout.shape[axis]
    step = limit // (layout.numel // n)
    if step >= 1:
        for start in range(0, n, step):
            stop = min(n, start + step)
            yield index + (slice(start, stop),), layout.narrow(axis, start, stop)
        return
    for i in range(n):
        yield from blocks(layout.narrow(axis, i, i + 1), limit, axis + 1, index + (slice(i, i + 1),))


def stream(tensor: Tensor, layout: Layout, limit: int | None = None) -> Iterator[tuple[Any, np.ndarray]]:
    """A selection's values block by block, in row-major order, read on all cores with bounded memory.

    A deflated member (a Stream) can only be read front to back, so its selection is read in one pass, whole.
    """
    if reader.sequential(tensor):
        yield (), read(tensor, layout)
        return
    limit = limit or max(1, reader.CHUNK_BYTES // tensor.dtype.itemsize)
    pieces = list(blocks(layout, limit))

    def task(piece: Layout) -> Any:
        return lambda: read(tensor, piece)

    yield from zip((index for index, _ in pieces), reader.parallel(task(piece) for _, piece in pieces))


# --------------------------------------------------------------------------- formatting


def is_extended(dtype: np.dtype) -> bool:
    """bfloat16 and the float8s: ml_dtypes types, which NumPy neither prints as it prints floats nor saves portably.

    (Their `kind` is no guide: ml_dtypes reports "V" for most of them but "f" for float8_e5m2.)
    """
    return dtype.type.__module__.split(".")[0] == "ml_dtypes"


def printable(values: np.ndarray) -> np.ndarray:
    """bfloat16 and float8 as float32 (exact), so NumPy prints and converts them as numbers."""
    return values.astype(np.float32) if is_extended(values.dtype) else values


def format_values(values: np.ndarray, shape: tuple[int, ...], summarized: bool, precision: int = PRECISION) -> str:
    """The text `numpy.array2string` gives for the whole selection (threshold 1000, 3 edge items).

    Summarized, `values` holds only the edge items (`read_edges`). NumPy chooses its number format from those
    items alone and prints `...` where a dimension is longer than 2·EDGEITEMS; padding each such dimension with
    one item in the middle and forcing the summary (threshold 0) makes NumPy print exactly that.
    """
    values = printable(values)
    options = {"precision": precision, "max_line_width": LINE_WIDTH, "edgeitems": EDGEITEMS}
    if not summarized:
        return np.array2string(values, threshold=sys.maxsize, **options)  # type: ignore[arg-type]
    middle = [*range(EDGEITEMS), EDGEITEMS - 1, *range(EDGEITEMS, 2 * EDGEITEMS)]
    for axis, n in enumerate(shape):
        if n > 2 * EDGEITEMS:
            values = values.take(middle, axis=axis)
    return np.array2string(values, threshold=0, **options)  # type: ignore[arg-type]


def json_values(values: np.ndarray) -> Any:
    """Nested lists (a bare number for 0-d): exact numbers, NaN/±Inf as strings, complex as {"real", "imag"}."""
    if values.dtype.kind in "biu":
        return values.tolist()
    if values.dtype.kind == "c":
        return _map_nested(
            values.astype(np.complex128).tolist(), lambda c: {"real": _number(c.real), "imag": _number(c.imag)}
        )
    return _map_nested(printable(values).astype(np.float64).tolist(), _number)


def _number(x: float) -> float | str:
    return x if math.isfinite(x) else ("nan" if x != x else "inf" if x > 0 else "-inf")


def _map_nested(value: Any, convert: Any) -> Any:
    if isinstance(value, list):
        return [_map_nested(item, convert) for item in value]
    return convert(value)


# --------------------------------------------------------------------------- the result


@dataclass
class Shown:
    """A selection with the values it prints: all of them, or only the edge items when summarized."""

    selection: Selection
    values: np.ndarray | None = None  # tensors only
    summarized: bool = False

    def text(self, precision: int = PRECISION) -> str:
        assert self.values is not None
        return format_values(self.values, self.selection.selected.shape, self.summarized, precision)

    def as_json(self) -> dict[str, Any]:
        sel, leaf = self.selection, self.selection.leaf
        head = {"name": sel.name, "index": sel.index}
        if isinstance(leaf, Tensor):
            assert self.values is not None
            return head | {
                "kind": "tensor",
                "dtype": leaf.dtype.name,
                "shape": list(sel.selected.shape),
                "summarized": self.summarized,
                "values": json_values(self.values),
            }
        if isinstance(leaf, Value):
            return head | {"kind": "value", "type": leaf.type, "value": jsonable(leaf.value)}
        assert isinstance(leaf, Opaque)
        return head | {
            "kind": "object",
            "global": leaf.global_name,
            "note": leaf.note,
            "holds": [n for n, _ in sel.holds],
        }


@dataclass
class ShowResult:
    file: str
    shown: list[Shown] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The stable `show --json` schema (documented in the README)."""
        return {"file": self.file, "selections": [item.as_json() for item in self.shown]}


def show(file: str, selections: list[Selection], full: bool = False) -> ShowResult:
    """Read what each selection prints: everything up to THRESHOLD elements (or with `full`), else the edges."""
    result = ShowResult(file)
    for selection in selections:
        if not isinstance(selection.leaf, Tensor):
            result.shown.append(Shown(selection))
            continue
        readable_dtype(selection)
        layout = selection.selected
        if full and layout.numel > FULL_LIMIT:
            raise UsageError(
                f"{file}: {selection.label}: --full prints at most {FULL_LIMIT:,} values, not {layout.numel:,}"
                " (NumPy's formatter would need gigabytes); select part with an index, or write it with --out FILE.npy"
            )
        summarized = not full and layout.numel > THRESHOLD
        values = read_edges(selection.tensor, layout) if summarized else read(selection.tensor, layout)
        result.shown.append(Shown(selection, values, summarized))
    return result


# --------------------------------------------------------------------------- --out FILE.npy / FILE.npz


def write_arrays(selections: list[Selection], path: str) -> list[str]:
    """Write the selections as `numpy.save` (one, `.npy`) or `numpy.savez` (several, `.npz`) would; return notes.

    Written block by block, so memory stays bounded. bfloat16 and float8 become float32: `.npy` has no portable
    type for them (ml_dtypes' descriptors are opaque void types to every other reader).
    """
    for selection in selections:
        if not isinstance(selection.leaf, Tensor):
            raise UsageError(
                f"{selection.file}: {selection.label} is a plain value, not a tensor: --out writes tensors"
            )
        readable_dtype(selection)
    refuse_overwrite(path, selections)
    if path.endswith(".npy"):
        if len(selections) != 1:
            raise UsageError(
                f"--out {path}: a .npy file holds one array, but {len(selections)} were selected (use .npz)"
            )
    elif not path.endswith(".npz"):
        raise UsageError(f"--out {path}: the file name must end in .npy (one selection) or .npz")
    notes = [
        f"{s.label}: {s.tensor.dtype.name} written as float32 (.npy has no portable {s.tensor.dtype.name})"
        for s in selections
        if is_extended(readable_dtype(s))
    ]
    try:
        if path.endswith(".npy"):
            with open(path, "wb") as out:
                _write_npy(out, selections[0])
        else:
            # What numpy.savez does: stored members named KEY.npy, each forced to ZIP64.
            with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
                for selection in selections:
                    with archive.open(selection.label + ".npy", "w", force_zip64=True) as member:
                        _write_npy(member, selection)  # type: ignore[arg-type]
    except OSError as error:
        raise FileError(path, (error.strerror or str(error)).lower()) from None
    return notes


def refuse_overwrite(path: str, selections: list[Selection]) -> None:
    """Writing over the file being read would truncate it under its own memory map (and lose it)."""
    for file in {selection.file for selection in selections}:
        if os.path.exists(path) and os.path.samefile(path, file):
            raise UsageError(f"{path}: is the checkpoint being read; write the output to another file")


def _write_npy(out: BinaryIO, selection: Selection) -> None:
    dtype = readable_dtype(selection)
    target = np.dtype(np.float32) if is_extended(dtype) else dtype
    header = {"descr": np.lib.format.dtype_to_descr(target), "fortran_order": False, "shape": selection.selected.shape}
    try:  # the same header numpy.save writes: version 1.0 unless the header is too long for it
        np.lib.format.write_array_header_1_0(out, header)
    except ValueError:
        np.lib.format.write_array_header_2_0(out, header)
    for _, values in stream(selection.tensor, selection.selected):
        out.write(np.ascontiguousarray(values.astype(target, copy=False)).tobytes())


# --------------------------------------------------------------------------- heatmaps


@dataclass(frozen=True)
class Heatmap:
    """A 1-D or 2-D selection averaged down to a grid of cells."""

    means: np.ndarray  # (rows, cols) float64: each cell the mean of its block's finite values; NaN when none
    block: tuple[int, int]  # values per cell: rows × columns
    scale: float  # the selection's max |x| over its finite values (0.0 when there are none)
    shape: tuple[int, int]  # the selection as a matrix (a 1-D selection is one row)


def heatmap(selection: Selection, max_rows: int, max_cols: int) -> Heatmap:
    """Block means of a 1-D or 2-D selection, at most `max_rows` × `max_cols` cells, from one streaming pass.

    Blocks are square while the matrix is no more than 4 times longer than wide, so the picture keeps its shape;
    an embedding of 50,000 × 768 instead gets tall blocks.
    """
    dtype = readable_dtype(selection)
    layout = _as_matrix(selection)
    if dtype.kind == "c":
        raise UsageError(f"{selection.file}: {selection.label}: a heatmap needs real values, not {dtype.name}")
    rows, cols = layout.shape
    if rows * cols == 0:
        raise UsageError(f"{selection.file}: {selection.label}: nothing to draw, the selection is empty")
    block_rows, block_cols = math.ceil(rows / max_rows), math.ceil(cols / max_cols)
    if max(rows, cols) <= 4 * min(rows, cols):
        block_rows = block_cols = max(block_rows, block_cols)
    grid = (math.ceil(rows / block_rows), math.ceil(cols / block_cols))
    sums = np.zeros(grid[0] * grid[1])
    counts = np.zeros(grid[0] * grid[1])
    scale = 0.0
    for index, values in stream(selection.tensor, layout):
        row_start = index[0].start if index else 0
        col_start = index[1].start if len(index) > 1 else 0
        x = printable(values).astype(np.float64)
        finite = np.isfinite(x)
        x[~finite] = 0.0
        row_cells = np.arange(row_start, row_start + x.shape[0]) // block_rows
        col_cells = np.arange(col_start, col_start + x.shape[1]) // block_cols
        cells = (row_cells[:, None] * grid[1] + col_cells[None, :]).reshape(-1)
        sums += np.bincount(cells, weights=x.reshape(-1), minlength=sums.size)
        counts += np.bincount(cells, weights=finite.reshape(-1), minlength=counts.size)
        scale = max(scale, float(np.abs(x).max()))
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan).reshape(grid)
    return Heatmap(means, (block_rows, block_cols), scale, (rows, cols))


def _as_matrix(selection: Selection) -> Layout:
    layout = selection.selected
    if layout.ndim == 2:
        return layout
    if layout.ndim == 1:  # a vector is one row
        return Layout(layout.offset, (1, layout.shape[0]), (0, layout.strides[0]))
    if layout.ndim == 0:  # a number is one cell
        return Layout(layout.offset, (1, 1), (0, 0))
    zeros = ", ".join(["0"] * (layout.ndim - 2))
    raise UsageError(
        f"{selection.file}: {selection.label} has shape {tuple(layout.shape)}: a heatmap draws 1-D or 2-D selections;"
        f" pick a matrix with an index, e.g. '{selection.label}[{zeros}]'"
    )
