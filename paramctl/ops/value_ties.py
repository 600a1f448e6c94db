"""`ties --by value`: tensors whose contents are identical, or one the transpose of the other, in any format.

This finds ties a format cannot store (npz, a safetensors file written without alias metadata) and ties lost in a
conversion. Candidates must share dtype and element count. A signature of a few dozen elements at fixed positions
rules out almost every pair without reading the data; the survivors are compared in full, bit for bit (so NaN
payloads and -0.0 count), chunk by chunk on all cores, each tensor dropped as soon as nothing else can match it.
A transpose is checked by hashing matching tiles of both matrices, each read once in bands of rows, so memory
stays bounded. Names that are the same view of one storage hold the same values: they are read once."""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from paramctl import reader
from paramctl.dtypes import numpy_dtype
from paramctl.ops.ties import (
    ANCHOR,
    BY_VALUE,
    RESHAPED,
    TIE,
    TIED,
    TRANSPOSED,
    Member,
    TieGroup,
    TiesResult,
    tensor_order,
    tree_numel,
)
from paramctl.tree import ByteRange, Tensor, Tree

SAMPLES = 64  # elements per signature: enough to tell random weights apart, one page each to read
BAND_BYTES = 8 << 20  # a band of a matrix's rows read at a time when checking a transpose
TILE = 256  # transposed in cache-sized tiles: 256 x 256 elements

_GOLDEN = (math.sqrt(5) - 1) / 2  # scatters the sample positions over the whole tensor, never in one column


@dataclass(eq=False)
class _Rep:
    """One distinct view to read; `names` are (file order, name) of every name that is exactly this view."""

    tensor: Tensor
    names: list[tuple[int, str]] = field(default_factory=list)
    signature: bytes = b""
    transposed_signature: bytes = b""

    @property
    def order(self) -> int:
        return self.names[0][0]


def find_value_ties(tree: Tree) -> TiesResult:
    """Tie groups by identical contents (`ties --by value`): reads every tensor's data."""
    groups, skipped = value_groups(tree)
    order = tensor_order(tree)
    groups.sort(key=lambda g: order[g.members[0].name])
    numel = tree_numel(tree)
    return TiesResult(
        tree.file, tree.format, BY_VALUE, groups, numel, numel - sum(g.saved_numel for g in groups), skipped
    )


def value_groups(tree: Tree) -> tuple[list[TieGroup], list[str]]:
    """Groups of names with identical (or transposed) contents, and the names that could not be compared."""
    reps, skipped = _representatives(tree)
    buckets: dict[tuple[str, int], list[_Rep]] = {}
    for rep in reps:
        buckets.setdefault((rep.tensor.dtype.name, rep.tensor.numel), []).append(rep)
    groups = []
    for bucket in buckets.values():
        classes = _identical_classes(bucket) if len(bucket) > 1 else [bucket]
        groups.extend(_groups(classes, _transposed_links(classes)))
    return groups, skipped


def _representatives(tree: Tree) -> tuple[list[_Rep], list[str]]:
    reps: dict[tuple[Any, ...], _Rep] = {}
    skipped = []
    for order, (name, tensor) in enumerate(tree.tensors()):
        if tensor.numel == 0:
            continue  # nothing to compare
        if not _comparable(tensor):
            skipped.append(name)
            continue
        strides = tuple(s if n != 1 else 0 for n, s in zip(tensor.shape, tensor.strides))
        key = (id(tensor.storage), tensor.dtype.name, tensor.offset, tensor.shape, strides)
        reps.setdefault(key, _Rep(tensor)).names.append((order, name))
    return list(reps.values()), skipped


def _comparable(tensor: Tensor) -> bool:
    try:
        numpy_dtype(tensor.dtype)
    except TypeError:
        return False
    return True


# --------------------------------------------------------------------------- identical contents


def _identical_classes(bucket: list[_Rep]) -> list[list[_Rep]]:
    """Partition reps of one dtype and size into classes of bit-identical contents, in file order."""
    for rep in bucket:
        _sign(rep)
    by_signature: dict[bytes, list[_Rep]] = {}
    for rep in bucket:
        by_signature.setdefault(rep.signature, []).append(rep)
    classes: list[list[_Rep]] = []
    for candidates in by_signature.values():
        classes.extend(_split_identical(candidates) if len(candidates) > 1 else [candidates])
    return sorted(classes, key=lambda cls: cls[0].order)


def _positions(numel: int) -> np.ndarray:
    """Sample positions (row-major): every element of a small tensor, else the ends and a golden-ratio scatter."""
    if numel <= SAMPLES:
        return np.arange(numel, dtype=np.int64)
    scattered = (np.arange(SAMPLES, dtype=np.float64) * _GOLDEN % 1.0 * numel).astype(np.int64)
    return np.unique(np.concatenate([[0, numel - 1], scattered]))


def _sign(rep: _Rep) -> None:
    """Sample the rep: its signature, and for a matrix the signature its transpose would have."""
    tensor = rep.tensor
    positions = _positions(tensor.numel)
    wanted = [positions]
    if _is_matrix(tensor):
        m, n = tensor.shape  # the transpose (n, m) at row-major p is tensor[p % m, p // m]
        wanted.append((positions % m) * n + positions // m)
    values = _gather(tensor, np.concatenate(wanted))
    rep.signature = values[: len(positions)].tobytes()
    rep.transposed_signature = values[len(positions) :].tobytes()


def _is_matrix(tensor: Tensor) -> bool:
    """A 2-D tensor whose transpose is not just a reshape (both dimensions above 1)."""
    return len(tensor.shape) == 2 and min(tensor.shape) > 1


def _gather(tensor: Tensor, positions: np.ndarray) -> np.ndarray:
    """The bits of the elements at row-major `positions`: random access when stored as-is, else one chunked pass
    (a stream; data assembled from pieces or blocks, which `reader.array` would build whole)."""
    if isinstance(tensor.storage.data, ByteRange):
        values = reader.array(tensor)
        flat = values.reshape(1) if not tensor.shape else values[np.unravel_index(positions, tensor.shape)]
        found = _bits(flat if tensor.shape else flat[positions]).copy()
        reader.release(tensor)  # each sample faulted in a read-around window: drop them before the next tensor
        return found
    found: np.ndarray | None = None
    start = 0
    for piece in reader.chunks(tensor):
        bits = _bits(piece)
        if found is None:
            found = np.zeros(len(positions), dtype=bits.dtype)
        inside = (positions >= start) & (positions < start + len(piece))
        found[inside] = bits[positions[inside] - start]
        start += len(piece)
    assert found is not None
    return found


def _bits(values: np.ndarray) -> np.ndarray:
    """The same elements as unsigned integers of their size: compared bit for bit (NaN equals the same NaN)."""
    itemsize = values.dtype.itemsize
    return values.view(f"u{itemsize}" if itemsize in (1, 2, 4, 8) else f"V{itemsize}")


def _split_identical(reps: list[_Rep]) -> list[list[_Rep]]:
    """Refine one candidate class chunk by chunk, all chunks in flight on the pool; stop when all are apart."""
    size = max(1, reader.CHUNK_BYTES // reps[0].tensor.dtype.itemsize)
    count = -(-reps[0].tensor.numel // size)
    sources = {rep: _ChunkSource(rep.tensor, size) for rep in reps}
    streamed = any(source.stream is not None for source in sources.values())
    classes = [reps]

    def tasks() -> Iterator[Callable[[], list[list[_Rep]]]]:
        for index in range(count):
            undecided = [cls for cls in classes if len(cls) > 1]  # reps already alone are not read again
            if not undecided:
                return
            yield partial(_split_chunk, index, undecided, sources)

    # A streamed (deflated) tensor can only be read in order: one thread then.
    with closing(reader.parallel(tasks(), threads=1 if streamed else None)) as results:
        for parts in results:
            classes = _refine(classes, parts)
            if all(len(cls) == 1 for cls in classes):
                break
    return classes


@dataclass
class _ChunkSource:
    """A tensor's row-major chunks by index: planned chunks read in any order, a stream's in order."""

    tensor: Tensor
    size: int
    plan: list[reader.Chunk] | None = None
    stream: Iterator[np.ndarray] | None = None

    def __post_init__(self) -> None:
        self.plan = reader.plan(self.tensor, self.size)
        if self.plan is None:
            self.stream = _exact(reader.chunks(self.tensor, self.size), self.size)

    def read(self, index: int) -> tuple[np.ndarray, Callable[[], None]]:
        if self.plan is not None:
            chunk = self.plan[index]
            return chunk.read(), chunk.release
        assert self.stream is not None
        return next(self.stream), lambda: None


def _split_chunk(index: int, classes: list[list[_Rep]], sources: dict[_Rep, _ChunkSource]) -> list[list[_Rep]]:
    """Each class split by the bits of chunk `index` of its members."""
    parts: list[list[_Rep]] = []
    for cls in classes:
        firsts: list[tuple[np.ndarray, list[_Rep]]] = []
        kept = []  # the first chunk of each part stays mapped until the class is done; the others go at once
        for rep in cls:
            values, release = sources[rep].read(index)
            bits = _bits(values)
            for first, members in firsts:
                if np.array_equal(first, bits):
                    members.append(rep)
                    release()
                    break
            else:
                firsts.append((bits, [rep]))
                kept.append(release)
        for release in kept:
            release()
        parts.extend(members for _, members in firsts)
    return parts


def _refine(classes: list[list[_Rep]], parts: list[list[_Rep]]) -> list[list[_Rep]]:
    """Split each class by the chunk's parts: two reps stay together only if they agreed on every chunk so far."""
    label = {rep: index for index, part in enumerate(parts) for rep in part}
    refined = []
    for cls in classes:
        split: dict[object, list[_Rep]] = {}
        for rep in cls:
            split.setdefault(label.get(rep, rep), []).append(rep)
        refined.extend(split.values())
    return refined


def _exact(pieces: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Pieces regrouped into exactly `size` elements each (the last may be shorter)."""
    held: list[np.ndarray] = []
    count = 0
    for piece in pieces:
        if not held and len(piece) == size:
            yield piece
            continue
        held.append(piece)
        count += len(piece)
        while count >= size:
            joined = np.concatenate(held)
            yield joined[:size]
            held, count = [joined[size:]], count - size
    if count:
        yield np.concatenate(held)


# --------------------------------------------------------------------------- transposes


def _transposed_links(classes: list[list[_Rep]]) -> list[tuple[_Rep, _Rep]]:
    """Pairs of matrices, each the other's transpose, checked in full only after their samples agree.

    Two classes need one link to be one group: once a pair of them is confirmed, their other pairs are not read.
    """
    class_of = {rep: index for index, cls in enumerate(classes) for rep in cls}
    by_sample: dict[tuple[Any, ...], list[_Rep]] = {}
    for cls in classes:
        for rep in cls:
            by_sample.setdefault((rep.tensor.shape, rep.signature), []).append(rep)
    links: list[tuple[_Rep, _Rep]] = []
    joined: set[tuple[int, int]] = set()
    for cls in classes:
        for a in cls:
            if not _is_matrix(a.tensor):
                continue
            for b in by_sample.get((a.tensor.shape[::-1], a.transposed_signature), []):
                pair = (class_of[a], class_of[b])
                # Each pair is looked at once, from its earlier rep; a symmetric matrix is its own transpose.
                if b.order <= a.order or pair[0] == pair[1] or pair in joined:
                    continue
                if _is_transpose(a.tensor, b.tensor):
                    links.append((a, b))
                    joined.update((pair, pair[::-1]))
    return links


def _is_transpose(a: Tensor, b: Tensor) -> bool:
    """Whether b (n, m) is a (m, n) transposed: each tile of a, transposed, hashes (SHA-256) as b's matching tile.

    Both are read once, front to back, in bands of rows. Reading a column slab of a row-major matrix instead would
    map nearly the whole matrix: the kernel maps up to 64 KiB around every page fault (fault-around), and a column
    touches every row. Only a digest per tile is kept.
    """
    m, n = a.shape
    itemsize = a.dtype.itemsize
    a_rows = max(1, min(TILE, BAND_BYTES // (n * itemsize)))  # a's band height is the width of b's tiles
    b_rows = max(1, min(TILE, BAND_BYTES // (m * itemsize)))  # and the other way round
    expected = dict(_tile_digests(a, a_rows, b_rows, transposed=True))
    return all(expected.get(key) == digest for key, digest in _tile_digests(b, b_rows, a_rows, transposed=False))


def _tile_digests(
    tensor: Tensor, band_rows: int, tile_columns: int, transposed: bool
) -> Iterator[tuple[tuple[int, int], bytes]]:
    """(tile position in b, digest) for every tile of a matrix, read in bands of rows on all cores.

    Tile (i, j) of a, transposed, lands at (j, i) in b: keys are given in b's coordinates.
    """
    columns = tensor.shape[1]
    size = band_rows * columns

    def digests(band: int, values: np.ndarray) -> list[tuple[tuple[int, int], bytes]]:
        rows = _bits(values).reshape(-1, columns)
        found = []
        for index, first in enumerate(range(0, columns, tile_columns)):
            tile = rows[:, first : first + tile_columns]
            tile = np.ascontiguousarray(tile.T if transposed else tile)
            key = (index, band) if transposed else (band, index)
            found.append((key, hashlib.sha256(tile.reshape(-1).view(np.uint8)).digest()))
        return found

    pieces = reader.plan(tensor, size)
    if pieces is None:  # a stream reads in order, on this thread
        for band, values in enumerate(_exact(reader.chunks(tensor, size), size)):
            yield from digests(band, values)
        return

    def task(band: int, piece: reader.Chunk) -> list[tuple[tuple[int, int], bytes]]:
        try:
            return digests(band, piece.read())
        finally:
            piece.release()

    with closing(reader.parallel(partial(task, band, piece) for band, piece in enumerate(pieces))) as results:
        for found in results:
            yield from found


# --------------------------------------------------------------------------- groups


def _groups(classes: list[list[_Rep]], links: list[tuple[_Rep, _Rep]]) -> list[TieGroup]:
    """One group per set of classes joined by transposes, holding two or more names.

    Each name's relation is to its `partner`, found walking from the anchor (the group's first name in file
    order): classmates hold the same bytes (tied, or reshaped), linked matrices are transposed.
    """
    class_of = {rep: index for index, cls in enumerate(classes) for rep in cls}
    root = list(range(len(classes)))
    transposes: dict[_Rep, list[_Rep]] = {}
    for a, b in links:
        transposes.setdefault(a, []).append(b)
        transposes.setdefault(b, []).append(a)
        ra, rb = _find(root, class_of[a]), _find(root, class_of[b])
        root[max(ra, rb)] = min(ra, rb)
    components: dict[int, list[_Rep]] = {}
    for index, cls in enumerate(classes):
        components.setdefault(_find(root, index), []).extend(cls)
    groups = []
    for reps in components.values():
        if sum(len(rep.names) for rep in reps) < 2:
            continue
        start = min(reps, key=lambda rep: rep.order)
        found: dict[_Rep, tuple[str, str | None]] = {start: (ANCHOR, None)}
        queue = deque([start])
        while queue:
            rep = queue.popleft()
            partner = rep.names[0][1]
            for other in classes[class_of[rep]]:  # same bytes first: a partner is the anchor where it can be
                if other not in found:
                    found[other] = (_same_bytes_relation(rep.tensor, other.tensor), partner)
                    queue.append(other)
            for other in transposes.get(rep, []):
                if other not in found:
                    found[other] = (TRANSPOSED, partner)
                    queue.append(other)
        named = sorted((order, name, rep) for rep in reps for order, name in rep.names)
        members = []
        for _, name, rep in named:
            relation, partner = found[rep]
            if name != rep.names[0][1]:  # another name for the same view
                relation, partner = TIED, rep.names[0][1]
            members.append(Member(name, rep.tensor, relation, partner))
        storage = start.tensor.storage if len({id(m.tensor.storage) for m in members}) == 1 else None
        groups.append(TieGroup(TIE, storage, tuple(members), start.tensor.numel))
    return groups


def _find(root: list[int], index: int) -> int:
    while root[index] != index:
        root[index] = root[root[index]]
        index = root[index]
    return index


def _same_bytes_relation(a: Tensor, b: Tensor) -> str:
    """Tied for the same shape; (1, n) against (n, 1) is a transpose too; any other shape is a reshape."""
    if a.shape == b.shape:
        return TIED
    if len(a.shape) == 2 and b.shape == a.shape[::-1] and min(a.shape) == 1:
        return TRANSPOSED
    return RESHAPED
