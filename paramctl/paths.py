"""Names that a checkpoint folder's own metadata gives its files: a sharded index's shard names, a DCP storage
record's relative path, an Orbax array's key. Every folder loader checks them here before opening anything.

Such a name comes from the file, so it is hostile until proven otherwise: `pathlib.Path(folder) / "/etc/x"` is
`/etc/x`, `..` climbs out of the folder, a URL would be fetched by fsspec, and on Windows a backslash separates
folders and `C:` is a drive. Only a plain relative path of ordinary segments separated by `/` stays inside.
Symbolic links inside the folder are followed (the Hugging Face cache links snapshot files into a blob folder):
the check is about what the metadata names, not where the folder's owner put its files.
"""

from __future__ import annotations

import pathlib
import re

# A drive (`C:`, `C:\\x` on Windows), or a URL (`https://`, `hf://`, fsspec's chained `simplecache::s3://`) at the
# start of a name. Other colons are left alone: an Orbax key may hold one, and on POSIX it is an ordinary character.
_SCHEME_OR_DRIVE = re.compile(r"^(?:[A-Za-z]:|[A-Za-z][A-Za-z0-9+.\-]*:(?://|:))")


def key_problem(key: object) -> str | None:
    """Why `key` cannot name a file inside the folder, or None when it is a plain relative path."""
    if not isinstance(key, str) or not key:
        return "is not a file name"
    if "\x00" in key:
        return "holds a NUL character"
    if key.startswith("/"):
        return "is an absolute path"
    if "\\" in key:
        return "holds a backslash (a Windows folder separator)"
    if _SCHEME_OR_DRIVE.match(key):
        return "starts with a drive or a URL scheme"
    segments = key.split("/")
    if ".." in segments:
        return "climbs out of the folder with '..'"
    if any(segment in ("", ".") for segment in segments):
        return "has an empty or '.' path segment"
    return None


def inside(folder: pathlib.Path, key: str) -> pathlib.Path:
    """`folder / key` for a key that `key_problem` accepts; a loader checks first, to say which record is bad."""
    if (problem := key_problem(key)) is not None:
        raise ValueError(f"{key!r} {problem}")
    return folder.joinpath(*key.split("/"))
