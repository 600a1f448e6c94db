"""The numeric conventions every command that reduces values shares (`stat`, `diff`, `check`, `show`).

Sums of squares are kept as (scale, ssq) with Σx² = scale²·ssq, as LAPACK's dnrm2 does, so values near 1e±300 give
finite, correct norms and deviations where plain float64 squares would overflow to inf or underflow to 0. NaN and
±Inf are counted apart and never enter the sums. Chunk and block sizes live here so every command reads in the same
cache-sized pieces. Imports NumPy: only code that reads values imports this module.
"""

from __future__ import annotations

import math

import numpy as np

# Bytes per chunk the reader hands out by default (diff, show, ties --by value): small enough to stay in cache while
# several statistics are taken of it.
CHUNK_BYTES = 4 << 20
# Elements per chunk of a streaming reduction: a 2 MiB float32 chunk and its 4 MiB float64 work copy stay in cache
# across the passes, and chunks are still large enough that per-task overhead is small (the 1 GiB benchmark file).
CHUNK_ELEMENTS = 1 << 19
BLOCK = 1 << 15  # elements per step of a multi-temporary kernel (diff, histograms): temporaries stay in L2

# Values whose magnitude lies in [2**-LIMIT_EXPONENT, 2**LIMIT_EXPONENT] are squared as they are: a chunk of 2**40
# such squares neither overflows nor loses its largest terms to underflow. Anything outside is divided by a power
# of two first (exact: only the exponent changes).
LIMIT_EXPONENT = 400
_HIGH = math.ldexp(1.0, LIMIT_EXPONENT)
_LOW = math.ldexp(1.0, -LIMIT_EXPONENT)


def power_of_two_scale(magnitude: float) -> float:
    """The power of two at or just below a finite magnitude (0 for 0): dividing by it is exact (only exponents
    change) and leaves values below 2 in magnitude; one above would overflow for magnitudes beyond 2**1023."""
    if magnitude == 0:
        return 0.0
    _, exponent = math.frexp(magnitude)
    return math.ldexp(1.0, exponent - 1)


def needs_scaling(magnitude: float) -> bool:
    """True when squares of values up to this magnitude can leave float64's range (or its precision near 0)."""
    return magnitude != 0 and not (_LOW <= magnitude <= _HIGH)


def merge_ssq(s1: float, q1: float, s2: float, q2: float) -> tuple[float, float]:
    """(scale, ssq) of two scaled sums of squares together, rescaled to the larger scale (nothing overflows)."""
    scale = max(s1, s2)
    if scale == 0:
        return 0.0, 0.0
    return scale, (q1 * (s1 / scale) ** 2 if s1 else 0.0) + (q2 * (s2 / scale) ** 2 if s2 else 0.0)


def real_parts(values: np.ndarray) -> np.ndarray:
    """A complex array as its interleaved real and imaginary parts (a real array is itself)."""
    return values.view(np.float64) if values.dtype.kind == "c" else values


def dot(x: np.ndarray, y: np.ndarray) -> float:
    """Re Σ x·conj(y). einsum, not BLAS: OpenBLAS's own threads fight the chunk threads (8× slower here)."""
    return float(np.einsum("i,i->", real_parts(x), real_parts(y)))


def sum_squares(values: np.ndarray, scaled: bool) -> tuple[float, float, np.ndarray]:
    """(scale, Σ|v/scale|², v/scale) of finite float64/complex128 values; unscaled (scale 1) when `scaled` is false
    (the caller knows squares cannot leave float64, as for values converted from float32 or narrower)."""
    if not scaled:
        return 1.0, dot(values, values), values
    scale = float(np.max(np.abs(values))) if len(values) else 0.0
    if scale == 0 or not math.isfinite(scale):
        return scale, 0.0 if scale == 0 else math.nan, values
    # A complex array divided by a real divides as complex (c² + d² underflows for a tiny scale): divide the parts.
    unit = (real_parts(values) / scale).view(values.dtype)
    return scale, dot(unit, unit), unit


def count_nonfinite(values: np.ndarray) -> tuple[int, int, int]:
    """(NaN, +Inf, −Inf) counts of real float values; integers are always finite."""
    if values.dtype.kind not in "fc":
        return 0, 0, 0
    return (
        int(np.count_nonzero(np.isnan(values))),
        int(np.count_nonzero(values == np.inf)),
        int(np.count_nonzero(values == -np.inf)),
    )


def nonfinite_total(values: np.ndarray) -> int:
    """How many elements are NaN or ±Inf (a complex element counts once when either part is)."""
    if values.dtype.kind not in "fc":
        return 0
    return len(values) - int(np.count_nonzero(np.isfinite(values)))


def bytes_equal(x: np.ndarray, y: np.ndarray) -> bool:
    """Compare raw bytes, eight at a time (an order of magnitude faster than byte by byte)."""
    u, v = x.view(np.uint8), y.view(np.uint8)
    whole = len(u) - len(u) % 8
    return bool(np.array_equal(u[:whole].view(np.uint64), v[:whole].view(np.uint64))) and bool(
        np.array_equal(u[whole:], v[whole:])
    )
