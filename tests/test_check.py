"""`paramctl check`: rules from pyproject.toml / paramctl.toml, each passing and failing, and bad configurations."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from reference import FIXTURES
from typer.testing import CliRunner

from paramctl.cli import app
from paramctl.cli.check import github_annotation
from paramctl.ops.check import Outcome, find_config

runner = CliRunner()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository with checkpoints, a reference and a tie baseline, as the current directory."""
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "ref").mkdir()
    for name in ("tiny_lm.pt", "tiny_lm.safetensors", "mlp.pt", "mlp.safetensors"):
        shutil.copy(FIXTURES / name, tmp_path / "checkpoints" / name)
    shutil.copy(FIXTURES / "mlp.pt", tmp_path / "ref" / "mlp.pt")
    result = runner.invoke(app, ["ties", str(FIXTURES / "tiny_lm.pt"), "--json"])
    (tmp_path / "ties.json").write_text(result.output)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_config(repo: Path, body: str, name: str = "pyproject.toml") -> Path:
    path = repo / name
    header = "[project]\nname = 'demo'\n\n" if name == "pyproject.toml" else ""
    path.write_text(header + textwrap.dedent(body))
    return path


def check(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["check", *args])
    return result.exit_code, result.output


GOOD = """
[[tool.paramctl.check]]
files = ["checkpoints/tiny_lm.*"]
finite = true
ties = [["embed.weight", "lm_head.weight"]]
ties-baseline = "ties.json"
safe = true
dtype = "float32"
max-params = 200

[[tool.paramctl.check]]
files = ["checkpoints/mlp.safetensors"]
finite = true
matches = { reference = "ref/mlp.pt", atol = 0.0 }
"""


def test_all_rules_pass(repo: Path):
    write_config(repo, GOOD)
    code, out = check("--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["ok"] and doc["failed"] == 0
    rules = {(f["file"], r["rule"]) for f in doc["files"] for r in f["rules"]}
    assert ("checkpoints/tiny_lm.pt", "ties") in rules and ("checkpoints/mlp.safetensors", "matches") in rules
    assert doc["passed"] == 2 * 6 + 2


@pytest.mark.parametrize(
    ("rule", "needle"),
    [
        ("max-params = 199", "at most 199 parameters; found 200"),
        ('dtype = "bfloat16"', "every floating tensor bfloat16; found embed.weight (float32)"),
        ('ties = [["embed.weight", "hidden.weight"]]', "tied: embed.weight=hidden.weight"),
        ("no-ties = true", "no tied tensors"),
    ],
)
def test_each_header_rule_fails_with_its_message(repo: Path, rule: str, needle: str):
    write_config(repo, f'[[tool.paramctl.check]]\nfiles = ["checkpoints/tiny_lm.pt"]\n{rule}\n')
    code, out = check()
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith("checkpoints/tiny_lm.pt: ") and needle in lines[0], lines
    assert lines[-1] == "1 file, 1 rules: 1 failed"


def test_finite_rule_fails_on_nan(repo: Path):
    torch.save({"w": torch.tensor([1.0, float("nan"), float("inf")])}, repo / "checkpoints" / "bad.pt")
    write_config(repo, '[[tool.paramctl.check]]\nfiles = ["checkpoints/bad.pt"]\nfinite = true\n')
    code, out = check()
    assert code == 1
    assert "checkpoints/bad.pt: finite: expected no NaN or Inf; found non-finite values in w (2)" in out


def test_matches_rule_fails_and_shares_the_pass_with_finite(repo: Path, monkeypatch: pytest.MonkeyPatch):
    import paramctl.ops.stats

    def no_second_pass(*args, **kwargs):
        raise AssertionError("the finite rule read the data again")

    monkeypatch.setattr(paramctl.ops.stats, "stat_tree", no_second_pass)
    changed = torch.load(FIXTURES / "mlp.pt", weights_only=True)
    changed["0.bias"][3] = float("nan")
    torch.save(changed, repo / "checkpoints" / "changed.pt")
    write_config(
        repo,
        '[[tool.paramctl.check]]\nfiles = ["checkpoints/changed.pt"]\nfinite = true\n'
        'matches = { reference = "ref/mlp.pt", atol = 1e-6 }\n',
    )
    code, out = check("--json")
    assert code == 1
    rules = {r["rule"]: r for f in json.loads(out)["files"] for r in f["rules"]}
    assert not rules["matches"]["ok"] and "0.bias (values)" in rules["matches"]["found"]
    assert not rules["finite"]["ok"] and "0.bias (1)" in rules["finite"]["found"]


def test_ties_baseline_and_safe_fail(repo: Path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"w": torch.zeros(2), "hook": Evil()}, repo / "checkpoints" / "evil.pt")
    write_config(
        repo,
        '[[tool.paramctl.check]]\nfiles = ["checkpoints/evil.pt"]\nsafe = true\n\n'
        '[[tool.paramctl.check]]\nfiles = ["checkpoints/tiny_lm.safetensors"]\nties-baseline = "ties.json"\n',
    )
    code, out = check()
    assert code == 1
    assert "checkpoints/evil.pt: safe: expected nothing dangerous referenced; found posix.system" in out
    assert "checkpoints/tiny_lm.safetensors: ties-baseline:" not in out  # metadata aliases keep the tie


def test_files_arguments_restrict_the_run(repo: Path):
    write_config(repo, GOOD)
    code, out = check("checkpoints/mlp.safetensors", "--json")
    assert code == 0
    assert [f["file"] for f in json.loads(out)["files"]] == ["checkpoints/mlp.safetensors"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('[[tool.paramctl.check]]\nfiles = ["checkpoints/*.pt"]\nfinit = true\n', "unknown key 'finit'"),
        ('[[tool.paramctl.check]]\nfiles = ["checkpoints/*.pt"]\nfinite = "yes"\n', "finite: must be true or false"),
        ('[[tool.paramctl.check]]\nfiles = ["nothing/*.pt"]\nfinite = true\n', "'nothing/*.pt' matches no file"),
        (
            '[[tool.paramctl.check]]\nfiles = ["checkpoints/*.pt"]\nmatches = { reference = "gone.pt" }\n',
            "matches.reference: 'gone.pt' does not exist",
        ),
        ('[[tool.paramctl.check]]\nfiles = ["checkpoints/*.pt"]\nmax-params = true\n', "must be an integer"),
        ('[[tool.paramctl.check]]\nfiles = ["checkpoints/*.pt"]\ndtype = "float33"\n', "unknown dtype 'float33'"),
        ('[[tool.paramctl.check]]\nfiles = ["checkpoints/*.pt"]\n', "states no rule"),
        ("[tool.paramctl]\nchecks = []\n", "unknown key 'checks'"),
        ("[tool.paramctl\n", "cannot be read as TOML"),
    ],
)
def test_bad_configuration_exits_2_naming_file_and_key(repo: Path, body: str, needle: str):
    write_config(repo, body)
    result = runner.invoke(app, ["check"])
    assert result.exit_code == 2
    assert "pyproject.toml" in result.output and needle in result.output, result.output


def test_config_found_from_a_subdirectory_and_paramctl_toml(repo: Path, monkeypatch: pytest.MonkeyPatch):
    write_config(repo, GOOD)
    (repo / "sub" / "deeper").mkdir(parents=True)
    monkeypatch.chdir(repo / "sub" / "deeper")
    assert find_config() == repo / "pyproject.toml"
    assert check()[0] == 0
    write_config(repo, '[[check]]\nfiles = ["checkpoints/mlp.pt"]\nmax-params = 1\n', name="paramctl.toml")
    assert find_config() == repo / "paramctl.toml"
    assert check()[0] == 1


def test_no_configuration_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["check"])
    assert result.exit_code == 2 and "no configuration found" in result.output


def test_github_annotations(repo: Path, monkeypatch: pytest.MonkeyPatch):
    write_config(repo, '[[tool.paramctl.check]]\nfiles = ["checkpoints/mlp.pt"]\nmax-params = 1\n')
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    code, out = check()
    assert code == 1
    assert "::error file=checkpoints/mlp.pt,title=paramctl max-params::expected at most 1 parameters; found 49" in out
    outcome = Outcome("a,b:c.pt", "finite", False, "x", "50%\nmore")
    assert (
        github_annotation(outcome) == "::error file=a%2Cb%3Ac.pt,title=paramctl finite::expected x; found 50%25%0Amore"
    )


def test_ties_and_stat_check_finite_without_path_run_the_configured_rules(repo: Path):
    torch.save({"w": torch.tensor([float("nan")])}, repo / "checkpoints" / "bad.pt")
    write_config(
        repo,
        '[[tool.paramctl.check]]\nfiles = ["checkpoints/tiny_lm.pt"]\nties = [["embed.weight", "lm_head.weight"]]\n'
        "max-params = 1\n\n"
        '[[tool.paramctl.check]]\nfiles = ["checkpoints/bad.pt"]\nfinite = true\n',
    )
    result = runner.invoke(app, ["ties"])
    assert result.exit_code == 0, result.output  # the tie rule holds; max-params is not a tie rule
    assert result.output.splitlines()[-1] == "1 file, 1 rules: all passed"
    result = runner.invoke(app, ["stat", "--check-finite"])
    assert result.exit_code == 1
    assert "checkpoints/bad.pt: finite:" in result.output


def test_without_path_or_configuration_ties_and_stat_are_usage_errors(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args in (["ties"], ["stat", "--check-finite"], ["stat"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "missing PATH" in result.output, args
