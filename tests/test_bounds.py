"""Bounded by construction: folder loaders open nothing outside their folder, the tree walk is bounded by an explicit
depth and size budget (never by Python's recursion limit), and registry.open validates every tensor's layout for
every loader, a plugin's included. Every hostile input is built here."""

from __future__ import annotations

import builtins
import io
import json
import os
import pickle
import shutil
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hostile as h
import numpy as np
import pytest
import tensorstore as ts
import torch
from reference import FIXTURES, torch_bytes
from safetensors.numpy import save_file
from torch.distributed.checkpoint.metadata import MetadataIndex
from typer.testing import CliRunner

import paramctl
from paramctl import paths, reader, registry
from paramctl.cli import app
from paramctl.errors import CorruptFileError
from paramctl.tree import MAX_DEPTH, OpaqueObject, TooDeepError, TooLargeError, flatten

runner = CliRunner()
OLD = 978_307_200  # 2001-01-01: a victim's atime and mtime, so a read under relatime moves its atime


def one_line_exit_2(args: list[str], *named: str) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.stderr
    for text in named:
        assert text in lines[0], (text, lines[0])
    return lines[0]


# --------------------------------------------------------------------------------------------- folder keys


@pytest.mark.parametrize(
    "key",
    ["/etc/passwd", "..", "../x", "a/../../x", "a//b", "a/", "./a", "", "a\\b", "..\\x", "C:x", "c:\\x",
     "https://elsewhere/x", "hf://org/repo", "simplecache::s3://b/x", "x\x00y", 3, None],
)  # fmt: skip
def test_keys_that_leave_the_folder_are_refused(key: Any):
    assert paths.key_problem(key) is not None
    if isinstance(key, str):
        with pytest.raises(ValueError):
            paths.inside(Path("/folder"), key)


@pytest.mark.parametrize("key", ["model.safetensors", "sub/model-00001-of-00002.bin", "params.Dense:0.kernel", "a..b"])
def test_plain_relative_keys_stay_inside(key: str):
    assert paths.key_problem(key) is None
    assert paths.inside(Path("/folder"), key) == Path("/folder", *key.split("/"))


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every path the process stats or opens, and every tensorstore spec it opens, while the test runs."""
    seen: list[str] = []
    real_open, real_stat, real_io_open, real_ts_open = os.open, os.stat, io.open, ts.open

    def spy_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else repr(path))
        return real_open(path, *args, **kwargs)

    def spy_stat(path: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else repr(path))
        return real_stat(path, *args, **kwargs)

    def spy_io_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(os.fsdecode(file) if isinstance(file, (str, bytes, os.PathLike)) else repr(file))
        return real_io_open(file, *args, **kwargs)

    def spy_ts_open(spec: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(json.dumps(spec))
        return real_ts_open(spec, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "stat", spy_stat)
    monkeypatch.setattr(builtins, "open", spy_io_open)
    monkeypatch.setattr(io, "open", spy_io_open)
    monkeypatch.setattr(ts, "open", spy_ts_open)
    yield seen


def victim_files(victim: Path) -> list[Path]:
    """The victim's regular files: listing a folder moves the folder's own atime, reading a file moves the file's."""
    return sorted(p for p in victim.rglob("*") if p.is_file()) if victim.is_dir() else [victim]


def make_old(victim: Path) -> None:
    for path in victim_files(victim):
        os.utime(path, (OLD, OLD))


def atimes(victim: Path) -> list[int]:
    return [int(p.stat().st_atime) for p in victim_files(victim)]


def assert_untouched(victim: Path, seen: list[str]) -> None:
    """Nothing asked for the victim (no open, stat or tensorstore spec names it), and its atime did not move."""
    assert not [entry for entry in seen if str(victim) in entry], seen
    assert set(atimes(victim)) == {OLD}


def test_sharded_shard_names_cannot_reach_outside(tmp_path: Path, opened: list[str]):
    victim = tmp_path / "victim.safetensors"
    save_file({"secret": np.arange(4, dtype=np.float32)}, victim)
    folder = tmp_path / "model"
    folder.mkdir()
    index = folder / "model.safetensors.index.json"
    shutil.copy(victim, folder / "inside.safetensors")
    index.write_text(json.dumps({"weight_map": {"secret": "inside.safetensors"}}))
    assert runner.invoke(app, ["ls", str(index)]).exit_code == 0  # the same index, the shard inside: it reads
    for name in (str(victim), "../victim.safetensors", "sub/../../victim.safetensors", "..\\victim.safetensors"):
        index.write_text(json.dumps({"weight_map": {"secret": name}}))
        make_old(victim)
        opened.clear()
        one_line_exit_2(["ls", str(index)], str(index), repr(name), "not a relative path inside the index's folder")
        one_line_exit_2(["stat", str(folder)], str(index), repr(name))
        assert_untouched(victim, opened)


def dcp_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / "dcp" / "train_2ranks", tmp_path / "step"))


def point_rank_file(folder: Path, rank_file: str, name: str) -> None:
    """Make every record that lies in `rank_file` name `name` instead (with torch's own Metadata classes)."""
    with open(folder / ".metadata", "rb") as handle:
        meta = pickle.load(handle)
    for info in meta.storage_data.values():
        if info.relative_path == rank_file:
            info.relative_path = name
    with open(folder / ".metadata", "wb") as handle:
        pickle.dump(meta, handle)


def test_dcp_storage_paths_cannot_reach_outside(tmp_path: Path, opened: list[str]):
    folder = dcp_copy(tmp_path)
    victim = tmp_path / "victim.distcp"
    shutil.copy(folder / "__1_0.distcp", victim)
    (folder / "__1_0.distcp").rename(folder / "renamed.distcp")
    point_rank_file(folder, "__1_0.distcp", "renamed.distcp")
    good = runner.invoke(app, ["stat", str(folder)])  # another name inside the folder: it reads
    assert good.exit_code == 0, good.output
    for name in (str(victim), "../victim.distcp", "renamed.distcp/../../victim.distcp"):
        point_rank_file(folder, _current_name(folder), name)
        make_old(victim)
        opened.clear()
        one_line_exit_2(["ls", str(folder)], str(folder / ".metadata"), repr(name), "not a file inside the folder")
        assert_untouched(victim, opened)


def _current_name(folder: Path) -> str:
    with open(folder / ".metadata", "rb") as handle:
        meta = pickle.load(handle)
    return meta.storage_data[MetadataIndex("model.0.weight", (4, 0))].relative_path


def zarr_array(path: Path, values: np.ndarray) -> None:
    """A zarr v2 array in files, as Orbax writes one without OCDBT."""
    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": f"{path}/"}}
    array = ts.open(spec, create=True, dtype=values.dtype.name, shape=values.shape).result()
    array.write(values).result()


def orbax_folder(folder: Path, key: str) -> Path:
    """An Orbax step folder without OCDBT whose one array is stored under `key` (as `_METADATA` names it)."""
    folder.mkdir(exist_ok=True)
    leaf = {"key_metadata": [{"key": key, "key_type": 2}], "value_metadata": {"value_type": "np.ndarray"}}
    metadata = {"tree_metadata": {f"('{key}',)": leaf}, "use_ocdbt": False, "use_zarr3": False}
    (folder / "_METADATA").write_text(json.dumps(metadata))
    (folder / "_CHECKPOINT_METADATA").write_text("{}")
    return folder


def test_orbax_keys_cannot_reach_outside(tmp_path: Path, opened: list[str]):
    values = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    victim = tmp_path / "victim"
    zarr_array(victim, values)
    folder = orbax_folder(tmp_path / "step", "w")
    zarr_array(folder / "w", values)
    tree = paramctl.open(folder)  # the same metadata, the array inside: it reads
    assert np.array_equal(reader.array(tree["w"]), values)
    for key in (str(victim), "../victim", "w/../../victim"):
        shutil.rmtree(folder)
        orbax_folder(folder, key)
        make_old(victim)
        opened.clear()
        one_line_exit_2(["ls", str(folder)], str(folder / "_METADATA"), "not a name inside the folder")
        assert_untouched(victim, opened)


# --------------------------------------------------------------------------------------------- the tree walk


def placeholder_chain(depth: int) -> OpaqueObject:
    """Placeholders each holding the next: every level sits at the same path."""
    node = OpaqueObject("m.C")
    for _ in range(depth - 1):
        node = OpaqueObject("m.C", node)
    return node


def test_a_placeholder_chain_is_bounded_by_depth_not_by_recursion():
    assert len(flatten(placeholder_chain(MAX_DEPTH))) == MAX_DEPTH
    with pytest.raises(TooDeepError, match=f"nesting deeper than {MAX_DEPTH} levels"):
        flatten(placeholder_chain(MAX_DEPTH + 2))
    limit = sys.getrecursionlimit()
    with pytest.raises(TooDeepError, match="nesting deeper"):
        flatten(placeholder_chain(limit * 20))


def test_deep_containers_and_long_names_are_refused():
    nested: Any = 1
    for _ in range(50_000):
        nested = {"a": nested}
    with pytest.raises(TooDeepError, match="nesting deeper"):
        flatten(nested)
    with pytest.raises(TooDeepError, match="nesting deeper"):
        flatten({".".join(["a"] * (MAX_DEPTH + 5)): 1})


def test_the_walk_has_a_size_budget():
    wide = [{"x": i} for i in range(1_000)]
    assert len(flatten(wide)) == 1_000
    with pytest.raises(TooLargeError, match="more than 1,000 nested elements"):
        flatten(wide, max_items=1_000)
    # A list referenced 100 times by a list referenced 100 times is looked at once per level, not 10^6 times.
    row = [0] * 100
    square = [row] * 100
    cube = [square] * 100
    assert flatten({"cube": cube}, max_items=1_000)[0][1].value is cube


def test_order_and_sharing_are_those_of_a_depth_first_walk():
    shared = {"k": 1}
    obj = {"a": [shared, OpaqueObject("m.C", {"b": 2, "c": [3, {"d": 4}]})], "e": shared, "f": (5, 6)}
    leaves = [
        (".".join(path), getattr(leaf, "value", None) or getattr(leaf, "note", None)) for path, leaf in flatten(obj)
    ]
    assert leaves == [
        ("a.0.k", 1), ("a.1", None), ("a.1.b", 2), ("a.1.c.0", 3), ("a.1.c.1.d", 4), ("e", "same object as a.0"),
        ("f", (5, 6)),
    ]  # fmt: skip


def test_a_pt_whose_pickle_chains_placeholders_is_exit_2(tmp_path: Path):
    """BUILD with a placeholder as the state of another, 100,000 times: each inside the one before, at one path."""
    count = 100_000
    pickled = b"\x80\x02" + (h.glob("m", "C") + b")\x81") * count + b"b" * (count - 1) + b"."
    path = h.torch_zip(tmp_path / "chain.pt", pickled)
    one_line_exit_2(["ls", str(path)], str(path), f"nesting deeper than {MAX_DEPTH} levels")


@pytest.fixture
def folder_loader(monkeypatch: pytest.MonkeyPatch) -> type:
    """A directory loader, registered first, whose loading exhausts a resource as hostile metadata can."""

    class Module:
        class LOADER:
            name = "exhausting"
            description = "a folder loader that recurses without end"
            error: type[BaseException] = RecursionError

            @classmethod
            def sniff_directory(cls, path: Path) -> bool:
                return (path / "EXHAUST").exists()

            @classmethod
            def load_directory(cls, path: Path) -> Any:
                raise cls.error("exhausted")

    monkeypatch.setitem(sys.modules, "exhausting_loader", Module)
    monkeypatch.setattr(registry, "BUILTIN_DIRECTORY_LOADERS", {"exhausting": "exhausting_loader"})
    return Module.LOADER


@pytest.mark.parametrize("error", [RecursionError, MemoryError])
def test_folder_loading_exhausting_a_resource_is_bad_input(tmp_path: Path, folder_loader: Any, error: type):
    folder_loader.error = error
    (tmp_path / "EXHAUST").write_text("")
    with pytest.raises(CorruptFileError, match=f"too large or too deeply nested to read \\({error.__name__}\\)"):
        paramctl.open(tmp_path)
    one_line_exit_2(["ls", str(tmp_path)], str(tmp_path), error.__name__)


# --------------------------------------------------------------------------------------------- layouts

PLUGIN = """
import numpy as np
from paramctl.dtypes import DType
from paramctl.tree import Block, Blocks, ByteRange, Storage, Stream, Tensor, Tree, contiguous_strides

F32 = DType("float32", 4, "<f4", "float32")

def tensor(source, shape, strides=None, offset=0, nbytes=None, data=None):
    nbytes = 4 * int(np.prod(shape)) if nbytes is None else nbytes
    data = ByteRange(source, 0, nbytes) if data is None else data
    strides = contiguous_strides(shape) if strides is None else strides
    return Tensor(F32, shape, strides, Storage("s", nbytes, data), offset)

def blocks(source, shape, boxes, lazy=None):
    parts = []
    for offsets, sizes in boxes:
        count = int(np.prod(sizes))
        load = lambda count=count, sizes=sizes: lazy or tensor(source, sizes, nbytes=4 * count)
        parts.append(Block(offsets, sizes, load))
    data = Blocks(shape, tuple(parts))
    return Tensor(F32, shape, contiguous_strides(shape), Storage("b", 4 * int(np.prod(shape)), data))

CASES = {
    "good": lambda s: tensor(s, (2, 3)),
    "good blocks": lambda s: blocks(s, (4, 2), [((0, 0), (2, 2)), ((2, 0), (2, 2))]),
    "negative offset": lambda s: tensor(s, (2,), offset=-1),
    "extent past storage": lambda s: tensor(s, (2, 3), strides=(4, 1)),
    "negative stride": lambda s: tensor(s, (3,), strides=(-1,), offset=2),
    "float shape": lambda s: tensor(s, (2.0, 3)),
    "range past the file": lambda s: tensor(s, (4096,)),
    "storage larger than its data": lambda s: tensor(s, (6,), data=ByteRange(s, 0, 8)),
    "short stream": lambda s: tensor(s, (6,), data=Stream(lambda: None, 8)),
    "blocks with a gap": lambda s: blocks(s, (4, 2), [((0, 0), (2, 2)), ((3, 0), (1, 2))]),
    "blocks overlapping": lambda s: blocks(s, (4, 2), [((0, 0), (3, 2)), ((2, 0), (2, 2))]),
    "blocks out of the array": lambda s: blocks(s, (4, 2), [((0, 0), (2, 2)), ((2, 0), (3, 2))]),
    "a lazy block with a bad layout": lambda s: blocks(
        s, (4,), [((0,), (2,)), ((2,), (2,))], lazy=tensor(s, (2,), strides=(1000,))
    ),
}

class BadLayouts:
    name = "badlayout"
    description = "test plugin: tensors whose layout a test chooses"

    def sniff(self, probe):
        return probe.head.startswith(b"BAD1")

    def load(self, probe):
        case = probe.head[4:].split(b"\\0")[0].decode()
        return Tree(probe.name, "badlayout", [(("weights", "w"), CASES[case](probe.source))])

LOADER = BadLayouts()
"""

BAD_CASES = {
    "negative offset": "offset -1 is not a non-negative integer",
    "extent past storage": "needs 28 bytes of its storage, which has 24",
    "negative stride": "strides (-1,) are not 1 non-negative integers",
    "float shape": "shape (2.0, 3) is not a tuple of sizes",
    "range past the file": "lie outside the 1024 bytes of",
    "storage larger than its data": "its byte range holds 8 bytes, fewer than the storage's 24",
    "short stream": "its stream holds 8 bytes, fewer than the storage's 24",
    "blocks with a gap": "the blocks leave 2 of the 8 elements of shape [4, 2] uncovered",
    "blocks overlapping": "blocks at [0, 0] (sizes [3, 2]) and [2, 0] (sizes [2, 2]) overlap",
    "blocks out of the array": "block at [2, 0] with sizes [3, 2] lies outside the shape [4, 2]",
}


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An installed distribution whose loader plugin returns the layout a file names."""
    (tmp_path / "bad_layout_loader.py").write_text(textwrap.dedent(PLUGIN))
    dist = tmp_path / "bad_layout_loader-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bad-layout-loader\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[paramctl.loaders]\nbadlayout = bad_layout_loader:LOADER\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("bad_layout_loader", None)


def plugin_file(folder: Path, case: str) -> Path:
    """A 1 KiB file the plugin reads: its case name, then float32 values 0, 1, 2, ..."""
    head = b"BAD1" + case.encode() + b"\0"
    path = folder / f"{case.replace(' ', '_')}.bad"
    values = np.arange(256, dtype=np.float32).tobytes()
    path.write_bytes(head + values[len(head) :])
    return path


def test_good_plugin_layouts_read_as_numpy_does(plugin: Path):
    path = plugin_file(plugin, "good")
    raw = np.frombuffer(path.read_bytes()[:24], dtype=np.float32).reshape(2, 3)
    assert np.array_equal(reader.array(paramctl.open(path)["weights.w"]), raw, equal_nan=True)
    assert runner.invoke(app, ["stat", str(path)]).exit_code == 0
    path = plugin_file(plugin, "good blocks")
    raw = np.frombuffer(path.read_bytes()[:16], dtype=np.float32).reshape(2, 2)
    assert np.array_equal(reader.array(paramctl.open(path)["weights.w"]), np.concatenate([raw, raw]), equal_nan=True)


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_a_plugins_bad_layout_is_exit_2_naming_the_tensor(plugin: Path, case: str):
    path = plugin_file(plugin, case)
    with pytest.raises(CorruptFileError, match=r"tensor weights\.w: ") as error:
        paramctl.open(path)
    assert BAD_CASES[case] in error.value.problem
    for command in ("ls", "stat", "show"):
        args = [command, str(path)] + (["weights.w"] if command == "show" else [])
        one_line_exit_2(args, f"{path}: tensor weights.w: ", BAD_CASES[case])


def test_a_plugins_lazy_block_is_checked_before_it_is_read(plugin: Path):
    path = plugin_file(plugin, "a lazy block with a bad layout")
    assert runner.invoke(app, ["ls", str(path)]).exit_code == 0  # blocks are found when read, not when listed
    for command in ("stat", "show"):
        args = [command, str(path)] + (["weights.w"] if command == "show" else [])
        one_line_exit_2(args, "block at [0]: shape [2] with strides [1000] at offset 0 needs 4004 bytes")


def test_built_in_loaders_meet_the_same_check(tmp_path: Path):
    """A torch file whose tensor claims more than its storage: refused by registry.open, as any plugin's."""
    pickled = h.as_dict({"w": h.tensor_expr(size=(4,), stride=(2,), numel=4)})
    path = h.torch_zip(tmp_path / "strided.pt", pickled, {"0": b"\0" * 16})
    one_line_exit_2(["ls", str(path)], f"{path}: tensor w: ", "needs 28 bytes of its storage, which has 16")
    expected = torch.arange(8, dtype=torch.float32)[::2]  # strided inside its storage, as torch saves a view
    torch.save({"w": expected}, tmp_path / "view.pt")
    assert reader.array(paramctl.open(tmp_path / "view.pt")["w"]).tobytes() == torch_bytes(expected)


def test_a_shards_bad_layout_names_the_shard(tmp_path: Path):
    good, bad = tmp_path / "model-00001-of-00002.bin", tmp_path / "model-00002-of-00002.bin"
    torch.save({"a": torch.ones(2)}, good)
    h.torch_zip(bad, h.as_dict({"b": h.tensor_expr(size=(4,), stride=(2,), numel=4)}), {"0": b"\0" * 16})
    index = tmp_path / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"weight_map": {"a": good.name, "b": bad.name}}))
    one_line_exit_2(["ls", str(index)], f"{bad}: tensor b: ", "needs 28 bytes of its storage, which has 16")
