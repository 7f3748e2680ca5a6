"""The files the simulated MixMonitor writes: RIFF/WAVE, 8 kHz, mono, 16-bit, like Asterisk's
`wav` format (`format_wav`).

`MonitorFile` writes one as MixMonitor does: the file is created with a header whose sizes
are zero, audio is appended through a buffer (stdio's, in Asterisk) as the conversation goes,
and only when the file is closed are the buffered last frames written and the header's sizes
filled in (`format_wav.c`, `wav_close` -> `update_header`). Until then the file on disk is
shorter than it will be, and its header is wrong: a reader that takes it early stores a
file that then changes under it.

A conversation is two voices taking turns: the caller as a 440 Hz tone, the agent as a 620 Hz
tone, each phrase a little over a second with a short pause, so a file has the level changes
and silences of speech and both parties are audible. Nobody bridged means a header only:
44 bytes, as `ari-traces/queue-caller-gives-up-missed.json` found on a real Asterisk.
"""

from __future__ import annotations

import functools
import math
import struct
import sys
from array import array
from pathlib import Path
from typing import BinaryIO

SAMPLE_RATE = 8000
HEADER_BYTES = 44
_PHRASE = 1.3  # seconds one party speaks before the other answers
_PAUSE = 0.2
_VOICES = (440.0, 620.0)
_AMPLITUDE = 6000  # about -15 dBFS: clearly audible, far from clipping


def conversation(seconds: float, *, start: int = 0) -> bytes:
    """`seconds` of two alternating voices as 16-bit little-endian PCM samples, going on
    from sample `start` of the conversation."""
    total = max(0, round(seconds * SAMPLE_RATE))
    block = _block()
    skip = 2 * start % len(block)
    repeats = -(-(skip + 2 * total) // len(block))
    return (block * repeats)[skip : skip + 2 * total]


@functools.cache
def _block() -> bytes:
    """Two turns of conversation as little-endian PCM, computed once: a thousand calls
    ending together must not each spend milliseconds of the simulator's loop on sines."""
    turn = _PHRASE + _PAUSE
    # Both voices complete whole cycles in two turns (3 s), so one block tiles seamlessly.
    block_length = round(2 * turn * SAMPLE_RATE)
    block = array("h", bytes(2 * block_length))
    for index in range(block_length):
        moment = index / SAMPLE_RATE
        phase = moment % turn
        if phase >= _PHRASE:
            continue
        voice = _VOICES[int(moment // turn) % 2]
        fade = min(1.0, phase / 0.02, (_PHRASE - phase) / 0.02)  # no clicks at phrase edges
        block[index] = int(_AMPLITUDE * fade * math.sin(2 * math.pi * voice * moment))
    if sys.byteorder == "big":
        block.byteswap()  # WAV samples are little-endian
    return block.tobytes()


BUFFER_BYTES = 8192  # written only at close: stdio's buffer holds the last frames until then


class MonitorFile:
    """One file MixMonitor has open: created now, appended to, finished by `close`."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)  # MixMonitor creates the directory too
        self.path = path
        self._handle: BinaryIO | None = path.open("wb")
        self._handle.write(_header(0))
        self._handle.flush()
        self._samples = 0  # written or buffered, for the voices to go on where they were
        self._buffer = b""

    @property
    def open(self) -> bool:
        return self._handle is not None

    def add(self, seconds: float) -> None:
        """`seconds` more of the conversation; all but the last `BUFFER_BYTES` reach disk."""
        if self._handle is None:
            return
        count = max(0, round(seconds * SAMPLE_RATE))
        self._buffer += conversation(count / SAMPLE_RATE, start=self._samples)
        self._samples += count
        if len(self._buffer) > BUFFER_BYTES:
            cut = len(self._buffer) - BUFFER_BYTES
            self._handle.write(self._buffer[:cut])
            self._handle.flush()
            self._buffer = self._buffer[cut:]

    def close(self) -> int:
        """Write what is buffered, fill in the header, close; the file's size."""
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.write(self._buffer)
            self._buffer = b""
            handle.seek(0)
            handle.write(_header(2 * self._samples))
            handle.close()
        return 2 * self._samples + HEADER_BYTES


def _header(data_bytes: int) -> bytes:
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, SAMPLE_RATE, 2 * SAMPLE_RATE, 2, 16)
        + b"data"
        + struct.pack("<I", data_bytes)
    )
