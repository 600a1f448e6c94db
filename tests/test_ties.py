"""`paramctl ties`: groups by storage against torch.load's own sharing (data pointers, offsets, strides and the
exact elements each view touches), groups by value against torch's bytes, and every CI assertion's exit code."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import FIXTURES, reference_flatten, torch_bytes
from safetensors.torch import save_file
from typer.testing import CliRunner

import paramctl
from paramctl import reader
from paramctl.cli import app
from paramctl.ops import value_ties
from paramctl.ops.listing import list_tree
from paramctl.ops.ties import find_ties, unique_numel
from paramctl.ops.value_ties import find_value_ties

runner = CliRunner()
PROFILE = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def ties(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["ties", *args])
    return result.exit_code, result.stdout, result.stderr


def torch_tensors(path: Path) -> dict[str, torch.Tensor]:
    flat = reference_flatten(torch.load(path, weights_only=True))
    return {name: t for name, t in flat.items() if isinstance(t, torch.Tensor)}


# --------------------------------------------------------------------------- the reference, from torch


def elements(tensor: torch.Tensor) -> frozenset[int]:
    """The storage elements a view touches, enumerated: torch's own offset and strides over an index storage."""
    if tensor.numel() == 0:
        return frozenset()
    size = tensor.untyped_storage().nbytes() // tensor.element_size()
    index = torch.arange(size).as_strided(tensor.size(), tensor.stride(), tensor.storage_offset())
    return frozenset(index.reshape(-1).tolist())


def view_relation(anchor: torch.Tensor, other: torch.Tensor) -> str:
    """How two views of the same elements relate (the issue's definitions)."""
    if anchor.shape == other.shape and all(
        n == 1 or a == b for n, a, b in zip(anchor.shape, anchor.stride(), other.stride())
    ):
        return "tied"
    pairs = [sorted((n, s) for n, s in zip(t.shape, t.stride()) if n != 1) for t in (anchor, other)]
    return "transposed" if anchor.dim() == other.dim() and pairs[0] == pairs[1] else "reshaped"


def reference_storage_ties(tensors: dict[str, torch.Tensor]) -> tuple[dict[frozenset[str], dict], list, int]:
    """({tie group names: {name: (relation, partner)}}, [packed groups' names], unique elements), from torch."""
    by_pointer: dict[int, list[str]] = {}
    for name, tensor in tensors.items():
        by_pointer.setdefault(tensor.untyped_storage().data_ptr(), []).append(name)
    groups: dict[frozenset[str], dict] = {}
    packed = []
    unique = 0
    for names in by_pointer.values():
        sets = {name: elements(tensors[name]) for name in names}
        unique += len(frozenset().union(*sets.values()))
        if len(names) < 2:
            continue
        clusters: list[list[str]] = []
        for name in names:
            same = next((c for c in clusters if sets[c[0]] == sets[name]), None)
            same.append(name) if same is not None else clusters.append([name])
        component = list(range(len(clusters)))
        for i in range(len(clusters)):
            for j in range(i):
                if sets[clusters[i][0]] & sets[clusters[j][0]]:
                    old, new = component[i], component[j]
                    component = [new if c == old else c for c in component]
        parts: dict[int, list[int]] = {}
        for i, c in enumerate(component):
            parts.setdefault(c, []).append(i)
        representatives = [clusters[found[0]][0] for found in parts.values()]
        relations: dict[str, tuple[str, str | None]] = {}
        for i, cluster in enumerate(clusters):
            anchor = cluster[0]
            if len(parts[component[i]]) == 1 and len(cluster) == 1:
                relations[anchor] = ("packed", next(r for r in representatives if r != anchor))
                continue
            earlier = [j for j in range(i) if sets[clusters[j][0]] & sets[anchor]]
            relations[anchor] = ("overlapping", clusters[earlier[0]][0]) if earlier else ("anchor", None)
            for name in cluster[1:]:
                relations[name] = (view_relation(tensors[anchor], tensors[name]), anchor)
        for found in parts.values():
            members = {name for i in found for name in clusters[i]}
            if len(members) > 1:
                groups[frozenset(members)] = {name: relations[name] for name in members}
        if len(parts) > 1:
            packed.append(representatives)
    return groups, packed, unique


def our_storage_ties(path: Path, include_packed: bool = True) -> tuple[dict[frozenset[str], dict], list, int]:
    result = find_ties(paramctl.open(path), include_packed=include_packed)
    groups = {
        frozenset(g.names): {m.name: (m.relation, m.partner) for m in g.members}
        for g in result.groups
        if g.kind == "tie"
    }
    packed = [g.names for g in result.groups if g.kind == "packed"]
    return groups, packed, result.unique_numel


def assert_matches_torch(path: Path) -> None:
    tensors = torch_tensors(path)
    expected_groups, expected_packed, expected_unique = reference_storage_ties(tensors)
    groups, packed, unique = our_storage_ties(path)
    assert groups == expected_groups
    assert sorted(packed) == sorted(expected_packed)
    assert unique == expected_unique
    tree = paramctl.open(path)
    assert unique_numel(tree) == expected_unique
    # `ls` marks exactly the names in tie groups (one implementation).
    marked = {row.name for row in list_tree(tree).tensors if row.tie is not None}
    assert marked == {name for names in expected_groups for name in names}


# --------------------------------------------------------------------------- fixtures


TIED_MLP = {frozenset({"2.weight", "4.weight"}), frozenset({"2.bias", "4.bias"})}
TINY_LM = {frozenset({"embed.weight", "lm_head.weight"})}
AUTOENCODER = {frozenset({"encoder.weight", "decoder.weight"})}


@pytest.mark.parametrize(
    "name",
    ["tied_mlp.pt", "tied_mlp_legacy.pt", "tiny_lm.pt", "autoencoder.pt", "dtypes.pt", "mlp.pt", "train_ckpt.pt"],
)
def test_torch_fixtures_match_torch_load(name: str):
    assert_matches_torch(FIXTURES / name)


@pytest.mark.parametrize(
    "name, expected, relation",
    [
        ("tied_mlp.pt", TIED_MLP, "tied"),
        ("tied_mlp_legacy.pt", TIED_MLP, "tied"),
        ("tied_mlp.safetensors", TIED_MLP, "tied"),
        ("tiny_lm.pt", TINY_LM, "tied"),
        ("tiny_lm.safetensors", TINY_LM, "tied"),
        ("autoencoder.pt", AUTOENCODER, "transposed"),
        ("dtypes.pt", {frozenset({"base", "strided"})}, "overlapping"),
    ],
)
def test_fixture_ties(name: str, expected: set, relation: str):
    result = find_ties(paramctl.open(FIXTURES / name))
    assert {frozenset(g.names) for g in result.ties} == expected
    for group in result.ties:
        assert [m.relation for m in group.members] == ["anchor", relation]
        assert group.members[1].partner == group.members[0].name
        assert group.declared_by == ("metadata" if name.endswith(".safetensors") else None)


def test_saved_parameters_are_the_shared_elements():
    model = torch.load(FIXTURES / "tiny_lm.pt", weights_only=True)
    result = find_ties(paramctl.open(FIXTURES / "tiny_lm.pt"))
    (group,) = result.ties
    vocab, dim = model["embed.weight"].shape
    assert group.saved_numel == vocab * dim  # a tied embedding saves |V|·d
    assert result.numel == sum(t.numel() for t in model.values())
    assert result.saved_numel == vocab * dim
    assert result.unique_numel == result.numel - vocab * dim


@pytest.mark.parametrize("name", ["mlp.pt", "mlp.safetensors", "mlp.npz", "tied_mlp.npz", "tiny_lm.npz"])
def test_no_storage_ties(name: str):
    result = find_ties(paramctl.open(FIXTURES / name))
    assert result.ties == [] and result.saved_numel == 0


def test_by_storage_reads_headers_only():
    tree = paramctl.open(FIXTURES / "tied_mlp.pt")
    source = next(t for _, t in tree.tensors()).storage.data.source
    before = source.bytes_read
    find_ties(tree, include_packed=True)
    assert source.bytes_read == before


# --------------------------------------------------------------------------- by value on the fixtures


@pytest.mark.parametrize(
    "copies, original",
    [
        ("tied_mlp.npz", "tied_mlp.pt"),
        ("tiny_lm.npz", "tiny_lm.pt"),
        ("autoencoder.npz", "autoencoder.pt"),
        ("autoencoder.safetensors", "autoencoder.pt"),
    ],
)
def test_by_value_finds_the_ties_the_format_dropped(copies: str, original: str):
    by_value = find_value_ties(paramctl.open(FIXTURES / copies))
    by_storage = find_ties(paramctl.open(FIXTURES / original))
    relations = lambda result: {frozenset((m.name, m.relation) for m in g.members if m.partner) for g in result.ties}  # noqa: E731
    assert {frozenset(g.names) for g in by_value.ties} == {frozenset(g.names) for g in by_storage.ties}
    if copies.startswith("autoencoder.safetensors"):  # sorted by name there: the decoder comes first
        assert {m.relation for g in by_value.ties for m in g.members} == {"anchor", "transposed"}
    else:
        assert relations(by_value) == relations(by_storage)
    assert (by_value.numel, by_value.unique_numel) == (by_storage.numel, by_storage.unique_numel)


def test_by_value_on_a_tied_safetensors_saved_without_metadata(tmp_path: Path):
    model = torch.load(FIXTURES / "tied_mlp.pt", weights_only=True)
    path = tmp_path / "plain.safetensors"
    save_file({name: t.clone() for name, t in model.items()}, path)
    assert find_ties(paramctl.open(path)).ties == []
    assert {frozenset(g.names) for g in find_value_ties(paramctl.open(path)).ties} == TIED_MLP


# --------------------------------------------------------------------------- random state dicts: by storage


def make_tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    if not dtype.is_floating_point:
        return torch.randint(0, 100, shape, generator=generator).to(dtype)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)


@st.composite
def views(draw: Any, base: torch.Tensor, depth: int = 2) -> torch.Tensor:
    """A view of `base` that shares its storage: the same tensor, a slice, a transpose, a narrow, a flattening..."""
    tensor = base
    for _ in range(draw(st.integers(1, depth))):
        kind = draw(
            st.sampled_from(
                ["same", "slice", "every2", "transpose", "narrow", "flatten", "unsqueeze", "expand", "diag"]
            )
        )
        dims = tensor.dim()
        if kind == "slice" and dims:
            dim = draw(st.integers(0, dims - 1))
            size = tensor.shape[dim]
            start = draw(st.integers(0, size - 1))
            stop = draw(st.integers(start + 1, size))
            tensor = tensor.narrow(dim, start, stop - start)[
                (slice(None),) * dim + (slice(None, None, draw(st.integers(1, 3))),)
            ]
        elif kind == "every2" and dims and tensor.shape[-1] >= 2:  # interleaved halves: disjoint, yet entwined
            tensor = tensor[..., draw(st.integers(0, 1)) :: 2]
        elif kind == "transpose" and dims >= 2:
            tensor = tensor.transpose(*draw(st.permutations(range(dims)))[:2])
        elif kind == "narrow" and dims:
            dim = draw(st.integers(0, dims - 1))
            start = draw(st.integers(0, tensor.shape[dim] - 1))
            tensor = tensor.narrow(dim, start, draw(st.integers(1, tensor.shape[dim] - start)))
        elif kind == "flatten" and tensor.is_contiguous():
            tensor = tensor.view(-1)
        elif kind == "unsqueeze":
            tensor = tensor.unsqueeze(draw(st.integers(0, dims)))
        elif kind == "expand" and dims < 3:
            tensor = tensor.unsqueeze(0).expand(2, *tensor.shape)
        elif kind == "diag" and dims == 2:
            tensor = tensor.diagonal()
    return tensor


@st.composite
def shared_state_dicts(draw: Any) -> dict[str, torch.Tensor]:
    """Bases (saved or not) with random views of them, and maybe a flat buffer cut into disjoint (packed) parts."""
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.int16, torch.uint8, torch.bool]))
    state: dict[str, torch.Tensor] = {}
    for b in range(draw(st.integers(1, 3))):
        shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
        base = make_tensor(dtype, shape, b)
        if draw(st.booleans()):
            state[f"base{b}"] = base
        for v in range(draw(st.integers(0, 4))):
            state[f"view{b}_{v}"] = draw(views(base))
    if draw(st.booleans()):
        flat = make_tensor(dtype, (draw(st.integers(4, 30)),), 99)
        cuts = sorted(set(draw(st.lists(st.integers(1, len(flat) - 1), min_size=1, max_size=4))))
        for i, (start, stop) in enumerate(zip([0, *cuts], [*cuts, len(flat)])):
            if draw(st.integers(0, 3)):  # leave some gaps unsaved
                state[f"part{i}"] = flat[start:stop]
        if state and draw(st.booleans()):
            state["alias"] = state[draw(st.sampled_from(sorted(state)))]
    if not state:
        state["lone"] = make_tensor(dtype, (3,), 7)
    order = draw(st.permutations(list(state)))
    return {name: state[name] for name in order}


@PROFILE
@given(shared_state_dicts(), st.booleans())
def test_random_ties_match_torch_load(state: dict[str, torch.Tensor], legacy: bool):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pt"
        torch.save(state, path, _use_new_zipfile_serialization=not legacy)
        assert_matches_torch(path)


def test_strided_views_are_compared_element_by_element(tmp_path: Path):
    base = torch.arange(48, dtype=torch.float32).view(6, 8)
    halves = tmp_path / "halves.pt"
    torch.save({"even": base[:, ::2], "odd": base[:, 1::2]}, halves)
    assert our_storage_ties(halves) == ({}, [["even", "odd"]], 48)  # interleaved, but no element in common
    assert_matches_torch(halves)
    subsets = tmp_path / "subsets.pt"
    torch.save({"even": base[:, ::2], "column": base[:, :1], "diagonal": base[:, :6].diagonal()}, subsets)
    groups, packed, unique = our_storage_ties(subsets)
    assert list(groups) == [frozenset({"even", "column", "diagonal"})] and packed == []
    assert unique == 24 + 3  # the column lies inside the even columns; the diagonal adds (1,1), (3,3), (5,5)
    assert_matches_torch(subsets)


# --------------------------------------------------------------------------- random state dicts: by value


def changed(tensor: torch.Tensor, position: int) -> torch.Tensor:
    """A copy that differs in one element's bits (for floats, 0.0 becomes -0.0: equal as numbers, not as bits)."""
    flat = tensor.clone().reshape(-1)
    value = flat[position]
    if tensor.dtype == torch.bool:
        flat[position] = ~value
    elif tensor.dtype.is_floating_point:
        flat[position] = -value if value != 0 else (-0.0 if torch.signbit(value).item() is False else 0.0)
        if torch.isnan(value):
            flat[position] = 1.5
    else:
        flat[position] = value + 1 if value < 100 else value - 1
    return flat.reshape(tensor.shape)


@st.composite
def valued_state_dicts(draw: Any, aliases: bool) -> dict[str, torch.Tensor]:
    """Independent tensors with copies, transposed copies, reshaped copies and near-copies of each other."""
    state: dict[str, torch.Tensor] = {}
    for i in range(draw(st.integers(2, 7))):
        kinds = ["new", "copy", "transposed", "reshaped", "near"] + (["alias", "view_t"] if aliases else [])
        kind = draw(st.sampled_from(kinds)) if state else "new"
        source = state[draw(st.sampled_from(sorted(state)))] if state else None
        if kind == "new" or source is None:
            dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.int32, torch.bool]))
            shape = tuple(draw(st.lists(st.integers(1, 12), min_size=1, max_size=2)))
            tensor = make_tensor(dtype, shape, draw(st.integers(0, 3)))  # few seeds: equal values happen
            if dtype.is_floating_point and draw(st.booleans()):
                tensor.reshape(-1)[0] = draw(st.sampled_from([float("nan"), -0.0, 0.0, float("inf")]))
        elif kind == "copy":
            tensor = source.clone()
        elif kind == "transposed":
            tensor = source.t().clone(memory_format=torch.contiguous_format) if source.dim() == 2 else source.clone()
        elif kind == "reshaped":
            tensor = source.reshape(-1).clone() if source.dim() == 2 else source.reshape(1, -1).clone()
        elif kind == "near":
            tensor = changed(source, draw(st.integers(0, source.numel() - 1)))
        elif kind == "alias":
            tensor = source
        else:
            tensor = source.t() if source.dim() == 2 else source
        state[f"t{i}"] = tensor
    return state


def reference_value_groups(state: dict[str, torch.Tensor]) -> set[frozenset[str]]:
    """Names joined when torch says their bytes are equal, or one's bytes equal the other's transpose's."""
    names = list(state)
    root = {name: name for name in names}

    def find(name: str) -> str:
        while root[name] != name:
            name = root[name]
        return name

    for i, a in enumerate(names):
        for b in names[:i]:
            ta, tb = state[a], state[b]
            if ta.dtype != tb.dtype or ta.numel() != tb.numel():
                continue
            same = torch_bytes(ta) == torch_bytes(tb)
            transposed = ta.dim() == 2 and tb.shape == ta.t().shape and torch_bytes(ta.t()) == torch_bytes(tb)
            if same or transposed:
                root[find(a)] = find(b)
    groups: dict[str, set[str]] = {}
    for name in names:
        groups.setdefault(find(name), set()).add(name)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def check_relation(state: dict[str, torch.Tensor], name: str, relation: str, partner: str) -> None:
    a, b = state[partner], state[name]
    if relation == "tied":
        assert a.shape == b.shape and torch_bytes(a) == torch_bytes(b), (name, partner)
    elif relation == "transposed":
        assert a.dim() == 2 and b.shape == a.t().shape and torch_bytes(a.t()) == torch_bytes(b), (name, partner)
    else:
        assert relation == "reshaped" and a.shape != b.shape and torch_bytes(a) == torch_bytes(b), (name, partner)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["npz", "npz-deflated", "safetensors", "pt"]).flatmap(
        lambda fmt: st.tuples(st.just(fmt), valued_state_dicts(aliases=fmt == "pt"))
    ),
    st.integers(1, 8),
    st.integers(1, 64),
)
def test_random_value_ties_match_torch(case: tuple[str, dict[str, torch.Tensor]], samples: int, chunk_bytes: int):
    fmt, state = case
    with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as patch:
        # Few samples and tiny chunks and bands: most candidates reach the chunked comparison, over many chunks.
        patch.setattr(value_ties, "SAMPLES", samples)
        patch.setattr(reader, "CHUNK_BYTES", chunk_bytes)
        patch.setattr(value_ties, "BAND_BYTES", chunk_bytes)
        patch.setattr(value_ties, "TILE", 1 + chunk_bytes % 5)
        path = Path(folder) / f"model.{fmt.split('-')[0]}"
        if fmt == "pt":
            torch.save(state, path)
        elif fmt == "safetensors":
            save_file(state, path)
        else:
            arrays = {name: t.numpy() for name, t in state.items()}
            (np.savez_compressed if fmt == "npz-deflated" else np.savez)(path, **arrays)
        result = find_value_ties(paramctl.open(path))
    assert {frozenset(g.names) for g in result.ties} == reference_value_groups(state)
    order = list(state)
    for group in result.ties:
        assert group.members[0].relation == "anchor"
        assert order.index(group.members[0].name) == min(order.index(name) for name in group.names)
        for member in group.members[1:]:
            assert member.partner in group.names
            check_relation(state, member.name, member.relation, member.partner)
    assert result.saved_numel == sum(g.numel - g.members[0].tensor.numel for g in result.ties)


# --------------------------------------------------------------------------- packed buffers and --all


@pytest.fixture
def packed_file(tmp_path: Path) -> Path:
    """An LSTM-like flat buffer holding three parameters side by side, one of them also saved under a 2nd name."""
    flat = torch.arange(24, dtype=torch.float32)
    weight = flat[:12].view(3, 4)
    state = {"weight": weight, "bias_ih": flat[12:18], "bias_hh": flat[18:24], "weight_alias": weight}
    path = tmp_path / "packed.pt"
    torch.save(state, path)
    return path


def test_packed_parts_are_not_ties(packed_file: Path):
    result = find_ties(paramctl.open(packed_file))
    assert [g.names for g in result.groups] == [["weight", "weight_alias"]]
    with_packed = find_ties(paramctl.open(packed_file), include_packed=True)
    assert [(g.kind, g.names) for g in with_packed.groups] == [
        ("tie", ["weight", "weight_alias"]),
        ("packed", ["weight", "bias_ih", "bias_hh"]),
    ]
    assert with_packed.groups[1].saved_numel == 0
    # `ls` marks the tie, not the parameters packed beside it.
    marked = {row.name for row in list_tree(paramctl.open(packed_file)).tensors if row.tie is not None}
    assert marked == {"weight", "weight_alias"}
    assert_matches_torch(packed_file)


def test_all_shows_packed_buffers_in_the_cli(packed_file: Path):
    code, out, _ = ties(str(packed_file))
    assert code == 0 and "packed" not in out
    code, out, _ = ties(str(packed_file), "--all", "--json")
    assert code == 0
    kinds = [(g["kind"], [m["relation"] for m in g["members"]]) for g in json.loads(out)["groups"]]
    assert kinds == [("tie", ["anchor", "tied"]), ("packed", ["packed", "packed", "packed"])]
    code, out, _ = ties(str(packed_file), "--all")
    assert "packed buffer · storage" in out and "packed beside weight" in out


# --------------------------------------------------------------------------- output


def strict_json(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_json_schema_against_torch():
    path = FIXTURES / "autoencoder.pt"
    code, out, _ = ties(str(path), "--json")
    assert code == 0
    report = strict_json(out)
    assert set(report) == {"file", "format", "by", "groups", "totals", "skipped", "problems"}
    assert report["by"] == "storage" and report["format"] == "torch-zip" and report["problems"] == []
    model = torch.load(path, weights_only=True)
    (group,) = report["groups"]
    assert group["kind"] == "tie" and group["declared_by"] is None
    assert group["storage"] == group["members"][0]["storage"]
    for member in group["members"]:
        tensor = model[member["name"]]
        assert member["shape"] == list(tensor.shape)
        assert member["strides"] == list(tensor.stride())
        assert member["offset"] == tensor.storage_offset()
        assert member["dtype"] == "float32" and member["numel"] == tensor.numel()
    assert [(m["relation"], m["partner"]) for m in group["members"]] == [
        ("anchor", None),
        ("transposed", "encoder.weight"),
    ]
    numel = sum(t.numel() for t in model.values())
    shared = model["encoder.weight"].numel()
    assert report["totals"] == {"numel": numel, "unique_numel": numel - shared, "saved_numel": shared, "ties": 1}
    assert group["saved_numel"] == shared and group["unique_numel"] == shared and group["numel"] == 2 * shared


def test_human_output():
    model = torch.load(FIXTURES / "tiny_lm.pt", weights_only=True)
    numel = sum(t.numel() for t in model.values())
    saved = model["embed.weight"].numel()
    code, out, _ = ties(str(FIXTURES / "tiny_lm.safetensors"))
    lines = out.splitlines()
    assert code == 0
    assert lines[0] == f"tie 1 · storage embed.weight · declared by metadata · saves {saved:,} parameters"
    assert lines[1].split()[0] == "embed.weight" and lines[1].endswith("anchor")
    assert lines[2].split()[0] == "lm_head.weight" and lines[2].endswith("= embed.weight (tied)")
    assert lines[-1] == f"{numel:,} parameters as listed · {numel - saved:,} unique · {saved:,} saved by 1 tie"
    code, out, _ = ties(str(FIXTURES / "mlp.npz"), "--by", "value")
    assert out.splitlines()[0] == "no ties (by value)"


# --------------------------------------------------------------------------- CI assertions


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--expect", "2.weight=4.weight", "--expect", "2.bias=4.bias"], 0, ""),
        (["--expect", "4.weight=2.weight"], 0, ""),
        (["--expect", "0.weight=2.weight"], 1, "expected 0.weight=2.weight to be one tie group, but 0.weight is not"),
        (["--expect", "2.weight=4.weight=2.bias"], 1, "2.bias is tied to 4.bias"),
        (["--expect", "2.weight=nope"], 1, "expected 2.weight=nope: no tensor named nope"),
        (["--expect", "2.weight"], 2, "write two or more tensor names"),
        (["--expect", "2.weight=="], 2, "write two or more tensor names"),
        (["--expect-none"], 1, "expected no ties, found 2: 2.weight=4.weight; 2.bias=4.bias"),
    ],
)
def test_expectations(args: list[str], code: int, message: str):
    exit_code, _, err = ties(str(FIXTURES / "tied_mlp.pt"), *args)
    assert exit_code == code
    assert message in err
    if code == 0:
        assert err == ""


def test_expect_none_passes_without_ties():
    assert ties(str(FIXTURES / "mlp.pt"), "--expect-none")[0] == 0
    assert ties(str(FIXTURES / "tied_mlp.npz"), "--expect-none")[0] == 0  # the format cannot store ties
    assert ties(str(FIXTURES / "tied_mlp.npz"), "--expect-none", "--by", "value")[0] == 1  # but the values are


def test_expectation_by_value_finds_a_tie_lost_in_conversion():
    args = ["--expect", "embed.weight=lm_head.weight"]
    assert ties(str(FIXTURES / "tiny_lm.npz"), *args)[0] == 1
    assert ties(str(FIXTURES / "tiny_lm.npz"), "--by", "value", *args)[0] == 0


def test_problems_are_in_the_json():
    code, out, _ = ties(str(FIXTURES / "tied_mlp.pt"), "--json", "--expect", "0.weight=0.bias")
    assert code == 1
    assert strict_json(out)["problems"] == [
        "expected 0.weight=0.bias to be one tie group, but 0.weight is not tied; 0.bias is not tied"
    ]


def write_baseline(tmp_path: Path, name: str, *args: str) -> str:
    code, out, _ = ties(str(FIXTURES / name), "--json", *args)
    assert code == 0
    path = tmp_path / f"{name}.{'-'.join(args)}.json"
    path.write_text(out)
    return str(path)


def test_baseline_unchanged(tmp_path: Path):
    baseline = write_baseline(tmp_path, "tied_mlp.pt")
    assert ties(str(FIXTURES / "tied_mlp.pt"), "--baseline", baseline) == (
        0,
        ties(str(FIXTURES / "tied_mlp.pt"))[1],
        "",
    )
    assert ties(str(FIXTURES / "tied_mlp_legacy.pt"), "--baseline", baseline)[0] == 0
    assert ties(str(FIXTURES / "tied_mlp.safetensors"), "--baseline", baseline)[0] == 0  # same names, other order


def test_baseline_tie_lost(tmp_path: Path):
    baseline = write_baseline(tmp_path, "tied_mlp.pt")
    code, _, err = ties(str(FIXTURES / "tied_mlp.npz"), "--baseline", baseline)
    assert code == 1
    assert err.splitlines() == [
        f"paramctl: {FIXTURES / 'tied_mlp.npz'}: tie lost: 2.weight=4.weight",
        f"paramctl: {FIXTURES / 'tied_mlp.npz'}: tie lost: 2.bias=4.bias",
    ]


def test_baseline_tie_gained(tmp_path: Path):
    state = torch.load(FIXTURES / "tied_mlp.pt", weights_only=True)
    untied = {name: t.clone() for name, t in state.items()}
    untied["4.weight"] = untied["2.weight"]  # the biases were untied by a refactor
    path = tmp_path / "partly.pt"
    torch.save(untied, path)
    baseline = str(tmp_path / "partly.json")
    Path(baseline).write_text(ties(str(path), "--json")[1])
    code, _, err = ties(str(FIXTURES / "tied_mlp.pt"), "--baseline", baseline)
    assert code == 1 and err.splitlines()[0].endswith("tie gained: 2.bias=4.bias")
    code, _, err = ties(str(path), "--baseline", write_baseline(tmp_path, "tied_mlp.pt"))
    assert code == 1 and err.splitlines()[0].endswith("tie lost: 2.bias=4.bias")


def test_baseline_by_value_survives_a_conversion(tmp_path: Path):
    baseline = write_baseline(tmp_path, "tied_mlp.pt", "--by", "value")
    assert ties(str(FIXTURES / "tied_mlp.npz"), "--by", "value", "--baseline", baseline)[0] == 0
    assert ties(str(FIXTURES / "mlp.npz"), "--by", "value", "--baseline", baseline)[0] == 1


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "not a `paramctl ties --json` output"),
        ('{"groups": []}', "not a `paramctl ties --json` output"),
        ('{"by": "storage", "groups": [{"members": [{"name": 3}]}]}', "not a `paramctl ties --json` output"),
    ],
)
def test_bad_baseline_is_bad_input(tmp_path: Path, content: str, message: str):
    path = tmp_path / "baseline.json"
    path.write_text(content)
    code, _, err = ties(str(FIXTURES / "tied_mlp.pt"), "--baseline", str(path))
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_baseline_made_by_value_needs_by_value(tmp_path: Path):
    baseline = write_baseline(tmp_path, "tied_mlp.pt", "--by", "value")
    code, _, err = ties(str(FIXTURES / "tied_mlp.pt"), "--baseline", baseline)
    assert code == 2 and "made with --by value" in err


@pytest.mark.parametrize(
    "args, message",
    [
        ([str(FIXTURES / "missing.pt")], "no such file"),
        ([str(FIXTURES / "tied_mlp.pt"), "--by", "bytes"], "--by must be storage or value"),
        ([str(FIXTURES / "tied_mlp.pt"), "--by", "value", "--all"], "--all (packed buffers) applies to --by storage"),
        ([str(FIXTURES / "tied_mlp.pt"), "--baseline", str(FIXTURES / "missing.json")], "no such file"),
        ([str(FIXTURES / "generate.py")], "unrecognised format"),
    ],
)
def test_bad_input_exits_2(args: list[str], message: str):
    process = subprocess.run([sys.executable, "-m", "paramctl", "ties", *args], capture_output=True, text=True)
    assert process.returncode == 2
    assert message in process.stderr and len(process.stderr.splitlines()) == 1
    assert "Traceback" not in process.stderr
