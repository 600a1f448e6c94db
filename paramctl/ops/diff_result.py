"""`diff`'s options and results: the dataclasses and the stable `diff --json` schema (documented in the README).

Kept apart from the matching and the numeric kernel so the schema can be read in one place and other commands
(`check`) can hold results without importing how they are computed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from paramctl.errors import UsageError
from paramctl.ops.listing import jsonable

SHAPE, DTYPE, VALUES = "shape", "dtype", "values"  # why a tensor pair differs, in order of precedence


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


@dataclass(frozen=True)
class ValueStats:
    """How far B's values are from A's, over every element (see the README for each definition)."""

    numel: int
    mismatched: int  # elements failing |a−b| ≤ atol + rtol·|b| (NaN rules included)
    max_abs: float | int  # max |a−b| over pairs without NaN; an exact int for integer pairs
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
    metadata_not_compared: str | None = None  # why metadata was not compared although asked to (else None)

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
            "metadata_not_compared": self.metadata_not_compared,
            "equal_count": self.equal_count,
            "different_count": self.different_count,
        }
