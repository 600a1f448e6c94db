"""`scan`: every global a checkpoint's pickles reference, where it appears, and what loading it would do.

A pickle names globals (a module and a name) and calls them; `pickle.load` and `torch.load(weights_only=False)`
import and call whatever the file names. paramctl never does (see loaders/unpickler.py); `scan` says what the file
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

import _compat_pickle
import importlib
import os
import pathlib
from dataclasses import dataclass, field
from typing import Any

from paramctl.errors import CorruptFileError, FileError, UnknownFormatError
from paramctl.loaders.unpickler import GlobalRef, PickleScan, resolve_global, scan_pickle
from paramctl.registry import BUILTIN_DIRECTORY_LOADERS, detect, load, probe_file

REBUILT, INERT, UNKNOWN, DANGEROUS = "rebuilt", "inert", "unknown", "dangerous"
CLASSES = (REBUILT, INERT, UNKNOWN, DANGEROUS)  # in increasing order of concern
ALLOWED, REFUSED, BLOCKED = "allowed", "refused", "blocked"

# -- dangerous -----------------------------------------------------------------------------------------------------
# A whole module (every name in it, and below it) or one callable. Anchors: picklescan's and modelscan's unsafe
# globals, plus what either misses that a pickle can reach (file writers, other deserialisers, code builders).
_DANGEROUS_MODULES = {
    "os": "operating-system calls (os.system, os.remove, os.exec*)",
    "posix": "operating-system calls (the os module's C half)",
    "nt": "operating-system calls (the os module's C half, Windows)",
    "sys": "interpreter internals (sys.modules, sys.exit)",
    "subprocess": "runs programs",
    "pty": "runs programs in a pseudo-terminal",
    "commands": "runs shell commands (Python 2)",
    "popen2": "runs programs (Python 2)",
    "runpy": "runs Python modules and files",
    "code": "runs Python source",
    "codeop": "compiles Python source",
    "timeit": "runs Python source given as text",
    "profile": "runs Python source given as text",
    "cProfile": "runs Python source given as text",
    "trace": "runs Python source",
    "pdb": "runs Python source in the debugger",
    "bdb": "runs Python source in the debugger",
    "importlib": "imports any module by name",
    "imp": "imports any module by name",
    "_imp": "imports any module by name",
    "pkgutil": "imports any module by name",
    "zipimport": "imports code from zip files",
    "pydoc": "imports any object by name (pydoc.locate)",
    "marshal": "loads code objects",
    "types": "builds functions and code objects",
    "ctypes": "calls C functions and writes memory",
    "_ctypes": "calls C functions and writes memory",
    "pickle": "loads another pickle, without restrictions",
    "_pickle": "loads another pickle, without restrictions",
    "cPickle": "loads another pickle, without restrictions",
    "shelve": "loads pickles from files",
    "dill": "loads another pickle, without restrictions",
    "cloudpickle": "loads another pickle, without restrictions",
    "joblib": "loads pickles from files",
    "socket": "opens network connections",
    "_socket": "opens network connections",
    "ssl": "opens network connections",
    "asyncio": "runs programs and opens network connections",
    "http": "opens network connections",
    "httplib": "opens network connections (Python 2)",
    "urllib": "fetches URLs",
    "urllib2": "fetches URLs (Python 2)",
    "urllib3": "fetches URLs",
    "requests": "fetches URLs",
    "aiohttp": "fetches URLs",
    "ftplib": "opens network connections",
    "smtplib": "sends mail",
    "telnetlib": "opens network connections",
    "xmlrpc": "calls remote procedures",
    "webbrowser": "opens URLs in a browser",
    "multiprocessing": "starts processes",
    "signal": "sends and handles signals",
    "shutil": "copies, moves and deletes files",
    "tempfile": "creates files",
    "zipfile": "writes and extracts archives",
    "tarfile": "writes and extracts archives",
    "sqlite3": "creates and writes database files",
    "builtins.eval": "evaluates Python source",
    "builtins.exec": "runs Python source",
    "builtins.execfile": "runs a Python file",
    "builtins.compile": "compiles Python source",
    "builtins.open": "opens (and creates or truncates) files",
    "builtins.file": "opens files (Python 2)",
    "builtins.input": "reads the terminal",
    "builtins.raw_input": "reads the terminal (Python 2)",
    "builtins.getattr": "reaches any attribute: any method of any object",
    "builtins.setattr": "changes any attribute",
    "builtins.delattr": "deletes any attribute",
    "builtins.__import__": "imports any module by name",
    "builtins.globals": "reaches the interpreter's globals",
    "builtins.locals": "reaches the interpreter's locals",
    "builtins.vars": "reaches an object's namespace",
    "builtins.breakpoint": "starts the debugger",
    "builtins.exit": "exits the interpreter",
    "builtins.quit": "exits the interpreter",
    "builtins.apply": "calls any callable (Python 2)",
    "builtins.reload": "re-imports modules (Python 2)",
    "builtins.help": "starts the interactive help (imports modules)",
    "builtins.__build_class__": "builds classes from code",
    "io.open": "opens (and creates or truncates) files",
    "io.open_code": "opens files",
    "io.FileIO": "opens (and creates or truncates) files",
    "_io.open": "opens (and creates or truncates) files",
    "_io.open_code": "opens files",
    "_io.FileIO": "opens (and creates or truncates) files",
    "codecs.open": "opens files",
    "fileinput": "opens files",
    "functools.partial": "wraps another callable for a later call",
    "functools.reduce": "calls another callable",
    "operator.attrgetter": "reaches any attribute",
    "operator.methodcaller": "calls any method",
    "numpy.load": "loads .npy/.npz files, pickles included when allowed",
    "numpy.lib.npyio": "loads and saves files",
    "numpy.lib.format": "reads .npy files, pickles included when allowed",
    "numpy.fromfile": "reads files",
    "numpy.save": "writes files",
    "numpy.savez": "writes files",
    "numpy.savetxt": "writes files",
    "numpy.memmap": "maps (and creates) files",
    "numpy.ctypeslib": "loads shared libraries",
    "numpy.f2py": "compiles and runs code",
    "numpy.distutils": "compiles and runs code",
    "numpy.testing._private.utils.runstring": "runs Python source",
    "torch.load": "loads another pickle (weights_only=False by choice of the file)",
    "torch.serialization.load": "loads another pickle",
    "torch.serialization._legacy_load": "loads another pickle",
    "torch.storage._load_from_bytes": "calls torch.load on bytes from the file (weights_only=False)",
    "torch.jit": "loads and runs TorchScript",
    "torch.hub": "downloads and runs code",
    "torch.package": "loads and runs packaged code",
    "torch.utils.cpp_extension": "compiles and loads native code",
    "torch._inductor.codecache": "compiles and loads generated code",
    "torch.fx.graph_module": "builds modules by running Python source (reduce_graph_module)",
    "torch._C": "torch's C++ internals",
    "torch.ops": "calls any registered operator",
    "torch.library": "registers operators",
    "torch.compile": "compiles and runs code",
}
# Attribute segments that reach another module or the interpreter: `posixpath.os.system` is os.system.
_DANGEROUS_SEGMENTS = {m.split(".")[0] for m in _DANGEROUS_MODULES if "." not in m and m not in ("types", "code")}
_DANGEROUS_SEGMENTS |= {"builtins", "__builtins__", "__builtin__", "modules"}
_SAFE_DUNDERS = {"copyreg.__newobj__", "copyreg.__newobj_ex__"}

# -- inert -----------------------------------------------------------------------------------------------------------
# Data types: building one stores values and runs no code the file chooses. Exact names only.
_INERT = {
    "argparse.Namespace": "argparse options (a training script's arguments)",
    "types.SimpleNamespace": "a namespace of values",
    "pathlib.Path": "a path",
    "pathlib.PosixPath": "a path",
    "pathlib.WindowsPath": "a path",
    "pathlib.PurePath": "a path",
    "pathlib.PurePosixPath": "a path",
    "pathlib.PureWindowsPath": "a path",
    "collections.Counter": "a counter",
    "collections.defaultdict": "a dict with a default factory",
    "collections.deque": "a deque",
    "datetime.datetime": "a date and time",
    "datetime.date": "a date",
    "datetime.time": "a time",
    "datetime.timedelta": "a duration",
    "datetime.timezone": "a time zone",
    "decimal.Decimal": "a decimal number",
    "fractions.Fraction": "a fraction",
    "uuid.UUID": "a UUID",
    "random.Random": "a random generator's state",
    "builtins.object": "a plain object",
    "builtins.int": "an int",
    "builtins.float": "a float",
    "builtins.str": "a str",
    "builtins.bytes": "bytes",
    "builtins.bool": "a bool",
    "builtins.range": "a range",
    "builtins.slice": "a slice",
    "builtins.Ellipsis": "Ellipsis",
    "builtins.NotImplemented": "NotImplemented",
    "builtins.type": "a type object",
    "builtins.print": "prints its arguments",
    "copyreg._reconstructor": "pickle's machinery for classes pickled with protocols 0 and 1",
    "copyreg.__newobj__": "pickle's machinery for new-style classes",
    "copyreg.__newobj_ex__": "pickle's machinery for new-style classes",
    "numpy.ndarray": "a numpy array",
    "numpy.core.multiarray._reconstruct": "a numpy array",
    "numpy.random._pickle.__randomstate_ctor": "a numpy random generator's state",
    "numpy.random._pickle.__generator_ctor": "a numpy random generator's state",
    "numpy.random._pickle.__bit_generator_ctor": "a numpy random generator's state",
    "torch.nn.parameter.Parameter": "a parameter",
    "torch.Tensor": "a tensor",
    "torch.device": "a device name",
    "torch.serialization._get_layout": "a tensor layout",
    # A distributed checkpoint's `.metadata` (torch/distributed/checkpoint/metadata.py, filesystem.py): dataclasses
    # rebuilt with __new__ and their state (TensorProperties' __setstate__ only maps a memory-format enum).
    **{
        f"torch.distributed.checkpoint.{name}": "distributed checkpoint metadata (a data class)"
        for name in (
            "metadata.Metadata",
            "metadata.TensorStorageMetadata",
            "metadata.BytesStorageMetadata",
            "metadata.ChunkStorageMetadata",
            "metadata.TensorProperties",
            "metadata.MetadataIndex",
            "metadata.StorageMeta",
            "metadata._MEM_FORMAT_ENCODING",
            "filesystem._StorageInfo",
        )
    },
}
_INERT_PREFIXES = {
    "numpy.dtypes.": "a numpy dtype",
    "torch.nn.modules.": "a torch module class: a whole model saved with torch.save(model)",
}

# -- torch.load(weights_only=True) -----------------------------------------------------------------------------------
# torch 2.13's `_get_allowed_globals()` (torch/_weights_only_unpickler.py), verbatim; tests compare it with torch.
TORCH_WEIGHTS_ONLY_ALLOWED = frozenset(
    """
    _codecs.encode builtins.bytearray builtins.complex builtins.set collections.Counter collections.OrderedDict
    torch.BFloat16Storage torch.BFloat16Tensor torch.BoolStorage torch.BoolTensor torch.ByteStorage
    torch.ByteTensor torch.CharStorage torch.CharTensor torch.ComplexDoubleStorage torch.ComplexFloatStorage
    torch.DoubleStorage torch.DoubleTensor torch.FloatStorage torch.FloatTensor torch.HalfStorage
    torch.HalfTensor torch.IntStorage torch.IntTensor torch.LongStorage torch.LongTensor torch.QInt32Storage
    torch.QInt8Storage torch.QUInt2x4Storage torch.QUInt4x2Storage torch.QUInt8Storage torch.ShortStorage
    torch.ShortTensor torch.Size torch.Tensor torch._tensor._rebuild_from_type_v2
    torch._utils._rebuild_device_tensor_from_cpu_tensor torch._utils._rebuild_device_tensor_from_numpy
    torch._utils._rebuild_meta_tensor_no_storage torch._utils._rebuild_nested_tensor
    torch._utils._rebuild_parameter torch._utils._rebuild_parameter_with_state torch._utils._rebuild_qtensor
    torch._utils._rebuild_sparse_tensor torch._utils._rebuild_tensor torch._utils._rebuild_tensor_v2
    torch._utils._rebuild_tensor_v3 torch._utils._rebuild_wrapper_subclass torch.bfloat16 torch.bits16
    torch.bits1x8 torch.bits2x4 torch.bits4x2 torch.bits8 torch.bool torch.complex128 torch.complex32
    torch.complex64 torch.cuda.BFloat16Storage torch.cuda.BFloat16Tensor torch.cuda.BoolStorage
    torch.cuda.BoolTensor torch.cuda.ByteStorage torch.cuda.ByteTensor torch.cuda.CharStorage
    torch.cuda.CharTensor torch.cuda.ComplexDoubleStorage torch.cuda.ComplexFloatStorage
    torch.cuda.DoubleStorage torch.cuda.DoubleTensor torch.cuda.FloatStorage torch.cuda.FloatTensor
    torch.cuda.HalfStorage torch.cuda.HalfTensor torch.cuda.IntStorage torch.cuda.IntTensor
    torch.cuda.LongStorage torch.cuda.LongTensor torch.cuda.ShortStorage torch.cuda.ShortTensor
    torch.cuda.sparse.BFloat16Tensor torch.cuda.sparse.ByteTensor torch.cuda.sparse.CharTensor
    torch.cuda.sparse.DoubleTensor torch.cuda.sparse.FloatTensor torch.cuda.sparse.HalfTensor
    torch.cuda.sparse.IntTensor torch.cuda.sparse.LongTensor torch.cuda.sparse.ShortTensor torch.device
    torch.float16 torch.float32 torch.float4_e2m1fn_x2 torch.float64 torch.float8_e4m3fn torch.float8_e4m3fnuz
    torch.float8_e5m2 torch.float8_e5m2fnuz torch.float8_e8m0fnu torch.int1 torch.int16 torch.int2 torch.int3
    torch.int32 torch.int4 torch.int5 torch.int6 torch.int64 torch.int7 torch.int8 torch.nn.parameter.Parameter
    torch.per_channel_affine torch.per_channel_affine_float_qparams torch.per_channel_symmetric
    torch.per_tensor_affine torch.per_tensor_symmetric torch.qint32 torch.qint8 torch.quint2x4 torch.quint4x2
    torch.quint8 torch.serialization._get_layout torch.sparse.BFloat16Tensor torch.sparse.ByteTensor
    torch.sparse.CharTensor torch.sparse.DoubleTensor torch.sparse.FloatTensor torch.sparse.HalfTensor
    torch.sparse.IntTensor torch.sparse.LongTensor torch.sparse.ShortTensor torch.storage.TypedStorage
    torch.storage.UntypedStorage torch.uint1 torch.uint16 torch.uint2 torch.uint3 torch.uint32 torch.uint4
    torch.uint5 torch.uint6 torch.uint64 torch.uint7 torch.uint8
    """.split()  # noqa: SIM905 (a word list reads better than one quoted name per line)
)
# Modules torch refuses even when a user allowlists a name in them (`_blocklisted_modules`).
TORCH_WEIGHTS_ONLY_BLOCKED = frozenset({"sys", "os", "posix", "nt"})
# The Python 2 renames torch applies before the allowlist check (torch._utils.IMPORT_MAPPING / NAME_MAPPING).
_TORCH_IMPORT_MAPPING = {
    "__builtin__": "builtins", "copy_reg": "copyreg", "Queue": "queue", "repr": "reprlib",
    "_abcoll": "collections.abc", "UserDict": "collections", "UserList": "collections", "UserString": "collections",
    "whichdb": "dbm", "StringIO": "io", "cStringIO": "io",
}  # fmt: skip
_TORCH_NAME_MAPPING = {
    ("__builtin__", "xrange"): ("builtins", "range"), ("__builtin__", "reduce"): ("functools", "reduce"),
    ("__builtin__", "intern"): ("sys", "intern"), ("__builtin__", "unichr"): ("builtins", "chr"),
    ("__builtin__", "unicode"): ("builtins", "str"), ("__builtin__", "long"): ("builtins", "int"),
    ("itertools", "izip"): ("builtins", "zip"), ("itertools", "imap"): ("builtins", "map"),
    ("itertools", "ifilter"): ("builtins", "filter"), ("itertools", "ifilterfalse"): ("itertools", "filterfalse"),
    ("itertools", "izip_longest"): ("itertools", "zip_longest"),
    ("UserDict", "IterableUserDict"): ("collections", "UserDict"),
    ("UserList", "UserList"): ("collections", "UserList"),
    ("UserString", "UserString"): ("collections", "UserString"), ("__builtin__", "basestring"): ("builtins", "str"),
    ("exceptions", "StandardError"): ("builtins", "Exception"), ("UserDict", "UserDict"): ("collections", "UserDict"),
}  # fmt: skip
# The opcodes torch's weights_only unpickler implements (its `load` loop); any other one fails the load.
TORCH_WEIGHTS_ONLY_OPCODES = frozenset(
    """
    GLOBAL NEWOBJ REDUCE BUILD APPEND APPENDS SETITEM SETITEMS MARK TUPLE TUPLE1 TUPLE2 TUPLE3 NONE NEWFALSE
    NEWTRUE EMPTY_TUPLE EMPTY_LIST EMPTY_DICT EMPTY_SET BININT BININT1 BININT2 BINFLOAT BINUNICODE
    SHORT_BINSTRING BINPERSID BINGET LONG_BINGET BINPUT LONG_BINPUT LONG1 PROTO STOP
    """.split()  # noqa: SIM905
)


def torch_weights_only(module: str, name: str) -> str:
    """What torch.load(weights_only=True) does with this GLOBAL: allowed, refused (allowlist it with
    `add_safe_globals` if trusted) or blocked (its module can never be allowlisted)."""
    module, name = _torch_renamed(module, name)
    if module in TORCH_WEIGHTS_ONLY_BLOCKED:
        return BLOCKED
    return ALLOWED if f"{module}.{name}" in TORCH_WEIGHTS_ONLY_ALLOWED else REFUSED


def torch_name(module: str, name: str) -> str:
    """The name torch's weights_only loader checks (and prints in its refusal): Python 2 names renamed first."""
    return ".".join(_torch_renamed(module, name))


def _torch_renamed(module: str, name: str) -> tuple[str, str]:
    if (module, name) in _TORCH_NAME_MAPPING:
        return _TORCH_NAME_MAPPING[module, name]
    return _TORCH_IMPORT_MAPPING.get(module, module), name


def classify(module: str, name: str) -> tuple[str, str]:
    """(class, reason) for a global, by its name only: the name Python 3 would import (pickle renames Python 2
    names for protocols 0-2), or the name as written when that one is known to be dangerous."""
    if module == "<extension registry>":
        return DANGEROUS, "named by an extension code: what it calls is decided by the loading process, not the file"
    written = _classify_path(module, name)
    renamed = _python3(module, name)
    if renamed == (module, name):
        return written
    # Python 3 imports the renamed global (a written Python 2 name would not even import): judge that one,
    # unless the written name is itself a known danger.
    return written if written[0] == DANGEROUS else _classify_path(*renamed)


def python3_name(module: str, name: str) -> str:
    """What Python 3's unpickler imports for a Python 2 name (protocols 0-2 write `__builtin__.exec`, and
    `commands.Popen` for subprocess.Popen): _compat_pickle's mapping, as pickle applies it."""
    return ".".join(_python3(module, name))


def _python3(module: str, name: str) -> tuple[str, str]:
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[module, name]  # type: ignore[no-any-return]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


# TorchScript's container tags (torch/jit/_pickle.py): each returns its argument, so an archive with a list or dict
# attribute is not dangerous for naming them, although the rest of torch.jit loads and runs code.
_TORCHSCRIPT_TAGS = {
    f"torch.jit._pickle.{tag}"
    for tag in ("build_intlist", "build_tensorlist", "build_doublelist", "build_boollist", "restore_type_tag")
}


def _classify_path(module: str, name: str) -> tuple[str, str]:
    full = f"{module}.{name}"
    if full in _TORCHSCRIPT_TAGS:
        return INERT, "a TorchScript container tag: returns its argument"
    segments = full.split(".")
    # Longest dangerous prefix first: `torch.serialization.load`, `os`, `builtins.eval`.
    for end in range(len(segments), 0, -1):
        reason = _DANGEROUS_MODULES.get(".".join(segments[:end]))
        if reason is not None:
            return DANGEROUS, reason
    attributes = name.split(".")
    if len(attributes) > 1:  # protocol 4 resolves dotted names attribute by attribute
        for segment in attributes:
            if segment in _DANGEROUS_SEGMENTS:
                return DANGEROUS, f"reaches {segment!r} through an attribute chain"
        for end in range(len(segments) - 1, len(module.split(".")), -1):
            prefix = ".".join(segments[:end])
            if prefix in _INERT or _rebuilt(*prefix.rsplit(".", 1)):
                return DANGEROUS, f"an attribute of {prefix}: a method the pickle can call on anything"
    if any(s.startswith("__") and s.endswith("__") for s in attributes) and full not in _SAFE_DUNDERS:
        return DANGEROUS, "a dunder attribute: reaches interpreter internals"
    if _rebuilt(module, name):
        return REBUILT, _rebuilt_reason(module, name)
    if full in _INERT:
        return INERT, _INERT[full]
    for prefix, reason in _INERT_PREFIXES.items():
        if full.startswith(prefix):
            return INERT, reason
    if full in TORCH_WEIGHTS_ONLY_ALLOWED:
        return INERT, "allowlisted by torch's weights_only loader; shown as a placeholder"
    return UNKNOWN, "not recognised: loading imports its module and calls it"


def _rebuilt(module: str, name: str) -> bool:
    return not hasattr(resolve_global(module, name), "qualname")  # a Global marker has a qualname


def _rebuilt_reason(module: str, name: str) -> str:
    if module.startswith("torch"):
        return "tensor machinery, rebuilt by paramctl"
    if module.startswith("numpy"):
        return "a numpy value, decoded by paramctl"
    return "a container or value, rebuilt by paramctl"


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
        if not _looks_like_pickle(probe.head):
            raise
        return _bare_pickle(probe)
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
    `scan_notes` on how torch loads each): a DCP folder's `.metadata` and the records inside its rank files.
    Added for distributed checkpoints (issue 12)."""
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
                weights_only = torch_weights_only(ref.module, ref.name) if torch else None
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


def _looks_like_pickle(head: bytes) -> bool:
    """A bare pickle: a protocol 2+ header, or a protocol 0/1 pickle opening with MARK, GLOBAL or an empty list
    or dict. torch.load treats any non-zip file as the legacy format and unpickles it before checking it."""
    return (head[:1] == b"\x80" and head[1:2] != b"" and head[1] <= 5) or head[:1] in (b"(", b"c", b"]", b"}")


def _bare_pickle(probe: Any) -> ScanResult:
    from paramctl.loaders.pytorch import _PagedBytes

    data, position, scans = _PagedBytes(probe.source), 0, []
    while position < probe.source.size and len(scans) < _MAX_BARE_PICKLES:
        scan_ = scan_pickle(data, f"pickle {len(scans) + 1}", position)
        scans.append(scan_)
        if scan_.end is None:
            break
        position = scan_.end
    result = ScanResult(probe.name, "pickle")
    result.problems.append("not a checkpoint paramctl reads: a bare pickle (torch.load would unpickle it, then fail)")
    _collect(result, scans, torch=True)
    result.weights_only_unsupported_opcodes = sorted(
        {op for s in scans for op in s.opcodes} - TORCH_WEIGHTS_ONLY_OPCODES
    )
    return result
