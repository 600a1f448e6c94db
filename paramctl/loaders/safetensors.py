"""safetensors files: an 8-byte little-endian header length, a JSON header, then the tensors' bytes.

The header is parsed here, through the byte source, with the validation rules of the safetensors library
(`safetensors/src/tensor.rs`): header at most 100 MB, a JSON object, known dtypes, offsets that match each
tensor's shape and tile the data region exactly. The library itself (which needs a local path) is the tests' oracle.
"""

from __future__ import annotations

import json
from typing import Any

from paramctl import dtypes
from paramctl.errors import CorruptFileError
from paramctl.probe import Probe
from paramctl.tree import ByteRange, Storage, Tensor, Tree, contiguous_strides, short_repr, split_key

MAX_HEADER_SIZE = 100_000_000  # the library's limit


class SafetensorsLoader:
    name = "safetensors"
    description = "safetensors files (.safetensors), including aliases recorded by save_model"

    def sniff(self, probe: Probe) -> bool:
        """An 8-byte length, then a JSON object: `{` after optional JSON whitespace (which the library accepts).
        The length is not trusted here: a header that claims more than the file holds is still this format's
        file, and `load` says what is wrong with it."""
        head = probe.head
        if len(head) < 10:
            return False
        text = head[8:].lstrip(b" \t\r\n")
        return text[:1] == b"{" and text[1:2] in (b'"', b"}", b" ", b"\t", b"\r", b"\n")

    def load(self, probe: Probe) -> Tree:
        source, file = probe.source, probe.name
        length = int.from_bytes(source.read(0, 8), "little")
        if length > MAX_HEADER_SIZE:
            raise CorruptFileError(file, f"safetensors header of {length} bytes exceeds the {MAX_HEADER_SIZE} limit")
        if length > source.size - 8:
            raise CorruptFileError(
                file, f"safetensors header of {length} bytes runs past the end of the file ({source.size} bytes)"
            )
        try:
            # Strict UTF-8 first: json.loads(bytes) would guess UTF-16/32 from NUL bytes, which the library never does.
            text = bytes(source.view(8, length)).decode("utf-8")
            header = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError) as error:
            raise CorruptFileError(file, f"invalid safetensors header JSON: {str(error)[:200]}") from None
        except RecursionError:
            raise CorruptFileError(file, "invalid safetensors header JSON: nested too deeply") from None
        if not isinstance(header, dict):
            raise CorruptFileError(file, "safetensors header is not a JSON object")
        metadata = header.pop("__metadata__", None)
        metadata = {} if metadata is None else metadata  # null is allowed; "" or [] are not (serde's Option<map>)
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise CorruptFileError(file, "safetensors __metadata__ is not a map of strings")
        data_start, data_size = 8 + length, source.size - 8 - length
        tree = Tree(file, "safetensors", metadata=dict(metadata))
        tensors: dict[str, Tensor] = {}
        spans = []
        for name, entry in header.items():
            dtype, shape, begin, end = _entry(file, name, entry)
            if end > data_size:
                raise CorruptFileError(file, f"tensor {name}: data ends at {end}, past the {data_size} data bytes")
            spans.append((begin, end, name))
            storage = Storage(name, end - begin, ByteRange(source, data_start + begin, end - begin), "cpu")
            tensor = Tensor(dtype, shape, contiguous_strides(shape), storage)
            tensors[name] = tensor
            tree.leaves.append((split_key(name, "./"), tensor))
        _check_tiling(file, spans, data_size)
        # save_model drops tied duplicates and records {removed_name: kept_name} in the metadata.
        for removed, kept in metadata.items():
            if removed not in tensors and kept in tensors:
                alias = tensors[kept]
                tree.leaves.append(
                    (
                        split_key(removed, "./"),
                        Tensor(alias.dtype, alias.shape, alias.strides, alias.storage, 0, "metadata"),
                    )
                )
        return tree


LOADER = SafetensorsLoader()


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Duplicate keys are refused (the library keeps the last silently: two readers could disagree), and so are
    lone surrogates (`"\\ud800"`), which Python's JSON accepts and serde_json does not."""
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate key {duplicate!r}")
    for key, value in pairs:
        for text in (key, value) if isinstance(value, str) else (key,):
            text.encode("utf-8")  # UnicodeEncodeError (a ValueError) on a lone surrogate
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_U64_MAX = (1 << 64) - 1  # the library reads shapes and offsets as usize (64-bit)


def _entry(file: str, name: str, entry: Any) -> tuple[dtypes.DType, tuple[int, ...], int, int]:
    # Like the library's serde struct: these three fields are required, any others are ignored.
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        raise CorruptFileError(file, f"tensor {name}: header entry is not {{dtype, shape, data_offsets}}")
    dtype = dtypes.BY_SAFETENSORS.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    if dtype is None:
        raise CorruptFileError(file, f"tensor {name}: unknown dtype {short_repr(entry['dtype'], 40)}")
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not isinstance(shape, list) or not all(type(n) is int and 0 <= n <= _U64_MAX for n in shape):
        raise CorruptFileError(file, f"tensor {name}: shape {short_repr(shape)} is not a list of non-negative integers")
    if not (
        isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int and 0 <= n <= _U64_MAX for n in offsets)
    ):
        raise CorruptFileError(file, f"tensor {name}: data_offsets {short_repr(offsets)} is not [begin, end]")
    # The library multiplies left to right with overflow checks (then by the dtype's bits): [2**40, 2**40, 0]
    # overflows before the 0 is reached.
    numel = 1
    for n in shape:
        numel *= n
        if numel > _U64_MAX:
            raise CorruptFileError(file, f"tensor {name}: shape {short_repr(shape)} overflows the element count")
    bits = numel * dtype.element_bits
    if bits > _U64_MAX:
        raise CorruptFileError(file, f"tensor {name}: shape {short_repr(shape)} overflows the byte count")
    if bits % 8:  # the library refuses a sub-byte tensor that does not end on a byte boundary
        raise CorruptFileError(
            file, f"tensor {name}: {numel} {entry['dtype']} elements are {bits} bits, not a whole number of bytes"
        )
    begin, end = offsets
    nbytes = bits // 8
    if end < begin or end - begin != nbytes:
        raise CorruptFileError(
            file, f"tensor {name}: data_offsets [{begin}, {end}] hold {end - begin} bytes, shape {shape} needs {nbytes}"
        )
    return dtype, tuple(shape), begin, end


def _check_tiling(file: str, spans: list[tuple[int, int, str]], data_size: int) -> None:
    """The library requires the tensors to tile the data region: no gap, no overlap, nothing left over."""
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            problem = "overlaps the previous tensor" if begin < position else f"leaves a gap before byte {begin}"
            raise CorruptFileError(file, f"tensor {name}: data {problem}")
        position = end
    if position != data_size:
        raise CorruptFileError(file, f"the tensors cover {position} data bytes, the file holds {data_size}")
