"""The files the simulated MixMonitor writes: RIFF/WAVE, 8 kHz, mono, 16-bit, like Asterisk's
`wav` format (`format_wav`).

A conversation is two voices taking turns: the caller as a 440 Hz tone, the agent as a 620 Hz
tone, each phrase a little over a second with a short pause, so a file has the level changes
and silences of speech and both parties are audible. Nobody bridged means a header only:
44 bytes, as `ari-traces/queue-caller-gives-up-missed.json` found on a real Asterisk.
"""

from __future__ import annotations

import functools
import math
import sys
import wave
from array import array
from pathlib import Path

SAMPLE_RATE = 8000
HEADER_BYTES = 44
_PHRASE = 1.3  # seconds one party speaks before the other answers
_PAUSE = 0.2
_VOICES = (440.0, 620.0)
_AMPLITUDE = 6000  # about -15 dBFS: clearly audible, far from clipping


def conversation(seconds: float) -> bytes:
    """`seconds` of two alternating voices as 16-bit little-endian PCM samples."""
    total = max(0, round(seconds * SAMPLE_RATE))
    block = _block()
    repeats = -(-2 * total // len(block))
    return (block * repeats)[: 2 * total]


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


def write_recording(path: Path, seconds: float) -> int:
    """Write `seconds` of conversation (0: the header alone) to `path`; return its size."""
    path.parent.mkdir(parents=True, exist_ok=True)  # MixMonitor creates the directory too
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(conversation(seconds))
    return path.stat().st_size
