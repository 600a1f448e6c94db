"""`paramctl stat`: every figure against a float64 NumPy computation on the values torch.load, safetensors and
np.load give for the same file; on the fixtures and on generated tensors of every dtype, with NaN/±Inf, empty,
0-d and non-contiguous views, read in chunks small enough to exercise the exact merging."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from reference import FIXTURES, reference_flatten, safetensors_aliases
from reference import reference_values as shared_reference_values
from typer.testing import CliRunner

import paramctl
from paramctl.cli import app
from paramctl.cli.stat import sparkline
from paramctl.dtypes import BY_NAME
from paramctl.ops import stats as stats_module
from paramctl.ops.stats import HIST_BINS, Histogram, Moments, chunk_moments, stat_tree
from paramctl.tree import Storage, Tensor, Tree

PROFILE = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CHUNKS = [1, 3, 7, 1 << 19]  # tiny chunks force many merges; the default reads each small tensor whole
FIGURES = ("min", "max", "mean", "std", "l2", "absmax")
COUNTS = ("numel", "zeros", "nan", "posinf", "neginf")


# --------------------------------------------------------------------------- the float64 reference


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A torch tensor's values in NumPy, exactly: bfloat16 and float8 upcast to float64 (lossless)."""
    if tensor.dtype.is_floating_point and tensor.dtype not in (torch.float16, torch.float32, torch.float64):
        return tensor.to(torch.float64).numpy()
    return tensor.numpy()


def reference(values: np.ndarray) -> dict[str, Any]:
    """The statistics, computed plainly in float64 NumPy over the whole array (complex: of |x|)."""
    if values.dtype.kind == "c":
        x = np.abs(values.astype(np.complex128)).reshape(-1)
    else:
        x = values.astype(np.float64).reshape(-1)
    finite = x[np.isfinite(x)]
    result: dict[str, Any] = {
        "numel": x.size,
        "zeros": int(np.count_nonzero(x == 0)),
        "nan": int(np.count_nonzero(np.isnan(x))),
        "posinf": int(np.count_nonzero(x == np.inf)),
        "neginf": int(np.count_nonzero(x == -np.inf)),
    }
    if not finite.size:
        return result | dict.fromkeys(FIGURES)
    result |= {
        "min": finite.min(),
        "max": finite.max(),
        "mean": finite.mean(),
        "std": finite.std(),  # ddof=0
        "l2": math.sqrt(np.sum(finite * finite)),
        "absmax": np.abs(finite).max(),
    }
    if values.dtype.kind in "iub":  # integer extremes are exact, even beyond 2**53
        result |= {"min": int(values.min()), "max": int(values.max())}
        result["absmax"] = max(abs(result["min"]), abs(result["max"]))
    return result


def assert_matches(ours: dict[str, Any], expected: dict[str, Any], name: str) -> None:
    """Counts exactly; figures within 1e-9 relative (plus 1e-12 of the largest magnitude, for results near 0)."""
    for key in COUNTS:
        assert ours[key] == expected[key], (name, key, ours[key], expected[key])
    scale = expected["absmax"] or 0.0
    for key in FIGURES:
        got, want = ours[key], expected[key]
        if want is None:
            assert got is None, (name, key, got)
            continue
        assert got is not None, (name, key, want)
        if isinstance(want, int) and key in ("min", "max", "absmax"):
            assert got == want and isinstance(got, int), (name, key, got, want)
        else:
            assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12 * scale), (name, key, got, want)


def reference_values(path: Path) -> dict[str, np.ndarray]:
    """name -> values, as the format's own library reads the file."""
    return shared_reference_values(path, as_numpy)


def unique_reference(path: Path, names: list[str]) -> list[np.ndarray]:
    """The distinct value sets among `names`: torch views of the same storage positions (as a multiset) count once,
    as do safetensors aliases."""
    if path.suffix != ".pt":
        values = reference_values(path)
        aliases = safetensors_aliases(path) if path.suffix == ".safetensors" else {}
        kept = list(dict.fromkeys(aliases.get(name, name) for name in names))
        return [values[name] for name in kept]
    flat = reference_flatten(torch.load(path, weights_only=True))
    seen: dict[Any, np.ndarray] = {}
    for name in names:
        t = flat[name]
        positions = torch.arange(t.untyped_storage().nbytes() // t.element_size())
        where = positions.as_strided(t.shape, t.stride(), t.storage_offset()).reshape(-1).sort().values
        key = (t.untyped_storage().data_ptr(), t.dtype, tuple(where.tolist())) if t.numel() else ("empty", name)
        seen.setdefault(key, as_numpy(t))
    return list(seen.values())


def merged_reference(arrays: list[np.ndarray]) -> dict[str, Any]:
    """Statistics of several arrays together, as one float64 array."""
    parts = [np.abs(a.astype(np.complex128)) if a.dtype.kind == "c" else a.astype(np.float64) for a in arrays]
    return reference(np.concatenate([p.reshape(-1) for p in parts]) if parts else np.zeros(0))


def check_file(path: Path, chunk_elements: int = 1 << 19, hist: bool = False) -> dict[str, Any]:
    """stat_tree on the file agrees with the reference for every tensor and for the totals."""
    doc = stat_tree(paramctl.open(path), chunk_elements=chunk_elements, hist=hist).as_json()
    values = reference_values(path)
    assert sorted(t["name"] for t in doc["tensors"]) == sorted(values)
    for row in doc["tensors"]:
        expected = reference(values[row["name"]])
        assert_matches(row, expected, row["name"])
        assert row["shape"] == list(values[row["name"]].shape)
        if hist:
            check_histogram(row, values[row["name"]])
    totals = merged_reference(unique_reference(path, list(values)))
    assert_matches(doc["totals"], totals | {"numel": totals["numel"]}, "totals")
    assert doc["nonfinite"] == [r["name"] for r in doc["tensors"] if r["nan"] + r["posinf"] + r["neginf"]]
    return doc


def check_histogram(row: dict[str, Any], values: np.ndarray) -> None:
    x = np.abs(values.astype(np.complex128)) if values.dtype.kind == "c" else values.astype(np.float64)
    finite = x[np.isfinite(x)]
    if not finite.size:
        assert row["hist"] is None
        return
    low, high = finite.min(), finite.max()
    assert (row["hist"]["low"], row["hist"]["high"]) == (low, high)
    if low == high:  # the middle bin, as np.histogram's ±0.5 range puts it (where it can make one)
        expected = [0] * (HIST_BINS // 2) + [finite.size] + [0] * (HIST_BINS // 2 - 1)
    else:
        try:
            expected = np.histogram(finite, bins=HIST_BINS, range=(low, high))[0].tolist()
        except ValueError:  # too narrow for 16 distinct edges at this magnitude: the plain formula
            where = np.floor((finite - low) / (high - low) * HIST_BINS).clip(0, HIST_BINS - 1).astype(int)
            expected = np.bincount(where, minlength=HIST_BINS).tolist()
    assert row["hist"]["counts"] == expected, row["name"]


def test_histogram_edge_cases(tmp_path: Path):
    """Constant tensors at any magnitude, and ranges too narrow for np.histogram."""
    path = tmp_path / "edges.pt"
    big = 2526497193922298463
    torch.save(
        {
            "const": torch.full((3,), 0.1),
            "const_big": torch.tensor([big] * 2),
            "narrow": torch.tensor([big, big + 512, big + 1024]),
            "ints": torch.arange(17),
        },
        path,
    )
    doc = check_file(path, chunk_elements=2, hist=True)
    rows = {r["name"]: r for r in doc["tensors"]}
    assert rows["const_big"]["hist"]["counts"][8] == 2
    assert rows["narrow"]["hist"]["counts"] == [1] + [0] * 7 + [1] + [0] * 6 + [1]
    with pytest.raises(ValueError):  # so the fallback above was exercised
        values = torch.tensor([big, big + 512, big + 1024]).double().numpy()
        np.histogram(values, bins=HIST_BINS, range=(values.min(), values.max()))
    assert rows["ints"]["hist"]["counts"] == [1] * 15 + [2]


# --------------------------------------------------------------------------- fixtures

FIXTURE_FILES = sorted(p.name for p in FIXTURES.iterdir() if p.suffix in (".pt", ".safetensors", ".npz"))


@pytest.mark.parametrize("name", FIXTURE_FILES)
def test_fixture_statistics_match_reference(name: str):
    for chunk in (7, 1 << 19):
        check_file(FIXTURES / name, chunk, hist=chunk == 7)


def test_dtypes_fixture_covers_every_kind():
    doc = check_file(FIXTURES / "dtypes.pt", 3)
    rows = {r["name"]: r for r in doc["tensors"]}
    assert rows["c64"]["magnitude"] and not rows["f32"]["magnitude"]
    assert rows["empty"]["numel"] == 0 and rows["empty"]["mean"] is None and rows["empty"]["zeros_fraction"] is None
    assert rows["scalar"]["shape"] == [] and rows["scalar"]["std"] == 0
    assert isinstance(rows["i64"]["min"], int) and isinstance(rows["bool"]["max"], int)


def test_rarer_dtypes(tmp_path: Path):
    """fnuz and e8m0 float8, unsigned 16/32/64-bit (beyond 2**63), complex128 with NaN and Inf parts."""
    path = tmp_path / "rare.pt"
    state = {
        str(dtype): torch.tensor([0.5, 1.0, 3.0, 100.0, math.nan]).to(dtype)
        for dtype in (torch.float8_e4m3fnuz, torch.float8_e5m2fnuz, torch.float8_e8m0fnu)
    }
    state |= {
        "u16": torch.tensor([0, 65535, 7], dtype=torch.uint16),
        "u32": torch.tensor([0, 2**32 - 1, 7], dtype=torch.uint32),
        "u64": torch.tensor([0, 2**63 + 5, 7], dtype=torch.uint64),
        "c128": torch.tensor([1 + 2j, complex(math.nan, 1), complex(math.inf, 0), 0j], dtype=torch.complex128),
    }
    torch.save(state, path)
    doc = check_file(path, chunk_elements=2, hist=True)
    rows = {r["name"]: r for r in doc["tensors"]}
    assert rows["u64"]["max"] == 2**63 + 5
    assert (rows["c128"]["nan"], rows["c128"]["posinf"], rows["c128"]["zeros"]) == (1, 1, 1)


def test_tied_names_are_read_once_and_shown_for_each(monkeypatch: pytest.MonkeyPatch):
    read: list[int] = []

    def counting(values: np.ndarray) -> Moments:
        read.append(values.size)
        return chunk_moments(values)

    monkeypatch.setattr(stats_module, "chunk_moments", counting)
    result = stat_tree(paramctl.open(FIXTURES / "tiny_lm.pt"), chunk_elements=5)
    rows = {r.name: r for r in result.tensors}
    assert rows["lm_head.weight"].same_as == "embed.weight" and rows["embed.weight"].same_as is None
    assert rows["lm_head.weight"].moments == rows["embed.weight"].moments
    model = torch.load(FIXTURES / "tiny_lm.pt", weights_only=True)
    assert sum(read) == sum(t.numel() for t in model.values()) - model["lm_head.weight"].numel()
    assert max(read) <= 5  # bounded chunks
    assert result.unique == 3


def test_transposed_view_is_read_once():
    result = stat_tree(paramctl.open(FIXTURES / "autoencoder.pt"))
    rows = {r.name: r for r in result.tensors}
    assert rows["decoder.weight"].same_as == "encoder.weight"
    assert rows["decoder.weight"].moments == rows["encoder.weight"].moments


def test_reshaped_view_is_read_once_but_broadcast_view_is_not(tmp_path: Path):
    """A flattened view holds the same values; a stride-0 `expand` shows each value several times."""
    base = torch.tensor([[0.0, 1.0, 5.0, math.nan]])
    path = tmp_path / "views.pt"
    torch.save({"base": base, "flat": base.view(-1), "wide": base.expand(3, 4)}, path)
    doc = check_file(path, chunk_elements=3)
    rows = {r["name"]: r for r in doc["tensors"]}
    assert rows["flat"]["same_as"] == "base"
    assert rows["wide"]["same_as"] is None and rows["wide"]["zeros"] == 3 and rows["wide"]["nan"] == 3


def test_permuted_and_strided_views_on_their_own(tmp_path: Path):
    """Views saved without their base: read in storage order (permuted) or element by element (gapped)."""
    base = torch.randn(3, 4, 5, dtype=torch.float64)
    base[1, 2, 3] = math.nan
    path = tmp_path / "views.pt"
    torch.save(
        {"t": base[0].t(), "p": base.permute(2, 0, 1), "gaps": base[:, ::2, 1:], "off": base[1:].transpose(0, 2)}, path
    )
    check_file(path, chunk_elements=7, hist=True)


def test_globs_limit_the_work():
    result = stat_tree(paramctl.open(FIXTURES / "tiny_lm.pt"), ["lm_head.*", "hidden.b*"])
    assert [r.name for r in result.tensors] == ["hidden.bias", "lm_head.weight"]
    values = reference_values(FIXTURES / "tiny_lm.pt")
    assert_matches(result.as_json()["tensors"][1], reference(values["lm_head.weight"]), "lm_head.weight")
    assert_matches(
        result.as_json()["totals"], merged_reference([values["hidden.bias"], values["lm_head.weight"]]), "totals"
    )


@pytest.mark.parametrize(("name", "depth"), [("train_ckpt.pt", 1), ("train_ckpt.pt", 2), ("tied_mlp.pt", 1)])
def test_depth_merges_each_subtree_exactly(name: str, depth: int):
    path = FIXTURES / name
    doc = stat_tree(paramctl.open(path), depth=depth, chunk_elements=3).as_json()
    names = list(reference_values(path))
    prefixes = list(dict.fromkeys(".".join(n.split(".")[:depth]) for n in names))
    assert [g["name"] for g in doc["groups"]] == prefixes
    for group in doc["groups"]:
        inside = [n for n in names if n.split(".")[:depth] == group["path"]]
        assert group["tensors"] == len(inside)
        assert_matches(group, merged_reference(unique_reference(path, inside)), group["name"])


def test_tied_subtree_counts_its_values_once():
    doc = stat_tree(paramctl.open(FIXTURES / "tied_mlp.pt"), depth=1).as_json()
    groups = {g["name"]: g for g in doc["groups"]}
    assert groups["4"]["unique"] == 2 and groups["4"]["numel"] == groups["2"]["numel"]
    assert doc["totals"]["unique"] == 6 and doc["totals"]["tensors"] == 8


def test_unreadable_dtype_is_reported_not_read():
    storage = Storage("q", 4)
    tree = Tree("crafted", "test")
    tree.leaves.append((("q",), Tensor(BY_NAME["qint8"], (4,), (1,), storage)))
    result = stat_tree(tree)
    row = result.as_json()["tensors"][0]
    assert row["skipped"] and row["min"] is None and row["nan"] is None and row["numel"] == 4
    assert result.unique == 0 and result.totals.numel == 0


def _scaled_reference(values: np.ndarray) -> tuple[float, float, float]:
    """(mean, std, L2) of float64 values without overflow or underflow: NumPy on the values divided by a power of
    two (exact), scaled back; L2 by math.hypot (which scales internally)."""
    scale = math.ldexp(1.0, math.frexp(float(np.max(np.abs(values))))[1] - 1)
    unit = values / scale
    return float(unit.mean()) * scale, float(unit.std()) * scale, math.hypot(*values.tolist())


EXTREMES = {
    "huge": lambda rng: rng.standard_normal(500) * 1e300,
    "huge, positive": lambda rng: rng.uniform(1.0, 1.7, 500) * 1e306,  # Σx overflows, the L2 does not
    "tiny": lambda rng: rng.standard_normal(500) * 1e-300,
    "subnormal": lambda rng: rng.standard_normal(500) * 1e-310,
    "mixed magnitudes": lambda rng: np.concatenate([rng.standard_normal(200) * 1e300, rng.standard_normal(300)]),
    "tiny and zeros": lambda rng: np.concatenate([np.zeros(300), rng.standard_normal(200) * 1e-300]),
}


@pytest.mark.parametrize("case", EXTREMES)
@pytest.mark.parametrize("chunk_elements", [7, 64, 1 << 19])
def test_extreme_magnitudes_give_finite_correct_std_and_l2(tmp_path: Path, case: str, chunk_elements: int):
    values = EXTREMES[case](np.random.default_rng(11))
    path = tmp_path / "extreme.safetensors"
    safetensors.numpy.save_file({"x": values}, str(path))
    mean, std, l2 = _scaled_reference(values)
    row = stat_tree(paramctl.open(path), chunk_elements=chunk_elements).as_json()["tensors"][0]
    assert row["std"] is not None and row["l2"] is not None and row["mean"] is not None
    assert math.isclose(row["std"], std, rel_tol=1e-12)
    assert math.isclose(row["l2"], l2, rel_tol=1e-12)
    assert math.isclose(row["mean"], mean, rel_tol=1e-9, abs_tol=std * 1e-12)


def test_extreme_merge_matches_exact_rational_variance():
    """Chunks of 1e300 and 1e-300 values merged: the variance against fractions.Fraction's exact one."""
    from fractions import Fraction

    rng = np.random.default_rng(5)
    values = np.concatenate([rng.standard_normal(40) * 1e300, rng.standard_normal(40) * 1e-300, [0.0, 3.0]])
    parts = [chunk_moments(values[i : i + 9]) for i in range(0, len(values), 9)]
    merged = stats_module.merge_all(parts)
    exact = [Fraction(v) for v in values.tolist()]
    mean = sum(exact) / len(exact)
    variance = sum((v - mean) ** 2 for v in exact) / len(exact)
    assert variance > Fraction(1e308)  # float(variance) would overflow: take the root of variance / 4**1000
    expected_std = math.sqrt(float(variance / 4**1000)) * 2.0**1000
    assert math.isclose(merged.std, expected_std, rel_tol=1e-12)
    assert math.isclose(merged.mean, float(mean), rel_tol=1e-9)


@pytest.mark.parametrize(
    ("dtype", "magnitude"),
    [(torch.float16, 6.0e4), (torch.float16, 6e-8), (torch.bfloat16, 3e38), (torch.bfloat16, 1e-38)],
)
def test_narrow_floats_at_their_extremes(tmp_path: Path, dtype: torch.dtype, magnitude: float):
    generator = torch.Generator().manual_seed(2)
    tensor = (torch.rand(300, generator=generator, dtype=torch.float64) * 2 - 1).mul(magnitude).to(dtype)
    path = tmp_path / "narrow.pt"
    torch.save({"x": tensor}, path)
    values = tensor.to(torch.float64).numpy()
    _, std, l2 = _scaled_reference(values)
    row = stat_tree(paramctl.open(path), chunk_elements=16).as_json()["tensors"][0]
    assert math.isclose(row["std"], std, rel_tol=1e-12)
    assert math.isclose(row["l2"], l2, rel_tol=1e-12)


def test_merge_is_exact_and_order_independent():
    rng = np.random.default_rng(3)
    values = rng.standard_normal(1000) * 1e-3 + 1e4  # a large mean: averaging averages or Σx² − n·mean² would show
    parts = [chunk_moments(values[i : i + 37]) for i in range(0, 1000, 37)]
    forward = stats_module.merge_all(parts)
    backward = stats_module.merge_all(parts[::-1])
    for merged in (forward, backward):
        assert math.isclose(merged.std, values.std(), rel_tol=1e-9)
        assert math.isclose(merged.mean, values.mean(), rel_tol=1e-12)


# --------------------------------------------------------------------------- generated tensors

FLOATS = [torch.float16, torch.float32, torch.float64, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2]
INTS = [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64]
TORCH_DTYPES = [*FLOATS, *INTS, torch.bool, torch.complex64]
NUMPY_ONLY = (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2)


@st.composite
def tensors(draw: Any, dtypes: list[torch.dtype]) -> torch.Tensor:
    """A tensor of any dtype and shape (0-d and empty included), with zeros and NaN/±Inf at random places."""
    dtype = draw(st.sampled_from(dtypes))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6))
    n = math.prod(shape)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if dtype == torch.bool:
        return torch.from_numpy(rng.random(n) < draw(st.floats(0, 1))).reshape(shape)
    if dtype in INTS:
        info = torch.iinfo(dtype)
        return torch.from_numpy(rng.integers(info.min, info.max, n, endpoint=True)).to(dtype).reshape(shape)
    scale, offset = draw(st.sampled_from([1e-3, 1.0, 1e3])), draw(st.sampled_from([0.0, 1.0, -100.0]))
    values = rng.standard_normal(n) * scale + offset
    if dtype.is_complex:
        values = values + 1j * rng.standard_normal(n)
    for _ in range(draw(st.integers(0, 4)) if n else 0):  # exact zeros (and -0.0), NaN, +Inf, -Inf
        values[rng.integers(n)] = draw(st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf]))
    return torch.from_numpy(values).reshape(shape).to(dtype)


def views_of(base: torch.Tensor, kind: str) -> torch.Tensor:
    """A view sharing base's storage: transposed, strided slice, flattened, or broadcast (stride 0)."""
    if kind == "transpose" and base.dim() >= 2:
        return base.transpose(0, base.dim() - 1)
    if kind == "slice" and base.dim() >= 1:
        return base[::2]
    if kind == "columns" and base.dim() >= 2:
        return base[:, 1::2]
    if kind == "flat" and base.is_contiguous():
        return base.view(-1)
    if kind == "expand" and base.dim() >= 1 and base.shape[0] == 1:
        return base.expand(3, *base.shape[1:])
    return base


@PROFILE
@given(
    tensors(TORCH_DTYPES),
    tensors(TORCH_DTYPES),
    st.sampled_from(["same", "transpose", "slice", "columns", "flat", "expand"]),
    st.sampled_from(CHUNKS),
    st.booleans(),
)
def test_torch_save_matches_torch_load(a: torch.Tensor, b: torch.Tensor, kind: str, chunk: int, hist: bool):
    state = {"block": {"a": a, "view": views_of(a, kind)}, "b": b, "b_alias": b}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pt"
        torch.save(state, path)
        check_file(path, chunk, hist)


@PROFILE
@given(st.lists(tensors(TORCH_DTYPES), min_size=1, max_size=3), st.sampled_from(CHUNKS))
def test_safetensors_matches_safetensors(items: list[torch.Tensor], chunk: int):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        safetensors.torch.save_file({f"t.{i}": t.contiguous() for i, t in enumerate(items)}, path)
        check_file(path, chunk)


@PROFILE
@given(
    st.lists(
        st.tuples(tensors([d for d in TORCH_DTYPES if d not in NUMPY_ONLY]), st.sampled_from(["c", "f", "big"])),
        min_size=1,
        max_size=3,
    ),
    st.sampled_from(CHUNKS),
    st.booleans(),
)
def test_npz_matches_numpy(items: list[tuple[torch.Tensor, str]], chunk: int, compressed: bool):
    """Stored and deflated members (the stream path), Fortran order and big-endian data."""
    arrays = {}
    for i, (t, layout) in enumerate(items):
        values = t.numpy()
        if layout == "f":
            values = np.asfortranarray(values)
        elif layout == "big" and values.dtype.itemsize > 1:
            values = values.astype(values.dtype.newbyteorder(">"))
        arrays[f"t{i}"] = values
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.npz"
        (np.savez_compressed if compressed else np.savez)(path, **arrays)
        check_file(path, chunk, hist=True)


# --------------------------------------------------------------------------- the command line

runner = CliRunner()


def stat(*args: str) -> Any:
    return runner.invoke(app, ["stat", *args])


@pytest.fixture
def nan_file(tmp_path: Path) -> Path:
    path = tmp_path / "bad.pt"
    torch.save(
        {
            "ok": torch.tensor([1.0, 2.0]),
            "nan": torch.tensor([1.0, math.nan, 0.0]),
            "inf": torch.tensor([-math.inf, 3.0]),
            "all_nan": torch.full((2,), math.nan),
        },
        path,
    )
    return path


def test_check_finite_fails_and_lists_offenders(nan_file: Path):
    result = stat(str(nan_file), "--check-finite")
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert "non-finite: nan (1 NaN)" in lines
    assert "non-finite: inf (1 -Inf)" in lines
    assert "non-finite: all_nan (2 NaN)" in lines
    assert not any(line.startswith("non-finite: ok") for line in lines)


def test_check_finite_passes_on_clean_files(nan_file: Path):
    assert stat(str(FIXTURES / "mlp.safetensors"), "--check-finite").exit_code == 0
    result = stat(str(nan_file), "ok", "--check-finite")
    assert result.exit_code == 0 and "all values finite in 1 tensor" in result.output
    assert stat(str(nan_file)).exit_code == 0  # without --check-finite, NaN is only reported


def test_json_is_strict_and_complete(nan_file: Path):
    result = stat(str(nan_file), "--json", "--check-finite")
    assert result.exit_code == 1

    def refuse(token: str) -> None:
        raise AssertionError(f"bare {token} in JSON")

    doc = json.loads(result.output, parse_constant=refuse)
    assert set(doc) == {"file", "format", "tensors", "groups", "totals", "nonfinite"}
    assert doc["nonfinite"] == ["nan", "inf", "all_nan"]
    required = {"name", "dtype", "shape", "numel", *FIGURES, "zeros", "nan", "posinf", "neginf"}
    assert all(required <= set(row) for row in doc["tensors"])
    rows = {r["name"]: r for r in doc["tensors"]}
    assert rows["all_nan"]["mean"] is None and rows["all_nan"]["nan"] == 2
    assert rows["inf"]["min"] == 3.0 and rows["inf"]["neginf"] == 1
    values = reference_values(nan_file)
    for name, row in rows.items():
        assert_matches(row, reference(values[name]), name)
    assert_matches(doc["totals"], merged_reference(list(values.values())), "totals")
    assert doc["totals"]["tensors"] == 4 and doc["groups"] == []


def test_json_depth_groups():
    doc = json.loads(stat(str(FIXTURES / "train_ckpt.pt"), "--json", "--depth", "1").output)
    assert [g["name"] for g in doc["groups"]] == ["model", "optimizer"]
    assert sum(g["numel"] for g in doc["groups"]) == doc["totals"]["numel"]


def test_table_shows_every_tensor_and_totals():
    result = stat(str(FIXTURES / "tiny_lm.pt"))
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].split()[:4] == ["name", "dtype", "shape", "min"]
    assert [line.split()[0] for line in lines[1:6]] == [
        "embed.weight",
        "hidden.weight",
        "hidden.bias",
        "lm_head.weight",
        "total",
    ]
    embed = reference_values(FIXTURES / "tiny_lm.pt")["embed.weight"].astype(np.float64)
    assert lines[1].split()[4:8] == [f"{v:.4g}" for v in (embed.min(), embed.max(), embed.mean(), embed.std())]
    assert "population (ddof=0)" in result.output and "3 unique of 4 tensors" in result.output


def test_table_hist_and_nonfinite_columns(nan_file: Path):
    result = stat(str(nan_file), "--hist")
    header = result.output.splitlines()[0].split()
    assert header[-4:] == ["zeros", "NaN", "-Inf", "histogram"]
    assert "+Inf" not in header  # shown only when some tensor has one
    result = stat(str(FIXTURES / "mlp.pt"))
    assert "NaN" not in result.output.splitlines()[0]


def test_sparkline():
    assert sparkline(Histogram(0, 1, (0,) * 15 + (4,))) == " " * 15 + "█"
    line = sparkline(Histogram(0, 1, (1, 2, 4, 8, 0, 8, 4, 2, 1, 0, 0, 0, 0, 0, 0, 1)))
    assert len(line) == HIST_BINS and line[3] == "█" and line[4] == " " and line[0] == "▁"


def test_depth_table():
    result = stat(str(FIXTURES / "train_ckpt.pt"), "--depth", "2")
    lines = result.output.splitlines()
    assert lines[0].split()[:2] == ["subtree", "tensors"]
    assert [line.split()[:2] for line in lines[1:4]] == [["model.0", "2"], ["model.2", "2"], ["optimizer.state", "4"]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nothing-here.pt"], "nothing-here.pt: no such file"),
        ([str(FIXTURES / "mlp.pt"), "no.such.*"], "no tensor matches no.such.*"),
        ([str(FIXTURES / "mlp.pt"), "--depth", "0"], "--depth"),
    ],
)
def test_bad_input_exits_2(args: list[str], message: str):
    result = stat(*args)
    assert result.exit_code == 2
    assert message in result.output


def test_subprocess_stderr_stays_empty(tmp_path: Path):
    """Not a terminal: no progress bar and no NumPy warnings, even with NaN and Inf in the data."""
    path = tmp_path / "big.safetensors"
    values = torch.randn(1 << 21)
    values[::1000] = math.nan
    values[1::1000] = math.inf
    safetensors.torch.save_file({"w": values}, path)
    for extra in ([], ["--json"], ["--hist", "--check-finite"]):
        proc = subprocess.run(
            [sys.executable, "-m", "paramctl", "stat", str(path), *extra], capture_output=True, text=True
        )
        assert proc.stderr == "" and proc.stdout
        assert proc.returncode == (1 if "--check-finite" in extra else 0)
    doc = json.loads(
        subprocess.run(
            [sys.executable, "-m", "paramctl", "stat", str(path), "--json"], capture_output=True, text=True
        ).stdout
    )
    assert_matches(doc["tensors"][0], reference(values.numpy()), "w")


def test_cli_does_not_import_torch_or_numpy_for_other_commands():
    code = "import sys, paramctl.cli; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
