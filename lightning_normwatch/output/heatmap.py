"""Depth x step heatmaps and depth profiles as PNG, in pure numpy (no matplotlib, no Pillow).

An overview that scales with depth: one row per watched tensor (execution order, input at the
top, labelled ``net.1 (ReLU)``), one column per logging step, a colour per value, a red frame
around the cells where an alert on that figure was active, and the labels of alerted rows in red
with a ``!``. Images are palette PNGs (one byte per pixel, written with ``zlib``), drawn at one
pixel per font pixel and enlarged ``zoom`` times, so they stay sharp when TensorBoard scales them.

Example:
    >>> import numpy as np
    >>> values = np.array([[0.0, 0.5], [1.0, np.nan]])
    >>> img = heatmap(values, ["input (batch)", "net.0 (Linear)"], [0, 10], "zeros", vmin=0, vmax=1)
    >>> img.pixels.ndim, img.pixels.dtype.name, img.palette.shape
    (2, 'uint8', (256, 3))
    >>> png = img.png()
    >>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .font import GLYPH_HEIGHT, text_mask, text_width

__all__ = ["Image", "heatmap", "profile", "png_bytes", "sequential", "diverging"]

# palette indices of the fixed colours; the colour map fills indices _CMAP.._CMAP + _LEVELS - 1
WHITE, BLACK, GREY, RED, LIGHT, DARK = range(6)
_FIXED = np.array(
    [[255, 255, 255], [20, 20, 20], [200, 200, 200], [220, 0, 0], [235, 235, 235], [110, 110, 110]], dtype=np.uint8
)
_CMAP, _LEVELS = 16, 240
#: viridis-like anchors (dark blue -> green -> yellow): perceptually ordered, readable in grey
_SEQUENTIAL = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=float)
#: blue -> white -> orange-brown, for signed figures (log ratio of std to its reference)
_DIVERGING = np.array([[33, 102, 172], [146, 197, 222], [247, 247, 247], [244, 165, 130], [178, 24, 43]], dtype=float)
ROW = GLYPH_HEIGHT + 2


def _ramp(anchors: np.ndarray, n: int) -> np.ndarray:
    x = np.linspace(0, len(anchors) - 1, n)
    i = np.minimum(x.astype(int), len(anchors) - 2)
    t = (x - i)[:, None]
    return np.round(anchors[i] * (1 - t) + anchors[i + 1] * t).astype(np.uint8)


def sequential(n: int = _LEVELS) -> np.ndarray:
    """``n`` RGB colours from dark blue (low) to yellow (high)."""
    return _ramp(_SEQUENTIAL, n)


def diverging(n: int = _LEVELS) -> np.ndarray:
    """``n`` RGB colours from blue (negative) through white (0) to red (positive)."""
    return _ramp(_DIVERGING, n)


def png_bytes(pixels: np.ndarray, palette: np.ndarray | None = None) -> bytes:
    """PNG file bytes of a ``[H, W]`` palette-index image (with ``palette``) or a ``[H, W, 3]`` RGB image.

    Example:
        >>> import zlib
        >>> data = png_bytes(np.zeros((2, 3, 3), dtype=np.uint8))
        >>> data[12:16], int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        (b'IHDR', 3, 2)
    """
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    height, width = pixels.shape[:2]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    color_type = 3 if palette is not None else 2
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    rows = pixels.reshape(height, -1)
    raw = np.zeros((height, rows.shape[1] + 1), dtype=np.uint8)  # filter byte 0 (none) before each row
    raw[:, 1:] = rows
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
    if palette is not None:
        out += chunk(b"PLTE", np.ascontiguousarray(palette, dtype=np.uint8).tobytes())
    return out + chunk(b"IDAT", zlib.compress(raw.tobytes(), 1)) + chunk(b"IEND", b"")


@dataclass
class Image:
    """A palette image: ``pixels`` ``[H, W]`` indices into ``palette`` ``[256, 3]``."""

    pixels: np.ndarray
    palette: np.ndarray

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    def png(self) -> bytes:
        return png_bytes(self.pixels, self.palette)


def _palette(colours: np.ndarray) -> np.ndarray:
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(_FIXED)] = _FIXED
    palette[_CMAP : _CMAP + _LEVELS] = colours
    return palette


def _text(canvas: np.ndarray, text: str, x: int, y: int, colour: int = BLACK) -> None:
    mask = text_mask(text)
    h, w = mask.shape
    w = max(0, min(w, canvas.shape[1] - x))
    if w and y + h <= canvas.shape[0]:
        canvas[y : y + h, x : x + w][mask[:, :w]] = colour


def _levels(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Palette indices of values (NaN -> GREY; infinities take the end colours: a std of 0 is the lowest scale)."""
    span = vmax - vmin if vmax > vmin else 1.0
    with np.errstate(invalid="ignore"):
        t = np.clip((values - vmin) / span, 0.0, 1.0)
    idx = _CMAP + np.round(np.nan_to_num(t) * (_LEVELS - 1)).astype(np.int64)
    return np.where(np.isnan(values), GREY, idx).astype(np.uint8)


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _label(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else ".." + text[-(limit - 2) :]


def _frame(grid: np.ndarray, y0: int, x0: int, h: int, w: int, colour: int) -> None:
    grid[y0, x0 : x0 + w] = colour
    grid[y0 + h - 1, x0 : x0 + w] = colour
    grid[y0 : y0 + h, x0] = colour
    grid[y0 : y0 + h, x0 + w - 1] = colour


def heatmap(
    values: np.ndarray,
    rows: Sequence[str],
    steps: Sequence[int],
    title: str,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    signed: bool = False,
    marked: np.ndarray | None = None,
    alerted_rows: Sequence[bool] | None = None,
    legend: Callable[[float], str] = _fmt,
    zoom: int = 2,
) -> Image:
    """A depth x step heatmap: ``values[row, column]`` (NaN: not measured, drawn grey).

    Args:
        values: ``[len(rows), len(steps)]``.
        rows: row labels (``"net.1 (ReLU)"``), top to bottom.
        steps: the logging step of each column.
        title: drawn above the map.
        vmin, vmax: colour range (default: the finite values' range; ``signed``: symmetric around 0).
        signed: a diverging colour map centred on 0.
        marked: ``[rows, steps]`` booleans: cells framed in red (an alert on this figure was active).
        alerted_rows: rows whose label is drawn in red with a leading ``!``.
        legend: formats the colour bar's end values.
        zoom: each pixel is drawn ``zoom`` x ``zoom``.

    Example:
        >>> img = heatmap(np.ones((3, 4)), ["a", "b", "c"], [0, 1, 2, 3], "t", zoom=1)
        >>> cells = img.pixels[img.pixels >= 16]
        >>> len(cells) >= 3 * 4   # every cell is coloured
        True
    """
    values = np.asarray(values, dtype=float)
    n_rows, n_cols = values.shape
    finite = values[np.isfinite(values)]
    if signed:
        bound = float(np.abs(finite).max()) if finite.size else 1.0
        bound = bound if bound > 0 else 1.0
        lo = -bound if vmin is None else vmin
        hi = bound if vmax is None else vmax
    else:
        lo = float(finite.min()) if vmin is None and finite.size else (0.0 if vmin is None else vmin)
        hi = float(finite.max()) if vmax is None and finite.size else (1.0 if vmax is None else vmax)
    alerted = list(alerted_rows) if alerted_rows is not None else [False] * n_rows
    labels = [("! " if a else "  ") + _label(r) for r, a in zip(rows, alerted, strict=True)]
    label_w = max((text_width(t) for t in labels), default=0) + 6
    cell_w = int(max(3, min(16, 360 // max(n_cols, 1))))
    grid_w = cell_w * n_cols
    left, top = 4 + label_w, 4 + 2 * ROW + 4
    bar_h = 8
    width = max(left + grid_w + 8, text_width(title) + 8, 260)
    height = top + n_rows * ROW + 2 * ROW + bar_h + 8
    canvas = np.full((height, width), WHITE, dtype=np.uint8)
    _text(canvas, title, 4, 4)
    first, last = (steps[0], steps[-1]) if len(steps) else (0, 0)
    _text(canvas, f"rows: watched tensors, input first; columns: steps {first}-{last}", 4, 4 + ROW, DARK)
    # cells
    idx = _levels(values, lo, hi)
    block = np.repeat(np.repeat(idx, ROW, axis=0), cell_w, axis=1)
    block[ROW - 1 :: ROW, :] = WHITE  # a 1-pixel gap between rows
    canvas[top : top + n_rows * ROW, left : left + grid_w] = block
    if marked is not None:
        for r, c in zip(*np.nonzero(np.asarray(marked, dtype=bool)), strict=True):
            _frame(canvas, top + int(r) * ROW, left + int(c) * cell_w, ROW - 1, cell_w, RED)
    for r, (text, bad) in enumerate(zip(labels, alerted, strict=True)):
        _text(canvas, text, 4, top + r * ROW + 1, RED if bad else BLACK)
    # step axis: first, middle and last step
    y = top + n_rows * ROW + 2
    if n_cols:
        ticks = sorted({0, n_cols // 2, n_cols - 1})
        for c in ticks:
            text = str(steps[c])
            x = left + c * cell_w + cell_w // 2 - text_width(text) // 2
            x = min(max(x, left), width - text_width(text) - 2)
            _text(canvas, text, x, y, DARK)
    # colour bar with its end values
    y += ROW + 2
    lo_text, hi_text = legend(lo), legend(hi)
    bar_x = 4 + text_width(lo_text) + 4
    bar_w = max(64, min(240, width - bar_x - text_width(hi_text) - 12))
    canvas[y : y + bar_h, bar_x : bar_x + bar_w] = (
        _CMAP + np.round(np.linspace(0, _LEVELS - 1, bar_w)).astype(np.uint8)
    )[None, :]
    _text(canvas, lo_text, 4, y)
    _text(canvas, hi_text, bar_x + bar_w + 4, y)
    _text(canvas, "grey: not measured", bar_x + bar_w + 8 + text_width(hi_text), y, DARK)
    pixels = canvas.repeat(zoom, axis=0).repeat(zoom, axis=1) if zoom > 1 else canvas
    return Image(pixels, _palette(diverging() if signed else sequential()))


def profile(
    values: np.ndarray,
    rows: Sequence[str],
    title: str,
    notes: Sequence[str] | None = None,
    alerted_rows: Sequence[bool] | None = None,
    log10: bool = True,
    zoom: int = 2,
) -> Image:
    """A depth profile: one horizontal bar per row (``log10`` of the value by default), the value and a note.

    Example:
        >>> img = profile(np.array([1.0, 10.0, np.nan]), ["a", "b", "c"], "std", zoom=1)
        >>> img.width > 0 and img.height == 4 + 2 * ROW + 3 * ROW + 4
        True
    """
    values = np.asarray(values, dtype=float)
    n = len(values)
    alerted = list(alerted_rows) if alerted_rows is not None else [False] * n
    notes = list(notes) if notes is not None else [""] * n
    labels = [("! " if a else "  ") + _label(r) for r, a in zip(rows, alerted, strict=True)]
    with np.errstate(divide="ignore", invalid="ignore"):
        shown = np.log10(values) if log10 else values
    ok = np.isfinite(shown)
    lo = float(shown[ok].min()) if ok.any() else 0.0
    hi = float(shown[ok].max()) if ok.any() else 1.0
    lo = min(lo, hi - 1.0) if log10 else min(lo, 0.0)
    label_w = max((text_width(t) for t in labels), default=0) + 6
    bar_w = 120
    texts = [f"{_fmt(v) if math.isfinite(v) else '-':>9} {note}" for v, note in zip(values, notes, strict=True)]
    width = 4 + label_w + bar_w + 6 + max((text_width(t) for t in texts), default=0) + 8
    width = max(width, text_width(title) + 8)
    top = 4 + 2 * ROW
    height = top + n * ROW + 4
    canvas = np.full((height, width), WHITE, dtype=np.uint8)
    _text(canvas, title, 4, 4)
    axis = "log scale" if log10 else "linear scale"
    _text(canvas, f"bars: {axis}, {f'1e{lo:+.0f}' if log10 else _fmt(lo)} at the left edge", 4, 4 + ROW, DARK)
    x0 = 4 + label_w
    span = hi - lo if hi > lo else 1.0
    for r in range(n):
        y = top + r * ROW
        _text(canvas, labels[r], 4, y + 1, RED if alerted[r] else BLACK)
        canvas[y : y + ROW - 1, x0 : x0 + bar_w] = LIGHT
        if ok[r]:
            length = int(round((shown[r] - lo) / span * (bar_w - 1))) + 1
            canvas[y + 1 : y + ROW - 2, x0 : x0 + length] = RED if alerted[r] else _CMAP + _LEVELS // 4
        _text(canvas, texts[r], x0 + bar_w + 6, y + 1, RED if alerted[r] else BLACK)
    pixels = canvas.repeat(zoom, axis=0).repeat(zoom, axis=1) if zoom > 1 else canvas
    return Image(pixels, _palette(sequential()))
