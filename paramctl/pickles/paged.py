"""A file as a byte string the unpickler can index, read a block at a time.

Legacy torch files and bare pickle files keep their pickles in front of other data (or are nothing but pickles):
only the blocks the pickles occupy are read, a few are kept (a pickle is read front to back, so a small window of
recent blocks serves it), and reading stops at a size cap, so a file at a URL is never downloaded whole for its
metadata and a huge file is never cached in memory.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from paramctl.pickles.machine import PickleError

MAX_PICKLE_BYTES = 1 << 30  # pickled metadata beyond 1 GiB is not a checkpoint's (the zip path's data.pkl cap too)


class PagedBytes:
    """`source` (a ByteSource) indexed like bytes; blocks past `limit` bytes are refused rather than read."""

    BLOCK = 1 << 14
    KEPT_BLOCKS = 64  # 1 MiB of recent blocks

    def __init__(self, source: Any, limit: int = MAX_PICKLE_BYTES) -> None:
        self.source = source
        self.limit = limit
        self.blocks: OrderedDict[int, bytes] = OrderedDict()

    def __len__(self) -> int:
        return int(self.source.size)

    def _block(self, index: int) -> bytes:
        block = self.blocks.get(index)
        if block is not None:
            self.blocks.move_to_end(index)
            return block
        start = index * self.BLOCK
        if start >= self.limit:
            raise PickleError(f"the pickles run past {self.limit:,} bytes: too large for a checkpoint's metadata")
        block = self.blocks[index] = self.source.read(start, min(self.BLOCK, self.source.size - start))
        if len(self.blocks) > self.KEPT_BLOCKS:
            self.blocks.popitem(last=False)
        return block

    def __getitem__(self, key: int | slice) -> Any:
        if isinstance(key, int):
            return self._block(key // self.BLOCK)[key % self.BLOCK]
        start, stop = max(key.start or 0, 0), min(key.stop if key.stop is not None else len(self), len(self))
        if stop <= start:
            return b""
        first, last = start // self.BLOCK, (stop - 1) // self.BLOCK
        joined = b"".join(self._block(i) for i in range(first, last + 1))
        return joined[start - first * self.BLOCK : stop - first * self.BLOCK]
