"""The one chunked reader: how every command reads tensor values, in bounded pieces, on all cores.

`array` gives a tensor's logical values (a zero-copy, read-only view when the bytes are stored as-is).
`plan` cuts a tensor into row-major element ranges (`Chunk`s) that can be read independently and in parallel;
`chunks` reads them in order; `parallel` runs per-chunk work on a thread pool (NumPy releases the GIL in its
kernels) with a bounded number of chunks in flight, so memory stays flat however large the file is.

The reader knows no storage kind: it asks a storage's data for values through `tree.StorageData` (built-in kinds
read in storage.py), so a new kind is one class and this module does not change.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar, cast

import numpy as np

from paramctl.dtypes import numpy_dtype
from paramctl.errors import CorruptFileError
from paramctl.numerics import CHUNK_BYTES
from paramctl.storage import checked_data, span, tensor_array
from paramctl.tree import SequentialData, Tensor

T = TypeVar("T")


def array(tensor: Tensor) -> np.ndarray:
    """The tensor's values with its shape (read-only; nothing is read until the values are touched)."""
    return tensor_array(tensor)


@dataclass(frozen=True)
class Chunk:
    """Elements [start, stop) of a tensor in row-major order: readable on its own, on any thread."""

    tensor: Tensor
    start: int
    stop: int

    def read(self) -> np.ndarray:
        """The chunk's values as a 1-D array (a view when the tensor is contiguous, else a bounded copy)."""
        return checked_data(self.tensor).elements(self.tensor, self.start, self.stop)

    def release(self) -> None:
        """Drop the chunk's pages from memory once it is processed (contiguous tensors only: a strided chunk's
        elements are spread over pages that other chunks still read)."""
        if self.tensor.is_contiguous:
            offset = self.tensor.offset
            checked_data(self.tensor).release(self.tensor, offset + self.start, offset + self.stop)


def release(tensor: Tensor) -> None:
    """Drop the pages under a tensor's whole extent once it is processed, whatever its layout.

    For strided reads (a column slab of a matrix) that `Chunk.release` cannot cover; pages still in use elsewhere
    are simply read back from the page cache.
    """
    first, end = tensor.extent
    if end > first and tensor.storage.data is not None:
        checked_data(tensor).release(tensor, first, end)


def plan(tensor: Tensor, chunk_elements: int | None = None) -> list[Chunk] | None:
    """Independent row-major chunks of at most `chunk_elements`, or None for data that can only be streamed."""
    if sequential(tensor):
        return None
    size = chunk_elements or max(1, CHUNK_BYTES // tensor.dtype.itemsize)
    return [Chunk(tensor, start, min(start + size, tensor.numel)) for start in range(0, tensor.numel, size)]


def chunks(tensor: Tensor, chunk_elements: int | None = None) -> Iterator[np.ndarray]:
    """The tensor's values in row-major order, as 1-D arrays of at most `chunk_elements` each."""
    size = chunk_elements or max(1, CHUNK_BYTES // tensor.dtype.itemsize)
    pieces = plan(tensor, size)
    if pieces is None:
        yield from cast(SequentialData, checked_data(tensor)).stream(tensor, size)
        return
    for piece in pieces:
        yield piece.read()
        piece.release()


def sequential(tensor: Tensor) -> bool:
    """True for data read only front to back: read it in one pass (a storage without data is refused when read)."""
    return tensor.storage.data is not None and checked_data(tensor).sequential


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


def window(tensor: Tensor, offset: int, shape: tuple[int, ...], strides: tuple[int, ...]) -> np.ndarray:
    """The elements at `offset + Σ i·strides` (in elements, any sign) of the tensor's storage, with `shape`.

    Only the span between the first and the last of those elements is read, so one row of a 1 GiB matrix reads
    one row: a read-only view of it for stored data; stream data (a deflated member) is decompressed once up to
    the span's end, keeping only the selected elements.
    """
    if 0 in shape:
        return np.empty(shape, numpy_dtype(tensor.dtype))
    first, last = span(offset, shape, strides)
    if first < 0 or (last + 1) * tensor.dtype.itemsize > tensor.storage.nbytes:
        raise ValueError(f"window [{first}, {last}] lies outside storage {tensor.storage.key!r}")
    return checked_data(tensor).window(tensor, offset, shape, strides)


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
