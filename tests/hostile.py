"""The hostile corpus: checkpoints that try to run code, files that lie about sizes, paths that are not files.

`build(directory, markers)` writes every case and returns them as `Case`s saying what paramctl must do with each:
the exit codes of `paramctl ls` and `paramctl scan`, what the one-line error must say, and which globals `scan`
must call dangerous. A malicious pickle's only payload creates its marker file (in `markers`), so a test proves
nothing ran by checking that no marker exists. `live_check(cases)` (run in a separate corpus, with other markers)
loads every malicious case with the real, unsafe loaders — pickle, torch.load(weights_only=False),
numpy.load(allow_pickle=True) — and returns the markers that appeared: proof that each payload is real.

Pickles are written by the real writers where possible (torch.save with every protocol, both containers;
pickle.dumps of objects whose __reduce__ returns the payload) and assembled from raw opcodes where a writer would
never produce the trick (INST, OBJ, EXT codes, dotted STACK_GLOBAL names, payloads inside persistent ids).
"""

from __future__ import annotations

import builtins
import io
import json
import os
import pickle
import runpy
import shlex
import struct
import subprocess
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

OK, DANGEROUS, BAD = 0, 1, 2
# What the live check registers with copyreg.add_extension (one code per global): each runs a shell command.
EXTENSION_CODES = {0xF0: ("posix", "system"), 0x1234: ("os", "system"), 0x12345678: ("subprocess", "getoutput")}


@dataclass
class Case:
    name: str
    path: Path
    ls_exit: int  # 0: it lists (anything foreign as a placeholder); 2: bad input, one line on stderr
    scan_exit: int  # 1: something dangerous is referenced; 2: broken (and nothing dangerous); 0: fine
    error: str | None = None  # a fragment the error line must contain when ls exits 2
    dangerous: tuple[str, ...] = ()  # qualnames scan must classify as dangerous
    marker: Path | None = None  # what the payload would create if anything ran it
    live: str | None = None  # how the real loaders run it: "pickle", "torch", "numpy"; None when nothing would
    kind: str = "pickle"  # pickle, corrupt, path, valid
    scan_valid: bool | None = None  # scan's `valid` when it differs from ls's (a bare pickle: ls refuses it)


@dataclass
class Corpus:
    directory: Path
    markers: Path
    cases: list[Case] = field(default_factory=list)

    def add(self, case: Case) -> Case:
        self.cases.append(case)
        return case

    def marker(self, name: str) -> Path:
        return self.markers / f"{name}.ran"


class Reduce:
    """Pickles as `func(*args)`: what a malicious checkpoint hides inside an ordinary-looking object."""

    def __init__(self, func: Callable[..., object], *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[object, ...]:
        return (self.func, self.args)


def shell(marker: Path) -> str:
    return f"touch {shlex.quote(str(marker))}"


def python(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


# -- raw opcode assembly ------------------------------------------------------------------------------------------


def text(value: str) -> bytes:
    """Protocol 0 STRING."""
    return b"S" + repr(value).encode("ascii") + b"\n"


def uni(value: str) -> bytes:
    """BINUNICODE."""
    raw = value.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw


def short_uni(value: str) -> bytes:
    """SHORT_BINUNICODE (protocol 4)."""
    raw = value.encode("utf-8")
    return b"\x8c" + bytes([len(raw)]) + raw


def integer(value: int) -> bytes:
    """LONG1: any int, negative or huge."""
    raw = value.to_bytes((value.bit_length() + 8) // 8 or 1, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def tup(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def call(func: bytes, *args: bytes) -> bytes:
    return func + tup(*args) + b"R"


def as_dict(items: dict[str, bytes], proto: int | None = 2) -> bytes:
    """A whole pickle holding {key: value-expression}; MARK ... DICT works in every protocol."""
    head = b"" if proto is None else b"\x80" + bytes([proto])
    return head + b"(" + b"".join(text(k) + v for k, v in items.items()) + b"d."


def tensor_expr(
    size: tuple[int, ...] = (4,),
    stride: tuple[int, ...] = (1,),
    offset: int = 0,
    numel: int = 4,
    key: str = "0",
    storage: tuple[str, str] = ("torch", "FloatStorage"),
    rebuild: str = "_rebuild_tensor_v2",
) -> bytes:
    """torch's pickle of a tensor: _rebuild_tensor_v2(persistent storage id, offset, size, stride, False, {})."""
    pid = tup(uni("storage"), glob(*storage), uni(key), uni("cpu"), integer(numel)) + b"Q"
    return call(
        glob("torch._utils", rebuild),
        pid,
        integer(offset),
        tup(*map(integer, size)),
        tup(*map(integer, stride)),
        b"\x89",
        glob("collections", "OrderedDict") + b")R",
    )


def torch_zip(path: Path, data_pkl: bytes, records: dict[str, bytes] | None = None, archive: str = "archive") -> Path:
    """A torch zip checkpoint around a given data.pkl (member layout as torch.save writes it)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{archive}/data.pkl", data_pkl)
        z.writestr(f"{archive}/byteorder", "little")
        for key, data in (records or {}).items():
            z.writestr(f"{archive}/data/{key}", data)
        z.writestr(f"{archive}/version", "3\n")
    return path


MAGIC = 0x1950A86A20F9469CFC6C


def legacy_file(path: Path, pickles: list[bytes], storages: list[tuple[int, bytes]]) -> Path:
    """The legacy layout: five pickles in a row, then (int64 element count, bytes) per storage."""
    with open(path, "wb") as f:
        f.write(b"".join(pickles))
        for numel, data in storages:
            f.write(struct.pack("<q", numel) + data)
    return path


def legacy_tensor() -> bytes:
    """A legacy tensor of 4 floats on storage '0' (its persistent id carries a 6th field: the view record)."""
    pid = tup(uni("storage"), glob("torch", "FloatStorage"), uni("0"), uni("cpu"), integer(4), b"N") + b"Q"
    return call(
        glob("torch._utils", "_rebuild_tensor_v2"),
        pid,
        integer(0),
        tup(integer(4)),
        tup(integer(1)),
        b"\x89",
        glob("collections", "OrderedDict") + b")R",
    )


def legacy_pickles(obj_pickle: bytes | None = None, **replace: bytes) -> list[bytes]:
    """The five legacy pickles for a one-tensor file, any of them replaceable by raw bytes."""
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    parts = {
        "magic": pickle.dumps(MAGIC, protocol=2),
        "version": pickle.dumps(1001, protocol=2),
        "sys_info": pickle.dumps(sys_info, protocol=2),
        "object": obj_pickle if obj_pickle is not None else as_dict({"w": legacy_tensor()}),
        "keys": pickle.dumps(["0"], protocol=2),
    }
    parts.update(replace)
    return list(parts.values())


# -- other formats ---------------------------------------------------------------------------------------------------


def npy(header: dict[str, object] | str, data: bytes = b"", version: tuple[int, int] = (1, 0)) -> bytes:
    """A `.npy` member: magic, version, header length, the header literal (padded like numpy), data."""
    literal = (header if isinstance(header, str) else repr(header)).encode("latin1")
    size_bytes = 2 if version[0] == 1 else 4
    pad = (-(6 + 2 + size_bytes + len(literal) + 1)) % 64
    literal += b" " * pad + b"\n"
    return b"\x93NUMPY" + bytes(version) + len(literal).to_bytes(size_bytes, "little") + literal + data


def npz(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def safetensors(path: Path, header: object, data: bytes = b"", length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def patch_zip_entry(path: Path, member: str, **fields: int) -> Path:
    """Rewrite a member's sizes, CRC, method or flags in both its local header and its central directory entry."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    local = {"flag_bits": 6, "compress_type": 8, "crc": 14, "compress_size": 18, "file_size": 22}
    central = {"flag_bits": 8, "compress_type": 10, "crc": 16, "compress_size": 20, "file_size": 24}
    formats = {"flag_bits": "<H", "compress_type": "<H", "crc": "<I", "compress_size": "<I", "file_size": "<I"}
    for signature, offsets, name_at in ((b"PK\x03\x04", local, 30), (b"PK\x01\x02", central, 46)):
        start = 0
        while (start := data.find(signature, start)) >= 0:
            name_length = struct.unpack_from("<H", data, start + (26 if name_at == 30 else 28))[0]
            if bytes(data[start + name_at : start + name_at + name_length]) == name:
                for key, value in fields.items():
                    struct.pack_into(formats[key], data, start + offsets[key], value)
            start += 4
    path.write_bytes(bytes(data))
    return path


def deflate_bomb(payload_head: bytes, zero_bytes: int) -> tuple[bytes, int]:
    """A raw deflate stream of `payload_head` then `zero_bytes` zeros, built from one repeated full-flush block
    (identical input after a full flush compresses identically), and the CRC-32 of the whole: a ~1000:1 bomb
    written in milliseconds."""
    block = 1 << 20
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = compressor.compress(payload_head) + compressor.flush(zlib.Z_FULL_FLUSH)
    zeros = bytes(block)
    piece = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert zero_bytes % block == 0
    stream = head + piece * (zero_bytes // block) + compressor.flush(zlib.Z_FINISH)
    crc = zlib.crc32(payload_head)
    for _ in range(zero_bytes // block):
        crc = zlib.crc32(zeros, crc)
    return stream, crc


def deflated_member_zip(path: Path, name: str, stream: bytes, file_size: int, crc: int) -> Path:
    """A zip holding one deflated member given as a ready raw deflate stream (zipfile cannot write one)."""
    raw_name = name.encode()
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(stream), file_size, len(raw_name), 0)
    central = struct.pack(
        "<4sHHHHHHIIIHHHHHII",
        b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, len(stream), file_size, len(raw_name), 0, 0, 0, 0, 0, 0,
    )  # fmt: skip
    directory_offset = len(local) + len(raw_name) + len(stream)
    directory = central + raw_name
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(directory), directory_offset, 0)
    path.write_bytes(local + raw_name + stream + directory + end)
    return path


# -- the corpus ------------------------------------------------------------------------------------------------------


def build(directory: Path, markers: Path) -> list[Case]:
    """Write every case into `directory`; payload markers go to `markers` (which must exist)."""
    corpus = Corpus(directory, markers)
    malicious_pickles(corpus)
    corrupt_torch(corpus)
    corrupt_safetensors(corpus)
    corrupt_npz(corpus)
    path_oddities(corpus)
    pickle_machine(corpus)
    return corpus.cases


def malicious_pickles(c: Corpus) -> None:
    import torch

    d = c.directory
    # torch.save itself writes the payload, in every protocol and both containers.
    for protocol in range(6):
        m = c.marker(f"zip_p{protocol}")
        payload = {"evil": Reduce(os.system, shell(m)), "w": torch.ones(2)}  # payload first: protocol 0 breaks at w
        path = d / f"zip_p{protocol}.pt"
        torch.save(payload, path, pickle_protocol=protocol)
        ls_exit, error = (BAD, "persistent id") if protocol == 0 else (OK, None)  # torch cannot load these either
        c.add(Case(path.name, path, ls_exit, DANGEROUS, error, ("posix.system",), m, live="torch"))
        m = c.marker(f"legacy_p{protocol}")
        payload = {"evil": Reduce(builtins.exec, python(m)), "w": torch.ones(2)}
        path = d / f"legacy_p{protocol}.pt"
        torch.save(payload, path, pickle_protocol=protocol, _use_new_zipfile_serialization=False)
        c.add(Case(path.name, path, ls_exit, DANGEROUS, error, ("builtins.exec",), m, live="torch"))

    def zip_case(name: str, build_pickle: Callable[[Path], bytes], dangerous: tuple[str, ...], **kw: object) -> None:
        m = c.marker(name)
        path = torch_zip(d / f"{name}.pt", build_pickle(m))
        c.add(Case(path.name, path, kw.pop("ls_exit", OK), DANGEROUS, dangerous=dangerous, marker=m, **kw))  # type: ignore[arg-type]

    def dumped(make: Callable[[Path], object]) -> Callable[[Path], bytes]:
        return lambda m: pickle.dumps({"evil": make(m)}, protocol=2)

    zip_case("eval", dumped(lambda m: Reduce(builtins.eval, python(m))), ("builtins.eval",), live="torch")
    zip_case(
        "popen", dumped(lambda m: Reduce(subprocess.Popen, ["touch", str(m)])), ("subprocess.Popen",), live="torch"
    )
    zip_case("call", dumped(lambda m: Reduce(subprocess.call, ["touch", str(m)])), ("subprocess.call",), live="torch")
    zip_case("runpy", dumped(lambda m: Reduce(runpy._run_code, python(m), {})), ("runpy._run_code",), live="torch")
    zip_case(
        "getattr_import",
        lambda m: as_dict(
            {
                "evil": call(
                    call(glob("builtins", "getattr"), call(glob("builtins", "__import__"), text("os")), text("system")),
                    text(shell(m)),
                )
            }
        ),
        ("builtins.getattr", "builtins.__import__"),
        live="torch",
    )
    zip_case(
        "importlib",
        lambda m: as_dict(
            {
                "evil": call(
                    call(
                        glob("builtins", "getattr"),
                        call(glob("importlib", "import_module"), text("os")),
                        text("system"),
                    ),
                    text(shell(m)),
                )
            }
        ),
        ("importlib.import_module", "builtins.getattr"),
        live="torch",
    )
    # Protocol 4 resolves dotted names attribute by attribute: posixpath.os.system is os.system.
    zip_case(
        "dotted_stack_global",
        lambda m: b"\x80\x04(" + text("evil") + short_uni("posixpath") + short_uni("os.system") + b"\x93"
        + short_uni(shell(m)) + b"\x85Rd.",
        ("posixpath.os.system",),
        live="torch",
    )  # fmt: skip
    zip_case(
        "torch_attribute",
        lambda m: b"\x80\x04(" + text("evil") + short_uni("torch") + short_uni("serialization.os.system") + b"\x93"
        + short_uni(shell(m)) + b"\x85Rd.",
        ("torch.serialization.os.system",),
        live="torch",
    )  # fmt: skip
    # Protocols 0-2 map Python 2 names: __builtin__.eval is builtins.eval.
    zip_case(
        "py2_builtin",
        lambda m: as_dict({"evil": call(glob("__builtin__", "eval"), text(python(m)))}),
        ("__builtin__.eval",),
        live="torch",
    )
    zip_case(
        "inst",
        lambda m: as_dict({"evil": b"(" + text(shell(m)) + b"ios\nsystem\n"}, proto=None),
        ("os.system",),
        live="torch",
    )
    zip_case(
        "obj",
        lambda m: as_dict({"evil": b"(" + glob("os", "system") + text(shell(m)) + b"o"}, proto=1),
        ("os.system",),
        live="torch",
    )
    # NEWOBJ / NEWOBJ_EX call cls.__new__ only: nothing runs, but scan must still name the class.
    zip_case(
        "newobj",
        lambda m: as_dict({"evil": glob("subprocess", "Popen") + tup(b"]" + text("touch") + b"a") + b"\x81"}),
        ("subprocess.Popen",),
    )
    zip_case(
        "newobj_ex",
        lambda m: b"\x80\x04(" + text("evil") + short_uni("subprocess") + short_uni("Popen") + b"\x93"
        + tup(text("touch")) + b"}\x92d.",
        ("subprocess.Popen",),
    )  # fmt: skip
    # A BUILD state holding a call: the state is built (and the call made) before BUILD applies it.
    zip_case(
        "build_state",
        lambda m: as_dict(
            {"evil": glob("collections", "OrderedDict") + b")R}" + text("x")
             + call(glob("os", "system"), text(shell(m))) + b"sb"}
        ),
        ("os.system",),
        live="torch",
    )  # fmt: skip
    for opcode, code in ((b"\x82", 0xF0), (b"\x83", 0x1234), (b"\x84", 0x12345678)):
        arg = code.to_bytes({b"\x82": 1, b"\x83": 2, b"\x84": 4}[opcode], "little")
        zip_case(
            f"ext{len(arg)}",
            lambda m, opcode=opcode, arg=arg: as_dict({"evil": opcode + arg + tup(text(shell(m))) + b"R"}),
            (f"<extension registry>.{code}",),
            live="torch",  # with copyreg.add_extension(posix, system, code) in the loading process
        )
    # A persistent id is itself pickled data: a call inside it runs before torch's persistent_load sees it.
    zip_case(
        "persistent_id",
        lambda m: as_dict({"evil": tup(uni("storage"), call(glob("os", "system"), text(shell(m)))) + b"Q"}),
        ("os.system",),
        live="torch",
        ls_exit=BAD,
        error="persistent id",
    )
    zip_case(
        "partial",
        lambda m: as_dict({"evil": call(glob("functools", "partial"), glob("os", "system"), text(shell(m))) + b")R"}),
        ("functools.partial", "os.system"),
        live="torch",
    )

    def nested(m: Path) -> bytes:
        inner = io.BytesIO()
        torch.save({"evil": Reduce(os.system, shell(m))}, inner)
        return pickle.dumps({"evil": Reduce(torch.storage._load_from_bytes, inner.getvalue())}, protocol=2)

    zip_case("nested_load_from_bytes", nested, ("torch.storage._load_from_bytes",), live="torch")

    # Two archive folders, the payload in the second: torch reads the first member's folder (and refuses mixed
    # folders), paramctl lists that folder too, and scan reads every pickle member whatever its folder.
    m = c.marker("two_folders")
    path = d / "two_folders.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", as_dict({"fine": integer(1)}))
        z.writestr("archive/version", "3\n")
        z.writestr("other/data.pkl", as_dict({"evil": call(glob("os", "system"), text(shell(m)))}))
    c.add(Case(path.name, path, OK, DANGEROUS, dangerous=("os.system",), marker=m, live="pickle"))
    # A second pickle member torch does not read is scanned too.
    m = c.marker("extra_member")
    path = d / "extra_member.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", as_dict({"fine": integer(1)}))
        z.writestr("archive/version", "3\n")
        z.writestr("archive/extra.pkl", as_dict({"evil": call(glob("os", "system"), text(shell(m)))}))
    c.add(Case(path.name, path, OK, DANGEROUS, dangerous=("os.system",), marker=m, live="pickle"))
    # Two members with one name: torch (like zipfile) takes the last; paramctl refuses to guess.
    m = c.marker("duplicate_member")
    path = d / "duplicate_member.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", as_dict({"fine": integer(1)}))
        z.writestr("archive/version", "3\n")
        with _quiet():
            z.writestr("archive/data.pkl", as_dict({"evil": call(glob("os", "system"), text(shell(m)))}))
    c.add(Case(path.name, path, BAD, BAD, "appears more than once", marker=m, live="torch"))

    # The legacy container: a payload in each of its pickles.
    evil = lambda m: as_dict({"evil": call(glob("os", "system"), text(shell(m)))})  # noqa: E731
    for role, ls_exit, error in (
        ("sys_info", OK, None),
        ("object", OK, None),
        ("keys", BAD, "storage key list"),
        ("magic", BAD, "unrecognised format"),
    ):
        m = c.marker(f"legacy_{role}")
        replacement = evil(m)
        if role == "object":  # the payload beside the tensor the storage key list names
            replacement = as_dict({"evil": call(glob("os", "system"), text(shell(m))), "w": legacy_tensor()})
        if role == "keys":
            replacement = b"\x80\x02(" + uni("0") + call(glob("os", "system"), text(shell(m))) + b"l."
        path = legacy_file(d / f"legacy_{role}.pt", legacy_pickles(**{role: replacement}), [(4, bytes(16))])
        # Without its magic number the file is no legacy checkpoint, but still a row of pickles, scanned whole.
        scan_valid = True if role == "magic" else None
        c.add(Case(path.name, path, ls_exit, DANGEROUS, error, ("os.system",), m, live="torch", scan_valid=scan_valid))
    m = c.marker("legacy_persistent_id")
    obj = as_dict({"evil": tup(uni("storage"), call(glob("os", "system"), text(shell(m)))) + b"Q"})
    path = legacy_file(d / "legacy_persistent_id.pt", legacy_pickles(obj), [(4, bytes(16))])
    c.add(Case(path.name, path, BAD, DANGEROUS, "persistent id", ("os.system",), m, live="torch"))

    # A bare pickle: torch.load unpickles any non-zip file as the legacy format before checking it.
    m = c.marker("bare")
    path = d / "bare.pkl"
    path.write_bytes(pickle.dumps(Reduce(os.system, shell(m)), protocol=2))
    c.add(Case(path.name, path, BAD, DANGEROUS, "unrecognised format", ("posix.system",), m, live="torch",
               scan_valid=True))  # fmt: skip
    # An npz object array is a pickle after the .npy header: np.load(allow_pickle=True) runs it.
    m = c.marker("npz_object")
    buffer = io.BytesIO()
    np.save(buffer, np.array([Reduce(os.system, shell(m))], dtype=object), allow_pickle=True)
    path = npz(d / "npz_object.npz", {"w.npy": npy({"descr": "<f4", "fortran_order": False, "shape": (2,)}, bytes(8)),
                                       "evil.npy": buffer.getvalue()})  # fmt: skip
    c.add(Case(path.name, path, OK, DANGEROUS, dangerous=("posix.system",), marker=m, live="numpy"))


def corrupt_torch(c: Corpus) -> None:
    d = c.directory

    def case(name: str, data_pkl: bytes, error: str, records: dict[str, bytes] | None = None, **kw: object) -> None:
        path = torch_zip(d / f"{name}.pt", data_pkl, {"0": bytes(16)} if records is None else records)
        scan_exit = DANGEROUS if kw.get("dangerous") else BAD
        c.add(Case(path.name, path, BAD, scan_exit, error, kind="corrupt", **kw))  # type: ignore[arg-type]

    tensor = lambda **kw: as_dict({"w": tensor_expr(**kw)})  # noqa: E731
    case("shape_beyond_storage", tensor(size=(10,)), "needs 40 bytes of its storage, which has 16")
    case("negative_stride", tensor(stride=(-1,)), "negative")
    case("negative_offset", tensor(offset=-1), "non-negative int64")
    case("offset_overflow", tensor(offset=2**64), "non-negative int64")
    case("stride_overflow", tensor(size=(2,), stride=(2**63,)), "overflows int64")
    case("numel_overflow", tensor(size=(2**32, 2**32), stride=(1, 1)), "element count overflows")
    case("extent_overflow", tensor(size=(2,), stride=(2**62,)), "byte extent overflows")
    case("size_stride_mismatch", tensor(size=(2, 2), stride=(1,)), "differ in length")
    case("storage_numel_overflow", tensor(numel=2**70), "overflows int64")
    case("storage_class_unknown", tensor(storage=("torch", "Float9Storage")), "not a torch storage class")
    case(
        "storage_class_foreign", tensor(storage=("os", "system")), "not a torch storage class", dangerous=("os.system",)
    )
    case("missing_record", tensor(), "missing record", records={})
    case("short_record", tensor(), "has 8 bytes, the storage needs 16", records={"0": bytes(8)})
    case("data_pkl_truncated", tensor()[:-9], "truncated")
    case("data_pkl_no_stop", tensor()[:-1], "truncated")
    case("unknown_opcode", b"\x80\x02\xff.", "unknown pickle opcode")
    case("stack_underflow", b"\x80\x02s.", "underflow")
    case("memo_missing", b"\x80\x02h\x05.", "memo key 5 missing")
    case("bad_protocol", b"\x80\x09N.", "unsupported pickle protocol 9")
    case("too_deep", b"\x80\x02" + (b"(" + uni("a")) * 5000 + b"}" + b"d" * 5000 + b".", "nesting deeper")
    # A billion laughs: a list of 1000 references to a list of 1000 references to a list of 1000 ints.
    laughs = b"\x80\x02](" + b"K\x01" * 1000 + b"eq\x00](" + b"h\x00" * 1000 + b"eq\x01](" + b"h\x01" * 1000 + b"e"
    case("billion_laughs", b"\x80\x02(" + uni("x") + laughs[2:] + b"d.", "shared references expand")
    # Valid pickles that are nasty to walk: both list (exit 0), quickly.
    huge_int = b"\x8b" + struct.pack("<i", 4000) + b"\x01" * 4000  # LONG4: Python cannot even print it
    tuples = b"(" + b"K\x00" * 1000 + b"tq\x000(" + b"h\x00" * 1000 + b"tq\x010(" + b"h\x01" * 1000 + b"t"  # PUT, POP
    hash_bomb = b"}" + tuples + b"K\x01s"  # a dict keyed by a tuple that hashes a billion elements
    for name, expr in (("huge_int", huge_int), ("tuple_hash_bomb", hash_bomb)):
        path = torch_zip(d / f"{name}.pt", as_dict({"x": expr}))
        c.add(Case(path.name, path, OK, OK, kind="corrupt"))
    case("byteorder_garbage", tensor(), "byteorder record", records={"0": bytes(16)})
    _rewrite_member(d / "byteorder_garbage.pt", "archive/byteorder", b"middle")

    # Zip-level lies.
    path = torch_zip(d / "truncated_zip.pt", tensor(), {"0": bytes(16)})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    c.add(Case(path.name, path, BAD, BAD, "corrupt zip archive", kind="corrupt"))
    path = torch_zip(d / "central_dir_garbage.pt", tensor(), {"0": bytes(16)})
    raw = bytearray(path.read_bytes())
    start = raw.rfind(b"PK\x01\x02")
    raw[start : start + 40] = b"\xff" * 40
    path.write_bytes(bytes(raw))
    c.add(Case(path.name, path, BAD, BAD, "corrupt zip archive", kind="corrupt"))
    path = patch_zip_entry(torch_zip(d / "compress_size_lie.pt", tensor(), {"0": bytes(16)}), "archive/data/0",
                           compress_size=1 << 31, file_size=1 << 31)  # fmt: skip
    c.add(Case(path.name, path, BAD, BAD, "needs 2147483648 bytes, but the file has", kind="corrupt"))
    path = patch_zip_entry(torch_zip(d / "stored_size_lie.pt", tensor(), {"0": bytes(16)}), "archive/data/0",
                           file_size=64)  # fmt: skip
    c.add(Case(path.name, path, BAD, BAD, "stored with 16 bytes but claims 64", kind="corrupt"))
    path = patch_zip_entry(torch_zip(d / "bzip2_member.pt", tensor(), {"0": bytes(16)}), "archive/data.pkl",
                           compress_type=12)  # fmt: skip
    c.add(Case(path.name, path, BAD, BAD, "compression method 12 is not supported", kind="corrupt"))
    path = patch_zip_entry(torch_zip(d / "encrypted_member.pt", tensor(), {"0": bytes(16)}), "archive/data.pkl",
                           flag_bits=1)  # fmt: skip
    c.add(Case(path.name, path, BAD, BAD, "is encrypted", kind="corrupt"))
    # A deflated data.pkl that claims far more than its compressed bytes can inflate to.
    path = d / "deflate_ratio_lie.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", tensor())
    patch_zip_entry(path, "archive/data.pkl", file_size=1 << 30)
    c.add(Case(path.name, path, BAD, BAD, "more than deflate can produce", kind="corrupt"))
    # A deflated data.pkl whose deflate stream is damaged: the CRC or the inflater catches it.
    path = d / "deflate_damaged.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", tensor() * 20)
    raw = bytearray(path.read_bytes())
    raw[60:70] = b"\x00" * 10
    path.write_bytes(bytes(raw))
    c.add(Case(path.name, path, BAD, BAD, "archive/data.pkl", kind="corrupt"))

    # The legacy container's own records.
    def legacy(name: str, pickles: list[bytes], storages: list[tuple[int, bytes]], error: str) -> None:
        path = legacy_file(d / f"{name}.pt", pickles, storages)
        c.add(Case(path.name, path, BAD, BAD, error, kind="corrupt"))

    legacy("legacy_truncated_storage", legacy_pickles(), [(4, bytes(10))], "storage '0' at byte")
    legacy("legacy_short_count", legacy_pickles(), [(2, bytes(8))], "records 2 elements, needs 16 bytes")
    legacy("legacy_negative_count", legacy_pickles(), [(-1, b"")], "records -1 elements")
    legacy("legacy_no_storages", legacy_pickles(), [], "the size of storage '0'")
    legacy("legacy_bad_version", legacy_pickles(version=pickle.dumps(7, protocol=2)), [(4, bytes(16))],
           "protocol version 7")  # fmt: skip
    legacy("legacy_keys_not_list", legacy_pickles(keys=pickle.dumps(5, protocol=2)), [(4, bytes(16))],
           "not a list of strings")  # fmt: skip
    view = tup(uni("v"), integer(2), integer(10))
    pid = tup(uni("storage"), glob("torch", "FloatStorage"), uni("0"), uni("cpu"), integer(4), view) + b"Q"
    obj = as_dict({"w": call(glob("torch._utils", "_rebuild_tensor_v2"), pid, integer(0), tup(integer(1)),
                             tup(integer(1)), b"\x89", glob("collections", "OrderedDict") + b")R")})  # fmt: skip
    legacy("legacy_view_outside", legacy_pickles(obj), [(4, bytes(16))], "lies outside storage")


def corrupt_safetensors(c: Corpus) -> None:
    d = c.directory
    good = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}

    def case(name: str, header: object, data: bytes, error: str, length: int | None = None) -> None:
        path = safetensors(d / f"{name}.safetensors", header, data, length)
        c.add(Case(path.name, path, BAD, BAD, error, kind="corrupt"))

    case("st_header_past_end", good, bytes(8), "runs past the end of the file", length=10_000)
    case("st_header_over_limit", good, bytes(8), "exceeds the 100000000 limit", length=100_000_001)
    case("st_invalid_json", b'{"a": {"dtype": "F32",', b"", "invalid safetensors header JSON")
    case("st_not_utf8", b'{"\xff": 1}', b"", "invalid safetensors header JSON")
    case("st_nan", b'{"a": NaN}', b"", "invalid safetensors header JSON")
    case("st_too_deep", b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", b"", "nested too deeply")
    case("st_unknown_dtype", {"a": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}}, bytes(8), "unknown dtype")
    case("st_overlap", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                        "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8), "overlaps")  # fmt: skip
    case("st_gap", {"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8), "gap")
    case("st_out_of_range", {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8), "past the 8")
    case("st_offsets_mismatch", {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8), "needs 12")
    case("st_shape_overflow", {"a": {"dtype": "F32", "shape": [2**40, 2**40, 0], "data_offsets": [0, 0]}}, b"",
         "overflows")  # fmt: skip
    case("st_shape_u64", {"a": {"dtype": "F32", "shape": [0, 2**64], "data_offsets": [0, 0]}}, b"",
         "is not a list of non-negative integers")  # fmt: skip
    case("st_duplicate_keys", b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
         b'"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', bytes(8), "duplicate key 'a'")  # fmt: skip
    case("st_metadata_not_strings", {"__metadata__": {"x": 1}, **good}, bytes(8), "__metadata__")
    case("st_trailing_bytes", good, bytes(9), "the file holds 9")
    case("st_truncated_data", good, bytes(4), "past the 4 data bytes")
    case("st_not_object", b'{"a": [1, 2]}', b"", "header entry")


def corrupt_npz(c: Corpus) -> None:
    d = c.directory
    f8 = {"descr": "<f8", "fortran_order": False, "shape": (2,)}

    def case(name: str, member: bytes, error: str, compression: int = zipfile.ZIP_STORED) -> Path:
        path = npz(d / f"{name}.npz", {"a.npy": member}, compression)
        c.add(Case(path.name, path, BAD, BAD, error, kind="corrupt"))
        return path

    case("npz_header_lies", npy({**f8, "shape": (100,)}, bytes(16)), "needs 800 bytes, the member holds 16")
    case("npz_header_lies_deflated", npy({**f8, "shape": (100,)}, bytes(16)), "needs 800 bytes",
         zipfile.ZIP_DEFLATED)  # fmt: skip
    case("npz_bad_magic", b"\x93NUMPX" + npy(f8, bytes(16))[6:], "bad magic")
    case("npz_bad_version", npy(f8, bytes(16), version=(9, 0)), "unsupported .npy version 9.0")
    case("npz_not_literal", npy("{'descr': <f8, 'fortran_order': False, 'shape': (2,)}", bytes(16)), "not a Python")
    case("npz_unhashable_literal", npy("{[1]: 2}", bytes(16)), "not a Python literal")
    case("npz_missing_keys", npy({"descr": "<f8", "shape": (2,)}, bytes(16)), "lacks descr")
    case("npz_shape_overflow", npy({**f8, "shape": (2**70,)}, b""), "overflows int64")
    case("npz_shape_negative", npy({**f8, "shape": (-1,)}, b""), "not a tuple of sizes")
    case("npz_fortran_not_bool", npy({**f8, "fortran_order": 1}, bytes(16)), "fortran_order")
    case("npz_header_truncated", npy(f8, bytes(16))[:20], "truncated .npy header")
    case("npz_descr_not_numpy", npy({**f8, "descr": "<q17"}, bytes(16)), "'<q17' is not a NumPy dtype")
    case("npz_foreign_dtype_short", npy({**f8, "descr": "<U8"}, bytes(16)), "needs 64 bytes, the member holds 16")
    huge = b"\x93NUMPY\x02\x00" + (2**31).to_bytes(4, "little") + b"{}"
    case("npz_header_too_long", huge, "is too long")
    path = case("npz_deflate_ratio_lie", npy(f8, bytes(16)), "more than deflate can produce", zipfile.ZIP_DEFLATED)
    patch_zip_entry(path, "a.npy", file_size=1 << 31)


def bomb_npz(path: Path, gib: float = 1.25) -> Path:
    """A valid npz whose one deflated member inflates to `gib` GiB of float64 zeros from about a megabyte."""
    nbytes = int(gib * (1 << 30))
    head = npy({"descr": "<f8", "fortran_order": False, "shape": (nbytes // 8,)})
    stream, crc = deflate_bomb(head, nbytes)
    return deflated_member_zip(path, "zeros.npy", stream, len(head) + nbytes, crc)


def path_oddities(c: Corpus) -> None:
    d = c.directory / "paths"
    d.mkdir()

    def case(name: str, path: Path, error: str) -> None:
        c.add(Case(name, path, BAD, BAD, error, kind="path"))

    (d / "empty.pt").write_bytes(b"")
    case("empty", d / "empty.pt", "empty file")
    (d / "random.pt").write_bytes(np.random.default_rng(6).bytes(4096))
    case("random", d / "random.pt", "unrecognised format")
    (d / "folder.pt").mkdir()
    case("directory", d / "folder.pt", "is a directory")
    os.mkfifo(d / "pipe.pt")
    case("fifo", d / "pipe.pt", "FIFO")
    os.symlink(d / "loop_b.pt", d / "loop_a.pt")
    os.symlink(d / "loop_a.pt", d / "loop_b.pt")
    case("symlink_loop", d / "loop_a.pt", "too many levels of symbolic links")
    os.symlink(d / "nowhere.pt", d / "dangling.pt")
    case("dangling_symlink", d / "dangling.pt", "dangling symbolic link")
    os.symlink("/dev/zero", d / "zero.pt")
    case("dev_zero", d / "zero.pt", "character device")
    os.symlink("/dev/urandom", d / "urandom.pt")
    case("dev_urandom", d / "urandom.pt", "character device")
    case("missing", d / "missing.pt", "no such file")


UNREADABLE_ERROR = "permission denied"


def unreadable(directory: Path) -> Path:
    """A file nobody may read (root reads anything: tests drop its DAC capabilities, see `drop_root_reading`)."""
    directory.mkdir(exist_ok=True)
    directory.chmod(0o755)
    path = directory / "unreadable.pt"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    path.chmod(0)
    return path


def drop_root_reading() -> None:
    """For a subprocess's preexec_fn: as root, drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set,
    so the exec'd program honours file permissions like any user."""
    if os.geteuid() != 0:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _rewrite_member(path: Path, member: str, data: bytes) -> None:
    with zipfile.ZipFile(path) as z:
        members = {info.filename: z.read(info) for info in z.infolist()}
    members[member] = data
    with zipfile.ZipFile(path, "w") as z:
        for name, content in members.items():
            z.writestr(name, content)


class _quiet:
    """Silence zipfile's duplicate-name warning while writing the duplicate on purpose."""

    def __enter__(self) -> None:
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc: object) -> None:
        self._catch.__exit__(*exc)


# -- the pickle machine: frames, pickles anywhere, the blocklists' names, obfuscated names, bounds ----------------
# (cases for paramctl/pickles and `scan` reading any pickle; each bullet of that work has at least one case)

FRAME = "<frame>.boundary violation"


def framed(body: bytes, after: bytes) -> bytes:
    """PROTO 4, one FRAME holding `body`, then `after` outside any frame."""
    return b"\x80\x04\x95" + struct.pack("<Q", len(body)) + body + after


def frame_straddle(marker: Path) -> bytes:
    """A BININT whose 4-byte argument crosses its frame's end by 3 bytes. Read flat (pickletools, a naive scanner)
    the int takes the frame's last byte and the next 3; a SHORT_BINBYTES then swallows the payload as data. The C
    unpickler reading a file (pickle.load, torch.load's data.pkl) drops the frame's rest and reads the int from the
    4 bytes after the frame: the length byte becomes EMPTY_DICT and the payload runs."""
    payload = glob("posix", "system") + tup(text(shell(marker))) + b"R."
    assert len(payload) <= ord("}")
    after = b"\x00\x00\x00" + b"C" + b"}" + payload.ljust(ord("}"), b"N") + b"."
    return framed(b"J" + b"A", after)


def pickle_machine(c: Corpus) -> None:
    d = c.directory
    # Frame boundary violations: invalid for every loader, dangerous for scan.
    m = c.marker("frame_straddle_bare")
    path = d / "frame_straddle.pkl"
    path.write_bytes(frame_straddle(m))
    c.add(Case(path.name, path, BAD, DANGEROUS, "unrecognised format", (FRAME,), m, live="pickle-stream"))
    m = c.marker("frame_straddle_zip")
    path = torch_zip(d / "frame_straddle.pt", frame_straddle(m))
    c.add(Case(path.name, path, BAD, DANGEROUS, "frame boundary violation", (FRAME,), m, live="torch"))
    nested = framed(b"\x95" + struct.pack("<Q", 2) + b"N.", b"")  # a frame opened inside the first one
    path = torch_zip(d / "frame_nested.pt", nested)
    c.add(Case(path.name, path, BAD, DANGEROUS, "frame boundary violation", (FRAME,)))
    path = torch_zip(d / "frame_past_end.pt", b"\x80\x04\x95" + struct.pack("<Q", 1 << 40) + b"N.")
    c.add(Case(path.name, path, BAD, DANGEROUS, "frame boundary violation", (FRAME,)))
    line = framed(b"c" + b"posix\nsys", b"tem\n" + tup(text("true")) + b"R.")  # a GLOBAL's line crosses the end
    path = torch_zip(d / "frame_line.pt", line)
    c.add(Case(path.name, path, BAD, DANGEROUS, "frame boundary violation", (FRAME,)))

    # Bare pickles of every protocol, under any name (pickle.load reads them all).
    names = ["p0.pkl", "p1.pickle", "p2.bin", "p3", "p4.pt", "p5.data"]
    for protocol, name in enumerate(names):
        m = c.marker(f"bare_{protocol}")
        path = d / f"bare_{name}"
        path.write_bytes(pickle.dumps(Reduce(os.system, shell(m)), protocol=protocol))
        c.add(Case(path.name, path, BAD, DANGEROUS, "unrecognised format", ("posix.system",), m,
                   live="pickle-file", scan_valid=True))  # fmt: skip
    # Protocol 0 without PROTO, opening with NONE and POP: recognised by its opcodes, not its first byte.
    m = c.marker("no_proto")
    path = d / "no_proto"
    path.write_bytes(b"N0" + glob("posix", "system") + tup(text(shell(m))) + b"R.")
    c.add(Case(path.name, path, BAD, DANGEROUS, "unrecognised format", ("posix.system",), m, live="pickle-file",
               scan_valid=True))  # fmt: skip
    # A lone .npy object array.
    m = c.marker("npy_object")
    path = d / "object.npy"
    np.save(path, np.array([Reduce(os.system, shell(m))], dtype=object), allow_pickle=True)
    c.add(Case(path.name, path, BAD, DANGEROUS, "unrecognised format", ("posix.system",), m, live="npy",
               scan_valid=True))  # fmt: skip
    # Zips whose pickle member has another name.
    for name, member, live in (("zip_config", "model/config.pkl", "pickle"), ("zip_txt", "data.txt", "zip-all")):
        m = c.marker(name)
        path = d / f"{name}.zip"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("README", "weights inside")
            z.writestr(member, pickle.dumps(Reduce(os.system, shell(m)), protocol=2))
        c.add(Case(path.name, path, BAD, DANGEROUS, "unrecognised format", ("posix.system",), m, live=live,
                   scan_valid=True))  # fmt: skip
    # A zip member whose flags claim encryption over a plain pickle. zipfile and torch 2.13's miniz both refuse it
    # (measured: "unsupported encryption"; miniz ignores the other flag bits), so it is not live; a reader taking
    # the bytes from the local header would run it, so scan reads it that way and calls it dangerous.
    m = c.marker("encrypted_flag")
    path = torch_zip(d / "encrypted_flag.pt", pickle.dumps({"evil": Reduce(os.system, shell(m))}, protocol=2))
    patch_zip_entry(path, "archive/data.pkl", flag_bits=1)
    c.add(Case(path.name, path, BAD, DANGEROUS, "encrypted", ("posix.system",), m))
    m = c.marker("flag_bits")  # bits torch ignores (data descriptor, UTF-8 names): the pickle loads and runs
    path = torch_zip(d / "flag_bits.pt", pickle.dumps({"evil": Reduce(os.system, shell(m))}, protocol=2))
    patch_zip_entry(path, "archive/data.pkl", flag_bits=0x806)
    c.add(Case(path.name, path, OK, DANGEROUS, dangerous=("posix.system",), marker=m, live="torch"))

    # Names the established scanners block that paramctl once called unknown or inert.
    m = c.marker("uuid_command")
    payload = call(glob("uuid", "_get_command_stdout"), text("touch"), text(str(m)))
    path = torch_zip(d / "uuid_command.pt", as_dict({"evil": payload}))
    c.add(Case(path.name, path, OK, DANGEROUS, dangerous=("uuid._get_command_stdout",), marker=m, live="torch"))
    for name, (module, attr) in {
        "pip_main": ("pip", "main"),
        "venv_create": ("venv", "create"),
        "posixsubprocess": ("_posixsubprocess", "fork_exec"),
        "operator_twin": ("_operator", "attrgetter"),
        "read_pickle": ("pandas", "read_pickle"),
        "joblib_load": ("joblib", "load"),
        "collect_env": ("torch.utils.collect_env", "run"),
    }.items():
        path = torch_zip(d / f"{name}.pt", as_dict({"evil": call(glob(module, attr), text("x"))}))
        c.add(Case(path.name, path, OK, DANGEROUS, dangerous=(f"{module}.{attr}",)))

    # STACK_GLOBAL with a module name computed at load time (str('posix')): pickle imports and calls it.
    m = c.marker("computed_name")
    computed = b"\x80\x04" + call(glob("builtins", "str"), short_uni("posix")) + short_uni("system") + b"\x93"
    path = torch_zip(d / "computed_name.pt", computed + tup(short_uni(shell(m))) + b"R.")
    computed_global = ("<built on the stack>.computed name",)
    c.add(Case(path.name, path, BAD, DANGEROUS, "built on the stack", computed_global, m, live="torch"))

    # One placeholder called 100,000 times, memoizing every result: linear work, bounded names.
    path = torch_zip(d / "placeholder_calls.pt", placeholder_calls(100_000))
    c.add(Case(path.name, path, OK, OK, kind="valid"))


def placeholder_calls(count: int) -> bytes:
    """`GLOBAL foo bar`, then `EMPTY_TUPLE REDUCE MEMOIZE` `count` times: each call's result is called again."""
    return b"\x80\x04" + glob("foo", "bar") + b"\x94" + b")R\x94" * count + b"."


# -- proving the payloads are live -----------------------------------------------------------------------------------

LIVE_SCRIPT = """
import copyreg, pickle, sys, warnings
import numpy as np
import torch
warnings.simplefilter("ignore")
for code, (module, name) in {extensions!r}.items():
    copyreg.add_extension(module, name, code)
for how, path in {jobs!r}:
    try:
        if how == "torch":
            torch.load(path, weights_only=False)
        elif how == "numpy":
            with np.load(path, allow_pickle=True) as archive:
                [archive[key] for key in archive.files]
        elif how == "pickle-file":  # the C unpickler reading a file, as torch.load reads a zip's data.pkl
            with open(path, "rb") as f:
                pickle.load(f)
        elif how == "pickle-stream":  # a file object without peek (BytesIO, a socket): frames prefetched by read
            import io
            with open(path, "rb") as f:
                pickle.load(io.BytesIO(f.read()))
        elif how == "npy":
            np.load(path, allow_pickle=True)
        elif how == "zip-all":  # every member, whatever its name
            import zipfile
            with zipfile.ZipFile(path) as z:
                for name in z.namelist():
                    try:
                        pickle.loads(z.read(name))
                    except Exception:
                        pass
        else:
            import zipfile
            with zipfile.ZipFile(path) as z:
                for name in z.namelist():
                    if name.endswith(".pkl"):
                        try:
                            pickle.loads(z.read(name))
                        except Exception:
                            pass
    except BaseException:
        pass
"""


def live_check(cases: list[Case], python: str) -> list[Path]:
    """Run every live case through the real loaders (in one subprocess); return the markers that appeared."""
    jobs = [(case.live, str(case.path)) for case in cases if case.live]
    script = LIVE_SCRIPT.format(extensions=EXTENSION_CODES, jobs=jobs)
    done = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return [case.marker for case in cases if case.marker is not None and case.marker.exists()]


def valid_unusual(directory: Path) -> dict[str, Path]:
    """Valid files with unusual content (guarantee 5), written by torch and numpy."""
    import argparse
    import pathlib

    import torch

    files: dict[str, Path] = {}

    def save(name: str, obj: object, **kw: object) -> None:
        files[name] = directory / f"{name}.pt"
        torch.save(obj, files[name], **kw)  # type: ignore[arg-type]

    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    save(
        "views",
        {"base": base, "t": base.t(), "col": base[:, 1], "step": base[::2, ::3], "empty": torch.zeros(0, 3),
         "scalar": torch.tensor(2.5), "narrow": base.narrow(1, 2, 3)},
    )  # fmt: skip
    save("views_legacy", {"base": base, "t": base.t(), "col": base[:, 1]}, _use_new_zipfile_serialization=False)
    save(
        "names",
        {"ünïcødé.wéight": torch.ones(1), "日本語": torch.ones(2), "x" * 5000: torch.ones(3), "tab\tand\nnewline": 1,
         "\u202eevil": torch.ones(1)},
    )  # fmt: skip
    save("many", {f"t{i}": torch.full((1,), float(i)) for i in range(10_000)})
    nested: dict[str, object] = {"leaf": torch.ones(1)}
    for _ in range(100):
        nested = {"n": nested}
    save("nested", nested)
    save(
        "foreign",
        {"args": argparse.Namespace(lr=0.1, layers=[1, 2], name="run"), "np_f8": np.float64(1.5),
         "np_i4": np.int32(-3), "np_f4": np.float32(0.25), "np_bool": np.bool_(True), "np_c16": np.complex128(1 - 2j),
         "np_u8": np.uint8(200), "np_f2": np.float16(-2.5), "np_array": np.arange(6).reshape(2, 3),
         "path": pathlib.PurePosixPath("/data/run1"), "w": torch.ones(2)},
        pickle_protocol=2,
    )  # fmt: skip
    files["big_endian"] = npz(
        directory / "big_endian.npz",
        {"be.npy": _npy_bytes(np.arange(6, dtype=">f8").reshape(2, 3)),
         "fortran.npy": _npy_bytes(np.asfortranarray(np.arange(6, dtype="<i4").reshape(2, 3))),
         "zero_d.npy": _npy_bytes(np.array(3.5)), "empty.npy": _npy_bytes(np.zeros((0, 4), dtype="<f2"))},
    )  # fmt: skip
    return files


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


__all__ = ["BAD", "DANGEROUS", "OK", "Case", "OrderedDict", "bomb_npz", "build", "live_check", "valid_unusual"]
