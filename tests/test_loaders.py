"""Every loader against its reference library on every fixture: names, dtypes, shapes, bit-exact values, ties."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from reference import (
    FIXTURES,
    paramctl_tensors,
    raw_bytes,
    reference_flatten,
    sharing_groups,
    torch_bytes,
    torch_dtype_name,
)
from safetensors import safe_open

import paramctl
from paramctl.tree import Opaque, Tensor, Value

PT_FILES = sorted(p.name for p in FIXTURES.glob("*.pt"))
SAFETENSORS_FILES = sorted(p.name for p in FIXTURES.glob("*.safetensors"))
NPZ_FILES = sorted(p.name for p in FIXTURES.glob("*.npz"))


def test_every_fixture_is_covered():
    assert len(PT_FILES) >= 10 and len(SAFETENSORS_FILES) >= 5 and len(NPZ_FILES) >= 5


@pytest.mark.parametrize("name", PT_FILES)
def test_torch_files_match_torch_load(name: str):
    path = FIXTURES / name
    reference = reference_flatten(torch.load(path, weights_only=True))
    ours = paramctl_tensors(path)
    ref_tensors = {k: v for k, v in reference.items() if isinstance(v, torch.Tensor)}
    assert list(ours) == list(ref_tensors)  # same names, same (file) order
    for tensor_name, tensor in ref_tensors.items():
        dtype, shape, data, _ = ours[tensor_name]
        assert dtype == torch_dtype_name(tensor), tensor_name
        assert shape == tuple(tensor.shape), tensor_name
        assert data == torch_bytes(tensor), tensor_name
    ref_groups = sharing_groups({k: t.untyped_storage().data_ptr() for k, t in ref_tensors.items() if t.numel()})
    our_groups = sharing_groups({k: v[3] for k, v in ours.items() if ref_tensors[k].numel()})
    assert our_groups == ref_groups


@pytest.mark.parametrize("name", PT_FILES)
def test_torch_layout_matches_torch_load(name: str):
    path = FIXTURES / name
    reference = reference_flatten(torch.load(path, weights_only=True))
    for tensor_name, leaf in paramctl.open(path).tensors():
        tensor = reference[tensor_name]
        assert leaf.strides == tensor.stride(), tensor_name
        assert leaf.offset == tensor.storage_offset(), tensor_name
        assert leaf.storage.nbytes == tensor.untyped_storage().nbytes(), tensor_name
        assert leaf.storage.location == str(tensor.device)


def test_plain_values_match_torch_load():
    path = FIXTURES / "train_ckpt.pt"
    reference = reference_flatten(torch.load(path, weights_only=True))
    ours = {name: leaf.value for name, leaf in paramctl.open(path) if isinstance(leaf, Value)}
    expected = {k: v for k, v in reference.items() if not isinstance(v, torch.Tensor)}
    assert ours == expected
    assert ours["epoch"] == 3 and ours["optimizer.param_groups.0.params"] == [0, 1, 2, 3]


@pytest.mark.parametrize("name", SAFETENSORS_FILES)
def test_safetensors_files_match_the_library(name: str):
    path = FIXTURES / name
    ours = paramctl_tensors(path)
    tree = paramctl.open(path)
    with safe_open(path, "pt") as f:
        metadata = f.metadata() or {}
        keys = list(f.keys())
        assert tree.metadata == metadata
        for key in keys:
            tensor = f.get_tensor(key)
            dtype, shape, data, _ = ours[key]
            assert (dtype, shape) == (torch_dtype_name(tensor), tuple(tensor.shape)), key
            assert data == torch_bytes(tensor), key
    aliases = {removed: kept for removed, kept in metadata.items() if removed not in keys and kept in keys}
    assert set(ours) == set(keys) | set(aliases)
    for removed, kept in aliases.items():
        assert ours[removed][3] == ours[kept][3]  # the alias shares the kept tensor's storage
        assert tree[removed].declared_by == "metadata"


@pytest.mark.parametrize("name", NPZ_FILES)
def test_npz_files_match_numpy(name: str):
    path = FIXTURES / name
    ours = paramctl_tensors(path)
    with np.load(path, allow_pickle=False) as archive:
        assert list(ours) == list(archive.files)
        for key in archive.files:
            array = archive[key]
            dtype, shape, data, _ = ours[key]
            assert (dtype, shape) == (array.dtype.name, array.shape), key
            assert data == raw_bytes(array), key


def test_tied_fixtures_share_storage():
    for path, pairs in [
        ("tied_mlp.pt", [("2.weight", "4.weight"), ("2.bias", "4.bias")]),
        ("tied_mlp_legacy.pt", [("2.weight", "4.weight"), ("2.bias", "4.bias")]),
        ("tied_mlp.safetensors", [("2.weight", "4.weight"), ("2.bias", "4.bias")]),
        ("tiny_lm.pt", [("embed.weight", "lm_head.weight")]),
        ("tiny_lm.safetensors", [("embed.weight", "lm_head.weight")]),
        ("autoencoder.pt", [("encoder.weight", "decoder.weight")]),
    ]:
        tree = paramctl.open(FIXTURES / path)
        for a, b in pairs:
            assert tree[a].storage is tree[b].storage, (path, a, b)
    decoder = paramctl.open(FIXTURES / "autoencoder.pt")["decoder.weight"]
    assert isinstance(decoder, Tensor) and decoder.shape == (6, 3) and decoder.strides == (1, 6)


def test_format_is_chosen_by_content_not_extension(tmp_path: Path):
    for source, disguise, fmt in [
        ("mlp.pt", "model.bin", "torch-zip"),
        ("mlp.safetensors", "model.pt", "safetensors"),
        ("mlp.npz", "weights.ckpt", "npz"),
        ("tied_mlp_legacy.pt", "old.pth", "torch-legacy"),
    ]:
        target = tmp_path / disguise
        target.write_bytes((FIXTURES / source).read_bytes())
        assert paramctl.open(target).format == fmt


def test_opening_reads_no_tensor_data(tmp_path: Path):
    """Headers only: opening a file with 8 MiB of tensors reads at most a few blocks, in every format."""
    from safetensors.torch import save_file

    from paramctl.probe import Probe
    from paramctl.registry import _builtin
    from paramctl.source import FileSource

    state = {f"layers.{i}.weight": torch.full((512, 512), float(i)) for i in range(8)}
    torch.save(state, tmp_path / "big.pt")
    torch.save(state, tmp_path / "big_legacy.pt", _use_new_zipfile_serialization=False)
    save_file(state, tmp_path / "big.safetensors")
    np.savez(tmp_path / "big.npz", **{k: v.numpy() for k, v in state.items()})
    for name, loader in [
        ("big.pt", "torch"),
        ("big_legacy.pt", "torch"),
        ("big.safetensors", "safetensors"),
        ("big.npz", "npz"),
    ]:
        source = FileSource(tmp_path / name)
        tree = _builtin(loader).load(Probe(source))
        assert len(list(tree.tensors())) == 8
        assert source.bytes_read < 256 * 1024, (name, source.bytes_read)


def test_unknown_format_names_what_was_tried(tmp_path: Path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all\n" * 10)
    with pytest.raises(paramctl.UnknownFormatError, match=r"junk\.pt.*tried: safetensors, torch, npz"):
        paramctl.open(junk)


def test_foreign_globals_become_placeholders_with_their_contents(tmp_path: Path):
    """What weights_only=True refuses (an argparse.Namespace) still lists, tensors inside it included."""
    import argparse

    path = tmp_path / "with_namespace.pt"
    args = argparse.Namespace(lr=0.5, layers=[4, 8], init=torch.ones(3))
    torch.save({"args": args, "w": torch.zeros(2)}, path)
    with pytest.raises(Exception, match="Unsupported global"):
        torch.load(path, weights_only=True)
    tree = paramctl.open(path)
    assert isinstance(tree["args"], Opaque) and tree["args"].global_name == "argparse.Namespace"
    assert tree["args.lr"] == Value(0.5)
    assert tree["args.layers"] == Value([4, 8])
    assert isinstance(tree["args.init"], Tensor) and tree["args.init"].shape == (3,)
    assert isinstance(tree["w"], Tensor)
