"""The import arrows the README's architecture section promises, read from the source (nothing is imported)."""

from __future__ import annotations

from scripts.import_graph import cycles, graph


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_cycle_detection_finds_a_planted_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _importers(prefix: str) -> dict[str, set[str]]:
    return {m: t for m, t in graph().items() if m == prefix or m.startswith(prefix + ".")}


def test_the_tree_knows_no_format_reader_or_command() -> None:
    # storage.py is its kinds' NumPy read code, imported on first read
    assert graph()["paramctl.tree"] <= {"paramctl.dtypes", "paramctl.errors", "paramctl.storage"}


def test_the_pickle_machine_is_below_the_loaders() -> None:
    for module, targets in _importers("paramctl.pickles").items():
        assert not {t for t in targets if t.startswith(("paramctl.loaders", "paramctl.ops", "paramctl.cli"))}, module


def test_loaders_import_no_command_and_no_cli() -> None:
    for module, targets in _importers("paramctl.loaders").items():
        assert not {t for t in targets if t.startswith(("paramctl.ops", "paramctl.cli"))}, module


def test_only_the_cli_imports_the_cli() -> None:
    for module, targets in graph().items():
        if not module.startswith(("paramctl.cli", "paramctl.__main__")):
            assert not {t for t in targets if t.startswith("paramctl.cli")}, module
