"""Depth x step heatmaps and depth profiles: cells coloured with numpy, text and PNG by Pillow.

An overview that scales with depth: one row per watched tensor (execution order, input at the
top, labelled ``net.1 (ReLU)``), one column per logging step, a colour per value, a red frame
around the cells where an alert on that figure was active, and the labels of alerted rows in red
with a ``!``. The canvas is a palette image (one byte per pixel): the cells, frames and bars are
numpy slices; text is Pillow's default font (``ImageFont.load_default(size=FONT_SIZE)``, Aileron),
anti-aliased into a few shades of its colour and cached per string; ``Image.png`` encodes with
Pillow. The heatmaps are about 430 pixels wide with 16-pixel text, so that TensorBoard's cards,
which scale an image down to their width (about 340 pixels), still show the labels at about 13.

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

import functools
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont

__all__ = ["FONT_SIZE", "Image", "heatmap", "profile", "sequential", "diverging", "text_mask"]

#: text size in pixels (the images are drawn at this size and shown scaled to the card width)
FONT_SIZE = 16
# palette indices of the fixed colours; text shades from _SHADE on; the colour map fills _CMAP..255
WHITE, BLACK, GREY, RED, LIGHT, DARK = range(6)
_FIXED = np.array(
    [[255, 255, 255], [20, 20, 20], [200, 200, 200], [220, 0, 0], [235, 235, 235], [110, 110, 110]], dtype=np.uint8
)
_SHADES = 7  # anti-aliased text: 7 shades from white to the text colour
_SHADE = {BLACK: 8, DARK: 8 + (_SHADES + 1), RED: 8 + 2 * (_SHADES + 1)}  # index of each text colour's shade 0
_CMAP = 32
_LEVELS = 256 - _CMAP
#: viridis-like anchors (dark blue -> green -> yellow): perceptually ordered, readable in grey
_SEQUENTIAL = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=float)
#: blue -> white -> orange-brown, for signed figures (log ratio of std to its reference)
_DIVERGING = np.array([[33, 102, 172], [146, 197, 222], [247, 247, 247], [244, 165, 130], [178, 24, 43]], dtype=float)
MARGIN = 6  # margin
GRID = 320  # the heat grid's width in pixels (cells 3 to 16 pixels wide)
MIN_WIDTH = 400


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


@functools.cache
def _font(size: int) -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, int, int]:
    """Pillow's default font at ``size`` pixels (Pillow >= 10.1), the top and bottom of its ink."""
    font = ImageFont.load_default(size=size)
    _, top, _, bottom = font.getbbox("Hg|()")
    return font, int(top), int(bottom)


@functools.lru_cache(maxsize=1024)
def text_mask(text: str, size: int = FONT_SIZE) -> np.ndarray:
    """Shades ``0`` (none) to ``7`` (full) of ``text`` drawn in Pillow's default font: ``[line height, width]``.

    Example:
        >>> m = text_mask("net.1 (ReLU)")
        >>> m.shape[0] == text_mask("x").shape[0], int(m.max()), m.shape[1] > text_mask("net.1").shape[1]
        (True, 7, True)
    """
    font, top, bottom = _font(size)
    canvas = PILImage.new("L", (max(1, math.ceil(font.getlength(text))) + 1, bottom))
    ImageDraw.Draw(canvas).text((0, 0), text, fill=255, font=font)
    coverage = np.asarray(canvas, dtype=np.uint16)[top:]
    mask = ((coverage * _SHADES + 127) // 255).astype(np.uint8)
    mask.setflags(write=False)
    return mask


def text_width(text: str) -> int:
    return int(text_mask(text).shape[1])


#: height of one line of text, and of one heatmap row (a 1-pixel gap below)
LINE = int(text_mask("Hg").shape[0])
ROW = LINE + 2
#: where the row labels start (after the ``!`` of alerted rows)
INDENT = text_width("! ")


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
        """PNG file bytes (palette PNG, written by Pillow)."""
        pixels = np.ascontiguousarray(self.pixels, dtype=np.uint8)
        img = PILImage.frombytes("P", (self.width, self.height), pixels.tobytes())
        img.putpalette(np.ascontiguousarray(self.palette, dtype=np.uint8).tobytes())
        out = io.BytesIO()
        img.save(out, format="PNG", compress_level=1)
        return out.getvalue()


@functools.cache
def _palette_of(signed: bool) -> np.ndarray:
    """The palette of a heatmap (``signed``: the diverging colours), computed once (read-only)."""
    palette = _palette(diverging() if signed else sequential())
    palette.setflags(write=False)
    return palette


def _palette(colours: np.ndarray) -> np.ndarray:
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(_FIXED)] = _FIXED
    t = np.arange(_SHADES + 1)[:, None] / _SHADES
    for colour, start in _SHADE.items():  # shade 0 is white, shade 7 the colour
        palette[start : start + _SHADES + 1] = np.round(255 * (1 - t) + _FIXED[colour] * t)
    palette[_CMAP:] = colours
    return palette


@functools.lru_cache(maxsize=1024)
def _ink(text: str, colour: int) -> tuple[np.ndarray, np.ndarray]:
    """``text``'s palette indices in ``colour`` and where it has ink (cached: most texts recur in every image)."""
    mask = text_mask(text)
    pixels, inked = mask + np.uint8(_SHADE[colour]), mask > 0
    pixels.setflags(write=False)
    inked.setflags(write=False)
    return pixels, inked


def _text(canvas: np.ndarray, text: str, x: int, y: int, colour: int = BLACK) -> None:
    """Draw ``text`` (on white) with its top-left corner at ``(x, y)``, clipped to the canvas."""
    pixels, inked = _ink(text, colour)
    h, w = min(pixels.shape[0], canvas.shape[0] - y), min(pixels.shape[1], canvas.shape[1] - x)
    if h > 0 and w > 0:
        np.copyto(canvas[y : y + h, x : x + w], pixels[:h, :w], where=inked[:h, :w])


def _wrap(text: str, width: int) -> list[str]:
    """Greedy word wrap of ``text`` into lines at most ``width`` pixels wide (a longer word keeps its line)."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and text_width(f"{lines[-1]} {word}") <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines


def _header(canvas: np.ndarray, lines: Sequence[tuple[str, int]]) -> None:
    for i, (line, colour) in enumerate(lines):
        _text(canvas, line, MARGIN, MARGIN + i * LINE, colour)


def _levels(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Palette indices of values (NaN -> GREY; infinities take the end colours: a std of 0 is the lowest scale)."""
    span = vmax - vmin if vmax > vmin else 1.0
    with np.errstate(invalid="ignore"):
        t = np.clip((values - vmin) / span, 0.0, 1.0)
    idx = _CMAP + np.round(np.nan_to_num(t) * (_LEVELS - 1)).astype(np.int64)
    return np.where(np.isnan(values), GREY, idx).astype(np.uint8)


def _range(values: np.ndarray, vmin: float | None, vmax: float | None, signed: bool) -> tuple[float, float]:
    """The colour range: given ends, else the finite values' range (``signed``: symmetric around 0)."""
    finite = values[np.isfinite(values)]
    if signed:
        bound = float(np.abs(finite).max()) if finite.size else 1.0
        bound = bound if bound > 0 else 1.0
        return (-bound if vmin is None else vmin), (bound if vmax is None else vmax)
    lo = float(finite.min()) if vmin is None and finite.size else (0.0 if vmin is None else vmin)
    hi = float(finite.max()) if vmax is None and finite.size else (1.0 if vmax is None else vmax)
    return lo, hi


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _labels(rows: Sequence[str], alerted_rows: Sequence[bool] | None) -> tuple[np.ndarray, list[bool]]:
    """The row labels drawn one under the other (``[rows * ROW, width]``), and which rows are alerted."""
    alerted = list(alerted_rows) if alerted_rows is not None else [False] * len(rows)
    return _label_column(tuple(rows), tuple(alerted)), alerted


@functools.lru_cache(maxsize=8)
def _label_column(rows: tuple[str, ...], alerted: tuple[bool, ...], limit: int = 40) -> np.ndarray:
    """Row labels (long names cut at the front), alerted ones in red after a ``!``; cached: the images share them."""
    labels = [r if len(r) <= limit else ".." + r[-(limit - 2) :] for r in rows]
    column = np.full((len(rows) * ROW, MARGIN + INDENT + max(map(text_width, labels), default=0)), WHITE, np.uint8)
    for r, (text, bad) in enumerate(zip(labels, alerted, strict=True)):
        if bad:
            _text(column, "!", MARGIN, r * ROW, RED)
        _text(column, text, MARGIN + INDENT, r * ROW, RED if bad else BLACK)
    column.setflags(write=False)
    return column


def _frame(grid: np.ndarray, y0: int, x0: int, h: int, w: int, colour: int) -> None:
    grid[y0, x0 : x0 + w] = colour
    grid[y0 + h - 1, x0 : x0 + w] = colour
    grid[y0 : y0 + h, x0] = colour
    grid[y0 : y0 + h, x0 + w - 1] = colour


def _legend(canvas: np.ndarray, y: int, lo: str, hi: str) -> None:
    """The colour bar between its end values, and what grey means (on the next line if it does not fit)."""
    width = canvas.shape[1]
    bar_x = MARGIN + text_width(lo) + 4
    note = "grey: not measured"
    room = width - bar_x - text_width(hi) - 4 - MARGIN  # for the bar, and the note if the bar keeps 96 pixels
    beside = room - text_width(note) - 8
    bar_w = max(48, min(200, beside if beside >= 96 else room))
    canvas[y + 4 : y + LINE - 4, bar_x : bar_x + bar_w] = (
        _CMAP + np.round(np.linspace(0, _LEVELS - 1, bar_w)).astype(np.uint8)
    )[None, :]
    _text(canvas, lo, MARGIN, y)
    _text(canvas, hi, bar_x + bar_w + 4, y)
    x = bar_x + bar_w + 12 + text_width(hi)
    fits = x + text_width(note) <= width - MARGIN
    _text(canvas, note, x if fits else MARGIN, y if fits else y + LINE, DARK)


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
) -> Image:
    """A depth x step heatmap: ``values[row, column]`` (NaN: not measured, drawn grey).

    Args:
        values: ``[len(rows), len(steps)]``.
        rows: row labels (``"net.1 (ReLU)"``), top to bottom.
        steps: the logging step of each column.
        title: drawn above the map (wrapped to the image width).
        vmin, vmax: colour range (default: the finite values' range; ``signed``: symmetric around 0).
        signed: a diverging colour map centred on 0.
        marked: ``[rows, steps]`` booleans: cells framed in red (an alert on this figure was active).
        alerted_rows: rows whose label is drawn in red with a leading ``!``.
        legend: formats the colour bar's end values.

    Example:
        >>> img = heatmap(np.ones((3, 4)), ["a", "b", "c"], [0, 1, 2, 3], "t")
        >>> cells = img.pixels[img.pixels >= _CMAP]
        >>> len(cells) >= 3 * 4   # every cell is coloured
        True
    """
    values = np.asarray(values, dtype=float)
    n_rows, n_cols = values.shape
    lo, hi = _range(values, vmin, vmax, signed)
    labels, _ = _labels(rows, alerted_rows)
    left = labels.shape[1] + 8
    cell_w = int(max(3, min(16, GRID // max(n_cols, 1))))
    width = max(left + cell_w * n_cols + MARGIN, MIN_WIDTH)
    first, last = (steps[0], steps[-1]) if len(steps) else (0, 0)
    axis = f"rows: watched tensors, input first; columns: steps {first}-{last}"
    head = [(t, BLACK) for t in _wrap(title, width - 2 * MARGIN)] + [(t, DARK) for t in _wrap(axis, width - 2 * MARGIN)]
    top = MARGIN + len(head) * LINE + 6
    canvas = np.full((top + n_rows * ROW + 3 * LINE + 2 * MARGIN, width), WHITE, dtype=np.uint8)
    _header(canvas, head)
    block = canvas[top : top + n_rows * ROW, left : left + cell_w * n_cols]
    cells = np.repeat(_levels(values, lo, hi), cell_w, axis=1)  # a row of cells, cell_w pixels each
    block.reshape(n_rows, ROW, n_cols * cell_w)[:] = cells[:, None, :]  # ROW pixels high
    block[ROW - 1 :: ROW, :] = WHITE  # a 1-pixel gap between rows
    if marked is not None:
        for r, c in zip(*np.nonzero(np.asarray(marked, dtype=bool)), strict=True):
            _frame(canvas, top + int(r) * ROW, left + int(c) * cell_w, ROW - 1, cell_w, RED)
    canvas[top : top + n_rows * ROW, : labels.shape[1]] = labels
    y = top + n_rows * ROW + 2  # step axis: first, middle and last step
    for c in sorted({0, n_cols // 2, n_cols - 1}) if n_cols else []:
        text = str(steps[c])
        x = left + c * cell_w + cell_w // 2 - text_width(text) // 2
        _text(canvas, text, min(max(x, left), width - text_width(text) - 2), y, DARK)
    _legend(canvas, y + LINE + 4, legend(lo), legend(hi))
    return Image(canvas, _palette_of(signed))


def profile(
    values: np.ndarray,
    rows: Sequence[str],
    title: str,
    notes: Sequence[str] | None = None,
    alerted_rows: Sequence[bool] | None = None,
    log10: bool = True,
) -> Image:
    """A depth profile: one horizontal bar per row (``log10`` of the value by default), the value and a note.

    The parts of a note separated by two spaces are drawn as aligned columns.

    Example:
        >>> img = profile(np.array([1.0, 10.0, np.nan]), ["a", "b", "c"], "std")
        >>> img.width >= MIN_WIDTH and img.height == MARGIN + 2 * LINE + 6 + 3 * ROW + MARGIN
        True
    """
    values = np.asarray(values, dtype=float)
    n = len(values)
    labels, alerted = _labels(rows, alerted_rows)
    notes = list(notes) if notes is not None else [""] * n
    with np.errstate(divide="ignore", invalid="ignore"):
        shown = np.log10(values) if log10 else values
    ok = np.isfinite(shown)
    lo = float(shown[ok].min()) if ok.any() else 0.0
    hi = float(shown[ok].max()) if ok.any() else 1.0
    lo = min(lo, hi - 1.0) if log10 else min(lo, 0.0)
    x0 = labels.shape[1] + 8
    bar_w = 80
    numbers = [_fmt(v) if math.isfinite(v) else "-" for v in values]
    x1 = x0 + bar_w + 6 + max((text_width(t) for t in numbers), default=0)  # numbers end here, notes follow
    cells = [note.split("  ") for note in notes]  # a note's parts, separated by two spaces, are aligned columns
    columns = [max(text_width(c[i]) for c in cells if len(c) > i) + 8 for i in range(max(map(len, cells), default=0))]
    width = max(x1 + 8 + sum(columns) + MARGIN, MIN_WIDTH)
    axis = f"bars: {'log scale' if log10 else 'linear scale'}, {f'1e{lo:+.0f}' if log10 else _fmt(lo)} at the left edge"
    head = [(t, BLACK) for t in _wrap(title, width - 2 * MARGIN)] + [(t, DARK) for t in _wrap(axis, width - 2 * MARGIN)]
    top = MARGIN + len(head) * LINE + 6
    canvas = np.full((top + n * ROW + MARGIN, width), WHITE, dtype=np.uint8)
    _header(canvas, head)
    span = hi - lo if hi > lo else 1.0
    canvas[top : top + n * ROW, : labels.shape[1]] = labels
    for r in range(n):
        y = top + r * ROW
        canvas[y : y + ROW - 1, x0 : x0 + bar_w] = LIGHT
        if ok[r]:
            length = int(round((shown[r] - lo) / span * (bar_w - 1))) + 1
            canvas[y + 2 : y + ROW - 3, x0 : x0 + length] = RED if alerted[r] else _CMAP + _LEVELS // 4
        _text(canvas, numbers[r], x1 - text_width(numbers[r]), y, RED if alerted[r] else BLACK)
        for i, cell in enumerate(cells[r]):
            _text(canvas, cell, x1 + 8 + sum(columns[:i]), y, RED if alerted[r] else BLACK)
    return Image(canvas, _palette_of(False))
