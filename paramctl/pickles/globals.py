"""What a global would do if a real unpickler imported it: the classification table (rebuilt, inert, unknown,
dangerous, each entry with its reason) and torch's weights_only tables, kept as data. Judged by name only: nothing
is ever imported."""

from __future__ import annotations

import _compat_pickle

from paramctl.pickles.machine import COMPUTED_MODULE, EXTENSION_MODULE, FRAME_MODULE, FRAME_VIOLATION, resolve_global

REBUILT, INERT, UNKNOWN, DANGEROUS = "rebuilt", "inert", "unknown", "dangerous"
CLASSES = (REBUILT, INERT, UNKNOWN, DANGEROUS)  # in increasing order of concern
ALLOWED, REFUSED, BLOCKED = "allowed", "refused", "blocked"

# -- dangerous -----------------------------------------------------------------------------------------------------
# A whole module (every name in it, and below it) or one callable. A superset of picklescan's and modelscan's
# unsafe globals (tests/scanner_blocklists.py holds their lists; a test checks every entry), plus what either misses
# that a pickle can reach (file writers, other deserialisers, code builders). Where a scanner blocks a whole module,
# so does this table, even for names in it that hold data (uuid.UUID): an "all clear" must never be given where an
# established scanner raises an alarm.
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
    # from picklescan's and modelscan's lists, and others that run code or load pickles
    "pip": "installs and runs packages",
    "venv": "creates environments and runs pip in them",
    "ensurepip": "runs pip",
    "distutils": "compiles, spawns programs and writes files",
    "setuptools.sandbox": "runs setup scripts",
    "test": "CPython's test helpers spawn Python processes (test.support.script_helper)",
    "doctest": "runs Python source from docstrings",
    "idlelib": "IDLE's shell and debugger run Python source",
    "imaplib.IMAP4_stream": "runs a shell command",
    "lib2to3.pgen2.grammar.Grammar.loads": "loads a pickle",
    "lib2to3.pgen2.pgen.ParserGenerator.make_label": "evaluates Python source",
    "uuid": "uuid._get_command_stdout runs programs (picklescan blocks the whole module, uuid.UUID included)",
    "_osx_support": "runs programs (_read_output, _find_build_tool)",
    "_aix_support": "runs programs (_read_cmd_output)",
    "_pyrepl": "runs programs (its pagers) and Python source",
    "_thread.start_new_thread": "calls any callable in a new thread",
    "logging.FileHandler": "creates and writes files",
    "logging.config": "configures logging from files and sockets (runs listeners)",
    "operator.itemgetter": "reaches any item of any object",
    "functools.partialmethod": "wraps another callable for a later call",
    "pkgutil.resolve_name": "imports any object by name",
    "types.CodeType": "builds code objects",
    "numpy.testing._private.utils": "runs Python source (runstring)",
    "numpy.lib._npyio_impl": "loads and saves files, pickles included when allowed",
    "numpy.lib._format_impl": "reads .npy files, pickles included when allowed",
    "pandas.read_pickle": "loads another pickle",
    "pandas.io.pickle": "loads other pickles",
    "pandas.core.common.pickle": "loads other pickles",
    "sklearn.externals.joblib": "loads pickles from files",
    "jsonpickle": "decodes JSON into any object (imports and calls what it names)",
    "yaml.load": "builds any Python object the YAML names (with its unsafe loaders)",
    "yaml.load_all": "builds any Python object the YAML names (with its unsafe loaders)",
    "yaml.unsafe_load": "builds any Python object the YAML names",
    "yaml.unsafe_load_all": "builds any Python object the YAML names",
    "torch._dynamo.guards.GuardBuilder.get": "evaluates Python source",
    "torch.fx.experimental.symbolic_shapes.ShapeEnv.evaluate_guards_expression": "evaluates Python source",
    "torch.utils._config_module.ConfigModule.load_config": "loads a pickle",
    "torch.utils.bottleneck": "runs Python scripts under the profilers",
    "torch.utils.collect_env": "runs programs (collect_env.run)",
    "torch.utils.data.datapipes.utils.decoder.basichandlers": "loads pickles from the data it decodes",
    "torch.utils.model_zoo": "downloads and loads checkpoints",
}
# C implementations and aliases, judged as the module they stand for: a blocklist entry for `operator.attrgetter`
# must not be sidestepped by writing `_operator.attrgetter` (what the pickle of operator.attrgetter names anyway).
MODULE_TWINS = {
    "_operator": "operator",
    "_functools": "functools",
    "_posixsubprocess": "subprocess",
    "_winapi": "subprocess",
    "_pickle": "pickle",
    "cPickle": "pickle",
    "_io": "io",
    "_pyio": "io",
    "posix": "os",
    "nt": "os",
    "_socket": "socket",
    "_ssl": "ssl",
    "_asyncio": "asyncio",
    "_ctypes": "ctypes",
    "_signal": "signal",
    "_sqlite3": "sqlite3",
    "_multiprocessing": "multiprocessing",
    "_posixshmem": "multiprocessing",
    "_imp": "importlib",
    "_frozen_importlib": "importlib",
    "_frozen_importlib_external": "importlib",
    "_lsprof": "cProfile",
    "_codecs": "codecs",
    "_thread": "threading",
    "_pydecimal": "decimal",
    "_datetime": "datetime",
    "_pydatetime": "datetime",
    "_collections": "collections",
    "_uuid": "uuid",
    "__builtin__": "builtins",
}
# Pseudo-modules the pickle machine records for what a pickle does that no global's name says.
_PSEUDO_GLOBALS = {
    EXTENSION_MODULE: "named by an extension code: what it calls is decided by the loading process, not the file",
    FRAME_MODULE: FRAME_VIOLATION,
    COMPUTED_MODULE: "a STACK_GLOBAL whose module or name is built on the stack: an obfuscation",
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
    if module in _PSEUDO_GLOBALS:
        return DANGEROUS, _PSEUDO_GLOBALS[module]
    written = _twin_checked(module, name)
    renamed = _python3(module, name)
    if renamed == (module, name):
        return written
    # Python 3 imports the renamed global (a written Python 2 name would not even import): judge that one,
    # unless the written name is itself a known danger.
    return written if written[0] == DANGEROUS else _twin_checked(*renamed)


def _twin_checked(module: str, name: str) -> tuple[str, str]:
    """As written, unless the module is a C half or alias of a module whose name is dangerous: then dangerous."""
    written = _classify_path(module, name)
    top, _, rest = module.partition(".")
    twin = MODULE_TWINS.get(top)
    if written[0] == DANGEROUS or twin is None:
        return written
    cls, reason = _classify_path(twin + ("." + rest if rest else ""), name)
    return (DANGEROUS, f"{reason} ({module} is {twin})") if cls == DANGEROUS else written


STRICT_CLASSES = (REBUILT, INERT)


def strict_allowed(module: str, name: str) -> bool:
    """Whether `scan --strict` accepts a global: torch's weights_only allowlist (classed inert) or paramctl's own
    rebuilt and inert data types; nothing unknown, nothing dangerous."""
    return classify(module, name)[0] in STRICT_CLASSES


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
