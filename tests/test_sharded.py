"""Sharded checkpoints (a Hugging Face index and its shards) open as one tree; folders open the checkpoint they hold.

References: each shard read by torch.load / safetensors, merged the way transformers loads them (every shard of
`sorted(set(weight_map.values()))`), and the index JSON itself for where each tensor should be.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from reference import FIXTURES, assert_retrained_equal, fixture_generator, raw_bytes, torch_bytes
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import paramctl
from paramctl import reader, registry
from paramctl.cli import app

REAL = FIXTURES / "real"
SHARDED = {"safetensors": REAL / "sharded_safetensors", "bin": REAL / "sharded_bin"}
INDEX = {"safetensors": "model.safetensors.index.json", "bin": "pytorch_model.bin.index.json"}
runner = CliRunner()


def generator() -> Any:
    return fixture_generator("generate_real")


def cli(*args: str) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def weight_map(folder: Path, index: str) -> dict[str, str]:
    return json.loads((folder / index).read_text())["weight_map"]


def load_shard(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)


def reference(folder: Path, index: str) -> dict[str, tuple[str, torch.Tensor]]:
    """name -> (shard, tensor), as transformers would load the checkpoint."""
    merged: dict[str, tuple[str, torch.Tensor]] = {}
    for shard in sorted(set(weight_map(folder, index).values())):
        merged |= {name: (shard, tensor) for name, tensor in load_shard(folder / shard).items()}
    return merged


def save_sharded(folder: Path, shards: list[dict[str, torch.Tensor]], index: dict[str, str] | None = None) -> Path:
    """Shards written with the fixture generator's naming and index; `index` overrides the weight map."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for shard, name in zip(shards, names):
        save_file(shard, folder / name)
    generator().write_index(folder / "model.safetensors.index.json", shards, names)
    if index is not None:
        document = json.loads((folder / "model.safetensors.index.json").read_text())
        document["weight_map"] = index
        (folder / "model.safetensors.index.json").write_text(json.dumps(document))
    return folder / "model.safetensors.index.json"


# --------------------------------------------------------------------------- the committed fixtures


def test_committed_sharded_fixtures_match_regenerated(tmp_path: Path):
    paths = generator().write_sharded(tmp_path)
    for path in paths:
        committed = REAL / path.relative_to(tmp_path)
        if path.suffix == ".json":
            assert json.loads(committed.read_text()) == json.loads(path.read_text()), path.name
            continue
        fresh, old = load_shard(path), load_shard(committed)
        assert list(fresh) == list(old), path.name
        for name in fresh:
            assert_retrained_equal(f"{path.name}:{name}", fresh[name], old[name])
    assert len([p for p in paths if p.parent.name == "sharded_safetensors" and p.suffix == ".safetensors"]) > 2


@pytest.mark.parametrize("fmt", SHARDED)
@pytest.mark.parametrize("through", ["index", "folder"])
def test_a_sharded_checkpoint_is_one_tree_across_its_shards(fmt: str, through: str):
    folder = SHARDED[fmt]
    tree = paramctl.open(folder / INDEX[fmt] if through == "index" else folder)
    expected = reference(folder, INDEX[fmt])
    assert tree.file == str(folder / INDEX[fmt])
    assert tree.format == ("sharded-safetensors" if fmt == "safetensors" else "sharded-torch-zip")
    ours = dict(tree.tensors())
    assert sorted(ours) == sorted(expected)
    for name, (_, tensor) in expected.items():
        assert ours[name].dtype.name == str(tensor.dtype).removeprefix("torch.")
        assert ours[name].shape == tuple(tensor.shape)
        assert raw_bytes(reader.array(ours[name])) == torch_bytes(tensor), name
    assert tree.metadata == json.loads((folder / INDEX[fmt]).read_text())["metadata"]  # no inconsistency recorded


@pytest.mark.parametrize("fmt", SHARDED)
def test_ls_json_gives_each_tensor_its_shard(fmt: str):
    folder = SHARDED[fmt]
    result = cli("ls", folder, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    expected = reference(folder, INDEX[fmt])
    assert {t["name"]: t["shard"] for t in document["tensors"]} == {n: s for n, (s, _) in expected.items()}
    assert {t["name"]: t["shard"] for t in document["tensors"]} == weight_map(folder, INDEX[fmt])
    # storage ids stay unique although every shard numbers its own storages
    ids = {t["storage"]["id"] for t in document["tensors"]}
    assert len(ids) == len(document["tensors"]) and all(":" in i for i in ids)
    table = cli("ls", folder).stdout.splitlines()
    assert table[0].split()[-1] == "shard" and table[1].split()[-1] == expected[table[1].split()[0]][0]


def test_shard_is_null_for_single_files():
    for path in (FIXTURES / "mlp.pt", FIXTURES / "tied_mlp.safetensors", REAL / "single"):
        document = json.loads(cli("ls", path, "--json").stdout)
        assert document["tensors"] and all(t["shard"] is None for t in document["tensors"])
        assert "shard" not in cli("ls", path).stdout.splitlines()[0]


def test_shards_are_opened_on_several_threads(monkeypatch: pytest.MonkeyPatch):
    threads: set[int] = set()
    barrier = threading.Barrier(2, timeout=5)  # two shard opens must be under way at the same time
    opened = registry.probe_file

    def probe_file(path: Any) -> Any:
        threads.add(threading.get_ident())
        if str(path).endswith(("00001-of-00005.bin", "00002-of-00005.bin")):
            barrier.wait()
        return opened(path)

    monkeypatch.setattr(registry, "probe_file", probe_file)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    tree = paramctl.open(SHARDED["bin"])
    assert len(dict(tree.tensors())) == 28 and len(threads) >= 2


# --------------------------------------------------------------------------- folders


def test_a_folder_holding_one_checkpoint_opens_that_file():
    tree = paramctl.open(REAL / "single")  # config.json beside model.safetensors
    assert tree.file == str(REAL / "single" / "model.safetensors") and tree.format == "safetensors"
    expected = load_file(REAL / "single" / "model.safetensors")
    assert {n: torch_bytes(t) for n, t in expected.items()} == {
        n: raw_bytes(reader.array(t)) for n, t in tree.tensors()
    }


def test_a_trainer_folder_opens_its_model_as_transformers_would():
    tree = paramctl.open(REAL / "hf_trainer" / "checkpoint-3")  # model.safetensors beside optimizer.pt, …
    assert Path(tree.file).name == "model.safetensors"


def test_a_folder_of_several_checkpoints_is_an_error_naming_them(tmp_path: Path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "a.pt")
    save_file({"w": torch.zeros(2)}, tmp_path / "b.safetensors")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    result = subprocess.run([sys.executable, "-m", "paramctl", "ls", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"paramctl: {tmp_path}: is a directory holding several checkpoints (a.pt, b.safetensors): name one"
    ]


def test_a_folder_without_a_checkpoint_is_still_just_a_directory(tmp_path: Path):
    (tmp_path / "readme.md").write_text("hello")
    (tmp_path / ".hidden.pt").write_bytes(b"")
    (tmp_path / "sub.pt").mkdir()
    with pytest.raises(paramctl.FileError, match="is a directory"):
        paramctl.open(tmp_path)


# --------------------------------------------------------------------------- integrity


@pytest.fixture
def state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {f"layer.{i}.weight": torch.randn(3, 2) for i in range(4)}


def test_a_missing_shard_is_exit_2_naming_it(tmp_path: Path):
    folder = tmp_path / "model"
    shutil.copytree(SHARDED["safetensors"], folder)
    (folder / "model-00003-of-00004.safetensors").unlink()
    for command in ("ls", "stat", "ties", "scan"):
        target = folder / INDEX["safetensors"] if command == "scan" else folder
        result = subprocess.run(
            [sys.executable, "-m", "paramctl", command, str(target)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2, command
        assert result.stderr.splitlines() == [
            f"paramctl: {folder / 'model-00003-of-00004.safetensors'}: no such file "
            f"(a shard named by {INDEX['safetensors']})"
        ], command


def test_index_and_shards_that_disagree_are_listed_and_ls_exits_1(tmp_path: Path, state: dict[str, torch.Tensor]):
    names = list(state)
    shards = [{names[0]: state[names[0]], names[1]: state[names[1]]}, {n: state[n] for n in names[1:]}]
    index = {
        names[0]: "model-00001-of-00002.safetensors",
        names[1]: "model-00002-of-00002.safetensors",  # held by both shards
        names[2]: "model-00001-of-00002.safetensors",  # but it is in the second one
        "ghost.weight": "model-00002-of-00002.safetensors",  # nowhere
    }  # names[3] is in the second shard and not listed
    path = save_sharded(tmp_path / "model", shards, index)
    result = cli("ls", path, "--json")
    assert result.exit_code == 1
    assert result.stderr == f"paramctl: {path}: 4 inconsistencies between the index and its shards\n"
    document = json.loads(result.stdout)
    found = {(p["kind"], p["name"], p["shard"], p["expected"]) for p in document["metadata"]["inconsistencies"]}
    assert found == {
        ("duplicate", names[1], "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"),
        ("misplaced", names[2], "model-00002-of-00002.safetensors", "model-00001-of-00002.safetensors"),
        ("missing", "ghost.weight", None, "model-00002-of-00002.safetensors"),
        ("unlisted", names[3], "model-00002-of-00002.safetensors", None),
    }
    # every tensor the shards hold is listed once, the duplicate from the shard the index names
    shard_of = {t["name"]: t["shard"] for t in document["tensors"]}
    assert sorted(shard_of) == sorted(names)
    assert shard_of[names[1]] == "model-00002-of-00002.safetensors"
    table = cli("ls", path)
    assert table.exit_code == 1
    assert [line for line in table.stdout.splitlines() if line.startswith("inconsistent: ")] == [
        f"inconsistent: {p['message']}" for p in document["metadata"]["inconsistencies"]
    ]
    assert "inconsistent: ghost.weight: the index places it in model-00002-of-00002.safetensors" in table.stdout


def test_aliases_a_shard_declares_are_not_inconsistencies(tmp_path: Path, state: dict[str, torch.Tensor]):
    """safetensors' save_model records dropped tied names in the shard metadata; they are not "unlisted"."""
    folder = tmp_path / "model"
    folder.mkdir()
    save_file({"embed.weight": state["layer.0.weight"]}, folder / "a.safetensors", {"lm_head.weight": "embed.weight"})
    index = {"metadata": {}, "weight_map": {"embed.weight": "a.safetensors", "lm_head.weight": "a.safetensors"}}
    (folder / "x.index.json").write_text(json.dumps(index))
    tree = paramctl.open(folder)
    assert "inconsistencies" not in tree.metadata
    assert tree["lm_head.weight"].storage is tree["embed.weight"].storage


# --------------------------------------------------------------------------- hostile indexes


def hostile(tmp_path: Path, weight_map: Any, raw: str | None = None) -> Path:
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    save_file({"w": torch.ones(2)}, folder / "ok.safetensors")
    path = folder / "model.safetensors.index.json"
    path.write_text(raw if raw is not None else json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


@pytest.mark.parametrize(
    "shard",
    [
        "../secret.safetensors",
        "sub/../../secret.safetensors",
        "SECRET",
        "./ok.safetensors",
        "",
        "C:secret",
        "a//b",
        "..\\secret.safetensors",
        "https://elsewhere/secret.safetensors",
        "ok.safetensors\x00",
    ],
)
def test_shard_names_outside_the_folder_are_refused_before_anything_is_opened(
    tmp_path: Path, shard: str, monkeypatch: pytest.MonkeyPatch
):
    save_file({"secret": torch.ones(1)}, tmp_path / "secret.safetensors")
    shard = str(tmp_path / "secret.safetensors") if shard == "SECRET" else shard  # an absolute path
    path = hostile(tmp_path, {"w": "ok.safetensors", "secret": shard})
    opened: list[str] = []
    probe_file = registry.probe_file
    monkeypatch.setattr(registry, "probe_file", lambda p: opened.append(str(p)) or probe_file(p))
    with pytest.raises(paramctl.CorruptFileError, match="not a relative path inside the index's folder") as error:
        paramctl.open(path)
    assert error.value.path == str(path)
    assert opened == [str(path)]  # the index only: neither ok.safetensors nor the secret


@pytest.mark.parametrize(
    ("weight_map", "raw", "problem"),
    [
        ({"w": "model.safetensors.index.json"}, None, "is an index itself"),
        ({"w": 3}, None, "weight_map['w'] is 3, not a file name"),
        (None, '{"weight_map": {"w": "ok.safetensors", "w": "ok.safetensors"}}', "duplicate key 'w'"),
        (None, '{"weight_map": {"w": NaN}}', "NaN is not JSON"),
        (None, '{"weight_map": [1, 2]}', "has no weight_map object"),
        (None, '{"weight_map": {"w": "ok.safetensors"', "invalid index JSON"),
    ],
)
def test_broken_indexes_are_exit_2(tmp_path: Path, weight_map: Any, raw: str | None, problem: str):
    path = hostile(tmp_path, weight_map, raw)
    result = cli("ls", path)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith(f"paramctl: {path}: ") and problem in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_an_index_in_a_nested_index_loop_is_refused(tmp_path: Path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "a.index.json").write_text(json.dumps({"weight_map": {"w": "b.index.json"}}))
    (folder / "b.index.json").write_text(json.dumps({"weight_map": {"w": "a.index.json"}}))
    with pytest.raises(paramctl.CorruptFileError, match=r"'b\.index\.json' is an index itself"):
        paramctl.open(folder / "a.index.json")


def test_an_index_with_a_big_metadata_block_is_still_recognised(tmp_path: Path):
    path = hostile(
        tmp_path, None, json.dumps({"metadata": {"note": "x" * 10_000}, "weight_map": {"w": "ok.safetensors"}})
    )
    assert paramctl.open(path).format == "sharded-safetensors"


# --------------------------------------------------------------------------- commands across shards


def test_stat_across_shards_matches_torch():
    merged = {name: tensor for name, (_, tensor) in reference(SHARDED["bin"], INDEX["bin"]).items()}
    result = cli("stat", SHARDED["bin"], "--json")
    assert result.exit_code == 0
    rows = {row["name"]: row for row in json.loads(result.stdout)["tensors"]}
    assert sorted(rows) == sorted(merged)
    for name, tensor in merged.items():
        values = tensor.double()
        assert rows[name]["min"] == values.min().item() and rows[name]["max"] == values.max().item()
        assert rows[name]["mean"] == pytest.approx(values.mean().item(), rel=1e-12, abs=1e-15)
        assert rows[name]["l2"] == pytest.approx(values.norm().item(), rel=1e-12)


def test_diff_between_a_sharded_and_a_single_file_checkpoint(tmp_path: Path):
    single = REAL / "single" / "model.safetensors"
    assert cli("diff", SHARDED["safetensors"], single).exit_code == 0
    result = cli("diff", SHARDED["bin"], single, "--json")  # the .bin keeps the tied lm_head.weight
    assert result.exit_code == 1
    assert [t["name"] for t in json.loads(result.stdout)["only_in_a"]] == ["lm_head.weight"]
    # one value changed in one shard: the diff names it, and only it
    folder = tmp_path / "changed"
    shutil.copytree(SHARDED["safetensors"], folder)
    shard = folder / weight_map(folder, INDEX["safetensors"])["layers.1.fc.weight"]
    tensors = load_file(shard)
    tensors["layers.1.fc.weight"][3, 2] += 0.5
    save_file(tensors, shard, {"format": "pt"})
    result = cli("diff", folder, single, "--json")
    assert result.exit_code == 1
    assert [t["name"] for t in json.loads(result.stdout)["changed"]] == ["layers.1.fc.weight"]


def test_ties_across_shards():
    """The .bin shards hold the tied embedding and output projection in two files: no shared storage, but the
    same values, as torch sees them."""
    merged = {name: tensor for name, (_, tensor) in reference(SHARDED["bin"], INDEX["bin"]).items()}
    assert torch.equal(merged["embed.weight"], merged["lm_head.weight"])
    assert merged["embed.weight"].untyped_storage().data_ptr() != merged["lm_head.weight"].untyped_storage().data_ptr()
    by_storage = json.loads(cli("ties", SHARDED["bin"], "--json").stdout)
    assert by_storage["groups"] == []
    by_value = json.loads(cli("ties", SHARDED["bin"], "--by", "value", "--json").stdout)
    assert [sorted(m["name"] for m in g["members"]) for g in by_value["groups"]] == [["embed.weight", "lm_head.weight"]]
    expect = cli("ties", SHARDED["bin"], "--by", "value", "--expect", "embed.weight=lm_head.weight")
    assert expect.exit_code == 0


def test_scan_of_an_index_scans_every_shard():
    result = cli("scan", SHARDED["bin"] / INDEX["bin"], "--json")
    assert result.exit_code == 0
    document = json.loads(result.stdout)
    shards = sorted(set(weight_map(SHARDED["bin"], INDEX["bin"]).values()))
    assert [p["record"].split(":")[0] for p in document["pickles"]] == shards
    assert document["valid"] and not document["dangerous"]


def test_values_are_read_from_each_shard_in_bounded_chunks():
    """Chunks of a sharded tensor come from its own shard's source (the one chunked reader, unchanged)."""
    tree = paramctl.open(SHARDED["safetensors"])
    tensor = tree["layers.0.qkv.weight"]
    chunks = reader.plan(tensor, 50)
    assert chunks is not None and len(chunks) == 4
    values = np.concatenate([chunk.read() for chunk in chunks])
    expected = reference(SHARDED["safetensors"], INDEX["safetensors"])["layers.0.qkv.weight"][1]
    assert values.tobytes() == torch_bytes(expected)
    assert tensor.storage.data.source.name.endswith(
        weight_map(SHARDED["safetensors"], INDEX["safetensors"])["layers.0.qkv.weight"]
    )
