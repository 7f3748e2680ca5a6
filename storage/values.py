"""How the ledger writes times, and file system errors told as ours: shared by every
backend and use case (no database here)."""

from __future__ import annotations

import errno
import re
from datetime import UTC, datetime

from flows.errors import (
    CallrecError,
    NotFoundError,
    StorageError,
    StoreFullError,
    StoreReadOnlyError,
)

# `2026-12-05T11:20:29.123456Z`. Written and read with isoformat/fromisoformat: strptime
# is forty times slower, and its regex cache, shared with every other format the process
# parses, was being rebuilt on the ledger's path.
_TIME_SHAPE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def ts(moment: datetime) -> str:
    """`moment` as fixed-width ISO-8601 UTC text, so that text order is time order."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise CallrecError(f"a time must carry a time zone, got naive {moment.isoformat()}")
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_ts(text: str) -> datetime:
    """The time `ts` wrote; ValueError for any other text."""
    if not _TIME_SHAPE.fullmatch(text):
        raise ValueError(f"time data {text[:40]!r} is not a ledger time")
    return datetime.fromisoformat(text)


def opt_ts(text: str | None) -> datetime | None:
    return None if text is None else parse_ts(text)


def os_error(error: OSError, doing: str) -> StorageError:
    """One of ours for a file system error, naming what was being done."""
    code = error.errno
    detail = error.strerror or str(error)
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return StoreFullError(f"{doing}: no space left ({detail})")
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StoreReadOnlyError(f"{doing}: the store cannot be written ({detail})")
    if code == errno.ENOENT:
        return NotFoundError(f"{doing}: no such file ({detail})")
    return StorageError(f"{doing}: {detail}")
