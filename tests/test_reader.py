"""The reader knows no storage kind: two toy kinds defined here (random access, and front to back only) are read
through `array`, `chunks`, `plan` + `parallel`, `window`, `release` and `stat` with no change to reader.py, and
compared with NumPy's own indexing of the arrays they were built from. A kind that is no storage kind is refused."""

from __future__ import annotations

import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pytest

from paramctl import reader
from paramctl.dtypes import from_numpy
from paramctl.errors import CorruptFileError, FileError
from paramctl.ops.stats import stat_tree
from paramctl.storage import element_view, positions, span, strided
from paramctl.tree import ByteRange, Storage, Tensor, Tree, contiguous_strides

MASK = 0x5A


@dataclass(frozen=True)
class Masked:
    """A toy random-access kind: bytes kept XOR-masked in memory, unmasked only where a read asks. It records the
    byte spans it unmasks and the element ranges it is told to release, so the tests see what each read touched."""

    payload: bytes
    unmasked: list[tuple[int, int]] = field(default_factory=list)
    released: list[tuple[int, int]] = field(default_factory=list)
    sequential: ClassVar[bool] = False

    def _unmask(self, view: Tensor, first: int, stop: int) -> np.ndarray:
        itemsize = view.dtype.itemsize
        self.unmasked.append((first * itemsize, stop * itemsize))
        raw = np.frombuffer(self.payload, np.uint8)[first * itemsize : stop * itemsize] ^ MASK
        return element_view(raw.tobytes(), view)

    def whole(self, view: Tensor) -> np.ndarray:
        return self._unmask(view, 0, len(self.payload) // view.dtype.itemsize)

    def elements(self, view: Tensor, start: int, stop: int) -> np.ndarray:
        at = positions(view.offset, view.shape, view.strides, start, stop)
        low = int(at.min())
        return self._unmask(view, low, int(at.max()) + 1)[at - low]

    def window(self, view: Tensor, offset: int, shape: tuple[int, ...], strides: tuple[int, ...]) -> np.ndarray:
        first, last = span(offset, shape, strides)
        return strided(self._unmask(view, first, last + 1), offset - first, shape, strides)

    def release(self, view: Tensor, first: int, stop: int) -> None:
        self.released.append((first, stop))


@dataclass(frozen=True)
class Deflated:
    """A toy sequential kind: zlib-compressed bytes, decompressed front to back only."""

    packed: bytes
    sequential: ClassVar[bool] = True

    def whole(self, view: Tensor) -> np.ndarray:
        return element_view(zlib.decompress(self.packed), view)

    def elements(self, view: Tensor, start: int, stop: int) -> np.ndarray:
        values = strided(self.whole(view), view.offset, view.shape, view.strides)
        return values.reshape(-1)[start:stop]

    def window(self, view: Tensor, offset: int, shape: tuple[int, ...], strides: tuple[int, ...]) -> np.ndarray:
        return strided(self.whole(view), offset, shape, strides)

    def release(self, view: Tensor, first: int, stop: int) -> None:
        pass

    def stream(self, view: Tensor, size: int) -> Iterator[np.ndarray]:
        assert view.is_contiguous, "the toy streams row-major views only"
        itemsize, inflate = view.dtype.itemsize, zlib.decompressobj()
        skip, remaining, pending = view.offset * itemsize, view.numel * itemsize, self.packed
        buffered = b""
        while remaining:
            buffered += inflate.decompress(pending, 64)
            pending = inflate.unconsumed_tail
            drop = min(skip, len(buffered))
            buffered, skip = buffered[drop:], skip - drop
            while len(buffered) >= min(size * itemsize, remaining):
                take = min(size * itemsize, remaining)
                yield element_view(buffered[:take], view)
                buffered, remaining = buffered[take:], remaining - take
                if not remaining:
                    return


VALUES = (np.arange(42, dtype=np.float32).reshape(6, 7) * 1.5 - 20.0) ** 2 / 7


def tensor(data: object, shape: tuple[int, ...], strides: tuple[int, ...], offset: int = 0) -> Tensor:
    return Tensor(from_numpy(VALUES.dtype), shape, strides, Storage("w", VALUES.nbytes, data), offset)


def masked() -> Masked:
    return Masked((np.frombuffer(VALUES.tobytes(), np.uint8) ^ MASK).tobytes())


# Each view of the 6×7 storage with the NumPy view of VALUES that it stands for.
VIEWS = {
    "whole": (((6, 7), (7, 1), 0), VALUES),
    "rows 2-4": (((3, 7), (7, 1), 14), VALUES[2:5]),
    "transposed": (((7, 6), (1, 7), 0), VALUES.T),
    "every other column, reversed rows": (((6, 4), (-7, 2), 35), VALUES[::-1, ::2]),
    "0-d": (((), (), 9), VALUES[1, 2]),
    "empty": (((0, 7), (7, 1), 0), VALUES[:0]),
}


@pytest.mark.parametrize("name", VIEWS)
def test_a_new_kind_reads_through_array_chunks_and_plan(name: str) -> None:
    (shape, strides, offset), want = VIEWS[name]
    view = tensor(masked(), shape, strides, offset)
    assert np.array_equal(reader.array(view), want)
    for size in (1, 5, 42, 1000):
        pieces = list(reader.chunks(view, size))
        assert all(len(p) <= size for p in pieces)
        got = np.concatenate(pieces) if pieces else np.empty(0, VALUES.dtype)
        assert np.array_equal(got, np.ravel(want)), size
        plan = reader.plan(view, size)
        assert plan is not None
        threaded = list(reader.parallel((chunk.read for chunk in plan), threads=2))
        assert np.array_equal(np.concatenate(threaded) if threaded else got[:0], np.ravel(want)), size


def test_chunks_read_only_their_bytes_and_release_them() -> None:
    data = masked()
    view = tensor(data, (3, 7), (7, 1), 14)  # rows 2-4, contiguous
    list(reader.chunks(view, 5))
    itemsize = VALUES.itemsize
    starts = range(14, 35, 5)
    assert data.unmasked == [(s * itemsize, min(s + 5, 35) * itemsize) for s in starts]
    assert data.released == [(s, min(s + 5, 35)) for s in starts]


def test_strided_chunks_leave_release_to_the_whole_extent() -> None:
    data = masked()
    view = tensor(data, (7, 6), (1, 7))
    list(reader.chunks(view, 10))
    assert data.released == []  # a strided chunk's pages are shared with the chunks after it
    reader.release(view)
    assert data.released == [(0, 42)]


@pytest.mark.parametrize(
    ("offset", "shape", "strides", "want"),
    [
        (8, (2, 3), (7, 2), VALUES[1:3, 1:7:2]),
        (41, (6, 7), (-7, -1), VALUES[::-1, ::-1]),
        (3, (6,), (7,), VALUES[:, 3]),
        (0, (0, 3), (7, 1), VALUES[:0, :3]),
    ],
)
def test_a_new_kind_reads_windows_of_their_span_only(
    offset: int, shape: tuple[int, ...], strides: tuple[int, ...], want: np.ndarray
) -> None:
    data = masked()
    got = reader.window(tensor(data, (6, 7), (7, 1)), offset, shape, strides)
    assert np.array_equal(got, want)
    if want.size:
        first, last = span(offset, shape, strides)
        assert data.unmasked == [(first * VALUES.itemsize, (last + 1) * VALUES.itemsize)]


def test_a_window_outside_the_storage_is_refused_before_the_kind_is_asked() -> None:
    data = masked()
    with pytest.raises(ValueError, match=r"window \[40, 43\] lies outside storage 'w'"):
        reader.window(tensor(data, (6, 7), (7, 1)), 40, (4,), (1,))
    assert data.unmasked == []


def test_a_new_kind_is_read_by_stat() -> None:
    tree = Tree("toy", "toy", [(("w",), tensor(masked(), (6, 7), (7, 1))), (("t",), tensor(masked(), (7, 6), (1, 7)))])
    for row in stat_tree(tree, chunk_elements=4).tensors:
        values = VALUES.astype(np.float64)
        assert row.moments is not None
        assert (row.moments.min, row.moments.max, row.moments.numel) == (values.min(), values.max(), 42), row.name
        assert row.moments.mean == pytest.approx(values.mean(), rel=1e-12), row.name


def test_a_sequential_kind_is_streamed_never_planned() -> None:
    packed = zlib.compress(VALUES.tobytes())
    view = tensor(Deflated(packed), (3, 7), (7, 1), 14)
    assert reader.sequential(view) and not reader.sequential(tensor(masked(), (6, 7), (7, 1)))
    assert reader.plan(view) is None
    for size in (1, 4, 21, 100):
        pieces = list(reader.chunks(view, size))
        assert all(len(p) <= size for p in pieces)
        assert np.array_equal(np.concatenate(pieces), VALUES[2:5].reshape(-1)), size
    assert np.array_equal(reader.array(view), VALUES[2:5])
    assert np.array_equal(reader.window(view, 15, (2, 2), (7, 3)), VALUES[2:4, 1:5:3])


def test_data_that_is_no_storage_kind_is_refused_by_name() -> None:
    with pytest.raises(FileError) as error:
        reader.array(tensor(object(), (6, 7), (7, 1)))
    assert str(error.value) == (
        "w: its data is a object, which is not a storage kind paramctl can read "
        "(it lacks sequential, whole, elements, window, release; see paramctl.tree.StorageData)"
    )

    class Unstreamable:  # sequential, but says nothing of how to read it front to back
        sequential = True
        whole, elements, window, release = Deflated.whole, Deflated.elements, Deflated.window, Deflated.release

    # Found out when the reader plans, before any chunk is asked for.
    with pytest.raises(FileError, match=r"it lacks stream; see paramctl.tree.StorageData"):
        reader.plan(tensor(Unstreamable(), (6, 7), (7, 1)))


def test_a_storage_without_data_is_a_corrupt_file_when_read() -> None:
    view = tensor(None, (6, 7), (7, 1))
    assert reader.plan(view, 21) is not None  # planning reads nothing
    reader.release(view)  # nor does releasing
    with pytest.raises(CorruptFileError, match=r"^w: storage holds no data$"):
        list(reader.chunks(view))


def test_built_in_kinds_still_read_stored_bytes_as_numpy_does() -> None:
    class Memory:
        name = "memory"

        def __init__(self, raw: bytes) -> None:
            self.raw = memoryview(raw)
            self.released: list[tuple[int, int]] = []

        def view(self, offset: int, nbytes: int) -> memoryview:
            return self.raw[offset : offset + nbytes]

        def release(self, offset: int, nbytes: int) -> None:
            self.released.append((offset, nbytes))

    source = Memory(b"\0" * 8 + VALUES.tobytes())
    view = tensor(ByteRange(source, 8, VALUES.nbytes), (6, 7), contiguous_strides((6, 7)))
    assert np.array_equal(np.concatenate(list(reader.chunks(view, 20))), VALUES.reshape(-1))
    assert source.released == [(8, 80), (88, 80), (168, 8)]  # each chunk's bytes, after the storage's offset


def test_importing_the_tree_and_loaders_imports_no_numpy() -> None:
    code = (
        "import sys, paramctl.tree, paramctl.registry, paramctl.loaders.safetensors, paramctl.loaders.dcp\n"
        "print('numpy' in sys.modules)\n"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "False"
