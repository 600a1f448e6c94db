"""The one random-access byte source every loader reads through.

Loaders never open paths themselves: they ask a source for byte ranges. Locally that is a read-only mmap, so a
range is a zero-copy view and nothing is read until it is touched; remote sources (later) serve ranges over HTTP.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import stat
import threading
from collections.abc import Callable
from typing import BinaryIO

from paramctl.errors import CorruptFileError, FileError


class ByteSource:
    """A read-only, random-access view of one file's bytes."""

    name: str
    size: int

    def view(self, offset: int, length: int) -> memoryview:
        """Exactly `length` bytes at `offset`, or CorruptFileError when the file is shorter (a truncated file)."""
        raise NotImplementedError

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.view(offset, length))

    def release(self, offset: int, length: int) -> None:
        """A hint that a range will not be needed again (lets streaming commands keep memory flat)."""

    def open_stream(self) -> BinaryIO:
        """A seekable file object over the source, for code (zipfile) that wants one; reads stay bounded."""
        return _SourceReader(self)

    def close(self) -> None:
        """Release the underlying resources."""

    def check_range(self, offset: int, length: int, what: str) -> None:
        """Fail unless [offset, offset+length) lies inside the file: checked before anything trusts a size."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise CorruptFileError(
                self.name, f"{what} at byte {offset} needs {length} bytes, but the file has {self.size}"
            )


class FileSource(ByteSource):
    """A local regular file, mapped read-only. Opening it never reads its data."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.name = os.fspath(path)
        self.bytes_read = 0  # bytes handed out through `view`: lets tests prove a command read only what it needed
        self._count_lock = threading.Lock()  # views are handed out from reader threads
        try:
            info = os.stat(self.name)
        except FileNotFoundError:
            problem = "dangling symbolic link" if os.path.islink(self.name) else "no such file"
            raise FileError(self.name, problem) from None
        except OSError as error:
            raise FileError(self.name, _os_problem(error)) from None
        _check_regular(self.name, info.st_mode)  # before opening: opening a FIFO would wait for a writer
        # O_NONBLOCK: should the path be swapped for a FIFO after the stat, the open still returns at once (and the
        # fstat below refuses it); O_NOCTTY: a terminal never becomes ours. Read-only: the file is never written.
        flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
        try:
            fd = os.open(self.name, flags)
        except OSError as error:
            raise FileError(self.name, _os_problem(error)) from None
        try:
            opened = os.fstat(fd)
            _check_regular(self.name, opened.st_mode)
            self.size = opened.st_size
            self._map = mmap.mmap(fd, 0, access=mmap.ACCESS_READ) if self.size else None
        except OSError as error:
            raise FileError(self.name, _os_problem(error)) from None
        finally:
            os.close(fd)
        self._view = memoryview(self._map) if self._map is not None else memoryview(b"")

    def view(self, offset: int, length: int) -> memoryview:
        self.check_range(offset, length, "a read")
        with self._count_lock:
            self.bytes_read += length
        return self._view[offset : offset + length]

    def release(self, offset: int, length: int) -> None:
        if self._map is None or length <= 0:
            return
        start = offset - offset % mmap.PAGESIZE
        self._map.madvise(mmap.MADV_DONTNEED, start, min(offset + length, self.size) - start)

    def close(self) -> None:
        self._view.release()
        if self._map is not None:
            with contextlib.suppress(BufferError):  # NumPy views are still alive; the map closes when they go
                self._map.close()


class SliceSource(ByteSource):
    """Bytes [offset, offset+length) of another source, seen as a file of their own: a record embedded in a larger
    file (a chunk's torch.save archive inside a distributed checkpoint's rank file, a stored zip member). Reads and
    page releases go to the parent; nothing is copied.

    `offset` may be a function that finds it, called on the first read: a zip member's bytes start after its local
    header, which listing an archive must not fetch (over HTTP, one request per tensor)."""

    def __init__(
        self, parent: ByteSource, offset: int | Callable[[], int], length: int, name: str | None = None
    ) -> None:
        self._find = offset if callable(offset) else None
        self._offset = None if callable(offset) else offset
        if self._offset is not None:
            parent.check_range(self._offset, length, "an embedded record")
        self.parent, self.size = parent, length
        self.name = name or f"{parent.name} (bytes {offset}-{offset + length})"
        self.bytes_read = 0  # bytes handed out through `view`, as FileSource counts them
        self._lock = threading.Lock()  # reader threads may make the first read at once

    @property
    def offset(self) -> int:
        with self._lock:
            if self._offset is None:
                assert self._find is not None
                self._offset = self._find()
            return self._offset

    def view(self, offset: int, length: int) -> memoryview:
        self.check_range(offset, length, "a read")
        start = self.offset
        with self._lock:
            self.bytes_read += length
        return self.parent.view(start + offset, length)

    def release(self, offset: int, length: int) -> None:
        start, end = max(offset, 0), min(offset + length, self.size)
        if end > start and self._offset is not None:  # nothing read yet: nothing to drop
            self.parent.release(self._offset + start, end - start)


class _SourceReader(io.RawIOBase):
    """A file object over a ByteSource. `read(n)` never allocates more than the bytes that are there."""

    def __init__(self, source: ByteSource) -> None:
        self._source = source
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._source.size}[whence]
        if base + offset < 0:
            raise OSError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = max(0, min(len(buffer), self._source.size - self._pos))
        memoryview(buffer).cast("B")[:n] = self._source.view(self._pos, n)
        self._pos += n
        return n

    def read(self, size: int | None = -1) -> bytes:
        """At most the bytes that are there: RawIOBase.read would first allocate `size` bytes, and zipfile asks
        for sizes the archive claims (a lying compressed size must not become a 4 GiB buffer)."""
        remaining = max(0, self._source.size - self._pos)
        n = remaining if size is None or size < 0 else min(size, remaining)
        data = self._source.read(self._pos, n)
        self._pos += n
        return data


def _check_regular(name: str, mode: int) -> None:
    """Only regular files are read: a directory, device (/dev/zero never ends), FIFO or socket is refused."""
    if stat.S_ISREG(mode):
        return
    kinds = [
        (stat.S_ISDIR, "is a directory"),
        (stat.S_ISFIFO, "is a FIFO (named pipe), not a regular file"),
        (stat.S_ISCHR, "is a character device, not a regular file"),
        (stat.S_ISBLK, "is a block device, not a regular file"),
        (stat.S_ISSOCK, "is a socket, not a regular file"),
    ]
    raise FileError(name, next((text for test, text in kinds if test(mode)), "not a regular file"))


def _os_problem(error: OSError) -> str:
    """An OSError as a short phrase, without Python's `[Errno N]` noise."""
    return (error.strerror or str(error)).lower()
