"""Loader plugins from the `paramctl.loaders` entry-point group: found, used by content, and never fatal."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

import paramctl
from paramctl import registry


@pytest.fixture
def plugin_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed distribution (a dist-info folder on sys.path) that provides two loader plugins."""
    (tmp_path / "toy_loader.py").write_text(
        textwrap.dedent(
            """
            from paramctl.tree import Tree, Value

            class ToyLoader:
                name = "toy"
                description = "toy text checkpoints"

                def sniff(self, probe):
                    return probe.head.startswith(b"TOY1")

                def load(self, probe):
                    return Tree(probe.name, "toy", [(("greeting",), Value(probe.head[4:].decode()))])

            LOADER = ToyLoader()
            """
        )
    )
    dist = tmp_path / "toy_loader-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-loader\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[paramctl.loaders]\ntoy = toy_loader:LOADER\nbroken = no_such_module:LOADER\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("toy_loader", None)


def test_plugin_reads_files_built_ins_do_not(plugin_dist: Path, tmp_path: Path):
    path = tmp_path / "hello.weights"
    path.write_bytes(b"TOY1hello")
    with pytest.warns(UserWarning, match="broken"):
        tree = paramctl.open(path)
    assert tree.format == "toy" and tree["greeting"].value == "hello"


def test_plugins_are_listed_after_built_ins(plugin_dist: Path):
    with pytest.warns(UserWarning, match="no_such_module"):
        found = registry.loaders()
    folders = [name for name in registry.BUILTIN_DIRECTORY_LOADERS if name not in registry.BUILTIN_LOADERS]
    assert [f.name for f in found] == [*registry.BUILTIN_LOADERS, *folders, "toy"]
    assert found[-1].origin == "toy_loader:LOADER"


def test_unknown_file_names_plugins_tried(plugin_dist: Path, tmp_path: Path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"nothing known")
    tried = ", ".join([*registry.BUILTIN_LOADERS, "toy"])
    with pytest.warns(UserWarning), pytest.raises(paramctl.UnknownFormatError, match=f"tried: {tried}"):
        paramctl.open(path)


def test_format_option_selects_a_plugin(plugin_dist: Path, tmp_path: Path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"TOY1forced")
    with pytest.warns(UserWarning):
        assert paramctl.open(path, format="toy")["greeting"].value == "forced"
