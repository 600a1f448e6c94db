"""`diff`: what differs between two checkpoints, as h5diff reports it (names, shapes, dtypes, values), and more.

Names are mapped first (a subtree of each side, stripped prefixes, B's names renamed by regular expressions,
select/exclude globs, B's matrices transposed where a glob says so), then matched. Tensor pairs
are streamed chunk by chunk through the one chunked reader, on all cores. Chunks of the same dtype are compared as
raw bytes first, and byte-equal chunks skip the numeric work: equal bytes are equal values (NaN payloads and ±0 make
unequal bytes possibly equal, so those take the numeric path). The numeric path works in float64 (complex128 when
either side is complex), where every float dtype up to 64 bits is exact, with `numpy.isclose`'s rule
|a−b| ≤ atol + rtol·|b|. Sums of squares are kept scaled (as LAPACK's dnrm2 does), so the norms of tiny or huge
float64 values neither underflow nor overflow. A view pair is compared once however many names share it.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from paramctl import reader
from paramctl.errors import UsageError
from paramctl.ops.listing import jsonable
from paramctl.ops.ties import ANCHOR, RESHAPED, TIED, TRANSPOSED, storage_groups
from paramctl.tree import Leaf, Opaque, Tensor, Tree, Value

SHAPE, DTYPE, VALUES = "shape", "dtype", "values"  # why a tensor pair differs, in order of precedence

# Keys a loader puts in the metadata that describe the container, not the content: torch.load never returns them,
# so two saves of the same state dict under different file names (a zip's folder is the file's stem) are equal.
CONTAINER_KEYS = {
    "torch-zip": frozenset({"archive", "byteorder", "version"}),
    "torch-legacy": frozenset({"protocol_version", "sys_info"}),
    "dcp": frozenset({"files", "chunks", "records"}),  # where the chunks lie: differs with the number of ranks
}

ALIASES = frozenset({TIED, TRANSPOSED, RESHAPED})  # relations of a name that views exactly its anchor's bytes

BLOCK = 1 << 15  # elements per numeric step: its float64 temporaries stay in cache


@dataclass(frozen=True)
class DiffOptions:
    """How to compare. The defaults are exact equality, NaN equal to NaN, dtypes and metadata compared."""

    atol: float = 0.0
    rtol: float = 0.0
    nan_equal: bool = True
    ignore_dtype: bool = False
    subtree_a: str | None = None  # compare only the names under this prefix of A, with the prefix removed
    subtree_b: str | None = None
    strip_prefixes: tuple[str, ...] = ()
    select: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    rename: tuple[tuple[str, str], ...] = ()  # (regex, replacement) applied in order to B's names (re.sub)
    transpose: tuple[str, ...] = ()  # globs of compared names whose B tensor (2-D) is compared transposed
    allow_dropped_ties: bool = False
    compare_metadata: bool = True
    list_all: bool = False
    count_nonfinite_a: bool = False  # also count A's NaN/±Inf in the same pass (for `check`'s finite rule)
    chunk_elements: int | None = None  # None: the reader's chunk size for the wider dtype
    threads: int | None = None  # None: every core

    def check(self) -> None:
        for name, value in (("atol", self.atol), ("rtol", self.rtol)):
            if not (math.isfinite(value) and value >= 0):
                raise UsageError(f"--{name} must be a finite number ≥ 0, not {value!r}")
        if self.chunk_elements is not None and self.chunk_elements < 1:
            raise UsageError("chunk_elements must be at least 1")
        for regex, replacement in self.rename:
            try:
                re.compile(regex).sub(replacement, "")  # a bad group reference fails only when substituting
            except (re.error, IndexError) as error:
                raise UsageError(f"--rename {regex}={replacement}: {error}") from None

    def as_json(self) -> dict[str, Any]:
        return {
            "atol": self.atol,
            "rtol": self.rtol,
            "nan_equal": self.nan_equal,
            "ignore_dtype": self.ignore_dtype,
            "strip_prefixes": list(self.strip_prefixes),
            "select": list(self.select),
            "exclude": list(self.exclude),
            "rename": [[regex, replacement] for regex, replacement in self.rename],
            "transpose": list(self.transpose),
            "allow_dropped_ties": self.allow_dropped_ties,
            "compare_metadata": self.compare_metadata,
        }


# ----------------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ValueStats:
    """How far B's values are from A's, over every element (see the README for each definition)."""

    numel: int
    mismatched: int  # elements failing |a−b| ≤ atol + rtol·|b| (NaN rules included)
    max_abs: float  # max |a−b| over pairs without NaN
    max_rel: float  # max |a−b|/|b| over pairs without NaN; inf where b is 0 or an infinity differs
    rel_l2: float  # ‖a−b‖/‖a‖ over pairs where both are finite
    cosine: float | None  # Re⟨a,b⟩/(‖a‖‖b‖) over the same pairs; None when only one side is all zeros

    def as_json(self) -> dict[str, Any]:
        return {
            "mismatched": self.mismatched,
            "numel": self.numel,
            "max_abs": jsonable(self.max_abs),
            "max_rel": jsonable(self.max_rel),
            "rel_l2": jsonable(self.rel_l2),
            "cosine": jsonable(self.cosine),
        }


@dataclass(frozen=True)
class TensorDiff:
    """One name that is a tensor on both sides: equal (reason None) or why not."""

    name: str
    reason: str | None  # SHAPE, DTYPE, VALUES, or None when equal
    dtype_a: str
    dtype_b: str
    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]
    stats: ValueStats | None  # None when the values were not compared (shape or dtype changed)

    def as_json(self) -> dict[str, Any]:
        stats = self.stats.as_json() if self.stats else dict.fromkeys(_STAT_KEYS)
        if self.stats is None:
            stats["numel"] = math.prod(self.shape_a) if self.shape_a == self.shape_b else None
        return {
            "name": self.name,
            "reason": self.reason,
            "dtype_a": self.dtype_a,
            "dtype_b": self.dtype_b,
            "shape_a": list(self.shape_a),
            "shape_b": list(self.shape_b),
            **stats,
        }


_STAT_KEYS = ("mismatched", "numel", "max_abs", "max_rel", "rel_l2", "cosine")


@dataclass(frozen=True)
class OnlyIn:
    """A name one side has and the other has not."""

    name: str
    kind: str  # "tensor", "value" or "object"
    dtype: str | None = None
    shape: tuple[int, ...] | None = None

    def as_json(self) -> dict[str, Any]:
        shape = None if self.shape is None else list(self.shape)
        return {"name": self.name, "kind": self.kind, "dtype": self.dtype, "shape": shape}


@dataclass(frozen=True)
class ValueChange:
    """A plain value (or an object placeholder, or a tensor where the other side has a value) on both sides."""

    name: str
    a: Any
    b: Any

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "a": jsonable(self.a), "b": jsonable(self.b)}


@dataclass(frozen=True)
class MetadataChange:
    key: str
    a: Any  # None when the key is absent from A
    b: Any

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "a": jsonable(self.a), "b": jsonable(self.b)}


@dataclass(frozen=True)
class DroppedTie:
    """A name only on `side` that is tied there to `partner`, which both sides hold with equal values."""

    name: str
    partner: str
    side: str  # "a" or "b": the side that still has the name
    relation: str  # TIED, TRANSPOSED or RESHAPED

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "partner": self.partner, "side": self.side, "relation": self.relation}


@dataclass(frozen=True)
class Operand:
    file: str
    format: str
    subtree: str | None

    def as_json(self) -> dict[str, Any]:
        return {"file": self.file, "format": self.format, "subtree": self.subtree}


@dataclass
class DiffResult:
    a: Operand
    b: Operand
    options: DiffOptions
    only_in_a: list[OnlyIn] = field(default_factory=list)
    only_in_b: list[OnlyIn] = field(default_factory=list)
    changed: list[TensorDiff] = field(default_factory=list)
    unchanged: list[TensorDiff] = field(default_factory=list)  # filled only with `list_all`
    values_changed: list[ValueChange] = field(default_factory=list)
    values_unchanged: list[ValueChange] = field(default_factory=list)  # filled only with `list_all`
    metadata_changed: list[MetadataChange] = field(default_factory=list)
    dropped_ties: list[DroppedTie] = field(default_factory=list)
    equal_count: int = 0  # tensors equal on both sides
    nonfinite_a: dict[str, int] | None = None  # with count_nonfinite_a: every compared name of A -> NaN/±Inf count

    @property
    def different_count(self) -> int:
        """Every reported difference; dropped ties count unless they are allowed."""
        ties = 0 if self.options.allow_dropped_ties else len(self.dropped_ties)
        return (
            len(self.only_in_a)
            + len(self.only_in_b)
            + len(self.changed)
            + len(self.values_changed)
            + len(self.metadata_changed)
            + ties
        )

    @property
    def equal(self) -> bool:
        return self.different_count == 0

    def as_json(self) -> dict[str, Any]:
        """The stable `diff --json` schema (documented in the README)."""
        return {
            "a": self.a.as_json(),
            "b": self.b.as_json(),
            "equal": self.equal,
            "options": self.options.as_json(),
            "only_in_a": [x.as_json() for x in self.only_in_a],
            "only_in_b": [x.as_json() for x in self.only_in_b],
            "changed": [x.as_json() for x in self.changed],
            "unchanged": [x.as_json() for x in self.unchanged],
            "values_changed": [x.as_json() for x in self.values_changed],
            "values_unchanged": [x.as_json() for x in self.values_unchanged],
            "metadata_changed": [x.as_json() for x in self.metadata_changed],
            "dropped_ties": [x.as_json() for x in self.dropped_ties],
            "equal_count": self.equal_count,
            "different_count": self.different_count,
        }


# ----------------------------------------------------------------------------------------------- name mapping


@dataclass
class Side:
    """One operand after name mapping: mapped name -> (original name, leaf), in file order."""

    label: str  # "a" or "b"
    tree: Tree
    subtree: str | None
    leaves: dict[str, tuple[str, Leaf | tuple[Leaf, ...]]]
    mapped: dict[str, str]  # original tensor name -> mapped name, for tensors kept


def map_names(tree: Tree, label: str, subtree: str | None, options: DiffOptions) -> Side:
    """Apply the subtree, the prefix stripping, (on B) the renames, the globs and (on B) the transpositions to one
    tree's names. The globs of --select, --exclude and --transpose match the names as compared, after renaming."""
    leaves: dict[str, tuple[str, Leaf | tuple[Leaf, ...]]] = {}
    mapped: dict[str, str] = {}
    found_subtree = False
    for original, leaf in tree:
        name: str | None = original
        if subtree:
            name = _under(original, subtree)
            if name is None:
                continue
            found_subtree = True
        name = _strip(name, options.strip_prefixes)
        if label == "b":
            name = _rename(name, options.rename)
        if options.select and not any(fnmatch.fnmatchcase(name, g) for g in options.select):
            continue
        if any(fnmatch.fnmatchcase(name, g) for g in options.exclude):
            continue
        if label == "b" and isinstance(leaf, Tensor) and any(fnmatch.fnmatchcase(name, g) for g in options.transpose):
            leaf = _transposed(tree.file, original, leaf)
        if name in leaves:
            first, earlier = leaves[name]
            if isinstance(leaf, Tensor) or isinstance(earlier, Tensor):
                raise UsageError(
                    f"{tree.file}: {original!r} and {first!r} are both named {name!r} after name mapping;"
                    " narrow the mapping (--strip-prefix, --rename, --select, --exclude)"
                )
            # Plain leaves under one name (an object placeholder and its contents) compare as a whole.
            group = earlier if isinstance(earlier, tuple) else (earlier,)
            leaves[name] = (first, (*group, leaf))
            continue
        leaves[name] = (original, leaf)
        if isinstance(leaf, Tensor):
            mapped[original] = name
    if subtree and not found_subtree:
        raise UsageError(f"{tree.file}: no name is {subtree!r} or starts with {subtree + '.'!r}")
    return Side(label, tree, subtree, leaves, mapped)


def _under(name: str, subtree: str) -> str | None:
    """The name relative to `subtree` (a dotted prefix at a segment boundary), or None when outside it."""
    if name == subtree:
        return ""
    if name.startswith(subtree + "."):
        return name[len(subtree) + 1 :]
    return None


def _rename(name: str, rules: tuple[tuple[str, str], ...]) -> str:
    """Each (regex, replacement) in order, as `re.sub` (every match replaced; `\\1` refers to a group)."""
    for regex, replacement in rules:
        name = re.sub(regex, replacement, name)
    return name


def _transposed(file: str, original: str, tensor: Tensor) -> Tensor:
    """The same storage seen transposed (a Flax kernel (in, out) as a PyTorch weight (out, in)): no copy.

    0-D and 1-D tensors (biases a broad glob catches) are their own transpose. Beyond 2-D no single permutation is
    "the" transpose (a Flax conv kernel is (H, W, in, out), PyTorch's (out, in, H, W)), so it is refused.
    """
    if len(tensor.shape) <= 1:
        return tensor
    if len(tensor.shape) > 2:
        raise UsageError(
            f"{file}: --transpose matches {original!r}, which has shape {list(tensor.shape)}: only 2-D tensors"
            " are transposed"
        )
    return Tensor(
        tensor.dtype, tensor.shape[::-1], tensor.strides[::-1], tensor.storage, tensor.offset, tensor.declared_by
    )


def _strip(name: str, prefixes: tuple[str, ...]) -> str:
    """Remove any of the prefixes from the start, repeatedly (`module._orig_mod.x` with both → `x`)."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in prefixes:
            if prefix and name.startswith(prefix):
                name = name[len(prefix) :]
                stripped = True
    return name


# ----------------------------------------------------------------------------------------------- the driver


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
        if self.options.compare_metadata and self.a.tree.format == self.b.tree.format:
            result.metadata_changed = _metadata_changes(self.a.tree, self.b.tree)

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
            self.jobs[key] = _Job(a, b, _Spec.of(a, b, self.options))

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
        by_anchor: dict[str, list[tuple[str, str]]] = {}
        for member in group.members:
            anchor = member.partner if member.relation in ALIASES else member.name
            if member.name in side.mapped and anchor is not None:
                by_anchor.setdefault(anchor, []).append((side.mapped[member.name], member.relation))
        for members in by_anchor.values():
            for name, relation in members:
                clusters[name] = [(other, _relation(relation, to)) for other, to in members if other != name]
    return clusters


def _relation(a: str, b: str) -> str:
    """How two views of one cluster relate, from how each relates to the cluster's anchor."""
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


# ------------------------------------------------------------------------------------------ value comparison


@dataclass(frozen=True)
class _Spec:
    """How a tensor pair's values are compared."""

    wide: Any  # float64, or complex128 when either side is complex
    same_dtype: bool  # raw bytes can be compared
    native_equality: bool  # integers of one dtype, exact: compare natively (float64 cannot hold every int64)
    floating: bool  # either side can hold NaN or an infinity
    scaled: bool  # squares of these values can under- or overflow float64: keep sums scaled
    atol: float
    rtol: float
    nan_equal: bool
    count_nonfinite: bool  # count A's non-finite elements while comparing

    @staticmethod
    def of(a: Tensor, b: Tensor, options: DiffOptions) -> _Spec:
        kinds = {a.dtype.kind, b.dtype.kind}
        exact = options.atol == 0 and options.rtol == 0
        wide = np.dtype(np.complex128 if "c" in kinds else np.float64)
        return _Spec(
            wide=wide,
            same_dtype=a.dtype == b.dtype,
            native_equality=a.dtype == b.dtype and exact and a.dtype.kind in "iub",
            floating=bool(kinds & {"f", "c"}),
            scaled=any(t.dtype.name in ("float64", "complex128") for t in (a, b)),
            atol=options.atol,
            rtol=options.rtol,
            nan_equal=options.nan_equal,
            count_nonfinite=options.count_nonfinite_a and a.dtype.kind in "fc",
        )

    def bytes_settle(self, x: np.ndarray, y: np.ndarray) -> bool:
        """True when raw bytes prove the elements equal (with --nan-unequal a NaN is never equal to itself)."""
        if not self.same_dtype or not _bytes_equal(x, y):
            return False
        return self.nan_equal or not self.floating or not np.isnan(x).any()


def _bytes_equal(x: np.ndarray, y: np.ndarray) -> bool:
    """Compare raw bytes, eight at a time (an order of magnitude faster than byte by byte)."""
    u, v = x.view(np.uint8), y.view(np.uint8)
    whole = len(u) - len(u) % 8
    return bool(np.array_equal(u[:whole].view(np.uint64), v[:whole].view(np.uint64))) and bool(
        np.array_equal(u[whole:], v[whole:])
    )


@dataclass
class _Norms:
    """Scaled sums over the pairs where both values are finite: Σa² = scale_a²·ssq_a (likewise b and a−b) and
    Re Σ a·conj(b) = scale_a·scale_b·dot. Merging rescales to the larger scale, so nothing under- or overflows."""

    scale_a: float = 0.0
    ssq_a: float = 0.0
    scale_b: float = 0.0
    ssq_b: float = 0.0
    scale_d: float = 0.0
    ssq_d: float = 0.0
    dot: float = 0.0

    def merge(self, other: _Norms) -> None:
        scale_a, scale_b = max(self.scale_a, other.scale_a), max(self.scale_b, other.scale_b)
        self.dot = _rescaled_dot(self, scale_a, scale_b) + _rescaled_dot(other, scale_a, scale_b)
        self.scale_a, self.ssq_a = _merge_ssq(self.scale_a, self.ssq_a, other.scale_a, other.ssq_a)
        self.scale_b, self.ssq_b = _merge_ssq(self.scale_b, self.ssq_b, other.scale_b, other.ssq_b)
        self.scale_d, self.ssq_d = _merge_ssq(self.scale_d, self.ssq_d, other.scale_d, other.ssq_d)


def _rescaled_dot(norms: _Norms, scale_a: float, scale_b: float) -> float:
    if norms.scale_a == 0 or norms.scale_b == 0:
        return 0.0
    return norms.dot * (norms.scale_a / scale_a) * (norms.scale_b / scale_b)


def _merge_ssq(s1: float, q1: float, s2: float, q2: float) -> tuple[float, float]:
    scale = max(s1, s2)
    if scale == 0:
        return 0.0, 0.0
    return scale, (q1 * (s1 / scale) ** 2 if s1 else 0.0) + (q2 * (s2 / scale) ** 2 if s2 else 0.0)


def _real_parts(values: np.ndarray) -> np.ndarray:
    """A complex array as its interleaved real and imaginary parts (a real array is itself)."""
    return values.view(np.float64) if values.dtype.kind == "c" else values


def _dot(x: np.ndarray, y: np.ndarray) -> float:
    """Re Σ x·conj(y). einsum, not BLAS: OpenBLAS's own threads fight the chunk threads (8× slower here)."""
    return float(np.einsum("i,i->", _real_parts(x), _real_parts(y)))


def _sum_squares(values: np.ndarray, scaled: bool) -> tuple[float, float, np.ndarray]:
    """(scale, Σ|v/scale|², v/scale) of finite values; unscaled (scale 1) where squares cannot leave float64."""
    if not scaled:
        return 1.0, _dot(values, values), values
    scale = float(np.max(np.abs(values))) if len(values) else 0.0
    if scale == 0 or not math.isfinite(scale):
        return scale, 0.0 if scale == 0 else math.nan, values
    # A complex array divided by a real divides as complex (c² + d² underflows for a tiny scale): divide the parts.
    unit = (_real_parts(values) / scale).view(values.dtype)
    return scale, _dot(unit, unit), unit


def _equal_norms(spec: _Spec, x: np.ndarray) -> _Norms:
    """The norms of a byte-equal stretch (a == b there): Σa² serves Σb² and Re Σ a·conj(b) too."""
    a = x.astype(spec.wide)
    scale, ssq, _ = _sum_squares(a, spec.scaled)
    if spec.floating and not (math.isfinite(scale) and math.isfinite(ssq)):  # rare: only then mask NaN and inf
        a[~np.isfinite(a)] = 0
        scale, ssq, _ = _sum_squares(a, spec.scaled)
    return _Norms(scale, ssq, scale, ssq, 0.0, 0.0, ssq)


@dataclass
class _Partial:
    """Statistics of some elements of a pair, mergeable in any grouping."""

    numel: int = 0
    mismatched: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    norms: _Norms = field(default_factory=_Norms)
    settled: list[tuple[int, int]] = field(default_factory=list)  # element ranges skipped as byte-equal
    nonfinite_a: int = 0  # with count_nonfinite: A's NaN and ±Inf elements

    def merge(self, other: _Partial) -> None:
        self.numel += other.numel
        self.nonfinite_a += other.nonfinite_a
        self.mismatched += other.mismatched
        self.max_abs = max(self.max_abs, other.max_abs)
        self.max_rel = max(self.max_rel, other.max_rel)
        self.norms.merge(other.norms)
        self.settled += other.settled


def _numeric_block(spec: _Spec, x: np.ndarray, y: np.ndarray) -> _Partial:
    """Every statistic of one block of element pairs, in float64 (or complex128)."""
    with np.errstate(all="ignore"):  # infinities and NaN are handled explicitly
        a, b = x.astype(spec.wide), y.astype(spec.wide)
        equal = x == y if spec.native_equality else a == b
        diff = np.abs(a - b)  # float64 for complex too
        diff[np.isnan(diff)] = np.inf  # inf − inf: two infinities that differ (in some part) are infinitely apart
        diff[equal] = 0.0  # ... and equal ones are not
        abs_b = np.abs(b)
        if spec.floating:
            nan_a, nan_b = np.isnan(a), np.isnan(b)
            diff[nan_a | nan_b] = np.nan  # a NaN pair has no distance (a complex NaN can have an infinite modulus)
        # numpy.isclose: equal, or both finite and |a−b| ≤ atol + rtol·|b|, or (equal_nan) both NaN.
        close = equal
        if spec.atol or spec.rtol:
            within = diff <= spec.atol + spec.rtol * abs_b
            if spec.floating:
                within &= np.isfinite(b)  # an infinite b would make every finite a "close"
            close = close | within
        if spec.floating and spec.nan_equal:
            close = close | (nan_a & nan_b)
        rel = np.divide(diff, abs_b, out=np.zeros_like(diff), where=diff > 0)  # NaN pairs: diff > 0 is False
        if spec.floating:
            rel[np.isnan(rel)] = np.inf  # inf/inf: an infinity that differs
    part = _Partial(numel=len(x), mismatched=len(x) - int(np.count_nonzero(close)))
    part.max_abs = float(np.fmax.reduce(diff, initial=0.0))  # fmax skips NaN pairs
    part.max_rel = float(rel.max(initial=0.0))
    if spec.floating:  # the norms cover finite pairs (and so never hold a NaN, even if a float64 |a−b| overflows)
        finite = np.isfinite(a) & np.isfinite(b) & np.isfinite(diff)
        if not finite.all():
            a, b, diff = np.where(finite, a, 0), np.where(finite, b, 0), np.where(finite, diff, 0)
    norms = part.norms
    norms.scale_a, norms.ssq_a, unit_a = _sum_squares(a, spec.scaled)
    norms.scale_b, norms.ssq_b, unit_b = _sum_squares(b, spec.scaled)
    norms.scale_d, norms.ssq_d, _ = _sum_squares(diff, spec.scaled)
    norms.dot = _dot(unit_a, unit_b) if norms.scale_a and norms.scale_b else 0.0
    return part


def _compare_values(spec: _Spec, start: int, x: np.ndarray, y: np.ndarray) -> _Partial:
    """Elements [start, start+len(x)) of a pair: byte-equal blocks are settled without numeric work."""
    nonfinite = len(x) - int(np.count_nonzero(np.isfinite(x))) if spec.count_nonfinite else 0
    if spec.bytes_settle(x, y):
        return _Partial(numel=len(x), settled=[(start, start + len(x))], nonfinite_a=nonfinite)
    part = _Partial(nonfinite_a=nonfinite)
    for i in range(0, len(x), BLOCK):
        xs, ys = x[i : i + BLOCK], y[i : i + BLOCK]
        if spec.bytes_settle(xs, ys):  # the rest of a chunk with one changed element: only its norms are needed
            block = _Partial(numel=len(xs), norms=_equal_norms(spec, xs))
        else:
            block = _numeric_block(spec, xs, ys)
        part.merge(block)
    return part


class _Job:
    """One distinct view pair: its chunks as tasks, its merged statistics."""

    def __init__(self, a: Tensor, b: Tensor, spec: _Spec) -> None:
        self.a, self.b, self.spec = a, b, spec
        self.total = _Partial()
        self.pending = 0  # planned chunk tasks not merged yet

    def merged(self) -> None:
        """One planned task merged; after the last, drop the pages of strided views (Chunk.release cannot)."""
        self.pending -= 1
        if self.pending == 0:
            for tensor in (self.a, self.b):
                if not tensor.is_contiguous:
                    reader.release(tensor)

    def chunk_size(self, options: DiffOptions) -> int:
        """The same element count for both sides, so their chunks align."""
        widest = max(self.a.dtype.itemsize, self.b.dtype.itemsize)
        return options.chunk_elements or max(1, reader.CHUNK_BYTES // widest)

    def tasks(self, options: DiffOptions) -> Iterator[Callable[[], tuple[_Job, _Partial, int]]]:
        """Pass 1: every element pair. Stored data is read inside the tasks (in parallel); streams here."""
        size = self.chunk_size(options)
        plan_a, plan_b = reader.plan(self.a, size), reader.plan(self.b, size)
        if plan_a is not None and plan_b is not None:
            self.pending = len(plan_a)
            for chunk_a, chunk_b in zip(plan_a, plan_b):
                yield lambda ca=chunk_a, cb=chunk_b: self._chunk_task(ca, cb)
            return
        for start, x, y in _aligned(reader.chunks(self.a, size), reader.chunks(self.b, size)):
            nbytes = len(x) * (self.a.dtype.itemsize + self.b.dtype.itemsize)
            yield lambda s=start, x=x, y=y, n=nbytes: (self, _compare_values(self.spec, s, x, y), n)

    def _chunk_task(self, chunk_a: reader.Chunk, chunk_b: reader.Chunk) -> tuple[_Job, _Partial, int]:
        part = _compare_values(self.spec, chunk_a.start, chunk_a.read(), chunk_b.read())
        chunk_a.release()
        chunk_b.release()
        n = chunk_a.stop - chunk_a.start
        return self, part, n * (self.a.dtype.itemsize + self.b.dtype.itemsize)

    def needs_settled_norms(self) -> bool:
        """Norms of byte-equal stretches matter only when some finite pair differs (else rel_l2 0, cosine 1)."""
        return bool(self.total.settled) and self.total.norms.ssq_d > 0

    def norm_tasks(self, options: DiffOptions) -> Iterator[Callable[[], tuple[_Job, _Partial, int]]]:
        """Pass 2: the norms of A over the byte-equal stretches pass 1 skipped."""
        size = self.chunk_size(options)
        settled = sorted(self.total.settled)
        if reader.plan(self.a, size) is not None:
            self.pending = sum(len(range(first, stop, size)) for first, stop in settled)
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
                    yield lambda p=piece: (self, _Partial(norms=_equal_norms(self.spec, p)), 0)
            position = end

    def _norm_task(self, chunk: reader.Chunk) -> tuple[_Job, _Partial, int]:
        part = _Partial(norms=_equal_norms(self.spec, chunk.read()))
        chunk.release()
        return self, part, 0

    def stats(self) -> ValueStats:
        total, norms = self.total, self.total.norms
        numel = math.prod(self.a.shape)
        if norms.ssq_d == 0:
            rel_l2, cosine = 0.0, 1.0
        else:
            rel_l2 = (
                math.inf if norms.ssq_a == 0 else (norms.scale_d / norms.scale_a) * math.sqrt(norms.ssq_d / norms.ssq_a)
            )
            if norms.ssq_a == 0 or norms.ssq_b == 0:
                cosine = None
            else:
                cosine = max(-1.0, min(1.0, norms.dot / math.sqrt(norms.ssq_a) / math.sqrt(norms.ssq_b)))
        return ValueStats(numel, total.mismatched, total.max_abs, total.max_rel, rel_l2, cosine)


def _aligned(left: Iterable[np.ndarray], right: Iterable[np.ndarray]) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Pairs of equally long pieces of two element streams, with their start: chunk sizes may differ per side."""
    right_iter = iter(right)
    pending = np.empty(0)
    position = 0
    for x in left:
        while len(x):
            if not len(pending):
                pending = next(right_iter, None)
                if pending is None:
                    raise AssertionError("streams of equal numel ended apart")
            n = min(len(x), len(pending))
            yield position, x[:n], pending[:n]
            position += n
            x, pending = x[n:], pending[n:]


def _run_jobs(jobs: list[_Job], options: DiffOptions, advance: Callable[[int], None]) -> None:
    """Both passes over every job, one task per chunk pair on the shared thread pool."""
    for job, part, nbytes in reader.parallel((t for j in jobs for t in j.tasks(options)), options.threads):
        job.total.merge(part)
        job.merged()
        advance(nbytes)
    second = [job for job in jobs if job.needs_settled_norms()]
    for job, part, _ in reader.parallel((t for j in second for t in j.norm_tasks(options)), options.threads):
        job.total.norms.merge(part.norms)
        job.merged()


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
