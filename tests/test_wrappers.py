"""Wrapper checkpoints (PyTorch Lightning, a Hugging Face Trainer folder, hand-written training checkpoints) list
completely: every tensor with its path, every plain value, a placeholder for every foreign object with what it holds.

The reference is torch.load(weights_only=False) with the generator's stand-in classes registered under the real
module names (Lightning, omegaconf and transformers are not installed), walked by the documented naming rule.
"""

from __future__ import annotations

import collections
import enum
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from reference import FIXTURES, assert_retrained_equal, fixture_generator, raw_bytes, torch_bytes
from typer.testing import CliRunner

import paramctl
from paramctl import reader
from paramctl.cli import app
from paramctl.tree import Opaque, Tensor, Value

REAL = FIXTURES / "real"
TRAINER = REAL / "hf_trainer" / "checkpoint-3"
WRAPPERS = [
    REAL / "lightning.ckpt",
    REAL / "lightning_omegaconf.ckpt",
    REAL / "handwritten.pt",
    REAL / "training_args_namespace.bin",
    *(TRAINER / name for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin")),
]
runner = CliRunner()


def generator() -> Any:
    return fixture_generator("generate_real")


def load(path: Path) -> Any:
    with generator().stand_ins():
        return torch.load(path, weights_only=False)


SCALARS = (int, float, str, bool, bytes, complex, type(None))


def plain(item: Any, depth: int = 0) -> bool:
    if isinstance(item, SCALARS) and not isinstance(item, enum.Enum):
        return True
    if type(item) in (list, tuple, set, frozenset) and depth < 3:
        return all(plain(x, depth + 1) for x in item)
    return False


def segments(key: Any) -> tuple[str, ...]:
    text = key if isinstance(key, str) else repr(key) if isinstance(key, (bytes, float)) else str(key)
    return tuple(text.split("."))


def walk(obj: Any) -> Iterator[tuple[str, str, Any]]:
    """(name, kind, payload) in order: kind is tensor, value, object (payload: the global's name), reference
    (a container seen before), or global (a class or special form referenced as a value)."""
    seen: set[int] = set()
    alive: list[Any] = []

    def visit(item: Any, path: tuple[str, ...]) -> Iterator[tuple[str, str, Any]]:
        name = ".".join(path)
        if isinstance(item, torch.Tensor):
            yield name, "tensor", item
            return
        if isinstance(item, type) or type(item).__module__ == "typing":
            yield name, "global", item
            return
        container = not plain(item)
        if container:
            if id(item) in seen:
                yield name, "reference", None
                return
            seen.add(id(item))
            alive.append(item)  # a state dict made by __getstate__ must outlive the walk, or its id is reused
        if type(item) in (dict, collections.OrderedDict):
            if not item:
                yield name, "value", {}
            for key, value in item.items():
                yield from visit(value, path + segments(key))
        elif type(item) in (list, tuple) and container:
            for index, value in enumerate(item):
                yield from visit(value, (*path, str(index)))
        elif isinstance(item, np.ndarray):
            yield name, "object", "numpy.ndarray"
        elif container or isinstance(item, enum.Enum):
            cls = type(item)
            yield name, "object", f"{cls.__module__}.{cls.__qualname__}"
            if isinstance(item, enum.Enum):  # pickled as cls(value): the call's arguments are shown
                yield name, "value", (item.value,)
            elif isinstance(item, dict):  # a dict subclass: its items
                if item:
                    yield from visit(dict(item), path)
            else:
                state = item.__getstate__() if hasattr(type(item), "__getstate__") else vars(item)
                yield from visit(state if state is not None else vars(item), path)
        else:
            yield name, "value", item

    yield from visit(obj, ())


def ours(path: Path) -> list[tuple[str, str, Any]]:
    rows = []
    for name, leaf in paramctl.open(path):
        if isinstance(leaf, Tensor):
            rows.append((name, "tensor", leaf))
        elif isinstance(leaf, Opaque):
            kind = "reference" if leaf.global_name == "<reference>" else "object"
            rows.append((name, kind, None if kind == "reference" else leaf.global_name))
        elif hasattr(leaf.value, "qualname") or isinstance(leaf.value, type):
            rows.append((name, "global", None))
        else:
            rows.append((name, "value", leaf.value))
    return rows


def test_committed_wrapper_fixtures_match_regenerated(tmp_path: Path):
    fresh = generator().write_wrappers(tmp_path)
    for path in fresh:
        committed = REAL / path.relative_to(tmp_path)
        if path.suffix == ".json":
            assert json.loads(path.read_text()) == json.loads(committed.read_text())
            continue
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            new, old = load_file(path), load_file(committed)
            assert list(new) == list(old), path.name
            for name in new:
                assert_retrained_equal(f"{path.name}:{name}", new[name], old[name])
            continue
        new, old = list(walk(load(path))), list(walk(load(committed)))
        assert [(n, k) for n, k, _ in new] == [(n, k) for n, k, _ in old], path.name
        for (name, kind, a), (_, _, b) in zip(new, old):
            if kind == "tensor":
                assert_retrained_equal(f"{path.name}:{name}", a, b)
            elif kind == "value" and not isinstance(a, np.ndarray):
                assert a == b, name
    assert {p.relative_to(tmp_path) for p in fresh} >= {p.relative_to(REAL) for p in WRAPPERS}


@pytest.mark.parametrize("path", WRAPPERS, ids=lambda p: p.name)
def test_every_tensor_value_and_object_is_listed_with_its_path(path: Path):
    expected = list(walk(load(path)))
    found = ours(path)
    assert [(name, kind) for name, kind, _ in found] == [(name, kind) for name, kind, _ in expected]
    for (name, kind, mine), (_, _, theirs) in zip(found, expected):
        if kind == "tensor":
            assert mine.dtype.name == str(theirs.dtype).removeprefix("torch."), name
            assert mine.shape == tuple(theirs.shape), name
            assert raw_bytes(reader.array(mine)) == torch_bytes(theirs), name
        elif kind in ("value", "object"):
            assert mine == theirs, name


def test_lightning_names():
    checkpoint = load(REAL / "lightning.ckpt")
    tree = paramctl.open(REAL / "lightning.ckpt")
    names = {name for name, _ in tree}
    assert {f"state_dict.{n}" for n in checkpoint["state_dict"]} <= names
    assert "optimizer_states.0.state.0.exp_avg" in names and "optimizer_states.0.param_groups.0.lr" in names
    assert tree["hyper_parameters"].global_name == "lightning.fabric.utilities.data.AttributeDict"
    assert tree["hyper_parameters.data.batch_size"].value == 4
    assert tree["pytorch-lightning_version"].value == "2.4.0"
    assert tree["state_dict.model.lm_head.weight"].storage is tree["state_dict.model.embed.weight"].storage


def test_omegaconf_values_are_listed_under_their_nodes():
    tree = paramctl.open(REAL / "lightning_omegaconf.ckpt")
    config = load(REAL / "lightning_omegaconf.ckpt")["hyper_parameters"]
    assert tree["hyper_parameters"].global_name == "omegaconf.dictconfig.DictConfig"
    assert tree["hyper_parameters._content.optim._content.lr"].global_name == "omegaconf.nodes.AnyNode"
    lr = config._content["optim"]._content["lr"]._val
    assert tree["hyper_parameters._content.optim._content.lr._val"].value == lr == 1e-2
    parent = tree["hyper_parameters._content.optim._content.lr._parent"]
    assert parent.global_name == "<reference>" and parent.note == "same object as hyper_parameters._content.optim"


def test_trainer_arguments_and_rng_state():
    args = paramctl.open(TRAINER / "training_args.bin")
    assert args[""].global_name == "transformers.training_args.TrainingArguments"
    strategy = [leaf for name, leaf in args if name == "eval_strategy"]
    assert [type(leaf) for leaf in strategy] == [Opaque, Value]
    assert strategy[0].global_name == "transformers.trainer_utils.IntervalStrategy" and strategy[1].value == ("steps",)
    assert args["learning_rate"].value == load(TRAINER / "training_args.bin").learning_rate
    namespace = paramctl.open(REAL / "training_args_namespace.bin")
    assert namespace[""].global_name == "argparse.Namespace" and namespace["learning_rate"].value == 5e-5
    rng = paramctl.open(TRAINER / "rng_state.pth")
    reference = load(TRAINER / "rng_state.pth")
    assert rng["numpy.1"].note == f"shape [{reference['numpy'][1].shape[0]}], dtype <u4"
    assert rng["python"].value == reference["python"]


def test_tree_depth_1_shows_model_and_optimizer_totals():
    for path, model, optimizer in (
        (REAL / "lightning.ckpt", "state_dict", "optimizer_states"),
        (REAL / "handwritten.pt", "model_state_dict", "optimizer_state_dict"),
    ):
        checkpoint = load(path)
        flat = list(walk(checkpoint))

        def total(prefix: str, rows: list[tuple[str, str, Any]] = flat) -> tuple[int, int]:
            tensors = [t for name, kind, t in rows if kind == "tensor" and name.split(".")[0] == prefix]
            return sum(t.numel() for t in tensors), len(tensors)

        result = runner.invoke(app, ["ls", str(path), "--tree", "--depth", "1"])
        assert result.exit_code == 0
        lines = result.stdout.splitlines()
        assert len(lines) < 20  # one screen
        everything = sum(t.numel() for _, kind, t in flat if kind == "tensor")
        assert lines[0] == f"{path}  {everything:,} params"
        for prefix in (model, optimizer):
            numel, count = total(prefix)
            assert any(
                re.fullmatch(rf"[├└]── {prefix}  {numel:,} params  \({count:,} tensors\)", line) for line in lines
            )
        assert any(line.endswith(f"── epoch = {checkpoint['epoch']}") for line in lines)


def test_json_lists_placeholders_with_their_global():
    document = json.loads(runner.invoke(app, ["ls", str(TRAINER / "training_args.bin"), "--json"]).stdout)
    values = {v["name"]: v for v in document["values"] if v["type"] == "object"}
    assert values[""]["global"] == "transformers.training_args.TrainingArguments"
    assert values["optim"]["global"] == "transformers.training_args.OptimizerNames"
