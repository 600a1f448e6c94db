"""`diff`'s matching beyond values: metadata it cannot compare, relations of dropped ties, operands that are URLs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from typer.testing import CliRunner

from paramctl.cli import app
from paramctl.cli.diff import parse_operand

runner = CliRunner()


def diff_json(*args: str | Path) -> tuple[int, dict[str, Any]]:
    result = runner.invoke(app, ["diff", *map(str, args), "--json"])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def test_metadata_of_different_formats_is_reported_as_not_compared(tmp_path: Path):
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    pt, st, st2 = tmp_path / "m.pt", tmp_path / "m.safetensors", tmp_path / "n.safetensors"
    torch.save(state, pt)
    safetensors.torch.save_file(state, st, metadata={"format": "pt"})
    safetensors.torch.save_file(state, st2, metadata={"format": "pt"})
    code, report = diff_json(pt, st)
    assert code == 0 and report["equal"] and report["metadata_changed"] == []
    assert report["metadata_not_compared"] == "the files are of different formats (torch-zip, safetensors)"
    human = runner.invoke(app, ["diff", str(pt), str(st)])
    assert human.exit_code == 0 and "metadata not compared: the files are of different formats" in human.stdout
    code, report = diff_json(pt, st, "--ignore-metadata")  # not asked for: nothing to say
    assert code == 0 and report["metadata_not_compared"] is None
    code, report = diff_json(st, st2)  # one format: compared
    assert code == 0 and report["metadata_not_compared"] is None


def test_two_transposes_of_one_anchor_are_tied_to_each_other(tmp_path: Path):
    w = torch.arange(6.0).reshape(2, 3)
    pa, pb = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({"w": w, "t1": w.t(), "t2": w.t()}, pa)
    torch.save({"t1": w.t().contiguous()}, pb)
    code, report = diff_json(pa, pb)
    ties = {tie["name"]: (tie["partner"], tie["relation"]) for tie in report["dropped_ties"]}
    assert ties == {"w": ("t1", "transposed"), "t2": ("t1", "tied")}
    assert report["only_in_a"] == [] and code == 1  # dropped ties count unless allowed
    code, report = diff_json(pa, pb, "--allow-dropped-ties")
    assert code == 0


def test_url_operands_keep_an_ipv6_host_whole():
    assert parse_operand("http://[::1]:8000/m.pt") == ("http://[::1]:8000/m.pt", None)
    assert parse_operand("http://[::1]:8000/m.pt::model") == ("http://[::1]:8000/m.pt", "model")
    assert parse_operand("https://[2001:db8::7]/a/b.safetensors::enc.layers") == (
        "https://[2001:db8::7]/a/b.safetensors",
        "enc.layers",
    )
    assert parse_operand("http://[::1]:8000/m.pt::") == ("http://[::1]:8000/m.pt", None)
    assert parse_operand("http://host/x::y.pt::model") == ("http://host/x::y.pt", "model")  # the last `::`
