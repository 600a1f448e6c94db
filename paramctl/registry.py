"""Which loader reads a file: built-ins from a table, third-party ones from the `paramctl.loaders` entry points.

The format is chosen by content (each loader's `sniff`), never by the extension. Built-ins are imported only when
asked, and entry points are consulted only when no built-in recognises a file (or to list them), so a common
`paramctl ls` pays for neither.
"""

from __future__ import annotations

import importlib
import os
import pathlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from paramctl import remote
from paramctl.errors import CorruptFileError, FileError, UnknownFormatError, UsageError
from paramctl.probe import Probe
from paramctl.source import FileSource
from paramctl.tree import TooDeepError, Tree, tree_problem

ENTRY_POINT_GROUP = "paramctl.loaders"

# name -> module holding a `LOADER`; sniffed in this order.
BUILTIN_LOADERS = {
    "safetensors": "paramctl.loaders.safetensors",
    "torch": "paramctl.loaders.pytorch",
    "npz": "paramctl.loaders.npz",
    "torchscript": "paramctl.loaders.torchscript",
    "sharded": "paramctl.loaders.sharded",
    "flax": "paramctl.loaders.flax_msgpack",
}


# name -> module holding a `LOADER` with `sniff_directory(path) -> bool` and `load_directory(path) -> Tree`;
# tried in this order when PATH is a folder.
BUILTIN_DIRECTORY_LOADERS: dict[str, str] = {
    "orbax": "paramctl.loaders.orbax",
    "dcp": "paramctl.loaders.dcp",
    "sharded": "paramctl.loaders.sharded",  # last: any folder holding a checkpoint file
}


class Loader(Protocol):
    """A format plugin: `sniff` says "mine" (never raises for a file that is not), `load` builds the tree."""

    name: str
    description: str

    def sniff(self, probe: Probe) -> bool: ...

    def load(self, probe: Probe) -> Tree: ...


@dataclass(frozen=True)
class LoaderInfo:
    name: str
    description: str
    origin: str  # "built-in", or the entry point's value


def _builtin(name: str) -> Loader:
    return importlib.import_module(BUILTIN_LOADERS[name]).LOADER  # type: ignore[no-any-return]


def _plugins() -> dict[str, tuple[Loader, str]]:
    """Third-party loaders; one that fails to import is a warning, not a crash."""
    from importlib.metadata import entry_points

    found: dict[str, tuple[Loader, str]] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loader = entry.load()
            found[loader.name] = (loader, entry.value)
        except Exception as error:  # a broken plugin must not break paramctl
            warnings.warn(f"loader plugin {entry.name!r} ({entry.value}) failed to load: {error}", stacklevel=2)
    return found


def loaders() -> list[LoaderInfo]:
    """Every available loader, built-ins first."""
    result = [LoaderInfo(name, _builtin(name).description, "built-in") for name in BUILTIN_LOADERS]
    for name, module in BUILTIN_DIRECTORY_LOADERS.items():
        if name not in BUILTIN_LOADERS:
            loader = importlib.import_module(module).LOADER
            result.append(LoaderInfo(name, loader.description, "built-in (folders)"))
    for name, (loader, origin) in _plugins().items():
        if name not in BUILTIN_LOADERS:
            result.append(LoaderInfo(name, loader.description, origin))
    return result


def open(path: str | os.PathLike[str], format: str | None = None) -> Tree:
    """Read a checkpoint's tree: headers only, no tensor data. `format` forces a loader by name.

    Every tree, from a built-in loader or a plugin, file or folder, is checked here before anyone sees it: each
    tensor's layout against its storage and each storage against its data (tree.tree_problem), so a reader never
    builds a view past the bytes that are there."""
    if remote.is_url(path):  # a URL (paramctl/remote.py); file:// is a local path
        path = remote.local_path(path) or path
    if not remote.is_url(path) and os.path.isdir(path):
        folder = pathlib.Path(path)
        return _validated(str(folder), _bounded(str(folder), lambda: _open_directory(folder, format)))
    probe = probe_file(path)
    return load(probe, detect(probe, format))


def load(probe: Probe, loader: Loader) -> Tree:
    """One file's tree from the loader that recognised it, validated as `open` validates every tree: for code that
    opens files a checkpoint names (a sharded index's shards), so each is held to the same rules, by its own name."""
    return _validated(probe.name, _bounded(probe.name, lambda: loader.load(probe)))


def _validated(name: str, tree: Any) -> Tree:
    """`tree`, once every tensor's layout and storage are known to be sound (tree.tree_problem)."""
    if not isinstance(tree, Tree):
        raise CorruptFileError(name, f"the loader returned {type(tree).__name__}, not a Tree")
    if (found := tree_problem(tree)) is not None:
        tensor, problem = found
        raise CorruptFileError(tree.file, f"tensor {tensor}: {problem}")
    return tree


def _bounded(name: str, load: Callable[[], Tree]) -> Tree:
    """`load()`, with hostile input that exhausts a resource reported as bad input naming the file, not a bug."""
    try:
        return load()
    except (RecursionError, MemoryError) as error:
        raise CorruptFileError(name, f"too large or too deeply nested to read ({type(error).__name__})") from None
    except TooDeepError as error:  # a plugin's tree.flatten refusing the nesting
        raise CorruptFileError(name, str(error)) from None


def _open_directory(path: pathlib.Path, format: str | None) -> Tree:
    """A checkpoint that is a folder (shards with an index, a DCP or Orbax checkpoint): the first directory
    loader that recognises it."""
    tried = []
    for name, module in BUILTIN_DIRECTORY_LOADERS.items():
        if format not in (None, name):
            continue
        loader = importlib.import_module(module).LOADER
        tried.append(name)
        if loader.sniff_directory(path):
            return loader.load_directory(path)  # type: ignore[no-any-return]
    known = f" (tried: {', '.join(tried)})" if tried else ""
    raise FileError(str(path), f"is a directory, not a checkpoint folder{known}")


def probe_file(path: str | os.PathLike[str]) -> Probe:
    """A local file opened read-only for loaders to look at; the path itself is checked first (a directory, FIFO,
    device, broken link or unreadable file is refused with a FileError naming it). A URL opens remotely."""
    if remote.is_url(path):
        return remote.open_probe(str(path))
    source = FileSource(path)
    if source.size == 0:
        raise FileError(source.name, "empty file")
    return Probe(source)


def detect(probe: Probe, format: str | None = None) -> Loader:
    """The loader for a file: the one named by `format`, else the first whose `sniff` recognises the content."""
    if format is not None:
        return _named(format)
    tried = []
    for name in BUILTIN_LOADERS:
        loader = _builtin(name)
        tried.append(name)
        if loader.sniff(probe):
            return loader
    for name, (loader, _) in _plugins().items():
        tried.append(name)
        if loader.sniff(probe):
            return loader
    raise UnknownFormatError(probe.name, f"unrecognised format (tried: {', '.join(tried)})")


def _named(name: str) -> Loader:
    if name in BUILTIN_LOADERS:
        return _builtin(name)
    plugins = _plugins()
    if name in plugins:
        return plugins[name][0]
    known = ", ".join([*BUILTIN_LOADERS, *plugins])
    raise UsageError(f"unknown format {name!r} (known: {known})")
