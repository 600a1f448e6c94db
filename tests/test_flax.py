"""Flax msgpack files: paramctl's reading compared with `flax.serialization.msgpack_restore`, on the fixtures and
on hypothesis-generated trees (nesting, lists, scalars, empty and 0-d arrays, arrays chunked under a lowered
MAX_CHUNK_SIZE), plus sniffing, laziness, the chunked-array reads, and hostile files."""

from __future__ import annotations

import importlib.util
import json
import math
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import ml_dtypes
import msgpack
import numpy as np
import pytest
import torch
from flax import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import FIXTURES, raw_bytes
from typer.testing import CliRunner

import paramctl
from paramctl import reader
from paramctl.cli import app
from paramctl.dtypes import from_numpy
from paramctl.errors import CorruptFileError, UnknownFormatError
from paramctl.loaders.flax_msgpack import LOADER
from paramctl.registry import probe_file
from paramctl.tree import Opaque, Pieces, Tensor, Value

JAX_FIXTURES = FIXTURES / "jax"
runner = CliRunner()
SCALARS = (int, float, str, bool, bytes, complex, type(None))


# --------------------------------------------------------------------------------------------- the reference


def restore(path: Path) -> Any:
    return serialization.msgpack_restore(path.read_bytes())


def reference_leaves(obj: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    """The naming rule, written independently over what msgpack_restore returns: map keys split on '.', list
    indices; arrays and NumPy scalars (0-d arrays) are tensors; scalars, empty containers and lists of scalars
    (nested up to three levels) are values."""
    if isinstance(obj, (np.ndarray, np.generic)):
        return [(".".join(prefix), np.asarray(obj))]
    if isinstance(obj, dict) and obj:
        return [leaf for k, v in obj.items() for leaf in reference_leaves(v, prefix + tuple(str(k).split(".")))]
    if isinstance(obj, list) and not is_plain(obj):
        return [leaf for i, value in enumerate(obj) for leaf in reference_leaves(value, (*prefix, str(i)))]
    return [(".".join(prefix), obj)]


def is_plain(obj: Any, level: int = 0) -> bool:
    if isinstance(obj, np.generic):  # np.float64 subclasses float, yet it is a NumPy scalar: a 0-d tensor
        return False
    if isinstance(obj, SCALARS):
        return True
    return isinstance(obj, list) and level < 3 and all(is_plain(x, level + 1) for x in obj)


def same_value(a: Any, b: Any) -> bool:
    """Equal, NaN equal to NaN (in floats and complex parts, and inside lists)."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, complex) and isinstance(b, complex):
        return same_value(a.real, b.real) and same_value(a.imag, b.imag)
    return type(a) is type(b) and a == b


def chunked_bytes(tensor: Tensor, chunk_elements: int) -> bytes:
    return b"".join(raw_bytes(piece) for piece in reader.chunks(tensor, chunk_elements))


def assert_matches_restore(path: Path, chunk_elements: int = 3) -> None:
    """Names in file order, dtypes, shapes and bit-exact values (whole and chunked), values and placeholders."""
    expected = reference_leaves(restore(path))
    tree = paramctl.open(path, format="flax")
    assert [name for name, _ in tree] == [name for name, _ in expected]
    for (name, leaf), (_, want) in zip(tree, expected):
        if isinstance(want, np.ndarray):
            assert isinstance(leaf, Tensor), name
            assert leaf.dtype == from_numpy(want.dtype), name
            assert leaf.shape == want.shape, name
            assert raw_bytes(reader.array(leaf)) == want.tobytes(), name
            assert chunked_bytes(leaf, chunk_elements) == want.tobytes(), name
        elif isinstance(want, (msgpack.ExtType, msgpack.Timestamp)):  # ext types flax does not define
            assert isinstance(leaf, Opaque), name
        else:
            assert isinstance(leaf, Value), name
            assert same_value(leaf.value, want), (name, leaf.value, want)


# --------------------------------------------------------------------------------------------- the fixtures


@pytest.mark.parametrize("name", ["mlp.msgpack", "tied_mlp.msgpack"])
def test_fixtures_match_msgpack_restore(name: str):
    assert_matches_restore(JAX_FIXTURES / name)


def test_fixture_names_follow_the_nesting():
    tree = paramctl.open(JAX_FIXTURES / "mlp.msgpack")
    assert tree.format == "flax"
    shapes = {name: t.shape for name, t in tree.tensors()}
    assert shapes == {
        "params.layers_0.kernel": (4, 8),
        "params.layers_0.bias": (8,),
        "params.layers_2.kernel": (8, 1),
        "params.layers_2.bias": (1,),
    }
    tied = paramctl.open(JAX_FIXTURES / "tied_mlp.msgpack")
    assert {t.dtype.name for _, t in tied.tensors()} == {"bfloat16"}
    assert sorted({name.split(".")[1] for name, _ in tied.tensors()}) == ["layers_0", "layers_2", "layers_6"]


def load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("fixtures_generate_jax", FIXTURES / "generate_jax.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generator_reproduces_the_msgpack_and_torch_fixtures(tmp_path: Path):
    generator = load_generator()
    variables = generator.init(generator.mlp()), generator.init(generator.tied_mlp())
    for name, tree in zip(("mlp.msgpack", "tied_mlp.msgpack"), variables):
        written = generator.write_msgpack(tmp_path / name, tree)
        assert written.read_bytes() == (JAX_FIXTURES / name).read_bytes(), name  # to_bytes is deterministic
    pt = generator.write_torch_mlp(tmp_path / "mlp_from_flax.pt", variables[0])
    committed = torch.load(JAX_FIXTURES / "mlp_from_flax.pt", weights_only=True)
    regenerated = torch.load(pt, weights_only=True)
    assert list(committed) == list(regenerated) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    for key in committed:
        assert torch.equal(committed[key], regenerated[key]), key
    # The torch file holds the Flax weights: Linear's weight is Dense's kernel transposed.
    params = restore(JAX_FIXTURES / "mlp.msgpack")["params"]
    for index in (0, 2):
        np.testing.assert_array_equal(committed[f"{index}.weight"].numpy(), params[f"layers_{index}"]["kernel"].T)
        np.testing.assert_array_equal(committed[f"{index}.bias"].numpy(), params[f"layers_{index}"]["bias"])


# --------------------------------------------------------------------------------------------- generated trees

NUMERIC_DTYPES = [
    np.dtype(t)
    for t in (
        np.float32,
        np.float64,
        np.float16,
        ml_dtypes.bfloat16,
        ml_dtypes.float8_e4m3fn,
        ml_dtypes.float8_e5m2,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.bool_,
        np.complex64,
        np.complex128,
    )
]


@st.composite
def arrays(draw: Any) -> np.ndarray:
    """Any bit pattern (NaN payloads, non-0/1 bools), any small shape: 0-d, empty, up to 3 dimensions."""
    dtype = draw(st.sampled_from(NUMERIC_DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
    data = draw(st.binary(min_size=math.prod(shape) * dtype.itemsize, max_size=math.prod(shape) * dtype.itemsize))
    return np.frombuffer(data, dtype).reshape(shape)


python_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.complex_numbers(allow_nan=True, allow_infinity=True),
)
numpy_scalars = st.builds(
    lambda dtype, data: np.frombuffer(data, dtype)[0],
    st.sampled_from(NUMERIC_DTYPES),
    st.binary(min_size=16, max_size=16),
)
leaves = st.one_of(arrays(), numpy_scalars, python_scalars)
keys = st.text(alphabet="abcxyz_019", min_size=1, max_size=4)  # no '.': a dotted key is its own test below
trees = st.recursive(
    leaves,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4)),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=st.dictionaries(keys, trees, max_size=5), limit=st.sampled_from([1, 8, 24, 2**30]))
def test_generated_trees_match_msgpack_restore(tmp_path_factory, tree: dict, limit: int):
    path = tmp_path_factory.mktemp("flax") / "tree.msgpack"
    with mock.patch.object(serialization, "MAX_CHUNK_SIZE", limit):  # flax reads the limit at call time
        path.write_bytes(serialization.msgpack_serialize(tree))
    assert_matches_restore(path)
    assert paramctl.open(path).format == "flax"  # sniffed by content


def test_chunked_arrays_are_one_tensor_over_pieces(tmp_path: Path):
    """Chunks at a lowered limit: one logical tensor, read across piece boundaries whole, in chunks and by window."""
    values = np.arange(7 * 5, dtype=np.float32).reshape(7, 5) * 1.5
    tree = {"params": {"w": values, "b": np.arange(3, dtype=np.int64)}, "step": np.int32(4)}
    path = tmp_path / "chunked.msgpack"
    with mock.patch.object(serialization, "MAX_CHUNK_SIZE", 16):  # 4 float32 per chunk: 9 chunks
        path.write_bytes(serialization.msgpack_serialize(tree))
    assert (
        "__msgpack_chunked_array__"
        in msgpack.unpackb(path.read_bytes(), raw=False, strict_map_key=False)["params"]["w"]
    )
    assert_matches_restore(path, chunk_elements=3)
    w = paramctl.open(path)["params.w"]
    assert isinstance(w.storage.data, Pieces) and len(w.storage.data.ranges) == 9
    for size in (1, 4, 6, 35):
        pieces = reader.plan(w, size)
        assert np.array_equal(np.concatenate([p.read() for p in pieces]), values.reshape(-1))
    # A transposed view (as diff --transpose makes) gathers element by element across the pieces.
    transposed = Tensor(w.dtype, w.shape[::-1], w.strides[::-1], w.storage)
    for size in (1, 3, 35):
        assert np.array_equal(np.concatenate([p.read() for p in reader.plan(transposed, size)]), values.T.reshape(-1))
    assert np.array_equal(reader.window(w, 6, (3, 2), (5, 2)), values[1:4, 1:5:2])  # rows 1-3 cross pieces
    reader.release(w)  # dropping pages of pieces is harmless


def test_cli_reads_a_chunked_array(tmp_path: Path):
    values = np.linspace(-3, 3, 60, dtype=np.float32).reshape(6, 10)
    path = tmp_path / "chunked.msgpack"
    with mock.patch.object(serialization, "MAX_CHUNK_SIZE", 32):
        path.write_bytes(serialization.msgpack_serialize({"w": values}))
    shown = runner.invoke(app, ["show", str(path), "w[2:5, 3]", "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["selections"][0]["values"] == values[2:5, 3].tolist()
    stat = runner.invoke(app, ["stat", str(path), "--json"])
    assert stat.exit_code == 0, stat.output
    (row,) = json.loads(stat.stdout)["tensors"]
    assert (row["min"], row["max"], row["numel"]) == (float(values.min()), float(values.max()), 60)
    assert row["mean"] == pytest.approx(float(values.astype(np.float64).mean()), abs=1e-12)


def test_root_array_and_dotted_keys(tmp_path: Path):
    """A bare array (msgpack_serialize of an ndarray) is a tensor at the root; only `--format flax` reads it,
    since sniffing wants a map. A dotted key splits into path segments, as in every format."""
    path = tmp_path / "root.msgpack"
    path.write_bytes(serialization.msgpack_serialize(np.arange(4, dtype=np.int16)))
    with pytest.raises(UnknownFormatError):
        paramctl.open(path)
    assert_matches_restore(path)
    dotted = tmp_path / "dotted.msgpack"
    dotted.write_bytes(serialization.msgpack_serialize({"a.b": {"c": np.ones(2)}, "d": [1, np.zeros(1)]}))
    assert [name for name, _ in paramctl.open(dotted)] == ["a.b.c", "d.0", "d.1"]
    assert_matches_restore(dotted)


def test_unsupported_dtypes_and_ext_types_are_placeholders(tmp_path: Path):
    tree = {"i4": np.zeros(3, ml_dtypes.int4), "ok": np.ones(2, np.float32), "ext": msgpack.ExtType(42, b"xyz")}
    path = tmp_path / "odd.msgpack"
    path.write_bytes(msgpack.packb(tree, default=serialization._msgpack_ext_pack, strict_types=True))
    loaded = paramctl.open(path)
    assert isinstance(loaded["i4"], Opaque) and "int4" in loaded["i4"].global_name
    assert isinstance(loaded["ext"], Opaque) and "42" in loaded["ext"].global_name
    assert isinstance(loaded["ok"], Tensor)


def test_listing_reads_no_array_data(tmp_path: Path):
    path = tmp_path / "big.msgpack"
    path.write_bytes(serialization.msgpack_serialize({"a": np.zeros((512, 1024), np.float32), "b": np.ones(3)}))
    probe = probe_file(path)
    tree = LOADER.load(probe)
    assert [t.shape for _, t in tree.tensors()] == [(512, 1024), (3,)]
    assert probe.source.bytes_read < 64 << 10  # headers only: the 2 MiB array is located, not read


# --------------------------------------------------------------------------------------------- sniffing


def test_sniffing_is_by_content(tmp_path: Path):
    renamed = tmp_path / "weights.bin"
    renamed.write_bytes((JAX_FIXTURES / "mlp.msgpack").read_bytes())
    assert paramctl.open(renamed).format == "flax"
    for other in sorted(FIXTURES.glob("*.*")):
        if other.suffix in (".pt", ".safetensors", ".npz"):
            assert not LOADER.sniff(probe_file(other)), other.name
    # A map with an integer first key (a safetensors length can look like a fixmap) is not Flax's.
    (tmp_path / "ints").write_bytes(msgpack.packb({1: 2}))
    assert not LOADER.sniff(probe_file(tmp_path / "ints"))
    # A small map followed by other bytes (a legacy pickle starts 0x80 0x02) is not one msgpack object.
    (tmp_path / "pickle").write_bytes(b"\x80\x02}q\x00.")
    assert not LOADER.sniff(probe_file(tmp_path / "pickle"))
    # A truncated Flax file is recognised, and refused as corrupt rather than as an unknown format.
    (tmp_path / "cut").write_bytes((JAX_FIXTURES / "mlp.msgpack").read_bytes()[:200])
    with pytest.raises(CorruptFileError, match="needs"):
        paramctl.open(tmp_path / "cut")
    # A large file whose first 4 KiB are a valid start is sniffed without reading further.
    big = tmp_path / "big"
    big.write_bytes(serialization.msgpack_serialize({"w": np.zeros(10_000, np.float32)}))
    assert LOADER.sniff(probe_file(big))


# --------------------------------------------------------------------------------------------- hostile files


def ndarray_ext(shape: list[int], dtype: str, data: bytes, code: int = 1) -> msgpack.ExtType:
    return msgpack.ExtType(code, msgpack.packb((shape, dtype, data), use_bin_type=True))


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


HOSTILE = {
    "map claims 2**32-1 entries": b"\x81\xa1a\xdf\xff\xff\xff\xff",
    "bin claims 4 GiB": b"\x81\xa1a\xc6\xff\xff\xff\xff" + b"\x00" * 16,
    "str runs past the end": b"\x81\xa1a\xd9\x40abc",
    "array claims 65535 elements": b"\x81\xa1a\xdc\xff\xff\x01",
    "ext claims 2**32-1 bytes": b"\x81\xa1a\xc9\xff\xff\xff\xff\x01",
    "truncated map": pack({"a": 1, "b": 2})[:-1],
    "deep nesting": b"\x81\xa1a" + b"\x91" * 100_000 + b"\xc0",
    "deep maps": b"\x81\xa1a" + b"\x81\xa1a" * 5_000 + b"\xc0",
    "ext bytes do not match its shape": pack({"w": ndarray_ext([2, 2], "float32", b"\x00" * 12)}),
    "ext shape negative": pack({"w": ndarray_ext([-1], "float32", b"\x00" * 12)}),
    "ext shape overflows": pack({"w": ndarray_ext([2**40, 2**40, 2**40], "float64", b"")}),
    "ext record with trailing bytes": pack({"w": msgpack.ExtType(1, msgpack.packb(([1], "int8", b"\x01")) + b"\xc0")}),
    "ext record not a triple": pack({"w": msgpack.ExtType(1, pack([[1], "int8"]))}),
    "ext data not bytes": pack({"w": msgpack.ExtType(1, pack([[1], "int8", 5]))}),
    "ext payload runs past the end": pack({"w": ndarray_ext([4], "int8", b"1234")})[:-2],
    "never-used format byte": b"\x81\xa1a\xc1",
    "trailing bytes after the object": pack({"a": 1}) + b"\x00",
    "duplicate key": b"\x82\xa1a\x01\xa1a\x02",
    "non-scalar key": b"\x81\xa1a\x81\x91\x01\x02",
    "string not UTF-8": b"\x81\xa1a\xa2\xff\xfe",
    "complex record not a pair": pack({"c": msgpack.ExtType(2, pack([1.0]))}),
    "chunked array with missing chunks": pack(
        {
            "w": {
                "__msgpack_chunked_array__": True,
                "shape": {"0": 8},
                "chunks": {"0": ndarray_ext([4], "int8", b"1234")},
            }
        }
    ),
    "chunked array with 2-D chunks": pack(
        {
            "w": {
                "__msgpack_chunked_array__": True,
                "shape": {"0": 4},
                "chunks": {"0": ndarray_ext([2, 2], "int8", b"1234")},
            }
        }
    ),
    "chunked array with mixed dtypes": pack(
        {
            "w": {
                "__msgpack_chunked_array__": True,
                "shape": {"0": 3},
                "chunks": {"0": ndarray_ext([2], "int8", b"12"), "1": ndarray_ext([1], "uint8", b"3")},
            }
        }
    ),
    "chunked array shape not a tuple": pack(
        {"w": {"__msgpack_chunked_array__": True, "shape": [4], "chunks": {"0": ndarray_ext([4], "int8", b"1234")}}}
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_file_is_one_line_exit_2(tmp_path: Path, case: str):
    path = tmp_path / "hostile.msgpack"
    path.write_bytes(HOSTILE[case])
    with pytest.raises(CorruptFileError):
        LOADER.load(probe_file(path))
    result = runner.invoke(app, ["ls", "--format", "flax", str(path)])
    assert result.exit_code == 2, (case, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0], lines
    sniffed = runner.invoke(app, ["ls", str(path)])  # refused as corrupt, or not recognised at all: never a crash
    assert sniffed.exit_code == 2 and len(sniffed.stderr.strip().splitlines()) == 1, sniffed.output


# Linux counts a child's peak RSS from the parent's at fork time (this test process holds torch and JAX), so the
# command is started from a small Python process that reports the child's own rusage.
RSS_HARNESS = (
    "import os, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)\n"
)


def test_hostile_files_keep_memory_bounded(tmp_path: Path):
    """A tiny file claiming gigabytes: the whole process stays small, so no claimed length was ever allocated."""
    for case in ("map claims 2**32-1 entries", "bin claims 4 GiB", "ext claims 2**32-1 bytes", "deep nesting"):
        path = tmp_path / "hostile.msgpack"
        path.write_bytes(HOSTILE[case])
        command = [sys.executable, "-m", "paramctl", "ls", "--format", "flax", str(path)]
        result = subprocess.run([sys.executable, "-c", RSS_HARNESS, *command], capture_output=True, text=True)
        code, peak_kib = map(int, result.stdout.split())
        assert code == 2, case
        assert peak_kib < 150 * 1024, (case, peak_kib)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_files_fail_cleanly_or_agree_with_restore(tmp_path_factory, data: Any):
    """Flipped bytes and truncations: paramctl either refuses the file with a CorruptFileError, or reads what
    msgpack_restore reads (an unknown dtype name, which restore cannot read, becomes a placeholder)."""
    with mock.patch.object(serialization, "MAX_CHUNK_SIZE", 8):
        original = serialization.msgpack_serialize(
            {"p": {"k": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.int8)}, "s": [1, "x"]}
        )
    raw = bytearray(original)
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    raw = raw[: data.draw(st.integers(1, len(raw)))]
    path = tmp_path_factory.mktemp("mutated") / "m.msgpack"
    path.write_bytes(bytes(raw))
    try:
        tree = LOADER.load(probe_file(path))
    except CorruptFileError:
        return
    try:
        restore(path)
    except Exception:  # flax cannot read it either: paramctl read it only by showing a dtype it lacks as a placeholder
        assert any(isinstance(leaf, Opaque) for _, leaf in tree)
        return
    assert_matches_restore(path)


# --------------------------------------------------------------------------------------------- CLI and imports


def test_ls_json_of_a_flax_file():
    result = runner.invoke(app, ["ls", str(JAX_FIXTURES / "mlp.msgpack"), "--json"])
    assert result.exit_code == 0, result.output
    assert '"format": "flax"' in result.stdout and '"params.layers_0.kernel"' in result.stdout


def test_paramctl_never_imports_jax_or_msgpack():
    """Neither at import nor to list a .pt, a msgpack file (not even NumPy: headers only) or an Orbax folder
    (which imports tensorstore, when installed, for the dtypes)."""
    code = (
        "import sys\n"
        "import paramctl, paramctl.cli\n"
        "from paramctl.cli import app\n"
        f"for f in ({str(FIXTURES / 'mlp.pt')!r}, {str(JAX_FIXTURES / 'mlp.msgpack')!r},"
        f" {str(JAX_FIXTURES / 'mlp_orbax')!r}):\n"
        "    try:\n"
        "        app(['ls', f])\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), e.code\n"
        "    found = [m for m in ('jax', 'flax', 'orbax', 'msgpack', 'torch') if m in sys.modules]\n"
        "    assert not found, (f, found)\n"
        "    if not f.endswith('_orbax'):\n"
        "        assert 'tensorstore' not in sys.modules and 'numpy' not in sys.modules, f\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_every_msgpack_header_form(tmp_path: Path):
    """Each width of each header (fix, 8, 16, 32 bits; fixext sizes) read as msgpack itself reads it."""
    values = {
        "ints": [0, 127, -1, -32, 128, 255, 256, 2**16, 2**32, 2**64 - 1, -33, -129, -(2**15) - 1, -(2**63)],
        "floats": [1.5, -0.0, float("inf")],
        "strs": ["", "x" * 31, "y" * 32, "z" * 256, "w" * 65536],
        "bins": [b"", b"b" * 256, b"c" * 65536],
        "lists": [[1] * 15, [2] * 16, [3] * 65536],
        "maps": {"m15": {str(i): i for i in range(15)}, "m16": {str(i): i for i in range(16)}},
        "big_map": {str(i): i for i in range(65536)},
        "exts": [msgpack.ExtType(7, b"e" * n) for n in (1, 2, 4, 8, 16, 3, 256, 65536)],
    }
    path = tmp_path / "forms.msgpack"
    path.write_bytes(pack(values))
    single_float = tmp_path / "f32.msgpack"
    single_float.write_bytes(b"\x81\xa1f" + b"\xca" + struct.pack(">f", 0.25))  # float 32: msgpack's own test
    assert paramctl.open(single_float)["f"].value == 0.25
    tree = paramctl.open(path)
    restored = msgpack.unpackb(path.read_bytes(), raw=False, strict_map_key=False)
    assert tree["ints"].value == restored["ints"]
    assert tree["strs"].value == restored["strs"] and tree["bins"].value == restored["bins"]
    assert tree["lists"].value == restored["lists"]  # lists of scalars are one value
    assert tree["maps.m16.15"].value == 15 and tree["big_map.65535"].value == 65535
    assert [tree[f"exts.{i}"].note for i in range(8)] == [
        f"{n:,} bytes, not read" for n in (1, 2, 4, 8, 16, 3, 256, 65536)
    ]
