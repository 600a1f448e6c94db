"""PyTorch checkpoints written by `torch.save`: the zip archive (torch >= 1.6) and the legacy pre-1.6 stream.

Zip layout (torch/serialization.py `_save`): `<archive>/data.pkl` is the pickled object; each storage is the
stored record `<archive>/data/<key>`, named by the persistent id `('storage', StorageClass, key, location, numel)`;
`<archive>/byteorder` says `little` or `big` when present (absent means little).

Legacy layout (`_legacy_save`): five pickles in a row (magic number, protocol version, sys info, the object with
persistent ids `('storage', StorageClass, key, location, numel, view_metadata)`, the sorted list of storage keys),
then for each key in that order an int64 little-endian element count followed by the storage's raw bytes.
"""

from __future__ import annotations

import zipfile
from typing import Any

from paramctl.errors import CorruptFileError
from paramctl.pickles import (
    INT64_MAX,
    PagedBytes,
    PickleError,
    PickleScan,
    StorageRef,
    StorageType,
    Unpickler,
    expansion_problem,
    scan_pickle,
    short_repr,
)
from paramctl.probe import Probe
from paramctl.tree import ByteRange, Leaf, Path, Storage, Stream, TooDeepError, Tree, flatten

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
_MAX_PICKLE = 1 << 30  # a data.pkl beyond 1 GiB is not a checkpoint's metadata


class TorchLoader:
    name = "torch"
    description = "PyTorch torch.save files: zip archives (.pt .pth .bin .ckpt) and the legacy pre-1.6 format"

    def sniff(self, probe: Probe) -> bool:
        if probe.is_zip:
            prefix = _archive_prefix(probe)
            # A TorchScript archive (constants.pkl beside data.pkl, torch's own test) is loaders/torchscript.py's.
            return prefix is not None and f"{prefix}constants.pkl" not in probe.zip_names
        return _is_legacy(probe.head)

    def load(self, probe: Probe) -> Tree:
        try:
            tree = _load_zip(probe) if probe.is_zip else _load_legacy(probe)
        except PickleError as error:
            raise CorruptFileError(probe.name, str(error)) from None
        except TooDeepError as error:
            raise CorruptFileError(probe.name, str(error)) from None
        return tree  # layouts are checked by registry.load, for every loader

    def pickles(self, probe: Probe) -> list[PickleScan]:
        """Every pickle in the file, scanned without rebuilding anything (for `scan`): in a zip, every `.pkl`
        member (the one torch loads first); in the legacy format, the five pickles in a row until one breaks."""
        return _zip_pickles(probe) if probe.is_zip else _legacy_pickles(probe)


LOADER = TorchLoader()

LEGACY_PICKLES = ("magic number", "protocol version", "sys info", "object", "storage keys")


def _zip_pickles(probe: Probe, require_data_pkl: bool = True, also: list[str] | None = None) -> list[PickleScan]:
    """Every `.pkl` member (and the members in `also`, pickles by content) scanned without rebuilding anything:
    `data.pkl` first (the one torch reads), then the rest in archive order."""
    prefix = _archive_prefix(probe)
    if probe.zip is None or (prefix is None and require_data_pkl):
        raise CorruptFileError(probe.name, "not a torch zip archive: it holds no data.pkl")
    extra = set(also or ())
    names = [n for n in probe.zip_names if n.endswith(".pkl") or n in extra]
    names.sort(key=lambda n: n != f"{prefix or ''}data.pkl")  # stable: the rest keep archive order
    scans = []
    for name in names:
        try:
            data = probe.read_member(probe.zip.getinfo(name), _MAX_PICKLE)
        except CorruptFileError as error:
            scans.append(PickleScan(name, 0, None, None, [], {}, set(), error.problem))
            continue
        scans.append(scan_pickle(data, name))
    return scans


def _legacy_pickles(probe: Probe) -> list[PickleScan]:
    data, position, scans = PagedBytes(probe.source, _MAX_PICKLE), 0, []
    for role in LEGACY_PICKLES:
        scan = scan_pickle(data, role, position)
        scans.append(scan)
        if scan.end is None:
            break
        position = scan.end
    return scans


def _archive_prefix(probe: Probe) -> str | None:
    """The `<archive>/` folder holding data.pkl (any name: torch uses the file's stem, or `archive`).

    torch's reader (caffe2/serialize/inline_container.cc) takes the folder of the archive's first member and reads
    `<folder>/data.pkl`; that rule comes first, so paramctl shows the pickle torch would load."""
    names = probe.zip_names
    if names and "/" in names[0] and f"{names[0].split('/', 1)[0]}/data.pkl" in names:
        return f"{names[0].split('/', 1)[0]}/"
    for name in names:
        if name.endswith("data.pkl") and name.count("/") <= 1:
            prefix = name[: -len("data.pkl")]
            if prefix in ("", f"{prefix.rstrip('/')}/"):
                return prefix
    return None


def _storage_pid(pid: Any, fields: int, file: str) -> tuple[StorageType, str, str, int]:
    """Validate a persistent id `('storage', StorageClass, key, location, numel, ...)`."""
    if not (isinstance(pid, tuple) and len(pid) == fields and pid[0] == "storage"):
        raise CorruptFileError(file, f"unexpected persistent id in the pickle: {short_repr(pid)}")
    _, storage_type, key, location, numel = pid[:5]
    if not isinstance(storage_type, StorageType):
        raise CorruptFileError(file, f"persistent id names {short_repr(storage_type)}, not a torch storage class")
    if not isinstance(key, str) or not isinstance(location, str) or type(numel) is not int or numel < 0:
        raise CorruptFileError(file, f"malformed storage record: {short_repr(pid)}")
    if numel > INT64_MAX:
        raise CorruptFileError(file, f"storage {key!r} claims {numel} elements, which overflows int64")
    return storage_type, key, location, numel


def _flatten(obj: Any, pickle_size: int, file: str) -> list[tuple[Path, Leaf]]:
    """The leaves, once the object is known not to explode through shared references."""
    if problem := expansion_problem(obj, pickle_size):
        raise CorruptFileError(file, problem)
    return flatten(obj)


def _load_zip(probe: Probe) -> Tree:
    prefix = _archive_prefix(probe)
    if probe.zip is None or prefix is None:  # only when the format is forced on another kind of zip
        raise CorruptFileError(probe.name, "not a torch zip archive: it holds no data.pkl")
    archive = probe.zip
    members = {info.filename: info for info in archive.infolist()}

    def member(name: str) -> zipfile.ZipInfo:
        if prefix + name not in members:
            raise CorruptFileError(probe.name, f"missing record {prefix + name!r}")
        return members[prefix + name]

    def member_bytes(name: str, limit: int) -> bytes:
        return probe.read_member(member(name), limit)

    byteorder = "little"
    if prefix + "byteorder" in members:
        byteorder = member_bytes("byteorder", 16).decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise CorruptFileError(probe.name, f"byteorder record says {byteorder!r}")
    storages: dict[str, Storage] = {}  # by key: the record is `<archive>/data/<key>`

    def persistent_load(pid: Any) -> StorageRef:
        storage_type, key, location, numel = _storage_pid(pid, 5, probe.name)
        if key not in storages:
            itemsize = storage_type.dtype.itemsize if storage_type.dtype else 1
            info = member(f"data/{key}")
            nbytes = numel * itemsize
            if info.file_size < nbytes:
                raise CorruptFileError(
                    probe.name, f"record {info.filename!r} has {info.file_size} bytes, the storage needs {nbytes}"
                )
            storages[key] = Storage(key, nbytes, _member_data(probe, archive, info, nbytes), location, byteorder)
        return StorageRef(storages[key], storage_type.dtype)

    pickle = member_bytes("data.pkl", _MAX_PICKLE)
    obj = Unpickler(pickle, persistent_load).load()
    metadata: dict[str, Any] = {"archive": prefix.rstrip("/"), "byteorder": byteorder}
    if prefix + ".data/version" in members:
        metadata["version"] = member_bytes(".data/version", 64).decode("ascii", "replace").strip()
    tree = Tree(probe.name, "torch-zip", _flatten(obj, len(pickle), probe.name), metadata)
    records = {f"{prefix}data/{key}": storage for key, storage in storages.items()}
    note_unreferenced(tree, probe.zip_names, prefix, records, [f"{prefix}data/"])
    return tree


UNREFERENCED = "unreferenced_storages"  # the metadata key: storage records of the file no listed tensor uses


def note_unreferenced(
    tree: Tree, names: list[str], prefix: str, records: dict[str, Storage], folders: list[str], suffix: str = ""
) -> None:
    """Record in `tree.metadata[UNREFERENCED]` the storage records (members directly in one of `folders`, ending in
    `suffix`) that no listed tensor uses, relative to the archive folder: a pickle paramctl does not list, or one
    that drops a storage, must not pass for a file with fewer tensors. `records` maps the records the pickles
    referenced to their storages."""
    listed = {id(tensor.storage) for _, tensor in tree.tensors()}
    unused = [
        name[len(prefix) :]
        for name in names
        if any(name.startswith(folder) and "/" not in name[len(folder) :] for folder in folders)
        and name.endswith(suffix)
        and (name not in records or id(records[name]) not in listed)
    ]
    if unused:
        tree.metadata[UNREFERENCED] = unused


def _member_data(probe: Probe, archive: zipfile.ZipFile, info: zipfile.ZipInfo, nbytes: int) -> ByteRange | Stream:
    """A storage's bytes: in place when stored (the usual case), else streamed through `Probe.open_member`. Its
    local header is read (and checked) only when its bytes are: listing reads no member but the pickles."""
    if info.compress_type == zipfile.ZIP_STORED:
        return ByteRange(probe.stored_member(info), 0, nbytes)
    probe.check_entry(info)
    return Stream(lambda: probe.open_member(info), nbytes)


def _is_legacy(head: bytes) -> bool:
    try:
        return Unpickler(head[:64], _no_persistent_ids).load() == MAGIC_NUMBER
    except PickleError:
        return False


def _no_persistent_ids(pid: Any) -> Any:
    raise PickleError(f"unexpected persistent id {short_repr(pid, 80)}")


def _load_legacy(probe: Probe) -> Tree:
    data = PagedBytes(probe.source, _MAX_PICKLE)
    position = 0

    def next_pickle(persistent_load: Any = _no_persistent_ids) -> Any:
        nonlocal position
        unpickler = Unpickler(data, persistent_load, start=position)
        value = unpickler.load()
        position = unpickler.end
        return value

    if next_pickle() != MAGIC_NUMBER:
        raise CorruptFileError(probe.name, "not a legacy torch file: bad magic number")
    version = next_pickle()
    if version != PROTOCOL_VERSION:
        raise CorruptFileError(
            probe.name, f"legacy torch protocol version {short_repr(version, 40)} is not {PROTOCOL_VERSION}"
        )
    sys_info = next_pickle()
    storages: dict[str, tuple[Storage, int]] = {}  # key -> (storage, itemsize of its records)

    def persistent_load(pid: Any) -> StorageRef:
        storage_type, key, location, numel = _storage_pid(pid, 6, probe.name)
        itemsize = storage_type.dtype.itemsize if storage_type.dtype else 1
        if key not in storages:
            storages[key] = (Storage(key, numel * itemsize, None, location), itemsize)
        view = pid[5]
        if view is None:
            return StorageRef(storages[key][0], storage_type.dtype)
        # A storage view (torch < 0.4): (view_key, element offset, element count) into the root storage.
        if not (isinstance(view, tuple) and len(view) == 3 and all(type(v) is int for v in view[1:])):
            raise CorruptFileError(probe.name, f"malformed storage view record: {short_repr(view)}")
        if view[1] < 0 or view[2] < 0 or view[1] + view[2] > numel:
            raise CorruptFileError(
                probe.name, f"storage view of {view[2]} elements at {view[1]} lies outside storage {key!r} ({numel})"
            )
        return StorageRef(storages[key][0], storage_type.dtype, element_offset=view[1])

    object_start = position
    obj = next_pickle(persistent_load)
    object_size = position - object_start
    keys = next_pickle()
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise CorruptFileError(probe.name, "the legacy storage key list is not a list of strings")
    for key in keys:
        if key not in storages:
            raise CorruptFileError(probe.name, f"storage {key!r} is listed but no tensor refers to it")
        storage, itemsize = storages[key]
        probe.source.check_range(position, 8, f"the size of storage {key!r}")
        numel = int.from_bytes(probe.source.read(position, 8), "little", signed=True)
        nbytes = numel * itemsize
        if numel < 0 or nbytes < storage.nbytes:
            raise CorruptFileError(
                probe.name, f"storage {key!r} records {numel} elements, needs {storage.nbytes} bytes"
            )
        probe.source.check_range(position + 8, nbytes, f"storage {key!r}")
        storage.data = ByteRange(probe.source, position + 8, nbytes)
        position += 8 + nbytes
    missing = [key for key, (storage, _) in storages.items() if storage.data is None]
    if missing:
        raise CorruptFileError(probe.name, f"storage {missing[0]!r} has no data record")
    metadata = {"protocol_version": version, "sys_info": _plain_sys_info(sys_info)}
    return Tree(probe.name, "torch-legacy", _flatten(obj, object_size, probe.name), metadata)


def _plain_sys_info(sys_info: Any) -> dict[str, Any] | None:
    """The sys-info record torch writes ({protocol_version, little_endian, type_sizes: {short, int, long}}), kept
    only as plain scalars: it is shown as metadata, and a hostile one could hold anything."""
    if not isinstance(sys_info, dict):
        return None

    def scalar(value: Any) -> Any:
        if isinstance(value, (bool, float, type(None))) or (isinstance(value, int) and abs(value) <= INT64_MAX):
            return value
        return value[:200] if isinstance(value, str) else short_repr(value)

    plain: dict[str, Any] = {}
    for key, value in list(sys_info.items())[:16]:
        name = key[:64] if isinstance(key, str) else short_repr(key)
        if isinstance(value, dict):
            plain[name] = {
                k[:64] if isinstance(k, str) else short_repr(k): scalar(v) for k, v in list(value.items())[:16]
            }
        else:
            plain[name] = scalar(value)
    return plain
