"""NumPy `.npz` archives: a zip of `.npy` members, written by `numpy.savez` (stored) or `savez_compressed`.

Each member starts with the `.npy` header (numpy/lib/format.py): the magic `\\x93NUMPY`, a version byte pair, a
2-byte (v1) or 4-byte (v2, v3) little-endian header length, then a Python dict literal with `descr`,
`fortran_order` and `shape`. Only that header is read to list the archive; stored members are then read in place,
deflated ones streamed. Object arrays would need pickle: they are listed as placeholders, never loaded.
"""

from __future__ import annotations

import ast
import math
import zipfile
from typing import Any, BinaryIO

from paramctl import dtypes
from paramctl.errors import CorruptFileError
from paramctl.probe import Probe
from paramctl.tree import ByteRange, Opaque, Storage, Stream, Tensor, Tree, contiguous_strides, split_key

MAGIC = b"\x93NUMPY"
MAX_HEADER_SIZE = 10_000  # numpy.lib.format's default limit for the header literal


class NpzLoader:
    name = "npz"
    description = "NumPy .npz archives (numpy.savez, savez_compressed)"

    def sniff(self, probe: Probe) -> bool:
        names = probe.zip_names if probe.is_zip else None
        if names is None:
            return False
        if not names:  # an empty archive: only the extension can tell
            return probe.name.endswith(".npz")
        return all(name.endswith(".npy") for name in names)

    def load(self, probe: Probe) -> Tree:
        assert probe.zip is not None
        tree = Tree(probe.name, "npz")
        for info in probe.zip.infolist():
            path = split_key(info.filename[: -len(".npy")], "./")
            if info.compress_type == zipfile.ZIP_STORED:
                start = probe.member_data_offset(info)
                header, header_size = _read_header(
                    probe.name, info.filename, _SourceStream(probe, start, info.file_size)
                )
            else:
                with _open_member(probe, info) as stream:
                    header, header_size = _read_header(probe.name, info.filename, stream)
            leaf = _leaf(probe, info, header, header_size)
            tree.leaves.append((path, leaf))
        return tree


LOADER = NpzLoader()


def _open_member(probe: Probe, info: zipfile.ZipInfo) -> BinaryIO:
    assert probe.zip is not None
    try:
        return probe.zip.open(info)
    except (zipfile.BadZipFile, NotImplementedError, OSError) as error:
        raise CorruptFileError(probe.name, f"zip member {info.filename!r}: {error}") from None


class _SourceStream:
    """Just enough of a file object to read a stored member's header from the byte source."""

    def __init__(self, probe: Probe, start: int, size: int) -> None:
        self.probe, self.position, self.end = probe, start, start + size

    def read(self, n: int) -> bytes:
        n = max(0, min(n, self.end - self.position))
        data = self.probe.source.read(self.position, n)
        self.position += n
        return data


def _read_header(file: str, member: str, stream: Any) -> tuple[dict[str, Any], int]:
    """The `.npy` header dict and the total header size in bytes; every length is checked before it is used."""
    try:
        prefix = stream.read(8)
        if len(prefix) < 8 or prefix[:6] != MAGIC:
            raise CorruptFileError(file, f"member {member!r} is not a .npy array (bad magic)")
        major = prefix[6]
        if major not in (1, 2, 3):
            raise CorruptFileError(file, f"member {member!r}: unsupported .npy version {major}.{prefix[7]}")
        size_bytes = 2 if major == 1 else 4
        raw_size = stream.read(size_bytes)
        if len(raw_size) < size_bytes:
            raise CorruptFileError(file, f"member {member!r}: truncated .npy header")
        header_length = int.from_bytes(raw_size, "little")
        if header_length > MAX_HEADER_SIZE:
            raise CorruptFileError(file, f"member {member!r}: .npy header of {header_length} bytes is too long")
        text = stream.read(header_length)
    except zipfile.BadZipFile as error:
        raise CorruptFileError(file, f"zip member {member!r}: {error}") from None
    if len(text) < header_length:
        raise CorruptFileError(file, f"member {member!r}: truncated .npy header")
    try:
        header = ast.literal_eval(text.decode("utf-8" if major == 3 else "latin1"))
    except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError):
        raise CorruptFileError(file, f"member {member!r}: .npy header is not a Python literal") from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise CorruptFileError(file, f"member {member!r}: .npy header lacks descr, fortran_order or shape")
    shape = header["shape"]
    if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
        raise CorruptFileError(file, f"member {member!r}: .npy shape {shape!r:.80} is not a tuple of sizes")
    if not isinstance(header["fortran_order"], bool):
        raise CorruptFileError(file, f"member {member!r}: .npy fortran_order is not a bool")
    return header, 8 + size_bytes + header_length


def _leaf(probe: Probe, info: zipfile.ZipInfo, header: dict[str, Any], header_size: int) -> Tensor | Opaque:
    descr, shape = header["descr"], header["shape"]
    resolved = dtypes.from_npy_descr(descr)
    if resolved is None:
        note = "object array: not read (reading it would need pickle)" if descr == "|O" else "unsupported dtype"
        return Opaque(f"numpy.ndarray[{descr!r:.60}]", f"{note}, shape {list(shape)}")
    dtype, byteorder = resolved
    nbytes = math.prod(shape) * dtype.itemsize
    if header_size + nbytes > info.file_size:
        raise CorruptFileError(
            probe.name,
            f"member {info.filename!r}: shape {list(shape)} needs {nbytes} bytes, the member holds "
            f"{max(info.file_size - header_size, 0)}",
        )
    strides = contiguous_strides(shape)
    if header["fortran_order"]:
        strides = tuple(reversed(contiguous_strides(tuple(reversed(shape)))))
    if info.compress_type == zipfile.ZIP_STORED:
        data: ByteRange | Stream = ByteRange(probe.source, probe.member_data_offset(info) + header_size, nbytes)
    else:
        data = Stream(lambda: _skip(_open_member(probe, info), header_size), nbytes)
    return Tensor(dtype, tuple(shape), strides, Storage(info.filename, nbytes, data, "cpu", byteorder))


def _skip(stream: BinaryIO, n: int) -> BinaryIO:
    stream.read(n)
    return stream
