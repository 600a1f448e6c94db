"""The restricted pickle machine: it rebuilds tensors and plain containers and never runs anything from the file.

This is a small pickle virtual machine (protocols 0-5), not `pickle.Unpickler`: no global named by the file is ever
imported or called. A few globals are recognised and rebuilt by paramctl's own code (torch's tensor rebuild
functions, storage classes, dtypes, OrderedDict, builtin containers); every other global becomes an OpaqueObject
that records its name and whatever the pickle puts inside it, so the tensors and values in it stay visible. The
memo is a dict and every length is checked against the bytes present, so a lying pickle cannot make it allocate.

Every global the pickle names is recorded with its opcode and byte offset (`globals_seen`), whichever opcode names
it (GLOBAL, STACK_GLOBAL, INST, EXT1/2/4); `walk.scan_pickle` runs the same machine without rebuilding anything,
so a file whose tensors are broken can still be scanned, and says where each global ends up in the object.

Protocol 4 frames are enforced as pickle.py enforces them (no read across a frame's end, no frame inside another's
unread bytes, none past the end): the C unpickler reading a file does not, and would run other opcodes than the
ones read here. Placeholder names and reprs are bounded, so work stays linear in the pickle's size.
"""

from __future__ import annotations

import codecs
import math
import pickletools
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from paramctl import dtypes
from paramctl.dtypes import DType
from paramctl.tree import MAX_DEPTH, OpaqueObject, Storage, Tensor, short_repr, split_key

INT64_MAX = (1 << 63) - 1  # torch sizes, strides and offsets are int64: anything larger is a lie


class PickleError(Exception):
    """The pickle breaks the format or hands a rebuild function bad arguments."""


FRAME_VIOLATION = "frame boundary violation: a C unpickler may execute hidden opcodes"


class FrameViolation(PickleError):
    """A read crosses the end of a protocol 4 frame, a frame opens inside another's unread bytes, or a frame runs
    past the pickle. pickle.py refuses these; the C unpickler reading a file does not: it serves reads from the
    frame it prefetched and, for a read that would cross its end, discards the frame's rest and reads on from the
    file, so the bytes it executes are not the ones a reader of the flat byte string sees."""


@dataclass(frozen=True)
class Global:
    """A global the pickle referenced that paramctl does not rebuild."""

    module: str
    name: str
    ref: int = field(default=-1, compare=False)  # index into Unpickler.globals_seen: where the pickle named it

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True)
class GlobalRef:
    """One place a pickle names a global: the opcode that named it and that opcode's byte offset in the pickle."""

    module: str
    name: str
    offset: int
    opcode: str  # GLOBAL, STACK_GLOBAL, INST, EXT1, EXT2, EXT4

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


_MAX_SHOWN_NAME = 200  # characters of a global's name shown in a placeholder; scan keeps the whole name
_MAX_SHOWN_CALLS = 3  # `f(…)(…)(…)`: beyond that, the count


def _shown(origin: str, calls: int) -> str:
    """A placeholder's name: the global, cut, and how often its result was called again. Bounded whatever the
    pickle does: a name grown by one `(…)` per call would make a pickle calling a result 100,000 times cost
    quadratic memory and time."""
    if len(origin) > _MAX_SHOWN_NAME:
        origin = origin[: _MAX_SHOWN_NAME - 1] + "…"
    if calls <= _MAX_SHOWN_CALLS:
        return origin + "(…)" * calls
    return f"{origin}(…)×{calls}"


class Built(OpaqueObject):
    """An object a pickle built by calling or instantiating a global paramctl does not rebuild (a placeholder);
    `refs` index `globals_seen`, so `scan` can say where in the object each global ends up. `origin` is the
    global's name and `calls` how many calls deep the object is (a class a call returned, called again...)."""

    def __init__(
        self, origin: str, contents: Any = None, refs: tuple[int, ...] = (), note: str | None = None, calls: int = 0
    ):
        super().__init__(_shown(origin, calls), contents, note)
        self.origin = origin
        self.calls = calls
        self.refs = refs
        self.state: Any = None  # in a scan: a BUILD state that came after the contents

    def __repr__(self) -> str:  # error messages name what the pickle built, never a memory address
        return f"<{_shown(self.origin, self.calls + 1)}>"


@dataclass(frozen=True)
class StorageType:
    """A torch storage class (`torch.FloatStorage`, `torch.UntypedStorage`) named in a persistent id."""

    name: str
    dtype: DType | None  # None for UntypedStorage: the tensor's own dtype argument says


@dataclass(frozen=True)
class StorageRef:
    """What a loader's persistent_load returns: a storage and the element type of the typed storage, if any."""

    storage: Storage
    dtype: DType | None
    element_offset: int = 0  # where a legacy storage view starts inside its root storage


class _Rebuilder:
    """One of paramctl's own functions standing in for an allowlisted torch global; arguments are validated."""

    def __init__(self, name: str, function: Callable[..., Any]) -> None:
        self.name = name
        self.function = function

    def __call__(self, *args: Any) -> Any:
        return self.function(*args)


class _DictType:
    """`collections.OrderedDict` / `builtins.dict`: rebuilt as a plain dict (which keeps insertion order)."""


_MAX_DIMS = 64  # torch's limit on a tensor's dimensions
_MAX_INT_BYTES = 1700  # about 4100 decimal digits: below Python's default limit for printing an int


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(type(v) is int for v in value):
        raise PickleError(f"tensor {what} is not a tuple of integers: {short_repr(value)}")
    if len(value) > _MAX_DIMS:
        raise PickleError(f"tensor {what} has {len(value)} dimensions, more than torch's {_MAX_DIMS}")
    return tuple(value)


def _tensor(storage: Any, offset: Any, size: Any, stride: Any, dtype: DType | None) -> Tensor:
    """A tensor from a rebuild function's arguments; every number is checked the way torch's int64 fields are."""
    if not isinstance(storage, StorageRef):
        raise PickleError(f"tensor storage is not a storage record: {short_repr(storage)}")
    dtype = dtype or storage.dtype
    if dtype is None:
        raise PickleError("tensor has no dtype (an untyped storage without a dtype argument)")
    shape, strides = _ints(size, "size"), _ints(stride, "stride")
    if type(offset) is not int or not 0 <= offset <= INT64_MAX:
        raise PickleError(f"tensor storage offset is not a non-negative int64: {short_repr(offset)}")
    if len(shape) != len(strides):
        raise PickleError(f"tensor size {shape} and stride {strides} differ in length")
    if any(n < 0 for n in shape) or any(s < 0 for s in strides):
        raise PickleError(f"tensor size {shape} or stride {strides} is negative")
    if any(n > INT64_MAX for n in shape) or any(s > INT64_MAX for s in strides):
        raise PickleError(f"tensor size {shape} or stride {strides} overflows int64")
    if math.prod(shape) > INT64_MAX:
        raise PickleError(f"tensor size {shape}: the element count overflows int64")
    start = offset + storage.element_offset
    if math.prod(shape) and (start + sum((n - 1) * s for n, s in zip(shape, strides)) + 1) * dtype.itemsize > INT64_MAX:
        raise PickleError(f"tensor size {shape} with stride {strides} at offset {offset}: the byte extent overflows")
    return Tensor(dtype, shape, strides, storage.storage, start)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any) -> Tensor:
    return _tensor(storage, offset, size, stride, None)


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, *_flags: Any) -> Tensor:
    return _tensor(storage, offset, size, stride, None)


def _rebuild_tensor_v3(
    storage: Any, offset: Any, size: Any, stride: Any, _grad: Any, _hooks: Any, dtype: Any, *_: Any
) -> Tensor:
    if not isinstance(dtype, DType):
        raise PickleError(f"tensor dtype argument is not a dtype: {short_repr(dtype)}")
    return _tensor(storage, offset, size, stride, dtype)


def _rebuild_parameter(data: Any, *_flags: Any) -> Any:
    """`Parameter(data)`: torch accepts only a tensor (a placeholder stands for a tensor subclass paramctl lists)."""
    if not isinstance(data, (Tensor, OpaqueObject)):
        raise PickleError(f"a parameter wraps {short_repr(data)}, not a tensor")
    return data


def _rebuild_from_type_v2(func: Any, _new_type: Any, args: Any, _state: Any) -> Any:
    """A tensor subclass: rebuild the plain tensor inside when its rebuild function is one of ours."""
    if isinstance(func, _Rebuilder) and isinstance(args, tuple):
        return func(*args)
    return OpaqueObject("torch._tensor._rebuild_from_type_v2", (func, args))


def _torch_size(*args: Any) -> tuple[int, ...]:
    return _ints(args[0] if args else (), "size")


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """How protocols 0-2 pickle `bytes`: `_codecs.encode(str, 'latin1')`."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise PickleError("_codecs.encode called with arguments other than (str, 'latin1')")
    return text.encode("latin1")


def _complex(real: Any = 0.0, imag: Any = 0.0) -> complex:
    if not all(isinstance(x, (int, float)) for x in (real, imag)):
        raise PickleError("complex() called with non-numbers")
    return complex(real, imag)


def _container(kind: type) -> Callable[..., Any]:
    def build(items: Any = ()) -> Any:
        if not isinstance(items, (list, tuple, set, frozenset)):
            raise PickleError(f"{kind.__name__}() called with {type(items).__name__}")
        return kind(_key(x) for x in items) if kind in (set, frozenset) else kind(items)

    return build


class _NumpyDType(OpaqueObject):
    """`numpy.dtype(descr, align, copy)`; the BUILD state that follows gives the byte order (state[1])."""

    def __init__(self, descr: str) -> None:
        super().__init__("numpy.dtype", None, descr)
        self.descr = descr
        self.byteorder = "="

    def set_state(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.byteorder = state[1]
            self.note = f"{state[1]}{self.descr}" if state[1] in "<>" else self.descr


def _numpy_dtype(descr: Any = None, *_flags: Any) -> _NumpyDType:
    if not isinstance(descr, str) or len(descr) > 32:
        raise PickleError(f"numpy.dtype called with {short_repr(descr)}")
    return _NumpyDType(descr)


# numpy scalar types paramctl decodes itself, by `descr`: struct codes of one value (two for complex).
_NUMPY_SCALARS = {
    "f2": "e", "f4": "f", "f8": "d", "i1": "b", "i2": "h", "i4": "i", "i8": "q",
    "u1": "B", "u2": "H", "u4": "I", "u8": "Q", "b1": "?", "c8": "ff", "c16": "dd",
}  # fmt: skip


def _numpy_scalar(dtype: Any = None, raw: Any = None, *_: Any) -> Any:
    """`numpy.core.multiarray.scalar(dtype, raw_bytes)` as a plain Python number, decoded from the dtype's
    descriptor and byte order with struct (no numpy); any other scalar stays a placeholder."""
    code = _NUMPY_SCALARS.get(dtype.descr) if isinstance(dtype, _NumpyDType) else None
    if code is None or not isinstance(raw, bytes) or len(raw) != struct.calcsize("<" + code):
        descr = dtype.note if isinstance(dtype, _NumpyDType) else "?"
        return OpaqueObject("numpy.scalar", None, f"dtype {descr}")
    values = struct.unpack((">" if dtype.byteorder == ">" else "<") + code, raw)
    return complex(*values) if len(values) == 2 else values[0]


class _NumpyArray(OpaqueObject):
    """`numpy.core.multiarray._reconstruct(cls, ...)`: listed as a placeholder with its shape and dtype (from the
    BUILD state `(version, shape, dtype, fortran, data)`); its raw bytes are not shown."""

    def set_state(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 5 and isinstance(state[1], tuple):
            shape = list(state[1]) if all(type(n) is int for n in state[1]) else "?"
            descr = state[2].note if isinstance(state[2], _NumpyDType) else "?"
            self.note = f"shape {short_repr(shape)}, dtype {descr}"


def _numpy_reconstruct(cls: Any = None, *_: Any) -> _NumpyArray:
    return _NumpyArray(cls.qualname if isinstance(cls, Global) else "numpy.ndarray")


_PATH_CLASSES = {"PurePath", "PurePosixPath", "PureWindowsPath", "Path", "PosixPath", "WindowsPath"}


def _pathlib_note(func: Global, args: tuple[Any, ...]) -> str | None:
    """A pathlib path pickles as `PosixPath(*parts)`: shown as one placeholder whose note is the path, joined
    the way the class joins its parts (posixpath / ntpath are pure string functions)."""
    if func.module not in ("pathlib", "pathlib._local") or func.name not in _PATH_CLASSES:
        return None
    if not args or not all(isinstance(part, str) for part in args):
        return None
    import ntpath
    import posixpath

    joined = (ntpath if "Windows" in func.name else posixpath).join(*args)
    return joined if len(joined) <= 4096 else joined[:4096] + "…"


_REBUILDERS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor"): _Rebuilder("_rebuild_tensor", _rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v2"): _Rebuilder("_rebuild_tensor_v2", _rebuild_tensor_v2),
    ("torch._utils", "_rebuild_tensor_v3"): _Rebuilder("_rebuild_tensor_v3", _rebuild_tensor_v3),
    ("torch._utils", "_rebuild_parameter"): _Rebuilder("_rebuild_parameter", _rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Rebuilder("_rebuild_parameter", _rebuild_parameter),
    ("torch._tensor", "_rebuild_from_type_v2"): _Rebuilder("_rebuild_from_type_v2", _rebuild_from_type_v2),
    ("torch", "Size"): _Rebuilder("Size", _torch_size),
    ("collections", "OrderedDict"): _DictType,
    ("builtins", "dict"): _DictType,
    ("_codecs", "encode"): _Rebuilder("encode", _codecs_encode),
    ("builtins", "complex"): _Rebuilder("complex", _complex),
    ("builtins", "set"): _Rebuilder("set", _container(set)),
    ("builtins", "frozenset"): _Rebuilder("frozenset", _container(frozenset)),
    ("builtins", "list"): _Rebuilder("list", _container(list)),
    ("builtins", "tuple"): _Rebuilder("tuple", _container(tuple)),
    ("builtins", "bytearray"): _Rebuilder("bytearray", lambda b=b"", *_: bytes(b) if isinstance(b, bytes) else b""),
    # numpy values inside a torch pickle (numpy 1 names them numpy.core, numpy 2 numpy._core): data only.
    ("numpy", "dtype"): _Rebuilder("dtype", _numpy_dtype),
    ("numpy.core.multiarray", "scalar"): _Rebuilder("scalar", _numpy_scalar),
    ("numpy._core.multiarray", "scalar"): _Rebuilder("scalar", _numpy_scalar),
    ("numpy.core.multiarray", "_reconstruct"): _Rebuilder("_reconstruct", _numpy_reconstruct),
    ("numpy._core.multiarray", "_reconstruct"): _Rebuilder("_reconstruct", _numpy_reconstruct),
}
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


def resolve_global(module: str, name: str) -> Any:
    """What a GLOBAL names, as paramctl's own object: never an import."""
    module = _PY2_MODULES.get(module, module)
    if (module, name) in _REBUILDERS:
        return _REBUILDERS[module, name]
    if module in ("torch", "torch.storage"):
        if name == "UntypedStorage":
            return StorageType(name, None)
        if name in dtypes.BY_STORAGE_CLASS:
            return StorageType(name, dtypes.BY_STORAGE_CLASS[name])
        if module == "torch" and (dtype := dtypes.from_torch_name(name)) is not None:
            return dtype
    return Global(module, name)


# Pseudo-modules in `globals_seen` for what a pickle does that no global's name says: classed dangerous.
COMPUTED_MODULE = "<built on the stack>"
COMPUTED_NAME = "computed name"
FRAME_MODULE = "<frame>"
FRAME_VIOLATION_NAME = "boundary violation"
EXTENSION_MODULE = "<extension registry>"

_MARK = object()
_STRUCTS = {fmt: struct.Struct(fmt) for fmt in ("<B", "<H", "<i", "<I", "<Q", ">d")}
OPCODE_NAMES = {ord(op.code): op.name for op in pickletools.opcodes}


class Unpickler:
    """Reads one pickle from `data` starting at `start`; `end` is the position after its STOP opcode.

    `persistent_load` turns a persistent id (torch's storage records) into an object; it is the only door from
    the pickle to the rest of the file. `globals_seen` lists every global referenced (with where), and
    `opcodes_seen` every opcode used, for `scan`. With `rebuild=False` nothing is rebuilt, not even tensors:
    every global stays a marker and every call a placeholder, so no argument check can stop the machine early
    (a scan must see every global the real unpickler would reach).
    """

    def __init__(
        self,
        data: bytes | memoryview | Any,
        persistent_load: Callable[[Any], Any],
        start: int = 0,
        rebuild: bool = True,
    ) -> None:
        self.data = memoryview(data).cast("B") if isinstance(data, memoryview) else data
        self.pos = start
        self.start = start
        self.end = start
        self.persistent_load = persistent_load
        self.rebuild = rebuild
        self.globals_seen: list[GlobalRef] = []
        self.opcodes_seen: set[int] = set()
        self.protocol: int | None = None
        self.frame_end = -1  # end of the current protocol 4 frame (reads may not cross it); -1: none yet

    # -- reading bytes -------------------------------------------------------------------------------------
    def _frame_violation(self, what: str) -> FrameViolation:
        opcode = OPCODE_NAMES[self.data[self.op_pos]]
        self.globals_seen.append(GlobalRef(FRAME_MODULE, FRAME_VIOLATION_NAME, self.op_pos, opcode))
        return FrameViolation(f"{FRAME_VIOLATION} ({what}, opcode at byte {self.op_pos})")

    def _check_frame(self, end: int) -> None:
        """A read from `self.pos` to `end` must stay inside the current frame or start at or after its end (one
        read is one `_Unframer.read`: a read ending exactly at the frame's end is fine, as pickle.py has it)."""
        if self.pos < self.frame_end < end:
            raise self._frame_violation(f"a read of {end - self.pos} bytes crosses the frame's end at {self.frame_end}")

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise PickleError(f"pickle truncated: needs {n} bytes at {self.pos}, {len(self.data) - self.pos} left")
        self._check_frame(self.pos + n)
        chunk = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return chunk

    def _line(self) -> bytes:
        """A text argument up to its newline. The window grows geometrically, so a line costs its own length,
        and there is no cap but the data (a real unpickler reads a line of any length)."""
        size = 256
        while True:
            window = bytes(self.data[self.pos : self.pos + size])
            end = window.find(b"\n")
            if end >= 0:
                self._check_frame(self.pos + end + 1)
                self.pos += end + 1
                return window[:end]
            if self.pos + size >= len(self.data):
                raise PickleError(f"pickle truncated: unterminated text argument at {self.pos}")
            size *= 4

    def _unpack(self, fmt: str) -> Any:
        layout = _STRUCTS[fmt]
        start, end = self.pos, self.pos + layout.size
        if end > len(self.data):
            raise PickleError(f"pickle truncated: needs {layout.size} bytes at {start}, {len(self.data) - start} left")
        if start < self.frame_end < end:
            self._check_frame(end)
        self.pos = end
        return layout.unpack(self.data[start:end])[0]

    def _byte(self) -> int:
        if self.pos >= len(self.data):
            raise PickleError(f"pickle truncated: needs 1 byte at {self.pos}")
        self.pos += 1
        return self.data[self.pos - 1]  # type: ignore[no-any-return]

    # -- the machine -----------------------------------------------------------------------------------------
    def load(self) -> Any:
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        data, size, dispatch, seen, stop = self.data, len(self.data), _DISPATCH, self.opcodes_seen, Unpickler._stop
        while True:
            pos = self.pos
            if pos >= size:
                raise PickleError("pickle truncated: no STOP opcode")
            op = data[pos]
            self.op_pos = pos
            self.pos = pos + 1
            handler = dispatch.get(op)
            if handler is None:
                raise PickleError(f"unknown pickle opcode 0x{op:02x} at byte {pos}")
            seen.add(op)
            if handler is stop:
                self.end = self.pos
                return self._pop()
            try:
                handler(self)
            except PickleError:
                raise
            except (IndexError, KeyError, TypeError, ValueError, OverflowError, UnicodeDecodeError) as error:
                raise PickleError(f"malformed pickle at byte {self.pos}: {str(error)[:200]}") from None
            except (RecursionError, MemoryError) as error:
                raise PickleError(f"pickle too large or too deep at byte {self.pos} ({type(error).__name__})") from None

    def _pop(self) -> Any:
        if not self.stack:
            raise PickleError(f"pickle stack underflow at byte {self.pos}")
        return self.stack.pop()

    def _pop_mark(self) -> list[Any]:
        if not self.metastack:
            raise PickleError(f"pickle MARK missing at byte {self.pos}")
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def _stop(self) -> None:  # handled in load()
        pass

    def _mark(self) -> None:
        self.metastack.append(self.stack)
        self.stack = []

    def _push(self, value: Any) -> None:
        self.stack.append(value)

    # numbers and strings
    def _int_text(self) -> None:
        text = self._line()  # protocol 0 writes booleans as I00 / I01
        self._push(True if text == b"01" else False if text == b"00" else int(text))

    def _long_text(self) -> None:
        self._push(int(self._line().rstrip(b"L")))

    def _float_text(self) -> None:
        self._push(float(self._line()))

    def _string_text(self) -> None:
        text = self._line()
        if len(text) < 2 or text[:1] not in (b"'", b'"') or text[-1:] != text[:1]:
            raise PickleError("STRING argument is not quoted")
        self._push(codecs.escape_decode(text[1:-1])[0].decode("latin1"))

    def _unicode_text(self) -> None:
        self._push(self._line().decode("raw-unicode-escape"))

    # containers
    def _build_tuple(self, n: int) -> None:
        if n > len(self.stack):
            raise PickleError("pickle stack underflow building a tuple")
        items = tuple(self.stack[len(self.stack) - n :]) if n else ()
        del self.stack[len(self.stack) - n :]
        self._push(items)

    def _tuple(self) -> None:
        self._push(tuple(self._pop_mark()))

    def _list(self) -> None:
        self._push(list(self._pop_mark()))

    def _dict(self) -> None:
        items = self._pop_mark()
        self._push(self._dict_from(items))

    def _dict_from(self, items: list[Any]) -> dict[Any, Any]:
        if len(items) % 2:
            raise PickleError("odd number of items for a dict")
        return {_key(items[i]): items[i + 1] for i in range(0, len(items), 2)}

    def _append(self) -> None:
        value = self._pop()
        _extend(self.stack[-1], [value])

    def _appends(self) -> None:
        items = self._pop_mark()
        _extend(self._top(), items)

    def _setitem(self) -> None:
        value, key = self._pop(), self._pop()
        _set_items(self._top(), [key, value])

    def _setitems(self) -> None:
        items = self._pop_mark()
        if len(items) % 2:
            raise PickleError("odd number of items for SETITEMS")
        _set_items(self._top(), items)

    def _additems(self) -> None:
        items = self._pop_mark()
        target = self._top()
        if not isinstance(target, set):
            raise PickleError("ADDITEMS on something other than a set")
        target.update(_key(x) for x in items)

    def _frozenset(self) -> None:
        self._push(frozenset(_key(x) for x in self._pop_mark()))

    def _top(self) -> Any:
        if not self.stack:
            raise PickleError(f"pickle stack underflow at byte {self.pos}")
        return self.stack[-1]

    # memo
    def _get(self, index: int) -> None:
        if index not in self.memo:
            raise PickleError(f"pickle memo key {index} missing")
        self._push(self.memo[index])

    def _put(self, index: int) -> None:
        self.memo[index] = self._top()

    def _memoize(self) -> None:
        self.memo[len(self.memo)] = self._top()

    # objects
    def _global(self) -> None:
        module = self._line().decode("utf-8")
        name = self._line().decode("utf-8")
        self._push(self._resolve(module, name, "GLOBAL"))

    def _stack_global(self) -> None:
        name, module = self._pop(), self._pop()
        if not isinstance(module, str) or not isinstance(name, str):
            # A name computed by the pickle itself (a call's result here, a string at load time): what it imports
            # is decided when it runs, so a scan must count the obfuscation itself as dangerous.
            shown = f"{short_repr(module, 60)} . {short_repr(name, 60)}"
            self.globals_seen.append(GlobalRef(COMPUTED_MODULE, COMPUTED_NAME, self.op_pos, "STACK_GLOBAL"))
            raise PickleError(f"STACK_GLOBAL with a module or name built on the stack ({shown}): an obfuscation")
        self._push(self._resolve(module, name, "STACK_GLOBAL"))

    def _resolve(self, module: str, name: str, opcode: str) -> Any:
        """Record the global, then stand in for it: paramctl's own object, or a marker. Never an import."""
        self.globals_seen.append(GlobalRef(module, name, self.op_pos, opcode))
        target = resolve_global(module, name) if self.rebuild else None
        if target is None or isinstance(target, Global):
            return Global(module, name, len(self.globals_seen) - 1)
        return target

    def _ext(self, code: int, opcode: str) -> None:
        """EXT1/2/4 name a global through copyreg's extension registry, which only the loading process knows."""
        self._push(self._resolve(EXTENSION_MODULE, str(code), opcode))

    def _reduce(self) -> None:
        args, func = self._pop(), self._pop()
        if not isinstance(args, (tuple, list)):  # pickle calls func(*args): any sequence works
            raise PickleError("REDUCE arguments are not a tuple")
        self._push(self._call(func, tuple(args)))

    def _call(self, func: Any, args: tuple[Any, ...]) -> Any:
        if isinstance(func, _Rebuilder):
            try:
                return func(*args)
            except TypeError as error:
                raise PickleError(f"{func.name} called with bad arguments: {str(error)[:200]}") from None
        if func is _DictType:
            return self._dict_from([x for pair in args[0] for x in pair]) if args else {}
        if isinstance(func, Global):
            if (func.module, func.name) == ("copyreg", "_reconstructor") and args and isinstance(args[0], Global):
                return Built(args[0].qualname, None, (args[0].ref, func.ref))
            if self.rebuild and (note := _pathlib_note(func, args)) is not None:
                return Built(func.qualname, None, (func.ref,), note)
            return Built(func.qualname, args or None, (func.ref,))
        if isinstance(func, OpaqueObject):
            return _called(func, args)
        raise PickleError(f"pickle calls a {type(func).__name__}, which is not callable")

    def _newobj(self) -> None:
        args, cls = self._pop(), self._pop()
        self._push(self._new(cls, args))

    def _newobj_ex(self) -> None:
        kwargs, args, cls = self._pop(), self._pop(), self._pop()
        self._push(self._new(cls, (args, kwargs) if kwargs else args))

    def _new(self, cls: Any, args: Any) -> Any:
        if cls is _DictType:
            return {}
        if isinstance(cls, Global):
            return Built(cls.qualname, args or None, (cls.ref,))
        if isinstance(cls, OpaqueObject) and not self.rebuild:  # a class made by a call: still only a record
            return _called(cls, args)
        raise PickleError(f"pickle instantiates a {type(cls).__name__}, which is not a class")

    def _inst(self) -> None:
        module = self._line().decode("utf-8")
        name = self._line().decode("utf-8")
        args = tuple(self._pop_mark())
        self._push(self._call(self._resolve(module, name, "INST"), args))

    def _obj(self) -> None:
        items = self._pop_mark()
        if not items:
            raise PickleError("OBJ without a class")
        self._push(self._call(items[0], tuple(items[1:])))

    def _build(self) -> None:
        state = self._pop()
        target = self._top()
        if isinstance(target, (_NumpyDType, _NumpyArray)):
            target.set_state(state)
        elif isinstance(target, Built) and not self.rebuild and target.contents is not None:
            target.state = state  # a scan keeps the items where a listing would name them
        elif isinstance(target, OpaqueObject):
            target.contents = state if target.contents is None else {"args": target.contents, "state": state}
        # A dict's state (a state_dict's `_metadata`) and a tensor's state (hooks, subclass fields) carry no values.

    def _persid_text(self) -> None:
        self._push(self._persistent(self._line().decode("ascii")))

    def _binpersid(self) -> None:
        self._push(self._persistent(self._pop()))

    def _persistent(self, pid: Any) -> Any:
        return self.persistent_load(pid)

    def _frame(self) -> None:
        size = self._unpack("<Q")
        if self.pos < self.frame_end:  # pickle.py: "beginning of a new frame before end of current frame"
            raise self._frame_violation(f"a frame opens with {self.frame_end - self.pos} bytes of the last one unread")
        if self.pos + size > len(self.data):
            raise self._frame_violation(f"a frame of {size} bytes runs past the pickle's end")
        self.frame_end = self.pos + size

    def _proto(self) -> None:
        protocol = self._unpack("<B")
        if protocol > 5:  # as pickle itself refuses: nothing after this would be read
            raise PickleError(f"unsupported pickle protocol {protocol}")
        self.protocol = protocol


def _called(func: OpaqueObject, args: Any) -> Built:
    """What calling a placeholder builds: one more call on the same global (a constant-size record)."""
    origin = func.origin if isinstance(func, Built) else func.global_name
    calls = func.calls + 1 if isinstance(func, Built) else 1
    return Built(origin, args or None, getattr(func, "refs", ()), calls=calls)


_KEY_BUDGET = 1000  # elements of a tuple key hashed as-is; beyond, its short repr stands in


def _key(value: Any) -> Any:
    """A dict key or set member: unhashable ones (a list a hostile pickle offers as a key) become their repr.

    Tuples are hashed only when small: CPython does not cache a tuple's hash and recurses through it in C, so a
    tuple built from a memoized tuple a thousand times over, a few levels deep, would hang `hash` (or overflow
    the C stack when deeply nested)."""
    if isinstance(value, (tuple, frozenset)):
        pending, count = [value], 0
        while pending:
            item = pending.pop()
            count += 1
            if count > _KEY_BUDGET or isinstance(item, (list, dict, set, bytearray)):
                return short_repr(value)
            if isinstance(item, (tuple, frozenset)):
                pending.extend(item)
    try:
        hash(value)
    except TypeError:
        return short_repr(value)
    return value


def _extend(target: Any, items: list[Any]) -> None:
    if isinstance(target, list):
        target.extend(items)
    elif isinstance(target, OpaqueObject):
        if not isinstance(target.contents, list):
            target.contents = [] if target.contents is None else [target.contents]
        target.contents.extend(items)
    else:
        raise PickleError(f"APPEND to a {type(target).__name__}")


def _set_items(target: Any, items: list[Any]) -> None:
    pairs = {_key(items[i]): items[i + 1] for i in range(0, len(items), 2)}
    if isinstance(target, dict):
        target.update(pairs)
    elif isinstance(target, OpaqueObject):
        if not isinstance(target.contents, dict):
            target.contents = {} if target.contents is None else {"args": target.contents}
        target.contents.update(pairs)
    else:
        raise PickleError(f"SETITEM on a {type(target).__name__}")


def _long_binary(size_fmt: str) -> Callable[[Unpickler], None]:
    def handler(self: Unpickler) -> None:
        n = self._unpack(size_fmt)
        if n < 0:
            raise PickleError("negative LONG4 length")
        raw = self._take(n)
        if n > _MAX_INT_BYTES:  # Python cannot print it (4300 digits at most): a placeholder says what it is
            self._push(OpaqueObject("int", None, f"an integer of {n * 8} bits, too long to show"))
            return
        self._push(int.from_bytes(raw, "little", signed=True))

    return handler


def _sized(size_fmt: str, convert: Callable[[bytes], Any]) -> Callable[[Unpickler], None]:
    def handler(self: Unpickler) -> None:
        n = self._unpack(size_fmt)
        self._push(convert(self._take(n)))

    return handler


def _utf8(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogatepass")


_DISPATCH: dict[int, Callable[[Unpickler], None]] = {
    ord("("): Unpickler._mark,
    ord("."): Unpickler._stop,
    ord("0"): lambda u: u._pop(),
    ord("1"): lambda u: u._pop_mark(),
    ord("2"): lambda u: u._push(u._top()),
    ord("F"): Unpickler._float_text,
    ord("I"): Unpickler._int_text,
    ord("J"): lambda u: u._push(u._unpack("<i")),
    ord("K"): lambda u: u.stack.append(u._byte()),  # the most frequent opcodes read their byte with `_byte`
    ord("L"): Unpickler._long_text,
    ord("M"): lambda u: u._push(u._unpack("<H")),
    ord("N"): lambda u: u._push(None),
    ord("P"): Unpickler._persid_text,
    ord("Q"): Unpickler._binpersid,
    ord("R"): Unpickler._reduce,
    ord("S"): Unpickler._string_text,
    ord("T"): _sized("<i", lambda b: b.decode("latin1")),
    ord("U"): _sized("<B", lambda b: b.decode("latin1")),
    ord("V"): Unpickler._unicode_text,
    ord("X"): _sized("<I", _utf8),
    ord("a"): Unpickler._append,
    ord("b"): Unpickler._build,
    ord("c"): Unpickler._global,
    ord("d"): Unpickler._dict,
    ord("}"): lambda u: u._push({}),
    ord("e"): Unpickler._appends,
    ord("g"): lambda u: u._get(int(u._line())),
    ord("h"): lambda u: u._get(u._byte()),
    ord("i"): Unpickler._inst,
    ord("j"): lambda u: u._get(u._unpack("<I")),
    ord("l"): Unpickler._list,
    ord("]"): lambda u: u._push([]),
    ord("o"): Unpickler._obj,
    ord("p"): lambda u: u._put(int(u._line())),
    ord("q"): lambda u: u._put(u._byte()),
    ord("r"): lambda u: u._put(u._unpack("<I")),
    ord("s"): Unpickler._setitem,
    ord("t"): Unpickler._tuple,
    ord(")"): lambda u: u._push(()),
    ord("u"): Unpickler._setitems,
    ord("G"): lambda u: u._push(u._unpack(">d")),
    # protocol 2
    0x80: Unpickler._proto,
    0x81: Unpickler._newobj,
    0x82: lambda u: u._ext(u._unpack("<B"), "EXT1"),
    0x83: lambda u: u._ext(u._unpack("<H"), "EXT2"),
    0x84: lambda u: u._ext(u._unpack("<i"), "EXT4"),
    0x85: lambda u: u._build_tuple(1),
    0x86: lambda u: u._build_tuple(2),
    0x87: lambda u: u._build_tuple(3),
    0x88: lambda u: u._push(True),
    0x89: lambda u: u._push(False),
    0x8A: _long_binary("<B"),
    0x8B: _long_binary("<i"),
    # protocol 3
    ord("B"): _sized("<I", bytes),
    ord("C"): _sized("<B", bytes),
    # protocol 4
    0x8C: _sized("<B", _utf8),
    0x8D: _sized("<Q", _utf8),
    0x8E: _sized("<Q", bytes),
    0x8F: lambda u: u._push(set()),
    0x90: Unpickler._additems,
    0x91: Unpickler._frozenset,
    0x92: Unpickler._newobj_ex,
    0x93: Unpickler._stack_global,
    0x94: Unpickler._memoize,
    0x95: Unpickler._frame,
    # protocol 5
    0x96: _sized("<Q", bytes),
    0x97: lambda u: u._push(Global("<out-of-band buffer>", "")),
    0x98: lambda u: None,  # READONLY_BUFFER: a no-op on what is already there
}


# -- expansion -----------------------------------------------------------------------------------------------------

_SCALARS = (int, float, str, bool, bytes, complex, type(None))
_EXPANSION_BASE = 20_000_000  # work units (elements visited) allowed beyond 8 per byte of pickle


class _TooLarge(Exception):
    pass


def expansion_problem(obj: Any, pickle_size: int) -> str | None:
    """Why listing `obj` would explode, or None. A pickle can reference one container many times (a memo GET is
    two bytes); a list of a thousand references to a list of a thousand references to ... expands to billions of
    elements for anything that walks it without noticing the sharing. This counts the work `tree.flatten` and
    the renderers would do, with sharing, and stops as soon as it exceeds what the pickle's own size explains."""
    budget = _EXPANSION_BASE + 8 * pickle_size
    plain_memo: dict[tuple[int, int], tuple[bool, int]] = {}
    size_memo: dict[int, int] = {}
    total = 0

    def plain(item: Any, depth: int) -> tuple[bool, int]:
        """tree._is_plain's answer and its cost (elements it looks at), memoized per object and depth."""
        if isinstance(item, _SCALARS):
            return True, _scalar_cost(item)
        if not (isinstance(item, (list, tuple, set, frozenset)) and depth < 3):
            return False, 1
        key = (id(item), depth)
        if key not in plain_memo:
            ok, cost = True, 1
            for member in item:
                member_ok, member_cost = plain(member, depth + 1)
                cost += member_cost
                if cost > budget:
                    raise _TooLarge
                if not member_ok:
                    ok = False
                    break
            plain_memo[key] = (ok, cost)
        return plain_memo[key]

    def unrolled(item: Any, depth: int = 0) -> int:
        """Elements a renderer visits to show a plain value (set members are small: see `_key`)."""
        if isinstance(item, (set, frozenset)):
            return 1 + sum(_nodes(member) for member in item)
        if not isinstance(item, (list, tuple)) or depth > 4:
            return _scalar_cost(item)
        if id(item) not in size_memo:
            size_memo[id(item)] = 1 + sum(unrolled(member, depth + 1) for member in item)
        return size_memo[id(item)]

    seen: set[int] = set()
    pending: list[tuple[Any, int]] = [(obj, 0)]
    try:
        while pending:
            item, depth = pending.pop()
            if depth > MAX_DEPTH or isinstance(item, Tensor):
                continue  # too deep: flatten refuses the file itself
            is_plain = True
            if isinstance(item, (dict, list, tuple, OpaqueObject)):
                is_plain, cost = plain(item, 0)
                total += cost
                if not is_plain:
                    if id(item) in seen:
                        continue
                    seen.add(id(item))
            if isinstance(item, OpaqueObject):
                if item.contents is not None:
                    pending.append((item.contents, depth))
            elif isinstance(item, dict) and item:
                total += len(item)
                pending.extend((value, depth + len(split_key(key))) for key, value in item.items())
            elif isinstance(item, (list, tuple)) and not is_plain:
                pending.extend((value, depth + 1) for value in item)
            else:
                total += unrolled(item)
            if total > budget:
                raise _TooLarge
    except _TooLarge:
        return (
            f"the pickle's shared references expand to more than {budget:,} elements or string bytes "
            f"(from {pickle_size:,} bytes): refusing to walk it"
        )
    return None


def _scalar_cost(item: Any) -> int:
    """A string's bytes count: one memoized megabyte string referenced a million times is a terabyte to render."""
    return 1 + len(item) if isinstance(item, (str, bytes)) else 1


def _nodes(item: Any) -> int:
    """Elements in a small hashable value (a tuple key or set member, bounded by `_key`)."""
    count, pending = 0, [item]
    while pending:
        current = pending.pop()
        count += 1
        if isinstance(current, (tuple, frozenset)):
            pending.extend(current)
    return count
