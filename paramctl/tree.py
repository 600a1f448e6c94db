"""The common parameter tree: what every loader produces and every command reads. It knows no file format.

A checkpoint is a list of leaves, each addressed by a path of segments (the file's own nesting: dict keys and list
indices, each further split on `.`). A leaf is a lazy tensor, a plain value or an opaque object a loader would not
rebuild. Tensors point into storages; tensors that point into the same storage share memory (they are "tied").
"""

from __future__ import annotations

import math
import reprlib
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, ClassVar, Protocol, Union

from paramctl.dtypes import DType
from paramctl.errors import CorruptFileError

Path = tuple[str, ...]

# Nesting deeper than this is refused: no real checkpoint comes close, and it bounds the walk.
MAX_DEPTH = 200


class StorageData(Protocol):
    """What a storage's data implements so the reader can read it: the protocol of a storage kind.

    The reader knows no kind: it asks the data for values and nothing else, so a new kind (a loader plugin's own) is
    one class implementing these. `view` is the tensor being read (its dtype, and its `storage.byteorder` and
    `storage.key` for messages); positions are in elements of its dtype. Arrays are NumPy arrays, read-only views
    where the bytes are stored as-is. Reads are bounded: only `whole` may read the whole storage.
    """

    # True for data read only front to back (a deflated member): the reader then plans no random-access chunks and
    # reads it through `stream` (see SequentialData).
    sequential: bool

    def whole(self, view: Tensor) -> Any:
        """The whole storage as a flat array of the view's dtype (`reader.array` of a small tensor)."""

    def elements(self, view: Tensor, start: int, stop: int) -> Any:
        """Row-major elements [start, stop) of the view, as a 1-D array: one chunk, read alone on any thread."""

    def window(self, view: Tensor, offset: int, shape: tuple[int, ...], strides: tuple[int, ...]) -> Any:
        """The storage elements at `offset + Σ i·strides`, with `shape` (the reader has checked the bounds)."""

    def release(self, view: Tensor, first: int, stop: int) -> None:
        """Drop the memory pages under storage elements [first, stop) once they are processed (may do nothing)."""

    # Optional: `problem(nbytes, itemsize) -> str | None` says why the data cannot hold a storage of `nbytes` bytes
    # (elements of `itemsize`); registry.open asks it of every storage before any read (tree.storage_problem).


class SequentialData(StorageData, Protocol):
    """A storage kind whose `sequential` is True also says how to read it in one front-to-back pass."""

    def stream(self, view: Tensor, size: int) -> Iterator[Any]:
        """The view's values in row-major order, at most `size` elements at a time."""


def _reads() -> Any:
    """The built-in kinds' read code (NumPy), imported on first read: listing a checkpoint imports no NumPy."""
    from paramctl import storage

    return storage


@dataclass(frozen=True)
class ByteRange:
    """Data stored as-is at a byte range of a source: random access, zero-copy."""

    source: Any  # a paramctl.source.ByteSource
    offset: int
    nbytes: int
    sequential: ClassVar[bool] = False

    def whole(self, view: Tensor) -> Any:
        return _reads().range_whole(self, view)

    def elements(self, view: Tensor, start: int, stop: int) -> Any:
        return _reads().range_elements(self, view, start, stop)

    def window(self, view: Tensor, offset: int, shape: tuple[int, ...], strides: tuple[int, ...]) -> Any:
        return _reads().range_window(self, view, offset, shape, strides)

    def release(self, view: Tensor, first: int, stop: int) -> None:
        itemsize = view.dtype.itemsize
        self.source.release(self.offset + first * itemsize, (stop - first) * itemsize)

    def problem(self, nbytes: int, itemsize: int) -> str | None:
        """The range must lie inside its source and hold the storage's bytes."""
        offset, size = self.offset, getattr(self.source, "size", None)
        sound = type(offset) is type(self.nbytes) is int and offset >= 0 and nbytes <= self.nbytes <= INT64_MAX
        if sound and (type(size) is not int or offset + self.nbytes <= size):  # the common case, in one chain
            return None
        return _range_problem(self, nbytes)


@dataclass(frozen=True)
class Stream:
    """Data that can only be read front to back (a deflated zip member); `open` starts a fresh stream."""

    open: Callable[[], BinaryIO]
    nbytes: int
    sequential: ClassVar[bool] = True

    def whole(self, view: Tensor) -> Any:
        return _reads().stream_whole(self, view)

    def elements(self, view: Tensor, start: int, stop: int) -> Any:
        return _reads().elements_of_whole(self, view, start, stop)

    def window(self, view: Tensor, offset: int, shape: tuple[int, ...], strides: tuple[int, ...]) -> Any:
        return _reads().stream_window(self, view, offset, shape, strides)

    def release(self, view: Tensor, first: int, stop: int) -> None:
        """Nothing to drop: a stream's bytes are decompressed into memory that is freed with the chunk."""

    def stream(self, view: Tensor, size: int) -> Iterator[Any]:
        return _reads().stream_chunks(self, view, size)

    def problem(self, nbytes: int, itemsize: int) -> str | None:
        """The stream must be at least as long as the storage."""
        return None if _is_size(self.nbytes) and self.nbytes >= nbytes else _short(self.nbytes, nbytes, "its stream")


@dataclass(frozen=True)
class Pieces:
    """Data stored as-is in several byte ranges of one source, read as their concatenation (a format that splits a
    large array into chunks). Every range holds whole elements of the tensors that view the storage."""

    ranges: tuple[ByteRange, ...]
    sequential: ClassVar[bool] = False

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self.ranges)

    def whole(self, view: Tensor) -> Any:
        return _reads().pieces_whole(self, view)

    def elements(self, view: Tensor, start: int, stop: int) -> Any:
        return _reads().pieces_elements(self, view, start, stop)

    def window(self, view: Tensor, offset: int, shape: tuple[int, ...], strides: tuple[int, ...]) -> Any:
        return _reads().pieces_window(self, view, offset, shape, strides)

    def release(self, view: Tensor, first: int, stop: int) -> None:
        itemsize, position = view.dtype.itemsize, 0
        first, stop = first * itemsize, stop * itemsize
        for piece in self.ranges:
            low, high = max(first, position), min(stop, position + piece.nbytes)
            if low < high:
                piece.source.release(piece.offset + low - position, high - low)
            position += piece.nbytes

    def problem(self, nbytes: int, itemsize: int) -> str | None:
        """Every piece must lie inside its source, and together they must hold the storage's bytes."""
        for piece in self.ranges:
            if not isinstance(piece, ByteRange) or (problem := _range_problem(piece, piece.nbytes)):
                return f"a piece of its data: {problem or 'not a ByteRange'}"
        return _short(self.nbytes, nbytes, "its pieces")


class Block:
    """One rectangular piece of a `Blocks` buffer: where it sits in the whole, and its values as a lazy Tensor.

    `load` runs on first use only, and its tensor is kept: finding a block's bytes may mean reading a small header of
    its own (a chunk saved as a torch.save archive), which listing a checkpoint must not do.
    """

    def __init__(self, offsets: tuple[int, ...], sizes: tuple[int, ...], load: Callable[[], Tensor]) -> None:
        self.offsets = offsets  # where the block starts in each dimension of the whole
        self.sizes = sizes
        self._load = load
        self._tensor: Tensor | None = None
        self._lock = threading.Lock()  # reader threads may ask for one block at once: it is loaded once

    @property
    def numel(self) -> int:
        return math.prod(self.sizes)

    @property
    def loaded(self) -> bool:
        return self._tensor is not None

    def tensor(self) -> Tensor:
        """The block's values: a lazy tensor of shape `sizes`, in a storage of its own."""
        with self._lock:
            if self._tensor is None:
                tensor = self._load()
                # Found only now, so not checked with the tree: the same layout rules before any read.
                if not isinstance(tensor, Tensor):
                    raise CorruptFileError(f"block at {list(self.offsets)}", f"{_shown(tensor)} is not a Tensor")
                if problem := layout_problem(tensor) or storage_problem(tensor.storage, tensor.dtype.itemsize):
                    raise CorruptFileError(tensor.storage.key, f"block at {list(self.offsets)}: {problem}")
                self._tensor = tensor
            return self._tensor


@dataclass(frozen=True)
class Blocks:
    """Data assembled from rectangular blocks that tile a row-major array of `shape` exactly once, each block an
    ordinary lazy Tensor in its own storage, possibly in another file (the chunks of a distributed checkpoint).

    Reads gather a range of elements from the blocks it intersects (storage.py), so the whole is never built. Unlike
    `Pieces` (a concatenation of byte ranges of one source, known when the file is opened), blocks are N-dimensional
    boxes whose bytes are found only when first read. registry.open checks the tiling (`blocks_problem`).
    """

    shape: tuple[int, ...]
    blocks: tuple[Block, ...]
    sequential: ClassVar[bool] = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def whole(self, view: Tensor) -> Any:
        return _reads().blocks_whole(self, view)

    def elements(self, view: Tensor, start: int, stop: int) -> Any:
        return _reads().blocks_elements(self, view, start, stop)

    def window(self, view: Tensor, offset: int, shape: tuple[int, ...], strides: tuple[int, ...]) -> Any:
        return _reads().blocks_window(self, view, offset, shape, strides)

    def release(self, view: Tensor, first: int, stop: int) -> None:
        """Drops pages in the loaded blocks only: releasing never loads a block."""
        _reads().blocks_release(self, first, stop)

    def problem(self, nbytes: int, itemsize: int) -> str | None:
        """The blocks must tile the array exactly once (checked without loading one), and the array must fill the
        storage."""
        if not isinstance(self.blocks, (tuple, list)):
            return f"its blocks {_shown(self.blocks)} are not a tuple of blocks"
        if not isinstance(self.shape, tuple) or not all(_is_size(n) for n in self.shape):
            return f"its blocks' array has shape {_shown(self.shape)}, not a tuple of sizes"
        if problem := blocks_problem(self.shape, self.blocks):
            return problem
        return _short(math.prod(self.shape) * itemsize, nbytes, f"its blocks' array {list(self.shape)}")


def blocks_problem(shape: tuple[int, ...], blocks: tuple[Block, ...] | list[Block], noun: str = "block") -> str | None:
    """Why `blocks` do not tile an array of `shape` exactly once, or None when they do (`noun` names a block in
    the message: a loader says "chunk").

    Checked arithmetically: every block lies inside the shape, no two overlap, and their volumes add up to the
    whole (then every element is in exactly one block)."""
    ndim, total = len(shape), 0
    for block in blocks:
        if not isinstance(block, Block) or not isinstance(block.offsets, tuple) or not isinstance(block.sizes, tuple):
            return f"{_shown(block)} is not a {noun} with a tuple of offsets and a tuple of sizes"
        where = f"{noun} at {_shown(list(block.offsets))} with sizes {_shown(list(block.sizes))}"
        if len(block.offsets) != ndim or len(block.sizes) != ndim:
            return f"{where} does not have the {ndim} dimensions of shape {list(shape)}"
        if not all(_is_size(n) for n in (*block.offsets, *block.sizes)):
            return f"{where} lies outside the shape {list(shape)}"
        if any(o + n > s for o, n, s in zip(block.offsets, block.sizes, shape)):
            return f"{where} lies outside the shape {list(shape)}"
        total += block.numel
    if (pair := _overlapping_blocks(blocks)) is not None:
        a, b = (f"{list(x.offsets)} (sizes {list(x.sizes)})" for x in pair)
        return f"{noun}s at {a} and {b} overlap"
    numel = math.prod(shape)
    if total != numel:
        return f"the {noun}s leave {numel - total:,} of the {numel:,} elements of shape {list(shape)} uncovered"
    return None


def _overlapping_blocks(blocks: tuple[Block, ...] | list[Block]) -> tuple[Block, Block] | None:
    """Two non-empty blocks that share an element, or None: a sweep along the axis with the most distinct starts
    (a grid of shards compares each block with its neighbours along that axis only)."""
    boxes = [b for b in blocks if b.numel]
    if len(boxes) < 2:
        return None
    if not boxes[0].offsets:  # 0-d: every block is the one element
        return boxes[0], boxes[1]
    axis = max(range(len(boxes[0].offsets)), key=lambda a: len({b.offsets[a] for b in boxes}))
    boxes.sort(key=lambda b: b.offsets[axis])
    for i, a in enumerate(boxes):
        end = a.offsets[axis] + a.sizes[axis]
        for b in boxes[i + 1 :]:
            if b.offsets[axis] >= end:
                break
            if all(ao < bo + bn and bo < ao + an for ao, an, bo, bn in zip(a.offsets, a.sizes, b.offsets, b.sizes)):
                return a, b
    return None


@dataclass(eq=False)
class Storage:
    """One buffer of a file. Tensors that point into the same Storage object share memory."""

    key: str
    nbytes: int
    data: StorageData | None = None  # ByteRange, Stream, Pieces, Blocks or a plugin's kind; None: nothing to read
    location: str | None = None  # the device tag the file recorded: cpu, cuda:0, mps (shown, never needed)
    byteorder: str = "little"


@dataclass(eq=False)
class Tensor:
    """A lazy tensor: its layout now, its values only when a command reads them."""

    dtype: DType
    shape: tuple[int, ...]
    strides: tuple[int, ...]  # in elements
    storage: Storage
    offset: int = 0  # in elements, into the storage
    declared_by: str | None = None  # "metadata" when the file declares this name an alias of another tensor

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.dtype.nbytes(self.numel)

    @property
    def extent(self) -> tuple[int, int]:
        """The half-open element range [first, last+1) of the storage this tensor touches ((o, o) when empty)."""
        if self.numel == 0:
            return self.offset, self.offset
        return self.offset, self.offset + 1 + sum((n - 1) * s for n, s in zip(self.shape, self.strides))

    @property
    def is_dense(self) -> bool:
        """True when the tensor covers its extent without gaps (contiguous, or a permutation of contiguous)."""
        first, end = self.extent
        return end - first == self.numel

    @property
    def is_contiguous(self) -> bool:
        expected = 1
        for n, s in zip(reversed(self.shape), reversed(self.strides)):
            if n != 1 and s != expected:
                return False
            expected *= n
        return True


@dataclass(frozen=True)
class Value:
    """A plain value: int, float, str, bool, None, bytes, complex, or a container of these."""

    value: Any

    @property
    def type(self) -> str:
        return type(self.value).__name__


@dataclass(frozen=True)
class Opaque:
    """An object the file builds from a global paramctl does not rebuild; what it holds is listed beneath it."""

    global_name: str
    note: str | None = None


Leaf = Union[Tensor, Value, Opaque]


@dataclass
class Tree:
    """A whole checkpoint: its leaves in file order, and the file's own metadata."""

    file: str
    format: str
    leaves: list[tuple[Path, Leaf]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[tuple[str, Leaf]]:
        for path, leaf in self.leaves:
            yield name_of(path), leaf

    def tensors(self) -> Iterator[tuple[str, Tensor]]:
        for name, leaf in self:
            if isinstance(leaf, Tensor):
                yield name, leaf

    def __getitem__(self, name: str) -> Leaf:
        for leaf_name, leaf in self:
            if leaf_name == name:
                return leaf
        raise KeyError(name)

    def __len__(self) -> int:
        return len(self.leaves)


def name_of(path: Path) -> str:
    """A path's display name: its segments joined with `.`."""
    return ".".join(path)


def split_key(key: object, separators: str = ".") -> Path:
    """A dict key as path segments: `'0.weight'` is ('0', 'weight'); flat formats also split on `/`."""
    text = key if isinstance(key, str) else repr(key) if isinstance(key, (bytes, float)) else str(key)
    for sep in separators[1:]:
        text = text.replace(sep, separators[0])
    return tuple(text.split(separators[0]))


class OpaqueObject:
    """What a loader builds for a foreign object: the global's name and whatever the file put inside it."""

    def __init__(self, global_name: str, contents: Any = None, note: str | None = None) -> None:
        self.global_name = global_name
        self.contents = contents  # constructor arguments, state, items: shown beneath the placeholder
        self.note = note


class TooDeepError(Exception):
    """Nesting beyond MAX_DEPTH, or a structure beyond MAX_ITEMS: the loader reports it as a corrupt file."""


class TooLargeError(TooDeepError):
    """A structure whose walk would visit more than MAX_ITEMS elements (a loader catches it as TooDeepError)."""


# Elements `flatten` may visit (containers, leaves, and the members it looks at to decide that a list is a plain
# value): tens of times what the largest real checkpoints hold, and few enough to walk in seconds.
MAX_ITEMS = 50_000_000


def flatten(obj: Any, prefix: Path = (), max_items: int = MAX_ITEMS) -> list[tuple[Path, Leaf]]:
    """Leaves of a nested structure of dicts, lists, tuples, Tensors, OpaqueObjects and plain values, in order.

    A container seen a second time (a pickle can reference one object twice, or build a loop) is shown once and
    then as a value naming the first place, so a small file can never make the walk explode. The walk is iterative
    with its own depth count: a placeholder's contents sit at the placeholder's path, so the path's length alone
    would not bound a chain of placeholders, and Python's recursion limit must never be what stops a hostile file.
    """
    leaves: list[tuple[Path, Leaf]] = []
    seen: dict[int, Path] = {}
    budget = _Budget(max_items)
    pending: list[tuple[Any, Path, int]] = [(obj, prefix, 0)]
    while pending:
        item, path, depth = pending.pop()
        budget.spend(1)
        if depth > MAX_DEPTH or len(path) - len(prefix) > MAX_DEPTH:
            raise TooDeepError(f"nesting deeper than {MAX_DEPTH} levels at {name_of(path[:20])}…")
        if isinstance(item, Tensor):
            leaves.append((path, item))
            continue
        is_container = isinstance(item, (Mapping, list, tuple, OpaqueObject))
        plain = is_container and budget.is_plain(item)
        if is_container and not plain:
            if id(item) in seen:
                leaves.append((path, Opaque("<reference>", f"same object as {name_of(seen[id(item)]) or '<root>'}")))
                continue
            seen[id(item)] = path
        children: list[tuple[Any, Path, int]] = []
        if isinstance(item, OpaqueObject):
            leaves.append((path, Opaque(item.global_name, item.note)))
            if item.contents is not None:
                children.append((item.contents, path, depth + 1))
        elif isinstance(item, Mapping) and item:
            children = [(value, path + split_key(key), depth + 1) for key, value in item.items()]
        elif isinstance(item, (list, tuple)) and not plain:
            children = [(value, path + (str(index),), depth + 1) for index, value in enumerate(item)]
        else:
            leaves.append((path, Value(item)))
        budget.spend(len(children))
        pending.extend(reversed(children))  # depth first, in order: the same leaves and order as a recursive walk
    return leaves


_SCALARS = (int, float, str, bool, bytes, complex, type(None))


def _is_plain(item: Any, depth: int = 0) -> bool:
    """True for a value shown whole: a scalar, or a list/tuple/set of scalars (a dict is always walked)."""
    if isinstance(item, _SCALARS):
        return True
    if isinstance(item, (list, tuple, set, frozenset)) and depth < 3:
        return all(_is_plain(x, depth + 1) for x in item)
    return False


class _Budget:
    """The elements a walk has visited, with `_is_plain`'s answers remembered per object: a list referenced a
    thousand times by a list referenced a thousand times is looked at once, not a million times."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._plain: dict[tuple[int, int], bool] = {}

    def spend(self, count: int) -> None:
        self.used += count
        if self.used > self.limit:
            raise TooLargeError(f"more than {self.limit:,} nested elements: refusing to walk them")

    def is_plain(self, item: Any, depth: int = 0) -> bool:
        """`_is_plain`, each element it looks at paid for."""
        if isinstance(item, _SCALARS):
            return True
        if not (isinstance(item, (list, tuple, set, frozenset)) and depth < 3):
            return False
        key = (id(item), depth)
        if key not in self._plain:
            self.spend(len(item))
            self._plain[key] = all(self.is_plain(x, depth + 1) for x in item)
        return self._plain[key]


# --------------------------------------------------------------------------- layouts

INT64_MAX = (1 << 63) - 1  # every size, stride and offset must fit the int64 NumPy computes views with


def layout_problem(tensor: Tensor) -> str | None:
    """Why a tensor's shape, strides and offset do not fit its storage, or None when they do.

    registry.open runs this (through `tree_problem`) over every tensor of every tree, whichever loader built it, so
    no command ever builds a view past a storage's end. Values are checked for type first: a plugin may hand over
    anything."""
    if _layout_fits(tensor):
        return None
    shape, strides, offset, storage = tensor.shape, tensor.strides, tensor.offset, tensor.storage
    if not isinstance(tensor.dtype, DType) or not _is_size(tensor.dtype.itemsize):
        return f"dtype {tensor.dtype!r} is not a paramctl dtype"
    if not isinstance(storage, Storage) or not _is_size(storage.nbytes):
        return f"storage {storage!r} is not a Storage with a byte size"
    if not isinstance(shape, tuple) or not all(_is_size(n) for n in shape):
        return f"shape {_shown(shape)} is not a tuple of sizes"
    if not isinstance(strides, tuple) or len(strides) != len(shape) or not all(_is_size(s) for s in strides):
        return f"strides {_shown(strides)} are not {len(shape)} non-negative integers for shape {list(shape)}"
    if not _is_size(offset):
        return f"offset {_shown(offset)} is not a non-negative integer"
    if math.prod(max(n, 1) for n in shape) > INT64_MAX:
        return f"shape {list(shape)} has more elements than an array can"
    end_bytes = tensor.dtype.nbytes(tensor.extent[1])
    if tensor.numel and end_bytes > storage.nbytes:
        return (
            f"shape {list(shape)} with strides {list(strides)} at offset {offset} needs "
            f"{end_bytes} bytes of its storage, which has {storage.nbytes}"
        )
    return None


def _layout_fits(tensor: Tensor) -> bool:
    """True when `layout_problem` has nothing to say: one pass over the dimensions, so checking the tensors of a
    large checkpoint costs little next to reading its header (the detailed checks run only when this fails)."""
    shape, strides, offset, storage, dtype = tensor.shape, tensor.strides, tensor.offset, tensor.storage, tensor.dtype
    if type(shape) is not tuple or type(strides) is not tuple or len(shape) != len(strides) or type(offset) is not int:
        return False
    if type(storage) is not Storage or type(storage.nbytes) is not int or not isinstance(dtype, DType):
        return False
    itemsize = dtype.itemsize
    if type(itemsize) is not int or not 0 <= itemsize <= INT64_MAX or not 0 <= offset <= INT64_MAX:
        return False
    last, numel, span = offset, 1, 1
    for n, s in zip(shape, strides):
        if type(n) is not int or type(s) is not int or not 0 <= n <= INT64_MAX or not 0 <= s <= INT64_MAX:
            return False
        numel *= n
        span *= n or 1
        last += (n - 1) * s
    return (
        span <= INT64_MAX
        and 0 <= storage.nbytes <= INT64_MAX
        and (numel == 0 or (last + 1) * itemsize <= storage.nbytes)
    )


def storage_problem(storage: Storage, itemsize: int) -> str | None:
    """Why a storage's data cannot hold `storage.nbytes` bytes (elements of `itemsize` for Blocks), or None: the
    data kind's own `problem`. A kind without one (a plugin's) is left to the reader, as is a storage without
    data (never read)."""
    check = getattr(storage.data, "problem", None)
    return None if check is None else check(storage.nbytes, itemsize)


def tree_problem(tree: Tree) -> tuple[str, str] | None:
    """The first tensor of `tree` whose layout or storage is unsound, as (name, why), or None.

    Linear in the tree: each storage's data is checked once, however many tensors view it."""
    checked: set[int] = set()
    for path, leaf in tree.leaves:
        if not isinstance(leaf, Tensor):
            continue
        if problem := layout_problem(leaf):
            return _named(path), problem
        if id(leaf.storage) not in checked:
            checked.add(id(leaf.storage))
            if problem := storage_problem(leaf.storage, leaf.dtype.itemsize):
                return _named(path), f"storage {leaf.storage.key}: {problem}"
    return None


def _named(path: Any) -> str:
    if isinstance(path, tuple) and all(isinstance(segment, str) for segment in path):
        return name_of(path) or "<root>"
    return _shown(path)


def _is_size(value: Any) -> bool:
    return type(value) is int and 0 <= value <= INT64_MAX


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxtuple, _SHORT.maxlist, _SHORT.maxdict = 3, 6, 6, 4
_SHORT.maxset = _SHORT.maxfrozenset = 6
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 60


def short_repr(value: Any, limit: int = 100) -> str:
    """A bounded repr for error messages: a pickle-made value can be huge or share itself a billion times over,
    and `f"{value!r:.80}"` would build the whole repr before cutting it."""
    try:
        text = _SHORT.repr(value)
    except (RecursionError, MemoryError, ValueError):  # pragma: no cover - reprlib bounds the depth already
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _shown(value: Any) -> str:
    return short_repr(value, 80)


def _range_problem(data: ByteRange, nbytes: int) -> str | None:
    size = getattr(data.source, "size", None)
    if not _is_size(data.offset) or not _is_size(data.nbytes):
        return f"its byte range at {_shown(data.offset)} of {_shown(data.nbytes)} bytes is not a range of sizes"
    if data.nbytes < nbytes:
        return _short(data.nbytes, nbytes, "its byte range")
    if _is_size(size) and data.offset + data.nbytes > size:
        return f"its bytes {data.offset}-{data.offset + data.nbytes} lie outside the {size} bytes of {data.source.name}"
    return None


def _short(has: int, needs: int, what: str) -> str | None:
    return None if has >= needs else f"{what} holds {has} bytes, fewer than the storage's {needs}"


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major strides in elements, as torch computes them (a dimension of size 0 counts as 1)."""
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))
