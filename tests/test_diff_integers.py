"""`diff` on integers: exact under every option (--ignore-dtype mixes, --atol, --rtol), against Python's integers
and fractions as the reference, never float64 (which cannot hold every int64)."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_diff import memory_tensor
from typer.testing import CliRunner

from paramctl.cli import app
from paramctl.ops.diff import DiffOptions, diff_trees
from paramctl.ops.diff_kernel import exact_differences
from paramctl.tree import Tree

runner = CliRunner()
I64_MIN, I64_MAX, U64_MAX = -(1 << 63), (1 << 63) - 1, (1 << 64) - 1


def compare(a: np.ndarray, b: np.ndarray, streamed: bool = False, **options: Any) -> Any:
    """The one tensor's statistics (None when equal without --all) and whether the trees are equal."""
    ta = memory_tensor(a.reshape(1, -1), False, streamed)
    tb = memory_tensor(b.reshape(1, -1), False, False)
    opts = DiffOptions(ignore_dtype=a.dtype != b.dtype, list_all=True, **options)
    result = diff_trees(Tree("a", "memory", [(("w",), ta)]), Tree("b", "memory", [(("w",), tb)]), opts)
    (row,) = result.changed or result.unchanged
    return row.stats, result.equal


def reference(a: np.ndarray, b: np.ndarray, atol: float, rtol: float) -> tuple[int, int]:
    """(mismatched, max |a−b|) in Python integers; the tolerance in exact rationals."""
    mismatched, max_abs = 0, 0
    for x, y in zip(a.tolist(), b.tolist()):
        d = abs(int(x) - int(y))
        max_abs = max(max_abs, d)
        if d and not d <= Fraction(atol) + Fraction(rtol) * abs(int(y)):
            mismatched += 1
    return mismatched, max_abs


def test_int64_neighbours_beyond_2_53_differ_under_every_option():
    a = np.array([2**53, 7], np.int64)
    b = np.array([2**53 + 1, 7], np.int64)
    assert float(a[0]) == float(b[0])  # float64 cannot tell them apart
    for options in ({}, {"atol": 0.5}, {"rtol": 1e-17}, {"atol": 0.999, "rtol": 1e-20}):
        stats, equal = compare(a, b, **options)
        assert not equal and stats.mismatched == 1 and stats.max_abs == 1, options
    stats, equal = compare(a, b, atol=1.0)
    assert equal and stats.mismatched == 0 and stats.max_abs == 1 and isinstance(stats.max_abs, int)
    stats, equal = compare(a, b.astype(np.uint64))  # --ignore-dtype: int64 against uint64
    assert not equal and stats.mismatched == 1


@pytest.mark.parametrize(
    ("x", "y", "distance"),
    [
        (-1, U64_MAX, 1 << 64),  # exceeds uint64
        (I64_MIN, U64_MAX, U64_MAX + (1 << 63)),  # the widest apart two 64-bit integers can be
        (I64_MAX, 1 << 63, 1),
        (0, U64_MAX, U64_MAX),
    ],
)
def test_int64_against_uint64_is_exact_beyond_64_bits(x: int, y: int, distance: int):
    a, b = np.array([x, 0], np.int64), np.array([y, 0], np.uint64)
    stats, equal = compare(a, b)
    assert not equal and stats.max_abs == distance and stats.mismatched == 1
    stats, _ = compare(b, a)  # either side may be the unsigned one
    assert stats.max_abs == distance
    stats, equal = compare(a, b, atol=float(distance))  # exactly representable: within
    assert equal == (float(distance) >= distance)


def test_max_abs_beyond_int64_is_an_exact_json_integer(tmp_path: Path):
    pa, pb = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    safetensors.numpy.save_file({"w": np.array([I64_MIN, 5], np.int64)}, str(pa))
    safetensors.numpy.save_file({"w": np.array([U64_MAX, 5], np.uint64)}, str(pb))
    result = runner.invoke(app, ["diff", str(pa), str(pb), "--ignore-dtype", "--json"])
    assert result.exit_code == 1, result.output
    (row,) = json.loads(result.stdout)["changed"]
    assert row["max_abs"] == U64_MAX - I64_MIN and type(row["max_abs"]) is int
    assert row["mismatched"] == 1 and row["reason"] == "values"
    human = runner.invoke(app, ["diff", str(pa), str(pb), "--ignore-dtype"])
    assert human.exit_code == 1 and f" {U64_MAX - I64_MIN} " in human.stdout  # every digit, not 2.76701e+19


def test_bool_against_int8_and_narrow_ints():
    stats, equal = compare(np.array([True, False, True]), np.array([1, 0, 2], np.int8))
    assert not equal and (stats.mismatched, stats.max_abs) == (1, 1)
    stats, equal = compare(np.array([-128, 127], np.int8), np.array([255, 0], np.uint8))
    assert (stats.mismatched, stats.max_abs) == (2, 383)


LIMITS = {np.int64: (I64_MIN, I64_MAX), np.uint64: (0, U64_MAX), np.int32: (-(2**31), 2**31 - 1), np.uint8: (0, 255)}


@st.composite
def integer_pairs(draw: Any) -> tuple[np.ndarray, np.ndarray, float, float, int, bool]:
    dtype_a, dtype_b = draw(st.sampled_from(list(LIMITS))), draw(st.sampled_from(list(LIMITS)))
    n = draw(st.integers(1, 40))
    low, high = LIMITS[dtype_a]
    near = st.integers(-3, 3)
    a = draw(st.lists(st.integers(low, high), min_size=n, max_size=n))
    b = []
    for x in a:  # mostly neighbours of a, so tolerances decide; sometimes anything
        low_b, high_b = LIMITS[dtype_b]
        y = x + draw(near) if draw(st.booleans()) else draw(st.integers(low_b, high_b))
        b.append(min(max(y, low_b), high_b))
    atol = draw(st.sampled_from([0.0, 0.5, 1.0, 2.5, 3.0, 1e19, 2.0**64]))
    rtol = draw(st.sampled_from([0.0, 1e-19, 2.0**-62, 1e-3, 0.5]))
    chunk = draw(st.sampled_from([1, 3, 64]))
    return np.array(a, dtype_a), np.array(b, dtype_b), atol, rtol, chunk, draw(st.booleans())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(integer_pairs())
def test_integer_tolerances_match_exact_rationals(case: tuple[np.ndarray, np.ndarray, float, float, int, bool]):
    a, b, atol, rtol, chunk, streamed = case
    stats, equal = compare(a, b, streamed, atol=atol, rtol=rtol, chunk_elements=chunk)
    mismatched, max_abs = reference(a, b, atol, rtol)
    assert (stats.mismatched, stats.max_abs) == (mismatched, max_abs)
    assert equal == (mismatched == 0)


def test_exact_differences_carry():
    low, carry, magnitude = exact_differences(np.array([I64_MIN, 3]), np.array([U64_MAX, 2], np.uint64))
    assert carry is not None and carry.tolist() == [True, False]
    assert [int(v) + (1 << 64) * c for v, c in zip(low.tolist(), carry.tolist())] == [U64_MAX - I64_MIN, 1]
    assert magnitude.tolist() == [U64_MAX, 2]


@pytest.mark.parametrize("int_dtype", [np.int64, np.uint64])
@pytest.mark.parametrize("float_dtype", [np.float64, np.float32])
@pytest.mark.parametrize("ints_first", [True, False])
def test_64_bit_integers_against_floats_are_exact(int_dtype: Any, float_dtype: Any, ints_first: bool):
    """float64 rounds 2**53 + 1 to 2**53: --ignore-dtype still tells them apart, as exact rationals do."""
    low = 0 if int_dtype == np.uint64 else I64_MIN
    high = U64_MAX if int_dtype == np.uint64 else I64_MAX
    candidates = [2**53, 2**53 + 1, 2**60 + 7, high, high - 1, low, low + 1, 3, 2**63 - 1]
    ints = np.array([v for v in candidates if low <= v <= high], int_dtype)
    floats = ints.astype(float_dtype)  # each the nearest float: equal only where the integer is representable
    a, b = (ints, floats) if ints_first else (floats, ints)
    stats, equal = compare(a, b)
    expected = [Fraction(float(f)) != int(i) for i, f in zip(ints.tolist(), floats.tolist())]
    assert stats.mismatched == sum(expected) and equal == (not any(expected))
    distances = [abs(Fraction(float(f)) - int(i)) for i, f in zip(ints.tolist(), floats.tolist())]
    assert stats.max_abs == float(max(distances))
