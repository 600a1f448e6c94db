"""Name mapping: which names of a tree are compared (or converted) and under which name.

A subtree of the tree, stripped prefixes, (on B) names renamed by regular expressions, --select/--exclude globs,
and (on B) matrices transposed where a glob says so. Shared by `diff` and the `convert` command: it knows rules,
not what is done with the mapped names.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Protocol

from paramctl.errors import UsageError
from paramctl.tree import Leaf, Tensor, Tree


class NameRules(Protocol):
    """The mapping rules (DiffOptions has them): prefixes to strip, (regex, replacement) renames, globs."""

    strip_prefixes: tuple[str, ...]
    rename: tuple[tuple[str, str], ...]
    select: tuple[str, ...]
    exclude: tuple[str, ...]
    transpose: tuple[str, ...]


@dataclass
class Side:
    """One operand after name mapping: mapped name -> (original name, leaf), in file order."""

    label: str  # "a" or "b"
    tree: Tree
    subtree: str | None
    leaves: dict[str, tuple[str, Leaf | tuple[Leaf, ...]]]
    mapped: dict[str, str]  # original tensor name -> mapped name, for tensors kept


def map_names(tree: Tree, label: str, subtree: str | None, options: NameRules) -> Side:
    """Apply the subtree, the prefix stripping, (on B) the renames, the globs and (on B) the transpositions to one
    tree's names. The globs of --select, --exclude and --transpose match the names as compared, after renaming."""
    leaves: dict[str, tuple[str, Leaf | tuple[Leaf, ...]]] = {}
    mapped: dict[str, str] = {}
    found_subtree = False
    for original, leaf in tree:
        name: str | None = original
        if subtree:
            name = _under(original, subtree)
            if name is None:
                continue
            found_subtree = True
        name = _strip(name, options.strip_prefixes)
        if label == "b":
            name = _rename(name, options.rename)
        if options.select and not any(fnmatch.fnmatchcase(name, g) for g in options.select):
            continue
        if any(fnmatch.fnmatchcase(name, g) for g in options.exclude):
            continue
        if label == "b" and isinstance(leaf, Tensor) and any(fnmatch.fnmatchcase(name, g) for g in options.transpose):
            leaf = _transposed(tree.file, original, leaf)
        if name in leaves:
            first, earlier = leaves[name]
            if isinstance(leaf, Tensor) or isinstance(earlier, Tensor):
                raise UsageError(
                    f"{tree.file}: {original!r} and {first!r} are both named {name!r} after name mapping;"
                    " narrow the mapping (--strip-prefix, --rename, --select, --exclude)"
                )
            # Plain leaves under one name (an object placeholder and its contents) compare as a whole.
            group = earlier if isinstance(earlier, tuple) else (earlier,)
            leaves[name] = (first, (*group, leaf))
            continue
        leaves[name] = (original, leaf)
        if isinstance(leaf, Tensor):
            mapped[original] = name
    if subtree and not found_subtree:
        raise UsageError(f"{tree.file}: no name is {subtree!r} or starts with {subtree + '.'!r}")
    return Side(label, tree, subtree, leaves, mapped)


def _under(name: str, subtree: str) -> str | None:
    """The name relative to `subtree` (a dotted prefix at a segment boundary), or None when outside it."""
    if name == subtree:
        return ""
    if name.startswith(subtree + "."):
        return name[len(subtree) + 1 :]
    return None


def _rename(name: str, rules: tuple[tuple[str, str], ...]) -> str:
    """Each (regex, replacement) in order, as `re.sub` (every match replaced; `\\1` refers to a group)."""
    for regex, replacement in rules:
        name = re.sub(regex, replacement, name)
    return name


def _transposed(file: str, original: str, tensor: Tensor) -> Tensor:
    """The same storage seen transposed (a Flax kernel (in, out) as a PyTorch weight (out, in)): no copy.

    0-D and 1-D tensors (biases a broad glob catches) are their own transpose. Beyond 2-D no single permutation is
    "the" transpose (a Flax conv kernel is (H, W, in, out), PyTorch's (out, in, H, W)), so it is refused.
    """
    if len(tensor.shape) <= 1:
        return tensor
    if len(tensor.shape) > 2:
        raise UsageError(
            f"{file}: --transpose matches {original!r}, which has shape {list(tensor.shape)}: only 2-D tensors"
            " are transposed"
        )
    return Tensor(
        tensor.dtype, tensor.shape[::-1], tensor.strides[::-1], tensor.storage, tensor.offset, tensor.declared_by
    )


def _strip(name: str, prefixes: tuple[str, ...]) -> str:
    """Remove any of the prefixes from the start, repeatedly (`module._orig_mod.x` with both → `x`)."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in prefixes:
            if prefix and name.startswith(prefix):
                name = name[len(prefix) :]
                stripped = True
    return name
