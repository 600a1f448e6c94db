"""What loaders look at to decide whether a file is theirs: its first bytes, and its zip directory if it is a zip.

Zip members are opened only through `open_member` / `read_member`, which check every size the archive claims
against the bytes the file holds before anything is read or allocated, and turn whatever `zipfile` and `zlib`
raise on damaged data into a CorruptFileError naming the file and the member.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from functools import cached_property
from typing import BinaryIO

from paramctl.errors import CorruptFileError
from paramctl.source import ByteSource, SliceSource

HEAD_SIZE = 4096
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a first local header, or the end record of an empty archive
# Deflate cannot expand data more than 1032 times (RFC 1951: a 258-byte match costs at least 2 bits), so a member
# that claims more than that (plus a little slack for tiny members) lies about its size.
MAX_DEFLATE_RATIO = 1032
_READ_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    struct.error,
    NotImplementedError,
    RuntimeError,  # zipfile: "File is encrypted, password required"
    OverflowError,
)


class Probe:
    """A file as loaders first see it. Parsing the zip directory happens once, whoever asks first."""

    def __init__(self, source: ByteSource) -> None:
        self.source = source
        self.name = source.name
        self.head = source.read(0, min(HEAD_SIZE, source.size))

    @property
    def is_zip(self) -> bool:
        return self.head[:4] in _ZIP_MAGICS

    @cached_property
    def zip(self) -> zipfile.ZipFile | None:
        """The archive's directory (end records and central directory only), or None for a non-zip file.

        Duplicate member names are refused: readers disagree on which copy wins (zipfile takes the last, torch's
        miniz a binary search), which would let a file show one pickle to a scanner and another to torch."""
        if not self.is_zip:
            return None
        try:
            archive = zipfile.ZipFile(self.source.open_stream())
        except (*_READ_ERRORS, IndexError, KeyError) as error:
            raise CorruptFileError(self.name, f"corrupt zip archive: {error}") from None
        except CorruptFileError as error:
            raise CorruptFileError(self.name, f"corrupt zip archive: {error.problem}") from None
        names = archive.namelist()
        if len(set(names)) != len(names):
            seen: set[str] = set()
            duplicate = next(n for n in names if n in seen or seen.add(n))  # type: ignore[func-returns-value]
            raise CorruptFileError(self.name, f"zip member {duplicate!r} appears more than once")
        return archive

    @cached_property
    def zip_names(self) -> list[str]:
        return self.zip.namelist() if self.zip is not None else []

    def member_data_offset(self, info: zipfile.ZipInfo) -> int:
        """Where a member's bytes start, from its local header (30 bytes plus its own name and extra field), which
        must agree with the central directory: signature, name and compression method. Read only when the member's
        bytes are: listing a torch archive over HTTP must not cost one request per tensor."""
        header = self.source.read(info.header_offset, 30) if 0 <= info.header_offset <= self.source.size - 30 else b""
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            raise CorruptFileError(self.name, f"zip member {info.filename!r}: bad local header")
        method, name_length, extra_length = struct.unpack("<H", header[8:10])[0], *struct.unpack("<HH", header[26:30])
        name = info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437", "replace")
        self.source.check_range(info.header_offset + 30, name_length, f"zip member {info.filename!r}'s local header")
        if name_length != len(name) or self.source.read(info.header_offset + 30, name_length) != name:
            raise CorruptFileError(self.name, f"zip member {info.filename!r}: its local header names another member")
        if method != info.compress_type:
            raise CorruptFileError(
                self.name,
                f"zip member {info.filename!r}: local header says compression method {method}, "
                f"the directory {info.compress_type}",
            )
        offset = info.header_offset + 30 + name_length + extra_length
        self.source.check_range(offset, info.compress_size, f"zip member {info.filename!r}")
        return offset

    def check_entry(self, info: zipfile.ZipInfo) -> None:
        """What the central directory alone tells about a member, checked before anything trusts it.

        Only stored and deflated members are read (torch's reader knows no other method, and bzip2 or LZMA can
        inflate one small read into gigabytes). torch's reader (miniz) refuses a member with the encryption bit, so
        paramctl does too. A stored member's size must equal its compressed size, a deflated member cannot claim
        more than deflate can produce, and its bytes must fit in the file after a local header."""
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise CorruptFileError(
                self.name, f"zip member {info.filename!r}: compression method {info.compress_type} is not supported"
            )
        if info.flag_bits & 0x1:
            raise CorruptFileError(self.name, f"zip member {info.filename!r} is encrypted")
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise CorruptFileError(
                self.name,
                f"zip member {info.filename!r}: stored with {info.compress_size} bytes but claims {info.file_size}",
            )
        if info.file_size > MAX_DEFLATE_RATIO * info.compress_size + 1024:
            raise CorruptFileError(
                self.name,
                f"zip member {info.filename!r} claims {info.file_size} bytes from {info.compress_size} compressed "
                f"(more than deflate can produce)",
            )
        least = 30 + len(info.orig_filename.encode("utf-8", "replace"))
        self.source.check_range(info.header_offset + least, info.compress_size, f"zip member {info.filename!r}")

    def check_member(self, info: zipfile.ZipInfo) -> int:
        """Validate a member before reading it (`check_entry`, then its local header); returns where its
        (compressed) bytes start."""
        self.check_entry(info)
        return self.member_data_offset(info)

    def stored_member(self, info: zipfile.ZipInfo) -> SliceSource:
        """A stored member's bytes as a source of their own, checked against the directory now and against its
        local header on first read (never when the archive is listed)."""
        self.check_entry(info)
        return SliceSource(self.source, lambda: self._located(info), info.file_size, self.name)

    def _located(self, info: zipfile.ZipInfo) -> int:
        """`member_data_offset`; over HTTP the local header is fetched alone (with room for torch's 64-byte
        alignment padding), not in a 64 KiB block."""
        prefetch = getattr(self.source, "prefetch", None)
        if prefetch is not None:
            prefetch([(info.header_offset, 30 + len(info.orig_filename.encode()) + len(info.extra) + 128)])
        return self.member_data_offset(info)

    def open_member(self, info: zipfile.ZipInfo) -> BinaryIO:
        """A stream of a member's bytes (inflated as read, in bounded steps); damage surfaces as CorruptFileError."""
        assert self.zip is not None
        self.check_member(info)
        try:
            stream = self.zip.open(info)
        except _READ_ERRORS as error:
            raise CorruptFileError(self.name, f"zip member {info.filename!r}: {error}") from None
        return _GuardedStream(stream, self.name, info.filename)  # type: ignore[return-value]

    def read_member(self, info: zipfile.ZipInfo, limit: int) -> bytes:
        """A whole member, refusing one that claims more than `limit` bytes; stored members are read in place."""
        if info.file_size > limit:
            raise CorruptFileError(self.name, f"zip member {info.filename!r} claims {info.file_size} bytes")
        offset = self.check_member(info)
        if info.compress_type == zipfile.ZIP_STORED:
            return self.source.read(offset, info.file_size)
        with self.open_member(info) as stream:
            data = stream.read(info.file_size)
        if len(data) != info.file_size:
            raise CorruptFileError(
                self.name, f"zip member {info.filename!r} holds {len(data)} bytes, not {info.file_size}"
            )
        return data


class _GuardedStream(io.RawIOBase):
    """A zip member stream whose read errors (a bad CRC, a corrupt deflate stream, a short member) become
    CorruptFileError, so every command that streams data reports damage as bad input, never as a crash."""

    def __init__(self, stream: BinaryIO, file: str, member: str) -> None:
        self._stream, self._file, self._member = stream, file, member

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            return self._stream.read(size)
        except _READ_ERRORS as error:
            raise CorruptFileError(self._file, f"zip member {self._member!r}: {error}") from None

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            super().close()
