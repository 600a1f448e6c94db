"""NumPy's basic indexing, parsed from text and resolved by arithmetic on a tensor's layout.

`show` takes selections such as `embed.weight[42]`, `0.weight[:, :4]`, `x[::-2, -1]` or `x[..., None, 0]`. The text
is parsed here (never `eval`ed) and applied to (offset, shape, strides) exactly as NumPy applies it to an array's
view: integers pick one item (negative counts from the end, out of range is an error), slices clamp, `...` stands
for the remaining axes, `None` adds an axis of length 1. No data is read: the result is the layout of the view.
Imports no NumPy.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from types import EllipsisType
from typing import Union

from paramctl.errors import UsageError

Item = Union[int, slice, EllipsisType, None]

NEWAXIS_NAMES = ("None", "np.newaxis", "numpy.newaxis", "newaxis")
_INTEGER = re.compile(r"[+-]?\s*\d+")
_GROUPS = re.compile(r"(?:\[[^\[\]]*\])+$")


@dataclass(frozen=True)
class Layout:
    """Where a (part of a) tensor's elements lie in its storage: element `i` is at `offset + Σ i_k·strides[k]`.

    Strides are in elements and may be negative (a reversed slice) or zero (an added axis).
    """

    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def span(self) -> tuple[int, int]:
        """The first and last storage element the layout touches (meaningless when it is empty)."""
        low = sum((n - 1) * s for n, s in zip(self.shape, self.strides) if s < 0)
        high = sum((n - 1) * s for n, s in zip(self.shape, self.strides) if s > 0)
        return self.offset + low, self.offset + high

    def narrow(self, axis: int, start: int, stop: int) -> Layout:
        """Items [start, stop) of one axis, the axis kept (a step-1 slice)."""
        shape = self.shape[:axis] + (stop - start,) + self.shape[axis + 1 :]
        offset = self.offset + start * self.strides[axis] if stop > start else self.offset
        return replace(self, offset=offset, shape=shape)


def split_groups(text: str) -> list[str]:
    """The trailing `[...]` groups of a NAME[INDEX] text, e.g. `x[0][1:]` → `['[0]', '[1:]']` ([] when none)."""
    match = _GROUPS.search(text)
    return re.findall(r"\[[^\[\]]*\]", match.group(0)) if match else []


def parse(groups: str) -> list[tuple[Item, ...]]:
    """`[0, ::2][...]` → [(0, slice(None, None, 2)), (Ellipsis,)]: one tuple per bracket group, applied in turn."""
    parts = split_groups(groups)
    if not parts or "".join(parts) != groups:
        raise UsageError(f"cannot parse index {groups!r}: expected [..] groups")
    return [_parse_group(part[1:-1]) for part in parts]


def _parse_group(text: str) -> tuple[Item, ...]:
    if text.strip() == "()":  # `x[()]`: the empty tuple, the whole array
        return ()
    components = text.split(",")
    if len(components) > 1 and not components[-1].strip():  # `x[0,]` is the tuple (0,), as in Python
        components.pop()
    return tuple(_parse_item(component, text) for component in components)


def _parse_item(component: str, whole: str) -> Item:
    item = component.strip()
    if item == "...":
        return Ellipsis
    if item in NEWAXIS_NAMES:
        return None
    if _INTEGER.fullmatch(item):
        return int(item.replace(" ", ""))
    parts = item.split(":")
    if 2 <= len(parts) <= 3:
        bounds = [_slice_bound(part, whole) for part in parts]
        return slice(*bounds)
    if not item:
        raise UsageError(f"cannot parse index [{whole}]: an empty item")
    raise UsageError(
        f"cannot parse index [{whole}]: {item!r} is not an integer, a slice (start:stop:step), '...' or None"
        " (basic indexing only)"
    )


def _slice_bound(part: str, whole: str) -> int | None:
    text = part.strip()
    if not text or text == "None":
        return None
    if _INTEGER.fullmatch(text):
        return int(text.replace(" ", ""))
    raise UsageError(f"cannot parse index [{whole}]: slice bound {text!r} is not an integer")


def apply(layout: Layout, items: tuple[Item, ...]) -> Layout:
    """The layout of `array[items]` for an array laid out as `layout`, with NumPy's rules and error messages."""
    ellipses = sum(1 for item in items if item is Ellipsis)
    if ellipses > 1:
        raise UsageError("an index can only have a single ellipsis ('...')")
    indexed = sum(1 for item in items if item is not None and item is not Ellipsis)
    if indexed > layout.ndim:
        raise UsageError(f"too many indices: the array is {layout.ndim}-dimensional, but {indexed} were indexed")
    fill = (slice(None),) * (layout.ndim - indexed)
    if ellipses:
        at = next(i for i, item in enumerate(items) if item is Ellipsis)
        items = items[:at] + fill + items[at + 1 :]
    else:
        items = items + fill
    offset, shape, strides, axis = layout.offset, [], [], 0
    for item in items:
        if item is None:
            shape.append(1)
            strides.append(0)
            continue
        n, stride = layout.shape[axis], layout.strides[axis]
        if isinstance(item, int):
            position = item + n if item < 0 else item
            if not 0 <= position < n:
                raise UsageError(f"index {item} is out of bounds for axis {axis} with size {n}")
            offset += position * stride
        else:
            assert isinstance(item, slice)
            if item.step == 0:
                raise UsageError("slice step cannot be zero")
            start, stop, step = item.indices(n)  # Python's clamping is NumPy's
            length = len(range(start, stop, step))
            if length:
                offset += start * stride
            shape.append(length)
            strides.append(stride * step)
        axis += 1
    return Layout(offset, tuple(shape), tuple(strides))


def select(layout: Layout, groups: str) -> Layout:
    """Apply an index text of one or more `[...]` groups (`x[0][1:]` indexes the result of `x[0]`)."""
    for items in parse(groups):
        layout = apply(layout, items)
    return layout
