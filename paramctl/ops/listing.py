"""`ls`: a checkpoint's tensors, values and totals, from headers only (no tensor data is read)."""

from __future__ import annotations

import fnmatch
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from paramctl.ops.ties import Member, tie_members, unique_numel
from paramctl.tree import Opaque, Path, Pieces, Tensor, Tree, Value, name_of

SORT_KEYS = ("file", "name", "numel", "size")


@dataclass(frozen=True)
class TensorRow:
    name: str
    path: Path
    tensor: Tensor
    tie: Member | None  # set when this tensor shares memory with another name
    shard: str | None = None  # the file holding its data, when the tree spans several files (a sharded checkpoint)


@dataclass(frozen=True)
class ValueRow:
    name: str
    path: Path
    leaf: Value | Opaque


@dataclass(frozen=True)
class Totals:
    tensors: int
    numel: int
    unique_numel: int
    nbytes: int


@dataclass
class Listing:
    file: str
    format: str
    metadata: dict[str, Any]
    tensors: list[TensorRow] = field(default_factory=list)
    values: list[ValueRow] = field(default_factory=list)
    totals: Totals = Totals(0, 0, 0, 0)
    # Disagreements between a sharded checkpoint's index and its shards (loaders/sharded.py): {kind, name, shard,
    # expected, message}; in the JSON they are `metadata.inconsistencies`, where the loader records them.
    inconsistencies: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The stable `ls --json` schema (documented in the README)."""
        return {
            "file": self.file,
            "format": self.format,
            "metadata": jsonable(self.metadata),
            "tensors": [_tensor_json(row) for row in self.tensors],
            "values": [_value_json(row) for row in self.values],
            "totals": {
                "tensors": self.totals.tensors,
                "numel": self.totals.numel,
                "unique_numel": self.totals.unique_numel,
                "nbytes": self.totals.nbytes,
            },
        }


def natural_key(name: str) -> list[Any]:
    """`layers.2` before `layers.10`: digit runs compare as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part]


def matches(name: str, globs: list[str]) -> bool:
    return not globs or any(fnmatch.fnmatchcase(name, glob) for glob in globs)


def list_tree(tree: Tree, filters: list[str] | None = None, sort: str = "file") -> Listing:
    """The rows `ls` shows. Totals count what the filter keeps; tied names share one storage, counted once."""
    if sort not in SORT_KEYS:
        raise ValueError(f"sort must be one of {SORT_KEYS}")
    filters = filters or []
    ties = tie_members(tree)
    listing = Listing(tree.file, tree.format, tree.metadata, inconsistencies=tree.metadata.get(INCONSISTENCIES, []))
    shard_of = shard_names(tree)
    kept = Tree(tree.file, tree.format)
    for path, leaf in tree.leaves:
        name = name_of(path)
        if not matches(name, filters):
            continue
        if isinstance(leaf, Tensor):
            kept.leaves.append((path, leaf))
            listing.tensors.append(TensorRow(name, path, leaf, ties.get(name), shard_of(leaf)))
        else:
            listing.values.append(ValueRow(name, path, leaf))
    rows = listing.tensors
    if sort == "name":
        rows.sort(key=lambda r: natural_key(r.name))
    elif sort == "numel":
        rows.sort(key=lambda r: r.tensor.numel, reverse=True)
    elif sort == "size":
        rows.sort(key=lambda r: r.tensor.nbytes, reverse=True)
    listing.totals = Totals(
        tensors=len(rows),
        numel=sum(r.tensor.numel for r in rows),
        unique_numel=unique_numel(kept),
        nbytes=sum(r.tensor.nbytes for r in rows),
    )
    return listing


INCONSISTENCIES = "inconsistencies"  # the metadata key loaders/sharded.py records problems under


def data_file(tensor: Tensor) -> str | None:
    """The name of the file a tensor's bytes are read from (None for data streamed from a zip member)."""
    data = tensor.storage.data
    if isinstance(data, Pieces):
        data = data.ranges[0] if data.ranges else None
    return getattr(getattr(data, "source", None), "name", None)


def shard_names(tree: Tree) -> Callable[[Tensor], str | None]:
    """Each tensor's shard: the file holding its data, relative to the tree's folder, when the tree spans several
    files (an index and its shards, a DCP folder); None for every tensor of a single file. Derived from the
    storages' sources, which already name their files: no loader records it separately."""
    files = {data_file(t) for _, t in tree.tensors()} - {None}
    if files <= {tree.file}:
        return lambda tensor: None
    bases = [tree.file, os.path.dirname(tree.file)]
    prefixes = [base.rstrip("/" + os.sep) + sep for base in bases if base for sep in {"/", os.sep}]

    def shard(tensor: Tensor) -> str | None:
        name = data_file(tensor)
        if name is None:
            return None
        for prefix in prefixes:
            if name.startswith(prefix):
                return name[len(prefix) :]
        return name

    return shard


def _tensor_json(row: TensorRow) -> dict[str, Any]:
    t = row.tensor
    tie = row.tie
    return {
        "name": row.name,
        "path": list(row.path),
        "dtype": t.dtype.name,
        "shape": list(t.shape),
        "strides": list(t.strides),
        "numel": t.numel,
        "nbytes": t.nbytes,
        "storage": {"id": t.storage.key, "offset": t.offset, "size": t.storage.nbytes},
        "location": t.storage.location,
        "shard": row.shard,
        "tie": None
        if tie is None
        else {"relation": tie.relation, "partner": tie.partner, "declared_by": t.declared_by},
    }


def _value_json(row: ValueRow) -> dict[str, Any]:
    leaf = row.leaf
    if isinstance(leaf, Opaque):
        return {
            "name": row.name,
            "path": list(row.path),
            "type": "object",
            "global": leaf.global_name,
            "note": leaf.note,
        }
    return {"name": row.name, "path": list(row.path), "type": leaf.type, "value": jsonable(leaf.value)}


def jsonable(value: Any) -> Any:
    """A plain value as JSON every parser reads: non-finite floats as "nan"/"inf"/"-inf", bytes and complex as text."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else ("nan" if value != value else "inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    return repr(value)


@dataclass
class Outline:
    """The listing as a tree of path segments with subtree totals, for `ls --tree`."""

    name: str
    numel: int = 0
    tensors: int = 0
    children: dict[str, Outline] = field(default_factory=dict)
    row: TensorRow | ValueRow | None = None


def outline(listing: Listing) -> Outline:
    """Nest the rows by path; every node knows its subtree's parameters and tensor count."""
    root = Outline("")
    rows: list[TensorRow | ValueRow] = [*listing.tensors, *listing.values]
    for row in rows:
        node = root
        numel = row.tensor.numel if isinstance(row, TensorRow) else 0
        for segment in row.path or ("",):
            node.numel += numel
            node.tensors += isinstance(row, TensorRow)
            node = node.children.setdefault(segment, Outline(segment))
        node.numel += numel
        node.tensors += isinstance(row, TensorRow)
        node.row = row
    return root
