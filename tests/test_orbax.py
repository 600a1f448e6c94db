"""Orbax checkpoint folders: paramctl's tree compared with `StandardCheckpointer().restore` (names, dtypes,
shapes, bit-exact values) on the fixtures and on hypothesis-generated trees; listing without tensorstore; damaged
metadata."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import FIXTURES, raw_bytes
from typer.testing import CliRunner

import paramctl
from paramctl import reader
from paramctl.cli import app
from paramctl.dtypes import from_numpy
from paramctl.errors import CorruptFileError, FileError, UsageError
from paramctl.loaders import orbax as orbax_loader
from paramctl.tree import Opaque, Stream, Tensor, Value

JAX_FIXTURES = FIXTURES / "jax"
runner = CliRunner()
SCALARS = (int, float, str, bool, bytes, complex, type(None))


def restore(path: Path) -> Any:
    checkpointer = ocp.StandardCheckpointer()
    try:
        return checkpointer.restore(path.resolve())
    finally:
        checkpointer.close()


def save(path: Path, tree: Any) -> Path:
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path.resolve(), tree)
    checkpointer.wait_until_finished()
    checkpointer.close()
    return path


def reference_leaves(obj: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    """What restore returns, named by the rule every format follows: dict keys split on '.', list indices;
    arrays are tensors; scalars, empty containers and lists of scalars (nested up to three levels) values."""
    if isinstance(obj, (jax.Array, np.ndarray, np.generic)):
        return [(".".join(prefix), np.asarray(obj))]
    if isinstance(obj, dict) and obj:
        return [leaf for k, v in obj.items() for leaf in reference_leaves(v, prefix + tuple(str(k).split(".")))]
    if isinstance(obj, list) and not is_plain(obj):
        return [leaf for i, value in enumerate(obj) for leaf in reference_leaves(value, (*prefix, str(i)))]
    return [(".".join(prefix), obj)]


def is_plain(obj: Any, level: int = 0) -> bool:
    if isinstance(obj, SCALARS):
        return True
    return isinstance(obj, list) and level < 3 and all(is_plain(x, level + 1) for x in obj)


def assert_matches_restore(path: Path) -> None:
    """Every name (Orbax lists leaves in its own sorted order), dtype, shape and value, read in small chunks."""
    expected = dict(reference_leaves(restore(path)))
    tree = paramctl.open(path)
    assert tree.format == "orbax"
    assert sorted(name for name, _ in tree) == sorted(expected)
    for name, leaf in tree:
        want = expected[name]
        if isinstance(want, np.ndarray):
            assert isinstance(leaf, Tensor), name
            assert (leaf.dtype, leaf.shape) == (from_numpy(want.dtype), want.shape), name
            got = b"".join(raw_bytes(piece) for piece in reader.chunks(leaf, 3))
            assert got == want.tobytes(), name
            assert raw_bytes(reader.array(leaf)) == want.tobytes(), name
        else:
            assert isinstance(leaf, Value) and type(leaf.value) is type(want) and leaf.value == want, name


# --------------------------------------------------------------------------------------------- the fixtures


@pytest.mark.parametrize("name", ["mlp_orbax", "tied_mlp_orbax"])
def test_fixtures_match_orbax_restore(name: str):
    assert_matches_restore(JAX_FIXTURES / name)


def test_fixtures_hold_the_msgpack_fixtures_weights():
    for name in ("mlp", "tied_mlp"):
        saved = dict(reference_leaves(restore(JAX_FIXTURES / f"{name}_orbax")))
        flax = {n: t for n, t in paramctl.open(JAX_FIXTURES / f"{name}.msgpack").tensors()}
        assert sorted(saved) == sorted(flax)
        for key, values in saved.items():
            assert raw_bytes(reader.array(flax[key])) == values.tobytes(), key
    assert {t.dtype.name for _, t in paramctl.open(JAX_FIXTURES / "tied_mlp_orbax").tensors()} == {"bfloat16"}


def test_generator_reproduces_the_orbax_fixtures(tmp_path: Path):
    """Orbax's bytes are not reproducible (timestamps, random file names): the restored values are."""
    spec = importlib.util.spec_from_file_location("fixtures_generate_jax", FIXTURES / "generate_jax.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    for name, model in (("mlp_orbax", generator.mlp()), ("tied_mlp_orbax", generator.tied_mlp())):
        written = generator.write_orbax(tmp_path / name, generator.init(model))
        committed, regenerated = restore(JAX_FIXTURES / name), restore(written)
        assert jax.tree_util.tree_structure(committed) == jax.tree_util.tree_structure(regenerated)
        for a, b in zip(jax.tree_util.tree_leaves(committed), jax.tree_util.tree_leaves(regenerated)):
            assert a.dtype == b.dtype and np.asarray(a).tobytes() == np.asarray(b).tobytes()
        assert_matches_restore(written)


# --------------------------------------------------------------------------------------------- generated trees

DTYPES = [np.dtype(t) for t in (np.float32, np.float64, np.float16, ml_dtypes.bfloat16, np.int8, np.int32, np.uint8)]
DTYPES.append(np.dtype(np.bool_))


@st.composite
def arrays(draw: Any) -> np.ndarray:
    dtype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(1, 4), max_size=3)))  # Orbax refuses arrays with no elements
    data = draw(st.binary(min_size=math.prod(shape) * dtype.itemsize, max_size=math.prod(shape) * dtype.itemsize))
    if dtype == np.bool_:  # only 0 and 1: tensorstore refuses to read any other byte as a bool
        return (np.frombuffer(data, np.uint8) % 2 == 1).reshape(shape)
    return np.frombuffer(data, dtype).reshape(shape)


leaves = st.one_of(
    arrays(),
    arrays().filter(lambda a: a.dtype.itemsize < 8).map(jax.numpy.asarray),  # JAX keeps no 64-bit types
    st.integers(-(2**31) + 1, 2**31 - 1),
    st.floats(allow_nan=False, width=64),
)
keys = st.text(alphabet="abxy_01", min_size=1, max_size=3)
trees = st.recursive(
    leaves,
    lambda children: st.one_of(st.lists(children, min_size=1, max_size=3), st.dictionaries(keys, children, max_size=3)),
    max_leaves=6,
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=st.dictionaries(keys, trees, min_size=1, max_size=3))
def test_generated_trees_match_orbax_restore(tmp_path_factory, tree: dict):
    path = save(tmp_path_factory.mktemp("orbax") / "step", tree)
    assert_matches_restore(path)


def test_values_are_read_in_blocks_of_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    values = np.arange(40 * 3, dtype=np.float32).reshape(40, 3) - 7.5
    path = save(tmp_path / "step", {"w": values, "v": np.arange(5, dtype=np.int16)})
    monkeypatch.setattr(orbax_loader, "BLOCK_BYTES", 24)  # two rows per tensorstore read
    tree = paramctl.open(path)
    w = tree["w"]
    assert isinstance(w.storage.data, Stream)
    for size in (1, 7, 120):
        assert np.array_equal(np.concatenate(list(reader.chunks(w, size))), values.reshape(-1))
    shown = runner.invoke(app, ["show", str(path), "w[3:5]", "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["selections"][0]["values"] == values[3:5].tolist()


# --------------------------------------------------------------------------------------------- without tensorstore


def test_listing_without_tensorstore(monkeypatch: pytest.MonkeyPatch):
    """The tree, shapes included, comes from Orbax's JSON metadata; the dtype says it is unknown, and reading
    values fails with the install hint."""
    monkeypatch.setitem(sys.modules, "tensorstore", None)  # `import tensorstore` raises ImportError
    tree = paramctl.open(JAX_FIXTURES / "mlp_orbax")
    shapes = {name: (t.dtype.name, t.shape) for name, t in tree.tensors()}
    assert shapes == {
        "params.layers_0.bias": ("unknown", (8,)),
        "params.layers_0.kernel": ("unknown", (4, 8)),
        "params.layers_2.bias": ("unknown", (1,)),
        "params.layers_2.kernel": ("unknown", (8, 1)),
    }
    with pytest.raises(UsageError, match=r"pip install 'paramctl\[orbax\]'"):
        reader.array(tree["params.layers_0.kernel"])


def test_cli_without_tensorstore_lists_and_refuses_to_read():
    prelude = "import sys\nsys.modules['tensorstore'] = None\nfrom paramctl.cli import app\n"
    path = str(JAX_FIXTURES / "mlp_orbax")
    for args, code in ((["ls", path], 0), (["show", path, "params.layers_0.kernel"], 2), (["diff", path, path], 2)):
        script = prelude + f"app({args!r})\n"
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert result.returncode == code, (args, result.stderr)
        if code == 0:
            assert "unknown" in result.stdout and "(4, 8)" in result.stdout
        else:
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_numpy_leaves_without_tensorstore_are_placeholders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Orbax records no shape for a NumPy array (only for jax.Array) and no value for a scalar."""
    path = save(tmp_path / "step", {"n": np.ones(3), "j": jax.numpy.ones(2), "s": 5, "e": {}, "z": None})
    monkeypatch.setitem(sys.modules, "tensorstore", None)
    tree = paramctl.open(path)
    assert isinstance(tree["n"], Opaque) and "paramctl[orbax]" in tree["n"].note
    assert isinstance(tree["s"], Opaque) and "paramctl[orbax]" in tree["s"].note
    assert tree["j"].shape == (2,) and tree["j"].dtype.name == "unknown"
    assert (tree["e"].value, tree["z"].value) == ({}, None)


# --------------------------------------------------------------------------------------------- damaged folders


def damaged(tmp_path: Path, change: Any) -> Path:
    path = tmp_path / "step"
    shutil.copytree(JAX_FIXTURES / "mlp_orbax", path)
    change(path)
    return path


def edit_metadata(edit: Any) -> Any:
    def change(path: Path) -> None:
        metadata = json.loads((path / "_METADATA").read_text())
        edit(metadata)
        (path / "_METADATA").write_text(json.dumps(metadata))

    return change


def _set_shape(metadata: dict) -> None:
    metadata["tree_metadata"]["('params', 'layers_0', 'kernel')"]["value_metadata"]["write_shape"] = [8, 4]


def _rename_leaf(metadata: dict) -> None:
    entry = metadata["tree_metadata"]["('params', 'layers_0', 'kernel')"]
    entry["key_metadata"][2]["key"] = "no_such_array"


def _absolute_key(metadata: dict, key: str = str(JAX_FIXTURES / "mlp_orbax")) -> None:
    """A key naming an array store elsewhere (refused by paths.key_problem before tensorstore opens anything)."""
    entry = metadata["tree_metadata"]["('params', 'layers_0', 'kernel')"]
    entry["key_metadata"] = [{"key": key, "key_type": 2}]


DAMAGED = {
    "metadata not JSON": lambda path: (path / "_METADATA").write_text("{not json"),
    "no tree_metadata": lambda path: (path / "_METADATA").write_text("{}"),
    "leaf without keys": edit_metadata(lambda m: m["tree_metadata"].update({"x": {"value_metadata": {}}})),
    "shape contradicts the store": edit_metadata(_set_shape),
    "array missing from the store": edit_metadata(_rename_leaf),
    "absolute array key": edit_metadata(_absolute_key),
    "array key with '..'": edit_metadata(lambda m: _absolute_key(m, "../mlp_orbax")),
    "negative shape": edit_metadata(
        lambda m: m["tree_metadata"]["('params', 'layers_0', 'bias')"]["value_metadata"].update(write_shape=[-8])
    ),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_folder_is_one_line_exit_2(tmp_path: Path, case: str):
    path = damaged(tmp_path, DAMAGED[case])
    with pytest.raises(FileError):
        paramctl.open(path)
    result = runner.invoke(app, ["ls", str(path)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0], lines


def test_a_folder_that_is_not_a_checkpoint(tmp_path: Path):
    with pytest.raises(FileError, match="not a checkpoint folder"):
        paramctl.open(tmp_path)
    assert not orbax_loader.LOADER.sniff_directory(tmp_path)
    assert issubclass(CorruptFileError, FileError)
