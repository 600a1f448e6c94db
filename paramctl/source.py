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
        try:
            info = os.stat(self.name)
        except FileNotFoundError:
            problem = "dangling symbolic link" if os.path.islink(self.name) else "no such file"
            raise FileError(self.name, problem) from None
        except OSError as error:
            raise FileError(self.name, _os_problem(error)) from None
        if stat.S_ISDIR(info.st_mode):
            raise FileError(self.name, "is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise FileError(self.name, "not a regular file (a device, FIFO or socket)")
        try:
            fd = os.open(self.name, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as error:
            raise FileError(self.name, _os_problem(error)) from None
        try:
            self.size = os.fstat(fd).st_size
            self._map = mmap.mmap(fd, 0, access=mmap.ACCESS_READ) if self.size else None
        except OSError as error:
            raise FileError(self.name, _os_problem(error)) from None
        finally:
            os.close(fd)
        self._view = memoryview(self._map) if self._map is not None else memoryview(b"")

    def view(self, offset: int, length: int) -> memoryview:
        self.check_range(offset, length, "a read")
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


def _os_problem(error: OSError) -> str:
    """An OSError as a short phrase, without Python's `[Errno N]` noise."""
    return (error.strerror or str(error)).lower()
