"""`diff --rename` and `--transpose`: mapping one framework's names and layouts onto another's, tested with the
Flax-to-PyTorch recipe the README documents, against torch and Flax's own readings of the files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
from flax import serialization
from reference import FIXTURES
from typer.testing import CliRunner

import paramctl
from paramctl.cli import app
from paramctl.cli.diff import parse_rename
from paramctl.errors import UsageError
from paramctl.ops.diff import DiffOptions, diff_trees

JAX_FIXTURES = FIXTURES / "jax"
runner = CliRunner()
# The README's recipe: Dense layer N's kernel is Linear N's weight transposed, its bias the bias.
RECIPE = [
    "--rename",
    r"params\.layers_(\d+)\.kernel=\1.weight",
    "--rename",
    r"params\.layers_(\d+)\.bias=\1.bias",
    "--transpose",
    "*.weight",
]


def run_diff(*args: Any) -> tuple[int, dict[str, Any]]:
    result = runner.invoke(app, ["diff", *map(str, args), "--json"])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def flax_params(path: Path) -> dict[str, Any]:
    return serialization.msgpack_restore(path.read_bytes())


# --------------------------------------------------------------------------------------------- the recipe


@pytest.mark.parametrize("flax_file", ["mlp.msgpack", "mlp_orbax"])
def test_flax_checkpoint_against_its_pytorch_port(flax_file: str):
    code, report = run_diff(JAX_FIXTURES / "mlp_from_flax.pt", JAX_FIXTURES / flax_file, *RECIPE, "--all")
    assert code == 0, report
    assert report["equal_count"] == 4 and report["different_count"] == 0
    names = {entry["name"]: entry for entry in report["unchanged"]}
    assert sorted(names) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert names["0.weight"]["shape_a"] == names["0.weight"]["shape_b"] == [8, 4]  # B's (4, 8) kernel, transposed
    assert report["options"]["rename"] == [
        [r"params\.layers_(\d+)\.kernel", r"\1.weight"],
        [r"params\.layers_(\d+)\.bias", r"\1.bias"],
    ]
    assert report["options"]["transpose"] == ["*.weight"]


def test_without_the_transpose_the_kernels_differ_in_shape():
    code, report = run_diff(JAX_FIXTURES / "mlp_from_flax.pt", JAX_FIXTURES / "mlp.msgpack", *RECIPE[:4])
    assert code == 1
    assert {e["name"]: (e["reason"], e["shape_a"], e["shape_b"]) for e in report["changed"]} == {
        "0.weight": ("shape", [8, 4], [4, 8]),
        "2.weight": ("shape", [1, 8], [8, 1]),
    }


def test_one_changed_weight_is_found_where_torch_says(tmp_path: Path):
    """Change one kernel element in the Flax file: exit 1, and the changed weight, its element and its distance
    are what torch computes between the PyTorch weight and the changed kernel transposed."""
    variables = flax_params(JAX_FIXTURES / "mlp.msgpack")
    kernel = variables["params"]["layers_0"]["kernel"].copy()
    kernel[3, 5] += np.float32(0.25)
    variables["params"]["layers_0"]["kernel"] = kernel
    changed = tmp_path / "changed.msgpack"
    changed.write_bytes(serialization.msgpack_serialize(variables))

    code, report = run_diff(JAX_FIXTURES / "mlp_from_flax.pt", changed, *RECIPE)
    assert code == 1
    (entry,) = report["changed"]
    weight = torch.load(JAX_FIXTURES / "mlp_from_flax.pt", weights_only=True)["0.weight"]
    difference = (weight.double() - torch.from_numpy(kernel.T).double()).abs()
    assert entry["name"] == "0.weight" and entry["reason"] == "values"
    assert entry["mismatched"] == int((difference > 0).sum()) == 1
    assert entry["max_abs"] == float(difference.max())
    assert report["equal_count"] == 3


def test_a_changed_pytorch_side_is_found_too(tmp_path: Path):
    state = torch.load(JAX_FIXTURES / "mlp_from_flax.pt", weights_only=True)
    state["2.bias"] = state["2.bias"] + 1
    torch.save(state, tmp_path / "changed.pt")
    code, report = run_diff(tmp_path / "changed.pt", JAX_FIXTURES / "mlp.msgpack", *RECIPE)
    assert code == 1 and [e["name"] for e in report["changed"]] == ["2.bias"]


def test_a_chunked_kernel_is_transposed_across_its_pieces(tmp_path: Path):
    """A kernel over flax's chunk size (lowered here) is one tensor in several byte ranges: its transpose reads
    across them."""
    variables = flax_params(JAX_FIXTURES / "mlp.msgpack")
    path = tmp_path / "chunked.msgpack"
    with mock.patch.object(serialization, "MAX_CHUNK_SIZE", 20):
        path.write_bytes(serialization.msgpack_serialize(variables))
    assert len(paramctl.open(path)["params.layers_0.kernel"].storage.data.ranges) == 7
    code, report = run_diff(JAX_FIXTURES / "mlp_from_flax.pt", path, *RECIPE)
    assert code == 0, report
    for chunk in (1, 3, 32):
        options = DiffOptions(
            rename=((r"params\.layers_(\d+)\.kernel", r"\1.weight"), (r"params\.layers_(\d+)\.bias", r"\1.bias")),
            transpose=("*.weight",),
            chunk_elements=chunk,
        )
        result = diff_trees(paramctl.open(JAX_FIXTURES / "mlp_from_flax.pt"), paramctl.open(path), options)
        assert result.equal and result.equal_count == 4


def test_tied_flax_model_against_a_tied_pytorch_model(tmp_path: Path):
    """Flax keeps a shared layer once (`layers_2`); PyTorch lists it twice (`2.*` and `4.*`, one storage). After
    renaming, `4.*` is a tie B dropped: a difference unless allowed."""
    params = flax_params(JAX_FIXTURES / "tied_mlp.msgpack")["params"]
    shared = torch.nn.Linear(8, 8)
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.ReLU(), shared, torch.nn.ReLU(), shared, torch.nn.ReLU(), torch.nn.Linear(8, 1)
    ).to(torch.bfloat16)
    with torch.no_grad():
        for index in (0, 2, 6):
            layer = params[f"layers_{index}"]
            net[index].weight.copy_(torch.from_numpy(layer["kernel"].T.astype(np.float32)).to(torch.bfloat16))
            net[index].bias.copy_(torch.from_numpy(layer["bias"].astype(np.float32)).to(torch.bfloat16))
    torch.save(net.state_dict(), tmp_path / "tied.pt")

    code, report = run_diff(tmp_path / "tied.pt", JAX_FIXTURES / "tied_mlp.msgpack", *RECIPE)
    assert code == 1
    assert {(t["name"], t["partner"], t["side"]) for t in report["dropped_ties"]} == {
        ("4.weight", "2.weight", "a"),
        ("4.bias", "2.bias", "a"),
    }
    assert report["changed"] == [] and report["equal_count"] == 6
    code, _ = run_diff(tmp_path / "tied.pt", JAX_FIXTURES / "tied_mlp.msgpack", *RECIPE, "--allow-dropped-ties")
    assert code == 0


# --------------------------------------------------------------------------------------------- the rules


def test_rename_splits_at_the_last_equals_sign():
    assert parse_rename(r"a\.(\d+)=\1") == (r"a\.(\d+)", r"\1")
    assert parse_rename(r"x(?=\.w)=y") == (r"x(?=\.w)", "y")  # a lookahead's '=' stays in the regex
    assert parse_rename("strip=") == ("strip", "")
    for bad in ("no-equals", "=replacement"):
        with pytest.raises(UsageError):
            parse_rename(bad)


def test_renames_apply_in_order_to_b_only(tmp_path: Path):
    tensors = {"w": torch.ones(2), "v": torch.zeros(3)}
    torch.save(tensors, tmp_path / "a.pt")
    torch.save({"x": torch.ones(2), "v": torch.zeros(3)}, tmp_path / "b.pt")
    # x -> y -> w: the second rule sees the first one's output. A's names are never renamed.
    code, report = run_diff(tmp_path / "a.pt", tmp_path / "b.pt", "--rename", "x=y", "--rename", "^y$=w")
    assert code == 0, report
    code, report = run_diff(tmp_path / "a.pt", tmp_path / "b.pt", "--rename", "^y$=w", "--rename", "x=y")
    assert code == 1
    assert [e["name"] for e in report["only_in_a"]] == ["w"] and [e["name"] for e in report["only_in_b"]] == ["y"]
    code, report = run_diff(tmp_path / "a.pt", tmp_path / "a.pt", "--rename", "w=q")
    assert code == 1 and [e["name"] for e in report["only_in_b"]] == ["q"]


def test_globs_match_names_after_renaming(tmp_path: Path):
    torch.save({"0.weight": torch.ones(2, 3), "0.bias": torch.ones(2)}, tmp_path / "a.pt")
    torch.save({"k0": torch.ones(3, 2), "b0": torch.full((2,), 5.0)}, tmp_path / "b.pt")
    rename = ["--rename", r"k(\d)=\1.weight", "--rename", r"b(\d)=\1.bias", "--transpose", "*.weight"]
    code, report = run_diff(tmp_path / "a.pt", tmp_path / "b.pt", *rename)
    assert code == 1 and [e["name"] for e in report["changed"]] == ["0.bias"]
    code, report = run_diff(tmp_path / "a.pt", tmp_path / "b.pt", *rename, "--exclude", "*.bias")
    assert code == 0 and report["equal_count"] == 1


def test_transpose_leaves_vectors_alone_and_refuses_more_than_two_dimensions(tmp_path: Path):
    torch.save({"b": torch.arange(3.0), "s": torch.tensor(2.0), "c": torch.ones(2, 3, 4)}, tmp_path / "a.pt")
    code, _ = run_diff(tmp_path / "a.pt", tmp_path / "a.pt", "--transpose", "b", "--transpose", "s")
    assert code == 0
    result = runner.invoke(app, ["diff", str(tmp_path / "a.pt"), str(tmp_path / "a.pt"), "--transpose", "*"])
    assert result.exit_code == 2
    assert "only 2-D tensors" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_transposed_view_is_compared_element_by_element(tmp_path: Path):
    """A non-square matrix against its transpose: equal only through --transpose, and a changed element of the
    transposed side is found at its transposed place."""
    w = torch.arange(12.0).reshape(3, 4)
    torch.save({"w": w}, tmp_path / "a.pt")
    changed = w.t().contiguous()
    changed[1, 2] = -1.0
    torch.save({"w": w.t().contiguous()}, tmp_path / "t.pt")
    torch.save({"w": changed}, tmp_path / "changed.pt")
    assert run_diff(tmp_path / "a.pt", tmp_path / "t.pt", "--transpose", "w")[0] == 0
    code, report = run_diff(tmp_path / "a.pt", tmp_path / "changed.pt", "--transpose", "w")
    assert code == 1
    assert report["changed"][0]["mismatched"] == 1
    assert report["changed"][0]["max_abs"] == float((w - changed.t()).abs().max())


@pytest.mark.parametrize("rule", [r"(=x", r"a=\2", r"(?P<n>a)=\g<m>"])
def test_a_bad_rename_is_a_usage_error(rule: str):
    path = str(JAX_FIXTURES / "mlp.msgpack")
    result = runner.invoke(app, ["diff", path, path, "--rename", rule])
    assert result.exit_code == 2
    assert "--rename" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_renaming_two_tensors_to_one_name_is_refused(tmp_path: Path):
    torch.save({"a1": torch.ones(1), "a2": torch.ones(1)}, tmp_path / "b.pt")
    result = runner.invoke(app, ["diff", str(tmp_path / "b.pt"), str(tmp_path / "b.pt"), "--rename", r"\d="])
    assert result.exit_code == 2 and "--rename" in result.stderr
