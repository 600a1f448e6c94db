"""Distributed checkpoints (torch.distributed.checkpoint folders): names, shapes, dtypes and values against torch's
own readings (the consolidated `dcp_to_torch_save` oracle, torch's reader on each folder, and the safetensors
library for the safetensors variant), across 1, 2 and 4 writers; chunk locations against torch's metadata; listing
without reading any chunk; the `Blocks` reader on generated tilings; every command; hostile and broken folders."""

from __future__ import annotations

import functools
import importlib
import io
import json
import math
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import FIXTURES, raw_bytes, reference_flatten, torch_bytes, torch_dtype_name
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torch.distributed.checkpoint.metadata import MetadataIndex, TensorStorageMetadata
from typer.testing import CliRunner

import paramctl
from paramctl import reader
from paramctl.cli import app
from paramctl.dtypes import BY_NAME
from paramctl.source import ByteSource, FileSource
from paramctl.tree import Block, Blocks, ByteRange, Storage, Tensor, Value, blocks_problem, contiguous_strides

DCP = FIXTURES / "dcp"
FOLDERS = sorted(path for path in DCP.iterdir() if path.is_dir())
FOLDER_NAME = re.compile(r"^(?P<model>.+)_(?P<ranks>\d)ranks(?P<safetensors>_safetensors)?$")
runner = CliRunner()


def model_of(folder: Path) -> str:
    match = FOLDER_NAME.match(folder.name)
    assert match, folder
    return match["model"]


def is_safetensors(folder: Path) -> bool:
    return folder.name.endswith("_safetensors")


def test_every_fixture_folder_is_here():
    names = {folder.name for folder in FOLDERS}
    for model in ("train", "tiny_lm", "dtypes"):
        assert {f"{model}_{n}ranks" for n in (1, 2, 4)} <= names
        assert (DCP / f"{model}_consolidated.pt").is_file()
    assert {f"{model}_{n}ranks_safetensors" for model in ("train", "dtypes") for n in (1, 2, 4)} <= names


# --------------------------------------------------------------------------- references (torch, safetensors)


@functools.cache
def oracle(model: str) -> dict[str, Any]:
    """The consolidated state dict dcp_to_torch_save wrote, flattened by the documented naming rule."""
    return reference_flatten(torch.load(DCP / f"{model}_consolidated.pt", weights_only=True))


def torch_metadata(folder: Path) -> Any:
    """torch's own Metadata object (a trusted fixture: torch itself reads it with pickle.load)."""
    with open(folder / ".metadata", "rb") as handle:
        return pickle.load(handle)


@functools.cache
def torch_reading(folder: Path) -> dict[str, Any]:
    """The folder as torch reads it: its own reader (dcp_to_torch_save) for the default format; for the
    safetensors variant (which torch 2.13's FileSystemReader cannot read back), each chunk from the safetensors
    library at its recorded blob, placed at the offsets DCP recorded in the blob's metadata."""
    if not is_safetensors(folder):
        target = Path(os.environ.get("TMPDIR", "/tmp")) / f"paramctl-dcp-{os.getpid()}-{folder.name}.pt"
        try:
            dcp_to_torch_save(folder, target)
            return reference_flatten(torch.load(target, weights_only=True))
        finally:
            target.unlink(missing_ok=True)
    meta = torch_metadata(folder)
    flat: dict[str, Any] = {}
    for fqn, item in meta.state_dict_metadata.items():
        if not isinstance(item, TensorStorageMetadata):
            info = meta.storage_data[MetadataIndex(fqn)]
            data = (folder / info.relative_path).read_bytes()[info.offset : info.offset + info.length]
            flat.update(reference_flatten(torch.load(io.BytesIO(data), weights_only=False), tuple(fqn.split("."))))
            continue
        whole = torch.zeros(tuple(item.size), dtype=item.properties.dtype)
        for chunk in item.chunks:
            info = meta.storage_data[MetadataIndex(fqn, chunk.offsets)]
            blob = (folder / info.relative_path).read_bytes()[info.offset :]
            (header_size,) = struct.unpack("<Q", blob[:8])
            sharding = json.loads(json.loads(blob[8 : 8 + header_size])["__metadata__"]["DCP_SHARDING_INFO"])
            assert sharding[fqn]["saved_offsets"] == list(chunk.offsets)
            piece = safetensors.torch.load(blob)[fqn]
            assert tuple(piece.shape) == tuple(chunk.sizes)
            whole[tuple(slice(o, o + n) for o, n in zip(chunk.offsets, chunk.sizes))] = piece
        flat[fqn] = whole
    return flat


def paramctl_values(folder: Path, chunk_elements: int | None = None) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """name -> (dtype, shape, row-major bytes) as paramctl reads the folder, chunk by chunk."""
    out = {}
    for name, tensor in paramctl.open(folder).tensors():
        pieces = list(reader.chunks(tensor, chunk_elements))
        values = np.concatenate(pieces) if pieces else np.empty(0, reader.array(tensor).dtype)
        out[name] = (tensor.dtype.name, tensor.shape, raw_bytes(values))
    return out


def assert_same(folder: Path, expected: dict[str, Any], chunk_elements: int | None = None) -> None:
    tree = paramctl.open(folder)
    ours = paramctl_values(folder, chunk_elements)
    assert set(name for name, _ in tree) == set(expected)
    for name, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert ours[name] == (torch_dtype_name(value), tuple(value.shape), torch_bytes(value)), name
        else:
            leaf = tree[name]
            assert isinstance(leaf, Value) and leaf.value == value, name


# --------------------------------------------------------------------------- values against the references


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_names_shapes_dtypes_and_values_equal_the_consolidated_oracle(folder: Path):
    expected = dict(oracle(model_of(folder)))
    if is_safetensors(folder) and model_of(folder) == "dtypes":
        del expected["c64"]  # safetensors has no complex type: the generator leaves it out
    assert_same(folder, expected)


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_values_equal_torchs_own_reading_of_the_folder(folder: Path):
    assert_same(folder, torch_reading(folder), chunk_elements=3)  # chunks that straddle the ranks' chunks


def test_the_fixtures_hold_real_multi_chunk_tensors():
    """The sharding the generator promises: 2-D grids on 4 ranks, column splits and empty chunks on 2."""
    grid = torch_metadata(DCP / "train_4ranks").state_dict_metadata["model.0.weight"]
    assert sorted(tuple(c.offsets) for c in grid.chunks) == [(0, 0), (0, 2), (4, 0), (4, 2)]
    columns = torch_metadata(DCP / "train_2ranks").state_dict_metadata["model.2.weight"]
    assert sorted(tuple(c.offsets) for c in columns.chunks) == [(0, 0), (0, 4)]
    bias = torch_metadata(DCP / "train_2ranks").state_dict_metadata["model.2.bias"]
    assert sorted(tuple(c.sizes) for c in bias.chunks) == [(0,), (1,)]
    files = {p.name for p in (DCP / "train_4ranks").iterdir()}
    assert files == {".metadata", "__0_0.distcp", "__1_0.distcp", "__2_0.distcp", "__3_0.distcp"}


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_json_lists_every_chunk_where_torchs_metadata_puts_it(folder: Path):
    result = runner.invoke(app, ["ls", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.output)
    meta = torch_metadata(folder)
    assert listing["format"] == "dcp" and listing["metadata"]["version"] == meta.version
    chunks, records, files = listing["metadata"]["chunks"], listing["metadata"]["records"], set()
    for fqn, item in meta.state_dict_metadata.items():
        if isinstance(item, TensorStorageMetadata):
            expected = []
            for chunk in item.chunks:
                info = meta.storage_data[MetadataIndex(fqn, chunk.offsets)]
                files.add(info.relative_path)
                expected.append(
                    {
                        "file": info.relative_path,
                        "offset": info.offset,
                        "length": info.length,
                        "offsets": list(chunk.offsets),
                        "sizes": list(chunk.sizes),
                    }
                )
            assert chunks[fqn] == expected
            row = next(t for t in listing["tensors"] if t["name"] == fqn)
            assert row["shape"] == list(item.size) and row["dtype"] == torch_dtype_name(
                torch.empty(0, dtype=item.properties.dtype)
            )
        else:
            info = meta.storage_data[MetadataIndex(fqn)]
            files.add(info.relative_path)
            assert records[fqn] == {"file": info.relative_path, "offset": info.offset, "length": info.length}
    assert set(listing["metadata"]["files"]) == files


def test_listing_reads_the_metadata_and_value_records_only(monkeypatch: pytest.MonkeyPatch):
    """`ls` never touches a tensor chunk: every byte it reads from a rank file lies inside a value's record."""
    folder = DCP / "train_4ranks"
    reads: list[tuple[str, int, int]] = []
    original = FileSource.view

    def logged(self: FileSource, offset: int, length: int) -> memoryview:
        reads.append((self.name, offset, length))
        return original(self, offset, length)

    monkeypatch.setattr(FileSource, "view", logged)
    result = runner.invoke(app, ["ls", str(folder)])
    assert result.exit_code == 0 and "step = 7" in result.output
    meta = torch_metadata(folder)
    allowed = [
        (str(folder / info.relative_path), info.offset, info.offset + info.length)
        for index, info in meta.storage_data.items()
        if index.offset is None
    ]
    rank_reads = [r for r in reads if not r[0].endswith(".metadata")]
    assert rank_reads, "the value records are read"
    for name, offset, length in rank_reads:
        assert any(name == n and lo <= offset and offset + length <= hi for n, lo, hi in allowed), (name, offset)


def test_blocks_load_only_when_read_and_only_those_a_read_touches():
    tree = paramctl.open(DCP / "train_2ranks")
    tensor = tree["model.0.weight"]  # (8, 4) split by rows: [0:4] and [4:8]
    assert isinstance(tensor, Tensor) and isinstance(tensor.storage.data, Blocks)
    blocks = sorted(tensor.storage.data.blocks, key=lambda b: b.offsets)
    assert not any(b.loaded for b in blocks)
    first_rows = reader.Chunk(tensor, 0, 8).read()
    assert [b.loaded for b in blocks] == [True, False]
    assert not first_rows.flags.owndata  # inside one chunk: a view of the rank file, not a copy
    assert raw_bytes(first_rows) == torch_bytes(oracle("train")["model.0.weight"].reshape(-1)[:8])


def test_tensors_are_never_falsely_tied():
    for folder in FOLDERS:
        tree = paramctl.open(folder)
        storages = [id(t.storage) for _, t in tree.tensors()]
        assert len(storages) == len(set(storages)), folder
        result = runner.invoke(app, ["ties", str(folder), "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["groups"] == [], folder


# --------------------------------------------------------------------------- the Blocks reader on generated tilings


class MemorySource(ByteSource):
    """Bytes in memory as a ByteSource (a block's own storage in these tests)."""

    def __init__(self, data: bytes, name: str = "memory") -> None:
        self.data, self.size, self.name = data, len(data), name

    def view(self, offset: int, length: int) -> memoryview:
        self.check_range(offset, length, "a read")
        return memoryview(self.data)[offset : offset + length]


def blocked(whole: np.ndarray, cuts: list[list[int]], fortran: set[int], dtype: str) -> Tensor:
    """`whole` as a tensor whose storage is a Blocks grid cut at `cuts`; blocks numbered in `fortran` store their
    values column-major (a non-contiguous block tensor)."""
    blocks = []
    grid = [list(zip([0, *c], [*c, n])) for c, n in zip(cuts, whole.shape)]
    for number, box in enumerate(np.ndindex(*[len(g) for g in grid]) if grid else [()]):
        bounds = [grid[axis][i] for axis, i in enumerate(box)]
        values = whole[tuple(slice(lo, hi) for lo, hi in bounds)]
        sizes = tuple(hi - lo for lo, hi in bounds)
        column_major = number in fortran and values.ndim > 1
        data = (np.asfortranarray(values) if column_major else np.ascontiguousarray(values)).tobytes(order="A")
        strides = contiguous_strides(sizes[::-1])[::-1] if column_major else contiguous_strides(sizes)
        storage = Storage(f"block{number}", len(data), ByteRange(MemorySource(data), 0, len(data)))
        part = Tensor(BY_NAME[dtype], sizes, strides, storage)
        blocks.append(Block(tuple(lo for lo, _ in bounds), sizes, lambda part=part: part))
    blocks.reverse()  # file order need not be row-major order
    nbytes = whole.size * whole.dtype.itemsize
    storage = Storage("whole", nbytes, Blocks(whole.shape, tuple(blocks)))
    return Tensor(BY_NAME[dtype], whole.shape, contiguous_strides(whole.shape), storage)


@st.composite
def tilings(draw: Any) -> tuple[np.ndarray, Tensor]:
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=0, max_size=3)))
    cuts = [sorted(draw(st.sets(st.integers(1, n - 1), max_size=3))) if n > 1 else [] for n in shape]
    dtype = draw(st.sampled_from(["int32", "float16", "bfloat16"]))
    whole = np.arange(math.prod(shape), dtype=np.int32).reshape(shape)
    whole = whole.astype(reader.numpy_dtype(BY_NAME[dtype]))
    fortran = draw(st.sets(st.integers(0, 63), max_size=8))
    return whole, blocked(whole, cuts, fortran, dtype)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tilings(), st.integers(1, 40))
def test_chunks_of_a_tiling_are_the_row_major_values(case: tuple[np.ndarray, Tensor], size: int):
    whole, tensor = case
    assert blocks_problem(tensor.shape, tensor.storage.data.blocks) is None
    pieces = [piece.copy() for piece in reader.chunks(tensor, size)]
    got = np.concatenate(pieces) if pieces else np.empty(0, whole.dtype)
    assert raw_bytes(got) == raw_bytes(whole)
    assert raw_bytes(reader.array(tensor)) == raw_bytes(whole)
    for chunk in reader.plan(tensor, size) or []:
        chunk.release()
    reader.release(tensor)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tilings(), st.data())
def test_windows_and_strided_views_of_a_tiling(case: tuple[np.ndarray, Tensor], data: st.DataObject):
    whole, tensor = case
    if whole.ndim:  # a transposed view over the same Blocks storage, read chunk by chunk
        view = Tensor(tensor.dtype, tensor.shape[::-1], tensor.strides[::-1], tensor.storage)
        pieces = [piece.copy() for piece in reader.chunks(view, 5)]
        got = np.concatenate(pieces) if pieces else np.empty(0, whole.dtype)
        assert raw_bytes(got) == raw_bytes(whole.T)
    index, offset, shape, strides = [], 0, [], []
    for n, stride in zip(whole.shape, tensor.strides):
        if n == 0:
            index.append(slice(None))
            shape.append(0)
            strides.append(stride)
            continue
        step = data.draw(st.sampled_from([1, 2, 3, -1, -2]))
        start = data.draw(st.integers(0, n - 1))
        count = data.draw(st.integers(1, len(range(start, -1 if step < 0 else n, step))))
        index.append(slice(start, start + step * count if start + step * count >= 0 else None, step))
        offset += start * stride
        shape.append(count)
        strides.append(step * stride)
    window = reader.window(tensor, offset, tuple(shape), tuple(strides))
    assert raw_bytes(window) == raw_bytes(whole[tuple(index)])


def test_blocks_problem_names_overlaps_gaps_and_strays():
    def block(offsets: tuple[int, ...], sizes: tuple[int, ...]) -> Block:
        return Block(offsets, sizes, lambda: None)  # type: ignore[arg-type,return-value]

    shape = (4, 4)
    halves = [block((0, 0), (2, 4)), block((2, 0), (2, 4))]
    assert blocks_problem(shape, halves) is None
    assert "overlap" in blocks_problem(shape, [block((0, 0), (3, 4)), block((2, 0), (2, 4))], "chunk")
    assert "leave 8 of the 16 elements" in blocks_problem(shape, halves[:1])
    assert "outside" in blocks_problem(shape, [block((0, 0), (2, 4)), block((3, 0), (2, 4))])
    assert "dimensions" in blocks_problem(shape, [block((0,), (16,))])
    grid = [block((r, c), (2, 2)) for r in (0, 2) for c in (0, 2)]
    assert blocks_problem(shape, grid) is None
    assert "overlap" in blocks_problem(shape, [*grid, block((1, 1), (1, 1))])
    assert blocks_problem((), [block((), ())]) is None
    assert "overlap" in blocks_problem((), [block((), ()), block((), ())])
    assert blocks_problem((0, 3), [block((0, 0), (0, 2)), block((0, 2), (0, 1))]) is None


# --------------------------------------------------------------------------- commands


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    if tensor.dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
        return tensor.to(torch.float64).numpy()
    return tensor.numpy()


@pytest.mark.parametrize("name", ["train_1ranks", "train_4ranks_safetensors", "tiny_lm_2ranks", "dtypes_4ranks"])
def test_diff_against_the_consolidated_file_is_equal(name: str):
    folder = DCP / name
    result = runner.invoke(app, ["diff", str(folder), str(DCP / f"{model_of(folder)}_consolidated.pt")])
    assert result.exit_code == 0, result.output
    assert "equal" in result.output


def test_diff_between_different_numbers_of_ranks_and_formats_is_equal():
    for a, b in [("train_1ranks", "train_4ranks"), ("train_2ranks_safetensors", "train_4ranks"),
                 ("dtypes_1ranks", "dtypes_2ranks"), ("tiny_lm_4ranks", "tiny_lm_2ranks")]:  # fmt: skip
        result = runner.invoke(app, ["diff", str(DCP / a), str(DCP / b), "--json"])
        assert result.exit_code == 0, (a, b, result.output)


def test_diff_finds_a_changed_element(tmp_path: Path):
    """A folder saved by DCP (in this process) from the oracle with one element changed."""
    import torch.distributed.checkpoint as dcp

    state = torch.load(DCP / "train_consolidated.pt", weights_only=True)
    state["model"]["0.weight"][5, 3] += 0.25
    changed = tmp_path / "changed"
    dcp.save(state, checkpoint_id=changed, no_dist=True)
    result = runner.invoke(app, ["diff", str(DCP / "train_4ranks"), str(changed), "--json"])
    assert result.exit_code == 1, result.output
    changed = json.loads(result.output)["changed"]
    assert [(c["name"], c["reason"], c["mismatched"]) for c in changed] == [("model.0.weight", "values", 1)]
    delta = (state["model"]["0.weight"].double() - oracle("train")["model.0.weight"].double()).abs().max().item()
    assert math.isclose(changed[0]["max_abs"], delta, rel_tol=1e-12)


@pytest.mark.parametrize("name", ["train_4ranks", "dtypes_2ranks", "dtypes_4ranks_safetensors"])
def test_stat_matches_numpy_on_the_oracle(name: str):
    folder = DCP / name
    result = runner.invoke(app, ["stat", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    expected = oracle(model_of(folder))
    for row in json.loads(result.output)["tensors"]:
        values = as_numpy(expected[row["name"]])
        assert row["numel"] == values.size
        if values.size and values.dtype.kind in "fiu":
            x = values.astype(np.float64)
            assert row["min"] == x.min() and row["max"] == x.max(), row["name"]
            assert math.isclose(row["mean"], x.mean(), rel_tol=1e-12, abs_tol=1e-12), row["name"]


def test_show_reads_a_selection_across_chunks():
    expected = oracle("train")["model.0.weight"]
    for name in ("train_4ranks", "train_2ranks", "train_1ranks_safetensors"):
        result = runner.invoke(
            app, ["show", str(DCP / name), "model.0.weight[1:7, 2]", "model.0.weight[::-3]", "--json"]
        )
        assert result.exit_code == 0, result.output
        column, rows = (s["values"] for s in json.loads(result.output)["selections"])
        assert column == expected[1:7, 2].tolist() and rows == expected.numpy()[::-3].tolist()


def test_show_of_every_dtype():
    expected = oracle("dtypes")
    result = runner.invoke(
        app, ["show", str(DCP / "dtypes_4ranks"), "f64", "bf16", "i64", "bool", "base[:, 1:5]", "--json"]
    )
    assert result.exit_code == 0, result.output
    selections = json.loads(result.output)["selections"]
    for selection, values in zip(selections, ["f64", "bf16", "i64", "bool", None]):
        reference = expected["base"][:, 1:5] if values is None else expected[values]
        assert selection["values"] == as_numpy(reference).tolist()


def test_ties_by_value_finds_the_tied_embedding():
    result = runner.invoke(app, ["ties", str(DCP / "tiny_lm_4ranks"), "--by", "value", "--json"])
    assert result.exit_code == 0, result.output
    groups = [sorted(m["name"] for m in g["members"]) for g in json.loads(result.output)["groups"]]
    assert ["model.embed.weight", "model.lm_head.weight"] in groups
    expected = oracle("tiny_lm")
    for group in groups:
        first = expected[group[0]]
        assert all(torch.equal(expected[name], first) for name in group)


def test_scan_reports_the_metadata_and_records():
    result = runner.invoke(app, ["scan", str(DCP / "train_2ranks"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["format"] == "dcp" and report["valid"] and not report["dangerous"]
    records = [p["record"] for p in report["pickles"]]
    assert records[0] == ".metadata" and any(r.startswith("__1_0.distcp@") for r in records)
    assert any("pickle.load" in note for note in report["notes"])


def test_reading_needs_no_torch():
    code = (
        "import sys, numpy as np, paramctl\n"
        "from paramctl import reader\n"
        f"tree = paramctl.open({str(DCP / 'train_4ranks')!r})\n"
        "for _, t in tree.tensors():\n"
        "    [c.sum() for c in reader.chunks(t, 5)]\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- hostile and broken folders


def copy_of(tmp_path: Path, name: str = "train_2ranks") -> Path:
    return Path(shutil.copytree(DCP / name, tmp_path / name))


def rewrite_metadata(folder: Path, change: Any) -> None:
    meta = torch_metadata(folder)
    change(meta)
    with open(folder / ".metadata", "wb") as handle:
        pickle.dump(meta, handle)


def one_line_error(args: list[str]) -> str:
    result = subprocess.run([sys.executable, "-m", "paramctl", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("where", ["root", "version"])
def test_a_metadata_payload_runs_nothing_and_is_refused(tmp_path: Path, where: str):
    folder = copy_of(tmp_path)
    marker = tmp_path / "pwned"
    if where == "root":
        (folder / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    else:
        rewrite_metadata(folder, lambda meta: setattr(meta, "version", Payload(marker)))
    line = one_line_error(["ls", str(folder)])
    assert ".metadata" in line and "system" in line and "nothing was executed" in line
    one_line_error(["stat", str(folder)])
    assert not marker.exists()
    result = subprocess.run([sys.executable, "-m", "paramctl", "scan", str(folder), "--json"], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 1, result.stderr  # dangerous
    report = json.loads(result.stdout)
    assert any(g["class"] == "dangerous" and g["name"] == "system" for g in report["globals"])
    assert not marker.exists()


def test_a_chunk_range_outside_its_file(tmp_path: Path):
    folder = copy_of(tmp_path)

    def lie(meta: Any) -> None:
        info = meta.storage_data[MetadataIndex("model.0.weight", (4, 0))]
        info.offset = (folder / info.relative_path).stat().st_size - 10

    rewrite_metadata(folder, lie)
    line = one_line_error(["ls", str(folder)])
    assert "__1_0.distcp" in line and "chunk [4, 0] of tensor model.0.weight lies outside the file" in line


def test_a_chunk_record_pointing_at_the_wrong_bytes(tmp_path: Path):
    """Inside the file, so listing works; reading the chunk finds no archive there."""
    folder = copy_of(tmp_path)
    rewrite_metadata(folder, lambda meta: setattr(meta.storage_data[MetadataIndex("model.0.weight", (4, 0))],
                                                  "offset", 100))  # fmt: skip
    assert runner.invoke(app, ["ls", str(folder)]).exit_code == 0
    line = one_line_error(["stat", str(folder)])
    assert "__1_0.distcp" in line and "model.0.weight" in line


def test_overlapping_chunks(tmp_path: Path):
    folder = copy_of(tmp_path)
    rewrite_metadata(folder, lambda meta: setattr(meta.state_dict_metadata["model.0.weight"].chunks[0], "sizes",
                                                  torch.Size([5, 4])))  # fmt: skip
    line = one_line_error(["ls", str(folder)])
    assert str(folder) in line and "tensor model.0.weight: storage model.0.weight: blocks at" in line
    assert "overlap" in line


def test_chunks_that_do_not_cover_the_shape(tmp_path: Path):
    folder = copy_of(tmp_path)
    rewrite_metadata(folder, lambda meta: meta.state_dict_metadata["model.0.weight"].chunks.pop())
    line = one_line_error(["ls", str(folder)])
    assert "tensor model.0.weight" in line and "leave 16 of the 32 elements" in line


def test_a_missing_rank_file(tmp_path: Path):
    folder = copy_of(tmp_path)
    (folder / "__1_0.distcp").unlink()
    line = one_line_error(["ls", str(folder)])
    assert "__1_0.distcp: no such file (the rank file holding" in line


def test_a_file_name_leading_out_of_the_folder(tmp_path: Path):
    folder = copy_of(tmp_path)
    rewrite_metadata(folder, lambda meta: setattr(meta.storage_data[MetadataIndex("step")], "relative_path",
                                                  "../train_consolidated.pt"))  # fmt: skip
    line = one_line_error(["ls", str(folder)])
    assert "'../train_consolidated.pt', which climbs out of the folder with '..'" in line


def test_an_unreadable_value_record_is_a_placeholder_with_its_size(tmp_path: Path):
    folder = copy_of(tmp_path)
    info = torch_metadata(folder).storage_data[MetadataIndex("step")]
    with open(folder / info.relative_path, "r+b") as handle:
        handle.seek(info.offset)
        handle.write(b"\0" * info.length)
    result = runner.invoke(app, ["ls", str(folder)])
    assert result.exit_code == 0, result.output
    assert f"step = <<unreadable record>> ({info.length:,} bytes at {info.relative_path}@{info.offset}" in result.output


def test_a_truncated_metadata(tmp_path: Path):
    folder = copy_of(tmp_path)
    data = (folder / ".metadata").read_bytes()
    (folder / ".metadata").write_bytes(data[: len(data) // 2])
    line = one_line_error(["ls", str(folder)])
    assert ".metadata" in line and "truncated" in line


# --------------------------------------------------------------------------- regeneration


def test_regenerated_fixtures_hold_the_same_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """fixtures/generate_dcp.py (2 processes only, to keep this quick) writes the committed values again."""
    monkeypatch.syspath_prepend(str(FIXTURES))  # by name: the spawned processes import it to find their function
    module = importlib.import_module("generate_dcp")
    written = module.generate_dcp(tmp_path, world_sizes=(2,))
    assert {p.name for p in written} == {p.name for p in FOLDERS if "_2ranks" in p.name}
    for folder in written:
        fresh, committed = torch_reading(folder), torch_reading(DCP / folder.name)
        assert fresh.keys() == committed.keys()
        for name, value in committed.items():
            if isinstance(value, torch.Tensor):
                assert torch_bytes(fresh[name]) == torch_bytes(value) and fresh[name].dtype == value.dtype, name
            else:
                assert fresh[name] == value, name
