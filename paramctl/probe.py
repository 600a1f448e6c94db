"""What loaders look at to decide whether a file is theirs: its first bytes, and its zip directory if it is a zip."""

from __future__ import annotations

import struct
import zipfile
from functools import cached_property

from paramctl.errors import CorruptFileError
from paramctl.source import ByteSource

HEAD_SIZE = 4096
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a first local header, or the end record of an empty archive


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
        """The archive's directory (end records and central directory only), or None for a non-zip file."""
        if not self.is_zip:
            return None
        try:
            return zipfile.ZipFile(self.source.open_stream())
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, struct.error) as error:
            raise CorruptFileError(self.name, f"corrupt zip archive: {error}") from None
        except CorruptFileError as error:
            raise CorruptFileError(self.name, f"corrupt zip archive: {error.problem}") from None

    @cached_property
    def zip_names(self) -> list[str]:
        return self.zip.namelist() if self.zip is not None else []

    def member_data_offset(self, info: zipfile.ZipInfo) -> int:
        """Where a member's bytes start: its local header is 30 bytes plus its own name and extra field."""
        header = self.source.read(info.header_offset, 30) if info.header_offset + 30 <= self.source.size else b""
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            raise CorruptFileError(self.name, f"zip member {info.filename!r}: bad local header")
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        offset = info.header_offset + 30 + name_length + extra_length
        self.source.check_range(offset, info.compress_size, f"zip member {info.filename!r}")
        return offset
