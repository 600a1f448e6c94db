"""`stat`: value statistics of every tensor (min, max, mean, std, L2, max |x|, zeros, NaN/±Inf), read in chunks.

Each chunk is reduced to a `Moments` (count, mean, sum of squared deviations, extremes, counts) in float64, and
chunks, tensors and subtrees are merged exactly with Chan et al.'s pairwise update, so no statistic ever averages
averages. Chunks are independent tasks on the reader's thread pool (NumPy releases the GIL in its kernels), so a
single huge tensor keeps every core busy while memory stays at a few chunks. Names that view the same elements of
one storage (tied, transposed, flattened: the same multiset of values) are read once and shown for every name.
"""

from __future__ import annotations

import fnmatch
import math
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from paramctl import numerics, reader
from paramctl.dtypes import numpy_dtype
from paramctl.errors import UsageError
from paramctl.numerics import BLOCK, CHUNK_ELEMENTS
from paramctl.ops.ties import RESHAPED, TIED, TRANSPOSED, storage_groups
from paramctl.tree import Path, Tensor, Tree, name_of

T = TypeVar("T")
HIST_BINS = 16
Number = int | float  # integer and bool tensors keep exact integer extremes


@dataclass(frozen=True)
class Moments:
    """Mergeable statistics of a set of values. min/max/mean/deviations describe the `count` finite values only.

    The sum of squared deviations is kept scaled, m2 = scale²·ssq (numerics' convention), so values near 1e±300
    give finite std and L2 where a plain m2 would overflow (or underflow to 0).
    """

    numel: int = 0  # every element seen, finite or not
    count: int = 0  # finite elements
    mean: float = 0.0
    scale: float = 0.0  # a power of two within a factor 2 of max |x| (0 when all are 0): the deviations' scale
    ssq: float = 0.0  # Σ((x − mean)/scale)²
    min: Number = math.inf
    max: Number = -math.inf
    zeros: int = 0
    nan: int = 0
    posinf: int = 0
    neginf: int = 0

    def merge(self, other: Moments) -> Moments:
        """Both sets together (Chan, Golub & LeVeque's update: exact up to rounding, never an average of means)."""
        count = self.count + other.count
        if other.count == 0 or self.count == 0:
            kept = self if other.count == 0 else other
            mean, scale, ssq = kept.mean, kept.scale, kept.ssq
        else:
            scale, ssq = numerics.merge_ssq(self.scale, self.ssq, other.scale, other.ssq)
            # The means lie within ±scale, so their difference over scale is finite even where it would overflow.
            unit_delta = other.mean / scale - self.mean / scale if scale else 0.0
            mean = self.mean + (unit_delta * (other.count / count)) * scale
            ssq += unit_delta * unit_delta * (self.count * other.count / count)
        return Moments(
            numel=self.numel + other.numel,
            count=count,
            mean=mean,
            scale=scale,
            ssq=ssq,
            min=min(self.min, other.min),
            max=max(self.max, other.max),
            zeros=self.zeros + other.zeros,
            nan=self.nan + other.nan,
            posinf=self.posinf + other.posinf,
            neginf=self.neginf + other.neginf,
        )

    @property
    def nonfinite(self) -> int:
        return self.nan + self.posinf + self.neginf

    @property
    def m2(self) -> float:
        """The sum of squared deviations from the mean (may overflow to inf: std and l2 never form it)."""
        return self.scale * self.scale * self.ssq

    @property
    def std(self) -> float | None:
        """Population standard deviation (ddof=0), as numpy.std and torch.std(correction=0)."""
        return self.scale * math.sqrt(self.ssq / self.count) if self.count else None

    @property
    def l2(self) -> float | None:
        """sqrt(Σx²) over the finite values: Σx² = m2 + n·mean², a sum of two non-negative terms (no cancellation),
        both taken over the larger of the scale and |mean| so neither is formed unscaled."""
        if not self.count:
            return None
        unit = max(self.scale, abs(self.mean))
        if unit == 0:
            return 0.0
        return unit * math.sqrt(self.ssq * (self.scale / unit) ** 2 + self.count * (self.mean / unit) ** 2)

    @property
    def absmax(self) -> Number | None:
        return max(abs(self.min), abs(self.max)) if self.count else None


Advance = Callable[[int], None]
Progress = Callable[[int], AbstractContextManager[Advance]]


@contextmanager
def _no_progress(total_bytes: int) -> Iterator[Advance]:
    yield lambda nbytes: None


def merge_all(parts: list[Moments]) -> Moments:
    total = Moments()
    for part in parts:
        total = total.merge(part)
    return total


# --------------------------------------------------------------------------- one chunk

_scratch = threading.local()


def _buffer(n: int) -> np.ndarray:
    """A float64 work buffer of n elements, reused per thread (a fresh 4 MiB array per chunk would page-fault)."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.size < n:
        buf = _scratch.buf = np.empty(n, np.float64)
    return buf[:n]


def _mask(n: int) -> np.ndarray:
    """A boolean buffer of n elements, reused per thread."""
    mask = getattr(_scratch, "mask", None)
    if mask is None or mask.size < n:
        mask = _scratch.mask = np.empty(n, np.bool_)
    return mask[:n]


def _magnitudes(values: np.ndarray) -> np.ndarray:
    """Real float values: complex as |x| computed in complex128; float16/bfloat16/float8, ints, bool upcast."""
    if values.dtype.kind == "c":
        return np.abs(values.astype(np.complex128))
    if values.dtype in (np.float32, np.float64):
        return values
    converted = _buffer(values.size)
    # Exact for every float type and for integers up to 2**53; beyond, rounded as astype(float64) rounds.
    np.copyto(converted, values, casting="unsafe")
    return converted


def chunk_moments(values: np.ndarray) -> Moments:
    """A chunk's statistics in as few passes as the data allows, accumulated in float64."""
    n = values.size
    if n == 0:
        return Moments()
    integral = values.dtype.kind in "iub"
    with np.errstate(all="ignore"):
        x = _magnitudes(values)
        owned = x is not values  # a buffer this function may overwrite
        # -0.0 counts as zero, NaN does not; `x == 0` into a reused mask beats count_nonzero on floats.
        zeros = int(np.count_nonzero(np.equal(x, 0, out=_mask(n))))
        if integral:  # always finite, and exact extremes even beyond 2**53
            low, high = int(values.min()), int(values.max())
        else:  # NaN propagates through min/max and an infinity is an extreme: finite extremes mean all finite
            low, high = x.min(), x.max()
        nan = posinf = neginf = 0
        if not (math.isfinite(low) and math.isfinite(high)):
            nan, posinf, neginf = numerics.count_nonfinite(x)
            x = x[np.isfinite(x)]
            owned = False  # a compressed copy: may be float32
            if not x.size:
                return Moments(numel=n, zeros=zeros, nan=nan, posinf=posinf, neginf=neginf)
            low, high = x.min(), x.max()
        count = x.size
        work = x if owned and x.dtype == np.float64 else _buffer(count)
        magnitude = max(abs(float(low)), abs(float(high)))
        scale = numerics.power_of_two_scale(magnitude)
        if numerics.needs_scaling(magnitude):  # rare: values near 1e±300, whose squares leave float64
            np.divide(x, scale, out=work)  # exact: a power of two
        elif work is not x:
            np.copyto(work, x)
        # Two passes over a chunk that is still in cache: the mean, then squared deviations from it (no cancellation
        # as in Σx² − n·mean²). einsum sums with several SIMD accumulators: fast, and well within 1e-12 relative.
        mean = float(np.einsum("i->", work)) / count
        np.subtract(work, mean, out=work)
        np.multiply(work, work, out=work)
        m2 = float(np.einsum("i->", work))
        if numerics.needs_scaling(magnitude):
            mean, ssq = mean * scale, m2
        else:
            ssq = m2 / (scale * scale) if scale else 0.0
    return Moments(n, count, mean, scale, ssq, _scalar(low), _scalar(high), zeros, nan, posinf, neginf)


def _scalar(value: Any) -> Number:
    return value if isinstance(value, int) else float(value)


def chunk_histogram(values: np.ndarray, low: float, high: float, all_finite: bool = False) -> np.ndarray:
    """Counts of the chunk's finite values in HIST_BINS equal bins over [low, high], the last bin closed.

    np.histogram's rules in float64, chunk by chunk (with a fixed range a value's bin depends on nothing else).
    Where it has none: a constant tensor fills the middle bin (np.histogram's choice via its ±0.5 range, at any
    magnitude), and a range too narrow for distinct float64 edges at its magnitude is cut by the plain formula.
    `all_finite` (known from the first pass) skips the filtering copy.
    """
    counts = np.zeros(HIST_BINS, np.int64)
    with np.errstate(all="ignore"):
        x = _magnitudes(values)
        if not all_finite:
            x = x[np.isfinite(x)]
        if low == high:
            counts[HIST_BINS // 2] = x.size
            return counts
        if not math.isfinite(high - low):  # the width overflows: halve everything (exact for normal floats)
            x, low, high = x / 2, low / 2, high / 2
        edges = np.linspace(low, high, HIST_BINS + 1)
        if not np.all(edges[:-1] < edges[1:]):
            where = np.floor((x - low) * (HIST_BINS / (high - low))).clip(0, HIST_BINS - 1).astype(np.intp)
            return np.bincount(where, minlength=HIST_BINS)
        for start in range(0, x.size, BLOCK):
            counts += _bin_block(x[start : start + BLOCK], low, high, edges)
    return counts


def _bin_block(x: np.ndarray, low: float, high: float, edges: np.ndarray) -> np.ndarray:
    """np.histogram's equal-bin algorithm (numpy/lib/_histograms_impl.py): the bin from the scaled offset, then
    corrected by one against the edges within an ulp of them. Into per-thread buffers: no allocation per block."""
    buffers = getattr(_scratch, "hist", None)
    if buffers is None:
        buffers = _scratch.hist = (
            np.empty(BLOCK, np.float64),
            np.empty(BLOCK, np.intp),
            np.empty(BLOCK, np.bool_),
            np.empty(BLOCK, np.bool_),
        )
    n = x.size
    scaled, where, flag, other = (b[:n] for b in buffers)
    np.subtract(x, low, out=scaled, dtype=np.float64)
    np.divide(scaled, high - low, out=scaled)
    np.multiply(scaled, HIST_BINS, out=scaled)
    np.copyto(where, scaled, casting="unsafe")  # truncation, as astype(intp)
    np.minimum(where, HIST_BINS - 1, out=where)  # the maximum itself goes to the last bin
    np.take(edges, where, out=scaled)  # the bin's lower edge (scaled is free again)
    np.less(x, scaled, out=flag)
    np.subtract(where, flag, out=where, casting="unsafe")
    np.take(edges[1:], where, out=scaled)  # its upper edge
    np.greater_equal(x, scaled, out=flag)
    np.not_equal(where, HIST_BINS - 1, out=other)
    np.logical_and(flag, other, out=flag)
    np.add(where, flag, out=where, casting="unsafe")
    return np.bincount(where, minlength=HIST_BINS)


# --------------------------------------------------------------------------- whole tensors, on the pool


def _run(
    units: list[tuple[str, Tensor]],
    work: Callable[[str, np.ndarray], T],
    fold: Callable[[T, T], T],
    empty: T,
    chunk_elements: int,
    advance: Advance,
) -> dict[str, T]:
    """`work` on every chunk of every unit on the thread pool, folded per unit in row-major order as results come
    (so nothing is kept per chunk: memory does not grow with the tensor)."""
    results = {key: empty for key, _ in units}
    pending: deque[str] = deque()  # the key of each task handed to the pool, in order

    def tasks() -> Iterator[Callable[[], tuple[T, int]]]:
        for key, tensor in units:
            per_chunk = _bind(work, key, tensor.dtype.itemsize)
            for task in reader.aligned_tasks((_in_storage_order(tensor),), chunk_elements, per_chunk):
                pending.append(key)
                yield task

    for result, nbytes in reader.parallel(tasks()):
        key = pending.popleft()
        results[key] = fold(results[key], result)
        advance(nbytes)
    return results


def _in_storage_order(tensor: Tensor) -> Tensor:
    """A permuted view (a transpose, a Fortran-order array) as the contiguous run of storage it covers exactly once.

    Every statistic here ignores order, and a contiguous run is read front to back in chunks whose pages can be
    dropped as they are done, where the view's own row-major order would touch every page from every chunk.
    """
    if tensor.is_contiguous or not tensor.numel:
        return tensor
    expected = 1  # a permutation of contiguous strides: sorted by stride, each is the product of the smaller sizes
    for stride, size in sorted((s, n) for n, s in zip(tensor.shape, tensor.strides) if n > 1):
        if stride != expected:
            return tensor
        expected *= size
    return Tensor(tensor.dtype, (tensor.numel,), (1,), tensor.storage, tensor.extent[0])


def _moments_of(key: str, values: np.ndarray) -> Moments:
    return chunk_moments(values)  # looked up at call time, so tests can count the values read


def _bind(work: Callable[[str, np.ndarray], T], key: str, itemsize: int) -> Callable[[int, np.ndarray], tuple[T, int]]:
    return lambda start, values: (work(key, values), len(values) * itemsize)


# --------------------------------------------------------------------------- the command's result


@dataclass(frozen=True)
class Histogram:
    low: float  # the finite minimum
    high: float  # the finite maximum
    counts: tuple[int, ...]  # HIST_BINS equal-width bins; the last one includes `high`


@dataclass(frozen=True)
class TensorStats:
    name: str
    path: Path
    tensor: Tensor
    moments: Moments | None  # None when the dtype has no numeric reading (quantized, packed, complex32)
    same_as: str | None = None  # the name whose values these are (a tied, transposed or flattened view: read once)
    histogram: Histogram | None = None

    @property
    def magnitude(self) -> bool:
        """Complex tensors: every statistic describes |x|."""
        return self.tensor.dtype.kind == "c"

    @property
    def skipped(self) -> str | None:
        return None if self.moments is not None else f"{self.tensor.dtype.name} values have no numeric reading"


@dataclass(frozen=True)
class GroupStats:
    """A subtree (path prefix of --depth segments): its unique tensors' values merged."""

    name: str
    path: Path
    tensors: int  # names in the subtree
    unique: int  # distinct value sets merged (tied names count once)
    moments: Moments


@dataclass
class Stats:
    file: str
    format: str
    tensors: list[TensorStats] = field(default_factory=list)
    groups: list[GroupStats] = field(default_factory=list)
    totals: Moments = Moments()
    unique: int = 0  # distinct value sets in the totals
    depth: int | None = None

    @property
    def nonfinite(self) -> list[str]:
        """Names holding a NaN or an infinity (what --check-finite refuses)."""
        return [row.name for row in self.tensors if row.moments is not None and row.moments.nonfinite]

    def as_json(self) -> dict[str, Any]:
        """The stable `stat --json` schema (documented in the README)."""
        return {
            "file": self.file,
            "format": self.format,
            "tensors": [_tensor_json(row) for row in self.tensors],
            "groups": [_group_json(group) for group in self.groups],
            "totals": {"tensors": len(self.tensors), "unique": self.unique, **_moments_json(self.totals)},
            "nonfinite": self.nonfinite,
        }


def _number(value: Number | None) -> Number | None:
    """JSON every parser reads: a statistic that is not a finite number is null."""
    if value is None or isinstance(value, int):
        return value
    return value if math.isfinite(value) else None


def _moments_json(m: Moments) -> dict[str, Any]:
    return {
        "numel": m.numel,
        "min": _number(m.min) if m.count else None,
        "max": _number(m.max) if m.count else None,
        "mean": _number(m.mean) if m.count else None,
        "std": _number(m.std),
        "l2": _number(m.l2),
        "absmax": _number(m.absmax),
        "zeros": m.zeros,
        "zeros_fraction": m.zeros / m.numel if m.numel else None,
        "nan": m.nan,
        "posinf": m.posinf,
        "neginf": m.neginf,
    }


def _tensor_json(row: TensorStats) -> dict[str, Any]:
    t = row.tensor
    if row.moments is not None:
        figures = _moments_json(row.moments)
    else:  # not read: nothing is known but the size
        figures = dict.fromkeys(_moments_json(Moments()), None) | {"numel": t.numel}
    hist = row.histogram
    return {
        "name": row.name,
        "path": list(row.path),
        "dtype": t.dtype.name,
        "shape": list(t.shape),
        **figures,
        "magnitude": row.magnitude,
        "same_as": row.same_as,
        "skipped": row.skipped,
        "hist": None if hist is None else {"low": hist.low, "high": hist.high, "counts": list(hist.counts)},
    }


def _group_json(group: GroupStats) -> dict[str, Any]:
    return {
        "name": group.name,
        "path": list(group.path),
        "tensors": group.tensors,
        "unique": group.unique,
        **_moments_json(group.moments),
    }


# --------------------------------------------------------------------------- the command


def _matches(name: str, globs: list[str]) -> bool:
    return not globs or any(fnmatch.fnmatchcase(name, glob) for glob in globs)


def _readable(tensor: Tensor) -> bool:
    try:
        numpy_dtype(tensor.dtype)
    except TypeError:
        return False
    return True


def _value_keys(tree: Tree) -> dict[str, str]:
    """name -> the name whose values it has, for views that hold exactly their anchor's multiset of values.

    Tied (the same view) and transposed views (its dimensions permuted) of the same dtype visit the anchor's
    elements with the same multiplicities. A reshaped view covers the same bytes in another shape: the same values
    only when both are contiguous runs (`w.view(-1)`); a broadcast (`expand`) repeats elements, so it is read apart.
    """
    keys: dict[str, str] = {}
    for group in storage_groups(tree):
        tensor_of = {m.name: m.tensor for m in group.members}
        for member in group.members:
            partner, tensor = member.partner, member.tensor
            if partner is None or partner not in tensor_of or tensor_of[partner].dtype != tensor.dtype:
                continue
            anchor = tensor_of[partner]
            flat = anchor.is_contiguous and tensor.is_contiguous and anchor.numel == tensor.numel
            if member.relation in (TIED, TRANSPOSED) or (member.relation == RESHAPED and flat):
                keys[member.name] = partner
    return keys


def stat_tree(
    tree: Tree,
    globs: list[str] | None = None,
    depth: int | None = None,
    hist: bool = False,
    chunk_elements: int = CHUNK_ELEMENTS,
    progress: Progress | None = None,
) -> Stats:
    """Statistics of the tensors matching `globs` (all when empty), each distinct value set read once.

    `depth` merges per path prefix of that many segments; `hist` adds a second pass for HIST_BINS-bin histograms;
    `chunk_elements` bounds each read (tests make it tiny to exercise merging); `progress(total_bytes)` is entered
    around the reading and its `advance(nbytes)` called as chunks finish.
    """
    if depth is not None and depth < 1:
        raise UsageError(f"--depth must be 1 or more, not {depth}")
    if chunk_elements < 1:
        raise UsageError(f"chunk_elements must be 1 or more, not {chunk_elements}")
    globs = globs or []
    value_keys = _value_keys(tree)
    selected = [
        (path, leaf) for path, leaf in tree.leaves if isinstance(leaf, Tensor) and _matches(name_of(path), globs)
    ]
    if globs and not selected:
        raise UsageError(f"{tree.file}: no tensor matches {' '.join(globs)}")
    units: dict[str, Tensor] = {}  # value key -> the first selected tensor holding those values
    for path, tensor in selected:
        if _readable(tensor):
            units.setdefault(value_keys.get(name_of(path), name_of(path)), tensor)
    unit_list = list(units.items())
    unit_bytes = sum(tensor.nbytes for tensor in units.values())

    histograms: dict[str, Histogram] = {}
    with (progress or _no_progress)(unit_bytes * (2 if hist else 1)) as advance:
        moments = _run(unit_list, _moments_of, Moments.merge, Moments(), chunk_elements, advance)
        if hist:  # a second pass: the bins need each tensor's extremes first
            ranges = {key: (float(m.min), float(m.max), not m.nonfinite) for key, m in moments.items() if m.count}
            advance(sum(tensor.nbytes for key, tensor in unit_list if key not in ranges))
            counted = _run(
                [(key, tensor) for key, tensor in unit_list if key in ranges],
                lambda key, values: chunk_histogram(values, *ranges[key]),
                np.add,
                np.zeros(HIST_BINS, np.int64),
                chunk_elements,
                advance,
            )
            for key, counts in counted.items():
                low, high, _ = ranges[key]
                histograms[key] = Histogram(low, high, tuple(int(c) for c in counts))

    result = Stats(tree.file, tree.format, depth=depth)
    for path, tensor in selected:
        name = name_of(path)
        key = value_keys.get(name, name)
        result.tensors.append(
            TensorStats(
                name,
                path,
                tensor,
                moments.get(key),
                same_as=key if key != name else None,
                histogram=histograms.get(key),
            )
        )
    result.totals = merge_all([moments[key] for key in units])
    result.unique = len(units)
    if depth is not None:
        result.groups = _groups(result.tensors, moments, value_keys, depth)
    return result


def _groups(
    rows: list[TensorStats], moments: dict[str, Moments], value_keys: dict[str, str], depth: int
) -> list[GroupStats]:
    """Per path prefix: every distinct value set under it merged once, in order of first appearance."""
    members: dict[Path, list[TensorStats]] = {}
    for row in rows:
        members.setdefault(row.path[:depth], []).append(row)
    groups = []
    for prefix, found in members.items():
        keys = list(dict.fromkeys(value_keys.get(r.name, r.name) for r in found if r.moments is not None))
        merged = merge_all([moments[key] for key in keys])
        groups.append(GroupStats(name_of(prefix), prefix, len(found), len(keys), merged))
    return groups
