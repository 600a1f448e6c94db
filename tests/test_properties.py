"""Property tests: random state dicts written by torch.save (zip and legacy), safetensors and np.savez read back
by paramctl exactly as the reference libraries read them."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import (
    paramctl_tensors,
    raw_bytes,
    reference_flatten,
    sharing_groups,
    torch_bytes,
    torch_dtype_name,
    torch_dtypes,
)
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file

import paramctl

DTYPES = torch_dtypes()
NUMPY_DTYPES = [d for d in DTYPES if d not in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2)]
# torch.load cannot read float8 back from the legacy format (an UntypedStorage has no dtype there).
LEGACY_DTYPES = [d for d in DTYPES if d not in (torch.float8_e4m3fn, torch.float8_e5m2)]
SAFETENSORS_DTYPES = [d for d in DTYPES if d != torch.complex128]  # the format has no C128
PROFILE = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.text("abcdefghij_0123456789", min_size=1, max_size=6)
shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)


def make_tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    if not dtype.is_floating_point and not dtype.is_complex:
        info = torch.iinfo(dtype)
        return torch.randint(
            max(info.min, -1000), min(info.max, 1000), shape, generator=generator, dtype=torch.int64
        ).to(dtype)
    return (torch.randn(shape, generator=generator, dtype=torch.float64) * 4).to(dtype)


@st.composite
def state_dicts(draw: Any, dtypes: list[torch.dtype], views: bool = True) -> dict[str, Any]:
    """Nested dicts and lists of tensors; with `views`, some entries are views of (share storage with) others."""
    flat: dict[tuple[str, ...], torch.Tensor] = {}
    for index in range(draw(st.integers(1, 6))):
        path = tuple(draw(st.lists(names, min_size=1, max_size=3)))
        if any(path[: len(p)] == p or p[: len(path)] == path for p in flat):
            continue  # one name may not be both a leaf and a folder
        bases = [t for t in flat.values() if t.dim() >= 1 and t.numel() > 0]
        if views and bases and draw(st.booleans()):
            base = draw(st.sampled_from(bases))
            kind = draw(st.sampled_from(["same", "slice", "transpose", "narrow"]))
            if kind == "same":
                tensor = base
            elif kind == "slice":
                tensor = base[:: draw(st.integers(1, 3))]
            elif kind == "transpose" and base.dim() >= 2:
                tensor = base.transpose(0, base.dim() - 1)
            else:
                tensor = base.narrow(0, draw(st.integers(0, base.shape[0] - 1)), 1)
        else:
            tensor = make_tensor(draw(st.sampled_from(dtypes)), draw(shapes), index)
        flat[path] = tensor
    nested: dict[str, Any] = {}
    for path, tensor in flat.items():
        node = nested
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = tensor
    if draw(st.booleans()):
        nested["listed"] = [make_tensor(torch.float32, (2,), 99), {"inner": make_tensor(torch.int64, (), 98)}]
    return nested


def check_against_torch_load(path: Path) -> None:
    reference = {k: v for k, v in reference_flatten(torch.load(path, weights_only=True)).items()}
    tensors = {k: v for k, v in reference.items() if isinstance(v, torch.Tensor)}
    ours = paramctl_tensors(path)
    assert list(ours) == list(tensors)
    for name, tensor in tensors.items():
        assert ours[name][:3] == (torch_dtype_name(tensor), tuple(tensor.shape), torch_bytes(tensor)), name
    nonempty = {k for k, t in tensors.items() if t.numel()}
    expected = sharing_groups({k: t.untyped_storage().data_ptr() for k, t in tensors.items() if k in nonempty})
    assert sharing_groups({k: v[3] for k, v in ours.items() if k in nonempty}) == expected


@PROFILE
@given(
    st.booleans().flatmap(lambda legacy: st.tuples(state_dicts(LEGACY_DTYPES if legacy else DTYPES), st.just(legacy)))
)
def test_torch_save_round_trip(case: tuple[dict[str, Any], bool]):
    state, legacy = case
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pt"
        torch.save(state, path, _use_new_zipfile_serialization=not legacy)
        check_against_torch_load(path)


@PROFILE
@given(state_dicts(SAFETENSORS_DTYPES, views=False))
def test_safetensors_round_trip(state: dict[str, Any]):
    flat = {k: v.contiguous() for k, v in reference_flatten(state).items()}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        save_file(flat, path)
        ours = paramctl_tensors(path)
        assert set(ours) == set(flat)
        for name, tensor in flat.items():
            assert ours[name][:3] == (torch_dtype_name(tensor), tuple(tensor.shape), torch_bytes(tensor)), name


@PROFILE
@given(state_dicts(NUMPY_DTYPES, views=False), st.booleans(), st.booleans())
def test_npz_round_trip(state: dict[str, Any], compressed: bool, fortran: bool):
    flat = {k: v.numpy() for k, v in reference_flatten(state).items()}
    if fortran:
        flat = {k: np.asfortranarray(v) for k, v in flat.items()}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.npz"
        (np.savez_compressed if compressed else np.savez)(path, **flat)
        ours = paramctl_tensors(path)
        with np.load(path, allow_pickle=False) as archive:
            assert list(ours) == archive.files
            for name in archive.files:
                expected = archive[name]
                assert ours[name][:3] == (expected.dtype.name, expected.shape, raw_bytes(expected)), name


def test_big_endian_npz_reads_native_values(tmp_path: Path):
    values = np.arange(12, dtype=">f4").reshape(3, 4)
    np.savez(tmp_path / "be.npz", x=values, y=values.astype(">i8"), z=values.astype(">c16"))
    tree = paramctl.open(tmp_path / "be.npz")
    from paramctl import reader

    for name, tensor in tree.tensors():
        expected = {"x": values, "y": values.astype(">i8"), "z": values.astype(">c16")}[name]
        assert np.array_equal(reader.array(tensor), expected), name


def test_safetensors_written_by_numpy(tmp_path: Path):
    """Another writer of the same format: safetensors.numpy."""
    arrays = {"a/b": np.arange(6, dtype=np.int16).reshape(2, 3), "c": np.ones((0,), np.float64)}
    save_numpy(arrays, tmp_path / "n.safetensors", metadata={"note": "hi"})
    tree = paramctl.open(tmp_path / "n.safetensors")
    assert tree.metadata == {"note": "hi"}
    assert {name for name, _ in tree.tensors()} == {"a.b", "c"}  # `/` splits a flat key like `.`
