"""The one tie implementation: which tensors share memory, and how. `ls`, `stat`, `diff` and `ties` all use it.

Within one storage, tensors whose views cover exactly the same elements form a cluster: they are tied (same
offset, shape and strides) or tied transposed (the same (size, stride) pairs in another order, as a decoder that
uses the encoder's weight transposed). Clusters whose element ranges overlap in part are overlapping views (a slice
of another tensor); clusters at disjoint ranges of one buffer are packed, not tied (an LSTM's flat weight buffer).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from paramctl.tree import Storage, Tensor, Tree

# Relations of a member to the member it is compared with (its `partner`).
ANCHOR = "anchor"  # the first member of its cluster: the one others are tied to
TIED = "tied"
TRANSPOSED = "transposed"
OVERLAPPING = "overlapping"
PACKED = "packed"
SHARING = frozenset({TIED, TRANSPOSED, OVERLAPPING})


@dataclass(frozen=True)
class Member:
    name: str
    tensor: Tensor
    relation: str
    partner: str | None  # the name this member is tied to, overlaps or is packed beside; None for a lone anchor


@dataclass(frozen=True)
class StorageGroup:
    """Every tensor name that points into one storage (two or more), in file order."""

    storage: Storage
    members: tuple[Member, ...]

    @property
    def is_tie(self) -> bool:
        """True when some members share elements (packed-only groups are not ties)."""
        return any(m.relation in SHARING for m in self.members)

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


def _layout_key(tensor: Tensor) -> tuple[int, tuple[tuple[int, int], ...]]:
    """Two tensors with equal keys cover exactly the same elements of their storage."""
    dims = tuple(sorted((n, s) for n, s in zip(tensor.shape, tensor.strides) if n != 1))
    return tensor.offset, dims


def storage_groups(tree: Tree) -> list[StorageGroup]:
    """Groups of names that share a storage, in file order of their first member."""
    by_storage: dict[int, list[tuple[str, Tensor]]] = {}
    for name, tensor in tree.tensors():
        by_storage.setdefault(id(tensor.storage), []).append((name, tensor))
    return [_classify(items) for items in by_storage.values() if len(items) > 1]


def _classify(items: list[tuple[str, Tensor]]) -> StorageGroup:
    clusters: dict[object, list[tuple[str, Tensor]]] = {}
    for name, tensor in items:
        clusters.setdefault(_layout_key(tensor), []).append((name, tensor))
    anchors = [cluster[0] for cluster in clusters.values()]
    members: dict[str, Member] = {}
    for index, cluster in enumerate(clusters.values()):
        anchor_name, anchor = cluster[0]
        overlap = next((other for other in anchors[:index] if _overlaps(anchor, other[1])), None)
        if overlap is not None:
            members[anchor_name] = Member(anchor_name, anchor, OVERLAPPING, overlap[0])
        elif len(cluster) > 1 or index == 0:
            members[anchor_name] = Member(anchor_name, anchor, ANCHOR, None)
        else:
            members[anchor_name] = Member(anchor_name, anchor, PACKED, anchors[0][0])
        for name, tensor in cluster[1:]:
            same = (tensor.offset, tensor.shape, tensor.strides) == (anchor.offset, anchor.shape, anchor.strides)
            members[name] = Member(name, tensor, TIED if same else TRANSPOSED, anchor_name)
    storage = items[0][1].storage
    return StorageGroup(storage, tuple(members[name] for name, _ in items))


def _overlaps(a: Tensor, b: Tensor) -> bool:
    (a0, a1), (b0, b1) = a.extent, b.extent
    return a0 < b1 and b0 < a1


def _unique_numel(tensors: Iterable[Tensor]) -> int:
    """Elements of one storage that the tensors cover, each counted once.

    Exact for dense views (contiguous or permuted); a strided view with gaps counts its own elements, capped by
    the span it lies in.
    """
    distinct = {_layout_key(t): t for t in tensors if t.numel}.values()
    spans = sorted(t.extent for t in distinct)
    covered, end = 0, -1
    for first, last in spans:
        covered += max(0, last - max(first, end))
        end = max(end, last)
    if all(t.is_dense for t in distinct):
        return covered
    return min(covered, sum(t.numel for t in distinct))


def unique_numel(tree: Tree) -> int:
    """Parameters counted once however many names share them (as `sum(p.numel() for p in model.parameters())`)."""
    by_storage: dict[int, list[Tensor]] = {}
    for _, tensor in tree.tensors():
        by_storage.setdefault(id(tensor.storage), []).append(tensor)
    return sum(_unique_numel(group) for group in by_storage.values())
