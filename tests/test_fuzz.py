"""Fuzzing the loaders with damaged copies of the fixtures: truncation at every record boundary, swapped
neighbouring records, and (hypothesis) bit flips, overwritten, inserted, deleted and duplicated bytes.

Whatever the damage, only paramctl's own errors may leave the library (opening the file, listing it, reading every
tensor, scanning it), and the CLI exits 0, 1 or 2 without an internal error.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import FIXTURES
from typer.testing import CliRunner

import paramctl
from paramctl import reader
from paramctl.cli import app
from paramctl.loaders import pytorch
from paramctl.ops.listing import list_tree
from paramctl.ops.scan import scan
from paramctl.registry import probe_file

runner = CliRunner()
ALL_FIXTURES = sorted(p.name for p in FIXTURES.iterdir() if p.suffix in (".pt", ".safetensors", ".npz"))
BOUNDARY_FIXTURES = [
    "mlp.pt", "train_ckpt.pt", "tied_mlp_legacy.pt", "dtypes.pt", "mlp.safetensors", "dtypes.safetensors",
    "tied_mlp.safetensors", "mlp.npz", "dtypes.npz",
]  # fmt: skip


def record_boundaries(data: bytes) -> list[int]:
    """Where the format's records start and end: zip headers, member data and central directory entries (and
    each .npy header's end); a safetensors header and each tensor's bytes; the legacy format's pickles and
    storage records."""
    found = {0, len(data)}
    if data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(_bytes_file(data)) as archive:
            for info in archive.infolist():
                name_length, extra_length = struct.unpack_from("<HH", data, info.header_offset + 26)
                start = info.header_offset + 30 + name_length + extra_length
                found |= {info.header_offset, start, start + info.compress_size}
                if info.filename.endswith(".npy"):
                    header_length = struct.unpack_from("<H", data, start + 8)[0]
                    found.add(start + 10 + header_length)
        position = 0
        while (position := data.find(b"PK\x01\x02", position)) >= 0:
            found.add(position)
            position += 4
        found.add(data.rfind(b"PK\x05\x06"))
    elif data[8:9] == b"{":
        length = int.from_bytes(data[:8], "little")
        found |= {8, 8 + length}
        for entry in json.loads(data[8 : 8 + length]).values():
            if isinstance(entry, dict) and "data_offsets" in entry:
                found |= {8 + length + offset for offset in entry["data_offsets"]}
    else:
        path = _temp_copy(data)
        scans = pytorch.LOADER.pickles(probe_file(path))
        found |= {s.start for s in scans} | {s.end for s in scans if s.end is not None}
        tree = paramctl.open(path)
        for _, tensor in tree.tensors():
            byte_range = tensor.storage.data
            found |= {byte_range.offset - 8, byte_range.offset, byte_range.offset + byte_range.nbytes}
    return sorted(b for b in found if 0 <= b <= len(data))


def damaged_copies(data: bytes) -> list[tuple[str, bytes]]:
    """Truncations at (and one byte around) every boundary, and every pair of neighbouring records swapped."""
    bounds = record_boundaries(data)
    copies = []
    for b in bounds:
        for cut in {b - 1, b, b + 1}:
            if 0 <= cut < len(data):
                copies.append((f"truncated at {cut}", data[:cut]))
    for first, middle, last in zip(bounds, bounds[1:], bounds[2:]):
        if first < middle < last:
            swapped = data[:first] + data[middle:last] + data[first:middle] + data[last:]
            copies.append((f"records [{first}, {middle}) and [{middle}, {last}) swapped", swapped))
    return copies


def exercise(path: Path) -> None:
    """Everything a command does with a file; any exception but a ParamctlError fails the test."""
    try:
        tree = paramctl.open(path)
    except paramctl.ParamctlError:
        pass
    else:
        json.dumps(list_tree(tree).as_json(), allow_nan=False)
        for _, tensor in tree.tensors():
            try:
                for _chunk in reader.chunks(tensor):
                    pass
            except paramctl.ParamctlError:
                pass
    with contextlib.suppress(paramctl.ParamctlError):
        json.dumps(scan(str(path)).as_json(), allow_nan=False)


@pytest.mark.parametrize("name", BOUNDARY_FIXTURES)
def test_truncated_and_swapped_records(name: str, tmp_path: Path):
    original = (FIXTURES / name).read_bytes()
    copies = damaged_copies(original)
    assert len(copies) >= 10
    target = tmp_path / name
    for description, data in copies:
        target.write_bytes(data)
        try:
            exercise(target)
        except Exception as error:
            raise AssertionError(f"{name} {description}: {type(error).__name__}: {error}") from error


@pytest.mark.parametrize("name", ["mlp.pt", "tied_mlp_legacy.pt", "mlp.safetensors", "mlp.npz"])
def test_cli_on_truncated_records(name: str, tmp_path: Path):
    original = (FIXTURES / name).read_bytes()
    target = tmp_path / name
    for index, (description, data) in enumerate(damaged_copies(original)[::4]):
        target.write_bytes(data)
        for command in (["ls", "--json"], ["scan"]) if index % 2 else (["ls"], ["scan", "--json"]):
            result = runner.invoke(app, [*command, str(target)])
            assert result.exit_code in (0, 1, 2), (description, command, result.exception)
            assert "internal error" not in result.stderr, (description, command, result.stderr)
            if result.exit_code == 2:
                assert len(result.stderr.splitlines()) == 1, (description, result.stderr)


@pytest.mark.parametrize("loader", ["torch", "safetensors", "npz"])
def test_every_loader_forced_on_every_fixture(loader: str):
    """`--format` skips sniffing: a loader handed another format's file still fails with a paramctl error."""
    for name in ALL_FIXTURES:
        path = FIXTURES / name
        for attempt, argument in ((paramctl.open, path), (scan, str(path))):
            try:
                attempt(argument, loader)  # type: ignore[operator]
            except paramctl.ParamctlError:
                pass
            except Exception as error:
                raise AssertionError(f"--format {loader} {name}: {type(error).__name__}: {error}") from error


# -- hypothesis ----------------------------------------------------------------------------------------------------

_WORK = Path(tempfile.mkdtemp(prefix="paramctl-fuzz-"))


@pytest.fixture(scope="module", autouse=True)
def _cleanup():
    yield
    shutil.rmtree(_WORK, ignore_errors=True)


def _mutate(data: bytes, draw: st.DrawFn) -> bytes:
    buffer = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "byte", "insert", "delete", "duplicate", "truncate"]))
        if not buffer:
            break
        # Half the damage goes to the first and last kilobyte: headers, pickles and zip directories live there.
        where = draw(
            st.one_of(
                st.integers(0, len(buffer) - 1),
                st.integers(0, min(1023, len(buffer) - 1)),
                st.integers(max(0, len(buffer) - 1024), len(buffer) - 1),
            )
        )
        if kind == "flip":
            buffer[where] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            buffer[where] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif kind == "insert":
            buffer[where:where] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del buffer[where : where + draw(st.integers(1, 16))]
        elif kind == "duplicate":
            span = draw(st.integers(1, 64))
            buffer[where:where] = buffer[where : where + span]
        else:
            del buffer[where:]
    return bytes(buffer)


@st.composite
def damaged(draw: st.DrawFn) -> tuple[str, bytes]:
    name = draw(st.sampled_from(ALL_FIXTURES))
    return name, _mutate((FIXTURES / name).read_bytes(), draw)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged())
def test_mutations_raise_only_paramctl_errors(case: tuple[str, bytes]):
    name, data = case
    path = _WORK / name
    path.write_bytes(data)
    exercise(path)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged())
def test_cli_exits_0_1_or_2(case: tuple[str, bytes]):
    name, data = case
    path = _WORK / f"cli-{name}"
    path.write_bytes(data)
    for command in (["ls", "--json"], ["scan", "--json"]):
        result = runner.invoke(app, [*command, str(path)])
        assert result.exit_code in (0, 1, 2), result.exception
        assert "internal error" not in result.stderr, result.stderr


def _bytes_file(data: bytes):  # type: ignore[no-untyped-def]
    import io

    return io.BytesIO(data)


def _temp_copy(data: bytes) -> Path:
    path = _WORK / "boundaries.pt"
    path.write_bytes(data)
    return path
