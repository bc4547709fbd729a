"""A 5x7 pixel bitmap font for printable ASCII, to label images without matplotlib or Pillow.

Each glyph is 7 rows of 5 pixels, drawn for this project; ``text_mask`` renders a line of text as
a boolean array (1 pixel of spacing between glyphs, any integer ``scale``). Characters outside
printable ASCII are drawn as ``?``.

Example:
    >>> m = text_mask("Hi")
    >>> m.shape
    (7, 11)
    >>> print("\\n".join("".join("#" if v else "." for v in row) for row in text_mask("L")))
    #....
    #....
    #....
    #....
    #....
    #....
    #####
    >>> text_mask("ab", scale=2).shape
    (14, 22)
"""

from __future__ import annotations

import numpy as np

__all__ = ["GLYPH_WIDTH", "GLYPH_HEIGHT", "text_mask", "text_width"]

GLYPH_WIDTH = 5
GLYPH_HEIGHT = 7
#: 14 hex digits (7 rows of 5 bits, most significant bit on the left) per character, from " " (32) to "~" (126)
_TABLE = (
    "00000000000000040404040400040a0a00000000000a1f0a0a0a1f0a040f140e051e04181902040813030c12140815120d"
    "0404000000000002040808080402080402020204080004150e1504000004041f040400000000000c04080000001f000000"
    "00000000000c0c000102040810000e11131519110e040c040404040e0e11010204081f1f02040201110e02060a121f0202"
    "1f101e0101110e0608101e11110e1f0102040808080e11110e11110e0e11110f01020c000c0c000c0c00000c0c000c0408"
    "0204081008040200001f001f0000080402010204080e1101020400040e11171517100e0e11111f1111111e11111e11111e"
    "0e11101010110e1c12111111121c1f10101e10101f1f10101e1010100e11101711110f1111111f1111110e04040404040e"
    "0702020202120c111214181412111010101010101f111b1515111111111119151311110e11111111110e1e11111e101010"
    "0e11111115120d1e11111e1412110f10100e01011e1f0404040404041111111111110e11111111110a041111111515150a"
    "11110a040a111111110a040404041f01020408101f0e08080808080e001008040201000e02020202020e040a1100000000"
    "0000000000001f0804000000000000000e010f110f1010161911111e00000e1010110e01010d1311110f00000e111f100e"
    "0609081c080808000f11110f010e1010161911111104000c0404040e0200060202120c101012141814120c04040404040e"
    "00001a151511110000161911111100000e1111110e00001e111e101000000d130f01010000161910101000000f100e011e"
    "08081c080809060000111111130d00001111110a040000111115150a0000110a040a11000011110f010e00001f0204081f"
    "02040408040402040404040404040804040204040800000815020000"
)


def _glyphs() -> np.ndarray:
    rows = np.array([int(_TABLE[i : i + 2], 16) for i in range(0, len(_TABLE), 2)], dtype=np.uint8)
    bits = (rows[:, None] >> np.arange(GLYPH_WIDTH - 1, -1, -1)) & 1
    return bits.reshape(-1, GLYPH_HEIGHT, GLYPH_WIDTH).astype(bool)


_GLYPHS = _glyphs()


def text_width(text: str, scale: int = 1) -> int:
    """Width in pixels of ``text_mask(text, scale)``.

    Example:
        >>> text_width("abc"), text_width("")
        (17, 0)
    """
    return max(0, len(text) * (GLYPH_WIDTH + 1) - 1) * scale


def text_mask(text: str, scale: int = 1) -> np.ndarray:
    """Boolean ``[7 * scale, text_width(text, scale)]`` array, True where the text is drawn."""
    codes = np.array([ord(c) if 32 <= ord(c) <= 126 else ord("?") for c in text], dtype=np.int64) - 32
    if not len(codes):
        return np.zeros((GLYPH_HEIGHT * scale, 0), dtype=bool)
    glyphs = np.zeros((len(codes), GLYPH_HEIGHT, GLYPH_WIDTH + 1), dtype=bool)
    glyphs[:, :, :GLYPH_WIDTH] = _GLYPHS[codes]
    mask = glyphs.transpose(1, 0, 2).reshape(GLYPH_HEIGHT, -1)[:, :-1]
    if scale > 1:
        mask = mask.repeat(scale, axis=0).repeat(scale, axis=1)
    return mask
