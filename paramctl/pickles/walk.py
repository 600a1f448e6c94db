"""Scanning a pickle: every global it names and where it ends up, without rebuilding anything; and recognising a
pickle by its opcode stream (a protocol 0 pickle need not start with any particular byte)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from paramctl.pickles.globals import DANGEROUS, classify
from paramctl.pickles.machine import (
    COMPUTED_MODULE,
    EXTENSION_MODULE,
    FRAME_MODULE,
    OPCODE_NAMES,
    Built,
    Global,
    GlobalRef,
    PickleError,
    Unpickler,
)
from paramctl.tree import MAX_DEPTH, OpaqueObject, name_of, split_key


@dataclass
class PickleScan:
    """What one pickle references, read without rebuilding anything."""

    record: str  # the zip member, or the legacy pickle's role
    start: int  # byte offset of the pickle inside the record (or file)
    end: int | None  # after its STOP opcode; None when the pickle is broken
    protocol: int | None
    globals: list[GlobalRef]
    paths: dict[int, str]  # index into `globals` -> name of the object it ends up in ("" for the root)
    opcodes: set[str]  # names of every opcode used (pickletools' names)
    error: str | None = None


def scan_pickle(data: Any, record: str, start: int = 0) -> PickleScan:
    """Run the pickle machine over one pickle without rebuilding anything and record what it references. A broken
    pickle still reports every global named before the point where it breaks: the real unpickler would have
    imported and called those before failing too."""
    unpickler = Unpickler(data, lambda pid: Built("<persistent id>", pid), start, rebuild=False)
    obj, error = None, None
    try:
        obj = unpickler.load()
    except PickleError as problem:
        error = str(problem)
    return PickleScan(
        record,
        start,
        unpickler.end if error is None else None,
        unpickler.protocol,
        unpickler.globals_seen,
        reference_paths(obj) if error is None else {},
        {OPCODE_NAMES[op] for op in unpickler.opcodes_seen},
        error,
    )


def reference_paths(obj: Any) -> dict[int, str]:
    """For each global reference (by index), the name of the first place in `obj` holding what it built, named
    as `flatten` names leaves: a placeholder's own name, which its call arguments share (the storage class in a
    tensor's persistent id is "in" that tensor). Each object is visited once, so shared references cost nothing."""
    paths: dict[int, str] = {}
    seen: set[int] = set()
    pending: list[tuple[Any, tuple[str, ...]]] = [(obj, ())]
    while pending:
        item, path = pending.pop()
        refs = item.refs if isinstance(item, Built) else (item.ref,) if isinstance(item, Global) else ()
        for ref in refs:
            paths.setdefault(ref, name_of(path))
        if not isinstance(item, (dict, list, tuple, set, frozenset, OpaqueObject)) or id(item) in seen:
            continue
        seen.add(id(item))
        if len(path) > MAX_DEPTH:
            continue
        children: list[tuple[Any, tuple[str, ...]]] = []
        if isinstance(item, OpaqueObject):
            arguments = isinstance(item.contents, (list, tuple))
            children += [(arg, path) for arg in item.contents] if arguments else [(item.contents, path)]
            children.append((getattr(item, "state", None), path))
        elif isinstance(item, dict):
            for key, value in item.items():
                children += [(key, path), (value, path + split_key(key))]
        elif isinstance(item, (list, tuple)):
            children += [(value, (*path, str(index))) for index, value in enumerate(item)]
        else:
            children += [(member, path) for member in item]
        pending.extend(reversed(children))  # depth first, in file order: the first place wins
    return paths


PSEUDO_MODULES = frozenset({COMPUTED_MODULE, EXTENSION_MODULE, FRAME_MODULE})


def credible_globals(scan: PickleScan, data: Any) -> list[GlobalRef]:
    """The globals a scan found that show `data` is meant as a pickle: named ones, and the pseudo-globals (frame
    violations, extension codes, computed names) only in data that opens with PROTO. Random bytes (a storage
    record) hit an EXT or FRAME opcode within a few bytes; they rarely spell out `c<module>\n<name>\n`."""
    opens_with_proto = len(data) > scan.start and data[scan.start] == 0x80
    return [ref for ref in scan.globals if opens_with_proto or ref.module not in PSEUDO_MODULES]


def find_pickle(data: Any, record: str, start: int = 0) -> PickleScan | None:
    """`data` at `start` scanned as a pickle, or None if it is not one. A pickle is recognised by its opcode stream,
    not its first byte (`N0cposix\nsystem\n…` is a protocol 0 pickle): the machine must read it to a STOP. A
    stream that breaks later still counts when it named a dangerous global first, since pickle.load imports and
    calls what it meets before failing (a text file that happens to start like a GLOBAL names nothing dangerous)."""
    scan = scan_pickle(data, record, start)
    credible = credible_globals(scan, data)
    if scan.end is not None and (credible or not scan.globals):
        return scan
    if any(classify(ref.module, ref.name)[0] == DANGEROUS for ref in credible):
        return scan
    return None
