"""Flax msgpack checkpoints: the bytes `flax.serialization.to_bytes` and `msgpack_serialize` write.

The file is one msgpack object (the msgpack spec: big-endian headers, then payloads), normally a map of maps
`{"params": {"layers_0": {"kernel": …}}}`. Flax packs arrays as ext records (flax/serialization.py,
`_MsgpackExtType`): code 1 an ndarray and code 3 a NumPy scalar, both holding a packed 3-array (shape, dtype name,
C-order bytes) (`_ndarray_to_bytes`); code 2 a Python complex as a packed (real, imag). An array over
MAX_CHUNK_SIZE (1 GiB) is split (`_chunk`): a map `{"__msgpack_chunked_array__": True, "shape": {"0": n, …},
"chunks": {"0": 1-D array, …}}` that `msgpack_restore` concatenates back, but only at the root or as the value of
a map whose ancestors are all maps (`_unchunk_array_leaves_in_place` does not look inside lists). Restored lists
are maps with keys "0", "1", …, which become path segments like any key.

The records are walked here header by header, each length checked against the bytes present before it is used,
and array payloads are only located (a ByteRange each, a `Pieces` storage for a chunked array), never read. The
`msgpack` package is not used: its Unpacker buffers whole records (100 MiB by default, flax chunks at 1 GiB).
Nothing in the file is ever executed.
"""

from __future__ import annotations

import math
import struct
from contextlib import contextmanager
from typing import Any

from paramctl import dtypes
from paramctl.errors import CorruptFileError
from paramctl.probe import Probe
from paramctl.tree import (
    MAX_DEPTH,
    ByteRange,
    OpaqueObject,
    Pieces,
    Storage,
    Tensor,
    TooDeepError,
    Tree,
    contiguous_strides,
    flatten,
    name_of,
    short_repr,
    split_key,
)

EXT_NDARRAY, EXT_COMPLEX, EXT_NPSCALAR = 1, 2, 3  # flax's _MsgpackExtType
EXT_TIMESTAMP = -1  # the msgpack spec's one predefined ext type
CHUNKED = "__msgpack_chunked_array__"
MAX_INLINE_BYTES = 1 << 20  # str and bin values up to this size are read into the tree; larger ones are placeholders
MAX_KEY_BYTES = 1 << 16
MAX_NDIM = 64  # NumPy's limit: flax's reshape fails beyond it
WINDOW = 16 << 10  # headers are read through a window of this many bytes, payloads are skipped

_MAP_STARTS = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}  # fixmap, map 16, map 32
# Headers with a big-endian length field: format byte -> (kind, length bytes).
_SIZED = {
    0xC4: ("bin", 1),
    0xC5: ("bin", 2),
    0xC6: ("bin", 4),
    0xC7: ("ext", 1),
    0xC8: ("ext", 2),
    0xC9: ("ext", 4),
    0xD9: ("str", 1),
    0xDA: ("str", 2),
    0xDB: ("str", 4),
    0xDC: ("array", 2),
    0xDD: ("array", 4),
    0xDE: ("map", 2),
    0xDF: ("map", 4),
}
_NUMBERS = {
    0xCA: ("float", ">f"),
    0xCB: ("float", ">d"),
    0xCC: ("int", ">B"),
    0xCD: ("int", ">H"),
    0xCE: ("int", ">I"),
    0xCF: ("int", ">Q"),
    0xD0: ("int", ">b"),
    0xD1: ("int", ">h"),
    0xD2: ("int", ">i"),
    0xD3: ("int", ">q"),
}
_FIXEXT = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}
_CONSTANTS = {0xC0: ("nil", None), 0xC2: ("bool", False), 0xC3: ("bool", True)}

# NumPy dtype names as `arr.dtype.name` gives them (ml_dtypes' names for bfloat16 and float8) -> paramctl dtypes.
DTYPES_BY_NUMPY_NAME = {d.numpy_name: d for d in dtypes.BY_NAME.values() if d.numpy_name}


class FlaxMsgpackLoader:
    name = "flax"
    description = "Flax msgpack checkpoints (flax.serialization.to_bytes, msgpack_serialize)"

    def sniff(self, probe: Probe) -> bool:
        """A msgpack map whose first key is a string and whose records parse as far as the first 4 KiB go; when
        the whole object ends there, it must end with the file. (A record cut short by the end of the head, or
        of a small truncated file, is Flax's still: `load` then says what is wrong.)"""
        head = probe.head
        if not head or head[0] not in _MAP_STARTS:
            return False
        walker = _Walker(_HeadSource(probe.name, head), partial=True)
        try:
            walker.value((), 0, in_maps=True)
        except _EndOfHead:
            return walker.first_key_is_str is True
        except (CorruptFileError, TooDeepError, RecursionError):
            return False
        return walker.first_key_is_str is not False and walker.cursor.pos == probe.source.size

    def load(self, probe: Probe) -> Tree:
        walker = _Walker(probe.source)
        root = walker.value((), 0, in_maps=True)
        if walker.cursor.pos != probe.source.size:
            raise CorruptFileError(
                probe.name,
                f"the msgpack object ends at byte {walker.cursor.pos}, the file has {probe.source.size} bytes",
            )
        try:
            leaves = flatten(root)
        except TooDeepError as error:
            raise CorruptFileError(probe.name, str(error)) from None
        return Tree(probe.name, "flax", leaves)


LOADER = FlaxMsgpackLoader()


class _EndOfHead(Exception):
    """Sniffing ran past the bytes it has: the structure was valid as far as it went."""


class _HeadSource:
    """The first bytes of a file as a source, for sniffing with the same walker as loading."""

    def __init__(self, name: str, head: bytes) -> None:
        self.name, self.size, self._head = name, len(head), head

    def read(self, offset: int, length: int) -> bytes:
        return self._head[offset : offset + length]


class _Cursor:
    """A position in the source and the end it may not pass; small reads go through a window of the file."""

    def __init__(self, source: Any, partial: bool) -> None:
        self.source, self.name, self.partial = source, source.name, partial
        self.pos, self.end = 0, source.size
        self._window, self._window_start = b"", 0

    def need(self, n: int, what: str) -> None:
        """Fail unless `n` more bytes lie before the end: checked before any length from the file is trusted."""
        if n > self.end - self.pos:
            if self.partial and self.end == self.source.size:  # sniffing: not a record's limit, the head's end
                raise _EndOfHead
            raise CorruptFileError(
                self.name, f"{what} at byte {self.pos} needs {n} bytes, but only {self.end - self.pos} remain"
            )

    def take(self, n: int, what: str) -> bytes:
        self.need(n, what)
        start = self.pos - self._window_start
        if start < 0 or start + n > len(self._window):
            if n > WINDOW:
                data = self.source.read(self.pos, n)
                self.pos += n
                return data
            self._window_start, start = self.pos, 0
            self._window = self.source.read(self.pos, min(WINDOW, self.source.size - self.pos))
        self.pos += n
        return self._window[start : start + n]

    def skip(self, n: int, what: str) -> int:
        """Step over a payload without reading it; returns where it starts."""
        self.need(n, what)
        start, self.pos = self.pos, self.pos + n
        return start

    @contextmanager
    def limited(self, length: int, what: str) -> Any:
        """Parse the next `length` bytes (an ext record's payload) as a unit that must be consumed exactly."""
        self.need(length, what)
        outer, self.end = self.end, self.pos + length
        try:
            yield
            if self.pos != self.end:
                raise CorruptFileError(
                    self.name, f"{what} has {self.end - self.pos} unexpected bytes at byte {self.pos}"
                )
        finally:
            self.end = outer

    def header(self) -> tuple[str, Any]:
        """The next record's kind and its value (scalars), element count (array, map), length (str, bin), or
        (type code, length) (ext)."""
        at = self.pos
        byte = self.take(1, "a msgpack record")[0]
        if byte <= 0x7F:
            return "int", byte
        if byte >= 0xE0:
            return "int", byte - 0x100
        if byte <= 0x8F:
            return "map", byte & 0x0F
        if byte <= 0x9F:
            return "array", byte & 0x0F
        if byte <= 0xBF:
            return "str", byte & 0x1F
        if byte in _CONSTANTS:
            return _CONSTANTS[byte]
        if byte in _NUMBERS:
            kind, code = _NUMBERS[byte]
            return kind, struct.unpack(code, self.take(struct.calcsize(code), "a number"))[0]
        if byte in _FIXEXT:
            code = int.from_bytes(self.take(1, "an ext type"), "big", signed=True)
            return "ext", (code, _FIXEXT[byte])
        if byte in _SIZED:
            kind, size = _SIZED[byte]
            length = int.from_bytes(self.take(size, f"a {kind} length"), "big")
            if kind == "ext":
                return kind, (int.from_bytes(self.take(1, "an ext type"), "big", signed=True), length)
            return kind, length
        raise CorruptFileError(self.name, f"byte {at}: 0x{byte:02x} is not a msgpack format byte")


class _Walker:
    """Builds the nested structure of dicts, lists, values and lazy tensors that `tree.flatten` names."""

    def __init__(self, source: Any, partial: bool = False) -> None:
        self.source = source
        self.cursor = _Cursor(source, partial)
        self.first_key_is_str: bool | None = None  # sniffing: whether the root map's first key is a string

    def corrupt(self, path: tuple[str, ...], problem: str) -> CorruptFileError:
        where = name_of(path) or "<root>"
        return CorruptFileError(self.source.name, f"{where}: {problem}")

    def value(self, path: tuple[str, ...], depth: int, in_maps: bool) -> Any:
        """The next record as a Python object; `in_maps` when every ancestor is a map (where flax unchunks)."""
        if depth > MAX_DEPTH:
            raise self.corrupt(path[:20], f"nesting deeper than {MAX_DEPTH} levels")
        cursor = self.cursor
        at = cursor.pos
        kind, arg = cursor.header()
        if kind in ("int", "float", "nil", "bool"):
            return arg
        if kind in ("str", "bin"):
            if arg > MAX_INLINE_BYTES:
                cursor.skip(arg, f"a {kind} payload")
                return OpaqueObject(kind, note=f"{arg:,} bytes, not read")
            return self._text(kind, cursor.take(arg, f"a {kind} payload"), at, path)
        if kind == "array":
            cursor.need(arg, f"an array of {arg} elements")  # every element takes at least one byte
            return [self.value((*path, str(i)), depth + 1, in_maps=False) for i in range(arg)]
        if kind == "map":
            return self._map(path, depth, arg, in_maps)
        code, length = arg
        return self._ext(path, code, length)

    def _text(self, kind: str, raw: bytes, at: int, path: tuple[str, ...]) -> str | bytes:
        if kind == "bin":
            return raw
        try:
            return raw.decode("utf-8")  # msgpack_restore decodes strings strictly (raw=False)
        except UnicodeDecodeError:
            raise self.corrupt(path, f"the string at byte {at} is not UTF-8") from None

    def _key(self, path: tuple[str, ...]) -> Any:
        """A map key: flax writes strings; msgpack_restore accepts any hashable scalar (strict_map_key=False)."""
        at = self.cursor.pos
        kind, arg = self.cursor.header()
        if kind in ("int", "float", "nil", "bool"):
            return arg
        if kind in ("str", "bin"):
            if arg > MAX_KEY_BYTES:
                raise self.corrupt(path, f"the map key at byte {at} is {arg:,} bytes long")
            return self._text(kind, self.cursor.take(arg, f"a {kind} key"), at, path)
        raise self.corrupt(path, f"the map key at byte {at} is a msgpack {kind}, not a string or number")

    def _map(self, path: tuple[str, ...], depth: int, count: int, in_maps: bool) -> Any:
        self.cursor.need(2 * count, f"a map of {count} entries")  # every key and value takes at least one byte
        result: dict[Any, Any] = {}
        for _ in range(count):
            at = self.cursor.pos
            key = self._key(path)
            if self.first_key_is_str is None:
                self.first_key_is_str = isinstance(key, str)
            if key in result:  # (1, 1.0 and True are one key to a dict, as to msgpack_restore)
                raise self.corrupt(path, f"the map key {short_repr(key, 60)} at byte {at} appears twice")
            result[key] = self.value((*path, *split_key(key)), depth + 1, in_maps)
        if in_maps and CHUNKED in result:
            return self._unchunk(path, result)
        return result

    def _ext(self, path: tuple[str, ...], code: int, length: int) -> Any:
        cursor = self.cursor
        if code in (EXT_NDARRAY, EXT_NPSCALAR):
            with cursor.limited(length, "an array record"):
                return self._ndarray(path)
        if code == EXT_COMPLEX:
            with cursor.limited(length, "a complex record"):  # msgpack.packb((x.real, x.imag))
                parts = [cursor.header() for _ in range(2)] if cursor.header() == ("array", 2) else []
                if len(parts) != 2 or any(kind not in ("int", "float") for kind, _ in parts):
                    raise self.corrupt(path, "a complex record does not hold (real, imag)")
            return complex(parts[0][1], parts[1][1])
        cursor.skip(length, "an ext payload")
        if code == EXT_TIMESTAMP:
            return OpaqueObject("msgpack.Timestamp", note=f"{length} bytes, not read")
        return OpaqueObject(f"msgpack.ExtType[{code}]", note=f"{length:,} bytes, not read")

    def _ndarray(self, path: tuple[str, ...]) -> Tensor | OpaqueObject:
        """An ndarray record: msgpack.packb((shape, dtype.name, bytes)), located in place."""
        cursor = self.cursor
        kind, count = cursor.header()
        if kind != "array" or count != 3:
            raise self.corrupt(path, "an array record does not hold (shape, dtype, data)")
        kind, ndim = cursor.header()
        if kind != "array" or ndim > MAX_NDIM:
            raise self.corrupt(path, f"an array record's shape is not a list of at most {MAX_NDIM} sizes")
        shape = []
        for _ in range(ndim):
            kind, size = cursor.header()
            if kind != "int" or size < 0:
                raise self.corrupt(path, f"an array record's shape holds {short_repr(size, 40)}, not a size")
            shape.append(size)
        kind, length = cursor.header()
        if kind not in ("str", "bin") or length > 64:
            raise self.corrupt(path, "an array record's dtype is not a short name")
        dtype_name = cursor.take(length, "a dtype name").decode("latin-1")
        kind, nbytes = cursor.header()
        if kind not in ("str", "bin"):
            raise self.corrupt(path, f"an array record's data is a msgpack {kind}, not bytes")
        offset = cursor.skip(nbytes, f"{nbytes:,} bytes of array data")
        dtype = DTYPES_BY_NUMPY_NAME.get(dtype_name)
        if dtype is None:
            note = f"dtype {short_repr(dtype_name, 40)} is not supported, shape {shape}"
            return OpaqueObject(f"numpy.ndarray[{short_repr(dtype_name, 40)}]", note=note)
        expected = math.prod(shape) * dtype.itemsize
        if expected != nbytes:
            raise self.corrupt(path, f"shape {shape} of {dtype} needs {expected:,} bytes, the record holds {nbytes:,}")
        storage = Storage(name_of(path) or "<root>", nbytes, ByteRange(self.source, offset, nbytes))
        return Tensor(dtype, tuple(shape), contiguous_strides(tuple(shape)), storage)

    def _unchunk(self, path: tuple[str, ...], record: dict[Any, Any]) -> Tensor:
        """A chunked array as one tensor over the chunks' bytes, as flax's `_unchunk` concatenates them."""
        extra = set(record) - {CHUNKED, "shape", "chunks"}
        if extra:
            raise self.corrupt(path, f"a chunked array has unexpected keys {short_repr(sorted(map(str, extra)))}")
        shape = _sequence(record.get("shape"))
        chunks = _sequence(record.get("chunks"))
        if shape is None or not all(type(n) is int and n >= 0 for n in shape) or len(shape) > MAX_NDIM:
            raise self.corrupt(path, "a chunked array's shape is not a map of sizes keyed 0, 1, …")
        if not chunks or not all(isinstance(c, Tensor) and len(c.shape) == 1 for c in chunks):
            raise self.corrupt(path, "a chunked array's chunks are not a map of 1-D arrays keyed 0, 1, …")
        dtype = chunks[0].dtype
        if any(c.dtype != dtype for c in chunks):
            raise self.corrupt(path, "a chunked array's chunks have different dtypes")
        numel = sum(c.numel for c in chunks)
        if numel != math.prod(shape):
            raise self.corrupt(path, f"a chunked array of shape {shape} holds {numel:,} elements")
        pieces = Pieces(tuple(c.storage.data for c in chunks))  # type: ignore[misc]
        storage = Storage(name_of(path) or "<root>", pieces.nbytes, pieces)
        return Tensor(dtype, tuple(shape), contiguous_strides(tuple(shape)), storage)


def _sequence(value: Any) -> list[Any] | None:
    """A restored tuple (a map keyed "0", "1", … in any order) as a list, as flax's `_dict_to_tuple` reads it."""
    if not isinstance(value, dict) or set(value) != {str(i) for i in range(len(value))}:
        return None
    return [value[str(i)] for i in range(len(value))]
