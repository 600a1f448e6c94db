"""The one chunked reader: how every command reads tensor values, in bounded pieces, on all cores.

`array` gives a tensor's logical values (a zero-copy, read-only view when the bytes are stored as-is).
`plan` cuts a tensor into row-major element ranges (`Chunk`s) that can be read independently and in parallel;
`chunks` reads them in order; `parallel` runs per-chunk work on a thread pool (NumPy releases the GIL in its
kernels) with a bounded number of chunks in flight, so memory stays flat however large the file is.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from paramctl.dtypes import numpy_dtype
from paramctl.errors import CorruptFileError, FileError
from paramctl.tree import Block, Blocks, ByteRange, Pieces, Stream, Tensor

CHUNK_BYTES = 4 << 20  # small enough to stay in cache while several statistics are taken of it

T = TypeVar("T")


def _element_view(raw: Any, tensor: Tensor) -> np.ndarray:
    """Raw bytes in the storage's byte order as elements of the tensor's dtype, in native order."""
    dtype = numpy_dtype(tensor.dtype)
    flat = np.frombuffer(raw, dtype=np.uint8)
    flat = flat[: len(flat) - len(flat) % dtype.itemsize]
    if tensor.storage.byteorder == "big" and dtype.itemsize > 1:
        # Swap each scalar (each half of a complex number) without NumPy knowing the ml_dtypes type.
        scalar = dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize
        return flat.view(f">u{scalar}").astype(f"<u{scalar}").view(dtype)
    return flat.view(dtype)


def storage_array(tensor: Tensor) -> np.ndarray:
    """The whole storage as a flat array of the tensor's dtype (a view for stored data; read fully for streams)."""
    data = tensor.storage.data
    if isinstance(data, ByteRange):
        return _element_view(data.source.view(data.offset, data.nbytes), tensor)
    if isinstance(data, Stream):
        with data.open() as stream:
            raw = stream.read(data.nbytes)
        if len(raw) < data.nbytes:
            raise CorruptFileError(tensor.storage.key, f"data ends after {len(raw)} of {data.nbytes} bytes")
        return _element_view(raw, tensor)
    if isinstance(data, Pieces):  # a copy of every piece: `array` is for small things, chunks read pieces in place
        return _element_view(_pieces_bytes(data, 0, data.nbytes), tensor)
    if isinstance(data, Blocks):  # assembled: only small ones (chunks and windows gather in bounded pieces)
        return _blocks_whole(tensor, data)
    raise CorruptFileError(tensor.storage.key, "storage holds no data")


def array(tensor: Tensor) -> np.ndarray:
    """The tensor's values with its shape (read-only; nothing is read until the values are touched)."""
    storage = storage_array(tensor)
    return _strided(
        storage if tensor.numel else storage[:0], tensor.offset if tensor.numel else 0, tensor.shape, tensor.strides
    )


def _strided(flat: np.ndarray, start: int, shape: tuple[int, ...], strides: tuple[int, ...]) -> np.ndarray:
    """A read-only view of `flat` from element `start` with element strides (negative ones step back from it).

    as_strided round-trips through __array_interface__, which loses ml_dtypes types: stride raw records instead.
    """
    itemsize = flat.dtype.itemsize
    records = flat.view(f"V{itemsize}")[start:]
    strided = np.lib.stride_tricks.as_strided(
        records, shape=shape, strides=tuple(s * itemsize for s in strides), writeable=False
    )
    return strided.view(flat.dtype)


@dataclass(frozen=True)
class Chunk:
    """Elements [start, stop) of a tensor in row-major order: readable on its own, on any thread."""

    tensor: Tensor
    start: int
    stop: int

    def read(self) -> np.ndarray:
        """The chunk's values as a 1-D array (a view when the tensor is contiguous, else a bounded copy)."""
        if self.tensor.is_contiguous and isinstance(self.tensor.storage.data, ByteRange):
            return _stored_span(self.tensor, self.start, self.stop)
        if isinstance(self.tensor.storage.data, Pieces):
            return _pieces_chunk(self.tensor, self.start, self.stop)
        if isinstance(self.tensor.storage.data, Blocks):
            return _blocks_chunk(self.tensor, self.start, self.stop)
        values = array(self.tensor)
        if self.tensor.is_contiguous:
            return values.reshape(-1)[self.start : self.stop]
        return values.flat[self.start : self.stop]

    def release(self) -> None:
        """Drop the chunk's pages from memory once it is processed (contiguous stored data only)."""
        data = self.tensor.storage.data
        if isinstance(data, ByteRange) and self.tensor.is_contiguous:
            itemsize = self.tensor.dtype.itemsize
            first = data.offset + (self.tensor.offset + self.start) * itemsize
            data.source.release(first, (self.stop - self.start) * itemsize)
        elif isinstance(data, Pieces) and self.tensor.is_contiguous:
            itemsize = self.tensor.dtype.itemsize
            _pieces_release(data, (self.tensor.offset + self.start) * itemsize, (self.stop - self.start) * itemsize)
        elif isinstance(data, Blocks) and self.tensor.is_contiguous:
            _blocks_release(data, self.tensor.offset + self.start, self.tensor.offset + self.stop)


def _stored_span(tensor: Tensor, start: int, stop: int) -> np.ndarray:
    """Elements [start, stop) of a contiguous tensor stored as-is, asking the source for their bytes only.

    Added for remote checkpoints (issue 11): `array` views the whole storage, which is free on a local mmap but
    would make a remote source fetch the whole storage for every chunk of it.
    """
    data = tensor.storage.data
    itemsize = tensor.dtype.itemsize
    first, nbytes = (tensor.offset + start) * itemsize, (stop - start) * itemsize
    if first + nbytes > data.nbytes:
        raise CorruptFileError(tensor.storage.key, f"elements {start}-{stop} lie outside the storage")
    return _element_view(data.source.view(data.offset + first, nbytes), tensor)


def release(tensor: Tensor) -> None:
    """Drop the pages under a tensor's whole extent once it is processed, whatever its layout (stored data only).

    For strided reads (a column slab of a matrix) that `Chunk.release` cannot cover; pages still in use elsewhere
    are simply read back from the page cache.
    """
    data = tensor.storage.data
    first, end = tensor.extent
    if isinstance(data, ByteRange) and end > first:
        itemsize = tensor.dtype.itemsize
        data.source.release(data.offset + first * itemsize, (end - first) * itemsize)
    elif isinstance(data, Pieces) and end > first:
        _pieces_release(data, first * tensor.dtype.itemsize, (end - first) * tensor.dtype.itemsize)
    elif isinstance(data, Blocks) and end > first:
        _blocks_release(data, first, end)


def plan(tensor: Tensor, chunk_elements: int | None = None) -> list[Chunk] | None:
    """Independent row-major chunks of at most `chunk_elements`, or None for data that can only be streamed."""
    if isinstance(tensor.storage.data, Stream):
        return None
    size = chunk_elements or max(1, CHUNK_BYTES // tensor.dtype.itemsize)
    return [Chunk(tensor, start, min(start + size, tensor.numel)) for start in range(0, tensor.numel, size)]


def chunks(tensor: Tensor, chunk_elements: int | None = None) -> Iterator[np.ndarray]:
    """The tensor's values in row-major order, as 1-D arrays of at most `chunk_elements` each."""
    size = chunk_elements or max(1, CHUNK_BYTES // tensor.dtype.itemsize)
    pieces = plan(tensor, size)
    if pieces is not None:
        for piece in pieces:
            yield piece.read()
            piece.release()
        return
    data = tensor.storage.data
    assert isinstance(data, Stream)
    if not tensor.is_contiguous:  # a Fortran-order stream: only a whole read gives row-major order
        yield from (array(tensor).reshape(-1)[i : i + size] for i in range(0, tensor.numel, size))
        return
    itemsize = tensor.dtype.itemsize
    with data.open() as stream:
        skip = tensor.offset * itemsize
        while skip > 0:
            skipped = len(stream.read(min(skip, CHUNK_BYTES)))
            if not skipped:
                raise CorruptFileError(tensor.storage.key, "data ends early")
            skip -= skipped
        remaining = tensor.numel * itemsize
        while remaining:
            raw = stream.read(min(remaining, size * itemsize))
            if not raw:
                raise CorruptFileError(tensor.storage.key, f"data ends {remaining} bytes early")
            remaining -= len(raw)
            yield _element_view(raw, tensor)


def workers() -> int:
    """Threads for chunk work: every core this process may use."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def parallel(tasks: Iterable[Callable[[], T]], threads: int | None = None) -> Iterator[T]:
    """Run tasks on a thread pool, yielding results in task order, with at most 2 × threads in flight."""
    threads = threads or workers()
    if threads == 1:
        yield from (task() for task in tasks)
        return
    with ThreadPoolExecutor(threads) as pool:
        pending: deque[Future[T]] = deque()
        for task in tasks:
            pending.append(pool.submit(task))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# --------------------------------------------------------------------------- windows: part of a tensor, read alone
# Added for `show` (issue 9): a selection of a tensor reads only the bytes between its first and last element.


def window(tensor: Tensor, offset: int, shape: tuple[int, ...], strides: tuple[int, ...]) -> np.ndarray:
    """The elements at `offset + Σ i·strides` (in elements, any sign) of the tensor's storage, with `shape`.

    Only the byte span between the first and the last of those elements is handed out by the source, so one row of
    a 1 GiB matrix reads one row; the result is a read-only view of it. Stream data (a deflated member) is
    decompressed once up to the span's end, a chunk at a time, keeping only the selected elements.
    """
    dtype = numpy_dtype(tensor.dtype)
    if 0 in shape:
        return np.empty(shape, dtype)
    first = offset + sum((n - 1) * s for n, s in zip(shape, strides) if s < 0)
    last = offset + sum((n - 1) * s for n, s in zip(shape, strides) if s > 0)
    itemsize = dtype.itemsize
    if first < 0 or (last + 1) * itemsize > tensor.storage.nbytes:
        raise ValueError(f"window [{first}, {last}] lies outside storage {tensor.storage.key!r}")
    data = tensor.storage.data
    if isinstance(data, Stream):
        return _stream_window(tensor, data, offset, shape, strides)
    if isinstance(data, Pieces):
        return _pieces_take(tensor, _positions(offset, shape, strides, 0, int(np.prod(shape)))).reshape(shape)
    if isinstance(data, Blocks):
        return _blocks_window(tensor, data, offset, shape, strides, first, last)
    if not isinstance(data, ByteRange):
        raise CorruptFileError(tensor.storage.key, "storage holds no data")
    span = _element_view(data.source.view(data.offset + first * itemsize, (last - first + 1) * itemsize), tensor)
    return _strided(span, offset - first, shape, strides)  # the span starts at `first`


def _stream_window(
    tensor: Tensor, data: Stream, offset: int, shape: tuple[int, ...], strides: tuple[int, ...]
) -> np.ndarray:
    """One front-to-back pass over a stream, copying out the selected elements chunk by chunk."""
    dtype = numpy_dtype(tensor.dtype)
    positions = np.full((), offset, dtype=np.int64)
    for axis, (n, s) in enumerate(zip(shape, strides)):
        positions = positions[..., None] + np.arange(n, dtype=np.int64).reshape((1,) * axis + (n,)) * s
    flat_positions = positions.reshape(-1)
    order = np.argsort(flat_positions, kind="stable")
    wanted = flat_positions[order]
    out = np.empty(len(wanted), dtype)
    itemsize, chunk_bytes = dtype.itemsize, max(dtype.itemsize, CHUNK_BYTES - CHUNK_BYTES % dtype.itemsize)
    done, start = 0, 0  # wanted[:done] are copied; `start` is the element index of the next byte read
    with data.open() as stream:
        while done < len(wanted):
            raw = _read_full(stream, chunk_bytes)
            stop = start + len(raw) // itemsize
            upto = int(np.searchsorted(wanted, stop))
            if stop == start:
                raise CorruptFileError(tensor.storage.key, f"data ends before element {wanted[done]}")
            if upto > done:
                values = _element_view(raw, tensor)
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


# --------------------------------------------------------------------------- pieces: data stored in several ranges
# Added for Flax msgpack files (issue 13), which split an array over 1 GiB into chunk records: a `Pieces` storage is
# the concatenation of byte ranges. Reads hand out only the bytes asked for: a zero-copy view inside one piece, a
# bounded copy across a boundary, and an element-by-element gather for strided views (a transposed kernel).


def _pieces_starts(tensor: Tensor, data: Pieces) -> np.ndarray:
    """Where each piece starts, in elements of the tensor's dtype (pieces hold whole elements)."""
    itemsize = tensor.dtype.itemsize
    sizes = [r.nbytes for r in data.ranges]
    if any(size % itemsize for size in sizes):
        raise CorruptFileError(tensor.storage.key, f"a piece of the data does not hold whole {tensor.dtype} elements")
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


def _pieces_release(data: Pieces, first: int, length: int) -> None:
    position = 0
    for piece in data.ranges:
        low, high = max(first, position), min(first + length, position + piece.nbytes)
        if low < high:
            piece.source.release(piece.offset + low - position, high - low)
        position += piece.nbytes


def _positions(offset: int, shape: tuple[int, ...], strides: tuple[int, ...], start: int, stop: int) -> np.ndarray:
    """Storage element positions of the row-major elements [start, stop) of a view."""
    index = np.arange(start, stop, dtype=np.int64)
    positions = np.full(len(index), offset, dtype=np.int64)
    for n, s in zip(reversed(shape), reversed(strides)):
        positions += (index % n) * s
        index //= n
    return positions


def _pieces_take(tensor: Tensor, positions: np.ndarray) -> np.ndarray:
    """The elements at storage positions (any order), gathered piece by piece."""
    data = tensor.storage.data
    assert isinstance(data, Pieces)
    starts = _pieces_starts(tensor, data)
    if len(positions) and (positions.min() < 0 or positions.max() >= starts[-1]):
        raise ValueError(f"elements lie outside storage {tensor.storage.key!r}")
    out = np.empty(len(positions), numpy_dtype(tensor.dtype))
    which = np.searchsorted(starts, positions, side="right") - 1
    for i, piece in enumerate(data.ranges):
        inside = which == i
        if inside.any():
            values = _element_view(piece.source.view(piece.offset, piece.nbytes), tensor)
            out[inside] = values[positions[inside] - starts[i]]
    return out


def _pieces_chunk(tensor: Tensor, start: int, stop: int) -> np.ndarray:
    """Row-major elements [start, stop) of a tensor whose storage is `Pieces`."""
    data = tensor.storage.data
    assert isinstance(data, Pieces)
    if tensor.is_contiguous:
        itemsize = tensor.dtype.itemsize
        first = (tensor.offset + start) * itemsize
        _pieces_starts(tensor, data)  # refuses pieces that split an element
        return _element_view(_pieces_bytes(data, first, (stop - start) * itemsize), tensor)
    return _pieces_take(tensor, _positions(tensor.offset, tensor.shape, tensor.strides, start, stop))


# --------------------------------------------------------------------------- blocks: data assembled from N-d blocks
# Added for distributed checkpoints (issue 12): a `Blocks` storage is a row-major array tiled by rectangular blocks,
# each an ordinary lazy tensor of its own (one rank's chunk). A range of elements is gathered from the blocks it
# intersects: a view of one block when the range is a contiguous run of it (a row-sharded matrix, the usual case),
# else a bounded copy, one box of the range at a time. Blocks are loaded on first read and never just to release.

ASSEMBLE_LIMIT = 64 << 20  # bytes: `array` builds a Blocks tensor whole only up to this (commands read chunks)


def _block_values(tensor: Tensor, block: Block) -> Tensor:
    """A block's lazy tensor, checked against the whole it belongs to."""
    part = block.tensor()
    if part.dtype != tensor.dtype or part.shape != block.sizes:
        raise CorruptFileError(
            tensor.storage.key,
            f"block at {list(block.offsets)} holds {part.dtype.name} {list(part.shape)}, "
            f"not {tensor.dtype.name} {list(block.sizes)}",
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


def _blocks_range(tensor: Tensor, data: Blocks, start: int, stop: int) -> np.ndarray:
    """Elements [start, stop) of the row-major whole, read from the blocks that hold them."""
    dtype = numpy_dtype(tensor.dtype)
    if start >= stop:
        return np.empty(0, dtype)
    if start < 0 or stop > data.numel:
        raise ValueError(f"elements [{start}, {stop}) lie outside storage {tensor.storage.key!r}")
    runs = [(block, _elements_before(block, data.shape, start)) for block in data.blocks]
    for block, before in runs:  # the whole range inside one block: that block's own chunk, a view when stored
        if _elements_before(block, data.shape, stop) - before == stop - start:
            return Chunk(_block_values(tensor, block), before, before + stop - start).read()
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
                values = array(_block_values(tensor, block))
                target[tuple(slice(lo - c, hi - c) for lo, hi, c in zip(low, high, corner))] = values[
                    tuple(slice(lo - o, hi - o) for lo, hi, o in zip(low, high, block.offsets))
                ]
    return out


def _blocks_take(tensor: Tensor, data: Blocks, positions: np.ndarray) -> np.ndarray:
    """The elements at row-major `positions` of the whole (any order), gathered block by block."""
    out = np.empty(len(positions), numpy_dtype(tensor.dtype))
    if not len(positions):
        return out
    if positions.min() < 0 or positions.max() >= data.numel:
        raise ValueError(f"elements lie outside storage {tensor.storage.key!r}")
    index = np.unravel_index(positions, data.shape) if data.shape else ()
    for block in data.blocks:
        inside = np.ones(len(positions), dtype=bool)
        for axis, (o, z) in enumerate(zip(block.offsets, block.sizes)):
            inside &= (index[axis] >= o) & (index[axis] < o + z)
        if block.numel and inside.any():
            values = array(_block_values(tensor, block))
            out[inside] = values[tuple(index[axis][inside] - o for axis, o in enumerate(block.offsets))]
    return out


def _blocks_chunk(tensor: Tensor, start: int, stop: int) -> np.ndarray:
    """Row-major elements [start, stop) of a tensor whose storage is `Blocks`."""
    data = tensor.storage.data
    assert isinstance(data, Blocks)
    if tensor.is_contiguous:
        return _blocks_range(tensor, data, tensor.offset + start, tensor.offset + stop)
    return _blocks_take(tensor, data, _positions(tensor.offset, tensor.shape, tensor.strides, start, stop))


def _blocks_window(
    tensor: Tensor, data: Blocks, offset: int, shape: tuple[int, ...], strides: tuple[int, ...], first: int, last: int
) -> np.ndarray:
    """`window` of a Blocks storage: the span read as a range when the selection fills at least half of it (then
    strided like stored data), else the selected elements gathered one by one (a column of a wide matrix)."""
    count = math.prod(shape)
    if last - first + 1 > 2 * count:
        return _blocks_take(tensor, data, _positions(offset, shape, strides, 0, count)).reshape(shape)
    span = np.ascontiguousarray(_blocks_range(tensor, data, first, last + 1))
    return _strided(span, offset - first, shape, strides)


def _blocks_whole(tensor: Tensor, data: Blocks) -> np.ndarray:
    """The whole storage, assembled: only up to ASSEMBLE_LIMIT (larger ones are read in chunks or windows)."""
    nbytes = data.numel * tensor.dtype.itemsize
    if nbytes > ASSEMBLE_LIMIT:
        raise FileError(
            tensor.storage.key,
            f"assembled from {len(data.blocks)} blocks, {nbytes:,} bytes: too large to read whole (read it in chunks)",
        )
    return _blocks_range(tensor, data, 0, data.numel)


def _blocks_release(data: Blocks, start: int, stop: int) -> None:
    """Drop the pages under elements [start, stop) of the whole in every loaded block they touch."""
    for block in data.blocks:
        if not block.loaded:
            continue
        low, high = _elements_before(block, data.shape, start), _elements_before(block, data.shape, stop)
        if high > low:
            part = block.tensor()
            if part.is_contiguous:
                Chunk(part, low, high).release()
            else:
                release(part)


def aligned_tasks(
    tensors: tuple[Tensor, ...], chunk_elements: int | None, work: Callable[..., T]
) -> Iterator[Callable[[], T]]:
    """Tasks for `parallel`, each `work(start, *values)` on the same row-major elements [start, start + n) of every
    tensor (all of one numel), so `diff` pairs A's chunk with B's and `stat` takes one tensor alone.

    Stored data is read inside each task, on a worker, and its pages dropped after (a strided view's whole extent
    after its last task). Stream data (a deflated member) can only be read front to back: it is read here, as the
    tasks are drawn, in pieces cut to align with the other tensors' pieces. `chunk_elements` None: CHUNK_BYTES of
    the widest dtype, so no side reads more than that per task.
    """
    size = chunk_elements or max(1, CHUNK_BYTES // max(t.dtype.itemsize for t in tensors))
    plans = [plan(t, size) for t in tensors]
    if all(p is not None for p in plans):
        count = len(plans[0]) if plans else 0
        strided = [t for t in tensors if not t.is_contiguous]

        def task(pieces: tuple[Chunk, ...], last: bool) -> T:
            try:
                return work(pieces[0].start, *(piece.read() for piece in pieces))
            finally:
                for piece in pieces:
                    piece.release()
                if last:  # Chunk.release covers contiguous data only
                    for tensor in strided:
                        release(tensor)

        for index, pieces in enumerate(zip(*plans)):  # type: ignore[arg-type]
            yield lambda p=pieces, last=index == count - 1: task(p, last)
        return
    streams = [chunks(t, size) for t in tensors]
    pending = [np.empty(0)] * len(tensors)
    position, total = 0, tensors[0].numel
    while position < total:
        for i, stream in enumerate(streams):
            if not len(pending[i]):
                piece = next(stream, None)
                if piece is None:
                    raise CorruptFileError(tensors[i].storage.key, f"data ends after {position} elements")
                pending[i] = piece
        n = min(len(p) for p in pending)
        values = tuple(p[:n] for p in pending)
        pending = [p[n:] for p in pending]
        yield lambda s=position, v=values: work(s, *v)
        position += n
