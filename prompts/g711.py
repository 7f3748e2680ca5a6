"""G.711 µ-law and A-law in numpy (ITU-T G.711), for the `.ulaw` and `.alaw` prompt files.

`audioop` did this until Python 3.13 removed it. The encoders follow the reference coder
that `audioop` and Asterisk's own tables use (`main/ulaw.c`, `main/alaw.c` index their
tables with the sample shifted right, i.e. floor division), so a prompt encoded here is
byte for byte what `audioop.lin2ulaw` / `lin2alaw` produced.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

_ULAW_BIAS = 0x21  # on the 14-bit magnitude: 0x84 on 16 bits
_ULAW_CLIP = 8159  # largest 14-bit magnitude that still fits after the bias
_ALAW_POSITIVE_MASK = 0xD5  # even bits inverted, sign bit set for positive samples
_ALAW_NEGATIVE_MASK = 0x55


def _segment(magnitude: NDArray[np.int32], first_end: int) -> NDArray[np.int32]:
    """The segment (0..8) of each magnitude: segment i ends at `((first_end + 1) << i) - 1`
    (0x3F, 0x7F, 0xFF, ... for µ-law); 8 is past the last one."""
    ends = np.array([((first_end + 1) << i) - 1 for i in range(8)], dtype=np.int32)
    return np.searchsorted(ends, magnitude, side="left").astype(np.int32)


def _as_int16(samples: NDArray[np.integer]) -> NDArray[np.int32]:
    if samples.dtype != np.int16:
        raise TypeError(f"G.711 encodes 16-bit signed samples, not {samples.dtype}")
    return samples.astype(np.int32)


def lin2ulaw(samples: NDArray[np.integer]) -> NDArray[np.uint8]:
    """µ-law bytes for 16-bit signed samples."""
    value = _as_int16(samples) >> 2  # 14-bit, rounding toward minus infinity like the tables
    negative = value < 0
    magnitude = np.minimum(np.where(negative, -value, value), _ULAW_CLIP) + _ULAW_BIAS
    segment = _segment(magnitude, 0x3F)
    mantissa = (magnitude >> (segment + 1)) & 0x0F
    code = np.where(segment >= 8, 0x7F, (segment << 4) | mantissa)
    mask = np.where(negative, 0x7F, 0xFF)
    return (code ^ mask).astype(np.uint8)


def lin2alaw(samples: NDArray[np.integer]) -> NDArray[np.uint8]:
    """A-law bytes for 16-bit signed samples."""
    value = _as_int16(samples) >> 3  # 13-bit
    negative = value < 0
    magnitude = np.where(negative, -value - 1, value)
    segment = _segment(magnitude, 0x1F)
    shift = np.where(segment < 2, 1, segment)
    mantissa = (magnitude >> shift) & 0x0F
    code = np.where(segment >= 8, 0x7F, (segment << 4) | mantissa)
    mask = np.where(negative, _ALAW_NEGATIVE_MASK, _ALAW_POSITIVE_MASK)
    return (code ^ mask).astype(np.uint8)


def ulaw2lin(codes: NDArray[np.uint8]) -> NDArray[np.int16]:
    """16-bit samples for µ-law bytes."""
    inverted = (~codes.astype(np.int32)) & 0xFF
    segment = (inverted & 0x70) >> 4
    magnitude = ((((inverted & 0x0F) << 3) + 0x84) << segment) - 0x84
    return np.where(inverted & 0x80, -magnitude, magnitude).astype(np.int16)


def alaw2lin(codes: NDArray[np.uint8]) -> NDArray[np.int16]:
    """16-bit samples for A-law bytes."""
    value = codes.astype(np.int32) ^ _ALAW_NEGATIVE_MASK
    segment = (value & 0x70) >> 4
    magnitude = (value & 0x0F) << 4
    magnitude = np.where(
        segment == 0,
        magnitude + 8,
        (magnitude + 0x108) << np.maximum(segment - 1, 0),
    )
    return np.where(value & 0x80, magnitude, -magnitude).astype(np.int16)
