"""How callrec's log lines look: text for people, or one JSON object a line for collectors.

Text is `time level logger: message`; under journald (`$JOURNAL_STREAM` names our standard
error) the time is left out, since the journal stamps every line itself, and each line
starts with its syslog priority (`<4>`), which journald takes as the entry's level.

JSON (`--log-format json`) is one object per line: `time` (ISO 8601 with offset), `level`,
`logger`, `message`, the call id when the line is about one call (`call_id`), any
structured `extra=` fields, and `exception` (the traceback, as text) when there is one.

Phone numbers are kept out of log lines where they are written (`flows.numbers.shown`
masks them); as a second line of defence anything that still looks like an international
number (`+` and eight or more digits) is masked in both formats.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final, TextIO

FORMATS: Final = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"
# The same pattern `callrec.events` refuses in an event: `+`, then 8 or more digits,
# optionally grouped by spaces or hyphens.
_E164_LIKE = re.compile(r"\+[0-9](?:[ -]?[0-9]){7,}")
MASK = "+<number>"
_CALL_ID = re.compile(r"^[0-9a-f]{32}$")
# What every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
_SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def mask_numbers(text: str) -> str:
    return _E164_LIKE.sub(MASK, text)


def call_id_of(record: logging.LogRecord) -> str | None:
    """The call a line is about: `extra={"call_id": ...}`, or the first argument of a
    message written as `"call %s: ..."` (the convention of agi/ and callrec/)."""
    given = getattr(record, "call_id", None)
    if isinstance(given, str):
        return given
    if isinstance(record.msg, str) and record.msg.startswith("call %s") and record.args:
        first = record.args[0] if isinstance(record.args, tuple) else None
        if isinstance(first, str) and _CALL_ID.match(first):
            return first
    return None


class TextFormatter(logging.Formatter):
    def __init__(self, *, journal: bool = False) -> None:
        super().__init__(JOURNAL_FORMAT if journal else TEXT_FORMAT)
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = mask_numbers(super().format(record))
        if self.journal:
            priority = _SYSLOG_PRIORITY.get(record.levelno, 6)
            # journald reads the priority of each line, continuation lines included.
            return "\n".join(f"<{priority}>{line}" for line in text.split("\n"))
        return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created).astimezone().isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": mask_numbers(record.getMessage()),
        }
        call_id = call_id_of(record)
        if call_id is not None:
            entry["call_id"] = call_id
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = _plain(value)
        if record.exc_info:
            entry["exception"] = mask_numbers(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = mask_numbers(record.exc_text)
        return json.dumps(entry, ensure_ascii=False, default=str)


def _plain(value: object) -> object:
    """An extra field as JSON can carry it; text is masked like the message."""
    if value is None or isinstance(value, bool | int | float):
        return value
    return mask_numbers(str(value))


def under_journal(stream: TextIO, env: Mapping[str, str]) -> bool:
    """Whether `stream` is connected to journald: systemd sets `$JOURNAL_STREAM` to the
    device and inode of the stream it gave the service (sd_journal_stream_fd(3))."""
    value = env.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        status = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return (status.st_dev, status.st_ino) == (int(device), int(inode))


def configure(
    log_format: str,
    level: int,
    *,
    stream: TextIO | None = None,
    env: Mapping[str, str] | None = None,
) -> logging.Handler:
    """Send every log line to `stream` (standard error) in `log_format`; returns the
    handler. Replaces handlers set up before."""
    env = os.environ if env is None else env
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(journal=under_journal(stream, env)))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # aiosqlite logs every statement at DEBUG: --debug is for our own messages.
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
    return handler


def announce(text: str) -> None:
    """A controller's start-up line: printed as is in text, a log entry in JSON, so that
    every line of a JSON log is an object."""
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        record = logging.getLogger("callrec").makeRecord(
            "callrec", logging.INFO, __file__, 0, text, (), None
        )
        for handler in root.handlers:
            handler.handle(record)  # even below the configured level: it is the banner
        return
    print(text, file=sys.stderr)


def sweep_summary(deleted: int, failed: int, seconds: float, *, dry_run: bool = False) -> str:
    """A sweep in one line, however many recordings it deleted."""
    if dry_run:
        return f"would delete {deleted} recording(s) (dry run, {seconds:.1f} s)"
    return f"deleted {deleted} recording(s), {failed} failed, in {seconds:.1f} s"
