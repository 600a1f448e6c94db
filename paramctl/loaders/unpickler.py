"""A restricted pickle reader: it rebuilds tensors and plain containers and never runs anything from the file.

This is a small pickle virtual machine (protocols 0-5), not `pickle.Unpickler`: no global named by the file is ever
imported or called. A few globals are recognised and rebuilt by paramctl's own code (torch's tensor rebuild
functions, storage classes, dtypes, OrderedDict, builtin containers); every other global becomes an OpaqueObject
that records its name and whatever the pickle puts inside it, so the tensors and values in it stay visible. The
memo is a dict and every length is checked against the bytes present, so a lying pickle cannot make it allocate.
"""

from __future__ import annotations

import codecs
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from paramctl import dtypes
from paramctl.dtypes import DType
from paramctl.tree import OpaqueObject, Storage, Tensor


class PickleError(Exception):
    """The pickle breaks the format or hands a rebuild function bad arguments."""


@dataclass(frozen=True)
class Global:
    """A global the pickle referenced that paramctl does not rebuild."""

    module: str
    name: str

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


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


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(type(v) is int for v in value):
        raise PickleError(f"tensor {what} is not a tuple of integers: {value!r:.80}")
    return tuple(value)


def _tensor(storage: Any, offset: Any, size: Any, stride: Any, dtype: DType | None) -> Tensor:
    if not isinstance(storage, StorageRef):
        raise PickleError(f"tensor storage is not a storage record: {storage!r:.80}")
    dtype = dtype or storage.dtype
    if dtype is None:
        raise PickleError("tensor has no dtype (an untyped storage without a dtype argument)")
    shape, strides = _ints(size, "size"), _ints(stride, "stride")
    if type(offset) is not int or offset < 0:
        raise PickleError(f"tensor storage offset is not a non-negative integer: {offset!r:.80}")
    if len(shape) != len(strides):
        raise PickleError(f"tensor size {shape} and stride {strides} differ in length")
    if any(n < 0 for n in shape) or any(s < 0 for s in strides):
        raise PickleError(f"tensor size {shape} or stride {strides} is negative")
    return Tensor(dtype, shape, strides, storage.storage, offset + storage.element_offset)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any) -> Tensor:
    return _tensor(storage, offset, size, stride, None)


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, *_flags: Any) -> Tensor:
    return _tensor(storage, offset, size, stride, None)


def _rebuild_tensor_v3(
    storage: Any, offset: Any, size: Any, stride: Any, _grad: Any, _hooks: Any, dtype: Any, *_: Any
) -> Tensor:
    if not isinstance(dtype, DType):
        raise PickleError(f"tensor dtype argument is not a dtype: {dtype!r:.80}")
    return _tensor(storage, offset, size, stride, dtype)


def _rebuild_parameter(data: Any, *_flags: Any) -> Any:
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
        return kind(items)

    return build


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


_MARK = object()
_MAX_LINE = 1 << 16  # text-opcode arguments (protocol 0 numbers, global names) are short


class Unpickler:
    """Reads one pickle from `data` starting at `start`; `end` is the position after its STOP opcode.

    `persistent_load` turns a persistent id (torch's storage records) into an object; it is the only door from
    the pickle to the rest of the file. `globals_seen` lists every global referenced, for `scan`.
    """

    def __init__(self, data: bytes | memoryview, persistent_load: Callable[[Any], Any], start: int = 0) -> None:
        self.data = memoryview(data).cast("B") if isinstance(data, memoryview) else data
        self.pos = start
        self.end = start
        self.persistent_load = persistent_load
        self.globals_seen: list[Global] = []

    # -- reading bytes -------------------------------------------------------------------------------------
    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise PickleError(f"pickle truncated: needs {n} bytes at {self.pos}, {len(self.data) - self.pos} left")
        chunk = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return chunk

    def _line(self) -> bytes:
        window = bytes(self.data[self.pos : self.pos + _MAX_LINE])
        end = window.find(b"\n")
        if end < 0:
            raise PickleError(f"pickle truncated: unterminated text argument at {self.pos}")
        self.pos += end + 1
        return window[:end]

    def _unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self._take(struct.calcsize(fmt)))[0]

    # -- the machine -----------------------------------------------------------------------------------------
    def load(self) -> Any:
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        while True:
            if self.pos >= len(self.data):
                raise PickleError("pickle truncated: no STOP opcode")
            op = self.data[self.pos]
            self.pos += 1
            handler = _DISPATCH.get(op)
            if handler is None:
                raise PickleError(f"unknown pickle opcode 0x{op:02x} at byte {self.pos - 1}")
            if handler is Unpickler._stop:
                self.end = self.pos
                return self._pop()
            try:
                handler(self)
            except (PickleError, RecursionError):
                raise
            except (IndexError, KeyError, TypeError, ValueError, OverflowError, UnicodeDecodeError) as error:
                raise PickleError(f"malformed pickle at byte {self.pos}: {error}") from None

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
        self._push(self._resolve(module, name))

    def _stack_global(self) -> None:
        name, module = self._pop(), self._pop()
        if not isinstance(module, str) or not isinstance(name, str):
            raise PickleError("STACK_GLOBAL with non-string module or name")
        self._push(self._resolve(module, name))

    def _resolve(self, module: str, name: str) -> Any:
        target = resolve_global(module, name)
        self.globals_seen.append(Global(module, name))
        return target

    def _ext(self, code: int) -> None:
        self._push(Global("<extension registry>", str(code)))

    def _reduce(self) -> None:
        args, func = self._pop(), self._pop()
        if not isinstance(args, tuple):
            raise PickleError("REDUCE arguments are not a tuple")
        self._push(self._call(func, args))

    def _call(self, func: Any, args: tuple[Any, ...]) -> Any:
        if isinstance(func, _Rebuilder):
            try:
                return func(*args)
            except TypeError as error:
                raise PickleError(f"{func.name} called with bad arguments: {error}") from None
        if func is _DictType:
            return self._dict_from([x for pair in args[0] for x in pair]) if args else {}
        if isinstance(func, Global):
            if (func.module, func.name) == ("copyreg", "_reconstructor") and args and isinstance(args[0], Global):
                return OpaqueObject(args[0].qualname, None)
            return OpaqueObject(func.qualname, args or None)
        if isinstance(func, OpaqueObject):
            return OpaqueObject(func.global_name + "(…)", args or None)
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
            return OpaqueObject(cls.qualname, args or None)
        raise PickleError(f"pickle instantiates a {type(cls).__name__}, which is not a class")

    def _inst(self) -> None:
        module = self._line().decode("utf-8")
        name = self._line().decode("utf-8")
        args = tuple(self._pop_mark())
        self._push(self._call(self._resolve(module, name), args))

    def _obj(self) -> None:
        items = self._pop_mark()
        if not items:
            raise PickleError("OBJ without a class")
        self._push(self._call(items[0], tuple(items[1:])))

    def _build(self) -> None:
        state = self._pop()
        target = self._top()
        if isinstance(target, OpaqueObject):
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
        if self.pos + size > len(self.data):
            raise PickleError(f"pickle frame of {size} bytes runs past the end")


def _key(value: Any) -> Any:
    """A dict key or set member: unhashable ones (a list a hostile pickle offers as a key) become their repr."""
    try:
        hash(value)
    except TypeError:
        return repr(value)[:200]
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
        self._push(int.from_bytes(self._take(n), "little", signed=True))

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
    ord("K"): lambda u: u._push(u._unpack("<B")),
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
    ord("h"): lambda u: u._get(u._unpack("<B")),
    ord("i"): Unpickler._inst,
    ord("j"): lambda u: u._get(u._unpack("<I")),
    ord("l"): Unpickler._list,
    ord("]"): lambda u: u._push([]),
    ord("o"): Unpickler._obj,
    ord("p"): lambda u: u._put(int(u._line())),
    ord("q"): lambda u: u._put(u._unpack("<B")),
    ord("r"): lambda u: u._put(u._unpack("<I")),
    ord("s"): Unpickler._setitem,
    ord("t"): Unpickler._tuple,
    ord(")"): lambda u: u._push(()),
    ord("u"): Unpickler._setitems,
    ord("G"): lambda u: u._push(u._unpack(">d")),
    # protocol 2
    0x80: lambda u: u._unpack("<B"),  # PROTO
    0x81: Unpickler._newobj,
    0x82: lambda u: u._ext(u._unpack("<B")),
    0x83: lambda u: u._ext(u._unpack("<H")),
    0x84: lambda u: u._ext(u._unpack("<i")),
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
