"""The one tie implementation: which tensor names are one buffer in memory, and how. `ls`, `stat`, `diff` and
`ties` all use it.

Within one storage every tensor covers a set of bytes. Names whose sets are equal form a cluster: the first name
(in file order) is its anchor, and each other name is tied to it (the same offset, shape and strides), tied
transposed (the same (size, stride) pairs in another order: a decoder that uses the encoder's weight transposed) or
reshaped (the same bytes seen with another shape, as `w.view(-1)`). Clusters whose sets intersect are overlapping
views (a slice of another tensor). Clusters connected by such overlaps form one tie group. A storage that holds
several groups or lone tensors at disjoint bytes is packed (an LSTM's flat weight buffer): its names are NOT tied,
and `ties --all` lists them as a packed group.

Sets are compared exactly: dense views by their byte ranges, strided views (`w[:, ::2]`) with NumPy's exact
overlap solver, so two interleaved halves of one buffer are packed, not overlapping. Nothing here reads tensor data.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paramctl.errors import FileError, UsageError
from paramctl.tree import Storage, Tensor, Tree

# Relations of a member to its `partner`.
ANCHOR = "anchor"  # the first name of a cluster that others are tied to or overlap
TIED = "tied"  # the same bytes viewed the same way
TRANSPOSED = "transposed"  # the same bytes with permuted shape and strides
RESHAPED = "reshaped"  # the same bytes with another shape (a flattened or unsqueezed view)
OVERLAPPING = "overlapping"  # bytes that overlap the partner's only in part
PACKED = "packed"  # disjoint bytes of one storage: side by side, not tied
SHARING = frozenset({TIED, TRANSPOSED, RESHAPED, OVERLAPPING})

# Kinds of group.
TIE = "tie"
PACKED_GROUP = "packed"

BY_STORAGE, BY_VALUE = "storage", "value"

# Strided (non-dense) views that no dense view contains are counted exactly with a bitmap of their span up to this
# many elements; beyond, as the smaller of the span and the views' sizes (an upper bound).
BITMAP_LIMIT = 16 << 20
# Effort bound for NumPy's exact overlap solver; a harder case counts as overlapping.
MAX_OVERLAP_WORK = 1 << 16


@dataclass(frozen=True)
class Member:
    name: str
    tensor: Tensor
    relation: str
    partner: str | None  # the name this member is tied to, overlaps or is packed beside; None for an anchor

    @property
    def shares(self) -> bool:
        """True for a name in a tie group (an anchor or a tied, transposed, reshaped or overlapping view)."""
        return self.relation == ANCHOR or self.relation in SHARING


@dataclass(frozen=True)
class TieGroup:
    """Names that are one buffer (kind "tie"), or the disjoint parts of one packed buffer (kind "packed")."""

    kind: str
    storage: Storage | None  # None when the members are in different storages (`--by value`)
    members: tuple[Member, ...]
    unique_numel: int  # elements the members hold, each counted once

    @property
    def numel(self) -> int:
        return sum(m.tensor.numel for m in self.members)

    @property
    def saved_numel(self) -> int:
        """Parameters the sharing saves over storing every name on its own (a tied embedding saves |V|·d)."""
        return self.numel - self.unique_numel

    @property
    def declared_by(self) -> str | None:
        """ "metadata" when the file only declares these names aliases (safetensors' save_model)."""
        return next((m.tensor.declared_by for m in self.members if m.tensor.declared_by), None)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]


@dataclass(frozen=True)
class StorageGroup:
    """Every tensor name that points into one storage (two or more), in file order, one Member each."""

    storage: Storage
    members: tuple[Member, ...]
    ties: tuple[TieGroup, ...] = ()  # the tie groups inside this storage
    packed: TieGroup | None = None  # set when the storage holds several groups or lone tensors side by side

    @property
    def is_tie(self) -> bool:
        """True when some members share bytes (packed-only storages are not ties)."""
        return bool(self.ties)

    @property
    def declared_by(self) -> str | None:
        """ "metadata" when the file only declares these names aliases (safetensors' save_model)."""
        return next((m.tensor.declared_by for m in self.members if m.tensor.declared_by), None)

    @property
    def numel(self) -> int:
        return sum(m.tensor.numel for m in self.members)

    @property
    def unique_numel(self) -> int:
        return _unique_numel([m.tensor for m in self.members])


# --------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class _Layout:
    """The set of storage bytes a tensor covers, in a canonical form: equal layouts are equal sets.

    `dims` are (byte stride, count) pairs, smallest stride first, each element's own bytes included as
    (1, itemsize), dimensions of size 1 or stride 0 dropped (they add no bytes) and neighbours merged where one
    dimension exactly continues the next (so `w` (8,) and `w.view(2, 4)` both become one run of 32 bytes).
    """

    start: int
    dims: tuple[tuple[int, int], ...]

    @property
    def end(self) -> int:
        return self.start + 1 + sum((count - 1) * stride for stride, count in self.dims)

    @property
    def nbytes(self) -> int:
        return math.prod(count for _, count in self.dims)

    @property
    def dense(self) -> bool:
        return self.end - self.start == self.nbytes


def _layout(tensor: Tensor, unit: int | None = None) -> _Layout | None:
    """The tensor's set of storage bytes (or of `unit`-sized cells), or None when it is empty (it shares nothing)."""
    if tensor.numel == 0:
        return None
    itemsize = tensor.dtype.itemsize if unit is None else unit
    dims = sorted([(s * itemsize, n) for n, s in zip(tensor.shape, tensor.strides) if n > 1 and s != 0])
    merged: list[tuple[int, int]] = [(1, itemsize)] if itemsize > 1 else []
    for stride, count in dims:
        if merged and merged[-1][0] * merged[-1][1] == stride:
            merged[-1] = (merged[-1][0], merged[-1][1] * count)
        else:
            merged.append((stride, count))
    return _Layout(tensor.offset * itemsize, tuple(merged))


def _same_view(a: Tensor, b: Tensor) -> bool:
    """Same dtype, offset and shape, and the same strides where they matter (torch leaves size-1 strides free)."""
    return (a.dtype, a.offset, a.shape) == (b.dtype, b.offset, b.shape) and all(
        n == 1 or sa == sb for n, sa, sb in zip(a.shape, a.strides, b.strides)
    )


def _permuted_view(a: Tensor, b: Tensor) -> bool:
    """Same dtype and rank, and b's (size, stride) pairs a permutation of a's: `b` is a transpose of `a`."""
    if a.dtype != b.dtype or a.offset != b.offset or len(a.shape) != len(b.shape):
        return False
    pairs_a = sorted((n, s) for n, s in zip(a.shape, a.strides) if n != 1)
    pairs_b = sorted((n, s) for n, s in zip(b.shape, b.strides) if n != 1)
    return pairs_a == pairs_b


def _overlaps(a: _Layout, b: _Layout) -> bool:
    """Whether two byte sets intersect: exact (NumPy's solver) for strided sets, conservative only if too hard."""
    if a.start >= b.end or b.start >= a.end:
        return False
    if a.dense and b.dense:
        return True
    # Cheap certain cases first (`ls` should not pay NumPy's import for a slice of a saved tensor): a set's first
    # and last bytes belong to it, so either inside the other's dense range, or both first bytes equal, is overlap.
    for dense, other in ((a, b), (b, a)):
        if dense.dense and (dense.start <= other.start < dense.end or dense.start < other.end <= dense.end):
            return True
    if a.start == b.start:
        return True
    import numpy as np

    try:
        from numpy.exceptions import TooHardError
    except ImportError:  # NumPy < 1.25
        from numpy import TooHardError  # type: ignore[attr-defined,no-redef]

    try:
        return bool(np.shares_memory(_address_only(a), _address_only(b), max_work=MAX_OVERLAP_WORK))
    except TooHardError:
        return True


class _AddressOnly:
    """An array description at a made-up address: NumPy's overlap solver only does arithmetic on addresses."""

    BASE = 1 << 40

    def __init__(self, layout: _Layout) -> None:
        self.__array_interface__ = {
            "version": 3,
            "typestr": "|u1",
            "data": (self.BASE + layout.start, True),
            "shape": tuple(count for _, count in reversed(layout.dims)),
            "strides": tuple(stride for stride, _ in reversed(layout.dims)),
        }


def _address_only(layout: _Layout) -> Any:
    import numpy as np

    return np.asarray(_AddressOnly(layout))  # never read: it only describes which addresses the set holds


def _covered(layouts: Iterable[_Layout]) -> int:
    """Size of the union of the sets: exact for dense sets, and for strided ones within the bitmap limit."""
    distinct = sorted(set(layouts), key=lambda lay: lay.start)
    if not distinct:
        return 0
    dense = _merged([(lay.start, lay.end) for lay in distinct if lay.dense])
    covered = sum(last - first for first, last in dense)
    strided = [lay for lay in distinct if not lay.dense]
    # Strided sets inside a dense range add nothing (a slice of a saved base tensor).
    if all(any(first <= lay.start and lay.end <= last for first, last in dense) for lay in strided):
        return covered
    low, high = distinct[0].start, max(lay.end for lay in distinct)
    if high - low > BITMAP_LIMIT:
        return min(high - low, covered + sum(lay.nbytes for lay in strided))
    import numpy as np

    marks = np.zeros(high - low, dtype=bool)
    for lay in distinct:
        np.lib.stride_tricks.as_strided(
            marks[lay.start - low :],
            shape=tuple(count for _, count in reversed(lay.dims)),
            strides=tuple(stride for stride, _ in reversed(lay.dims)),
        )[...] = True
    return int(np.count_nonzero(marks))


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Half-open ranges with the overlapping ones joined, in order."""
    out: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if out and first <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((first, last))
    return out


# --------------------------------------------------------------------------- storage groups


def storage_groups(tree: Tree) -> list[StorageGroup]:
    """Groups of names that share a storage, in file order of their first member."""
    by_storage: dict[int, list[tuple[str, Tensor]]] = {}
    for name, tensor in tree.tensors():
        by_storage.setdefault(id(tensor.storage), []).append((name, tensor))
    return [_classify(items) for items in by_storage.values() if len(items) > 1]


def tie_members(tree: Tree) -> dict[str, Member]:
    """Every name that is part of a tie, with its relation: what `ls` marks."""
    return {m.name: m for group in storage_groups(tree) for m in group.members if m.shares}


def _classify(items: list[tuple[str, Tensor]]) -> StorageGroup:
    """Clusters (equal byte sets), their overlaps, tie groups (connected clusters) and packing, for one storage."""
    storage = items[0][1].storage
    by_set: dict[object, list[int]] = {}
    for index, (_, tensor) in enumerate(items):
        key = _layout(tensor) or ("empty", index)  # each empty tensor is alone: it covers no bytes
        by_set.setdefault(key, []).append(index)
    clusters = list(by_set.values())  # item indices, in file order of their anchors
    layouts = [key if isinstance(key, _Layout) else None for key in by_set]
    neighbours = _overlap_pairs(layouts)
    component = _components(len(clusters), neighbours)
    parts: dict[int, list[int]] = {}  # component -> its clusters
    for index, root in enumerate(component):
        parts.setdefault(root, []).append(index)
    lone = {root for root, found in parts.items() if len(found) == 1 and len(clusters[found[0]]) == 1}
    representatives = [clusters[found[0]][0] for found in parts.values()]  # one item per disjoint part

    members: list[Member | None] = [None] * len(items)
    for index, cluster in enumerate(clusters):
        anchor_name, anchor = items[cluster[0]]
        if component[index] in lone:
            members[cluster[0]] = Member(anchor_name, anchor, PACKED, _beside(cluster[0], representatives, items))
            continue
        earlier = min((other for other in neighbours.get(index, ()) if other < index), default=None)
        if earlier is None:
            members[cluster[0]] = Member(anchor_name, anchor, ANCHOR, None)
        else:
            members[cluster[0]] = Member(anchor_name, anchor, OVERLAPPING, items[clusters[earlier][0]][0])
        for item in cluster[1:]:
            name, tensor = items[item]
            relation = (
                TIED if _same_view(anchor, tensor) else TRANSPOSED if _permuted_view(anchor, tensor) else RESHAPED
            )
            members[item] = Member(name, tensor, relation, anchor_name)
    ordered = tuple(m for m in members if m is not None)

    ties = []
    for root, found in parts.items():
        if root not in lone:
            chosen = sorted(item for index in found for item in clusters[index])
            tie = tuple(m for item in chosen if (m := members[item]) is not None)
            ties.append(TieGroup(TIE, storage, tie, _unique_numel(items[item][1] for item in chosen)))
    packed = None
    if len(parts) > 1:
        side_by_side = tuple(
            Member(*items[item], PACKED, _beside(item, representatives, items)) for item in representatives
        )
        packed = TieGroup(PACKED_GROUP, storage, side_by_side, sum(m.tensor.numel for m in side_by_side))
    return StorageGroup(storage, ordered, tuple(ties), packed)


def _beside(item: int, representatives: list[int], items: list[tuple[str, Tensor]]) -> str:
    """The partner of a packed part: the first other part of the buffer."""
    return items[next(other for other in representatives if other != item)][0]


def _overlap_pairs(layouts: list[_Layout | None]) -> dict[int, set[int]]:
    """Which sets intersect, by a sweep over start offsets (a packed buffer of N views costs N log N)."""
    order = sorted((lay.start, index) for index, lay in enumerate(layouts) if lay is not None)
    neighbours: dict[int, set[int]] = {}
    active: list[int] = []
    for _, index in order:
        layout = layouts[index]
        assert layout is not None
        active = [other for other in active if layouts[other].end > layout.start]  # type: ignore[union-attr]
        for other in active:
            if _overlaps(layout, layouts[other]):
                neighbours.setdefault(index, set()).add(other)
                neighbours.setdefault(other, set()).add(index)
        active.append(index)
    return neighbours


def _components(count: int, neighbours: dict[int, set[int]]) -> list[int]:
    """Connected components: each index mapped to the smallest index of its component."""
    root = list(range(count))

    def find(i: int) -> int:
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    for a, others in neighbours.items():
        for b in others:
            ra, rb = find(a), find(b)
            if ra != rb:
                root[max(ra, rb)] = min(ra, rb)
    return [find(i) for i in range(count)]


def _unique_numel(tensors: Iterable[Tensor]) -> int:
    """Elements of one storage that the tensors cover, each counted once.

    Counted in elements when the tensors share an element size (torch.save refuses to save one storage viewed
    as two dtypes); a crafted file that mixes them is counted in bytes, in the first tensor's element size.
    """
    tensors = [t for t in tensors if t.numel]
    if not tensors:
        return 0
    if len({t.dtype.itemsize for t in tensors}) == 1:
        return _covered(lay for lay in (_layout(t, unit=1) for t in tensors) if lay is not None)
    return _covered(lay for lay in map(_layout, tensors) if lay is not None) // tensors[0].dtype.itemsize


def unique_numel(tree: Tree) -> int:
    """Parameters counted once however many names share them (as `sum(p.numel() for p in model.parameters())`)."""
    by_storage: dict[int, list[Tensor]] = {}
    for _, tensor in tree.tensors():
        by_storage.setdefault(id(tensor.storage), []).append(tensor)
    return sum(_unique_numel(group) for group in by_storage.values())


# --------------------------------------------------------------------------- the `ties` result


@dataclass
class TiesResult:
    """What `paramctl ties` reports: the groups, and the parameter totals."""

    file: str
    format: str
    by: str  # "storage" or "value"
    groups: list[TieGroup]
    numel: int  # every tensor name's elements, as listed
    unique_numel: int
    skipped: list[str] = field(default_factory=list)  # --by value: names whose dtype NumPy cannot compare

    @property
    def saved_numel(self) -> int:
        return self.numel - self.unique_numel

    @property
    def ties(self) -> list[TieGroup]:
        return [g for g in self.groups if g.kind == TIE]

    def tie_of(self, name: str) -> TieGroup | None:
        return next((g for g in self.ties if name in g.names), None)

    def as_json(self) -> dict[str, Any]:
        """The stable `ties --json` schema (documented in the README)."""
        return {
            "file": self.file,
            "format": self.format,
            "by": self.by,
            "groups": [_group_json(g) for g in self.groups],
            "totals": {
                "numel": self.numel,
                "unique_numel": self.unique_numel,
                "saved_numel": self.saved_numel,
                "ties": len(self.ties),
            },
            "skipped": list(self.skipped),
        }


def _group_json(group: TieGroup) -> dict[str, Any]:
    return {
        "kind": group.kind,
        "storage": group.storage.key if group.storage is not None else None,
        "declared_by": group.declared_by,
        "numel": group.numel,
        "unique_numel": group.unique_numel,
        "saved_numel": group.saved_numel,
        "members": [
            {
                "name": m.name,
                "relation": m.relation,
                "partner": m.partner,
                "dtype": m.tensor.dtype.name,
                "shape": list(m.tensor.shape),
                "strides": list(m.tensor.strides),
                "offset": m.tensor.offset,
                "storage": m.tensor.storage.key,
                "numel": m.tensor.numel,
            }
            for m in group.members
        ],
    }


def find_ties(tree: Tree, include_packed: bool = False) -> TiesResult:
    """Tie groups by storage identity: headers only, no data read. Ties by contents are
    `value_ties.find_value_ties`, kept apart so that listing never imports NumPy."""
    groups = []
    for storage_group in storage_groups(tree):
        groups.extend(storage_group.ties)
        if include_packed and storage_group.packed is not None:
            groups.append(storage_group.packed)
    order = tensor_order(tree)
    groups.sort(key=lambda g: (order[g.members[0].name], g.kind == PACKED_GROUP))
    return TiesResult(tree.file, tree.format, BY_STORAGE, groups, tree_numel(tree), unique_numel(tree))


def tensor_order(tree: Tree) -> dict[str, int]:
    """Each tensor name's position in the tree: groups are listed in the order of their first member."""
    return {name: index for index, (name, _) in enumerate(tree.tensors())}


def tree_numel(tree: Tree) -> int:
    return sum(t.numel for _, t in tree.tensors())


# --------------------------------------------------------------------------- CI assertions


def parse_expect(text: str) -> list[str]:
    """`A=B` or `A=B=C` as its names; a malformed expectation is a usage error."""
    names = text.split("=")
    if len(names) < 2 or any(not name for name in names):
        raise UsageError(f"--expect {text!r}: write two or more tensor names joined by '=' (A=B or A=B=C)")
    return names


def check_expectations(result: TiesResult, expects: list[list[str]], known: Iterable[str]) -> list[str]:
    """One problem per expectation that does not hold: a missing name, or names not in one tie group."""
    known = set(known)
    problems = []
    for names in expects:
        label = "=".join(names)
        missing = [name for name in names if name not in known]
        if missing:
            problems.append(f"expected {label}: no tensor named {', '.join(missing)}")
            continue
        groups = [result.tie_of(name) for name in names]
        if groups[0] is not None and all(g is groups[0] for g in groups):
            continue
        where = "; ".join(_whereabouts(name, group) for name, group in zip(names, groups))
        problems.append(f"expected {label} to be one tie group, but {where}")
    return problems


def _whereabouts(name: str, group: TieGroup | None) -> str:
    if group is None:
        return f"{name} is not tied"
    return f"{name} is tied to {', '.join(n for n in group.names if n != name)}"


def check_no_ties(result: TiesResult) -> list[str]:
    """`--expect-none`: a problem when any tie exists, naming them."""
    ties = result.ties
    if not ties:
        return []
    shown = "; ".join("=".join(g.names) for g in ties)
    return [f"expected no ties, found {len(ties)}: {shown}"]


def load_baseline(path: str | Path) -> dict[str, Any]:
    """A previous `ties --json` output; unreadable or not that schema is a bad input (exit 2)."""
    try:
        with open(path, encoding="utf-8") as handle:
            baseline = json.load(handle)
    except FileNotFoundError:
        raise FileError(path, "no such file") from None
    except (OSError, ValueError) as error:
        raise FileError(path, f"not a `paramctl ties --json` output ({error})") from None
    if not _is_ties_json(baseline):
        raise FileError(path, "not a `paramctl ties --json` output (needs `by` and `groups` with member names)")
    return baseline  # type: ignore[no-any-return]


def _is_ties_json(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and value.get("by") in (BY_STORAGE, BY_VALUE)
        and isinstance(value.get("groups"), list)
        and all(
            isinstance(g, dict)
            and isinstance(g.get("members"), list)
            and all(isinstance(m, dict) and isinstance(m.get("name"), str) for m in g["members"])
            for g in value["groups"]
        )
    )


def compare_baseline(result: TiesResult, baseline: dict[str, Any]) -> list[str]:
    """Every tie group gained or lost since the baseline (packed groups are not ties and are ignored)."""
    if baseline["by"] != result.by:
        raise UsageError(f"the baseline was made with --by {baseline['by']}; run with the same --by to compare")
    before = [[m["name"] for m in g["members"]] for g in baseline["groups"] if g.get("kind", TIE) == TIE]
    after = [g.names for g in result.ties]
    before_sets, after_sets = {frozenset(g) for g in before}, {frozenset(g) for g in after}
    lost = [f"tie lost: {'='.join(g)}" for g in before if frozenset(g) not in after_sets]
    gained = [f"tie gained: {'='.join(g)}" for g in after if frozenset(g) not in before_sets]
    return lost + gained
