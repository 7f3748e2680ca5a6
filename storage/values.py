"""How the ledger writes times, and file system errors told as ours: shared by every
backend and use case (no database here)."""

from __future__ import annotations

import errno
from datetime import UTC, datetime

from flows.errors import (
    CallrecError,
    NotFoundError,
    StorageError,
    StoreFullError,
    StoreReadOnlyError,
)

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def ts(moment: datetime) -> str:
    """`moment` as fixed-width ISO-8601 UTC text, so that text order is time order."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise CallrecError(f"a time must carry a time zone, got naive {moment.isoformat()}")
    return moment.astimezone(UTC).strftime(_TIME_FORMAT)


def parse_ts(text: str) -> datetime:
    return datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=UTC)


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
