"""One aiosqlite connection, its transactions, and SQLite's errors mapped to ours.

Theory of operation. Every write runs in `Database.write(body)`: one asyncio lock (the
connection is shared by every coroutine of the process), `BEGIN IMMEDIATE` (the database's
write lock is taken at the start, so a read-then-write such as appending to the audit chain
cannot interleave with another process), the body, `COMMIT`. With `journal_mode=WAL` and
`synchronous=FULL` a committed transaction survives a power cut. When another process holds
the write lock, SQLite waits `busy_timeout`; if it is still held the whole body is retried
with a growing pause until `retry_for` seconds have passed, then a `StorageError` says so.
Bodies therefore touch only the database: files are moved before or after, never inside.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from flows.errors import (
    CallrecError,
    IntegrityError,
    NotFoundError,
    StorageError,
    StoreFullError,
    StoreReadOnlyError,
)
from storage.schema import migrate

T = TypeVar("T")
Params = Sequence[Any]

BUSY_TIMEOUT = 2.0  # seconds SQLite itself waits for another writer before answering "busy"
RETRY_FOR = 30.0  # then whole transactions are retried this long: a CLI sweep may hold it
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


def _locked(error: sqlite3.Error) -> bool:
    text = str(error).lower()
    return isinstance(error, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def sqlite_error(error: sqlite3.Error, doing: str) -> StorageError:
    """One of ours for a SQLite error, naming what was being done."""
    text = str(error)
    lower = text.lower()
    if "readonly" in lower or "read-only" in lower:
        return StoreReadOnlyError(f"{doing}: the ledger cannot be written ({text})")
    if "full" in lower:
        return StoreFullError(f"{doing}: no space left for the ledger ({text})")
    if isinstance(error, sqlite3.IntegrityError):
        return IntegrityError(f"{doing}: {text}")
    return StorageError(f"{doing}: {text}")


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


class Tx:
    """The statements of one transaction (or of one read)."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def run(self, sql: str, params: Params = ()) -> int:
        """Execute one statement; the number of rows it changed."""
        cursor = await self._conn.execute(sql, params)
        count = cursor.rowcount
        await cursor.close()
        return count

    async def many(self, sql: str, rows: Iterable[Params]) -> None:
        await self._conn.executemany(sql, rows)

    async def all(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        return list(await self._conn.execute_fetchall(sql, params))

    async def one(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        rows = await self.all(sql, params)
        return rows[0] if rows else None


class Database:
    def __init__(self, conn: aiosqlite.Connection, *, retry_for: float) -> None:
        self._conn = conn
        self._retry_for = retry_for
        self._lock = asyncio.Lock()

    @classmethod
    async def open(
        cls, path: Path, *, busy_timeout: float = BUSY_TIMEOUT, retry_for: float = RETRY_FOR
    ) -> Database:
        doing = f"opening the ledger {path}"
        try:
            conn = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as error:
            raise sqlite_error(error, doing) from error
        database = cls(conn, retry_for=retry_for)
        try:
            await database._retrying(lambda: _configure(conn, busy_timeout), doing)
            await database._retrying(lambda: migrate(conn), "migrating the ledger")
            await asyncio.to_thread(_private, path)
        except BaseException:
            await conn.close()
            raise
        return database

    async def close(self) -> None:
        async with self._lock:
            await self._conn.close()

    async def write(self, body: Callable[[Tx], Awaitable[T]], doing: str) -> T:
        """Run `body` in one write transaction, retried while another process holds the lock."""

        async def attempt() -> T:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = await body(Tx(self._conn))
                await self._conn.commit()
            except BaseException:
                # Also on cancellation: a transaction left open would break the next one.
                if self._conn.in_transaction:
                    await self._conn.rollback()
                raise
            return result

        async with self._lock:
            return await self._retrying(attempt, doing)

    async def read(self, body: Callable[[Tx], Awaitable[T]], doing: str) -> T:
        async with self._lock:
            return await self._retrying(lambda: body(Tx(self._conn)), doing)

    async def _retrying(self, attempt: Callable[[], Awaitable[T]], doing: str) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._retry_for
        pause = 0.02
        while True:
            try:
                return await attempt()
            except sqlite3.Error as error:
                if not _locked(error):
                    raise sqlite_error(error, doing) from error
                if loop.time() + pause > deadline:
                    raise StorageError(
                        f"{doing}: the ledger stayed locked by another process for "
                        f"{self._retry_for:g} s ({error})"
                    ) from error
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)


async def _configure(conn: aiosqlite.Connection, busy_timeout: float) -> None:
    conn.row_factory = sqlite3.Row
    await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    mode = await conn.execute_fetchall("PRAGMA journal_mode = WAL")
    if str(next(iter(mode))[0]).lower() != "wal":
        raise sqlite3.OperationalError("the file system does not support WAL mode")
    await conn.execute("PRAGMA synchronous = FULL")
    await conn.execute("PRAGMA foreign_keys = ON")


def _private(path: Path) -> None:
    """The ledger holds phone numbers: readable by its owner only. Best effort: the data
    directory (0700) already keeps others out, and a read-only store must still open."""
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            Path(f"{path}{suffix}").chmod(0o600)
