"""`diff`: what differs between two checkpoints, as h5diff reports it (names, shapes, dtypes, values), and more.

This module matches: names are mapped (ops/names.py), then paired; tensors, plain values and metadata are matched
here, and each distinct view pair of tensors becomes a job whose chunks run through the numeric kernel
(ops/diff_kernel.py) on the reader's thread pool, both sides' chunks aligned by `reader.aligned_tasks`. The
results are the dataclasses of ops/diff_result.py. A view pair is compared once however many names share it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from paramctl import reader
from paramctl.errors import UsageError
from paramctl.ops.diff_kernel import Partial, Spec, compare_values, equal_norms, value_stats
from paramctl.ops.diff_result import (
    DTYPE,
    SHAPE,
    VALUES,
    DiffOptions,
    DiffResult,
    DroppedTie,
    MetadataChange,
    OnlyIn,
    Operand,
    TensorDiff,
    ValueChange,
    ValueStats,
)
from paramctl.ops.names import Side, map_names
from paramctl.ops.ties import ANCHOR, RESHAPED, TIED, TRANSPOSED, storage_groups
from paramctl.tree import Leaf, Opaque, Tensor, Tree, Value

# Keys a loader puts in the metadata that describe the container, not the content: torch.load never returns them,
# so two saves of the same state dict under different file names (a zip's folder is the file's stem) are equal.
CONTAINER_KEYS = {
    "torch-zip": frozenset({"archive", "byteorder", "version"}),
    "torch-legacy": frozenset({"protocol_version", "sys_info"}),
    "dcp": frozenset({"files", "chunks", "records"}),  # where the chunks lie: differs with the number of ranks
}

ALIASES = frozenset({TIED, TRANSPOSED, RESHAPED})  # relations of a name that views exactly its anchor's bytes


def diff_trees(
    a: Tree, b: Tree, options: DiffOptions | None = None, advance: Callable[[int], None] | None = None
) -> DiffResult:
    """Compare two trees. `advance(nbytes)` is called as tensor bytes (of both sides) are compared."""
    return Comparison(a, b, options or DiffOptions()).run(advance)


class Comparison:
    """A diff in two steps: matching names (headers only, so `nbytes` is known up front), then comparing values."""

    def __init__(self, a: Tree, b: Tree, options: DiffOptions) -> None:
        options.check()
        self.options = options
        self.a = map_names(a, "a", options.subtree_a, options)
        self.b = map_names(b, "b", options.subtree_b, options)
        self.result = DiffResult(
            Operand(a.file, a.format, options.subtree_a), Operand(b.file, b.format, options.subtree_b), options
        )
        self.pairs: dict[str, tuple[Tensor, Tensor]] = {}  # names to compare by value
        self.equal_names: set[str] = set()
        self.jobs: dict[tuple[Any, ...], _Job] = {}  # one per distinct view pair
        self._match()

    @property
    def nbytes(self) -> int:
        """Tensor bytes the value comparison reads, both sides, each shared view pair once."""
        return sum(job.a.nbytes + job.b.nbytes for job in self.jobs.values())

    def _match(self) -> None:
        a, b, result = self.a.leaves, self.b.leaves, self.result
        for name, (_, leaf) in a.items():
            if name not in b:
                result.only_in_a.append(_only_in(name, leaf))
                continue
            other = b[name][1]
            if isinstance(leaf, Tensor) and isinstance(other, Tensor):
                self._match_tensors(name, leaf, other)
            else:
                change = ValueChange(name, _shown(leaf), _shown(other))
                if _same_leaf(leaf, other, self.options.nan_equal):
                    if self.options.list_all:
                        result.values_unchanged.append(change)
                else:
                    result.values_changed.append(change)
        result.only_in_b = [_only_in(name, leaf) for name, (_, leaf) in b.items() if name not in a]
        if self.options.compare_metadata:
            if self.a.tree.format == self.b.tree.format:
                result.metadata_changed = _metadata_changes(self.a.tree, self.b.tree)
            else:  # one format's keys mean nothing in another's: say so rather than report every key as changed
                result.metadata_not_compared = (
                    f"the files are of different formats ({self.a.tree.format}, {self.b.tree.format})"
                )

    def _match_tensors(self, name: str, a: Tensor, b: Tensor) -> None:
        if a.shape != b.shape or (a.dtype != b.dtype and not self.options.ignore_dtype):
            return
        for tensor in (a, b):
            if tensor.dtype.numpy_name is None:
                raise UsageError(
                    f"cannot compare the values of {name!r}: {tensor.dtype.name} has no NumPy equivalent"
                    " (--exclude it to compare the rest)"
                )
        self.pairs[name] = (a, b)
        key = _view_pair_key(a, b)
        if key not in self.jobs:
            self.jobs[key] = _Job(a, b, Spec.of(a, b, self.options))

    def run(self, advance: Callable[[int], None] | None = None) -> DiffResult:
        """Compare the values of every matched pair, then build the result."""
        advance = advance or (lambda nbytes: None)
        _run_jobs(list(self.jobs.values()), self.options, advance)
        result = self.result
        if self.options.count_nonfinite_a:
            result.nonfinite_a = {
                name: self.jobs[_view_pair_key(a, b)].total.nonfinite_a for name, (a, b) in self.pairs.items()
            }
        for name, (_, leaf) in self.a.leaves.items():
            other = self.b.leaves.get(name)
            if other is None or not isinstance(leaf, Tensor) or not isinstance(other[1], Tensor):
                continue
            entry = self._tensor_diff(name, leaf, other[1])
            if entry.reason is None:
                result.equal_count += 1
                self.equal_names.add(name)
                if self.options.list_all:
                    result.unchanged.append(entry)
            else:
                result.changed.append(entry)
        self._find_dropped_ties()
        return result

    def _tensor_diff(self, name: str, a: Tensor, b: Tensor) -> TensorDiff:
        def entry(reason: str | None, stats: ValueStats | None = None) -> TensorDiff:
            return TensorDiff(name, reason, a.dtype.name, b.dtype.name, a.shape, b.shape, stats)

        if a.shape != b.shape:
            return entry(SHAPE)
        if name not in self.pairs:
            return entry(DTYPE)
        stats = self.jobs[_view_pair_key(a, b)].stats()
        return entry(VALUES if stats.mismatched else None, stats)

    def _find_dropped_ties(self) -> None:
        """Turn bare removals of a tied name into dropped ties when its partner is present and equal on both sides."""
        result = self.result
        for side, only in ((self.a, result.only_in_a), (self.b, result.only_in_b)):
            clusters = _tie_clusters(side)
            kept: list[OnlyIn] = []
            for entry in only:
                tie = None
                partners = clusters.get(entry.name, []) if entry.kind == "tensor" else []
                for partner, relation in partners:
                    if partner in self.equal_names:
                        tie = DroppedTie(entry.name, partner, side.label, relation)
                        break
                if tie is None:
                    kept.append(entry)
                else:
                    result.dropped_ties.append(tie)
            only[:] = kept


def _tie_clusters(side: Side) -> dict[str, list[tuple[str, str]]]:
    """Mapped name -> [(mapped partner, relation)] for the names that view exactly the same bytes."""
    clusters: dict[str, list[tuple[str, str]]] = {}
    for group in storage_groups(side.tree):
        by_anchor: dict[str, list[tuple[str, str, Tensor]]] = {}
        for member in group.members:
            anchor = member.partner if member.relation in ALIASES else member.name
            if member.name in side.mapped and anchor is not None:
                by_anchor.setdefault(anchor, []).append((side.mapped[member.name], member.relation, member.tensor))
        for members in by_anchor.values():
            for name, relation, tensor in members:
                clusters[name] = [
                    (other, _relation(relation, to, tensor, view)) for other, to, view in members if other != name
                ]
    return clusters


def _relation(a: str, b: str, x: Tensor, y: Tensor) -> str:
    """How two views of one cluster relate, from how each relates to the cluster's anchor: two views with one
    layout (two transposes of one anchor) are tied to each other, whatever they are to the anchor."""
    if (x.shape, x.strides, x.offset, x.dtype) == (y.shape, y.strides, y.offset, y.dtype):
        return TIED
    kinds = {a, b} - {ANCHOR, TIED}
    return TIED if not kinds else RESHAPED if RESHAPED in kinds else TRANSPOSED


def _view_pair_key(a: Tensor, b: Tensor) -> tuple[Any, ...]:
    """Equal keys pair the same storage elements of A with the same of B: one comparison serves both names.

    Dimensions are sorted jointly, so a tied transposed view pair (X and Xᵀ on both sides) shares a key: its
    statistics are the same elements in another order.
    """
    dims = tuple(sorted((n, sa, sb) for n, sa, sb in zip(a.shape, a.strides, b.strides) if n != 1))
    return id(a.storage), a.offset, a.dtype.name, id(b.storage), b.offset, b.dtype.name, dims


def _only_in(name: str, leaf: Leaf | tuple[Leaf, ...]) -> OnlyIn:
    if isinstance(leaf, Tensor):
        return OnlyIn(name, "tensor", leaf.dtype.name, leaf.shape)
    return OnlyIn(name, "object" if isinstance(leaf, Opaque) else "value")


def _shown(leaf: Leaf | tuple[Leaf, ...]) -> Any:
    """A leaf as the value JSON and the terminal show."""
    if isinstance(leaf, tuple):
        return [_shown(item) for item in leaf]
    if isinstance(leaf, Tensor):
        return f"<tensor {leaf.dtype.name} {list(leaf.shape)}>"
    if isinstance(leaf, Opaque):
        return f"<{leaf.global_name}>"
    return leaf.value


def _same_leaf(a: Leaf | tuple[Leaf, ...], b: Leaf | tuple[Leaf, ...], nan_equal: bool) -> bool:
    if isinstance(a, tuple) or isinstance(b, tuple):
        return (
            isinstance(a, tuple)
            and isinstance(b, tuple)
            and len(a) == len(b)
            and all(_same_leaf(x, y, nan_equal) for x, y in zip(a, b))
        )
    if isinstance(a, Value) and isinstance(b, Value):
        return _same_value(a.value, b.value, nan_equal)
    if isinstance(a, Opaque) and isinstance(b, Opaque):
        return (a.global_name, a.note) == (b.global_name, b.note)
    return False


def _same_value(x: Any, y: Any, nan_equal: bool) -> bool:
    """Equal values of the same type (3 and 3.0 differ, as do True and 1); NaN equals NaN unless told otherwise."""
    if type(x) is not type(y):
        return False
    if isinstance(x, float) and x != x and y != y:
        return nan_equal
    if isinstance(x, complex) and (x != x or y != y):
        return nan_equal and _same_value(x.real, y.real, True) and _same_value(x.imag, y.imag, True)
    if isinstance(x, (list, tuple)):
        return len(x) == len(y) and all(_same_value(p, q, nan_equal) for p, q in zip(x, y))
    return bool(x == y)


def _metadata_changes(a: Tree, b: Tree) -> list[MetadataChange]:
    """Changed metadata of two files of one format, without container details and alias declarations."""
    skip = set(CONTAINER_KEYS.get(a.format, ()))
    for tree in (a, b):  # safetensors' save_model aliases are compared as tensors, by name
        skip.update(name for name, tensor in tree.tensors() if tensor.declared_by == "metadata")
    missing = object()
    changes = []
    for key in [*a.metadata, *(k for k in b.metadata if k not in a.metadata)]:
        if key in skip:
            continue
        x, y = a.metadata.get(key, missing), b.metadata.get(key, missing)
        if x is missing or y is missing or not _same_value(x, y, True):
            changes.append(MetadataChange(key, None if x is missing else x, None if y is missing else y))
    return changes


class _Job:
    """One distinct view pair: its chunks as tasks, its merged statistics."""

    def __init__(self, a: Tensor, b: Tensor, spec: Spec) -> None:
        self.a, self.b, self.spec = a, b, spec
        self.total = Partial()

    def chunk_size(self, options: DiffOptions) -> int:
        """The same element count for both sides, so their chunks align."""
        widest = max(self.a.dtype.itemsize, self.b.dtype.itemsize)
        return options.chunk_elements or max(1, reader.CHUNK_BYTES // widest)

    def tasks(self, options: DiffOptions) -> Iterator[Callable[[], tuple[_Job, Partial, int]]]:
        """Pass 1: every element pair, chunk pairs aligned by the reader."""
        pair_bytes = self.a.dtype.itemsize + self.b.dtype.itemsize

        def work(start: int, x: Any, y: Any) -> tuple[_Job, Partial, int]:
            return self, compare_values(self.spec, start, x, y), len(x) * pair_bytes

        return reader.aligned_tasks((self.a, self.b), self.chunk_size(options), work)

    def needs_settled_norms(self) -> bool:
        """Norms of byte-equal stretches matter only when some finite pair differs (else rel_l2 0, cosine 1)."""
        return bool(self.total.settled) and self.total.norms.ssq_d > 0

    def norm_tasks(self, options: DiffOptions) -> Iterator[Callable[[], tuple[_Job, Partial, int]]]:
        """Pass 2: the norms of A over the byte-equal stretches pass 1 skipped."""
        size = self.chunk_size(options)
        settled = sorted(self.total.settled)
        if reader.plan(self.a, size) is not None:
            for first, stop in settled:
                for begin in range(first, stop, size):
                    chunk = reader.Chunk(self.a, begin, min(begin + size, stop))
                    yield lambda c=chunk: self._norm_task(c)
            return
        position = 0
        for values in reader.chunks(self.a, size):  # a stream: read it again, keep the settled stretches
            end = position + len(values)
            for first, stop in settled:
                lo, hi = max(first, position), min(stop, end)
                if lo < hi:
                    piece = values[lo - position : hi - position]
                    yield lambda p=piece: (self, Partial(norms=equal_norms(self.spec, p)), 0)
            position = end

    def _norm_task(self, chunk: reader.Chunk) -> tuple[_Job, Partial, int]:
        try:
            return self, Partial(norms=equal_norms(self.spec, chunk.read())), 0
        finally:
            chunk.release()

    def stats(self) -> ValueStats:
        return value_stats(self.total, self.a.numel, self.spec.integral)


def _run_jobs(jobs: list[_Job], options: DiffOptions, advance: Callable[[int], None]) -> None:
    """Both passes over every job, one task per chunk pair on the shared thread pool."""
    for job, part, nbytes in reader.parallel((t for j in jobs for t in j.tasks(options)), options.threads):
        job.total.merge(part)
        advance(nbytes)
    second = [job for job in jobs if job.needs_settled_norms()]
    for job, part, _ in reader.parallel((t for j in second for t in j.norm_tasks(options)), options.threads):
        job.total.norms.merge(part.norms)
    for job in second:  # Chunk.release covers contiguous data only
        if not job.a.is_contiguous:
            reader.release(job.a)


__all__ = [
    "DTYPE",
    "SHAPE",
    "VALUES",
    "Comparison",
    "DiffOptions",
    "DiffResult",
    "DroppedTie",
    "MetadataChange",
    "OnlyIn",
    "Operand",
    "TensorDiff",
    "ValueChange",
    "ValueStats",
    "diff_trees",
    "map_names",
]
