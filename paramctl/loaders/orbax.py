"""Orbax checkpoint folders: a step directory as `orbax.checkpoint.StandardCheckpointer().save(path, tree)` writes it.

The tree comes from Orbax's own metadata, read as JSON: `_METADATA` maps each leaf to its key path (`key_metadata`:
keys with key_type 1 for a sequence index, 2 for a dict key) and its value metadata (`value_type` "jax.Array",
"np.ndarray", "scalar", or "None"/"Dict"/"List" for empty nodes, and for jax.Array the `write_shape`);
`_CHECKPOINT_METADATA` holds the step's `custom_metadata`. Orbax 0.12 records no dtype there (and no shape for
NumPy arrays): those live in the zarr metadata inside the OCDBT store, zstd-compressed, which only `tensorstore`
reads. With tensorstore installed (`pip install 'paramctl[orbax]'`) every array is opened (its metadata only) for
its dtype and shape, and its values are read lazily through it, block by block; without it the tree still lists
(dtype "unknown") and reading values fails with the install hint. Arrays are stored under `'.'.join(keys)`,
Orbax's parameter name.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import pathlib
from typing import Any

from paramctl import dtypes, paths
from paramctl.dtypes import DType
from paramctl.errors import CorruptFileError, FileError, UsageError
from paramctl.tree import (
    MAX_DEPTH,
    OpaqueObject,
    Storage,
    Stream,
    Tensor,
    TooDeepError,
    Tree,
    contiguous_strides,
    flatten,
    short_repr,
)

METADATA = "_METADATA"
CHECKPOINT_METADATA = "_CHECKPOINT_METADATA"
MAX_METADATA_BYTES = 100_000_000
INSTALL_HINT = "reading Orbax values needs tensorstore: pip install 'paramctl[orbax]'"
SEQUENCE_KEY = 1  # key_type in key_metadata (orbax tree_metadata KeyType): 1 a sequence index, 2 a dict key
ARRAY_TYPES = ("jax.Array", "np.ndarray")
EMPTY_NODES = {"None": None, "Dict": {}, "List": []}  # value types of empty subtrees, restored as these
OPENED = (*ARRAY_TYPES, "scalar")  # value types stored as arrays
BLOCK_BYTES = 4 << 20  # values are read through tensorstore in blocks of leading-axis rows of about this size

# The dtype of an array whose metadata does not say: not a NumPy type, so no command tries to read it as one.
UNKNOWN = DType("unknown", 0, "?", None)


class OrbaxLoader:
    name = "orbax"
    description = "Orbax checkpoint folders (StandardCheckpointer); dtypes and values need paramctl[orbax]"

    def sniff_directory(self, path: pathlib.Path) -> bool:
        """A step folder: Orbax's tree metadata, next to the step metadata or the array store it describes."""
        return (path / METADATA).is_file() and any(
            (path / name).exists() for name in (CHECKPOINT_METADATA, "manifest.ocdbt", "array_metadatas")
        )

    def load_directory(self, path: pathlib.Path) -> Tree:
        metadata = _read_json(path / METADATA)
        tree_metadata = metadata.get("tree_metadata") if isinstance(metadata, dict) else None
        if not isinstance(tree_metadata, dict):
            raise CorruptFileError(path / METADATA, "no tree_metadata object")
        step = _read_json(path / CHECKPOINT_METADATA) if (path / CHECKPOINT_METADATA).is_file() else {}
        custom = step.get("custom_metadata") if isinstance(step, dict) else None
        entries = [_entry(path, key, entry) for key, entry in tree_metadata.items()]
        store = _Store.open(path, metadata)
        # Every stored name is checked before tensorstore opens any of them.
        store.start_opening([_checked_name(path, keys) for keys, value in entries if value.get("value_type") in OPENED])
        nested = _nest(path, [(keys, _leaf(path, store, keys, value)) for keys, value in entries])
        try:
            leaves = flatten(nested)
        except TooDeepError as error:
            raise CorruptFileError(path / METADATA, str(error)) from None
        return Tree(str(path), "orbax", leaves, metadata=dict(custom) if isinstance(custom, dict) else {})


LOADER = OrbaxLoader()


def _read_json(file: pathlib.Path) -> Any:
    try:
        size = file.stat().st_size
        if size > MAX_METADATA_BYTES:
            raise CorruptFileError(file, f"{size:,} bytes of metadata (more than {MAX_METADATA_BYTES:,})")
        return json.loads(file.read_bytes().decode("utf-8"), parse_constant=_no_constant)
    except OSError as error:
        raise FileError(file, (error.strerror or str(error)).lower()) from None
    except (ValueError, UnicodeDecodeError) as error:
        raise CorruptFileError(file, f"invalid JSON: {str(error)[:200]}") from None
    except RecursionError:
        raise CorruptFileError(file, "invalid JSON: nested too deeply") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


Key = tuple[str, bool]  # a key and whether its container is a sequence


def _entry(path: pathlib.Path, key: str, entry: Any) -> tuple[list[Key], dict[str, Any]]:
    """One leaf's keys and its value metadata."""
    where = path / METADATA
    keys = entry.get("key_metadata") if isinstance(entry, dict) else None
    value = entry.get("value_metadata") if isinstance(entry, dict) else None
    if not isinstance(keys, list) or not isinstance(value, dict) or len(keys) > MAX_DEPTH:
        raise CorruptFileError(where, f"leaf {short_repr(key)}: no key_metadata list and value_metadata object")
    result: list[Key] = []
    for item in keys:
        if not isinstance(item, dict) or not isinstance(item.get("key"), (str, int)):
            raise CorruptFileError(where, f"leaf {short_repr(key)}: a key is not a string or an index")
        result.append((str(item["key"]), item.get("key_type") == SEQUENCE_KEY))
    return result, value


def _nest(path: pathlib.Path, leaves: list[tuple[list[Key], Any]]) -> Any:
    """The leaves back in their dicts and lists, so `tree.flatten` names them as it names every format's."""
    if len(leaves) == 1 and not leaves[0][0]:
        return leaves[0][1]  # a bare array saved as the whole tree
    root: dict[str, Any] = {}
    sequences: set[int] = set()  # ids of the dicts that stand for lists
    empty_dicts: set[int] = set()  # ids of the leaves that are empty dicts, not containers
    for keys, leaf in leaves:
        if not keys:
            raise CorruptFileError(path / METADATA, "a leaf at the root next to other leaves")
        node = root
        for depth, (key, in_sequence) in enumerate(keys):
            if in_sequence:
                sequences.add(id(node))
            if depth == len(keys) - 1:
                if key in node:
                    raise CorruptFileError(path / METADATA, f"{'.'.join(k for k, _ in keys)} appears twice")
                node[key] = leaf
                if isinstance(leaf, dict):
                    empty_dicts.add(id(leaf))
            else:
                node = node.setdefault(key, {})
                if not isinstance(node, dict) or id(node) in empty_dicts:
                    raise CorruptFileError(path / METADATA, f"{'.'.join(k for k, _ in keys)} is inside a leaf")

    def restored(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        items = {key: restored(value) for key, value in node.items()}
        if id(node) in sequences and all(key.isdigit() for key in items):
            return [items[key] for key in sorted(items, key=int)]
        return items

    return restored(root)


def _name(keys: list[Key]) -> str:
    """Orbax's parameter name: the array's path in the store."""
    return ".".join(key for key, _ in keys)


def _checked_name(path: pathlib.Path, keys: list[Key]) -> str:
    """The array's path in the store, refused unless it stays inside the step folder: without OCDBT it is a folder
    of its own, joined to the step's path, so an absolute key would read any zarr array on the machine."""
    name = _name(keys)
    if (problem := paths.key_problem(name)) is not None:
        raise CorruptFileError(path / METADATA, f"array {short_repr(name)} {problem}: not a name inside the folder")
    return name


def _leaf(path: pathlib.Path, store: _Store, keys: list[Key], value: dict[str, Any]) -> Any:
    """A leaf as `tree.flatten` takes it: a Tensor, an OpaqueObject placeholder, or a plain value."""
    value_type = value.get("value_type")
    if value_type in EMPTY_NODES:
        return copy.copy(EMPTY_NODES[value_type])  # a fresh {} or [] for each leaf
    if value.get("skip_deserialize"):
        return OpaqueObject(f"orbax {short_repr(value_type, 40)}", note="not saved (skip_deserialize)")
    name = _checked_name(path, keys)
    if value_type == "scalar":
        return store.scalar(name)
    if value_type not in ARRAY_TYPES:
        return OpaqueObject(f"orbax {short_repr(value_type, 40)}", note="a value type paramctl does not read")
    shape = value.get("write_shape")
    if shape is not None and not (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)):
        raise CorruptFileError(path / METADATA, f"{name}: write_shape {short_repr(shape)} is not a list of sizes")
    return store.array(name, value_type, None if shape is None else tuple(shape))


class _Store:
    """The step's arrays: through tensorstore when it is installed, else described by the metadata alone."""

    def __init__(self, path: pathlib.Path, ocdbt: bool, zarr3: bool, tensorstore: Any) -> None:
        self.path, self.ocdbt, self.zarr3, self.ts = path, ocdbt, zarr3, tensorstore
        self._opening: dict[str, Any] = {}  # name -> tensorstore's future of the opened array

    @staticmethod
    def open(path: pathlib.Path, metadata: dict[str, Any]) -> _Store:
        try:
            import tensorstore
        except ImportError:
            tensorstore = None
        ocdbt, zarr3 = metadata.get("use_ocdbt", True) is not False, metadata.get("use_zarr3") is True
        return _Store(path, ocdbt, zarr3, tensorstore)

    def spec(self, name: str) -> dict[str, Any]:
        """The tensorstore spec Orbax writes an array with: zarr (v2 or v3) in an OCDBT database or in files."""
        driver = "zarr3" if self.zarr3 else "zarr"
        if self.ocdbt:
            kvstore = {"driver": "ocdbt", "base": {"driver": "file", "path": f"{self.path}/"}, "path": name}
        else:
            kvstore = {"driver": "file", "path": f"{paths.inside(self.path, name)}/"}
        return {"driver": driver, "kvstore": kvstore}

    def start_opening(self, names: list[str]) -> None:
        """Open every array at once (tensorstore reads their metadata concurrently), rather than one by one."""
        if self.ts is not None:
            for name in names:
                with contextlib.suppress(Exception):  # a failure is reported when the array is asked for
                    self._opening[name] = self.ts.open(self.spec(name), open=True, read=True)

    def _open(self, name: str) -> Any:
        try:
            future = self._opening.pop(name, None) or self.ts.open(self.spec(name), open=True, read=True)
            return future.result()
        except Exception as error:  # tensorstore reports every failure as ValueError or its own status errors
            raise CorruptFileError(self.path, f"array {name}: {str(error).splitlines()[0][:300]}") from None

    def array(self, name: str, value_type: str, shape: tuple[int, ...] | None) -> Any:
        if self.ts is None:
            if shape is None:  # NumPy arrays: Orbax records their shape only in the zarr metadata
                return OpaqueObject(value_type, note=f"shape and dtype unknown: {INSTALL_HINT}")
            return _tensor(name, UNKNOWN, shape, Stream(_needs_tensorstore, 0))
        array = self._open(name)
        dtype = dtypes.from_numpy(array.dtype.numpy_dtype)
        if dtype is None or dtype.numpy_name is None:
            return OpaqueObject(f"{value_type}[{array.dtype.name}]", note="a dtype paramctl does not read")
        stored = tuple(int(n) for n in array.shape)
        if shape is not None and stored != shape:
            raise CorruptFileError(self.path, f"array {name}: the metadata says shape {list(shape)}, it has {stored}")
        nbytes = math.prod(stored) * dtype.itemsize
        reader = lambda: io.BufferedReader(_ArrayReader(array, dtype.itemsize, self.path, name))  # noqa: E731
        return _tensor(name, dtype, stored, Stream(reader, nbytes))

    def scalar(self, name: str) -> Any:
        """A Python scalar, which Orbax stores as a 0-d array and restores as an int or a float."""
        if self.ts is None:
            return OpaqueObject("scalar", note=f"value unknown: {INSTALL_HINT}")
        values = self._open(name).read().result()
        if values.shape != ():
            raise CorruptFileError(self.path, f"scalar {name}: stored with shape {list(values.shape)}")
        return values[()].item()


def _tensor(name: str, dtype: DType, shape: tuple[int, ...], data: Stream) -> Tensor:
    storage = Storage(name, data.nbytes, data)
    return Tensor(dtype, shape, contiguous_strides(shape), storage)


def _needs_tensorstore() -> Any:
    raise UsageError(INSTALL_HINT)


class _ArrayReader(io.RawIOBase):
    """An array's row-major bytes, read from tensorstore a block of leading-axis rows at a time."""

    def __init__(self, array: Any, itemsize: int, path: pathlib.Path, name: str) -> None:
        self._array, self._path, self._name = array, path, name
        shape = tuple(array.shape)
        row_bytes = math.prod(shape[1:]) * itemsize
        self._rows = shape[0] if shape else 1
        self._block = max(1, BLOCK_BYTES // max(row_bytes, 1))
        self._next_row = 0
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not len(self._pending):
            if self._next_row >= self._rows:
                return 0
            stop = min(self._rows, self._next_row + self._block)
            try:
                selected = self._array if self._array.ndim == 0 else self._array[self._next_row : stop]
                values = selected.read().result()
            except Exception as error:  # tensorstore's status errors: a damaged or missing chunk
                problem = str(error).splitlines()[0][:300]
                raise CorruptFileError(self._path, f"array {self._name}: {problem}") from None
            self._next_row += self._block
            self._pending = memoryview(values.tobytes())
        n = min(len(buffer), len(self._pending))
        memoryview(buffer).cast("B")[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n
