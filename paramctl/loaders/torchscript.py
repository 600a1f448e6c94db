"""TorchScript archives (`torch.jit.save`) and torch.package archives (`torch.package.PackageExporter`): the tensors
their pickles reference, named by the objects' attributes. Nothing is compiled, imported or run: the module classes
(`__torch__.…`, a package's own modules) become placeholders whose attributes are listed beneath them.

TorchScript layout (torch/csrc/jit/serialization/export_module.cpp, import.cpp): a zip whose members sit in one
`<archive>/` folder, like torch.save's; `data.pkl` is the module object (each `__torch__` class instance built with
NEWOBJ and a BUILD state dict of its attributes: parameters, buffers, submodules, plain values), `constants.pkl` the
tuple of tensor constants the code refers to as `CONSTANTS.c0, c1, …` (a frozen module's weights live there); each
pickle's storages are the records of its own folder (`data/<key>`, `constants/<key>`), named by persistent ids
`('storage', StorageClass, key, location, numel)`. `traced_inputs.pkl` (torch.jit.trace's example inputs) is not
listed: torch 2.x writes its storage records empty and torch.jit.load does not restore it. `code/` holds the
TorchScript source, `extra/` the `_extra_files`. torch tells it from a torch.save archive by `constants.pkl`
(torch/serialization.py `_is_torchscript_zip`). Containers are wrapped in `torch.jit._pickle` calls
(build_tensorlist, build_intlist, restore_type_tag, …) that return their argument: unwrapped here.

torch.package layout (torch/package/package_exporter.py): `<archive>/.data/` holds the storages (`<key>.storage`),
`extern_modules` and `version`; each `save_pickle(package, resource, obj)` is the member `<package path>/<resource>`,
a pickle whose persistent ids are `('storage', StorageClass, key, location, numel)` or `('reduce_package', …)` (an
object rebuilt by calling a packaged function: a placeholder, except a ScriptModule, whose TorchScript `data.pkl`
under `.data/ts_code/<id>/` is listed in its place). Every `.pkl` member is listed, under its package and
resource name (`model/model.pkl` → `model.model.…`). An eager `nn.Module` pickles its `__dict__`; its `_parameters`,
`_buffers` and `_modules` are folded into the module's own path, so names read as its `state_dict()` does.
"""

from __future__ import annotations

import re
import zipfile
from typing import Any

from paramctl.errors import CorruptFileError
from paramctl.loaders.pytorch import (
    _MAX_PICKLE,
    _archive_prefix,
    _flatten,
    _member_data,
    _storage_pid,
    _zip_pickles,
    note_unreferenced,
)
from paramctl.pickles import (
    INT64_MAX,
    Global,
    PickleError,
    PickleScan,
    StorageRef,
    StorageType,
    Unpickler,
    short_repr,
)
from paramctl.probe import Probe
from paramctl.tree import MAX_DEPTH, Leaf, OpaqueObject, Path, Storage, TooDeepError, Tree

TORCHSCRIPT, TORCH_PACKAGE = "torchscript", "torch-package"
_TS_CODE = re.compile(r"\.data/ts_code/([^/]+)/data\.pkl")  # a packaged ScriptModule's pickle, by module id
_KEY = re.compile(r"[A-Za-z0-9_]+(\.storage)?")  # a package storage key: a record name in `.data/`, nothing more
# TorchScript pickles in the order torch reads them, each with the folder of its storages and the path prefix its
# objects are listed under.
_SCRIPT_PICKLES = (("data", ()), ("constants", ("CONSTANTS",)))
# torch.jit._pickle's helpers: each returns its first argument (the container, with a type tag for TorchScript).
_IDENTITY_CALLS = {
    f"torch.jit._pickle.{name}"
    for name in ("build_intlist", "build_tensorlist", "build_doublelist", "build_boollist", "restore_type_tag")
}
# What nn.Module.__init__ puts in every module's __dict__ besides its state: hook tables, bookkeeping.
_MODULE_MACHINERY = {
    "_non_persistent_buffers_set",
    "_backward_pre_hooks",
    "_backward_hooks",
    "_is_full_backward_hook",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
}


class TorchScriptLoader:
    name = "torchscript"
    description = "TorchScript archives (torch.jit.save) and torch.package archives, listed without running them"

    def sniff(self, probe: Probe) -> bool:
        return probe.is_zip and kind(probe) is not None

    def load(self, probe: Probe) -> Tree:
        try:
            tree = _load_package(probe) if kind(probe) == TORCH_PACKAGE else _load_script(probe)
        except (PickleError, TooDeepError) as error:
            raise CorruptFileError(probe.name, str(error)) from None
        return tree  # layouts are checked by registry.load, for every loader

    def format_of(self, probe: Probe) -> str:
        """The format name without loading the file (for `scan` of a broken archive)."""
        return kind(probe) or TORCHSCRIPT

    def pickles(self, probe: Probe) -> list[PickleScan]:
        """Every `.pkl` member, scanned without rebuilding anything: for TorchScript `data.pkl` first (the one
        torch reads first), then the rest in archive order."""
        extra = package_pickles(probe) if kind(probe) == TORCH_PACKAGE else []
        return _zip_pickles(probe, require_data_pkl=False, also=extra)


LOADER = TorchScriptLoader()


def kind(probe: Probe) -> str | None:
    """TORCHSCRIPT for a torch zip with `constants.pkl` beside `data.pkl` (torch's own test), TORCH_PACKAGE for a
    zip whose archive folder has `.data/extern_modules` (written by every PackageExporter), else None."""
    names = probe.zip_names
    prefix = _archive_prefix(probe)
    if prefix is not None and f"{prefix}constants.pkl" in names:
        return TORCHSCRIPT
    if names and "/" in names[0] and f"{names[0].split('/', 1)[0]}/.data/extern_modules" in names:
        return TORCH_PACKAGE
    return None


# --------------------------------------------------------------------------- TorchScript


def _load_script(probe: Probe) -> Tree:
    prefix = _archive_prefix(probe)
    if probe.zip is None or prefix is None:
        raise CorruptFileError(probe.name, "not a TorchScript archive: it holds no data.pkl")
    archive = probe.zip
    members = {info.filename: info for info in archive.infolist()}
    byteorder = _byteorder(probe, members, prefix)
    leaves: list[tuple[Path, Leaf]] = []
    records: dict[str, Storage] = {}
    for folder, path in _SCRIPT_PICKLES:
        if f"{prefix}{folder}.pkl" not in members:
            if folder == "data":
                raise CorruptFileError(probe.name, f"missing record {prefix}data.pkl")
            continue
        obj, size = _unpickle(probe, archive, members, prefix, folder, byteorder, records)
        obj = _unwrap(obj)
        if folder == "constants" and isinstance(obj, tuple):  # the code's CONSTANTS.c0, c1, …
            obj = {f"c{index}": value for index, value in enumerate(obj)}
            if not obj:
                continue
        leaves += _flatten_at(obj, size, probe.name, path)
    metadata: dict[str, Any] = {"archive": prefix.rstrip("/"), "byteorder": byteorder}
    if f"{prefix}version" in members:
        metadata["version"] = probe.read_member(members[f"{prefix}version"], 64).decode("ascii", "replace").strip()
    extra = [name[len(prefix) + 6 :] for name in members if name.startswith(f"{prefix}extra/")]
    if extra:
        metadata["extra_files"] = extra
    tree = Tree(probe.name, TORCHSCRIPT, leaves, metadata)
    note_unreferenced(tree, probe.zip_names, prefix, records, [f"{prefix}data/", f"{prefix}constants/"])
    return tree


def _byteorder(probe: Probe, members: dict[str, zipfile.ZipInfo], prefix: str) -> str:
    if prefix + "byteorder" not in members:
        return "little"
    byteorder = probe.read_member(members[prefix + "byteorder"], 16).decode("ascii", "replace").strip()
    if byteorder not in ("little", "big"):
        raise CorruptFileError(probe.name, f"byteorder record says {byteorder!r}")
    return byteorder


def _unpickle(
    probe: Probe,
    archive: zipfile.ZipFile,
    members: dict[str, zipfile.ZipInfo],
    prefix: str,
    folder: str,
    byteorder: str,
    records: dict[str, Storage],
) -> tuple[Any, int]:
    """One TorchScript pickle, its storages read from `<archive>/<folder>/<key>` (and added to `records`, by
    record name)."""
    storages: dict[str, Storage] = {}

    def persistent_load(pid: Any) -> StorageRef:
        storage_type, key, location, numel = _storage_pid(pid, 5, probe.name)
        if key not in storages:
            record = f"{prefix}{folder}/{key}"
            shown = key if folder == "data" else f"{folder}/{key}"  # as torch.save's keys; constants apart
            storages[key] = _storage(probe, archive, members, record, shown, storage_type, numel, location, byteorder)
            records[record] = storages[key]
        return StorageRef(storages[key], storage_type.dtype)

    pickle = probe.read_member(members[f"{prefix}{folder}.pkl"], _MAX_PICKLE)
    return Unpickler(pickle, persistent_load).load(), len(pickle)


def _storage(
    probe: Probe,
    archive: zipfile.ZipFile,
    members: dict[str, zipfile.ZipInfo],
    record: str,
    key: str,
    storage_type: StorageType,
    numel: int,
    location: str,
    byteorder: str,
) -> Storage:
    """A storage record, checked to hold the bytes its persistent id claims."""
    if record not in members:
        raise CorruptFileError(probe.name, f"missing record {record!r}")
    info = members[record]
    nbytes = numel * (storage_type.dtype.itemsize if storage_type.dtype else 1)
    if info.file_size < nbytes:
        raise CorruptFileError(probe.name, f"record {record!r} has {info.file_size} bytes, the storage needs {nbytes}")
    return Storage(key, nbytes, _member_data(probe, archive, info, nbytes), location, byteorder)


def _flatten_at(obj: Any, pickle_size: int, file: str, prefix: Path) -> list[tuple[Path, Leaf]]:
    return [(prefix + path, leaf) for path, leaf in _flatten(obj, pickle_size, file)]


def _unwrap(obj: Any) -> Any:
    """The object with torch.jit._pickle's identity calls replaced by their argument (shared objects stay shared;
    beyond MAX_DEPTH nothing changes, and `flatten` refuses the nesting)."""
    done: dict[int, Any] = {}

    def visit(item: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            return item
        if isinstance(item, OpaqueObject) and item.global_name in _IDENTITY_CALLS:
            args = item.contents
            return visit(args[0], depth + 1) if isinstance(args, tuple) and args else item
        if id(item) in done:
            return done[id(item)]
        done[id(item)] = item
        if isinstance(item, dict):
            for key, value in item.items():
                item[key] = visit(value, depth + 1)
        elif isinstance(item, list):
            item[:] = [visit(value, depth + 1) for value in item]
        elif isinstance(item, tuple):
            done[id(item)] = replaced = tuple(visit(value, depth + 1) for value in item)
            return replaced
        elif isinstance(item, OpaqueObject) and item.contents is not None:
            item.contents = visit(item.contents, depth + 1)
        return item

    return visit(obj, 0)


# --------------------------------------------------------------------------- torch.package


def _load_package(probe: Probe) -> Tree:
    archive = probe.zip
    names = probe.zip_names
    if archive is None or not names or "/" not in names[0]:
        raise CorruptFileError(probe.name, "not a torch.package archive")
    prefix = names[0].split("/", 1)[0] + "/"
    members = {info.filename: info for info in archive.infolist()}
    byteorder = _byteorder(probe, members, prefix)
    storages: dict[str, Storage] = {}  # by record: shared by every pickle of the package, as PackageImporter's are
    scripts: dict[str, Any] = {}  # packaged TorchScript modules, by id

    def storage(pid: Any, record_of: Any) -> StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CorruptFileError(probe.name, f"unexpected persistent id in the pickle: {short_repr(pid)}")
        _, storage_type, key, location, numel = pid
        if not isinstance(storage_type, StorageType):
            raise CorruptFileError(probe.name, f"persistent id names {short_repr(storage_type)}, not a storage class")
        if not (type(key) is int or (isinstance(key, str) and _KEY.fullmatch(key))) or not isinstance(location, str):
            raise CorruptFileError(probe.name, f"malformed storage record: {short_repr(pid)}")
        if type(numel) is not int or not 0 <= numel <= INT64_MAX:
            raise CorruptFileError(probe.name, f"malformed storage size: {short_repr(pid)}")
        record = f"{prefix}.data/{record_of(str(key))}"
        if record not in storages:
            name = record.removeprefix(f"{prefix}.data/").removesuffix(".storage")
            storages[record] = _storage(probe, archive, members, record, name, storage_type, numel, location, byteorder)
        return StorageRef(storages[record], storage_type.dtype)

    def script_module(ident: str) -> Any:
        """A ScriptModule saved into the package (`__reduce_package__`): a TorchScript data.pkl under
        `.data/ts_code/<id>/`, whose storages are the package's `.data/<key>` records."""
        if ident not in scripts:
            record = f"{prefix}.data/ts_code/{ident}/data.pkl"
            if record not in members:
                raise CorruptFileError(probe.name, f"missing record {record!r}")
            data = probe.read_member(members[record], _MAX_PICKLE)
            scripts[ident] = _unwrap(Unpickler(data, lambda pid: storage(pid, lambda key: key)).load())
        return scripts[ident]

    def persistent_load(pid: Any) -> Any:
        if isinstance(pid, tuple) and pid and pid[0] == "reduce_package" and len(pid) in (3, 4):
            func, args = pid[-2], pid[-1]
            name = func.qualname if isinstance(func, Global) else short_repr(func, 60)
            if name == "torch.jit._script.unpackage_script_module" and isinstance(args, tuple) and len(args) == 1:
                if not (type(args[0]) is int or (isinstance(args[0], str) and args[0].isalnum())):
                    raise CorruptFileError(probe.name, f"malformed packaged module id: {short_repr(args[0])}")
                return script_module(str(args[0]))
            return OpaqueObject(name, args, "rebuilt by a packaged function (reduce_package)")
        return storage(pid, lambda key: f"{key}.storage")

    leaves: list[tuple[Path, Leaf]] = []
    pickles = package_pickles(probe)
    for member in pickles:
        data = probe.read_member(members[member], _MAX_PICKLE)
        obj = _fold_modules(Unpickler(data, persistent_load).load())
        *package, resource = member[len(prefix) :].split("/")
        path = (*package, resource.removesuffix(".pkl"))
        leaves += _flatten_at(obj, len(data), probe.name, path)
    metadata: dict[str, Any] = {"archive": prefix.rstrip("/"), "byteorder": byteorder}
    for record in ("version", "python_version"):
        if f"{prefix}.data/{record}" in members:
            text = probe.read_member(members[f"{prefix}.data/{record}"], 64).decode("ascii", "replace").strip()
            metadata[record] = text
    if f"{prefix}.data/extern_modules" in members:
        text = probe.read_member(members[f"{prefix}.data/extern_modules"], 1 << 20).decode("utf-8", "replace")
        metadata["extern_modules"] = text.split()
    metadata["pickles"] = [member[len(prefix) :] for member in pickles]
    tree = Tree(probe.name, TORCH_PACKAGE, leaves, metadata)
    note_unreferenced(tree, names, prefix, storages, [f"{prefix}.data/"], ".storage")
    if not pickles and tree.metadata.get("unreferenced_storages"):  # storages, but nothing that names them
        count = len(tree.metadata["unreferenced_storages"])
        raise CorruptFileError(probe.name, f"the package holds {count} storage record(s) but no pickle that uses them")
    unattributed = [
        name for name in names if (match := _TS_CODE.fullmatch(name[len(prefix) :])) and match.group(1) not in scripts
    ]
    if unattributed:
        raise CorruptFileError(
            probe.name, f"TorchScript module {unattributed[0]!r} is not referenced by any pickle of the package"
        )
    return tree


def package_pickles(probe: Probe) -> list[str]:
    """The package's pickles outside `.data/`, in archive order: every `.pkl` member, and every other member that
    starts like a pickle (`save_pickle` takes any resource name: packages on PyPI name theirs `model`). Source
    files (`.py`) are not pickles; only a member's first two bytes are read to tell."""
    names = probe.zip_names
    prefix = names[0].split("/", 1)[0] + "/" if names and "/" in names[0] else ""
    members = {info.filename: info for info in probe.zip.infolist()} if probe.zip is not None else {}
    found = []
    for name in names:
        if not name.startswith(prefix) or name.startswith(f"{prefix}.data/") or name.endswith("/"):
            continue
        if name.endswith(".pkl") or (not name.endswith(".py") and _starts_like_pickle(probe, members[name])):
            found.append(name)
    return found


def _starts_like_pickle(probe: Probe, info: zipfile.ZipInfo) -> bool:
    """PROTO 2 to 5, the first opcode of every pickle PackageExporter writes (protocol 3)."""
    if info.file_size < 2:
        return False
    if info.compress_type == zipfile.ZIP_STORED:
        head = probe.source.read(probe.check_member(info), 2)
    else:
        with probe.open_member(info) as stream:
            head = stream.read(2)
    return head[:1] == b"\x80" and 2 <= head[1] <= 5 if len(head) == 2 else False


def _fold_modules(obj: Any) -> Any:
    """Eager nn.Modules (placeholders whose state is a module's `__dict__`) with their `_parameters`, `_buffers` and
    `_modules` folded into their own attributes, and empty hook tables dropped, so tensors are named as the
    module's `state_dict()` names them. A state that does not look exactly like a module's is left alone."""
    done: set[int] = set()
    pending = [(obj, 0)]
    while pending:
        item, depth = pending.pop()
        if id(item) in done or depth > MAX_DEPTH:
            continue
        done.add(id(item))
        if isinstance(item, OpaqueObject):
            item.contents = _module_attributes(item.contents)
            pending.append((item.contents, depth + 1))
        elif isinstance(item, dict):
            pending.extend((value, depth + 1) for value in item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend((value, depth + 1) for value in item)
    return obj


def _module_attributes(state: Any) -> Any:
    parts = ("_parameters", "_buffers", "_modules")
    if not (isinstance(state, dict) and all(isinstance(state.get(part), dict) for part in parts)):
        return state
    folded: dict[Any, Any] = {}
    for part in parts:
        folded.update(state[part])
    rest = {
        key: value
        for key, value in state.items()
        if key not in parts and not (key in _MODULE_MACHINERY and (value is None or value in ({}, [], set())))
    }
    if len(folded) + len(rest) != len(state[parts[0]]) + len(state[parts[1]]) + len(state[parts[2]]) + len(rest):
        return state  # two parts share a name: not a real module's state
    if set(folded) & set(rest):
        return state
    folded.update(rest)
    return folded
