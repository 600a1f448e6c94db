"""The one chunked reader: how every command reads tensor values, in bounded pieces, on all cores.

`array` gives a tensor's logical values (a zero-copy, read-only view when the bytes are stored as-is).
`plan` cuts a tensor into row-major element ranges (`Chunk`s) that can be read independently and in parallel;
`chunks` reads them in order; `parallel` runs per-chunk work on a thread pool (NumPy releases the GIL in its
kernels) with a bounded number of chunks in flight, so memory stays flat however large the file is.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from paramctl.dtypes import numpy_dtype
from paramctl.errors import CorruptFileError
from paramctl.tree import ByteRange, Stream, Tensor

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
    raise CorruptFileError(tensor.storage.key, "storage holds no data")


def array(tensor: Tensor) -> np.ndarray:
    """The tensor's values with its shape (read-only; nothing is read until the values are touched)."""
    storage = storage_array(tensor)
    itemsize = storage.dtype.itemsize
    # as_strided round-trips through __array_interface__, which loses ml_dtypes types: stride raw records.
    records = storage.view(f"V{itemsize}")
    strided = np.lib.stride_tricks.as_strided(
        records[tensor.offset :] if tensor.numel else records[:0],
        shape=tensor.shape,
        strides=tuple(s * itemsize for s in tensor.strides),
        writeable=False,
    )
    return strided.view(storage.dtype)


@dataclass(frozen=True)
class Chunk:
    """Elements [start, stop) of a tensor in row-major order: readable on its own, on any thread."""

    tensor: Tensor
    start: int
    stop: int

    def read(self) -> np.ndarray:
        """The chunk's values as a 1-D array (a view when the tensor is contiguous, else a bounded copy)."""
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
    if not isinstance(data, ByteRange):
        raise CorruptFileError(tensor.storage.key, "storage holds no data")
    span = _element_view(data.source.view(data.offset + first * itemsize, (last - first + 1) * itemsize), tensor)
    # The same raw-record striding as `array` (as_strided loses ml_dtypes types); negative strides step back
    # from `offset` into the span, which starts at `first`.
    strided = np.lib.stride_tricks.as_strided(
        span.view(f"V{itemsize}")[offset - first :],
        shape=shape,
        strides=tuple(s * itemsize for s in strides),
        writeable=False,
    )
    return strided.view(span.dtype)


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
