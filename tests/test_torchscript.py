"""TorchScript (torch.jit.save) and torch.package archives: their tensors, named by the objects' attributes, listed
without running anything. References: torch.jit.load(f).state_dict() (and the module's attributes and graph
constants), torch.package.PackageImporter(f).load_pickle(...)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from reference import (
    FIXTURES,
    fixture_generator,
    paramctl_tensors,
    raw_bytes,
    reference_flatten,
    sharing_groups,
    torch_bytes,
)
from typer.testing import CliRunner

import paramctl
from paramctl import reader
from paramctl.cli import app

REAL = FIXTURES / "real"
runner = CliRunner()


def generator() -> Any:
    return fixture_generator("generate_real")


def cli(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def tensors(path: Path) -> dict[str, Any]:
    return dict(paramctl.open(path).tensors())


def assert_same(ours: Any, theirs: torch.Tensor, name: str) -> None:
    assert ours.dtype.name == str(theirs.dtype).removeprefix("torch."), name
    assert ours.shape == tuple(theirs.shape), name
    assert raw_bytes(reader.array(ours)) == torch_bytes(theirs), name


def graph_constants(module: torch.jit.ScriptModule) -> list[torch.Tensor]:
    return [
        node.t("value")
        for node in module.graph.nodes()
        if node.kind() == "prim::Constant" and node.output().type().kind() == "TensorType"
    ]


def by_content(values: list[Any]) -> list[tuple[str, tuple[int, ...], bytes]]:
    """A multiset of tensors: (dtype, shape, bytes), sorted."""
    rows = []
    for value in values:
        if isinstance(value, torch.Tensor):
            rows.append((str(value.dtype).removeprefix("torch."), tuple(value.shape), torch_bytes(value)))
        else:
            rows.append((value.dtype.name, value.shape, raw_bytes(reader.array(value))))
    return sorted(rows)


# --------------------------------------------------------------------------- TorchScript


def test_committed_torchscript_and_package_fixtures_match_regenerated(tmp_path: Path):
    fresh = generator().write_torchscript(tmp_path) + generator().write_package(tmp_path)
    fresh += generator().write_packaged_script(tmp_path)
    for path in fresh:
        old = REAL / path.name
        if path.name == "packaged_script.pt":
            new_state = torch.package.PackageImporter(path).load_pickle("ocr_models", "model").state_dict()
            old_state = torch.package.PackageImporter(old).load_pickle("ocr_models", "model").state_dict()
        elif path.name == "packaged.pt":
            new_state, old_state = {}, {}
            for resource in ("model.pkl", "scripted.pkl"):
                new_state |= torch.package.PackageImporter(path).load_pickle("model", resource).state_dict()
                old_state |= torch.package.PackageImporter(old).load_pickle("model", resource).state_dict()
        else:
            new_module, old_module = torch.jit.load(path), torch.jit.load(old)
            assert by_content(graph_constants(new_module)) == by_content(graph_constants(old_module)), path.name
            new_state, old_state = new_module.state_dict(), old_module.state_dict()
        assert list(new_state) == list(old_state), path.name
        for name in new_state:
            assert torch_bytes(new_state[name]) == torch_bytes(old_state[name]), name


def test_a_scripted_module_lists_its_state_dict_with_its_names():
    path = REAL / "scripted.pt"
    module = torch.jit.load(path)
    state = module.state_dict()
    ours = tensors(path)
    for name, tensor in state.items():
        assert_same(ours[name], tensor, name)
    # the submodule reachable by two names is one storage, as torch loads it
    assert state["also_head.weight"].data_ptr() == state["head.weight"].data_ptr()
    assert ours["also_head.weight"].storage is ours["head.weight"].storage
    # attributes that are not parameters or buffers: a tensor list and a dict of tensors, unwrapped
    assert_same(ours["anchors.0"], module.anchors[0], "anchors.0")
    assert_same(ours["anchors.1"], module.anchors[1], "anchors.1")
    assert_same(ours["table.bias"], module.table["bias"], "table.bias")
    assert sorted(ours) == sorted([*state, "anchors.0", "anchors.1", "table.bias"])
    values = {name: leaf.value for name, leaf in paramctl.open(path) if isinstance(leaf, paramctl.tree.Value)}
    assert values["steps"] == module.steps == 7 and values["label"] == module.label == "scripted"
    assert values["training"] is module.training and values["layers.0.training"] is getattr(module.layers, "0").training
    placeholders = {name: leaf.global_name for name, leaf in paramctl.open(path) if isinstance(leaf, paramctl.Opaque)}
    assert placeholders[""] == "__torch__.Scriptable"
    assert placeholders["layers"] == "__torch__.torch.nn.modules.container.ModuleList"


def test_ls_names_the_format_and_marks_the_tie():
    result = cli("ls", REAL / "scripted.pt", "--json")
    assert result.exit_code == 0
    document = json.loads(result.stdout)
    assert document["format"] == "torchscript" and document["metadata"]["archive"] == "scripted"
    ties = {t["name"]: t["tie"] for t in document["tensors"]}
    assert ties["also_head.weight"]["partner"] == "head.weight"
    assert cli("ls", REAL / "scripted.pt").stdout.splitlines()[-1].endswith("· torchscript")


def test_a_traced_module_lists_its_parameters_and_code_constants():
    path = REAL / "traced.pt"
    module = torch.jit.load(path)
    ours = tensors(path)
    for name, tensor in module.state_dict().items():
        assert_same(ours[name], tensor, name)
    assert "CONSTANTS.c0" in module.code  # the code names its constant this way
    assert by_content([ours["CONSTANTS.c0"]]) == by_content(graph_constants(module))
    assert sorted(ours) == sorted([*module.state_dict(), "CONSTANTS.c0"])  # traced inputs are not listed


def test_a_frozen_module_keeps_its_weights_in_the_constants():
    path = REAL / "frozen.pt"
    module = torch.jit.load(path)
    assert module.state_dict() == {}
    ours = tensors(path)
    assert sorted(ours) == [f"CONSTANTS.c{i}" for i in range(4)]
    assert by_content(list(ours.values())) == by_content(graph_constants(module))
    for index in range(4):
        assert f"CONSTANTS.c{index}" in module.code


def test_torch_save_archives_are_not_taken_for_torchscript():
    assert paramctl.open(FIXTURES / "mlp.pt").format == "torch-zip"
    # forcing the torch loader still reads a TorchScript archive's data.pkl, as before (without unwrapping)
    forced = dict(paramctl.open(REAL / "scripted.pt", format="torch").tensors())
    assert set(torch.jit.load(REAL / "scripted.pt").state_dict()) <= set(forced)


def test_nothing_is_imported_or_run():
    code = (
        "import sys, paramctl\n"
        f"for name in ('scripted.pt', 'traced.pt', 'frozen.pt', 'packaged.pt'):\n"
        f"    assert len(paramctl.open({str(REAL)!r} + '/' + name)) > 0\n"
        "assert 'torch' not in sys.modules and not any(m.startswith('__torch__') for m in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_scan_names_the_formats():
    scripted = json.loads(cli("scan", REAL / "scripted.pt", "--json").stdout)
    assert scripted["format"] == "torchscript"
    assert any("TorchScript" in note for note in scripted["notes"])
    assert scripted["weights_only_refused"]  # torch.load(weights_only=True) refuses TorchScript archives
    packaged = cli("scan", REAL / "packaged.pt", "--json")
    document = json.loads(packaged.stdout)
    assert document["format"] == "torch-package" and document["valid"]
    assert sorted(p["record"] for p in document["pickles"]) == [
        "packaged/.data/ts_code/0/constants.pkl",
        "packaged/.data/ts_code/0/data.pkl",
        # TorchScript's debug records are pickles too (torch.jit.load reads them), whatever their names
        "packaged/.data/ts_code/code/__torch__/torch/nn/modules/linear/___torch_mangle_10.py.debug_pkl",
        "packaged/model/model.pkl",
        "packaged/model/scripted.pkl",
        "packaged/model/state.pkl",
    ]
    # loading the packaged ScriptModule compiles its TorchScript: scan's verdict on torch.jit
    assert [f"{g['module']}.{g['name']}" for g in document["globals"] if g["class"] == "dangerous"] == [
        "torch.jit._script.unpackage_script_module"
    ]
    assert packaged.exit_code == 1
    assert "torch-package" in cli("scan", REAL / "packaged.pt").stdout.splitlines()[0]


def test_a_broken_archive_is_still_named_in_scan(tmp_path: Path):
    path = tmp_path / "broken.pt"
    with zipfile.ZipFile(REAL / "packaged.pt") as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            if info.filename != "packaged/.data/0.storage":
                target.writestr(info, source.read(info))
    result = cli("scan", path, "--json")
    assert result.exit_code == 1  # broken, and (its ScriptModule) dangerous: dangerous decides the exit code
    document = json.loads(result.stdout)
    assert (
        document["format"] == "torch-package" and "missing record 'packaged/.data/0.storage'" in document["problems"][0]
    )


# --------------------------------------------------------------------------- torch.package


def test_a_package_lists_every_pickle_with_state_dict_names():
    path = REAL / "packaged.pt"
    importer = torch.package.PackageImporter(path)
    model = importer.load_pickle("model", "model.pkl")
    state = importer.load_pickle("model", "state.pkl")
    scripted = importer.load_pickle("model", "scripted.pkl")  # a ScriptModule, rebuilt from .data/ts_code/
    ours = tensors(path)
    for name, tensor in model.state_dict().items():
        assert_same(ours[f"model.model.{name}"], tensor, name)
    for name, tensor in scripted.state_dict().items():
        assert_same(ours[f"model.scripted.{name}"], tensor, name)
    expected_state = reference_flatten(state, ("model", "state"))
    for name, value in expected_state.items():
        if isinstance(value, torch.Tensor):
            assert_same(ours[name], value, name)
    assert sorted(ours) == sorted(
        [f"model.model.{n}" for n in model.state_dict()]
        + [f"model.scripted.{n}" for n in scripted.state_dict()]
        + [n for n, v in expected_state.items() if isinstance(v, torch.Tensor)]
    )
    values = {name: leaf.value for name, leaf in paramctl.open(path) if isinstance(leaf, paramctl.tree.Value)}
    assert values["model.state.epoch"] == state["epoch"] and values["model.state.lr"] == state["lr"]
    assert values["model.model.0.in_features"] == model[0].in_features
    assert not any("_parameters" in name or "_forward_hooks" in name for name, _ in paramctl.open(path))
    # one record in the file, referenced by both pickles
    assert ours["model.model.0.weight"].storage is ours["model.state.state_dict.0.weight"].storage


def test_package_metadata():
    tree = paramctl.open(REAL / "packaged.pt")
    assert tree.format == "torch-package"
    assert tree.metadata["pickles"] == ["model/model.pkl", "model/state.pkl", "model/scripted.pkl"]
    assert tree.metadata["extern_modules"] == torch.package.PackageImporter(REAL / "packaged.pt").extern_modules


def test_a_packaged_script_module_lists_its_state_dict_with_its_tie():
    """The oracle: PackageImporter rebuilds the ScriptModule; its state_dict() names, dtypes, shapes, bytes and
    storage sharing are what paramctl lists under the package and resource name."""
    path = REAL / "packaged_script.pt"
    names = zipfile.ZipFile(path).namelist()
    assert "packaged_script/.data/ts_code/0/data.pkl" in names and "packaged_script/ocr_models/model" in names
    state = torch.package.PackageImporter(path).load_pickle("ocr_models", "model").state_dict()
    ours = tensors(path)
    assert list(ours) == [f"ocr_models.model.{name}" for name in state]
    for name, tensor in state.items():
        assert_same(ours[f"ocr_models.model.{name}"], tensor, name)
    theirs = {f"ocr_models.model.{n}": t.untyped_storage().data_ptr() for n, t in state.items()}
    groups = sharing_groups(theirs)
    assert groups == {frozenset({"ocr_models.model.embed.weight", "ocr_models.model.head.weight"})}
    assert sharing_groups({name: row[3] for name, row in paramctl_tensors(path).items()}) == groups
    document = json.loads(cli("ls", path, "--json").stdout)
    assert document["format"] == "torch-package" and "unreferenced_storages" not in document["metadata"]
    assert document["metadata"]["pickles"] == ["ocr_models/model"]
    ties = {t["name"]: t["tie"] for t in document["tensors"]}
    assert ties["ocr_models.model.head.weight"]["partner"] == "ocr_models.model.embed.weight"


@pytest.mark.parametrize("command", ["stat", "ties", "diff", "show"])
def test_every_command_reads_a_packaged_script_module(command: str, tmp_path: Path):
    path = REAL / "packaged_script.pt"
    state = torch.package.PackageImporter(path).load_pickle("ocr_models", "model").state_dict()
    saved = tmp_path / "state.pt"  # the oracle's state dict under the names paramctl gives the package's tensors
    torch.save({f"ocr_models.model.{name}": tensor for name, tensor in state.items()}, saved)
    args = {
        "stat": ["stat", path, "--json"],
        "ties": ["ties", path, "--json"],
        "diff": ["diff", path, saved, "--json"],
        "show": ["show", path, "ocr_models.model.scale", "--json"],
    }[command]
    result = cli(*args)
    assert result.exit_code == (1 if command == "diff" else 0), result.output  # diff: the module's plain values
    document = json.loads(result.stdout)
    text = json.dumps(document)
    if command == "show":
        assert document["selections"][0]["values"] == state["scale"].tolist()
    elif command == "stat":
        rows = {row["name"]: row for row in document["tensors"]}
        for name, tensor in state.items():
            assert rows[f"ocr_models.model.{name}"]["mean"] == pytest.approx(tensor.double().mean().item())
    elif command == "diff":
        assert document["equal_count"] == len(state) and document["changed"] == document["dropped_ties"] == []
        assert {row["kind"] for row in document["only_in_a"]} == {"value", "object"} and not document["only_in_b"]
    else:
        assert "ocr_models.model.head.weight" in text


def test_scan_reads_a_pickle_without_pkl_suffix():
    document = json.loads(cli("scan", REAL / "packaged_script.pt", "--json").stdout)
    assert "packaged_script/ocr_models/model" in [p["record"] for p in document["pickles"]]


REAL_ARCHIVES = sorted(p for p in REAL.rglob("*") if p.is_file() and zipfile.is_zipfile(p))


@pytest.mark.parametrize("path", REAL_ARCHIVES, ids=lambda p: str(p.relative_to(REAL)))
def test_every_real_archive_lists_every_storage_record(path: Path):
    """No real fixture holds a storage record its listed tensors do not use (nothing is silently left out), and
    every storage record torch's reader sees is one storage of the listing."""
    tree = paramctl.open(path)
    assert "unreferenced_storages" not in tree.metadata
    records = [
        n for n in zipfile.ZipFile(path).namelist() if re.search(r"/(data|constants)/[^/]+$|/\.data/\w+\.storage$", n)
    ]
    assert len({id(t.storage) for _, t in tree.tensors()}) == len(records), path.name


def test_a_package_whose_pickles_cannot_be_found_is_refused(tmp_path: Path):
    path = tmp_path / "hidden.pt"
    with zipfile.ZipFile(REAL / "packaged.pt") as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.startswith("packaged/model/") and info.filename.endswith(".pkl"):
                data = b"XX" + data  # no longer starts like a pickle, no longer named like one
                info.filename = info.filename.removesuffix(".pkl") + ".bin"
            target.writestr(info, data)
    result = cli("ls", path)
    assert result.exit_code == 2, result.output
    assert "holds 7 storage record(s) but no pickle that uses them" in result.stderr


def unreferenced_storage_archive(tmp_path: Path) -> Path:
    """A torch.save archive with one more storage record than its pickle names (what a pickle paramctl could not
    list would leave behind)."""
    path = tmp_path / "extra.pt"
    torch.save({"w": torch.arange(4.0)}, path)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("extra/data/7", b"\x00" * 16)
    return path


def test_storage_records_no_tensor_uses_are_reported(tmp_path: Path):
    path = unreferenced_storage_archive(tmp_path)
    assert list(torch.load(path, weights_only=True)) == ["w"]  # torch sees one tensor too
    result = cli("ls", path)
    assert result.exit_code == 0
    assert "unreferenced: 1 storage record(s) no listed tensor uses (data/7)" in result.stdout
    document = json.loads(cli("ls", path, "--json").stdout)
    assert document["metadata"]["unreferenced_storages"] == ["data/7"]
    assert [t["name"] for t in document["tensors"]] == ["w"]


def test_a_package_with_an_unattributed_script_module_is_refused(tmp_path: Path):
    """A ScriptModule's pickles that no pickle of the package references cannot be named: exit 2, never
    '0 tensors'."""
    path = tmp_path / "orphan.pt"
    with zipfile.ZipFile(REAL / "packaged_script.pt") as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "packaged_script/ocr_models/model":
                data = b"\x80\x03}q\x00."  # the resource is now an empty dict: nothing refers to the module
            target.writestr(info, data)
    result = cli("ls", path)
    assert result.exit_code == 2
    assert "'packaged_script/.data/ts_code/0/data.pkl' is not referenced by any pickle" in result.stderr


def test_a_torchscript_archive_reports_unused_constants(tmp_path: Path):
    path = tmp_path / "traced.pt"
    with zipfile.ZipFile(REAL / "traced.pt") as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            target.writestr(info, source.read(info))
        target.writestr("traced/constants/9", b"\x00" * 8)
    assert paramctl.open(path).metadata["unreferenced_storages"] == ["constants/9"]


# --------------------------------------------------------------------------- hostile archives


def rewrite(source: Path, target: Path, member: str, data: bytes) -> Path:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            new.writestr(info, data if info.filename == member else old.read(info))
    return target


@pytest.mark.parametrize(
    ("pid", "problem"),
    [
        (
            b"(X\x07\x00\x00\x00storageq\x00ctorch\nFloatStorage\nq\x01X\x04\x00\x00\x00../xq\x02X\x03\x00\x00\x00cpuK\x01tQ",
            "malformed storage record",
        ),
        (b"(X\x05\x00\x00\x00othertQ", "unexpected persistent id"),
    ],
)
def test_package_persistent_ids_are_validated(tmp_path: Path, pid: bytes, problem: str):
    pickle = b"\x80\x02" + pid + b"."
    path = rewrite(REAL / "packaged.pt", tmp_path / "bad.pt", "packaged/model/state.pkl", pickle)
    with pytest.raises(paramctl.CorruptFileError, match=problem):
        paramctl.open(path)


def test_a_torchscript_storage_shorter_than_claimed_is_refused(tmp_path: Path):
    path = rewrite(REAL / "frozen.pt", tmp_path / "short.pt", "frozen/constants/0", b"\x00" * 4)
    with pytest.raises(paramctl.CorruptFileError, match="'frozen/constants/0' has 4 bytes, the storage needs 60"):
        paramctl.open(path)


@pytest.mark.parametrize("member", ["data.pkl", "data/0"])
def test_the_encryption_bit_is_refused_as_torch_refuses_it(tmp_path: Path, member: str):
    """torch's reader (miniz) refuses a member whose general-purpose flag has the encryption bit, whatever member
    it is: paramctl does too, with the same verdict for listing and reading."""
    path = tmp_path / "flagged.pt"
    torch.save({"w": torch.arange(4.0)}, path)
    data = bytearray(path.read_bytes())
    name = f"flagged/{member}".encode()
    for signature, flags_at, name_at, length_at in ((b"PK\x03\x04", 6, 30, 26), (b"PK\x01\x02", 8, 46, 28)):
        start = 0
        while (start := data.find(signature, start)) >= 0:
            length = int.from_bytes(data[start + length_at : start + length_at + 2], "little")
            if bytes(data[start + name_at : start + name_at + length]) == name:
                data[start + flags_at] |= 1
            start += 4
    path.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="unsupported encryption"):
        torch.load(path, weights_only=True)
    result = cli("stat", path)
    assert result.exit_code == 2 and f"zip member 'flagged/{member}' is encrypted" in result.output
