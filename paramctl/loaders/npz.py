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
from paramctl.pickles import INT64_MAX, PickleScan, scan_pickle, short_repr
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
        tree = Tree(probe.name, "npz")
        for info in _archive(probe).infolist():
            path = split_key(info.filename[: -len(".npy")], "./")
            header, header_size = _member_header(probe, info)
            leaf = _leaf(probe, info, header, header_size)
            tree.leaves.append((path, leaf))
        return tree

    def pickles(self, probe: Probe) -> list[PickleScan]:
        """The pickles inside object-array members (`np.save(allow_pickle=True)` pickles the array after the
        header), scanned without rebuilding anything (for `scan`); numeric members hold none."""
        scans = []
        for info in _archive(probe).infolist():
            header, header_size = _member_header(probe, info)
            if dtypes.from_npy_descr(header["descr"]) is not None:
                continue
            try:
                data = probe.read_member(info, _MAX_OBJECT_PICKLE)
            except CorruptFileError as error:
                scans.append(PickleScan(info.filename, header_size, None, None, [], {}, set(), error.problem))
                continue
            scans.append(scan_pickle(data, info.filename, header_size))
        return scans


LOADER = NpzLoader()
_MAX_OBJECT_PICKLE = 256 << 20  # an object array's pickle scanned whole, up to this size


def _archive(probe: Probe) -> zipfile.ZipFile:
    if probe.zip is None:  # only when the format is forced on a file that is not a zip
        raise CorruptFileError(probe.name, "not an npz archive: not a zip file")
    return probe.zip


def _member_header(probe: Probe, info: zipfile.ZipInfo) -> tuple[dict[str, Any], int]:
    """A member's `.npy` header, read in place when stored, else from the first inflated bytes only."""
    if info.compress_type == zipfile.ZIP_STORED:
        start = probe.check_member(info)
        return _read_header(probe.name, info.filename, _SourceStream(probe, start, info.file_size))
    with _open_member(probe, info) as stream:
        return _read_header(probe.name, info.filename, stream)


def _open_member(probe: Probe, info: zipfile.ZipInfo) -> BinaryIO:
    return probe.open_member(info)


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
    except (ValueError, TypeError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError):
        raise CorruptFileError(file, f"member {member!r}: .npy header is not a Python literal") from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise CorruptFileError(file, f"member {member!r}: .npy header lacks descr, fortran_order or shape")
    shape = header["shape"]
    if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
        raise CorruptFileError(file, f"member {member!r}: .npy shape {short_repr(shape)} is not a tuple of sizes")
    # numpy counts elements in int64 and allows 64 dimensions: a larger shape is a lie, even with a 0 in it.
    if len(shape) > 64 or any(n > INT64_MAX for n in shape) or math.prod(shape) > INT64_MAX:
        raise CorruptFileError(file, f"member {member!r}: .npy shape {short_repr(shape)} overflows int64")
    if not isinstance(header["fortran_order"], bool):
        raise CorruptFileError(file, f"member {member!r}: .npy fortran_order is not a bool")
    return header, 8 + size_bytes + header_length


def _leaf(probe: Probe, info: zipfile.ZipInfo, header: dict[str, Any], header_size: int) -> Tensor | Opaque:
    descr, shape = header["descr"], header["shape"]
    resolved = dtypes.from_npy_descr(descr)
    if resolved is None:
        pickled, itemsize = _foreign_dtype(probe.name, info.filename, descr)
        if not pickled and header_size + math.prod(shape) * itemsize > info.file_size:
            raise CorruptFileError(
                probe.name,
                f"member {info.filename!r}: shape {list(shape)} of {short_repr(descr, 60)} needs"
                f" {math.prod(shape) * itemsize} bytes, the member holds {max(info.file_size - header_size, 0)}",
            )
        note = "object array: not read (reading it would need pickle)" if pickled else "unsupported dtype"
        return Opaque(f"numpy.ndarray[{short_repr(descr, 60)}]", f"{note}, shape {list(shape)}")
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
        data: ByteRange | Stream = ByteRange(probe.source, probe.check_member(info) + header_size, nbytes)
    else:
        data = Stream(lambda: _skip(_open_member(probe, info), header_size), nbytes)
    return Tensor(dtype, tuple(shape), strides, Storage(info.filename, nbytes, data, "cpu", byteorder))


def _foreign_dtype(file: str, member: str, descr: Any) -> tuple[bool, int]:
    """(holds Python objects, itemsize) of a NumPy dtype paramctl does not read (strings, records, datetimes).

    A descr NumPy itself cannot parse is no NumPy file. `descr` is a literal from the header (ast.literal_eval):
    NumPy parses it as a type description and evaluates nothing. NumPy is imported only here, for such members.
    """
    import numpy as np

    try:
        dtype = np.lib.format.descr_to_dtype(descr)
    except (TypeError, ValueError, KeyError, IndexError, OverflowError, RecursionError, MemoryError):
        raise CorruptFileError(
            file, f"member {member!r}: .npy descr {short_repr(descr, 60)} is not a NumPy dtype"
        ) from None
    return bool(dtype.hasobject), int(dtype.itemsize)


def _skip(stream: BinaryIO, n: int) -> BinaryIO:
    stream.read(n)
    return stream
