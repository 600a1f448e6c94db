"""How the built-in storage kinds read: the NumPy code behind tree.py's ByteRange, Stream, Pieces and Blocks.

The tree stays NumPy-free (`ls` imports no NumPy), so its kinds delegate their reads here, on first use. Each read
hands out only the bytes asked for. The helpers at the top (`element_view`, `strided`, `positions`, `checked_data`)
are shared with the reader and serve a plugin's own kind as well.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from paramctl.dtypes import numpy_dtype
from paramctl.errors import CorruptFileError, FileError

if TYPE_CHECKING:  # the kinds live in tree.py, which imports this module on first read: names for annotations only
    from paramctl.tree import Block, Blocks, ByteRange, Pieces, StorageData, Stream, Tensor

READ_BYTES = 4 << 20  # how much of a stream is decompressed at a time when skipping or selecting

# What the reader calls on a storage's data (tree.StorageData), and what a sequential kind adds.
OPERATIONS = ("sequential", "whole", "elements", "window", "release")
SEQUENTIAL_OPERATIONS = ("stream",)

_checked: set[type] = set()  # kinds already found complete: the check runs once per class, not once per read


def checked_data(tensor: Tensor) -> StorageData:
    """The tensor's storage data, refused with a one-line error when there is none or it is no storage kind."""
    data = tensor.storage.data
    if type(data) in _checked:
        return data
    if data is None:
        raise CorruptFileError(tensor.storage.key, "storage holds no data")
    needed = OPERATIONS + (SEQUENTIAL_OPERATIONS if getattr(data, "sequential", False) else ())
    missing = [name for name in needed if not hasattr(data, name)]
    if missing:
        raise FileError(
            tensor.storage.key,
            f"its data is a {type(data).__qualname__}, which is not a storage kind paramctl can read "
            f"(it lacks {', '.join(missing)}; see paramctl.tree.StorageData)",
        )
    _checked.add(type(data))
    return data


def element_view(raw: Any, view: Tensor) -> np.ndarray:
    """Raw bytes in the storage's byte order as elements of the view's dtype, in native order."""
    dtype = numpy_dtype(view.dtype)
    flat = np.frombuffer(raw, dtype=np.uint8)
    flat = flat[: len(flat) - len(flat) % dtype.itemsize]
    if view.storage.byteorder == "big" and dtype.itemsize > 1:
        # Swap each scalar (each half of a complex number) without NumPy knowing the ml_dtypes type.
        scalar = dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize
        return flat.view(f">u{scalar}").astype(f"<u{scalar}").view(dtype)
    return flat.view(dtype)


def strided(flat: np.ndarray, start: int, shape: tuple[int, ...], strides: tuple[int, ...]) -> np.ndarray:
    """A read-only view of `flat` from element `start` with element strides (negative ones step back from it).

    as_strided round-trips through __array_interface__, which loses ml_dtypes types: stride raw records instead.
    """
    itemsize = flat.dtype.itemsize
    records = flat.view(f"V{itemsize}")[start:]
    view = np.lib.stride_tricks.as_strided(
        records, shape=shape, strides=tuple(s * itemsize for s in strides), writeable=False
    )
    return view.view(flat.dtype)


def tensor_array(tensor: Tensor) -> np.ndarray:
    """The tensor's values with its shape, strided over its storage's `whole` (a view where that is one)."""
    flat = checked_data(tensor).whole(tensor)
    if not tensor.numel:
        return strided(flat[:0], 0, tensor.shape, tensor.strides)
    return strided(flat, tensor.offset, tensor.shape, tensor.strides)


def elements_of_whole(data: StorageData, view: Tensor, start: int, stop: int) -> np.ndarray:
    """Row-major elements [start, stop) of the view taken from the whole storage (a bounded copy when strided)."""
    values = tensor_array(view)
    if view.is_contiguous:
        return values.reshape(-1)[start:stop]
    return values.flat[start:stop]


def positions(offset: int, shape: tuple[int, ...], strides: tuple[int, ...], start: int, stop: int) -> np.ndarray:
    """Storage element positions of the row-major elements [start, stop) of a view."""
    index = np.arange(start, stop, dtype=np.int64)
    found = np.full(len(index), offset, dtype=np.int64)
    for n, s in zip(reversed(shape), reversed(strides)):
        found += (index % n) * s
        index //= n
    return found


def span(offset: int, shape: tuple[int, ...], strides: tuple[int, ...]) -> tuple[int, int]:
    """The first and the last storage element a view with these strides (in elements, any sign) touches."""
    first = offset + sum((n - 1) * s for n, s in zip(shape, strides) if s < 0)
    last = offset + sum((n - 1) * s for n, s in zip(shape, strides) if s > 0)
    return first, last


# --------------------------------------------------------------------------- ByteRange: stored as-is, one range


def range_whole(data: ByteRange, view: Tensor) -> np.ndarray:
    return element_view(data.source.view(data.offset, data.nbytes), view)


def range_elements(data: ByteRange, view: Tensor, start: int, stop: int) -> np.ndarray:
    """A contiguous view asks the source for its chunk's bytes only: `whole` is free on a local mmap, but a remote
    source would fetch the whole storage for every chunk of it."""
    if not view.is_contiguous:
        return elements_of_whole(data, view, start, stop)
    itemsize = view.dtype.itemsize
    first, nbytes = (view.offset + start) * itemsize, (stop - start) * itemsize
    if first + nbytes > data.nbytes:
        raise CorruptFileError(view.storage.key, f"elements {start}-{stop} lie outside the storage")
    return element_view(data.source.view(data.offset + first, nbytes), view)


def range_window(
    data: ByteRange, view: Tensor, offset: int, shape: tuple[int, ...], strides: tuple[int, ...]
) -> np.ndarray:
    """Only the bytes between the window's first and last element are asked of the source."""
    first, last = span(offset, shape, strides)
    itemsize = view.dtype.itemsize
    values = element_view(data.source.view(data.offset + first * itemsize, (last - first + 1) * itemsize), view)
    return strided(values, offset - first, shape, strides)  # the span starts at `first`


# --------------------------------------------------------------------------- Stream: front to back only


def stream_whole(data: Stream, view: Tensor) -> np.ndarray:
    with data.open() as stream:
        raw = stream.read(data.nbytes)
    if len(raw) < data.nbytes:
        raise CorruptFileError(view.storage.key, f"data ends after {len(raw)} of {data.nbytes} bytes")
    return element_view(raw, view)


def stream_chunks(data: Stream, view: Tensor, size: int) -> Iterator[np.ndarray]:
    """One pass: skip to the view's first byte, then hand out `size` elements at a time."""
    if not view.is_contiguous:  # a Fortran-order stream: only a whole read gives row-major order
        yield from (tensor_array(view).reshape(-1)[i : i + size] for i in range(0, view.numel, size))
        return
    itemsize = view.dtype.itemsize
    with data.open() as stream:
        skip = view.offset * itemsize
        while skip > 0:
            skipped = len(stream.read(min(skip, READ_BYTES)))
            if not skipped:
                raise CorruptFileError(view.storage.key, "data ends early")
            skip -= skipped
        remaining = view.numel * itemsize
        while remaining:
            raw = stream.read(min(remaining, size * itemsize))
            if not raw:
                raise CorruptFileError(view.storage.key, f"data ends {remaining} bytes early")
            remaining -= len(raw)
            yield element_view(raw, view)


def stream_window(
    data: Stream, view: Tensor, offset: int, shape: tuple[int, ...], strides: tuple[int, ...]
) -> np.ndarray:
    """Decompressed once up to the window's end, a chunk at a time, copying out the selected elements only."""
    dtype = numpy_dtype(view.dtype)
    wanted_at = np.full((), offset, dtype=np.int64)
    for axis, (n, s) in enumerate(zip(shape, strides)):
        wanted_at = wanted_at[..., None] + np.arange(n, dtype=np.int64).reshape((1,) * axis + (n,)) * s
    flat_positions = wanted_at.reshape(-1)
    order = np.argsort(flat_positions, kind="stable")
    wanted = flat_positions[order]
    out = np.empty(len(wanted), dtype)
    itemsize, chunk_bytes = dtype.itemsize, max(dtype.itemsize, READ_BYTES - READ_BYTES % dtype.itemsize)
    done, start = 0, 0  # wanted[:done] are copied; `start` is the element index of the next byte read
    with data.open() as stream:
        while done < len(wanted):
            raw = _read_full(stream, chunk_bytes)
            stop = start + len(raw) // itemsize
            upto = int(np.searchsorted(wanted, stop))
            if stop == start:
                raise CorruptFileError(view.storage.key, f"data ends before element {wanted[done]}")
            if upto > done:
                values = element_view(raw, view)
                out[order[done:upto]] = values[wanted[done:upto] - start]
            done, start = upto, stop
    return out.reshape(shape)


def _read_full(stream: Any, size: int) -> bytes:
    """Up to `size` bytes, fewer only at the end (a stream's `read` may return short)."""
    parts, remaining = [], size
    while remaining:
        part = stream.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


# --------------------------------------------------------------------------- Pieces: one buffer in several ranges
# A format that splits a large array into chunk records (Flax msgpack, over 1 GiB) stores one buffer as the
# concatenation of byte ranges: a zero-copy view inside one piece, a bounded copy across a boundary, and an
# element-by-element gather for strided views (a transposed kernel).


def pieces_whole(data: Pieces, view: Tensor) -> np.ndarray:
    """A copy of every piece: only small tensors are read whole, chunks read pieces in place."""
    return element_view(_pieces_bytes(data, 0, data.nbytes), view)


def pieces_elements(data: Pieces, view: Tensor, start: int, stop: int) -> np.ndarray:
    if view.is_contiguous:
        itemsize = view.dtype.itemsize
        _pieces_starts(data, view)  # refuses pieces that split an element
        return element_view(_pieces_bytes(data, (view.offset + start) * itemsize, (stop - start) * itemsize), view)
    return _pieces_take(data, view, positions(view.offset, view.shape, view.strides, start, stop))


def pieces_window(
    data: Pieces, view: Tensor, offset: int, shape: tuple[int, ...], strides: tuple[int, ...]
) -> np.ndarray:
    return _pieces_take(data, view, positions(offset, shape, strides, 0, math.prod(shape))).reshape(shape)


def _pieces_starts(data: Pieces, view: Tensor) -> np.ndarray:
    """Where each piece starts, in elements of the view's dtype (pieces hold whole elements)."""
    itemsize = view.dtype.itemsize
    sizes = [r.nbytes for r in data.ranges]
    if any(size % itemsize for size in sizes):
        raise CorruptFileError(view.storage.key, f"a piece of the data does not hold whole {view.dtype} elements")
    return np.cumsum([0, *sizes], dtype=np.int64) // itemsize


def _pieces_bytes(data: Pieces, first: int, length: int) -> Any:
    """Bytes [first, first+length) of the concatenation: a view when they lie in one piece, else a copy."""
    parts, position = [], 0
    for piece in data.ranges:
        low, high = max(first, position), min(first + length, position + piece.nbytes)
        if low < high:
            parts.append(piece.source.view(piece.offset + low - position, high - low))
        position += piece.nbytes
    if sum(len(part) for part in parts) != length:
        raise ValueError(f"bytes [{first}, {first + length}) lie outside the {position} bytes of the pieces")
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _pieces_take(data: Pieces, view: Tensor, at: np.ndarray) -> np.ndarray:
    """The elements at storage positions `at` (any order), gathered piece by piece."""
    starts = _pieces_starts(data, view)
    if len(at) and (at.min() < 0 or at.max() >= starts[-1]):
        raise ValueError(f"elements lie outside storage {view.storage.key!r}")
    out = np.empty(len(at), numpy_dtype(view.dtype))
    which = np.searchsorted(starts, at, side="right") - 1
    for i, piece in enumerate(data.ranges):
        inside = which == i
        if inside.any():
            values = element_view(piece.source.view(piece.offset, piece.nbytes), view)
            out[inside] = values[at[inside] - starts[i]]
    return out


# --------------------------------------------------------------------------- Blocks: assembled from N-d blocks
# A distributed checkpoint tiles a row-major array with rectangular blocks, each an ordinary lazy tensor of its own
# (one rank's chunk). A range of elements is gathered from the blocks it intersects: a view of one block when the
# range is a contiguous run of it (a row-sharded matrix, the usual case), else a bounded copy, one box of the range
# at a time. Blocks are loaded on first read and never just to release.

ASSEMBLE_LIMIT = 64 << 20  # bytes: a Blocks tensor is built whole only up to this (commands read chunks)


def blocks_whole(data: Blocks, view: Tensor) -> np.ndarray:
    """The whole storage, assembled: only up to ASSEMBLE_LIMIT (larger ones are read in chunks or windows)."""
    nbytes = data.numel * view.dtype.itemsize
    if nbytes > ASSEMBLE_LIMIT:
        raise FileError(
            view.storage.key,
            f"assembled from {len(data.blocks)} blocks, {nbytes:,} bytes: too large to read whole (read it in chunks)",
        )
    return _blocks_range(data, view, 0, data.numel)


def blocks_elements(data: Blocks, view: Tensor, start: int, stop: int) -> np.ndarray:
    if view.is_contiguous:
        return _blocks_range(data, view, view.offset + start, view.offset + stop)
    return _blocks_take(data, view, positions(view.offset, view.shape, view.strides, start, stop))


def blocks_window(
    data: Blocks, view: Tensor, offset: int, shape: tuple[int, ...], strides: tuple[int, ...]
) -> np.ndarray:
    """The span read as a range when the selection fills at least half of it (then strided like stored data), else
    the selected elements gathered one by one (a column of a wide matrix)."""
    first, last = span(offset, shape, strides)
    count = math.prod(shape)
    if last - first + 1 > 2 * count:
        return _blocks_take(data, view, positions(offset, shape, strides, 0, count)).reshape(shape)
    values = np.ascontiguousarray(_blocks_range(data, view, first, last + 1))
    return strided(values, offset - first, shape, strides)


def blocks_release(data: Blocks, start: int, stop: int) -> None:
    """Drop the pages under elements [start, stop) of the whole in every loaded block they touch."""
    for block in data.blocks:
        if not block.loaded:
            continue
        low, high = _elements_before(block, data.shape, start), _elements_before(block, data.shape, stop)
        if high > low:
            part = block.tensor()
            if part.is_contiguous:
                checked_data(part).release(part, part.offset + low, part.offset + high)
            elif (extent := part.extent)[1] > extent[0]:
                checked_data(part).release(part, *extent)


def _block_values(data: Blocks, view: Tensor, block: Block) -> Tensor:
    """A block's lazy tensor, checked against the whole it belongs to."""
    part = block.tensor()
    if part.dtype != view.dtype or part.shape != block.sizes:
        raise CorruptFileError(
            view.storage.key,
            f"block at {list(block.offsets)} holds {part.dtype.name} {list(part.shape)}, "
            f"not {view.dtype.name} {list(block.sizes)}",
        )
    return part


def _elements_before(block: Block, shape: tuple[int, ...], position: int) -> int:
    """How many of a block's elements come before row-major `position` of the whole (`numel` for the end).

    Row-major order of the whole, restricted to a box, is the box's own row-major order: the elements of a range
    [start, stop) that lie in a block are the block's own run [before(start), before(stop))."""
    if position >= math.prod(shape) or not block.numel:
        return block.numel
    index = []
    for n in reversed(shape):
        index.append(position % n)
        position //= n
    count, inner = 0, block.numel
    for i, o, z in zip(reversed(index), block.offsets, block.sizes):
        inner //= z
        count += min(max(i - o, 0), z) * inner
        if not o <= i < o + z:
            break
    return count


def _range_boxes(shape: tuple[int, ...], start: int, stop: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Row-major elements [start, stop) of an array of `shape` as at most 2·ndim−1 boxes (corner, sizes) in order,
    each a contiguous run of the range: a partial first row, whole rows, a partial last row (recursively)."""
    if start >= stop:
        return []
    if not shape:
        return [((), ())]
    inner = math.prod(shape[1:])
    first, last = start // inner, (stop - 1) // inner

    def row(index: int, begin: int, end: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        return [((index, *c), (1, *n)) for c, n in _range_boxes(shape[1:], begin, end)]

    if first == last:
        return row(first, start - first * inner, stop - first * inner)
    head, tail = [], []
    if start % inner:
        head, first = row(first, start % inner, inner), first + 1
    if stop % inner:
        tail, last = row(last, 0, stop % inner), last - 1
    middle = [((first, *(0,) * (len(shape) - 1)), (last - first + 1, *shape[1:]))] if first <= last else []
    return head + middle + tail


def _blocks_range(data: Blocks, view: Tensor, start: int, stop: int) -> np.ndarray:
    """Elements [start, stop) of the row-major whole, read from the blocks that hold them."""
    dtype = numpy_dtype(view.dtype)
    if start >= stop:
        return np.empty(0, dtype)
    if start < 0 or stop > data.numel:
        raise ValueError(f"elements [{start}, {stop}) lie outside storage {view.storage.key!r}")
    runs = [(block, _elements_before(block, data.shape, start)) for block in data.blocks]
    for block, before in runs:  # the whole range inside one block: that block's own chunk, a view when stored
        if _elements_before(block, data.shape, stop) - before == stop - start:
            part = _block_values(data, view, block)
            return checked_data(part).elements(part, before, before + stop - start)
    out = np.empty(stop - start, dtype)
    position = 0
    for corner, sizes in _range_boxes(data.shape, start, stop):
        count = math.prod(sizes)
        target = out[position : position + count].reshape(sizes)
        position += count
        for block in data.blocks:
            low = [max(c, o) for c, o in zip(corner, block.offsets)]
            high = [min(c + n, o + z) for c, n, o, z in zip(corner, sizes, block.offsets, block.sizes)]
            if all(lo < hi for lo, hi in zip(low, high)):
                values = tensor_array(_block_values(data, view, block))
                target[tuple(slice(lo - c, hi - c) for lo, hi, c in zip(low, high, corner))] = values[
                    tuple(slice(lo - o, hi - o) for lo, hi, o in zip(low, high, block.offsets))
                ]
    return out


def _blocks_take(data: Blocks, view: Tensor, at: np.ndarray) -> np.ndarray:
    """The elements at row-major positions `at` of the whole (any order), gathered block by block."""
    out = np.empty(len(at), numpy_dtype(view.dtype))
    if not len(at):
        return out
    if at.min() < 0 or at.max() >= data.numel:
        raise ValueError(f"elements lie outside storage {view.storage.key!r}")
    index = np.unravel_index(at, data.shape) if data.shape else ()
    for block in data.blocks:
        inside = np.ones(len(at), dtype=bool)
        for axis, (o, z) in enumerate(zip(block.offsets, block.sizes)):
            inside &= (index[axis] >= o) & (index[axis] < o + z)
        if block.numel and inside.any():
            values = tensor_array(_block_values(data, view, block))
            out[inside] = values[tuple(index[axis][inside] - o for axis, o in enumerate(block.offsets))]
    return out
