"""A progress bar on standard error for the long commands (sweep, verify, export).

Drawn only when standard error is a terminal: a cron job's log or a pipe gets the result
alone. Redrawn at most every `interval` seconds, and once more when the work is done.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

WIDTH = 30  # characters of the bar itself
INTERVAL = 0.1  # seconds between redraws: a sweep of 100,000 must not spend its time drawing


class ProgressBar:
    def __init__(
        self, what: str, stream: TextIO | None = None, *, interval: float = INTERVAL
    ) -> None:
        self._what = what
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = self._stream.isatty()
        self._interval = interval
        self._last = float("-inf")
        self._open = False  # a line is drawn and not yet ended

    def __call__(self, done: int, total: int) -> None:
        if not self._enabled:
            return
        finished = done >= total
        now = time.monotonic()
        if not finished and now - self._last < self._interval:
            return
        self._last = now
        share = min(done / total, 1.0) if total else 1.0
        filled = round(WIDTH * share)
        bar = "#" * filled + "." * (WIDTH - filled)
        self._stream.write(f"\r{self._what} [{bar}] {done:,}/{total:,}")
        self._open = True
        if finished:
            self._end()
        self._stream.flush()

    def _end(self) -> None:
        if self._open:
            self._stream.write("\n")
            self._stream.flush()
            self._open = False

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._end()  # an error message must not land at the end of a half-drawn bar
