"""`scan`: every global a checkpoint's pickles reference, where it appears, and what loading it would do.

A pickle names globals (a module and a name) and calls them; `pickle.load` and `torch.load(weights_only=False)`
import and call whatever the file names. paramctl never does (see paramctl/pickles); `scan` says what the file
*would* make Python do, so a user can decide before loading it for real:

- rebuilt: paramctl rebuilds it with its own code (tensor machinery, containers, numpy scalars);
- inert: a known data type, shown as a placeholder with its contents (argparse.Namespace, pathlib paths, ...);
- unknown: not recognised. Loading imports its module (running that module's code) and calls it: it is as safe
  as that package; paramctl shows a placeholder;
- dangerous: runs commands or code, touches files or the network, or loads another pickle (os, subprocess,
  builtins.eval/exec/getattr, importlib, runpy, socket, torch.load, ...), directly or through an attribute chain.

It also works out what `torch.load(weights_only=True)` would refuse (torch 2.13's allowlist, as a static table:
torch is never imported), so a user knows what to allowlist with `torch.serialization.add_safe_globals`. For
safetensors and npz files the format-level validation result is the report (npz object arrays hold pickles,
which are scanned too).
"""

from __future__ import annotations

import importlib
import os
import pathlib
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from paramctl.errors import CorruptFileError, FileError, UnknownFormatError
from paramctl.pickles import (
    BLOCKED,
    CLASSES,
    DANGEROUS,
    PSEUDO_MODULES,
    REFUSED,
    TORCH_WEIGHTS_ONLY_OPCODES,
    GlobalRef,
    PagedBytes,
    PickleScan,
    classify,
    find_pickle,
    python3_name,
    scan_pickle,
    strict_allowed,
    torch_name,
    torch_weights_only,
)
from paramctl.probe import Probe
from paramctl.registry import BUILTIN_DIRECTORY_LOADERS, detect, load, probe_file

# -- the result ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Where:
    """One place a global is named: the pickle (zip member or legacy record), the opcode and its byte offset in
    that pickle, and the name of the object it ends up in (None when it is not reachable, or the pickle broke)."""

    pickle: str
    offset: int
    opcode: str
    path: str | None

    def as_json(self) -> dict[str, Any]:
        return {"pickle": self.pickle, "offset": self.offset, "opcode": self.opcode, "path": self.path}


@dataclass
class Finding:
    """One distinct global and every place it is named."""

    module: str
    name: str
    cls: str
    reason: str
    weights_only: str | None  # allowed/refused/blocked for torch files, None for other formats' pickles
    where: list[Where] = field(default_factory=list)

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"

    @property
    def imports(self) -> str:
        """The name Python 3 would import (differs from `qualname` for Python 2 names)."""
        return python3_name(self.module, self.name)

    def as_json(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "name": self.name,
            "imports": self.imports,
            "class": self.cls,
            "reason": self.reason,
            "weights_only": self.weights_only,
            "where": [w.as_json() for w in self.where],
        }


@dataclass
class PickleInfo:
    record: str
    offset: int
    size: int | None
    protocol: int | None
    error: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "record": self.record,
            "offset": self.offset,
            "size": self.size,
            "protocol": self.protocol,
            "error": self.error,
        }


@dataclass
class ScanResult:
    file: str
    format: str
    problems: list[str] = field(default_factory=list)
    pickles: list[PickleInfo] = field(default_factory=list)
    globals: list[Finding] = field(default_factory=list)
    weights_only_unsupported_opcodes: list[str] | None = None  # None: not a torch file
    notes: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def dangerous(self) -> list[Finding]:
        return [f for f in self.globals if f.cls == DANGEROUS]

    @property
    def weights_only_refused(self) -> list[str] | None:
        if self.weights_only_unsupported_opcodes is None:
            return None
        refused = {torch_name(f.module, f.name) for f in self.globals if f.weights_only in (REFUSED, BLOCKED)}
        return sorted(refused)

    @property
    def strict_refused(self) -> list[str]:
        """What `scan --strict` refuses: every global outside torch's weights_only allowlist and paramctl's own
        rebuilt and inert types."""
        return sorted({f.qualname for f in self.globals if not strict_allowed(f.module, f.name)})

    def counts(self) -> dict[str, int]:
        return {cls: sum(f.cls == cls for f in self.globals) for cls in CLASSES}

    def as_json(self) -> dict[str, Any]:
        """The stable `scan --json` schema (documented in the README)."""
        return {
            "file": self.file,
            "format": self.format,
            "valid": self.valid,
            "problems": self.problems,
            "dangerous": bool(self.dangerous),
            "counts": self.counts(),
            "globals": [f.as_json() for f in self.globals],
            "weights_only_refused": self.weights_only_refused,
            "weights_only_unsupported_opcodes": self.weights_only_unsupported_opcodes,
            "pickles": [p.as_json() for p in self.pickles],
            "notes": self.notes,
            "strict_refused": self.strict_refused,
        }


# -- scanning --------------------------------------------------------------------------------------------------------

_MAX_BARE_PICKLES = 64  # consecutive pickles read from a bare pickle file


def scan(path: str, format: str | None = None) -> ScanResult:
    """Scan a file. Raises FileError for a path that is not a readable file, UnknownFormatError for content that
    is neither a checkpoint nor a pickle; anything wrong inside a recognised file is reported, not raised."""
    if os.path.isdir(path):
        return _scan_directory(pathlib.Path(path), format)
    probe = probe_file(path)
    try:
        loader = detect(probe, format)
    except UnknownFormatError:
        found = _any_pickles(probe)
        if found is None:
            raise
        return found
    result = ScanResult(probe.name, loader.name)
    try:
        tree = load(probe, loader)  # validated as `open` validates: a bad layout is a problem scan reports
        result.format = tree.format
    except CorruptFileError as error:
        result.problems.append(error.problem)
        if loader.name == "torch":
            result.format = "torch-zip" if probe.is_zip else "torch-legacy"
        elif hasattr(loader, "format_of"):  # a loader of several formats names the file's (torchscript, torch-package)
            result.format = loader.format_of(probe)
    except (RecursionError, MemoryError) as error:
        result.problems.append(f"too large or too deeply nested to read ({type(error).__name__})")
    pickles_of = getattr(loader, "pickles", None)
    scans: list[PickleScan] = []
    if pickles_of is not None:
        try:
            scans = pickles_of(probe)
        except CorruptFileError as error:
            if error.problem not in result.problems:
                result.problems.append(error.problem)
    if probe.is_zip:
        scans = _other_zip_pickles(probe, scans, skip=_loader_records)
    is_torch = loader.name == "torch" or result.format == "torchscript"  # torch.load hands TorchScript to torch.jit
    _collect(result, scans, torch=is_torch)
    if is_torch:
        torch_scans = scans[:1] if probe.is_zip else scans  # torch.load reads data.pkl only, or all legacy pickles
        result.weights_only_unsupported_opcodes = sorted(
            {op for s in torch_scans for op in s.opcodes} - TORCH_WEIGHTS_ONLY_OPCODES
        )
        if probe.is_zip:
            _zip_notes(result, probe.zip_names, scans)
    return result


def _scan_directory(path: pathlib.Path, format: str | None) -> ScanResult:
    """A checkpoint folder whose loader lists the pickles torch would load from it (`pickles_directory`, with
    `scan_notes` on how torch loads each): a DCP folder's `.metadata` and the records inside its rank files."""
    for name, module in BUILTIN_DIRECTORY_LOADERS.items():
        loader = importlib.import_module(module).LOADER
        if format in (None, name) and loader.sniff_directory(path):
            break
    else:
        raise FileError(str(path), "is a directory, not a checkpoint folder")
    pickles_of = getattr(loader, "pickles_directory", None)
    if pickles_of is None:  # a folder of ordinary checkpoint files: scanning nothing must not read as "valid"
        raise FileError(str(path), f"is a folder read by the {loader.name} loader: scan its files one by one")
    result = ScanResult(str(path), loader.name)
    scans: list[PickleScan] = []
    for step in (lambda: loader.load_directory(path), lambda: scans.extend(pickles_of(path))):
        try:
            step()
        except FileError as error:  # the problem, naming the file inside the folder it is about
            inside = os.path.relpath(error.path, result.file)
            problem = error.problem if error.path == result.file else f"{inside}: {error.problem}"
            if problem not in result.problems:
                result.problems.append(problem)
        except (RecursionError, MemoryError) as error:
            result.problems.append(f"too large or too deeply nested to read ({type(error).__name__})")
    _collect(result, scans, torch=False)  # torch reads these with pickle.load or weights_only=False: see the notes
    result.notes.extend(getattr(loader, "scan_notes", ()))
    return result


def _collect(result: ScanResult, scans: list[PickleScan], torch: bool) -> None:
    by_name: dict[tuple[str, str], Finding] = {}
    for scan_ in scans:
        size = None if scan_.end is None else scan_.end - scan_.start
        result.pickles.append(PickleInfo(scan_.record, scan_.start, size, scan_.protocol, scan_.error))
        if scan_.error is not None:
            problem = f"pickle {scan_.record!r}: {scan_.error}"
            if not any(scan_.error in p for p in result.problems):
                result.problems.append(problem)
        for index, ref in enumerate(scan_.globals):
            finding = by_name.get((ref.module, ref.name))
            if finding is None:
                cls, reason = classify(ref.module, ref.name)
                # a pseudo-global is no GLOBAL torch checks: its opcodes are in weights_only_unsupported_opcodes
                named = torch and ref.module not in PSEUDO_MODULES
                weights_only = torch_weights_only(ref.module, ref.name) if named else None
                finding = by_name[ref.module, ref.name] = Finding(ref.module, ref.name, cls, reason, weights_only)
                result.globals.append(finding)
            finding.where.append(_where(scan_, ref, index))
    result.globals.sort(key=lambda f: (-CLASSES.index(f.cls), f.where[0].pickle != scans[0].record, f.qualname))


def _where(scan_: PickleScan, ref: GlobalRef, index: int) -> Where:
    return Where(scan_.record, ref.offset, ref.opcode, scan_.paths.get(index))


def _zip_notes(result: ScanResult, names: list[str], scans: list[PickleScan]) -> None:
    if scans and len(scans) > 1:
        others = ", ".join(repr(s.record) for s in scans[1:])
        result.notes.append(f"torch.load reads {scans[0].record!r} only; also scanned: {others}")
    if any(name.endswith("/constants.pkl") or name == "constants.pkl" for name in names):
        result.notes.append(
            "a TorchScript archive: torch.load(weights_only=False) hands it to torch.jit.load, which runs its code/; "
            "weights_only=True refuses it"
        )


# -- pickles outside the checkpoint formats ------------------------------------------------------------------------

_MEMBER_PEEK = 4096  # bytes of a zip member read to tell whether it is a pickle
_MAX_MEMBER_PICKLE = 1 << 26  # an extra member read whole to scan it; beyond this it is reported, not read
_NPY_MAGIC = b"\x93NUMPY"


def _any_pickles(probe: Probe) -> ScanResult | None:
    """A file no loader claims, scanned as any pickle loader would read it: a bare pickle (any protocol, with or
    without PROTO, whatever the name), a lone .npy object array, or a zip of pickles under any names; None when
    nothing in it is a pickle."""
    if probe.is_zip:
        result = ScanResult(probe.name, "zip")
        scans = _other_zip_pickles(probe, [])
        if not scans:
            return None
        _collect(result, scans, torch=False)
        return result
    start = 0
    if probe.head.startswith(_NPY_MAGIC):  # magic, version, header length (<H in 1.0, <I after), header
        major = probe.head[6:7]
        width = 2 if major == b"\x01" else 4
        start = 8 + width + int.from_bytes(probe.head[8 : 8 + width], "little")
        if start >= probe.source.size:
            return None
    data, position, scans = PagedBytes(probe.source), start, []
    while position < probe.source.size and len(scans) < _MAX_BARE_PICKLES:
        record = "object array" if start else f"pickle {len(scans) + 1}"
        found = find_pickle(data, record, position)
        if found is None:
            break
        scans.append(found)
        if found.end is None:
            break
        position = found.end
    if not scans:
        return None
    result = ScanResult(probe.name, "npy" if start else "pickle")
    _collect(result, scans, torch=not start)  # torch.load unpickles any non-zip file before checking it
    if position < probe.source.size and scans[-1].end is not None:
        result.notes.append(f"{probe.source.size - position:,} bytes after the last pickle are not a pickle")
    if not start:
        result.weights_only_unsupported_opcodes = sorted(
            {op for s in scans for op in s.opcodes} - TORCH_WEIGHTS_ONLY_OPCODES
        )
    return result


def _loader_records(name: str) -> bool:
    """Members a checkpoint loader reads as data, never as a pickle: torch's storage records (`<archive>/data/<key>`)
    and npz arrays (the npz loader scans object arrays itself). Reading them would fetch every tensor of a remote
    checkpoint to find nothing."""
    parts = name.split("/")
    return (2 <= len(parts) <= 3 and parts[-2] == "data") or name.endswith(".npy")


def _other_zip_pickles(
    probe: Probe, scans: list[PickleScan], skip: Callable[[str], bool] = lambda name: False
) -> list[PickleScan]:
    """`scans` plus every other member of the zip that is a pickle, whatever its name (but those `skip` says a
    loader reads as data); a member a loader could not read (its flags claim encryption) is read again here from its
    local header. Members that parse as a pickle but name no global are left out unless named `.pkl`."""
    assert probe.zip is not None
    done = {s.record for s in scans if s.error is None or s.globals}
    records = {s.record for s in scans}
    found = [s for s in scans if s.record in done]
    for info in probe.zip.infolist():
        if info.is_dir() or info.filename in done or (skip(info.filename) and info.filename not in records):
            continue
        previous = next((s for s in scans if s.record == info.filename), None)
        try:
            scan_ = _member_pickle(probe, info)
        except CorruptFileError as error:
            if previous is not None:  # the loader's own failure stands
                found.append(previous)
            elif info.filename.endswith((".pkl", ".pickle")):
                found.append(PickleScan(info.filename, 0, None, None, [], {}, set(), error.problem))
            continue
        if scan_ is not None and (scan_.globals or previous is not None or info.filename.endswith(".pkl")):
            found.append(scan_)
        elif previous is not None:
            found.append(previous)
    if scans:  # the pickle torch reads stays first
        found.sort(key=lambda s: s.record != scans[0].record)
    return found


def _member_pickle(probe: Probe, info: zipfile.ZipInfo) -> PickleScan | None:
    """A member scanned as a pickle if its first bytes start one (then read whole, within a bound)."""
    head = _member_bytes(probe, info, _MEMBER_PEEK)
    scan_ = find_pickle(head, info.filename)
    truncated = scan_ is None and len(head) < info.file_size and _truncated(head)
    if scan_ is None and not truncated:
        return None
    if info.file_size > len(head):
        if info.file_size > _MAX_MEMBER_PICKLE:
            raise CorruptFileError(
                probe.name, f"zip member {info.filename!r} starts a pickle of {info.file_size:,} bytes: too large"
            )
        scan_ = find_pickle(_member_bytes(probe, info, info.file_size), info.filename)
    return scan_


def _truncated(head: bytes) -> bool:
    """Whether the opcodes in `head` are valid as far as they go (the pickle may go on past it)."""
    error = scan_pickle(head, "").error
    return error is not None and error.startswith("pickle truncated")


def _member_bytes(probe: Probe, info: zipfile.ZipInfo, size: int) -> bytes:
    """The first `size` bytes of a member, read from its local header: stored or deflated, whatever its flag bits
    say (zipfile refuses a member flagged as encrypted; torch's reader ignores the flag)."""
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise CorruptFileError(probe.name, f"zip member {info.filename!r}: compression {info.compress_type}")
    offset = probe.member_data_offset(info)
    size = min(size, info.file_size)
    if info.compress_type == zipfile.ZIP_STORED:
        return probe.source.read(offset, min(size, info.compress_size))
    inflater, out, position = zlib.decompressobj(-15), [], offset
    end, produced = offset + info.compress_size, 0
    try:
        while produced < size and position < end and not inflater.eof:
            chunk = probe.source.read(position, min(1 << 16, end - position))
            position += len(chunk)
            piece = inflater.decompress(chunk, size - produced)
            out.append(piece)
            produced += len(piece)
            while inflater.unconsumed_tail and produced < size:  # deflate's bounded output: drain what is left
                piece = inflater.decompress(inflater.unconsumed_tail, size - produced)
                out.append(piece)
                produced += len(piece)
    except zlib.error as error:
        raise CorruptFileError(probe.name, f"zip member {info.filename!r}: {error}") from None
    return b"".join(out)
