"""One dtype table for every format: torch names, torch storage classes, safetensors codes, NumPy descriptors.

Importing this module imports no NumPy: `ls` needs names and item sizes only. NumPy dtypes (with ml_dtypes for
bfloat16 and float8) are resolved on first use by the code that reads data.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any


@dataclass(frozen=True)
class DType:
    """A tensor element type, named as torch names it (without the `torch.` prefix)."""

    name: str
    itemsize: int
    kind: str  # "f" float, "i" signed int, "u" unsigned int, "b" bool, "c" complex, "q" quantized/packed
    numpy_name: str | None  # a NumPy or ml_dtypes type name; None where NumPy has no equivalent
    storage_class: str | None = None  # the legacy torch.<X>Storage class that pickles this dtype
    safetensors: str | None = None  # the safetensors header code
    bits: int | None = None  # bits per element where that is not 8·itemsize (sub-byte types; itemsize is then 1)

    def __str__(self) -> str:
        return self.name

    @property
    def element_bits(self) -> int:
        """Bits per element: what sizes are computed from (safetensors packs F4 two to a byte, F6 four to three)."""
        return self.bits if self.bits is not None else self.itemsize * 8

    def nbytes(self, numel: int) -> int:
        """Bytes `numel` elements occupy, packed (a partial byte counts as a byte)."""
        return (numel * self.element_bits + 7) // 8

    @property
    def is_floating(self) -> bool:
        return self.kind == "f"


_TABLE = (
    DType("float64", 8, "f", "float64", "DoubleStorage", "F64"),
    DType("float32", 4, "f", "float32", "FloatStorage", "F32"),
    DType("float16", 2, "f", "float16", "HalfStorage", "F16"),
    DType("bfloat16", 2, "f", "bfloat16", "BFloat16Storage", "BF16"),
    DType("float8_e4m3fn", 1, "f", "float8_e4m3fn", None, "F8_E4M3"),
    DType("float8_e5m2", 1, "f", "float8_e5m2", None, "F8_E5M2"),
    DType("float8_e4m3fnuz", 1, "f", "float8_e4m3fnuz", None, "F8_E4M3FNUZ"),
    DType("float8_e5m2fnuz", 1, "f", "float8_e5m2fnuz", None, "F8_E5M2FNUZ"),
    DType("float8_e8m0fnu", 1, "f", "float8_e8m0fnu", None, "F8_E8M0"),
    DType("complex128", 16, "c", "complex128", "ComplexDoubleStorage"),
    DType("complex64", 8, "c", "complex64", "ComplexFloatStorage", "C64"),
    DType("complex32", 4, "c", None),
    DType("int64", 8, "i", "int64", "LongStorage", "I64"),
    DType("int32", 4, "i", "int32", "IntStorage", "I32"),
    DType("int16", 2, "i", "int16", "ShortStorage", "I16"),
    DType("int8", 1, "i", "int8", "CharStorage", "I8"),
    DType("uint64", 8, "u", "uint64", None, "U64"),
    DType("uint32", 4, "u", "uint32", None, "U32"),
    DType("uint16", 2, "u", "uint16", None, "U16"),
    DType("uint8", 1, "u", "uint8", "ByteStorage", "U8"),
    DType("bool", 1, "b", "bool", "BoolStorage", "BOOL"),
    DType("qint8", 1, "q", None, "QInt8Storage"),
    DType("quint8", 1, "q", None, "QUInt8Storage"),
    DType("qint32", 4, "q", None, "QInt32Storage"),
    DType("quint4x2", 1, "q", None, "QUInt4x2Storage"),
    DType("quint2x4", 1, "q", None, "QUInt2x4Storage"),
    DType("float4_e2m1fn_x2", 1, "q", None),
    # safetensors' sub-byte floats, packed without padding. ml_dtypes has these element types one per byte, but
    # neither the library nor torch defines their order within a byte to a reader: listed, never read.
    DType("float4_e2m1fn", 1, "q", None, None, "F4", bits=4),
    DType("float6_e2m3fn", 1, "q", None, None, "F6_E2M3", bits=6),
    DType("float6_e3m2fn", 1, "q", None, None, "F6_E3M2", bits=6),
)

BY_NAME: dict[str, DType] = {d.name: d for d in _TABLE}
BY_STORAGE_CLASS: dict[str, DType] = {d.storage_class: d for d in _TABLE if d.storage_class}
BY_SAFETENSORS: dict[str, DType] = {d.safetensors: d for d in _TABLE if d.safetensors}
# torch's aliases, as they may appear in a pickle (`torch.float` is `torch.float32`).
_TORCH_ALIASES = {
    "float": "float32",
    "double": "float64",
    "half": "float16",
    "long": "int64",
    "int": "int32",
    "short": "int16",
    "cfloat": "complex64",
    "cdouble": "complex128",
    "chalf": "complex32",
}
# NumPy's basic types by (array-protocol kind letter, itemsize), as in a `.npy` header's `descr`.
_NPY_BASIC = {"f": "float", "i": "int", "u": "uint", "c": "complex"}
BY_NPY_KIND: dict[tuple[str, int], DType] = {
    (letter, d.itemsize): d
    for letter, prefix in _NPY_BASIC.items()
    for d in _TABLE
    if d.numpy_name == f"{prefix}{d.itemsize * 8}"
}
BY_NPY_KIND["b", 1] = BY_NAME["bool"]


def from_torch_name(name: str) -> DType | None:
    """The dtype for a `torch.<name>` global, or None when it is not a dtype name."""
    return BY_NAME.get(_TORCH_ALIASES.get(name, name))


def from_npy_descr(descr: object) -> tuple[DType, str] | None:
    """A `.npy` header's `descr` (`'<f4'`, `'|b1'`) as (dtype, byteorder), or None for a type paramctl cannot read."""
    if not isinstance(descr, str) or len(descr) < 3 or descr[0] not in "<>|=" or not descr[2:].isdigit():
        return None
    dtype = BY_NPY_KIND.get((descr[1], int(descr[2:])))
    if dtype is None:
        return None
    return dtype, "big" if descr[0] == ">" else "little"


@cache
def numpy_dtype(dtype: DType) -> Any:
    """The little-endian NumPy dtype of these elements; imports NumPy (and ml_dtypes for the extended floats)."""
    import numpy as np

    if dtype.numpy_name is None:
        raise TypeError(f"{dtype.name} has no NumPy equivalent")
    if dtype.numpy_name in np.sctypeDict:
        result = np.dtype(dtype.numpy_name)
    else:
        import ml_dtypes

        result = np.dtype(getattr(ml_dtypes, dtype.numpy_name))
    return result.newbyteorder("<") if result.byteorder == ">" else result


def from_numpy(np_dtype: Any) -> DType | None:
    """The dtype of a NumPy dtype (used by tests and writers), or None."""
    name = np_dtype.name
    dtype = BY_NAME.get("bool" if name == "bool" else name)
    return None if dtype is None or dtype.bits is not None else dtype  # NumPy holds sub-byte types one per byte
