"""`diff`'s numeric kernel: how far one array's values are from another's, as a pure function of the two arrays.

Chunks of the same dtype are compared as raw bytes first, and byte-equal blocks skip the numeric work: equal bytes
are equal values (NaN payloads and ±0 make unequal bytes possibly equal, so those take the numeric path). Floats
are compared in float64 (complex128 when either side is complex), where every float dtype up to 64 bits is exact,
with `numpy.isclose`'s rule |a−b| ≤ atol + rtol·|b|. Integers are compared in integer arithmetic: |a−b| is exact
(even where it exceeds 64 bits) and a tolerance is applied to the exact values. Results are `Partial`s, mergeable
in any grouping, so chunks run on any thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from paramctl import numerics
from paramctl.numerics import BLOCK
from paramctl.ops.diff_result import DiffOptions, ValueStats
from paramctl.tree import Tensor

_TWO64 = 1 << 64
_BAND = 2.0**-48  # relative error bound, with margin, of a float64 |a−b| and atol + rtol·|b| of 64-bit integers


@dataclass(frozen=True)
class Spec:
    """How a tensor pair's values are compared."""

    wide: Any  # float64, or complex128 when either side is complex
    same_dtype: bool  # raw bytes can be compared
    integral: bool  # both sides integers or bool: compared in integer arithmetic, exactly
    floating: bool  # either side can hold NaN or an infinity
    scaled: bool  # squares of these values can under- or overflow float64: keep sums scaled
    atol: float
    rtol: float
    nan_equal: bool
    count_nonfinite: bool  # count A's non-finite elements while comparing
    wide_int_side: int | None = None  # 0 or 1: a 64-bit integer side against a real float one (float64 rounds it)

    @staticmethod
    def of(a: Tensor, b: Tensor, options: DiffOptions) -> Spec:
        kinds = {a.dtype.kind, b.dtype.kind}
        wide = np.dtype(np.complex128 if "c" in kinds else np.float64)
        return Spec(
            wide=wide,
            same_dtype=a.dtype == b.dtype,
            integral=kinds <= {"i", "u", "b"},
            floating=bool(kinds & {"f", "c"}),
            scaled=any(t.dtype.name in ("float64", "complex128") for t in (a, b)),
            atol=options.atol,
            rtol=options.rtol,
            nan_equal=options.nan_equal,
            count_nonfinite=options.count_nonfinite_a and a.dtype.kind in "fc",
            wide_int_side=_wide_int_side(a, b),
        )

    def bytes_settle(self, x: np.ndarray, y: np.ndarray) -> bool:
        """True when raw bytes prove the elements equal (with --nan-unequal a NaN is never equal to itself)."""
        if not self.same_dtype or not numerics.bytes_equal(x, y):
            return False
        return self.nan_equal or not self.floating or not np.isnan(x).any()


def _wide_int_side(a: Tensor, b: Tensor) -> int | None:
    """Which side is int64/uint64 when the other is a real float: only those integers float64 cannot hold."""
    for side, (this, other) in enumerate(((a, b), (b, a))):
        if this.dtype.kind in "iu" and this.dtype.itemsize == 8 and other.dtype.kind == "f":
            return side
    return None


def exact_against_float(ints: np.ndarray, floats: np.ndarray, equal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(equal, |a−b|) corrected where float64 calls a 64-bit integer equal to a float it is not equal to.

    Beyond 2**53 float64 rounds the integer (2**53 + 1 becomes 2**53): those pairs are checked in integer
    arithmetic against the float's exact integer value. Returns the corrected mask and, for the pairs it turned
    unequal, their exact distance as float64 (0 elsewhere).
    """
    distance = np.zeros(len(ints), np.float64)
    with np.errstate(invalid="ignore"):
        suspects = np.flatnonzero(equal & (np.abs(floats.astype(np.float64)) >= 2.0**53))
    if not len(suspects):
        return equal, distance
    value, exact = floats[suspects].astype(np.float64), ints[suspects]
    limit = 2.0**64 if ints.dtype == np.uint64 else 2.0**63
    representable = value < limit  # the float is an integer here (≥ 2**53); 2**63 or 2**64 is past the dtype
    back = np.zeros(len(suspects), ints.dtype)
    back[representable] = value[representable].astype(ints.dtype)
    same = representable & (back == exact)
    equal = equal.copy()
    equal[suspects] = same
    # Both are within float64's rounding (≤ 2**10 at this size) of each other: the integer subtraction is exact.
    with np.errstate(over="ignore"):  # `past` wraps where it is not used
        below = np.where(exact >= back, exact - back, back - exact)
        past = (np.iinfo(ints.dtype).max - exact) + 1  # the float is 2**63 (or 2**64): limit − exact, unformed
    distance[suspects] = np.where(representable, below, past).astype(np.float64)
    return equal, distance


@dataclass
class Norms:
    """Scaled sums over the pairs where both values are finite: Σa² = scale_a²·ssq_a (likewise b and a−b) and
    Re Σ a·conj(b) = scale_a·scale_b·dot. Merging rescales to the larger scale, so nothing under- or overflows."""

    scale_a: float = 0.0
    ssq_a: float = 0.0
    scale_b: float = 0.0
    ssq_b: float = 0.0
    scale_d: float = 0.0
    ssq_d: float = 0.0
    dot: float = 0.0

    def merge(self, other: Norms) -> None:
        scale_a, scale_b = max(self.scale_a, other.scale_a), max(self.scale_b, other.scale_b)
        self.dot = _rescaled_dot(self, scale_a, scale_b) + _rescaled_dot(other, scale_a, scale_b)
        self.scale_a, self.ssq_a = numerics.merge_ssq(self.scale_a, self.ssq_a, other.scale_a, other.ssq_a)
        self.scale_b, self.ssq_b = numerics.merge_ssq(self.scale_b, self.ssq_b, other.scale_b, other.ssq_b)
        self.scale_d, self.ssq_d = numerics.merge_ssq(self.scale_d, self.ssq_d, other.scale_d, other.ssq_d)


def _rescaled_dot(norms: Norms, scale_a: float, scale_b: float) -> float:
    if norms.scale_a == 0 or norms.scale_b == 0:
        return 0.0
    return norms.dot * (norms.scale_a / scale_a) * (norms.scale_b / scale_b)


def equal_norms(spec: Spec, x: np.ndarray) -> Norms:
    """The norms of a byte-equal stretch (a == b there): Σa² serves Σb² and Re Σ a·conj(b) too."""
    a = x.astype(spec.wide)
    scale, ssq, _ = numerics.sum_squares(a, spec.scaled)
    if spec.floating and not (math.isfinite(scale) and math.isfinite(ssq)):  # rare: only then mask NaN and inf
        a[~np.isfinite(a)] = 0
        scale, ssq, _ = numerics.sum_squares(a, spec.scaled)
    return Norms(scale, ssq, scale, ssq, 0.0, 0.0, ssq)


@dataclass
class Partial:
    """Statistics of some elements of a pair, mergeable in any grouping."""

    numel: int = 0
    mismatched: int = 0
    max_abs: float | int = 0.0  # an exact int for integer pairs (|a−b| of 64-bit integers can exceed 2**64)
    max_rel: float = 0.0
    norms: Norms = field(default_factory=Norms)
    settled: list[tuple[int, int]] = field(default_factory=list)  # element ranges skipped as byte-equal
    nonfinite_a: int = 0  # with count_nonfinite: A's NaN and ±Inf elements

    def merge(self, other: Partial) -> None:
        self.numel += other.numel
        self.nonfinite_a += other.nonfinite_a
        self.mismatched += other.mismatched
        self.max_abs = max(self.max_abs, other.max_abs)
        self.max_rel = max(self.max_rel, other.max_rel)
        self.norms.merge(other.norms)
        self.settled += other.settled


def _float_block(spec: Spec, x: np.ndarray, y: np.ndarray) -> Partial:
    """Every statistic of one block of element pairs, in float64 (or complex128)."""
    with np.errstate(all="ignore"):  # infinities and NaN are handled explicitly
        a, b = x.astype(spec.wide), y.astype(spec.wide)
        equal = a == b
        if spec.wide_int_side is not None:
            ints, floats = (x, y) if spec.wide_int_side == 0 else (y, x)
            equal, distance = exact_against_float(ints, floats, equal)
        diff = np.abs(a - b)  # float64 for complex too
        diff[np.isnan(diff)] = np.inf  # inf − inf: two infinities that differ (in some part) are infinitely apart
        diff[equal] = 0.0  # ... and equal ones are not
        if spec.wide_int_side is not None:
            np.maximum(diff, distance, out=diff)  # rounded to one float64, unequal pairs show their exact distance
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
    part = Partial(numel=len(x), mismatched=len(x) - int(np.count_nonzero(close)))
    part.max_abs = float(np.fmax.reduce(diff, initial=0.0))  # fmax skips NaN pairs
    part.max_rel = float(rel.max(initial=0.0))
    if spec.floating:  # the norms cover finite pairs (and so never hold a NaN, even if a float64 |a−b| overflows)
        finite = np.isfinite(a) & np.isfinite(b) & np.isfinite(diff)
        if not finite.all():
            a, b, diff = np.where(finite, a, 0), np.where(finite, b, 0), np.where(finite, diff, 0)
    _fill_norms(part.norms, spec, a, b, diff)
    return part


def _fill_norms(norms: Norms, spec: Spec, a: np.ndarray, b: np.ndarray, diff: np.ndarray) -> None:
    norms.scale_a, norms.ssq_a, unit_a = numerics.sum_squares(a, spec.scaled)
    norms.scale_b, norms.ssq_b, unit_b = numerics.sum_squares(b, spec.scaled)
    norms.scale_d, norms.ssq_d, _ = numerics.sum_squares(diff, spec.scaled)
    norms.dot = numerics.dot(unit_a, unit_b) if norms.scale_a and norms.scale_b else 0.0


def _wide_int(values: np.ndarray) -> np.ndarray:
    """Integers as int64, or uint64 for uint64 (the one integer dtype int64 cannot hold)."""
    if values.dtype == np.uint64:
        return values
    return values.astype(np.int64)


def _magnitude(values: np.ndarray) -> np.ndarray:
    """|v| of int64 or uint64 values as uint64, exactly (|−2**63| is 2**63)."""
    if values.dtype == np.uint64:
        return values
    unsigned = values.view(np.uint64)
    return np.where(values < 0, np.negative(unsigned), unsigned)


def exact_differences(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(|x−y| mod 2**64 as uint64, where |x−y| ≥ 2**64 (None when it cannot be), |y| as uint64) of integers.

    Computed in wrapping 64-bit arithmetic, which is exact here: for one dtype the true difference lies in
    [0, 2**64), and only uint64 against a negative int64 can carry past 2**64.
    """
    with np.errstate(over="ignore"):
        x, y = _wide_int(x), _wide_int(y)
        abs_y = _magnitude(y)
        if x.dtype == y.dtype:
            low = np.where(x >= y, x - y, y - x).view(np.uint64)
            return low, None, abs_y
        unsigned, signed = (x, y) if x.dtype == np.uint64 else (y, x)
        negative = signed < 0
        as_unsigned = signed.view(np.uint64)
        magnitude = np.where(negative, np.negative(as_unsigned), as_unsigned)
        apart = np.where(unsigned >= as_unsigned, unsigned - as_unsigned, as_unsigned - unsigned)
        low = np.where(negative, unsigned + magnitude, apart)
        carry = negative & (low < unsigned)
        return low, (carry if carry.any() else None), abs_y


def _integer_block(spec: Spec, x: np.ndarray, y: np.ndarray) -> Partial:
    """Every statistic of one block of integer pairs: |a−b| exact, the tolerance applied to exact values."""
    low, carry, abs_b = exact_differences(x, y)
    equal = low == 0 if carry is None else (low == 0) & ~carry
    diff = low.astype(np.float64)
    if carry is not None:
        diff[carry] += float(_TWO64)
    close = equal
    if spec.atol or spec.rtol:
        close = equal | _integers_within(spec, low, carry, diff, abs_b)
    part = Partial(numel=len(x), mismatched=len(x) - int(np.count_nonzero(close)))
    if carry is not None:
        part.max_abs = _TWO64 + int(low[carry].max())
    else:
        part.max_abs = int(low.max(initial=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        abs_b_float = abs_b.astype(np.float64)
        rel = np.divide(diff, abs_b_float, out=np.zeros_like(diff), where=diff > 0)  # b == 0: inf
    part.max_rel = float(rel.max(initial=0.0))
    _fill_norms(part.norms, spec, x.astype(np.float64), y.astype(np.float64), diff)
    return part


def _integers_within(
    spec: Spec, low: np.ndarray, carry: np.ndarray | None, diff: np.ndarray, abs_b: np.ndarray
) -> np.ndarray:
    """|a−b| ≤ atol + rtol·|b| evaluated exactly (floats are exact rationals) for exact integer |a−b| and |b|."""
    if not spec.rtol:  # an integer is ≤ atol exactly when it is ≤ floor(atol)
        limit = math.floor(spec.atol)
        within = low <= np.uint64(min(limit, _TWO64 - 1))
        if carry is not None:
            within &= ~carry
            if limit >= _TWO64:
                within |= carry & (low <= np.uint64(min(limit - _TWO64, _TWO64 - 1)))
        return within
    # In float64 both sides are within a relative 2**-50 of the exact values: only pairs that close to the
    # boundary need the exact check, in Python's integers and fractions.
    with np.errstate(over="ignore"):
        bound = spec.atol + spec.rtol * abs_b.astype(np.float64)
    within = diff <= bound * (1 - _BAND)
    unsure = ~within & (diff <= bound * (1 + _BAND))
    if unsure.any():
        atol, rtol = Fraction(spec.atol), Fraction(spec.rtol)
        for index in np.flatnonzero(unsure):
            exact = int(low[index]) + (_TWO64 if carry is not None and carry[index] else 0)
            within[index] = exact <= atol + rtol * int(abs_b[index])
    return within


def compare_values(spec: Spec, start: int, x: np.ndarray, y: np.ndarray) -> Partial:
    """Elements [start, start+len(x)) of a pair: byte-equal blocks are settled without numeric work."""
    nonfinite = numerics.nonfinite_total(x) if spec.count_nonfinite else 0
    if spec.bytes_settle(x, y):
        return Partial(numel=len(x), settled=[(start, start + len(x))], nonfinite_a=nonfinite)
    part = Partial(nonfinite_a=nonfinite)
    kernel = _integer_block if spec.integral else _float_block
    for i in range(0, len(x), BLOCK):
        xs, ys = x[i : i + BLOCK], y[i : i + BLOCK]
        if spec.bytes_settle(xs, ys):  # the rest of a chunk with one changed element: only its norms are needed
            block = Partial(numel=len(xs), norms=equal_norms(spec, xs))
        else:
            block = kernel(spec, xs, ys)
        part.merge(block)
    return part


def value_stats(total: Partial, numel: int, integral: bool) -> ValueStats:
    """The reported statistics of a pair's merged partials."""
    norms = total.norms
    if norms.ssq_d == 0:
        rel_l2, cosine = 0.0, 1.0
    else:
        ratio = (norms.scale_d / norms.scale_a) * math.sqrt(norms.ssq_d / norms.ssq_a) if norms.ssq_a else math.inf
        rel_l2 = ratio
        if norms.ssq_a == 0 or norms.ssq_b == 0:
            cosine = None
        else:
            cosine = max(-1.0, min(1.0, norms.dot / math.sqrt(norms.ssq_a) / math.sqrt(norms.ssq_b)))
    max_abs = int(total.max_abs) if integral else float(total.max_abs)
    return ValueStats(numel, total.mismatched, max_abs, total.max_rel, rel_l2, cosine)
