"""`.npz` members whose descr paramctl does not read: a NumPy dtype (strings, records, objects) is a placeholder,
a descr NumPy itself cannot parse or a dtype the member is too short for is a corrupt file, as np.load says."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import paramctl
from paramctl.cli import app
from paramctl.errors import CorruptFileError
from paramctl.tree import Opaque

runner = CliRunner()


def npy(descr: Any, shape: tuple[int, ...], data: bytes) -> bytes:
    """A version 1.0 .npy member with this header literal, padded as NumPy pads it."""
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode("latin1")
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data


def write_npz(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, payload in members.items():
            archive.writestr(f"{name}.npy", payload)


@pytest.mark.parametrize("descr", ["<q17", "<f3", "bogus", "|V-1"])
def test_a_descr_numpy_cannot_parse_is_corrupt(tmp_path: Path, descr: str):
    path = tmp_path / "bad.npz"
    write_npz(path, {"x": npy(descr, (2,), bytes(64)), "ok": npy("<f4", (1,), bytes(4))})
    with pytest.raises((TypeError, ValueError)):
        np.load(path)["x"]
    with pytest.raises(CorruptFileError, match="is not a NumPy dtype"):
        paramctl.open(path)
    result = runner.invoke(app, ["ls", str(path)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "bad.npz" in result.output and "x.npy" in result.output


def test_numpy_dtypes_paramctl_does_not_read_are_placeholders(tmp_path: Path):
    path = tmp_path / "other.npz"
    records = np.zeros(3, dtype=[("a", "<f4"), ("b", "<i8")])
    np.savez(path, text=np.array(["ab", "cde"]), records=records, when=np.array([1, 2], "datetime64[s]"))
    np.savez(tmp_path / "objects.npz", objects=np.array([{"a": 1}, None], dtype=object))
    loaded = np.load(path)
    assert loaded["text"].dtype.kind == "U" and loaded["records"].dtype.names == ("a", "b")
    tree = paramctl.open(path)
    assert all(isinstance(leaf, Opaque) for _, leaf in tree.leaves)
    assert {name for name, _ in tree} == {"text", "records", "when"}
    for file in (path, tmp_path / "objects.npz"):
        result = runner.invoke(app, ["ls", str(file)])
        assert result.exit_code == 0, result.output


@pytest.mark.parametrize(("descr", "shape", "nbytes"), [("<U10", (5,), 199), ([("a", "<f4"), ("b", "<i8")], (4,), 47)])
def test_a_dtype_the_member_is_too_short_for_is_corrupt(
    tmp_path: Path, descr: Any, shape: tuple[int, ...], nbytes: int
):
    path = tmp_path / "short.npz"
    write_npz(path, {"x": npy(descr, shape, bytes(nbytes))})
    with pytest.raises(ValueError):
        np.load(io.BytesIO(path.read_bytes()))["x"]
    with pytest.raises(CorruptFileError, match="needs"):
        paramctl.open(path)
    write_npz(path, {"x": npy(descr, shape, bytes(nbytes + 1))})  # exactly enough: a placeholder
    assert isinstance(paramctl.open(path).leaves[0][1], Opaque)
