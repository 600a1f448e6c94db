"""Sharded checkpoints: a Hugging Face index (`model.safetensors.index.json`, `pytorch_model.bin.index.json`) and
the shard files it names, opened as one tree.

An index is a JSON object whose `weight_map` maps each tensor name to the shard file holding it (a path relative to
the index's folder); `metadata` (usually `{"total_size": bytes}`) is the index's own metadata. transformers loads
the shards in sorted file order (`sorted(set(weight_map.values()))`); so does this loader, each shard in its own
file order. Every shard is opened by content through the registry (a shard may be any format paramctl reads), on a
thread pool, and keeps its own storages, so tensor data is read from its shard and every command works unchanged.
The shard a tensor comes from is its storage's source (`ops.listing` derives `ls --json`'s `shard` from it).

Integrity: a shard the index names that does not exist is an error (a FileError naming the shard: exit 2). A tensor
the index places in a shard that lacks it, a tensor found in a different shard than the index says, a tensor a shard
holds that the index does not list, and a name held by two shards are *inconsistencies*: the tree lists what the
files hold and records each problem in `metadata["inconsistencies"]` (`ls` prints them and exits 1).

Shard names are refused unless they stay inside the index's folder (paramctl/paths.py: no absolute path, no `..`,
no empty segment, no backslash, drive or URL), so a hostile index cannot make paramctl read arbitrary files.
Symbolic links are followed (the Hugging Face cache links every snapshot file into a blob folder).

A folder opens as a checkpoint (`sniff_directory`) when it holds one: the file the Hugging Face libraries would load
first (`model.safetensors.index.json`, `model.safetensors`, `pytorch_model.bin.index.json`, `pytorch_model.bin`),
else its only `*.index.json`, else its only file with a checkpoint's extension. A folder with several candidates is
an error listing them.
"""

from __future__ import annotations

import json
import os
import pathlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from paramctl import folders, paths
from paramctl.errors import CorruptFileError, FileError
from paramctl.probe import Probe
from paramctl.tree import Leaf, Path, Tensor, Tree, name_of, short_repr

MAX_INDEX_SIZE = 64 << 20  # the index of a 400B-parameter model is ~100 KiB

MISSING, MISPLACED, UNLISTED, DUPLICATE = "missing", "misplaced", "unlisted", "duplicate"


class ShardedLoader:
    name = "sharded"
    description = "sharded checkpoints: a Hugging Face *.index.json (weight_map) and its shards, or a folder of one"

    def sniff(self, probe: Probe) -> bool:
        """A JSON object with a `weight_map` key. The key is looked for in the first bytes; an index whose
        metadata pushes it further is parsed whole (only files that start like a JSON object get that far)."""
        text = probe.head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
        if text[:1] != b"{":
            return False
        if b'"weight_map"' in probe.head:
            return True
        if probe.source.size > MAX_INDEX_SIZE:
            return False
        try:
            return isinstance(_parse(probe).get("weight_map"), dict)
        except CorruptFileError:
            return False

    def load(self, probe: Probe) -> Tree:
        index = _parse(probe)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict):
            raise CorruptFileError(probe.name, "the index has no weight_map object")
        for name, shard in weight_map.items():
            if not isinstance(shard, str):
                raise CorruptFileError(probe.name, f"weight_map[{name!r}] is {short_repr(shard)}, not a file name")
        metadata = index.get("metadata")
        metadata = dict(metadata) if isinstance(metadata, dict) else {}
        shard_names = sorted(set(weight_map.values()))
        shards = _open_shards(probe, shard_names)
        leaves, inconsistencies = _merge(probe.name, weight_map, shard_names, shards)
        formats = {tree.format for tree in shards}
        tree_format = f"sharded-{formats.pop()}" if len(formats) == 1 else "sharded"
        if inconsistencies:
            metadata["inconsistencies"] = inconsistencies
        return Tree(probe.name, tree_format, leaves, metadata)

    def pickles(self, probe: Probe) -> list[Any]:
        """Every pickle of every shard, for `scan` (records named `shard:record`)."""
        from paramctl.registry import detect, probe_file

        index = _parse(probe)
        weight_map = index.get("weight_map") if isinstance(index.get("weight_map"), dict) else {}
        scans = []
        for shard in sorted({s for s in weight_map.values() if isinstance(s, str)}):
            shard_probe = probe_file(shard_location(probe, shard))
            pickles_of = getattr(detect(shard_probe), "pickles", None)
            for scan in pickles_of(shard_probe) if pickles_of is not None else []:
                scan.record = f"{shard}:{scan.record}"
                scans.append(scan)
        return scans

    def pickles_directory(self, path: pathlib.Path) -> list[Any]:
        """The pickles of the checkpoint a folder opens as (for `scan FOLDER`)."""
        from paramctl.registry import detect, probe_file

        probe = probe_file(choose_file(path))
        pickles_of = getattr(detect(probe), "pickles", None)
        return pickles_of(probe) if pickles_of is not None else []

    def sniff_directory(self, path: pathlib.Path) -> bool:
        return bool(folders.candidates(_file_names(path)))

    def load_directory(self, path: pathlib.Path) -> Tree:
        from paramctl import registry

        return registry.open(choose_file(path))


LOADER = ShardedLoader()


def _parse(probe: Probe) -> dict[str, Any]:
    """The index as a JSON object; strict UTF-8, no NaN, no duplicate keys (two readers could disagree)."""
    size = probe.source.size
    if size > MAX_INDEX_SIZE:
        raise CorruptFileError(probe.name, f"an index of {size} bytes exceeds the {MAX_INDEX_SIZE} byte limit")
    try:
        text = bytes(probe.source.view(0, size)).decode("utf-8").removeprefix("\ufeff")
        document = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as error:
        raise CorruptFileError(probe.name, f"invalid index JSON: {str(error)[:200]}") from None
    except RecursionError:
        raise CorruptFileError(probe.name, "invalid index JSON: nested too deeply") from None
    if not isinstance(document, dict):
        raise CorruptFileError(probe.name, "the index is not a JSON object")
    return document


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate key {duplicate!r}")
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def shard_location(probe: Probe, shard: str) -> str:
    """Where a shard named by the index lives: beside the index. Names that would leave its folder are refused
    (paramctl/paths.py); a remote index's sibling URLs go through the same check in paramctl/remote.py."""
    sibling = getattr(probe.source, "sibling", None)  # a remote index: the shard's URL (paramctl/remote.py)
    if sibling is not None:
        return str(sibling(shard))
    if (problem := paths.key_problem(shard)) is not None:
        raise CorruptFileError(
            probe.name, f"names shard {shard!r}: not a relative path inside the index's folder ({problem})"
        )
    return str(paths.inside(pathlib.Path(probe.name).parent, shard))


def _open_shard(probe: Probe, shard: str) -> Tree:
    from paramctl import registry

    location = shard_location(probe, shard)
    try:
        shard_probe = registry.probe_file(location)
    except FileError as error:  # a missing shard: the message names it, and the index that wants it
        raise type(error)(error.path, f"{error.problem} (a shard named by {os.path.basename(probe.name)})") from None
    loader = registry.detect(shard_probe)
    if loader.name == LOADER.name:  # the index itself, or another index: never followed (no loops)
        raise CorruptFileError(probe.name, f"shard {shard!r} is an index itself (nested indexes are refused)")
    return registry.load(shard_probe, loader)  # bounded and validated, errors naming the shard


def _open_shards(probe: Probe, shard_names: list[str]) -> list[Tree]:
    """Every shard's tree, headers read concurrently (one thread per core); the first failure in shard order is
    raised, as a sequential open would."""
    for shard in shard_names:  # refuse a hostile name before opening anything
        shard_location(probe, shard)
    if len(shard_names) <= 1:
        return [_open_shard(probe, shard) for shard in shard_names]
    with ThreadPoolExecutor(min(len(shard_names), os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda shard: _open_shard(probe, shard), shard_names))


def _key(name: str) -> str:
    """Names compared between the index and the shards: safetensors' `/` is a path separator like `.`."""
    return name.replace("/", ".")


def _merge(
    index: str, weight_map: dict[str, str], shard_names: list[str], shards: list[Tree]
) -> tuple[list[tuple[Path, Leaf]], list[dict[str, Any]]]:
    """The shards' leaves in shard order, each name once, and what disagrees with the index."""
    placed = {_key(name): (name, shard) for name, shard in weight_map.items()}
    holders: dict[str, list[str]] = {}  # tensor name -> shards holding it, in shard order
    for shard, tree in zip(shard_names, shards):
        for name, tensor in tree.tensors():
            if tensor.declared_by is None:
                holders.setdefault(_key(name), []).append(shard)
    problems: list[dict[str, Any]] = []

    def problem(kind: str, name: str, shard: str | None, expected: str | None, message: str) -> None:
        problems.append({"kind": kind, "name": name, "shard": shard, "expected": expected, "message": message})

    chosen: dict[str, str] = {}  # tensor name -> the shard whose copy is listed
    for key, found in holders.items():
        entry = placed.get(key)
        expected = entry[1] if entry else None
        keep = expected if expected in found else found[0]
        chosen[key] = keep
        name = entry[0] if entry else key
        if expected is None:
            problem(UNLISTED, name, keep, None, f"{name}: in shard {keep}, which the index does not list")
        elif expected not in found:
            problem(MISPLACED, name, keep, expected, f"{name}: the index places it in {expected}, found in {keep}")
        for other in found:
            if other != keep:
                problem(DUPLICATE, name, other, expected, f"{name}: also in shard {other} (listed from {keep})")
    aliases = {shard: {_key(n) for n, t in tree.tensors() if t.declared_by} for shard, tree in zip(shard_names, shards)}
    for key, (name, shard) in placed.items():
        if key not in holders and key not in aliases[shard]:
            problem(MISSING, name, None, shard, f"{name}: the index places it in {shard}, which does not hold it")

    leaves: list[tuple[Path, Leaf]] = []
    seen: set[str] = set()
    for shard, tree in zip(shard_names, shards):
        for storage in {id(t.storage): t.storage for _, t in tree.tensors()}.values():
            storage.key = f"{shard}:{storage.key}"  # storage ids stay unique across shards (each numbers from 0)
        for path, leaf in tree.leaves:
            key = _key(name_of(path))
            if isinstance(leaf, Tensor):
                if leaf.declared_by is None and chosen.get(key) != shard:
                    continue  # a second copy of a name: reported above
                if leaf.declared_by is not None and key in seen:
                    continue  # an alias a shard declares for a name another shard holds
                seen.add(key)
            leaves.append((path, leaf))
    return leaves, problems


# --------------------------------------------------------------------------- folders


def _file_names(folder: pathlib.Path) -> list[str]:
    """The names of the files in a folder (sub-folders never count)."""
    try:
        return [entry.name for entry in os.scandir(folder) if entry.is_file()]
    except OSError:
        return []


def choose_file(folder: pathlib.Path) -> pathlib.Path:
    """The one checkpoint file a folder holds (by the rule of paramctl/folders.py), or a FileError listing the
    candidates."""
    return folder / folders.choose(str(folder), _file_names(folder))
