"""Pictures of weights: a terminal heatmap of coloured half-blocks, and the same picture as a PNG.

People see structure in a weight matrix faster than in numbers: dead rows, saturated columns, a diagonal. The
palette diverges from white at zero to red (positive) and blue (negative), scaled to the selection's max |x|, so
colours compare across the picture. A 4-D convolution weight (out, in, kh, kw) with in = 1 or 3 becomes the classic
grid of filters in a PNG. Imported only by `show` when a picture is asked for (it imports NumPy); Pillow is imported
only to write a PNG, and is an optional extra.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from paramctl.cli.errors import escape
from paramctl.errors import FileError, UsageError
from paramctl.ops.show import Heatmap, Selection, heatmap, printable, read, readable_dtype, refuse_overwrite

# ColorBrewer's RdBu ends and middle: a diverging palette that reads the same for the colour-blind.
RED = (178, 24, 43)
BLUE = (33, 102, 172)
WHITE = (247, 247, 247)
MISSING = (96, 96, 96)  # a block without a finite value (all NaN or ±Inf)
LEGEND_CELLS = 21
HALF_BLOCK = "▀"  # foreground paints the upper value, background the lower: two rows per line, square cells

PNG_MAX_CELLS = 1024  # larger matrices are averaged down to at most this many cells a side
PNG_TARGET = 512  # smaller ones are scaled up (nearest) to about this many pixels on the longer side
TILE_TARGET = 32  # filter tiles are scaled up to about this many pixels
TILE_GAP = 2
TILE_BACKGROUND = (40, 40, 40)
INSTALL_HINT = "--png needs Pillow, an optional extra: pip install 'paramctl[image]'"


def colours(values: np.ndarray, scale: float) -> np.ndarray:
    """RGB bytes (..., 3): white at 0, red at +scale, blue at -scale (clipped beyond), grey for NaN."""
    t = np.clip(values / scale, -1.0, 1.0) if scale > 0 else np.where(np.isnan(values), np.nan, 0.0)
    end = np.where((t >= 0)[..., None], np.array(RED, float), np.array(BLUE, float))
    white = np.array(WHITE, float)
    rgb = white + np.abs(t)[..., None] * (end - white)
    rgb = np.where(np.isnan(t)[..., None], np.array(MISSING, float), rgb)
    return np.rint(rgb).astype(np.uint8)


# --------------------------------------------------------------------------- terminal


def terminal_heatmap(selection: Selection, width: int, height: int) -> list[Any]:
    """Rich Text lines: the picture (at most `width` columns, `height` lines) and a legend of the scale."""
    from rich.color import Color
    from rich.style import Style
    from rich.text import Text

    picture = heatmap(selection, max_rows=2 * height, max_cols=width)
    rgb = colours(picture.means, picture.scale)
    styles: dict[tuple[int, ...], Any] = {}

    def style(top: np.ndarray, bottom: np.ndarray | None) -> Any:
        key = (*top, *(bottom if bottom is not None else ()))
        if key not in styles:
            styles[key] = Style(
                color=Color.from_rgb(*top), bgcolor=Color.from_rgb(*bottom) if bottom is not None else None
            )
        return styles[key]

    lines = []
    for row in range(0, rgb.shape[0], 2):
        line = Text()
        for col in range(rgb.shape[1]):
            below = rgb[row + 1, col] if row + 1 < rgb.shape[0] else None
            line.append(HALF_BLOCK, style(rgb[row, col], below))
        lines.append(line)
    lines.append(_legend(picture, style))
    return lines


def _legend(picture: Heatmap, style: Any) -> Any:
    from rich.text import Text

    legend = Text()
    if np.isnan(picture.means).all():
        legend.append("█", style(np.array(MISSING), None))
        legend.append(" no finite value")
    elif picture.scale == 0:
        legend.append("█", style(colours(np.zeros(1), 0)[0], None))
        legend.append(" all values are 0")
    else:
        steps = colours(np.linspace(-picture.scale, picture.scale, LEGEND_CELLS), picture.scale)
        legend.append(f"{-picture.scale:.4g} ")
        for rgb in steps:
            legend.append("█", style(rgb, None))
        legend.append(f" {picture.scale:+.4g}")
    rows, cols = picture.block
    block = "one value" if rows == cols == 1 else f"the mean of {rows}×{cols} values"
    missing = "; grey: no finite value" if np.isnan(picture.means).any() else ""
    legend.append(f"   white = 0; each cell is {block}{missing}")
    return legend


def color_system() -> str:
    """Truecolor where the terminal says it has it (COLORTERM), else the 256-colour palette every terminal has."""
    return "truecolor" if os.environ.get("COLORTERM", "").lower() in ("truecolor", "24bit") else "256"


def print_lines(lines: list[Any]) -> None:
    """Always in colour (a heatmap without colour is nothing), also when piped (`| less -R`), whatever NO_COLOR."""
    from rich.console import Console

    out = Console(force_terminal=True, no_color=False, color_system=color_system(), highlight=False, soft_wrap=True)  # type: ignore[arg-type]
    for line in lines:
        out.print(line)


# --------------------------------------------------------------------------- PNG


def require_pillow() -> None:
    """Fail before any work when Pillow is missing: it is an optional extra."""
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        raise UsageError(INSTALL_HINT) from None


def is_filter_bank(selection: Selection) -> bool:
    """A convolution weight (out, in, kh, kw) whose filters can be seen as images: in = 1 (grey) or 3 (RGB)."""
    shape = selection.selected.shape
    return len(shape) == 4 and shape[1] in (1, 3) and shape[0] > 0 and shape[2] * shape[3] > 0


def write_png(selection: Selection, path: str) -> str:
    """Write the picture of one selection; returns a one-line description of it."""
    from PIL import Image, PngImagePlugin

    refuse_overwrite(path, [selection])
    if is_filter_bank(selection):
        if readable_dtype(selection).kind == "c":
            raise UsageError(f"{selection.file}: {selection.label}: a picture needs real values")
        weights = printable(read(selection.tensor, selection.selected)).astype(np.float64)
        pixels = filter_grid(weights)
        out, in_channels = weights.shape[:2]
        description = f"{out} filters of {weights.shape[2]}×{weights.shape[3]}, {'RGB' if in_channels == 3 else 'grey'}"
        description += ", each scaled to its own max |x|"
    else:
        picture = heatmap(selection, PNG_MAX_CELLS, PNG_MAX_CELLS)
        rgb = colours(picture.means, picture.scale)
        scale = max(1, PNG_TARGET // max(rgb.shape[:2]))
        pixels = rgb.repeat(scale, axis=0).repeat(scale, axis=1)
        rows, cols = picture.block
        description = f"heatmap, white = 0, red = {picture.scale:+.6g}, blue = {-picture.scale:.6g}"
        description += f", each cell the mean of {rows}×{cols} values" if rows * cols > 1 else ""
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", escape(f"{selection.file}: {selection.label}"))
    info.add_text("Description", description)
    try:
        Image.fromarray(np.ascontiguousarray(pixels)).save(path, format="PNG", pnginfo=info)
    except OSError as error:
        raise FileError(path, (error.strerror or str(error)).lower()) from None
    return f"{pixels.shape[1]}×{pixels.shape[0]} px: {description}"


def filter_grid(weights: np.ndarray) -> np.ndarray:
    """(out, in, kh, kw) filters as tiles in a near-square grid, one per output channel, scaled up (nearest).

    Each filter is scaled to its own max |x|, so a weak filter still shows its pattern: one input channel uses the
    diverging palette; three are the filter's R, G and B, mid-grey at zero (the "viewing features" picture).
    """
    out, in_channels, kh, kw = weights.shape
    zoom = max(1, TILE_TARGET // max(kh, kw))
    tile_h, tile_w = kh * zoom, kw * zoom
    grid_cols = math.ceil(math.sqrt(out))
    grid_rows = math.ceil(out / grid_cols)
    canvas = np.empty(
        (grid_rows * (tile_h + TILE_GAP) + TILE_GAP, grid_cols * (tile_w + TILE_GAP) + TILE_GAP, 3), np.uint8
    )
    canvas[...] = TILE_BACKGROUND
    for k in range(out):
        w = weights[k]
        finite = np.abs(w[np.isfinite(w)])
        scale = float(finite.max()) if finite.size else 0.0
        if in_channels == 1:
            tile = colours(w[0], scale)
        else:
            unit = np.clip(0.5 + 0.5 * w.transpose(1, 2, 0) / (scale or 1.0), 0.0, 1.0)
            tile = np.rint(np.where(np.isnan(unit), 0.5, unit) * 255).astype(np.uint8)
        row, col = divmod(k, grid_cols)
        top, left = TILE_GAP + row * (tile_h + TILE_GAP), TILE_GAP + col * (tile_w + TILE_GAP)
        canvas[top : top + tile_h, left : left + tile_w] = tile.repeat(zoom, axis=0).repeat(zoom, axis=1)
    return canvas
