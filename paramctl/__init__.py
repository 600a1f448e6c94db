"""paramctl: look inside neural-network checkpoints without torch, and assert facts about them in CI.

>>> import paramctl
>>> tree = paramctl.open("fixtures/mlp.pt")
>>> [name for name, _ in tree.tensors()]
['0.weight', '0.bias', '2.weight', '2.bias']
"""

from paramctl.dtypes import DType
from paramctl.errors import CorruptFileError, FileError, ParamctlError, UnknownFormatError, UsageError
from paramctl.registry import loaders, open
from paramctl.tree import Leaf, Opaque, Storage, Tensor, Tree, Value

__version__ = "0.1.0"

__all__ = [
    "CorruptFileError",
    "DType",
    "FileError",
    "Leaf",
    "Opaque",
    "ParamctlError",
    "Storage",
    "Tensor",
    "Tree",
    "UnknownFormatError",
    "UsageError",
    "Value",
    "loaders",
    "open",
]
