"""`paramctl show PATH NAME[INDEX]…`: values and selections against torch / NumPy / safetensors reading the same file.

Selections are checked against NumPy indexing of the values the reference library gives (and torch indexing where
torch supports the index); printed text against `numpy.array2string` of the whole selection, summarized or not;
byte accounting against the source's counter; pictures against colours computed from the reference values.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from reference import FIXTURES, torch_dtypes
from reference import reference_values as shared_reference_values
from typer.testing import CliRunner

import paramctl
from paramctl.cli import app
from paramctl.errors import UsageError
from paramctl.ops import show as show_module
from paramctl.ops.index import Layout, parse, select
from paramctl.ops.show import THRESHOLD, Selection, heatmap, resolve, show
from paramctl.tree import contiguous_strides

PROFILE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW_PROFILE = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EXOTIC = (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2)
TORCH_DTYPES = [d for d in torch_dtypes() if d != torch.complex128]
runner = CliRunner()


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A torch tensor's values in NumPy; bfloat16 and float8 as float32 (exact), as paramctl prints them."""
    tensor = tensor.detach()
    return (tensor.float() if tensor.dtype in EXOTIC else tensor).numpy()


def numpy_text(values: np.ndarray, precision: int = 8) -> str:
    """How NumPy prints the whole selection (its defaults: threshold 1000, 3 edge items, width 75)."""
    return np.array2string(values, threshold=1000, edgeitems=3, precision=precision, max_line_width=75)


def reference_values(path: Path) -> dict[str, np.ndarray]:
    """name -> values, as the format's own library reads the file."""
    return shared_reference_values(path, as_numpy)


def selected(path: Path, spec: str, full: bool = True) -> tuple[Selection, Any]:
    tree = paramctl.open(path)
    (selection,) = resolve(tree, [spec])
    return selection, show(tree.file, [selection], full).shown[0]


def cli(*args: str) -> Any:
    return runner.invoke(app, ["show", *map(str, args)])


# --------------------------------------------------------------------------- the index parser against NumPy

SLICES = st.builds(
    slice, st.none() | st.integers(-8, 8), st.none() | st.integers(-8, 8), st.none() | st.integers(-3, 3)
)
INDEX_ITEMS = st.one_of(st.integers(-7, 7), SLICES, st.just(Ellipsis), st.just(None))
WIDE = st.one_of(st.none(), st.none(), st.none(), st.integers(-45, 45))
WIDE_SLICES = st.builds(slice, WIDE, WIDE, st.none() | st.integers(-3, 3))  # often whole, so large selections stay
MOSTLY_SLICES = st.one_of(WIDE_SLICES, WIDE_SLICES, WIDE_SLICES, st.integers(-3, 3), st.just(Ellipsis), st.just(None))


def item_text(item: Any, draw: Any) -> str:
    if item is Ellipsis:
        return "..."
    if item is None:
        return draw(st.sampled_from(["None", "np.newaxis"]))
    if isinstance(item, int):
        return str(item)
    parts = ["" if v is None else str(v) for v in (item.start, item.stop)]
    if item.step is not None:
        parts.append(str(item.step))
    elif draw(st.booleans()):
        parts.append("")  # `a:b:` is `a:b`
    return ":".join(parts)


@st.composite
def indices(draw: Any, max_items: int = 5, kinds: Any = INDEX_ITEMS) -> tuple[tuple[Any, ...], str]:
    """(the index as Python objects, the same index as text with varied spacing and an optional trailing comma)."""
    items = tuple(draw(st.lists(kinds, min_size=1, max_size=max_items)))
    spaces = draw(st.sampled_from(["", " ", "  "]))
    text = ("," + spaces).join(item_text(item, draw) for item in items)
    if len(items) > 1 and draw(st.booleans()):
        text += ","
    return items, f"[{text}]"


def strided_values(base: np.ndarray, layout: Layout) -> np.ndarray:
    """The elements of a flat array a layout names, by explicit position arithmetic."""
    positions = np.full(layout.shape, layout.offset, dtype=np.int64)
    for axis, (n, stride) in enumerate(zip(layout.shape, layout.strides)):
        positions += (np.arange(n) * stride).reshape((1,) * axis + (n,) + (1,) * (layout.ndim - axis - 1))
    return base.reshape(-1)[positions]


@PROFILE
@given(st.lists(st.integers(0, 5), min_size=0, max_size=4), indices())
def test_index_resolves_as_numpy_does(shape: list[int], index: tuple[tuple[Any, ...], str]):
    items, text = index
    array = np.arange(math.prod(shape)).reshape(shape)
    try:
        expected = array[items]
    except (IndexError, ValueError):
        with pytest.raises(UsageError):
            select(Layout(0, tuple(shape), contiguous_strides(tuple(shape))), text)
        return
    layout = select(Layout(0, tuple(shape), contiguous_strides(tuple(shape))), text)
    assert layout.shape == np.shape(expected)
    assert np.array_equal(strided_values(array, layout), expected)


@PROFILE
@given(st.lists(st.integers(1, 5), min_size=1, max_size=3), indices(max_items=2), indices(max_items=2))
def test_chained_groups_index_the_result(shape: list[int], first: Any, second: Any):
    """`x[a][b]` is `(x[a])[b]`."""
    array = np.arange(math.prod(shape)).reshape(shape)
    try:
        expected = array[first[0]][second[0]]
    except (IndexError, ValueError):
        with pytest.raises(UsageError):
            select(Layout(0, tuple(shape), contiguous_strides(tuple(shape))), first[1] + second[1])
        return
    layout = select(Layout(0, tuple(shape), contiguous_strides(tuple(shape))), first[1] + second[1])
    assert np.array_equal(strided_values(array, layout), expected)


@pytest.mark.parametrize(
    "text",
    ["[]", "[a]", "[1.5]", "[0,,1]", "[1:2:3:4]", "[True]", "[__import__('os')]", "[-]", "[0x1]", "[1:a]", "[:,:]x"],
)
def test_parser_rejects_what_is_not_basic_indexing(text: str):
    with pytest.raises(UsageError):
        parse(text)


def test_parser_forms():
    assert parse("[0, ::2][...]") == [(0, slice(None, None, 2)), (Ellipsis,)]
    assert parse("[ -1 , None ,np.newaxis, 1:-1:-2 ]") == [(-1, None, None, slice(1, -1, -2))]
    assert parse("[()]") == [()]
    assert parse("[3,]") == [(3,)]


# --------------------------------------------------------------------------- values against the reference libraries

FIXTURE_FILES = sorted(p.name for p in FIXTURES.iterdir() if p.suffix in (".pt", ".safetensors", ".npz"))
FIXTURE_INDICES = ["", "[0]", "[-1]", "[::2]", "[::-1]", "[..., 0]", "[None, ..., 1:]", "[1:, ::-2]", "[()]"]


@pytest.mark.parametrize("file", FIXTURE_FILES)
def test_fixture_values_match_reference(file: str):
    """Every tensor of every fixture, whole and through several indices, against NumPy indexing of the reference."""
    path = FIXTURES / file
    references = reference_values(path)
    tree = paramctl.open(path)
    checked = 0
    for name, _ in tree.tensors():
        for index in FIXTURE_INDICES:
            expected_all = references[name]
            try:
                expected = np.asarray(expected_all[parse(index)[0]] if index else expected_all)
            except IndexError:
                with pytest.raises(UsageError, match=r"has shape"):
                    resolve(tree, [name + index])
                continue
            (selection,) = resolve(tree, [name + index])
            shown = show(tree.file, [selection], full=True).shown[0]
            values = show_module.printable(shown.values)
            assert values.shape == expected.shape and values.dtype == expected.dtype, (name, index)
            assert values.tobytes() == np.ascontiguousarray(expected).tobytes(), (name, index)
            assert shown.text() == numpy_text(expected), (name, index)
            checked += 1
    assert checked >= len(references)


def test_selections_match_torch_indexing():
    """Where torch supports the index (no negative steps), torch's own indexing of torch.load agrees."""
    state = torch.load(FIXTURES / "tiny_lm.pt", weights_only=True)
    for spec, expected in [
        ("embed.weight[5]", state["embed.weight"][5]),
        ("embed.weight[:, :4]", state["embed.weight"][:, :4]),
        ("embed.weight[::3, -1]", state["embed.weight"][::3, -1]),
        ("embed.weight[..., 2]", state["embed.weight"][..., 2]),
        ("lm_head.weight[None, 2:9:3]", state["lm_head.weight"][None, 2:9:3]),
        ("hidden.bias[-3:]", state["hidden.bias"][-3:]),
    ]:
        _, shown = selected(FIXTURES / "tiny_lm.pt", spec)
        assert np.array_equal(shown.values, expected.numpy()), spec


SAME_SIZE_INTS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def raw_torch(tensor: torch.Tensor) -> np.ndarray:
    """A tensor's elements as same-sized integers: its bits, comparable whatever the dtype."""
    return tensor.contiguous().view(SAME_SIZE_INTS[tensor.element_size()]).numpy()


def raw(values: np.ndarray) -> np.ndarray:
    return values.view(f"i{values.itemsize}" if values.itemsize > 1 else "u1")


def torch_view(base: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "transposed" and base.dim() >= 2:
        return base.transpose(0, -1)
    if kind == "stepped" and base.dim() >= 1:
        return base[::2]
    if kind == "narrowed" and base.dim() >= 1 and base.shape[-1] > 1:
        return base[..., 1:]
    return base


@st.composite
def tensors(draw: Any) -> torch.Tensor:
    """Tensors of every dtype, 0-d to 4-d, empty ones included, large enough to be summarized now and then."""
    dtype = draw(st.sampled_from(TORCH_DTYPES))
    small = st.lists(st.integers(0, 5), min_size=0, max_size=4)
    large = st.lists(st.integers(1, 5), max_size=2).flatmap(  # large enough to print summarized, even when stepped
        lambda ones: st.lists(st.integers(40, 70), min_size=2, max_size=2).map(lambda big: [*ones, *big])
    ) | st.integers(2100, 5000).map(lambda n: [n])
    shape = draw(small | large)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = np.asarray(rng.standard_normal(shape) * draw(st.sampled_from([1e-3, 1.0, 300.0])))
    if dtype.is_floating_point and values.size and draw(st.booleans()):
        values.reshape(-1)[rng.integers(0, values.size, 3)] = [np.nan, np.inf, -np.inf]
    base = torch.from_numpy(values)
    if dtype == torch.bool:
        return base > 0
    if dtype == torch.complex64:
        return torch.complex(base, 0.5 - base).to(dtype)
    if not dtype.is_floating_point:
        return (base * 50).to(dtype)
    return base.to(dtype)


def save(tmp_path: Path, fmt: str, tensor: torch.Tensor) -> Path:
    """The tensor as `x` in a file of the format (safetensors and npz store it contiguous)."""
    path = tmp_path / f"x.{fmt.split('-')[0]}"
    if fmt == "pt":
        torch.save({"x": tensor}, path)
    elif fmt == "safetensors":
        safetensors.torch.save_file({"x": tensor.contiguous()}, path)
    else:
        save_npz = np.savez_compressed if fmt == "npz-deflated" else np.savez
        save_npz(path, x=tensor.numpy())
    return path


@SLOW_PROFILE
@given(
    tensors(),
    st.sampled_from(["plain", "transposed", "stepped", "narrowed"]),
    st.sampled_from(["pt", "pt", "safetensors", "npz", "npz-deflated"]),
    indices(max_items=3, kinds=MOSTLY_SLICES),
    st.integers(0, 8),
)
def test_generated_selections_match_reference(
    tmp_path_factory: Any, base: torch.Tensor, kind: str, fmt: str, index: Any, precision: int
):
    """Any dtype, view, format and index: the values torch gives, and NumPy's text for them, summarized or not."""
    if fmt.startswith("npz"):
        assume(base.dtype not in EXOTIC)  # .npy has no bfloat16 or float8
    view = torch_view(base, kind)
    items, text = index
    reference_all = as_numpy(view)
    try:
        expected = reference_all[items]
    except (IndexError, ValueError):
        assume(False)
    if not any(isinstance(i, slice) and (i.step or 1) < 0 for i in items):
        assert np.array_equal(as_numpy(view[items]), expected, equal_nan=expected.dtype.kind in "fc")
    path = save(tmp_path_factory.mktemp("gen"), fmt, view)
    tree = paramctl.open(path)
    (selection,) = resolve(tree, ["x" + text])
    full = show(tree.file, [selection], full=True).shown[0]
    assert full.values.shape == expected.shape
    assert np.array_equal(show_module.printable(full.values), expected, equal_nan=expected.dtype.kind in "fc")
    assert np.array_equal(raw(full.values), raw_torch(view)[items])  # bit for bit, NaN payloads included
    default = show(tree.file, [selection]).shown[0]
    assert default.summarized == (expected.size > THRESHOLD)
    event(f"summarized: {default.summarized}")
    assert default.text(precision) == numpy_text(expected, precision)


@pytest.mark.parametrize("fmt", ["pt", "npz-deflated"])
@pytest.mark.parametrize(
    "shape", [(1001,), (40, 30), (7, 1000), (3, 400), (12, 10, 11), (2, 7, 9, 11), (5, 6, 5, 2, 7)]
)
def test_summaries_print_the_edges_numpy_prints(tmp_path: Path, fmt: str, shape: tuple[int, ...]):
    """The summary is read from the edges alone, yet prints exactly as NumPy prints the whole tensor."""
    rng = np.random.default_rng(sum(shape))
    values = (rng.standard_normal(shape) * 10.0 ** rng.integers(-4, 6, shape)).astype(np.float32)
    values.reshape(-1)[[0, -1]] = [np.nan, -np.inf]
    path = save(tmp_path, fmt, torch.from_numpy(values))
    selection, _ = selected(path, "x", full=False)
    shown = show(str(path), [selection]).shown[0]
    assert shown.summarized
    assert shown.text() == numpy_text(values)
    assert shown.text(3) == numpy_text(values, 3)
    corners = values
    for axis, n in enumerate(shape):
        if n > 6:
            corners = np.concatenate([corners.take(range(3), axis), corners.take(range(n - 3, n), axis)], axis)
    assert np.array_equal(shown.values, corners, equal_nan=True)


def test_exotic_dtypes_print_their_values():
    state = torch.load(FIXTURES / "dtypes.pt", weights_only=True)
    for name in ("bf16", "f8e4m3", "f8e5m2", "c64", "bool", "i64", "u8", "scalar", "empty", "strided"):
        _, shown = selected(FIXTURES / "dtypes.pt", name)
        assert shown.text() == numpy_text(as_numpy(state[name])), name
    result = cli(FIXTURES / "dtypes.pt", "bf16")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == "bf16  bfloat16  (2, 3)"
    assert "\n".join(result.stdout.splitlines()[1:]) == numpy_text(as_numpy(state["bf16"]))


# --------------------------------------------------------------------------- only what is printed is read


@pytest.fixture(scope="module")
def big_files(tmp_path_factory: Any) -> dict[str, Path]:
    """A 4 MiB (1024, 1024) float32 matrix and a transposed view of it, in each stored format."""
    folder = tmp_path_factory.mktemp("big")
    x = torch.from_numpy(np.random.default_rng(7).standard_normal((1024, 1024)).astype(np.float32))
    paths = {"pt": folder / "big.pt", "safetensors": folder / "big.safetensors", "npz": folder / "big.npz"}
    torch.save({"x": x, "xt": x.t()}, paths["pt"])
    safetensors.torch.save_file({"x": x, "xt": x.t().contiguous()}, paths["safetensors"])
    np.savez(paths["npz"], x=x.numpy(), xt=x.numpy().T.copy())
    return paths


def bytes_handed_out(path: Path, spec: str, full: bool = False) -> tuple[int, Any]:
    tree = paramctl.open(path)
    (selection,) = resolve(tree, [spec])
    source = selection.tensor.storage.data.source
    before = source.bytes_read
    shown = show(tree.file, [selection], full).shown[0]
    return source.bytes_read - before, shown


@pytest.mark.parametrize("fmt", ["pt", "safetensors", "npz"])
def test_a_selection_reads_only_the_bytes_it_covers(big_files: dict[str, Path], fmt: str):
    path = big_files[fmt]
    expected = reference_values(path)["x"]
    for spec, index, nbytes in [
        ("x[42]", np.s_[42], 1024 * 4),  # one row of the matrix: one row is read
        ("x[:, 7]", np.s_[:, 7], 1024 * 4),  # one column: its 1024 elements, not the rows between them
        ("x[10:20, 100:110]", np.s_[10:20, 100:110], 100 * 4),
        ("x[-1, ::-1]", np.s_[-1, ::-1], 1024 * 4),
        ("x[500, 3]", np.s_[500, 3], 4),
    ]:
        read_bytes, shown = bytes_handed_out(path, spec, full=True)
        assert read_bytes == nbytes, spec
        assert np.array_equal(shown.values, expected[index]), spec


@pytest.mark.parametrize("fmt", ["pt", "safetensors", "npz"])
def test_a_summary_reads_its_edges(big_files: dict[str, Path], fmt: str):
    path = big_files[fmt]
    expected = reference_values(path)
    for name in ("x", "xt"):
        read_bytes, shown = bytes_handed_out(path, name)
        assert shown.summarized
        assert read_bytes <= 4 * (2 * 1024 + 3) * 4, name  # four corner blocks of 3 rows, of 4 MiB
        assert shown.text() == numpy_text(expected[name])
    read_bytes, _ = bytes_handed_out(path, "x[:900]", full=True)
    assert read_bytes == 900 * 1024 * 4  # the counter does see a large read


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_big_endian_members(tmp_path: Path, save: Any):
    values = np.random.default_rng(4).standard_normal((30, 50)).astype(">f8")
    path = tmp_path / "be.npz"
    save(path, x=values, c=(values[:, :10] + 1j).astype(">c8"))
    _, shown = selected(path, "x[3, ::-4]")
    assert np.array_equal(shown.values, values[3, ::-4]) and shown.values.dtype == np.dtype("<f8")
    _, shown = selected(path, "c[..., -1]")
    assert np.array_equal(shown.values, (values[:, 9] + 1j).astype(np.complex64))
    assert selected(path, "x", full=False)[1].text() == numpy_text(values)


def test_full_refuses_what_numpy_cannot_format_in_bounded_memory(big_files: dict[str, Path]):
    result = cli(big_files["pt"], "x", "--full")
    assert result.exit_code == 2
    assert "x: --full prints at most 1,000,000 values, not 1,048,576" in result.stderr and "--out" in result.stderr
    read_bytes, shown = bytes_handed_out(big_files["pt"], "x[:976]", full=True)  # 999,424 values: printed whole
    assert not shown.summarized and read_bytes == 976 * 1024 * 4


def test_deflated_members_are_read_in_one_bounded_pass(tmp_path: Path):
    values = np.random.default_rng(3).standard_normal((300, 200)).astype(np.float32)
    path = tmp_path / "z.npz"
    np.savez_compressed(path, x=values)
    for spec, index in [("x[::-7, 5]", np.s_[::-7, 5]), ("x[299]", np.s_[299]), ("x[..., 1:4]", np.s_[..., 1:4])]:
        _, shown = selected(path, spec)
        assert np.array_equal(shown.values, values[index]), spec


# --------------------------------------------------------------------------- names


def test_globs_values_and_placeholders(tmp_path: Path):
    import argparse

    path = tmp_path / "ns.pt"
    torch.save({"args": argparse.Namespace(lr=0.5, sizes=[1, 2]), "layers": [torch.ones(2), torch.zeros(3)]}, path)
    result = cli(path, "args", "layers.*[-1]")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:3] == ["args = <argparse.Namespace>", "  args.lr = 0.5", "  args.sizes = [1, 2]"]
    assert "layers.0[-1]  float32  ()  from (2,)\n1." in result.stdout  # NumPy prints 0-d 1.0 as `1.`
    assert "layers.1[-1]  float32  ()  from (3,)\n0." in result.stdout
    doc = json.loads(cli(path, "args*", "--json").stdout)
    assert doc["selections"] == [
        {"name": "args", "index": None, "kind": "object", "global": "argparse.Namespace", "note": None,
         "holds": ["args.lr", "args.sizes"]},
        {"name": "args.lr", "index": None, "kind": "value", "type": "float", "value": 0.5},
        {"name": "args.sizes", "index": None, "kind": "value", "type": "list", "value": [1, 2]},
    ]  # fmt: skip


def test_plain_values_print_their_value():
    result = cli(FIXTURES / "train_ckpt.pt", "epoch", "step", "optimizer.param_groups.0.lr")
    assert result.exit_code == 0
    ckpt = torch.load(FIXTURES / "train_ckpt.pt", weights_only=True)
    assert result.stdout.splitlines() == [
        f"epoch = {ckpt['epoch']!r}",
        f"step = {ckpt['step']!r}",
        f"optimizer.param_groups.0.lr = {ckpt['optimizer']['param_groups'][0]['lr']!r}",
    ]


def test_a_name_that_ends_in_brackets_is_a_name(tmp_path: Path):
    path = tmp_path / "odd.safetensors"
    safetensors.torch.save_file({"w[0]": torch.arange(4.0), "w": torch.arange(6.0).reshape(2, 3)}, path)
    assert selected(path, "w[0]")[1].values.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert selected(path, "w[0][1:]")[1].values.tolist() == [1.0, 2.0, 3.0]  # the index applies to `w[0]`
    assert selected(path, "w[1][::-1]")[1].values.tolist() == [5.0, 4.0, 3.0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["mlp.pt", "0.wieght"], "mlp.pt: no tensor or value named '0.wieght' (did you mean '0.weight'"),
        (["tiny_lm.pt", "embed.weight.T"], "no tensor or value named 'embed.weight.T' (did you mean 'embed.weight'"),
        (["mlp.pt", "0.weigth[3]"], "no tensor or value named '0.weigth' (did you mean '0.weight'"),
        (["mlp.pt", "0.weight[8]"], "0.weight[8]: 0.weight has shape (8, 4): index 8 is out of bounds for axis 0"),
        (["mlp.pt", "0.weight[0, -5]"], "0.weight has shape (8, 4): index -5 is out of bounds for axis 1 with size 4"),
        (["mlp.pt", "0.weight[0, 0, 0]"], "0.weight has shape (8, 4): too many indices"),
        (["mlp.pt", "0.weight[..., ...]"], "single ellipsis"),
        (["mlp.pt", "0.weight[::0]"], "slice step cannot be zero"),
        (["mlp.pt", "0.weight[[0, 1]]"], "0.weight has shape (8, 4): cannot parse index '[[0, 1]]'"),
        (["mlp.pt", "0.weight[x]"], "0.weight has shape (8, 4): cannot parse index [x]"),
        (["train_ckpt.pt", "epoch[0]"], "epoch is a plain value, not a tensor: it takes no index"),
        (["dtypes.pt", "f32", "--heatmap", "--json"], "--json and --heatmap cannot be combined"),
        (["mlp.pt", "0.weight", "0.bias", "--out", "x.npy"], "a .npy file holds one array, but 2 were selected"),
        (["mlp.pt", "0.weight", "--out", "x.txt"], "must end in .npy"),
        (["train_ckpt.pt", "epoch", "--out", "x.npz"], "epoch is a plain value, not a tensor: --out writes tensors"),
        (["mlp.pt", "*", "--png", "x.png"], "draws one selection, but 4 were selected"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path, monkeypatch: Any):
    monkeypatch.chdir(tmp_path)
    result = cli(FIXTURES / args[0], *args[1:])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("paramctl: ")
    assert message in result.stderr, result.stderr


def test_outputs_never_overwrite_the_checkpoint_being_read(tmp_path: Path, monkeypatch: Any):
    monkeypatch.chdir(tmp_path)
    for name in ("mlp.npz", "mlp.pt"):
        (tmp_path / name).write_bytes((FIXTURES / name).read_bytes())
    for args in (
        ["mlp.npz", "0.bias", "--out", "./mlp.npz"],
        ["mlp.pt", "0.weight", "--png", str(tmp_path / "mlp.pt")],
    ):
        result = cli(*args)
        assert result.exit_code == 2
        assert (
            result.stderr == f"paramctl: {args[-1]}: is the checkpoint being read; write the output to another file\n"
        )
        assert (tmp_path / args[0]).read_bytes() == (FIXTURES / args[0]).read_bytes()


# --------------------------------------------------------------------------- JSON and --out


def refuse_constant(token: str) -> None:
    raise AssertionError(f"non-standard JSON token {token}")


def test_json_values_are_exact_and_strict(tmp_path: Path):
    path = tmp_path / "odd.pt"
    special = torch.tensor([[1.5, float("nan")], [float("inf"), -float("inf")]])
    bf = torch.tensor([0.1, -3.3, 1e-3], dtype=torch.bfloat16)
    f8 = torch.tensor([0.3, -448.0, 0.0137], dtype=torch.float8_e4m3fn)
    torch.save({"special": special, "bf": bf, "f8": f8, "c": torch.tensor([1 + 2j, -0.5j]), "s": torch.tensor(7)}, path)
    result = cli(path, "special", "bf", "f8[::-1]", "c", "s", "--json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout, parse_constant=refuse_constant)
    assert doc["file"] == str(path)
    special_json, bf_json, f8_json, c_json, s_json = doc["selections"]
    assert special_json == {
        "name": "special", "index": None, "kind": "tensor", "dtype": "float32", "shape": [2, 2],
        "summarized": False, "values": [[1.5, "nan"], ["inf", "-inf"]],
    }  # fmt: skip
    assert bf_json["dtype"] == "bfloat16" and bf_json["values"] == bf.double().tolist()  # exact, not rounded
    assert f8_json["index"] == "[::-1]" and f8_json["values"] == f8.double().flip(0).tolist()
    assert c_json["values"] == [{"real": 1.0, "imag": 2.0}, {"real": 0.0, "imag": -0.5}]
    assert s_json["shape"] == [] and s_json["values"] == 7  # a bare number for a 0-d selection


def test_json_of_a_summarized_tensor_holds_its_edges(big_files: dict[str, Path]):
    doc = json.loads(cli(big_files["pt"], "x[::2]", "--json").stdout)
    (selection,) = doc["selections"]
    expected = reference_values(big_files["pt"])["x"][::2]
    assert selection["shape"] == [512, 1024] and selection["summarized"] is True
    edges = np.concatenate([expected[:3], expected[-3:]])
    assert selection["values"] == np.concatenate([edges[:, :3], edges[:, -3:]], axis=1).astype(np.float64).tolist()
    full = json.loads(cli(big_files["pt"], "x[::200, ::300]", "--full", "--json").stdout)["selections"][0]
    assert full["summarized"] is False and full["values"] == expected[::100, ::300].astype(np.float64).tolist()


def test_out_npy_is_what_numpy_save_writes(tmp_path: Path):
    reference = reference_values(FIXTURES / "tiny_lm.pt")["embed.weight"][::-2, 1:]
    out = tmp_path / "sel.npy"
    result = cli(FIXTURES / "tiny_lm.pt", "embed.weight[::-2, 1:]", "--out", out)
    assert result.exit_code == 0 and result.stdout == "" and result.stderr == ""
    expected = io.BytesIO()
    np.save(expected, reference)
    assert out.read_bytes() == expected.getvalue()


def test_out_upcasts_bfloat16_and_float8_and_says_so(tmp_path: Path):
    state = torch.load(FIXTURES / "dtypes.pt", weights_only=True)
    out = tmp_path / "sel.npz"
    result = cli(FIXTURES / "dtypes.pt", "bf16", "f8e5m2[1]", "i16", "strided", "--out", out)
    assert result.exit_code == 0
    assert "bf16: bfloat16 written as float32" in result.stderr
    assert "f8e5m2[1]: float8_e5m2 written as float32" in result.stderr
    with np.load(out) as archive:
        assert archive.files == ["bf16", "f8e5m2[1]", "i16", "strided"]
        assert archive["bf16"].dtype == np.float32 and np.array_equal(archive["bf16"], state["bf16"].float().numpy())
        assert np.array_equal(archive["f8e5m2[1]"], state["f8e5m2"][1].float().numpy())
        assert archive["i16"].dtype == np.int16 and np.array_equal(archive["i16"], state["i16"].numpy())
        assert np.array_equal(archive["strided"], state["strided"].numpy())
    with zipfile.ZipFile(out) as archive:  # what numpy.savez writes: stored members
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}


def test_out_streams_large_selections_in_blocks(big_files: dict[str, Path], tmp_path: Path, monkeypatch: Any):
    monkeypatch.setattr(show_module.reader, "CHUNK_BYTES", 1000)  # blocks smaller than a row: rows are split
    out = tmp_path / "x.npy"
    assert cli(big_files["safetensors"], "x[::-1, 1:]", "--out", out).exit_code == 0
    assert np.array_equal(np.load(out), reference_values(big_files["safetensors"])["x"][::-1, 1:])
    blocks = list(show_module.blocks(Layout(0, (4, 5, 6), (30, 6, 1)), 7))
    assert all(layout.numel <= 7 for _, layout in blocks)
    covered = np.zeros((4, 5, 6), int)
    for index, layout in blocks:
        covered[index] += 1
        assert covered[index].shape == layout.shape
    assert (covered == 1).all()


# --------------------------------------------------------------------------- the text output


def test_text_output_matches_numpy_on_fixtures():
    state = torch.load(FIXTURES / "mlp.pt", weights_only=True)
    result = cli(FIXTURES / "mlp.pt", "2.bias", "0.weight[:, :2]", "--precision", "4")
    assert result.exit_code == 0
    assert result.stdout == (
        "2.bias  float32  (1,)\n"
        + numpy_text(state["2.bias"].numpy(), 4)
        + "\n\n0.weight[:, :2]  float32  (8, 2)  from (8, 4)\n"
        + numpy_text(state["0.weight"][:, :2].numpy(), 4)
        + "\n"
    )


def test_summarized_header_says_so(big_files: dict[str, Path]):
    result = cli(big_files["npz"], "x")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == (
        "x  float32  (1024, 1024)  (1,048,576 values, edges shown; an index or --out FILE.npy for all)"
    )
    header = cli(big_files["npz"], "x[:976]").stdout.splitlines()[0]
    assert header.endswith("(999,424 values, edges shown; --full for all)")
    assert "\n".join(result.stdout.splitlines()[1:]) == numpy_text(reference_values(big_files["npz"])["x"])


# --------------------------------------------------------------------------- pictures

RED, BLUE, WHITE = np.array((178, 24, 43)), np.array((33, 102, 172)), np.array((247, 247, 247))


def palette(value: float, scale: float) -> tuple[int, ...]:
    """The documented diverging palette, written out for one value."""
    t = max(-1.0, min(1.0, value / scale))
    end = RED if t >= 0 else BLUE
    return tuple(int(c) for c in np.rint(WHITE + abs(t) * (end - WHITE)))


def ansi_cells(line: str) -> list[tuple[tuple[int, ...], tuple[int, ...] | None]]:
    """(foreground, background) truecolour of each half-block on a line of rich's output."""
    import re

    cells = []
    for codes in re.findall(r"\x1b\[([0-9;]+)m▀", line):
        numbers = [int(n) for n in codes.split(";")]  # 38;2;R;G;B[;48;2;R;G;B]
        assert numbers[:2] == [38, 2] and (len(numbers) == 5 or numbers[5:7] == [48, 2]), codes
        cells.append((tuple(numbers[2:5]), tuple(numbers[7:10]) if len(numbers) == 10 else None))
    return cells


def test_terminal_heatmap_is_stable_and_coloured_from_the_values():
    values = as_numpy(torch.load(FIXTURES / "tiny_lm.pt", weights_only=True)["embed.weight"]).astype(np.float64)
    args = ["show", str(FIXTURES / "tiny_lm.pt"), "embed.weight", "--heatmap", "--width", "40", "--height", "20"]
    first = runner.invoke(app, args, env={"COLORTERM": "truecolor"})
    second = runner.invoke(app, args, env={"COLORTERM": "truecolor"})
    assert first.exit_code == 0 and first.stdout == second.stdout
    lines = first.stdout.splitlines()
    assert lines[0] == "embed.weight  float32  (16, 8)"
    picture, legend = lines[1:-1], lines[-1]
    assert len(picture) == 8  # 16 rows, two per line
    scale = np.abs(values).max()
    for line_number, line in enumerate(picture):
        cells = ansi_cells(line)
        assert len(cells) == 8
        for col, (top, bottom) in enumerate(cells):
            assert top == palette(values[2 * line_number, col], scale)
            assert bottom == palette(values[2 * line_number + 1, col], scale)
    assert legend.startswith(f"{-scale:.4g} ") and f" {scale:+.4g}   white = 0; each cell is one value" in legend


def test_heatmap_averages_blocks_of_a_large_selection(big_files: dict[str, Path]):
    values = reference_values(big_files["pt"])["x"].astype(np.float64)
    tree = paramctl.open(big_files["pt"])
    (selection,) = resolve(tree, ["x[:1000, 10:310]"])
    picture = heatmap(selection, max_rows=40, max_cols=70)
    assert picture.block == (25, 25)  # square blocks: 1000 rows in 40, so 300 columns in 12
    expected = values[:1000, 10:310].reshape(40, 25, 12, 25).mean(axis=(1, 3))
    assert np.allclose(picture.means, expected, rtol=1e-12, atol=1e-15)
    assert picture.scale == np.abs(values[:1000, 10:310]).max()
    (row,) = resolve(tree, ["x[3]"])  # a vector is one row, averaged along it
    picture = heatmap(row, max_rows=10, max_cols=100)
    assert picture.means.shape == (1, 94) and picture.block == (1, 11)  # 1024 = 93 × 11 + 1
    assert np.allclose(picture.means[0, :93], values[3, :1023].reshape(93, 11).mean(axis=1), rtol=1e-12)
    assert picture.means[0, 93] == values[3, 1023]


def test_heatmap_needs_a_matrix():
    result = cli(FIXTURES / "dtypes.pt", "c64", "--heatmap")
    assert result.exit_code == 2 and "needs real values" in result.stderr
    result = runner.invoke(app, ["show", str(FIXTURES / "mlp.pt"), "0.weight[None]", "--heatmap"])
    assert result.exit_code == 2
    assert "0.weight[None] has shape (1, 8, 4): a heatmap draws 1-D or 2-D selections" in result.stderr
    assert "'0.weight[None][0]'" in result.stderr


def test_png_heatmap_has_its_hottest_pixel_at_the_largest_value(tmp_path: Path):
    from PIL import Image

    values = np.random.default_rng(5).standard_normal((10, 7)).astype(np.float32)
    values[6, 2] = 5.0
    values[1, 4] = -9.0  # the largest |x| is negative: the hottest pixel is still the largest value
    source = tmp_path / "m.pt"
    torch.save({"m": torch.from_numpy(values)}, source)
    out = tmp_path / "m.png"
    result = cli(source, "m", "--png", out)
    assert result.exit_code == 0 and result.stdout == ""
    assert result.stderr.startswith(f"paramctl: wrote {out} (357×510 px: heatmap")
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (7 * 51, 10 * 51)  # 512 // 10 = 51 pixels a value
        pixels = np.asarray(image.convert("RGB")).astype(int)
    heat = pixels[..., 0] - pixels[..., 2]  # red minus blue grows with the value across the palette
    rows, cols = np.nonzero(heat == heat.max())
    assert set(rows // 51) == {6} and set(cols // 51) == {2}
    assert tuple(pixels[6 * 51 + 25, 2 * 51 + 25]) == palette(5.0, 9.0)
    assert tuple(pixels[51 + 25, 4 * 51 + 25]) == tuple(BLUE)


def test_png_of_a_convolution_is_a_grid_of_filters(tmp_path: Path):
    from PIL import Image

    rng = np.random.default_rng(11)
    rgb = torch.from_numpy(rng.standard_normal((6, 3, 5, 5)).astype(np.float32))
    grey = torch.from_numpy(rng.standard_normal((4, 1, 3, 3)).astype(np.float32))
    source = tmp_path / "conv.pt"
    torch.save({"rgb": rgb, "grey": grey}, source)

    assert cli(source, "rgb", "--png", tmp_path / "rgb.png").exit_code == 0
    with Image.open(tmp_path / "rgb.png") as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    zoom, tile = 32 // 5, 5 * (32 // 5)  # 6 filters in a 3 × 2 grid of 30-pixel tiles, 2-pixel gaps
    assert pixels.shape == (2 * (tile + 2) + 2, 3 * (tile + 2) + 2, 3)
    w = rgb.double().numpy()
    for k in range(6):
        row, col = divmod(k, 3)
        top, left = 2 + row * (tile + 2), 2 + col * (tile + 2)
        expected = np.rint(np.clip(0.5 + 0.5 * w[k] / np.abs(w[k]).max(), 0, 1) * 255).transpose(1, 2, 0)
        assert np.array_equal(pixels[top : top + tile : zoom, left : left + tile : zoom], expected), k

    assert cli(source, "grey", "--png", tmp_path / "grey.png").exit_code == 0
    with Image.open(tmp_path / "grey.png") as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    zoom, tile = 32 // 3, 3 * (32 // 3)
    assert pixels.shape == (2 * (tile + 2) + 2, 2 * (tile + 2) + 2, 3)
    for k in range(4):
        row, col = divmod(k, 2)
        top, left = 2 + row * (tile + 2), 2 + col * (tile + 2)
        cells = pixels[top : top + tile : zoom, left : left + tile : zoom]
        heat = cells[..., 0] - cells[..., 2]
        assert np.unravel_index(heat.argmax(), heat.shape) == np.unravel_index(int(grey[k, 0].argmax()), (3, 3)), k


def test_png_without_pillow_exits_2_with_the_install_hint(monkeypatch: Any, tmp_path: Path):
    for module in ("PIL", "PIL.Image", "PIL.PngImagePlugin"):
        monkeypatch.setitem(sys.modules, module, None)  # `import PIL` now raises ImportError
    result = cli(FIXTURES / "mlp.pt", "0.weight", "--png", tmp_path / "x.png")
    assert result.exit_code == 2
    assert result.stderr == "paramctl: --png needs Pillow, an optional extra: pip install 'paramctl[image]'\n"
    assert not (tmp_path / "x.png").exists()


def test_show_imports_neither_torch_nor_pillow():
    code = (
        "import sys\n"
        "from paramctl.cli import app\n"
        "try:\n"
        f"    app(['show', {str(FIXTURES / 'tiny_lm.pt')!r}, 'embed.weight[3]', '--heatmap', '--width', '20'])\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        "heavy = [m for m in ('torch', 'PIL') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
