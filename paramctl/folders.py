"""Which file of a folder is its checkpoint: one rule for local folders (loaders/sharded.py) and remote ones
(remote.py), kept below both so neither imports the other.

The Hugging Face libraries' first choice (`model.safetensors.index.json`, `model.safetensors`,
`pytorch_model.bin.index.json`, `pytorch_model.bin`, in their order), else the folder's `*.index.json` files, else
its files with a checkpoint's extension; hidden files never count.
"""

from __future__ import annotations

from collections.abc import Iterable

from paramctl.errors import FileError

INDEX_SUFFIX = ".index.json"
PREFERRED_FILES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".npz", ".msgpack")


def candidates(names: Iterable[str]) -> list[str]:
    """The file names (no folder) a user may have meant, best first; one means the choice is clear."""
    shown = sorted(name for name in names if not name.startswith("."))
    preferred = [name for name in PREFERRED_FILES if name in shown][:1]
    return (
        preferred
        or [name for name in shown if name.endswith(INDEX_SUFFIX)]
        or [name for name in shown if name.lower().endswith(CHECKPOINT_SUFFIXES)]
    )


def choose(folder: str, names: Iterable[str]) -> str:
    """The one checkpoint file name among `names`, or a FileError naming `folder` and listing the candidates."""
    found = candidates(names)
    if len(found) == 1:
        return found[0]
    if not found:
        raise FileError(folder, "is a directory without a checkpoint file")
    shown = ", ".join(found[:8]) + (f", … ({len(found)} in all)" if len(found) > 8 else "")
    raise FileError(folder, f"is a directory holding several checkpoints ({shown}): name one")
