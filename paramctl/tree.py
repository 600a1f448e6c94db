"""The common parameter tree: what every loader produces and every command reads. It knows no file format.

A checkpoint is a list of leaves, each addressed by a path of segments (the file's own nesting: dict keys and list
indices, each further split on `.`). A leaf is a lazy tensor, a plain value or an opaque object a loader would not
rebuild. Tensors point into storages; tensors that point into the same storage share memory (they are "tied").
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Union

from paramctl.dtypes import DType

Path = tuple[str, ...]

# Nesting deeper than this is refused: no real checkpoint comes close, and it bounds the walk.
MAX_DEPTH = 200


@dataclass(frozen=True)
class ByteRange:
    """Data stored as-is at a byte range of a source: random access, zero-copy."""

    source: Any  # a paramctl.source.ByteSource
    offset: int
    nbytes: int


@dataclass(frozen=True)
class Stream:
    """Data that can only be read front to back (a deflated zip member); `open` starts a fresh stream."""

    open: Callable[[], BinaryIO]
    nbytes: int


@dataclass(frozen=True)
class Pieces:
    """Data stored as-is in several byte ranges of one source, read as their concatenation (a format that splits a
    large array into chunks). Every range holds whole elements of the tensors that view the storage."""

    ranges: tuple[ByteRange, ...]

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self.ranges)


class Block:
    """One rectangular piece of a `Blocks` buffer: where it sits in the whole, and its values as a lazy Tensor.

    `load` runs on first use only, and its tensor is kept: finding a block's bytes may mean reading a small header of
    its own (a chunk saved as a torch.save archive), which listing a checkpoint must not do. Added for distributed
    checkpoints (issue 12).
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
                self._tensor = self._load()
            return self._tensor


@dataclass(frozen=True)
class Blocks:
    """Data assembled from rectangular blocks that tile a row-major array of `shape` exactly once, each block an
    ordinary lazy Tensor in its own storage, possibly in another file (the chunks of a distributed checkpoint).

    Reads gather a range of elements from the blocks it intersects (reader.py), so the whole is never built. Unlike
    `Pieces` (a concatenation of byte ranges of one source, known when the file is opened), blocks are N-dimensional
    boxes whose bytes are found only when first read. Loaders check the tiling with `blocks_problem`.
    """

    shape: tuple[int, ...]
    blocks: tuple[Block, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def blocks_problem(shape: tuple[int, ...], blocks: tuple[Block, ...] | list[Block], noun: str = "block") -> str | None:
    """Why `blocks` do not tile an array of `shape` exactly once, or None when they do (`noun` names a block in
    the message: a loader says "chunk").

    Checked arithmetically: every block lies inside the shape, no two overlap, and their volumes add up to the
    whole (then every element is in exactly one block)."""
    ndim, total = len(shape), 0
    for block in blocks:
        where = f"{noun} at {list(block.offsets)} with sizes {list(block.sizes)}"
        if len(block.offsets) != ndim or len(block.sizes) != ndim:
            return f"{where} does not have the {ndim} dimensions of shape {list(shape)}"
        if any(o < 0 or n < 0 or o + n > s for o, n, s in zip(block.offsets, block.sizes, shape)):
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
    data: ByteRange | Stream | Pieces | Blocks | None = None  # None for a storage without data (never read)
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
    """Nesting beyond MAX_DEPTH: the loader reports it as a corrupt file."""


def flatten(obj: Any, prefix: Path = ()) -> list[tuple[Path, Leaf]]:
    """Leaves of a nested structure of dicts, lists, tuples, Tensors, OpaqueObjects and plain values, in order.

    A container seen a second time (a pickle can reference one object twice, or build a loop) is shown once and
    then as a value naming the first place, so a small file can never make the walk explode.
    """
    leaves: list[tuple[Path, Leaf]] = []
    seen: dict[int, Path] = {}

    def walk(item: Any, path: Path) -> None:
        if len(path) - len(prefix) > MAX_DEPTH:
            raise TooDeepError(f"nesting deeper than {MAX_DEPTH} levels at {name_of(path[:20])}…")
        if isinstance(item, Tensor):
            leaves.append((path, item))
            return
        is_container = isinstance(item, (Mapping, list, tuple, OpaqueObject))
        if is_container and not _is_plain(item):
            if id(item) in seen:
                leaves.append((path, Opaque("<reference>", f"same object as {name_of(seen[id(item)]) or '<root>'}")))
                return
            seen[id(item)] = path
        if isinstance(item, OpaqueObject):
            leaves.append((path, Opaque(item.global_name, item.note)))
            if item.contents is not None:
                walk(item.contents, path)
        elif isinstance(item, Mapping) and item:
            for key, value in item.items():
                walk(value, path + split_key(key))
        elif isinstance(item, (list, tuple)) and not _is_plain(item):
            for index, value in enumerate(item):
                walk(value, path + (str(index),))
        else:
            leaves.append((path, Value(item)))

    walk(obj, prefix)
    return leaves


_SCALARS = (int, float, str, bool, bytes, complex, type(None))


def _is_plain(item: Any, depth: int = 0) -> bool:
    """True for a value shown whole: a scalar, or a list/tuple/set of scalars (a dict is always walked)."""
    if isinstance(item, _SCALARS):
        return True
    if isinstance(item, (list, tuple, set, frozenset)) and depth < 3:
        return all(_is_plain(x, depth + 1) for x in item)
    return False


def layout_problem(tensor: Tensor) -> str | None:
    """Why a tensor's shape, strides and offset do not fit its storage, or None when they do.

    Loaders check every tensor with this before the tree is handed out, so no command ever reads past a storage.
    """
    end_bytes = tensor.dtype.nbytes(tensor.extent[1])
    if tensor.numel and end_bytes > tensor.storage.nbytes:
        return (
            f"shape {list(tensor.shape)} with strides {list(tensor.strides)} at offset {tensor.offset} needs "
            f"{end_bytes} bytes of its storage, which has {tensor.storage.nbytes}"
        )
    return None


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major strides in elements, as torch computes them (a dimension of size 0 counts as 1)."""
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))
