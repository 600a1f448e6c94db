"""`paramctl ls` and `paramctl formats` as users run them: output, JSON schema, exit codes, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from reference import FIXTURES
from typer.testing import CliRunner

from paramctl.cli import app

runner = CliRunner()


def ls(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["ls", *args])
    return result.exit_code, result.output


def test_table_lists_every_tensor_with_totals():
    code, out = ls(str(FIXTURES / "mlp.pt"))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["name", "dtype", "shape", "numel", "size", "tie"]
    assert lines[1].split() == ["0.weight", "float32", "(8,", "4)", "32", "128", "B"]
    assert lines[2].split() == ["0.bias", "float32", "(8,)", "8", "32", "B"]
    assert lines[-1] == "4 tensors · 49 parameters (49 unique) · 196 B · torch-zip"


def test_tied_tensors_are_marked_and_counted_once():
    code, out = ls(str(FIXTURES / "tiny_lm.pt"))
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[1:-1]}
    assert rows["embed.weight"].rstrip().endswith("shared")
    assert rows["lm_head.weight"].rstrip().endswith("= embed.weight")
    model = torch.load(FIXTURES / "tiny_lm.pt", weights_only=True)
    total = sum(t.numel() for t in model.values())
    unique = total - model["lm_head.weight"].numel()
    assert out.splitlines()[-1].startswith(f"4 tensors · {total:,} parameters ({unique:,} unique)")


def test_transposed_tie_and_metadata_alias_are_marked():
    _, out = ls(str(FIXTURES / "autoencoder.pt"))
    assert "= encoder.weightᵀ" in out
    _, out = ls(str(FIXTURES / "tied_mlp.safetensors"))
    assert "= 2.weight (metadata)" in out


def test_values_are_listed():
    code, out = ls(str(FIXTURES / "train_ckpt.pt"))
    assert code == 0
    assert "epoch = 3" in out.splitlines()
    assert "optimizer.param_groups.0.lr = 0.1" in out.splitlines()


def test_json_schema():
    code, out = ls(str(FIXTURES / "tied_mlp.pt"), "--json")
    assert code == 0
    doc = json.loads(out)
    assert set(doc) == {"file", "format", "metadata", "tensors", "values", "totals"}
    assert doc["format"] == "torch-zip"
    reference = torch.load(FIXTURES / "tied_mlp.pt", weights_only=True)
    assert [t["name"] for t in doc["tensors"]] == list(reference)
    for entry in doc["tensors"]:
        tensor = reference[entry["name"]]
        assert entry["path"] == entry["name"].split(".")
        assert entry["dtype"] == "float32"
        assert entry["shape"] == list(tensor.shape)
        assert entry["strides"] == list(tensor.stride())
        assert entry["numel"] == tensor.numel() and entry["nbytes"] == tensor.nbytes
        assert entry["storage"]["offset"] == tensor.storage_offset()
        assert entry["storage"]["size"] == tensor.untyped_storage().nbytes()
        assert entry["location"] == "cpu"
    by_name = {t["name"]: t for t in doc["tensors"]}
    assert by_name["2.weight"]["storage"]["id"] == by_name["4.weight"]["storage"]["id"]
    assert by_name["4.weight"]["tie"] == {"relation": "tied", "partner": "2.weight", "declared_by": None}
    assert by_name["0.weight"]["tie"] is None
    numel = sum(t.numel() for t in reference.values())
    assert doc["totals"] == {
        "tensors": 8,
        "numel": numel,
        "unique_numel": numel - reference["4.weight"].numel() - reference["4.bias"].numel(),
        "nbytes": numel * 4,
    }


def test_json_values_and_placeholders(tmp_path: Path):
    import argparse

    path = tmp_path / "ckpt.pt"
    torch.save({"args": argparse.Namespace(lr=float("nan")), "epoch": 4, "w": torch.ones(2)}, path)
    code, out = ls(str(path), "--json")
    assert code == 0
    values = {v["name"]: v for v in json.loads(out)["values"]}
    assert values["epoch"] == {"name": "epoch", "path": ["epoch"], "type": "int", "value": 4}
    assert values["args"]["type"] == "object" and values["args"]["global"] == "argparse.Namespace"
    assert values["args.lr"]["value"] == "nan"  # never a bare NaN token


def test_sort_by_name_is_natural(tmp_path: Path):
    path = tmp_path / "layers.pt"
    torch.save({f"layers.{i}.w": torch.zeros(i + 1) for i in (10, 2, 1)}, path)
    _, out = ls(str(path), "--sort", "name")
    assert [line.split()[0] for line in out.splitlines()[1:-1]] == ["layers.1.w", "layers.2.w", "layers.10.w"]
    _, out = ls(str(path), "--sort", "numel")
    assert [line.split()[0] for line in out.splitlines()[1:-1]] == ["layers.10.w", "layers.2.w", "layers.1.w"]


def test_filter_keeps_matching_names_and_totals_follow():
    code, out = ls(str(FIXTURES / "mlp.pt"), "--filter", "*.bias", "--json")
    assert code == 0
    doc = json.loads(out)
    assert [t["name"] for t in doc["tensors"]] == ["0.bias", "2.bias"]
    assert doc["totals"]["numel"] == 9


def test_tree_draws_nesting_with_subtree_totals():
    code, out = ls(str(FIXTURES / "train_ckpt.pt"), "--tree")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].endswith("98 params")
    assert "├── model  49 params" in lines
    assert any(line.strip().endswith("weight  (8, 4) float32  32") for line in lines)
    code, out = ls(str(FIXTURES / "train_ckpt.pt"), "--tree", "--depth", "1")
    assert "├── model  49 params  (4 tensors)" in out.splitlines()
    assert "weight" not in out  # folded below depth 1


def test_control_characters_in_names_are_escaped(tmp_path: Path):
    path = tmp_path / "evil.pt"
    torch.save({"bad\x1b[31mname": torch.zeros(1)}, path)
    _, out = ls(str(path))
    assert "\x1b" not in out and "bad\\x1b[31mname" in out


def test_errors_are_one_line_and_exit_2(tmp_path: Path):
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "junk.bin").write_bytes(b"\x00" * 100)
    (tmp_path / "trunc.safetensors").write_bytes((FIXTURES / "mlp.safetensors").read_bytes()[:100])
    cases = {
        str(tmp_path / "missing.pt"): "no such file",
        str(tmp_path): "is a directory",
        str(tmp_path / "empty.pt"): "empty file",
        str(tmp_path / "junk.bin"): "unrecognised format",
        str(tmp_path / "trunc.safetensors"): "",
    }
    for path, problem in cases.items():
        result = subprocess.run(
            [sys.executable, "-m", "paramctl", "ls", path], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2, path
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"paramctl: {path}: "), result.stderr
        assert problem in lines[0]


def test_usage_errors_exit_2():
    assert runner.invoke(app, ["ls"]).exit_code == 2
    assert runner.invoke(app, ["ls", str(FIXTURES / "mlp.pt"), "--sort", "bogus"]).exit_code == 2
    assert runner.invoke(app, ["ls", str(FIXTURES / "mlp.pt"), "--format", "bogus"]).exit_code == 2


def test_format_option_forces_a_loader():
    code, out = ls(str(FIXTURES / "mlp.pt"), "--format", "torch", "--json")
    assert code == 0 and json.loads(out)["format"] == "torch-zip"
    result = runner.invoke(app, ["ls", str(FIXTURES / "mlp.pt"), "--format", "safetensors"])
    assert result.exit_code == 2


def test_formats_lists_the_loaders():
    result = runner.invoke(app, ["formats", "--json"])
    assert result.exit_code == 0
    assert [f["name"] for f in json.loads(result.output)["loaders"]][:3] == ["safetensors", "torch", "npz"]


def test_neither_import_nor_ls_imports_torch():
    code = (
        "import sys, paramctl, paramctl.cli\n"
        "from paramctl.cli import app\n"
        "try:\n"
        f"    app(['ls', {str(FIXTURES / 'dtypes.pt')!r}])\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        "heavy = [m for m in ('torch', 'fsspec', 'PIL') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_ls_does_not_import_numpy():
    """Headers only: the listing path never needs NumPy (it costs a tenth of a second to import)."""
    code = (
        "import sys\n"
        "from paramctl.cli import app\n"
        "for f in ('dtypes.pt', 'dtypes.safetensors', 'dtypes.npz', 'tied_mlp_legacy.pt'):\n"
        "    try:\n"
        f"        app(['ls', {str(FIXTURES)!r} + '/' + f])\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), e.code\n"
        "assert 'numpy' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_help_and_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "paramctl", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "ls" in result.stdout
