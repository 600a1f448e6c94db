"""The exception hierarchy. Library code raises these; only the CLI turns them into messages and exit codes."""

from __future__ import annotations


class ParamctlError(Exception):
    """Base of every error paramctl raises on purpose: bad input, never a bug."""


class UsageError(ParamctlError):
    """The request itself is wrong: an unknown name, a malformed option value."""


class FileError(ParamctlError):
    """A file cannot be used; the message names the file and what is wrong with it."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


class UnknownFormatError(FileError):
    """No loader recognised the file's content."""


class CorruptFileError(FileError):
    """A loader recognised the format, but the content breaks its rules (truncated, lying sizes, bad records)."""
