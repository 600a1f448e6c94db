"""paramctl's pickle machine: it reads pickles without ever importing or calling what they name.

- machine.py: the restricted unpickler (protocols 0-5, frames checked, lengths checked against the bytes present),
  paramctl's own rebuilds of tensors and containers, placeholders for everything else, bounded reprs;
- walk.py: a scan of one pickle (every global named, with where it ends up) and recognising a pickle by its
  opcode stream;
- globals.py: what each global would do if really imported (the classification table) and torch's weights_only
  tables;
- paged.py: a file as a byte string read a bounded block at a time, for pickles that sit in front of other data.

Loaders and `ops/scan.py` import from here; this package imports nothing from loaders, ops or cli.
"""

from paramctl.pickles.globals import (
    ALLOWED,
    BLOCKED,
    CLASSES,
    DANGEROUS,
    INERT,
    REBUILT,
    REFUSED,
    TORCH_WEIGHTS_ONLY_ALLOWED,
    TORCH_WEIGHTS_ONLY_BLOCKED,
    TORCH_WEIGHTS_ONLY_OPCODES,
    UNKNOWN,
    classify,
    python3_name,
    strict_allowed,
    torch_name,
    torch_weights_only,
)
from paramctl.pickles.machine import (
    FRAME_VIOLATION,
    INT64_MAX,
    Built,
    FrameViolation,
    Global,
    GlobalRef,
    PickleError,
    StorageRef,
    StorageType,
    Unpickler,
    expansion_problem,
    resolve_global,
    short_repr,
)
from paramctl.pickles.paged import PagedBytes
from paramctl.pickles.walk import PSEUDO_MODULES, PickleScan, find_pickle, reference_paths, scan_pickle

__all__ = [
    "ALLOWED", "BLOCKED", "CLASSES", "DANGEROUS", "FRAME_VIOLATION", "INERT", "INT64_MAX", "PSEUDO_MODULES",
    "REBUILT", "REFUSED", "TORCH_WEIGHTS_ONLY_ALLOWED", "TORCH_WEIGHTS_ONLY_BLOCKED", "TORCH_WEIGHTS_ONLY_OPCODES",
    "UNKNOWN", "Built", "FrameViolation", "Global", "GlobalRef", "PagedBytes", "PickleError", "PickleScan",
    "StorageRef", "StorageType", "Unpickler", "classify", "expansion_problem", "find_pickle", "python3_name",
    "reference_paths", "resolve_global", "scan_pickle", "short_repr", "strict_allowed", "torch_name",
    "torch_weights_only",
]  # fmt: skip
