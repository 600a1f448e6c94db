"""`paramctl diff`: reports checked against torch / NumPy references on the fixtures and on files built here,
and the metrics checked against an exact (rational) NumPy-float64 reference with hypothesis."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any
from unittest import mock

import ml_dtypes
import numpy as np
import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import FIXTURES
from typer.testing import CliRunner

import paramctl
from paramctl.cli import app
from paramctl.cli.diff import parse_operand
from paramctl.dtypes import from_numpy
from paramctl.errors import UsageError
from paramctl.ops import diff_kernel
from paramctl.ops.diff import Comparison, DiffOptions, diff_trees
from paramctl.source import ByteSource
from paramctl.tree import ByteRange, Storage, Stream, Tensor, Tree, Value

runner = CliRunner()


def run_diff(*args: str | Path) -> tuple[int, dict[str, Any]]:
    """`paramctl diff ... --json`: the exit code and the parsed report (strict JSON: no NaN or Infinity)."""
    result = runner.invoke(app, ["diff", *map(str, args), "--json"])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout, parse_constant=_reject)


def _reject(token: str) -> None:
    raise AssertionError(f"non-standard JSON constant {token}")


def changed(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in report["changed"]}


def f64(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().double().numpy()


# ------------------------------------------------------------------------------------------- one SGD step


@pytest.mark.parametrize("model", ["mlp", "tied_mlp"])
def test_sgd_step_moves_each_parameter_by_lr_times_its_gradient(model: str):
    step0 = torch.load(FIXTURES / f"{model}_step0.pt", weights_only=True)
    step1 = torch.load(FIXTURES / f"{model}_step1.pt", weights_only=True)
    saved = torch.load(FIXTURES / f"{model}_grads.pt", weights_only=True)
    code, report = run_diff(FIXTURES / f"{model}_step0.pt", FIXTURES / f"{model}_step1.pt")
    assert code == 1 and report["equal"] is False
    rows = changed(report)
    assert set(rows) == set(step0) and report["equal_count"] == 0
    lr32 = float(np.float32(saved["lr"]))  # torch's SGD multiplies in float32
    for name, before in step0.items():
        row, after, grad = rows[name], step1[name], saved["grads"][name]
        moved = np.abs(f64(after) - f64(before))
        # The fixture's exact fact: step1 == float32(step0 - float32(lr) * grad), computed in float64.
        assert torch.equal(after, (before.double() - lr32 * grad.double()).float())
        assert row["reason"] == "values" and row["numel"] == before.numel()
        assert row["mismatched"] == int(np.count_nonzero(moved))
        assert row["max_abs"] == moved.max()  # the same float64 subtraction torch does: bit for bit
        # ... which is lr·max|grad| up to the one float32 rounding of each updated element.
        ulp = float(np.spacing(np.abs(after.numpy())).max())
        assert abs(row["max_abs"] - lr32 * float(grad.double().abs().max())) <= ulp
        expected_rel_l2 = np.linalg.norm(f64(before) - f64(after)) / np.linalg.norm(f64(before))
        assert row["rel_l2"] == pytest.approx(expected_rel_l2, rel=1e-12)
        cosine = f64(before).ravel() @ f64(after).ravel() / np.linalg.norm(f64(before)) / np.linalg.norm(f64(after))
        assert row["cosine"] == pytest.approx(cosine, rel=1e-12)


def test_tied_layer_moved_once_by_the_summed_gradient_and_is_compared_once():
    saved = torch.load(FIXTURES / "tied_mlp_grads.pt", weights_only=True)
    for suffix in ("weight", "bias"):  # one Parameter: one gradient, the sum of both uses
        assert torch.equal(saved["grads"][f"2.{suffix}"], saved["grads"][f"4.{suffix}"])
    comparison = Comparison(
        paramctl.open(FIXTURES / "tied_mlp_step0.pt"), paramctl.open(FIXTURES / "tied_mlp_step1.pt"), DiffOptions()
    )
    assert len(comparison.pairs) == 8 and len(comparison.jobs) == 6  # 2.* and 4.* share their storages
    rows = {row.name: row for row in comparison.run().changed}
    assert rows["2.weight"].stats == rows["4.weight"].stats and rows["2.bias"].stats == rows["4.bias"].stats


# ---------------------------------------------------------------------------------- equal files, conversions

SELF = sorted(p.name for p in FIXTURES.iterdir() if p.suffix in (".pt", ".safetensors", ".npz"))


@pytest.mark.parametrize("name", SELF)
def test_a_file_equals_itself(name: str):
    code, report = run_diff(FIXTURES / name, FIXTURES / name)
    assert code == 0 and report["equal"] and report["different_count"] == 0
    assert report["equal_count"] == len(list(paramctl.open(FIXTURES / name).tensors()))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("mlp.pt", "mlp.safetensors"),
        ("mlp.pt", "mlp.npz"),
        ("mlp.safetensors", "mlp.npz"),
        ("tied_mlp.pt", "tied_mlp.safetensors"),  # 4.* only declared as aliases in the metadata
        ("tied_mlp.pt", "tied_mlp.npz"),
        ("tied_mlp_legacy.pt", "tied_mlp.pt"),
        ("tiny_lm.pt", "tiny_lm.safetensors"),
        ("tiny_lm.pt", "tiny_lm.npz"),
        ("autoencoder.pt", "autoencoder.safetensors"),  # a transposed view against a contiguous copy
        ("autoencoder.pt", "autoencoder.npz"),
        ("dtypes.pt", "dtypes.safetensors"),
        ("mlp_step1.pt", "mlp_step1.safetensors"),
    ],
)
def test_a_conversion_equals_its_source(a: str, b: str):
    code, report = run_diff(FIXTURES / a, FIXTURES / b)
    assert code == 0, report
    assert report["equal_count"] == len(list(paramctl.open(FIXTURES / a).tensors()))


def test_dtypes_npz_lacks_only_the_types_numpy_has_not():
    code, report = run_diff(FIXTURES / "dtypes.pt", FIXTURES / "dtypes.npz")
    assert code == 1
    assert [(e["name"], e["dtype"]) for e in report["only_in_a"]] == [
        ("bf16", "bfloat16"),
        ("f8e4m3", "float8_e4m3fn"),
        ("f8e5m2", "float8_e5m2"),
    ]
    assert report["changed"] == [] and report["only_in_b"] == [] and report["equal_count"] == 14


# ------------------------------------------------------------------------------------------- one change


def mlp_state() -> dict[str, torch.Tensor]:
    return torch.load(FIXTURES / "mlp.pt", weights_only=True)


def test_one_flipped_element(tmp_path: Path):
    state = mlp_state()
    before = state["0.weight"][3, 1].item()
    state["0.weight"][3, 1] = torch.nextafter(state["0.weight"][3, 1], torch.tensor(math.inf))
    torch.save(state, tmp_path / "b.pt")
    code, report = run_diff(FIXTURES / "mlp.pt", tmp_path / "b.pt")
    assert code == 1
    assert list(changed(report)) == ["0.weight"] and report["equal_count"] == 3
    row = changed(report)["0.weight"]
    step = state["0.weight"][3, 1].double().item() - before
    assert row["mismatched"] == 1 and row["numel"] == 32 and row["max_abs"] == abs(step)
    assert row["max_rel"] == abs(step) / abs(state["0.weight"][3, 1].double().item())
    # Tiny differences are not lost: the exact 1-ulp step, relative to the whole tensor.
    assert row["rel_l2"] == pytest.approx(abs(step) / np.linalg.norm(f64(mlp_state()["0.weight"])), rel=1e-12)
    assert 0 < 1 - row["cosine"] < 1e-12
    assert run_diff(FIXTURES / "mlp.pt", tmp_path / "b.pt", "--atol", str(abs(step)))[0] == 0


def test_nan_against_a_number_differs_and_nan_against_nan_does_not(tmp_path: Path):
    state = mlp_state()
    state["0.bias"][2] = math.nan
    torch.save(state, tmp_path / "nan.pt")
    safetensors.torch.save_file(state, tmp_path / "nan.safetensors")
    code, report = run_diff(FIXTURES / "mlp.pt", tmp_path / "nan.pt", "--atol", "1e9")
    row = changed(report)["0.bias"]
    assert code == 1 and row["mismatched"] == 1 and row["max_abs"] == 0 and row["rel_l2"] == 0
    assert run_diff(tmp_path / "nan.pt", tmp_path / "nan.safetensors")[0] == 0
    code, report = run_diff(tmp_path / "nan.pt", tmp_path / "nan.safetensors", "--nan-unequal")
    assert code == 1 and changed(report)["0.bias"]["mismatched"] == 1


def test_shape_change_dtype_change_and_removed_key(tmp_path: Path):
    state = mlp_state()
    state["0.weight"] = state["0.weight"].reshape(4, 8)
    state["0.bias"] = state["0.bias"].double()
    del state["2.bias"]
    torch.save(state, tmp_path / "b.pt")
    code, report = run_diff(FIXTURES / "mlp.pt", tmp_path / "b.pt")
    assert code == 1
    rows = changed(report)
    assert rows["0.weight"]["reason"] == "shape"
    assert (rows["0.weight"]["shape_a"], rows["0.weight"]["shape_b"]) == ([8, 4], [4, 8])
    assert rows["0.bias"]["reason"] == "dtype"
    assert (rows["0.bias"]["dtype_a"], rows["0.bias"]["dtype_b"]) == ("float32", "float64")
    assert rows["0.bias"]["mismatched"] is None
    assert report["only_in_a"] == [{"name": "2.bias", "kind": "tensor", "dtype": "float32", "shape": [1]}]
    assert report["only_in_b"] == [] and report["equal_count"] == 1 and report["different_count"] == 3
    code, report = run_diff(FIXTURES / "mlp.pt", tmp_path / "b.pt", "--ignore-dtype", "--exclude", "0.weight")
    assert report["changed"] == [] and report["equal_count"] == 2 and code == 1  # 2.bias is still missing
    code, report = run_diff(tmp_path / "b.pt", FIXTURES / "mlp.pt", "--select", "0.*", "--select", "2.weight")
    assert code == 1 and report["only_in_b"] == [] and len(report["changed"]) == 2


def test_bf16_export_against_its_fp32_source(tmp_path: Path):
    state = mlp_state()
    exported = {name: tensor.to(torch.bfloat16) for name, tensor in state.items()}
    safetensors.torch.save_file(exported, tmp_path / "bf16.safetensors")
    code, report = run_diff(FIXTURES / "mlp.pt", tmp_path / "bf16.safetensors")
    assert code == 1 and {row["reason"] for row in report["changed"]} == {"dtype"}
    code, report = run_diff(FIXTURES / "mlp.pt", tmp_path / "bf16.safetensors", "--ignore-dtype")
    assert code == 1 and {row["reason"] for row in report["changed"]} == {"values"}
    for name, row in changed(report).items():
        moved = np.abs(f64(state[name]) - f64(exported[name]))
        assert row["max_abs"] == moved.max() and row["mismatched"] == np.count_nonzero(moved)
        assert (row["dtype_a"], row["dtype_b"]) == ("float32", "bfloat16")
    # bfloat16 keeps 8 significant bits: a relative tolerance of 2^-8 covers the rounding.
    code, report = run_diff(FIXTURES / "mlp.pt", tmp_path / "bf16.safetensors", "--ignore-dtype", "--rtol", "0.004")
    assert code == 0 and report["equal_count"] == 4
    assert run_diff(FIXTURES / "mlp.pt", tmp_path / "bf16.safetensors", "--ignore-dtype", "--rtol", "0.001")[0] == 1


def test_strip_prefix_of_a_ddp_and_compiled_model(tmp_path: Path):
    torch.save({f"module._orig_mod.{k}": v for k, v in mlp_state().items()}, tmp_path / "ddp.pt")
    code, report = run_diff(tmp_path / "ddp.pt", FIXTURES / "mlp.safetensors")
    assert code == 1 and len(report["only_in_a"]) == 4 and len(report["only_in_b"]) == 4
    code, report = run_diff(
        tmp_path / "ddp.pt", FIXTURES / "mlp.safetensors", "--strip-prefix", "module.", "--strip-prefix", "_orig_mod."
    )
    assert code == 0 and report["equal_count"] == 4


def test_subtree_of_a_training_checkpoint(tmp_path: Path):
    checkpoint = torch.load(FIXTURES / "train_ckpt.pt", weights_only=True)
    torch.save(checkpoint["model"], tmp_path / "model.pt")
    code, report = run_diff(f"{FIXTURES / 'train_ckpt.pt'}::model", tmp_path / "model.pt")
    assert code == 0 and report["equal_count"] == 4
    assert report["a"] == {"file": str(FIXTURES / "train_ckpt.pt"), "format": "torch-zip", "subtree": "model"}
    code, report = run_diff(f"{FIXTURES / 'train_ckpt.pt'}::model", FIXTURES / "mlp.pt")  # another training run
    assert code == 1 and report["only_in_a"] == [] and report["only_in_b"] == []
    for name, row in changed(report).items():
        moved = np.abs(f64(checkpoint["model"][name]) - f64(mlp_state()[name]))
        assert row["max_abs"] == moved.max()
    # A single tensor against another: both subtrees are one unnamed leaf.
    lm = FIXTURES / "tiny_lm.pt"
    assert run_diff(f"{lm}::embed.weight", f"{lm}::lm_head.weight")[0] == 0
    assert run_diff(f"{lm}::embed.weight", f"{lm}::hidden.weight")[1]["changed"][0]["reason"] == "shape"


def test_plain_values_and_metadata_that_changed(tmp_path: Path):
    checkpoint = torch.load(FIXTURES / "train_ckpt.pt", weights_only=True)
    checkpoint["epoch"] = 4
    checkpoint["optimizer"]["param_groups"][0]["lr"] = 0.05
    torch.save(checkpoint, tmp_path / "later.pt")
    code, report = run_diff(FIXTURES / "train_ckpt.pt", tmp_path / "later.pt")
    assert code == 1 and report["changed"] == [] and report["metadata_changed"] == []  # archive names differ
    assert report["values_changed"] == [
        {"name": "optimizer.param_groups.0.lr", "a": 0.1, "b": 0.05},
        {"name": "epoch", "a": 3, "b": 4},
    ]
    state = mlp_state()
    safetensors.torch.save_file(state, tmp_path / "x.safetensors", metadata={"format": "pt", "step": "1"})
    safetensors.torch.save_file(state, tmp_path / "y.safetensors", metadata={"format": "np"})
    code, report = run_diff(tmp_path / "x.safetensors", tmp_path / "y.safetensors")
    assert code == 1 and report["equal_count"] == 4
    assert sorted(report["metadata_changed"], key=lambda m: m["key"]) == [
        {"key": "format", "a": "pt", "b": "np"},
        {"key": "step", "a": "1", "b": None},
    ]
    assert run_diff(tmp_path / "x.safetensors", tmp_path / "y.safetensors", "--ignore-metadata")[0] == 0


def test_dropped_tie_is_reported_with_its_partner(tmp_path: Path):
    state = torch.load(FIXTURES / "tiny_lm.pt", weights_only=True)
    del state["lm_head.weight"]  # a conversion that forgot the alias
    safetensors.torch.save_file(state, tmp_path / "dropped.safetensors")
    code, report = run_diff(FIXTURES / "tiny_lm.pt", tmp_path / "dropped.safetensors")
    assert code == 1 and report["only_in_a"] == []
    tie = {"name": "lm_head.weight", "partner": "embed.weight", "side": "a", "relation": "tied"}
    assert report["dropped_ties"] == [tie] and report["different_count"] == 1
    code, report = run_diff(FIXTURES / "tiny_lm.pt", tmp_path / "dropped.safetensors", "--allow-dropped-ties")
    assert code == 0 and report["dropped_ties"] == [tie]
    code, report = run_diff(tmp_path / "dropped.safetensors", FIXTURES / "tiny_lm.pt")
    assert code == 1 and report["dropped_ties"] == [{**tie, "side": "b"}]
    # The transposed decoder of the autoencoder, dropped: a tie too. If the partner changed, a plain removal.
    auto = torch.load(FIXTURES / "autoencoder.pt", weights_only=True)
    del auto["decoder.weight"]
    safetensors.torch.save_file(auto, tmp_path / "auto.safetensors")
    code, report = run_diff(FIXTURES / "autoencoder.pt", tmp_path / "auto.safetensors")
    assert report["dropped_ties"] == [
        {"name": "decoder.weight", "partner": "encoder.weight", "side": "a", "relation": "transposed"}
    ]
    auto["encoder.weight"] = auto["encoder.weight"] + 1
    safetensors.torch.save_file(auto, tmp_path / "auto2.safetensors")
    code, report = run_diff(FIXTURES / "autoencoder.pt", tmp_path / "auto2.safetensors", "--allow-dropped-ties")
    assert code == 1 and report["dropped_ties"] == [] and report["only_in_a"][0]["name"] == "decoder.weight"


def test_infinite_relative_difference_is_valid_json(tmp_path: Path):
    state = mlp_state()
    zero, moved = dict(state), dict(state)
    zero["0.bias"] = torch.zeros(8)
    moved["0.bias"] = torch.zeros(8)
    moved["0.bias"][0] = 1e-30
    moved["2.bias"] = torch.tensor([math.inf])
    torch.save(zero, tmp_path / "zero.pt")
    torch.save(moved, tmp_path / "moved.pt")
    code, report = run_diff(tmp_path / "moved.pt", tmp_path / "zero.pt")
    rows = changed(report)
    assert code == 1 and rows["0.bias"]["max_rel"] == "inf" and rows["0.bias"]["rel_l2"] == 1.0
    assert rows["0.bias"]["max_abs"] == float(np.float32(1e-30))  # small magnitudes survive
    assert rows["0.bias"]["cosine"] is None  # B is all zeros: no direction
    assert rows["2.bias"]["max_abs"] == "inf" and rows["2.bias"]["mismatched"] == 1
    code, report = run_diff(tmp_path / "zero.pt", tmp_path / "moved.pt")
    assert changed(report)["0.bias"]["rel_l2"] == "inf" and changed(report)["0.bias"]["max_rel"] == 1.0


# --------------------------------------------------------------------------------- CLI: text, errors, operands


def test_human_report_lists_sections_and_summary(tmp_path: Path):
    checkpoint = torch.load(FIXTURES / "train_ckpt.pt", weights_only=True)
    checkpoint["epoch"] = 4
    del checkpoint["model"]["2.bias"]
    checkpoint["model"]["0.bias"][0] += 1
    torch.save(checkpoint, tmp_path / "later.pt")
    result = runner.invoke(app, ["diff", str(FIXTURES / "train_ckpt.pt"), str(tmp_path / "later.pt")])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[lines.index("only in A") + 1].split() == ["model.2.bias", "float32", "(1,)"]
    header = lines[lines.index("changed") + 1].split()
    assert header[:5] == ["name", "reason", "dtype", "shape", "mismatched"]
    assert lines[lines.index("changed") + 2].split()[:5] == ["model.0.bias", "values", "float32", "(8,)", "1/8"]
    assert lines[lines.index("values changed") + 1].strip() == "epoch: 3 → 4"
    assert lines[-1] == "6 equal, 3 different: different"  # 8 tensors, one removed, one changed
    result = runner.invoke(app, ["diff", str(FIXTURES / "mlp.pt"), str(FIXTURES / "mlp.npz"), "--all"])
    assert result.exit_code == 0 and result.stdout.splitlines()[-1] == "4 equal, 0 different: equal"
    assert "0.weight" in result.stdout and result.stderr == ""


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path):
    (tmp_path / "junk.bin").write_bytes(b"\x00" * 64)
    mlp = str(FIXTURES / "mlp.pt")
    cases = [
        ([mlp, str(tmp_path / "missing.pt")], "no such file"),
        ([mlp, str(tmp_path / "junk.bin")], "unrecognised format"),
        ([mlp, mlp, "--atol", "-1"], "--atol"),
        ([mlp, mlp, "--rtol", "nan"], "--rtol"),
        ([f"{mlp}::nothing", mlp], "no name is 'nothing'"),
    ]
    for args, problem in cases:
        result = subprocess.run(
            [sys.executable, "-m", "paramctl", "diff", *args], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2, (args, result.stdout)
        assert result.stdout == "" and len(result.stderr.splitlines()) == 1 and problem in result.stderr, args
    torch.save({"x": torch.zeros(1), "a.x": torch.ones(1)}, tmp_path / "clash.pt")
    result = runner.invoke(app, ["diff", str(tmp_path / "clash.pt"), mlp, "--strip-prefix", "a."])
    assert result.exit_code == 2 and "after name mapping" in result.stderr
    assert runner.invoke(app, ["diff", mlp]).exit_code == 2


def test_operand_syntax(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    assert parse_operand("a.pt") == ("a.pt", None)
    assert parse_operand("a.pt::model") == ("a.pt", "model")
    assert parse_operand("a.pt::model.encoder") == ("a.pt", "model.encoder")
    assert parse_operand("a.pt::") == ("a.pt", None)
    assert parse_operand("x::y.pt::model") == ("x::y.pt", "model")  # the last `::` separates
    Path("x::y.pt").write_bytes(b"")
    assert parse_operand("x::y.pt") == ("x::y.pt", None)  # only the whole name exists
    Path("x").write_bytes(b"")
    with pytest.raises(UsageError, match="ambiguous"):
        parse_operand("x::y.pt")
    assert parse_operand("x::y.pt::") == ("x::y.pt", None)


def test_diff_imports_no_torch():
    code = (
        "import sys\n"
        "from paramctl.cli import app\n"
        "try:\n"
        f"    app(['diff', {str(FIXTURES / 'tied_mlp.pt')!r}, {str(FIXTURES / 'tied_mlp.safetensors')!r}])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "assert 'torch' not in sys.modules and 'rich' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_deflated_npz_streams_against_a_mapped_file(tmp_path: Path):
    state = {name: tensor.numpy() for name, tensor in torch.load(FIXTURES / "tied_mlp.pt", weights_only=True).items()}
    np.savez_compressed(tmp_path / "deflated.npz", **state)
    state["6.weight"] = state["6.weight"].copy()
    state["6.weight"][0, 5] *= -1
    np.savez_compressed(tmp_path / "changed.npz", **state)
    for chunk in (None, 1, 7):
        options = DiffOptions(chunk_elements=chunk)
        a, b = paramctl.open(tmp_path / "deflated.npz"), paramctl.open(FIXTURES / "tied_mlp.pt")
        assert isinstance(a["2.weight"].storage.data, Stream)
        assert diff_trees(a, b, options).equal
        result = diff_trees(paramctl.open(tmp_path / "changed.npz"), b, options)
        assert [row.name for row in result.changed] == ["6.weight"]
        assert result.changed[0].stats.max_abs == 2 * abs(float(state["6.weight"][0, 5]))


def test_library_api_and_plain_values():
    a = Tree("a", "memory", [(("x",), Value(float("nan"))), (("y",), Value([1, 2.0])), (("z",), Value(True))])
    b = Tree("b", "memory", [(("x",), Value(float("nan"))), (("y",), Value([1, 2])), (("z",), Value(1))])
    result = diff_trees(a, b)
    assert [change.name for change in result.values_changed] == ["y", "z"]  # 2.0 is not 2, True is not 1
    assert [c.name for c in diff_trees(a, b, DiffOptions(nan_equal=False)).values_changed] == ["x", "y", "z"]
    with pytest.raises(UsageError):
        diff_trees(a, b, DiffOptions(atol=math.inf))


# ------------------------------------------------------------------------------ metrics against a reference


class MemorySource(ByteSource):
    """Bytes in memory as a byte source: trees built here, without files."""

    def __init__(self, data: bytes) -> None:
        self.name, self.size, self._view = "memory", len(data), memoryview(data)

    def view(self, offset: int, length: int) -> memoryview:
        self.check_range(offset, length, "a read")
        return self._view[offset : offset + length]


def memory_tensor(values: np.ndarray, transposed: bool, stream: bool) -> Tensor:
    """A 2-D tensor holding `values` (row-major), stored as-is or as its transpose's buffer, mapped or streamed."""
    buffer = np.ascontiguousarray(values.T if transposed else values)
    data = buffer.tobytes()
    strides = (1, values.shape[0]) if transposed else (values.shape[1], 1)
    storage_data: Any = (
        Stream(lambda: io.BytesIO(data), len(data)) if stream else ByteRange(MemorySource(data), 0, len(data))
    )
    storage = Storage("0", len(data), storage_data)
    return Tensor(from_numpy(values.dtype), values.shape, strides, storage)


DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16, np.int32, np.int64, np.uint8, np.complex64, np.bool_]
SPECIAL = [0.0, -0.0, math.nan, math.inf, -math.inf, 1e-40, -1e-45, 1e-300, 5e-324, 1e300, 3e38, 1.0, -2.5]


@st.composite
def value_arrays(draw: Any, dtype: Any, shape: tuple[int, int]) -> np.ndarray:
    n = shape[0] * shape[1]
    if np.dtype(dtype).kind in "iub":
        top = 2 if np.dtype(dtype).kind == "b" else 100
        low = 0 if np.dtype(dtype).kind in "ub" else -100
        values = draw(st.lists(st.integers(low, top - 1), min_size=n, max_size=n))
        return np.array(values, dtype=np.int64).astype(dtype).reshape(shape)
    floats = st.one_of(st.sampled_from(SPECIAL), st.floats(-1e6, 1e6), st.floats(-1e-30, 1e-30))
    values = np.array(draw(st.lists(floats, min_size=n, max_size=n)), dtype=np.float64)
    if np.dtype(dtype).kind == "c":  # set the parts: 1j * inf would be nan+infj
        real, values = values, np.empty(n, dtype=np.complex128)
        values.real, values.imag = real, draw(st.lists(floats, min_size=n, max_size=n))
    with np.errstate(over="ignore"):
        return values.astype(dtype).reshape(shape)


@st.composite
def pairs(draw: Any) -> tuple[np.ndarray, np.ndarray, DiffOptions, bool, bool, bool, int]:
    dtype_a = draw(st.sampled_from(DTYPES))
    dtype_b = dtype_a if draw(st.booleans()) else draw(st.sampled_from(DTYPES))
    shape = (draw(st.integers(0, 6)), draw(st.integers(1, 9)))
    a = draw(value_arrays(dtype_a, shape))
    if dtype_b == dtype_a and draw(st.booleans()):  # mostly equal: exercises the raw-byte path
        b = a.copy()
        flat = b.reshape(-1)
        for index in draw(st.lists(st.integers(0, max(0, flat.size - 1)), max_size=3)) if flat.size else []:
            flat[index] = draw(value_arrays(dtype_b, (1, 1)))[0, 0]
    else:
        b = draw(value_arrays(dtype_b, shape))
    tolerance = st.sampled_from([0.0, 1e-6, 0.5, 1e-300])
    options = DiffOptions(
        atol=draw(tolerance),
        rtol=draw(tolerance),
        nan_equal=draw(st.booleans()),
        ignore_dtype=True,
        chunk_elements=draw(st.sampled_from([None, 1, 3, 7])),
        threads=draw(st.sampled_from([1, 2])),
    )
    transposed, streamed = draw(st.booleans()), draw(st.booleans())
    return a, b, options, transposed, streamed, draw(st.booleans()), draw(st.sampled_from([1, 2, 5, 1 << 15]))


def exact(x: Any) -> tuple[Fraction, Fraction]:
    """A finite real or complex float64 as exact rationals (real, imaginary)."""
    z = complex(x)
    return Fraction(z.real), Fraction(z.imag)


def reference_stats(a: np.ndarray, b: np.ndarray, options: DiffOptions) -> dict[str, Any]:
    """The documented metrics, computed on whole arrays: mismatches by numpy.isclose itself, norms exactly."""
    wide = np.complex128 if np.iscomplexobj(a) or np.iscomplexobj(b) else np.float64
    x, y = a.astype(wide).ravel(), b.astype(wide).ravel()
    close = np.isclose(x, y, rtol=options.rtol, atol=options.atol, equal_nan=options.nan_equal)
    with np.errstate(all="ignore"):  # unequal values with an infinite part are infinitely apart
        d = np.where(x == y, 0.0, np.where(np.isinf(x) | np.isinf(y), math.inf, np.abs(x - y)))
    no_nan = ~(np.isnan(x) | np.isnan(y))
    rel = []
    for di, yi, xi in zip(d[no_nan], np.abs(y)[no_nan], x[no_nan]):
        if di == 0:
            rel.append(0.0)
        elif yi == 0 or not (np.isfinite(xi) and np.isfinite(yi)):
            rel.append(math.inf)
        else:
            with np.errstate(over="ignore"):
                rel.append(di / yi)
    finite = np.isfinite(x) & np.isfinite(y)
    ssq_a = ssq_b = ssq_d = dot = Fraction(0)
    for xi, yi in zip(x[finite], y[finite]):
        (ar, ai), (br, bi) = exact(xi), exact(yi)
        ssq_a += ar * ar + ai * ai
        ssq_b += br * br + bi * bi
        ssq_d += (ar - br) ** 2 + (ai - bi) ** 2
        dot += ar * br + ai * bi
    if ssq_d == 0:
        rel_l2, cosine = 0.0, 1.0
    else:
        rel_l2 = math.inf if ssq_a == 0 else _sqrt_ratio(ssq_d, ssq_a)
        cosine = None if ssq_a == 0 or ssq_b == 0 else (1 if dot >= 0 else -1) * _sqrt_ratio(dot * dot, ssq_a * ssq_b)
    return {
        "numel": x.size,
        "mismatched": int(np.count_nonzero(~close)),
        "max_abs": float(d[no_nan].max(initial=0.0)),
        "max_rel": max(rel, default=0.0),
        "rel_l2": rel_l2,
        "cosine": cosine,
    }


def _sqrt_ratio(num: Fraction, den: Fraction) -> float:
    """sqrt(num/den) without under- or overflow on the way: through logarithms of the exact big integers."""
    if num == 0:
        return 0.0
    log = (
        math.log(num.numerator) - math.log(num.denominator) - math.log(den.numerator) + math.log(den.denominator)
    ) / 2
    return math.inf if log > 709 else math.exp(log)  # beyond float64: the ratio is infinite as a float


@settings(
    max_examples=int(os.environ.get("DIFF_EXAMPLES", 250)), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(pairs())
def test_metrics_match_an_exact_reference(case: tuple[np.ndarray, np.ndarray, DiffOptions, bool, bool, bool, int]):
    a, b, options, transposed, streamed, swap, block = case
    ta = memory_tensor(a, transposed, streamed and not swap)
    tb = memory_tensor(b, not transposed and swap, streamed and swap)
    with mock.patch.object(diff_kernel, "BLOCK", block):
        result = diff_trees(Tree("a", "memory", [(("w",), ta)]), Tree("b", "memory", [(("w",), tb)]), options)
    expected = reference_stats(a, b, options)
    if not result.changed:  # equal: nothing mismatched
        assert expected["mismatched"] == 0 and result.equal_count == 1
        return
    stats = result.changed[0].stats
    assert stats is not None
    assert stats.numel == expected["numel"] and stats.mismatched == expected["mismatched"] > 0
    assert stats.max_abs == expected["max_abs"]
    assert stats.max_rel == expected["max_rel"]
    assert _close(stats.rel_l2, expected["rel_l2"]) and _close(stats.cosine, expected["cosine"])


def _close(ours: float | None, expected: float | None) -> bool:
    if ours is None or expected is None:
        return ours is expected
    if math.isinf(expected) or expected == 0:
        return ours == expected
    return math.isclose(ours, expected, rel_tol=1e-9, abs_tol=1e-12 if abs(expected) <= 1 else 0)


@settings(max_examples=60, deadline=None)
@given(pairs())
def test_equal_tensors_report_trivial_metrics_with_all(case: tuple[Any, ...]):
    a, _, options, transposed, streamed, _, _ = case
    opts = DiffOptions(chunk_elements=options.chunk_elements, list_all=True)
    ta, tb = memory_tensor(a, transposed, streamed), memory_tensor(a.copy(), False, False)
    result = diff_trees(Tree("a", "memory", [(("w",), ta)]), Tree("b", "memory", [(("w",), tb)]), opts)
    (row,) = result.unchanged
    assert result.equal and row.stats is not None
    assert (row.stats.mismatched, row.stats.max_abs, row.stats.max_rel, row.stats.rel_l2) == (0, 0.0, 0.0, 0.0)
    assert row.stats.cosine == 1.0
