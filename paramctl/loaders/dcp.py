"""Distributed checkpoints saved by `torch.distributed.checkpoint` (DCP): a folder with `.metadata` and rank files.

Layout (torch 2.13, torch/distributed/checkpoint/metadata.py and filesystem.py):

- `.metadata` is `pickle.dump(Metadata)`: `state_dict_metadata` maps each flattened name (fqn) to a
  `TensorStorageMetadata(properties, size, chunks=[ChunkStorageMetadata(offsets, sizes)])` or a
  `BytesStorageMetadata()` (a plain value); `storage_data` maps `MetadataIndex(fqn, offset)` (the chunk's offsets,
  or no offset for a value) to `_StorageInfo(relative_path, offset, length[, transform_descriptors])`; `version`
  is "1.0.0"; `planner_data` and `storage_meta` (checkpoint and save ids) are not needed. `TensorProperties`
  pickles as a tuple (dtype, layout, requires_grad, memory-format encoding, pin_memory), layouts as
  `torch.serialization._get_layout(name)`, `torch.Size` as a call, and `_StorageInfo` and `MetadataIndex` leave
  out fields that are None. torch reads it with a bare `pickle.load`; paramctl reads it with its restricted
  unpickler and accepts only these classes (ALLOWED), so a hostile `.metadata` runs nothing and is refused.
- Rank files `__<rank>_<n>.distcp` hold each item at its (offset, length). A plain value is a `torch.save(obj)`
  archive (torch loads it with weights_only=False). A tensor chunk, in the default format, is a `torch.save(chunk)`
  archive; with `serialization_format=SAFETENSORS` nothing is written per chunk: the file ends with one safetensors
  blob holding its chunks by fqn (`DCP_SHARDING_INFO` in the blob's metadata gives each one's `saved_offsets`), and
  every chunk's record points at the blob's start with the chunk's byte count as its length.

Each tensor becomes one logical tensor whose storage is a `Blocks` of its chunks, found lazily: listing a folder
reads `.metadata` and the small value records, and only checks each chunk's range against its file's size (and,
in registry.open, that the chunks tile the tensor). Recorded file names must stay inside the folder (paths.py).
"""

from __future__ import annotations

import json
import math
import pathlib
import re
import threading
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from paramctl import paths
from paramctl.dtypes import DType
from paramctl.errors import CorruptFileError, FileError
from paramctl.loaders import pytorch, safetensors
from paramctl.pickles import (
    INT64_MAX,
    Global,
    PickleError,
    PickleScan,
    Unpickler,
    expansion_problem,
    scan_pickle,
    short_repr,
)
from paramctl.probe import Probe
from paramctl.source import ByteSource, FileSource, SliceSource
from paramctl.tree import (
    Block,
    Blocks,
    Leaf,
    Opaque,
    OpaqueObject,
    Path,
    Storage,
    Tensor,
    Tree,
    contiguous_strides,
    name_of,
    split_key,
)

METADATA = ".metadata"
MAX_METADATA = 1 << 30  # a .metadata beyond 1 GiB is not a checkpoint's index

_DCP = "torch.distributed.checkpoint.metadata."
METADATA_CLASS = _DCP + "Metadata"
TENSOR_CLASS = _DCP + "TensorStorageMetadata"
BYTES_CLASS = _DCP + "BytesStorageMetadata"
CHUNK_CLASS = _DCP + "ChunkStorageMetadata"
INDEX_CLASS = _DCP + "MetadataIndex"
STORAGE_INFO_CLASS = "torch.distributed.checkpoint.filesystem._StorageInfo"
PROPERTIES_CLASSES = {
    _DCP + "TensorProperties",
    "torch.distributed._shard.sharded_tensor.metadata.TensorProperties",  # where torch < 2.1 defined it
}
# Every global a DCP `.metadata` may name; anything else is refused before the file is interpreted.
ALLOWED = {
    METADATA_CLASS,
    TENSOR_CLASS,
    BYTES_CLASS,
    CHUNK_CLASS,
    INDEX_CLASS,
    STORAGE_INFO_CLASS,
    *PROPERTIES_CLASSES,
    _DCP + "StorageMeta",
    _DCP + "_MEM_FORMAT_ENCODING",
    "torch.distributed._shard.sharded_tensor.metadata.MEM_FORMAT_ENCODING",
    "torch.serialization._get_layout",
    "torch.strided",  # a layout pickled by name (older torch)
    *(f"{module}.{cls}" for module in ("pathlib", "pathlib._local") for cls in ("Path", "PosixPath", "WindowsPath")),
    *(f"{module}.{cls}" for module in ("pathlib", "pathlib._local") for cls in ("PurePosixPath", "PureWindowsPath")),
}

SCAN_NOTES = [
    "torch loads .metadata with a bare pickle.load: every global it names is imported and called",
    "plain values are torch.save records inside the rank files, loaded with torch.load(weights_only=False)",
    "tensor chunks are torch.save records loaded with torch.load(weights_only=True) (the safetensors variant has none)",
]


class DcpLoader:
    name = "dcp"
    description = "torch.distributed.checkpoint folders (.metadata and __<rank>_<n>.distcp rank files)"
    scan_notes = SCAN_NOTES

    def sniff_directory(self, path: pathlib.Path) -> bool:
        return (path / METADATA).is_file()

    def load_directory(self, path: pathlib.Path) -> Tree:
        folder = _Folder(path)
        index = _read_index(folder)
        tree = Tree(str(path), "dcp")
        chunks: dict[str, list[dict[str, Any]]] = {}
        records: dict[str, dict[str, Any]] = {}
        for fqn, entry in index.entries:
            if entry is None:
                record = index.record(fqn, None)
                records[fqn] = record.as_json()
                tree.leaves += _value_leaves(folder, fqn, record)
            else:
                tensor = _tensor(folder, index, fqn, entry)
                chunks[fqn] = [index.record(fqn, c.offsets).as_json(c) for c in entry.chunks]
                tree.leaves.append((split_key(fqn), tensor))
        files = {r["file"] for r in records.values()} | {c["file"] for cs in chunks.values() for c in cs}
        tree.metadata = {
            "version": index.version,
            "files": sorted(files, key=_natural),
            "chunks": chunks,
            "records": records,
        }
        return tree

    def pickles_directory(self, path: pathlib.Path) -> list[PickleScan]:
        """Every pickle torch would load from the folder (for `scan`): `.metadata` first, then each value record's
        and tensor chunk's `torch.save` archive. When `.metadata` cannot be interpreted, only it is scanned."""
        folder = _Folder(path)
        data = _metadata_bytes(folder)
        scans = [scan_pickle(data, METADATA)]
        try:
            index = _read_index(folder, data)
        except FileError:
            return scans
        for (fqn, _), record in index.records.items():
            place = f"{record.file}@{record.offset}"
            try:
                source = folder.source(record.file, f"the record of {fqn}")
                probe = Probe(SliceSource(source, record.offset, record.length))
                if pytorch.LOADER.sniff(probe):  # else a safetensors blob: no pickle
                    scans += [replace(s, record=f"{place}/{s.record}") for s in pytorch.LOADER.pickles(probe)]
            except FileError:
                continue  # a missing file or a broken record: load_directory reports it
        return scans


LOADER = DcpLoader()


# --------------------------------------------------------------------------- the folder and its files


class _Folder:
    """The checkpoint folder: its rank files opened once each (read-only maps: nothing is read until asked)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.metadata_path = str(path / METADATA)
        self._sources: dict[str, ByteSource] = {}
        self._blobs: dict[tuple[str, int], _Blob] = {}
        self._lock = threading.Lock()  # chunks are loaded from reader threads

    def source(self, relative: str, holds: str) -> ByteSource:
        """A rank file by its recorded name; `holds` says what it holds, for the message when it is missing."""
        if relative not in self._sources:
            # torch joins the recorded name to the folder as it is: an absolute name or `..` would read elsewhere.
            if problem := paths.key_problem(relative):
                raise CorruptFileError(
                    self.metadata_path, f"{holds} is in {relative!r}, which {problem}: not a file inside the folder"
                )
            path = paths.inside(self.path, relative)
            try:
                self._sources[relative] = FileSource(path)
            except FileError as error:
                raise FileError(path, f"{error.problem} (the rank file holding {holds})") from None
        return self._sources[relative]

    def blob(self, relative: str, offset: int) -> _Blob:
        """The safetensors blob that starts at `offset` of a rank file, parsed once."""
        with self._lock:
            key = (relative, offset)
            if key not in self._blobs:
                source = self._sources[relative]
                self._blobs[key] = _Blob.parse(SliceSource(source, offset, source.size - offset))
            return self._blobs[key]


def _natural(name: str) -> list[Any]:
    """`__2_0.distcp` before `__10_0.distcp`: digit runs compare as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part]


def _metadata_bytes(folder: _Folder) -> memoryview:
    source = FileSource(folder.metadata_path)
    if source.size == 0:
        raise CorruptFileError(folder.metadata_path, "empty file")
    if source.size > MAX_METADATA:
        raise CorruptFileError(folder.metadata_path, f"{source.size:,} bytes: too large for a DCP .metadata")
    return source.view(0, source.size)


# --------------------------------------------------------------------------- .metadata as plain data


@dataclass(frozen=True)
class _Chunk:
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]


@dataclass(frozen=True)
class _TensorEntry:
    dtype: DType
    shape: tuple[int, ...]
    chunks: tuple[_Chunk, ...]


@dataclass(frozen=True)
class _Record:
    """A `_StorageInfo`: where an item lies in which rank file."""

    file: str
    offset: int
    length: int
    transforms: tuple[str, ...] = ()

    def as_json(self, chunk: _Chunk | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.file, "offset": self.offset, "length": self.length}
        if chunk is not None:
            out |= {"offsets": list(chunk.offsets), "sizes": list(chunk.sizes)}
        if self.transforms:
            out["transforms"] = list(self.transforms)
        return out


@dataclass
class _Index:
    """What `.metadata` says, as plain data."""

    path: str
    version: str | None
    entries: list[tuple[str, _TensorEntry | None]]  # in file order; None for a plain value
    records: dict[tuple[str, tuple[int, ...] | None], _Record]

    def record(self, fqn: str, offsets: tuple[int, ...] | None) -> _Record:
        if (fqn, offsets) not in self.records:
            what = f"chunk {list(offsets)} of tensor {fqn}" if offsets is not None else f"value {fqn}"
            raise CorruptFileError(self.path, f"{what} has no storage record")
        return self.records[fqn, offsets]


class _Bad(Exception):
    """`.metadata` breaks DCP's format (turned into a CorruptFileError naming the file)."""


def _read_index(folder: _Folder, data: memoryview | None = None) -> _Index:
    data = _metadata_bytes(folder) if data is None else data
    try:
        obj = Unpickler(data, _no_persistent_ids).load()
    except PickleError as error:
        raise CorruptFileError(folder.metadata_path, str(error)) from None
    if problem := expansion_problem(obj, len(data)):
        raise CorruptFileError(folder.metadata_path, problem)
    try:
        _check_globals(obj)
        return _index(folder.metadata_path, obj)
    except _Bad as error:
        raise CorruptFileError(folder.metadata_path, str(error)) from None


def _no_persistent_ids(pid: Any) -> Any:
    raise PickleError(f"unexpected persistent id {short_repr(pid)} (DCP metadata has none)")


def _check_globals(obj: Any) -> None:
    """Refuse a `.metadata` that builds or calls anything outside ALLOWED, wherever it is: only DCP's own classes
    are data. A `torch.*` name merely referenced (a dtype paramctl does not know) is reported where it is used."""
    seen: set[int] = set()
    pending = [obj]
    while pending:
        item = pending.pop()
        if isinstance(item, Global):
            name = None if item.module == "torch" else item.qualname
        elif isinstance(item, OpaqueObject):
            name = item.global_name
        else:
            name = None
        if name is not None and name not in ALLOWED:
            raise _Bad(
                f"names {name}, which is not part of DCP metadata: a hostile or foreign pickle "
                "(paramctl scan shows what loading it would run); nothing was executed"
            )
        if id(item) in seen or not isinstance(item, (dict, list, tuple, set, frozenset, OpaqueObject)):
            continue
        seen.add(id(item))
        if isinstance(item, OpaqueObject):
            pending.append(item.contents)
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        else:
            pending.extend(item)


def _fields(obj: Any, classes: set[str] | str, what: str) -> dict[str, Any]:
    """A dataclass instance's fields (its pickled `__dict__`); fields pickled as None may be absent."""
    classes = {classes} if isinstance(classes, str) else classes
    if not isinstance(obj, OpaqueObject) or obj.global_name not in classes:
        found = obj.global_name if isinstance(obj, OpaqueObject) else type(obj).__name__
        raise _Bad(f"{what} is a {found}, not a {' or '.join(sorted(c.rsplit('.', 1)[-1] for c in classes))}")
    contents = {} if obj.contents is None else obj.contents
    if not isinstance(contents, dict) or not all(isinstance(k, str) for k in contents):
        raise _Bad(f"{what}: malformed {obj.global_name.rsplit('.', 1)[-1]} record {short_repr(contents)}")
    return contents


def _int(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value <= INT64_MAX:
        raise _Bad(f"{what} is {short_repr(value)}, not a non-negative integer")
    return value


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)):
        raise _Bad(f"{what} is {short_repr(value)}, not a tuple of integers")
    return tuple(_int(v, what) for v in value)


def _index(path: str, obj: Any) -> _Index:
    root = _fields(obj, METADATA_CLASS, "the pickled object")
    state = root.get("state_dict_metadata")
    if not isinstance(state, dict):
        raise _Bad(f"state_dict_metadata is {short_repr(state)}, not a dict")
    entries: list[tuple[str, _TensorEntry | None]] = []
    for fqn, item in state.items():
        if not isinstance(fqn, str):
            raise _Bad(f"state_dict_metadata key {short_repr(fqn)} is not a name")
        if isinstance(item, OpaqueObject) and item.global_name == BYTES_CLASS:
            entries.append((fqn, None))
        else:
            entries.append((fqn, _tensor_entry(fqn, _fields(item, {TENSOR_CLASS, BYTES_CLASS}, f"entry {fqn}"))))
    storage = root.get("storage_data")
    if not isinstance(storage, dict):
        raise _Bad(f"storage_data is {short_repr(storage)}, not a dict (not written by a FileSystemWriter?)")
    records: dict[tuple[str, tuple[int, ...] | None], _Record] = {}
    for key, info in storage.items():
        index = _fields(key, INDEX_CLASS, "a storage_data key")
        fqn, offsets = index.get("fqn"), index.get("offset")
        if not isinstance(fqn, str):
            raise _Bad(f"a storage_data key names {short_repr(fqn)}, not a tensor or value name")
        at = None if offsets is None else _ints(offsets, f"the offset of a storage record of {fqn}")
        if (fqn, at) in records:
            raise _Bad(f"two storage records for {fqn} at {at}")
        records[fqn, at] = _record(fqn, _fields(info, STORAGE_INFO_CLASS, f"the storage record of {fqn}"))
    version = root.get("version")
    return _Index(path, version if isinstance(version, str) else None, entries, records)


def _tensor_entry(fqn: str, fields: dict[str, Any]) -> _TensorEntry:
    dtype = _dtype(fqn, fields.get("properties"))
    shape = _ints(fields.get("size"), f"the size of {fqn}")
    chunks = fields.get("chunks")
    if not isinstance(chunks, list):
        raise _Bad(f"the chunks of {fqn} are {short_repr(chunks)}, not a list")
    parsed = []
    for chunk in chunks:
        chunk_fields = _fields(chunk, CHUNK_CLASS, f"a chunk of {fqn}")
        offsets = _ints(chunk_fields.get("offsets"), f"the offsets of a chunk of {fqn}")
        sizes = _ints(chunk_fields.get("sizes"), f"the sizes of a chunk of {fqn}")
        parsed.append(_Chunk(offsets, sizes))
    return _TensorEntry(dtype, shape, tuple(parsed))


def _dtype(fqn: str, properties: Any) -> DType:
    """TensorProperties: a (dtype, layout, requires_grad, memory format, pin_memory) tuple, or a field dict."""
    if not isinstance(properties, OpaqueObject) or properties.global_name not in PROPERTIES_CLASSES:
        raise _Bad(f"the properties of {fqn} are {short_repr(properties)}, not TensorProperties")
    state = properties.contents
    dtype = state[0] if isinstance(state, tuple) and state else state.get("dtype") if isinstance(state, dict) else None
    if not isinstance(dtype, DType):
        name = dtype.qualname if isinstance(dtype, Global) else short_repr(dtype)
        raise _Bad(f"tensor {fqn} has dtype {name}, which paramctl does not know")
    return dtype


def _record(fqn: str, fields: dict[str, Any]) -> _Record:
    file = fields.get("relative_path")
    if not isinstance(file, str):
        raise _Bad(f"the storage record of {fqn} names file {short_repr(file)}")
    transforms = fields.get("transform_descriptors") or ()
    if not isinstance(transforms, (list, tuple)) or not all(isinstance(t, str) for t in transforms):
        raise _Bad(f"the storage record of {fqn} has transforms {short_repr(transforms)}")
    offset = _int(fields.get("offset"), f"the offset in the storage record of {fqn}")
    length = _int(fields.get("length"), f"the length in the storage record of {fqn}")
    return _Record(file, offset, length, tuple(transforms))


# --------------------------------------------------------------------------- tensors: chunks as blocks


def _tensor(folder: _Folder, index: _Index, fqn: str, entry: _TensorEntry) -> Tensor:
    """One logical tensor from its chunks: every chunk's record found and inside its file; the chunks' own bytes
    are found when first read. That they tile the shape exactly once is checked by registry.open, as for every
    Blocks storage."""
    blocks = []
    for chunk in entry.chunks:
        record = index.record(fqn, chunk.offsets)
        what = f"chunk {list(chunk.offsets)} of tensor {fqn}"
        source = folder.source(record.file, what)
        _check_inside(source, record, what)
        load = partial(_load_chunk, folder, record, fqn, chunk, entry.dtype)
        blocks.append(Block(chunk.offsets, chunk.sizes, load))
    storage = Storage(fqn, entry.dtype.itemsize * math.prod(entry.shape), Blocks(entry.shape, tuple(blocks)))
    return Tensor(entry.dtype, entry.shape, contiguous_strides(entry.shape), storage)


def _check_inside(source: ByteSource, record: _Record, what: str) -> None:
    """An item's recorded range must lie inside its rank file (a truncated file, or a lying record)."""
    end = record.offset + record.length
    if end > source.size:
        raise CorruptFileError(
            source.name, f"{what} lies outside the file: bytes {record.offset}-{end} of {source.size}"
        )


def _load_chunk(folder: _Folder, record: _Record, fqn: str, chunk: _Chunk, dtype: DType) -> Tensor:
    """A chunk's values as a lazy tensor: a `torch.save` archive at its record, or its entry in the file's
    safetensors blob (which starts at the record's offset)."""
    source = folder.source(record.file, f"chunk {list(chunk.offsets)} of tensor {fqn}")
    what = f"chunk {list(chunk.offsets)} of tensor {fqn}"
    if record.transforms:
        raise FileError(source.name, f"{what} is stored through {', '.join(record.transforms)}: not readable here")
    try:
        if source.read(record.offset, min(4, record.length)) == b"PK\x03\x04":
            tensor = _archive_chunk(SliceSource(source, record.offset, record.length), what)
        else:
            tensor = folder.blob(record.file, record.offset).chunk(fqn, chunk, what)
    except CorruptFileError as error:  # say which chunk a damaged archive or blob was read for
        raise CorruptFileError(
            error.path, error.problem if what in error.problem else f"{what}: {error.problem}"
        ) from None
    if tensor.dtype != dtype or tensor.shape != chunk.sizes:
        raise CorruptFileError(
            source.name,
            f"{what} holds {tensor.dtype.name} {list(tensor.shape)}, not {dtype.name} {list(chunk.sizes)}",
        )
    return tensor


def _archive_chunk(source: SliceSource, what: str) -> Tensor:
    """`torch.save(chunk)`: an archive whose pickle is one tensor."""
    from paramctl import registry  # imported when used, as sharded.py does: the registry sits above the loaders

    probe = Probe(source)
    if not pytorch.LOADER.sniff(probe):
        raise CorruptFileError(source.name, f"{what} is not a torch.save archive")
    tree = registry.load(probe, pytorch.LOADER)  # validated: a bad layout is reported as this chunk's
    if len(tree.leaves) != 1 or not isinstance(tree.leaves[0][1], Tensor) or tree.leaves[0][0]:
        raise CorruptFileError(source.name, f"{what} holds {len(tree.leaves)} leaves, not one tensor")
    return tree.leaves[0][1]


@dataclass
class _Blob:
    """The safetensors blob at the end of a rank file (serialization_format=SAFETENSORS): its tensors by name and
    the chunk offsets DCP recorded for them."""

    name: str
    tensors: dict[str, Tensor]
    saved_offsets: dict[str, Any]

    @classmethod
    def parse(cls, source: SliceSource) -> _Blob:
        probe = Probe(source)
        if not safetensors.LOADER.sniff(probe):
            raise CorruptFileError(source.name, "neither a torch.save archive nor a safetensors blob")
        tree = safetensors.LOADER.load(probe)
        try:
            info = json.loads(tree.metadata.get("DCP_SHARDING_INFO", "{}"))
        except ValueError:
            raise CorruptFileError(source.name, "DCP_SHARDING_INFO in the safetensors metadata is not JSON") from None
        entries = info.items() if isinstance(info, dict) else ()
        saved = {fqn: entry.get("saved_offsets") for fqn, entry in entries if isinstance(entry, dict)}
        return cls(source.name, dict(tree.tensors()), saved)

    def chunk(self, fqn: str, chunk: _Chunk, what: str) -> Tensor:
        name = name_of(split_key(fqn, "./"))  # as the safetensors loader names it
        if name not in self.tensors:
            raise CorruptFileError(self.name, f"{what}: the safetensors data has no tensor {fqn!r}")
        saved = self.saved_offsets.get(fqn)
        if saved is not None and tuple(saved) != chunk.offsets:
            raise CorruptFileError(
                self.name, f"{what}: the safetensors data holds the chunk at {saved} instead (one chunk per name)"
            )
        return self.tensors[name]


# --------------------------------------------------------------------------- plain values


def _value_leaves(folder: _Folder, fqn: str, record: _Record) -> list[tuple[Path, Leaf]]:
    """A plain value's record (`torch.save(obj)`) read through the torch loader, its leaves under the value's name;
    a record that cannot be read is a placeholder saying why and how large it is."""
    from paramctl import registry  # imported when used, as sharded.py does: the registry sits above the loaders

    prefix = split_key(fqn)
    source = folder.source(record.file, f"value {fqn}")
    _check_inside(source, record, f"value {fqn}")
    where = f"{record.length:,} bytes at {record.file}@{record.offset}"
    if record.transforms:
        return [(prefix, Opaque("<unreadable record>", f"{where}, stored through {', '.join(record.transforms)}"))]
    try:
        probe = Probe(SliceSource(source, record.offset, record.length))
        if not pytorch.LOADER.sniff(probe):
            raise CorruptFileError(source.name, "not a torch.save archive")
        tree = registry.load(probe, pytorch.LOADER)  # validated: a bad layout makes the record unreadable
    except CorruptFileError as error:
        return [(prefix, Opaque("<unreadable record>", f"{where}: {error.problem}"))]
    return [(prefix + path, leaf) for path, leaf in tree.leaves]
