"""Every dtype the pinned safetensors library accepts: listed, read where ml_dtypes has the type (checked against
the library's torch reader and against ml_dtypes), listed as not readable otherwise, never a refusal of the file."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
from typer.testing import CliRunner

import paramctl
from paramctl import reader
from paramctl.cli import app
from paramctl.dtypes import BY_SAFETENSORS
from paramctl.errors import CorruptFileError
from paramctl.ops.stats import stat_tree

runner = CliRunner()

# The `Dtype` enum of the safetensors library (0.8.0's src/tensor.rs, 22 variants), with bits per element.
LIBRARY_DTYPES = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32,
    "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}  # fmt: skip
FLOAT8 = {
    "F8_E4M3": (torch.float8_e4m3fn, ml_dtypes.float8_e4m3fn),
    "F8_E5M2": (torch.float8_e5m2, ml_dtypes.float8_e5m2),
    "F8_E4M3FNUZ": (torch.float8_e4m3fnuz, ml_dtypes.float8_e4m3fnuz),
    "F8_E5M2FNUZ": (torch.float8_e5m2fnuz, ml_dtypes.float8_e5m2fnuz),
    "F8_E8M0": (torch.float8_e8m0fnu, ml_dtypes.float8_e8m0fnu),
}


def write(path: Path, entries: dict[str, tuple[str, list[int], bytes]]) -> None:
    """A safetensors file built byte by byte: {name: (dtype code, shape, data)}, tensors in order."""
    header: dict[str, Any] = {}
    position = 0
    for name, (code, shape, data) in entries.items():
        header[name] = {"dtype": code, "shape": shape, "data_offsets": [position, position + len(data)]}
        position += len(data)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(data for _, _, data in entries.values()))


def test_every_library_dtype_is_known_with_its_bit_size():
    assert set(LIBRARY_DTYPES) <= set(BY_SAFETENSORS)
    for code, bits in LIBRARY_DTYPES.items():
        assert BY_SAFETENSORS[code].element_bits == bits, code


@pytest.mark.parametrize("code", FLOAT8)
def test_float8_values_match_the_library_and_ml_dtypes(tmp_path: Path, code: str):
    torch_dtype, ml_dtype = FLOAT8[code]
    every_pattern = torch.arange(256, dtype=torch.uint8).view(torch_dtype).reshape(16, 16)
    path = tmp_path / "f8.safetensors"
    safetensors.torch.save_file({"x": every_pattern, "y": torch.ones(3)}, path)
    ours = reader.array(paramctl.open(path)["x"]).astype(np.float64)
    theirs = safetensors.torch.load_file(path)["x"]
    assert theirs.dtype == torch_dtype
    expected = theirs.to(torch.float64).numpy()
    np.testing.assert_array_equal(ours, expected)  # NaN positions too
    np.testing.assert_array_equal(
        ours, np.arange(256, dtype=np.uint8).view(ml_dtype).astype(np.float64).reshape(16, 16)
    )
    row = stat_tree(paramctl.open(path), ["x"]).as_json()["tensors"][0]
    finite = expected[np.isfinite(expected)]
    assert row["skipped"] is None and row["nan"] == int(np.isnan(expected).sum())
    assert row["min"] == finite.min() and row["max"] == finite.max()


@pytest.mark.parametrize(("code", "shape", "nbytes"), [("F4", [2, 4], 4), ("F6_E2M3", [4], 3), ("F6_E3M2", [3, 4], 9)])
def test_sub_byte_types_are_listed_and_skipped_by_stat(tmp_path: Path, code: str, shape: list[int], nbytes: int):
    path = tmp_path / "packed.safetensors"
    write(path, {"p": (code, shape, bytes(range(nbytes))), "w": ("F32", [2], struct.pack("<2f", 1.5, -2.0))})
    with safetensors.safe_open(path, "numpy") as library:  # the library accepts the file and the shape
        assert library.get_slice("p").get_dtype() == code and library.get_slice("p").get_shape() == shape
    tree = paramctl.open(path)
    assert tree["p"].nbytes == nbytes and tree["p"].shape == tuple(shape)
    listed = runner.invoke(app, ["ls", str(path), "--json"])
    assert listed.exit_code == 0
    rows = {row["name"]: row for row in json.loads(listed.stdout)["tensors"]}
    assert rows["p"]["nbytes"] == nbytes and rows["p"]["dtype"] == BY_SAFETENSORS[code].name
    stats = runner.invoke(app, ["stat", str(path), "--json"])
    assert stats.exit_code == 0
    rows = {row["name"]: row for row in json.loads(stats.stdout)["tensors"]}
    assert rows["p"]["skipped"] and rows["p"]["min"] is None
    assert (rows["w"]["min"], rows["w"]["max"]) == (-2.0, 1.5)


@pytest.mark.parametrize(("code", "shape", "nbytes"), [("F4", [3], 2), ("F6_E3M2", [2], 2), ("F4", [4], 3)])
def test_sub_byte_sizes_are_checked_in_bits(tmp_path: Path, code: str, shape: list[int], nbytes: int):
    path = tmp_path / "bad.safetensors"
    write(path, {"p": (code, shape, bytes(nbytes))})
    with pytest.raises(Exception):  # noqa: B017 - the library's own error type is not public
        safetensors.safe_open(path, "numpy")
    with pytest.raises(CorruptFileError, match="tensor p"):
        paramctl.open(path)
    result = runner.invoke(app, ["ls", str(path)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
