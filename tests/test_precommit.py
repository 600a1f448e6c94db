"""The shipped .pre-commit-hooks.yaml, run by pre-commit itself in a temporary git repository.

Most tests load the shipped hook definitions (id, entry, files, …) into a `repo: local` configuration with
`language: system`, so pre-commit runs the installed paramctl at once; one test installs the hooks exactly as a user
gets them (`language: python`: pre-commit builds a virtualenv and pip-installs paramctl from a copy of this
repository), which takes about 20 s.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from reference import FIXTURES, ROOT
from safetensors.torch import save_file

HOOKS_FILE = ROOT / ".pre-commit-hooks.yaml"
HOOK_IDS = ["paramctl-stat-finite", "paramctl-ties", "paramctl-scan", "paramctl-check"]


def manifest() -> list[dict[str, Any]]:
    from pre_commit.clientlib import load_manifest

    return load_manifest(str(HOOKS_FILE))  # pre-commit's own schema validation


class Evil:
    """Pickles as a call to os.system: what `scan` must refuse (the file is never loaded)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, ("echo pwned",)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository with checkpoints: finite and not, tied and not, safe and not."""
    root = tmp_path_factory.mktemp("repo")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    shutil.copy(FIXTURES / "tiny_lm.pt", root / "tiny_lm.pt")
    shutil.copy(FIXTURES / "mlp.safetensors", root / "mlp.safetensors")
    shutil.copytree(FIXTURES / "real" / "sharded_safetensors", root / "sharded")
    torch.save({"w": torch.tensor([1.0, float("nan"), 2.0]), "b": torch.ones(2)}, root / "nan.pt")
    save_file({"w": torch.tensor([float("inf"), 0.0])}, root / "inf.safetensors")
    torch.save({"w": torch.ones(2), "extra": Evil()}, root / "evil.pt")
    (root / "notes.txt").write_text("not a checkpoint")
    (root / "pyproject.toml").write_text('[[tool.paramctl.check]]\nfiles = ["*.pt", "*.safetensors"]\nfinite = true\n')
    return root


def environment(repo: Path) -> dict[str, str]:
    """pre-commit's cache inside the test's folder; the installed paramctl first on PATH (for language: system)."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "PRE_COMMIT_HOME": str(repo.parent / "pre-commit-home"), "PATH": path, "NO_COLOR": "1"}


def local_config(repo: Path, args: dict[str, list[str]] | None = None) -> None:
    """The shipped hooks as `repo: local` hooks run by `language: system` (JSON is YAML)."""
    hooks = []
    for hook in manifest():
        local = {key: hook[key] for key in ("id", "name", "entry", "files", "pass_filenames", "require_serial")}
        hooks.append({**local, "language": "system", "args": (args or {}).get(hook["id"], [])})
    (repo / ".pre-commit-config.yaml").write_text(json.dumps({"repos": [{"repo": "local", "hooks": hooks}]}))


def pre_commit(repo: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pre_commit", *args],
        cwd=repo,
        env=environment(repo),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_hook(repo: Path, hook: str, *files: str, args: dict[str, list[str]] | None = None) -> tuple[int, str]:
    local_config(repo, args)
    result = pre_commit(repo, "run", hook, "--files", *files)
    return result.returncode, result.stdout + result.stderr


def test_the_manifest_is_valid_and_names_the_commands():
    hooks = {hook["id"]: hook for hook in manifest()}
    assert list(hooks) == HOOK_IDS
    assert hooks["paramctl-stat-finite"]["entry"] == "paramctl stat --check-finite --files"
    assert hooks["paramctl-ties"]["entry"] == "paramctl ties"
    assert hooks["paramctl-scan"]["entry"] == "paramctl scan"
    assert all(hook["language"] == "python" and hook["pass_filenames"] for hook in hooks.values())


def test_stat_finite_hook(repo: Path):
    code, out = run_hook(repo, "paramctl-stat-finite", "tiny_lm.pt", "mlp.safetensors", "notes.txt")
    assert code == 0, out
    assert "paramctl stat --check-finite" in out and "Passed" in out
    code, out = run_hook(repo, "paramctl-stat-finite", "tiny_lm.pt", "nan.pt", "inf.safetensors")
    assert code == 1, out
    assert "Failed" in out and "non-finite: w (1 NaN)" in out and "non-finite: w (1 +Inf)" in out
    assert "all values finite in 4 tensors" in out  # tiny_lm.pt was still checked
    code, out = run_hook(repo, "paramctl-stat-finite", "notes.txt")
    assert code == 0 and "no files to check" in out.lower(), out


def test_ties_hook_with_user_args(repo: Path):
    args = {"paramctl-ties": ["--expect", "embed.weight=lm_head.weight"]}
    code, out = run_hook(repo, "paramctl-ties", "tiny_lm.pt", args=args)
    assert code == 0, out
    code, out = run_hook(repo, "paramctl-ties", "tiny_lm.pt", "mlp.safetensors", args=args)
    assert code == 1, out
    assert "paramctl: mlp.safetensors: expected embed.weight=lm_head.weight: no tensor named" in out


def test_a_sharded_checkpoint_is_checked_through_its_index(repo: Path):
    """A rule about the whole model: the user points the hook at the index (files: …index\\.json$)."""
    local_config(repo)
    config = json.loads((repo / ".pre-commit-config.yaml").read_text())
    for hook in config["repos"][0]["hooks"]:
        hook["files"] = r"\.index\.json$"
    (repo / ".pre-commit-config.yaml").write_text(json.dumps(config))
    result = pre_commit(
        repo, "run", "paramctl-stat-finite", "--verbose", "--files", "sharded/model.safetensors.index.json"
    )
    assert result.returncode == 0, result.stdout
    assert "all values finite in 27 tensors" in result.stdout


def test_scan_hook(repo: Path):
    code, out = run_hook(repo, "paramctl-scan", "tiny_lm.pt", "mlp.safetensors")
    assert code == 0, out
    code, out = run_hook(repo, "paramctl-scan", "tiny_lm.pt", "evil.pt")
    assert code == 1, out
    assert "DANGEROUS" in out and "posix.system" in out  # os.system pickles under its real module


def test_check_hook_uses_the_repository_configuration(repo: Path):
    code, out = run_hook(repo, "paramctl-check", "tiny_lm.pt", "mlp.safetensors")
    assert code == 0, out
    code, out = run_hook(repo, "paramctl-check", "tiny_lm.pt", "nan.pt")
    assert code == 1, out
    assert "nan.pt: finite: expected no NaN or Inf; found non-finite values in w (1)" in out


def test_the_hooks_install_from_the_repository_as_users_get_them(repo: Path, tmp_path: Path):
    """`pre-commit try-repo` on a copy of this repository (the working tree, committed): pre-commit builds the hook's
    virtualenv and pip-installs paramctl (and its dependencies, from PyPI) as it would for any user."""
    source = tmp_path / "paramctl-src"
    shutil.copytree(ROOT / "paramctl", source / "paramctl", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md", ".pre-commit-hooks.yaml"):
        shutil.copy(ROOT / name, source / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(source)], check=True)
    subprocess.run([*git, "add", "-A"], cwd=source, check=True)
    subprocess.run([*git, "commit", "-qm", "paramctl"], cwd=source, check=True)
    (repo / ".pre-commit-config.yaml").unlink(missing_ok=True)
    result = pre_commit(
        repo, "try-repo", str(source), "paramctl-stat-finite", "--files", "nan.pt", "mlp.safetensors", timeout=600
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "non-finite: w (1 NaN)" in result.stdout and "all values finite in 4 tensors" in result.stdout


# --------------------------------------------------------------------------- several files per command


def test_commands_take_the_files_pre_commit_passes(repo: Path):
    """Each file is checked as if alone; an unreadable one is reported (exit 2) without hiding the others."""
    from typer.testing import CliRunner

    from paramctl.cli import app

    def run(*args: str) -> Any:
        return CliRunner().invoke(app, [str(a) if isinstance(a, Path) else a for a in args])

    good, nan, missing = repo / "tiny_lm.pt", repo / "nan.pt", repo / "missing.pt"
    stat = run("stat", "--check-finite", "--files", good, nan, "--json")
    assert stat.exit_code == 1
    assert [(f["file"], f["nonfinite"]) for f in json.loads(stat.stdout)["files"]] == [
        (str(good), []),
        (str(nan), ["w"]),
    ]
    stat = run("stat", "--check-finite", "--files", missing, good)
    assert stat.exit_code == 2 and stat.stderr == f"paramctl: {missing}: no such file\n"
    assert "all values finite in 4 tensors" in stat.stdout
    ties = run("ties", "--expect", "embed.weight=lm_head.weight", good, repo / "mlp.safetensors", "--json")
    assert ties.exit_code == 1
    assert [bool(f["problems"]) for f in json.loads(ties.stdout)["files"]] == [False, True]
    scan = run("scan", good, missing, repo / "evil.pt", "--json")
    assert scan.exit_code == 1  # dangerous outranks unreadable, as for one file
    assert [f["file"] for f in json.loads(scan.stdout)["files"]] == [str(good), str(repo / "evil.pt")]
    assert scan.stderr == f"paramctl: {missing}: no such file\n"
    assert json.loads(run("scan", good, "--json").stdout)["file"] == str(good)  # one file: the object as before
