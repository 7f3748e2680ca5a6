"""One aiosqlite connection, its transactions, and SQLite's errors mapped to ours.

Theory of operation. Every write runs in `Database.write(body)`: `BEGIN IMMEDIATE` (the
database's write lock is taken at the start, so a read-then-write such as appending to the
audit chain cannot interleave with another process), the body, `COMMIT`. With
`journal_mode=WAL` and `synchronous=FULL` a committed transaction survives a power cut. When
another process holds the write lock, SQLite waits `busy_timeout`; if it is still held the
whole body is retried with a growing pause until `retry_for` seconds have passed, then a
`StorageError` says so.

A body is a plain function of a `Tx`, and the whole transaction (BEGIN, body, COMMIT or
ROLLBACK) runs as ONE job on aiosqlite's connection thread. aiosqlite's own `execute` hops to
that thread and back for every statement; a transaction of six statements would then wait six
times behind every other ready callback of the event loop, which with a thousand live calls is
the difference between a millisecond and a second. One job per transaction also means that
transactions never interleave (the thread runs one job at a time) and that a cancelled caller
leaves no transaction open: the job finishes, committed or rolled back, on its own.
Bodies therefore touch only the database: files are moved before or after, never inside.

Group commit. Writes that queue up while the connection thread is busy (live calls' starts,
decisions and ends arrive together under load) run as one transaction, each body in its own
savepoint, with one `COMMIT` and so one fsync for all of them. A body that raises is rolled
back to its savepoint and fails alone; every caller is answered only after the `COMMIT`, so a
returned write is as durable as before. A write alone in the queue runs as it always did.
A lazy write (`within`: a call's start, a call's end whose recording's ingest follows) is
not worth a commit of its own: it waits in the queue, while the writer is idle or busy,
until a write that is not lazy comes or its time is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

import aiosqlite

from flows.errors import (
    IntegrityError,
    StorageError,
    StoreFullError,
    StoreReadOnlyError,
)
from storage.schema import PythonStep, StepRunner, migrate
from storage.values import opt_ts, os_error, parse_ts, ts

__all__ = [
    "BUSY_TIMEOUT",
    "RETRY_FOR",
    "Database",
    "Tx",
    "opt_ts",
    "os_error",
    "parse_ts",
    "sqlite_error",
    "ts",
]

T = TypeVar("T")
Params = Sequence[Any]

BUSY_TIMEOUT = 2.0  # seconds SQLite itself waits for another writer before answering "busy"
RETRY_FOR = 30.0  # then whole transactions are retried this long: a CLI sweep may hold it


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


class Tx:
    """The statements of one transaction (or of one read), on the connection's thread."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def run(self, sql: str, params: Params = ()) -> int:
        """Execute one statement; the number of rows it changed."""
        cursor = self._conn.execute(sql, params)
        count = cursor.rowcount
        cursor.close()
        return count

    def many(self, sql: str, rows: Iterable[Params]) -> None:
        self._conn.executemany(sql, rows).close()

    def all(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        cursor = self._conn.execute(sql, params)
        try:
            return list(cursor.fetchall())
        finally:
            cursor.close()

    def one(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        rows = self.all(sql, params)
        return rows[0] if rows else None


def _transaction(conn: sqlite3.Connection, body: Callable[[Tx], T]) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = body(Tx(conn))
        conn.commit()
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise
    return result


# A lazy write whose time comes within this many seconds counts as due: the loop may run a
# timer a clock tick early.
_DUE_SLACK = 0.001


class _Queued(NamedTuple):
    body: Callable[[Tx], Any]
    done: asyncio.Future[Any]
    doing: str
    due: float | None  # a lazy write's latest start (loop time); None: at once


class _Failed:
    """A grouped body's exception, handed back to its own caller."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _group(conn: sqlite3.Connection, bodies: Sequence[Callable[[Tx], Any]]) -> list[Any]:
    """Several bodies in one transaction, each in a savepoint: a body that raises is undone
    alone (its exception returned as `_Failed`); the lock being taken by another process
    undoes them all, for `_retrying` to run the group again."""
    conn.execute("BEGIN IMMEDIATE")
    outcomes: list[Any] = []
    try:
        for body in bodies:
            conn.execute("SAVEPOINT grouped")
            try:
                value = body(Tx(conn))
            except sqlite3.Error as error:
                if _locked(error):
                    raise
                conn.execute("ROLLBACK TO grouped")
                outcomes.append(_Failed(error))
            except Exception as error:
                conn.execute("ROLLBACK TO grouped")
                outcomes.append(_Failed(error))
            else:
                outcomes.append(value)
            conn.execute("RELEASE grouped")
        conn.commit()
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise
    return outcomes


def _read(conn: sqlite3.Connection, body: Callable[[Tx], T]) -> T:
    return body(Tx(conn))


class Database:
    def __init__(self, conn: aiosqlite.Connection, *, retry_for: float) -> None:
        self._conn = conn
        self._retry_for = retry_for
        self._queued: list[_Queued] = []
        self._writer: asyncio.Task[None] | None = None
        self._flush: asyncio.TimerHandle | None = None  # when waiting writes go anyway
        self._closing = False
        self.groups = 0  # transactions that carried more than one write (status and tests)

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        busy_timeout: float = BUSY_TIMEOUT,
        retry_for: float = RETRY_FOR,
        runners: Mapping[PythonStep, StepRunner] | None = None,
    ) -> Database:
        doing = f"opening the ledger {path}"
        try:
            conn = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as error:
            raise sqlite_error(error, doing) from error
        database = cls(conn, retry_for=retry_for)
        try:
            await database._retrying(lambda: _configure(conn, busy_timeout), doing)
            await database._retrying(lambda: migrate(conn, runners=runners), "migrating the ledger")
            await asyncio.to_thread(_private, path)
        except BaseException:
            await conn.close()
            raise
        return database

    async def close(self) -> None:
        # Writes waiting to share a transaction go now, not never.
        self._closing = True
        self._start_writer()
        if self._writer is not None:
            await asyncio.wait([self._writer])
        await self._conn.close()

    async def write(
        self,
        body: Callable[[Tx], T],
        doing: str,
        *,
        serial: bool = True,
        within: float | None = None,
    ) -> T:
        """Run `body` in one write transaction, retried while another process holds the lock;
        writes queued meanwhile share it (group commit). Returns after the commit. Every
        SQLite write holds the database's write lock: `serial` changes nothing here.

        With `within`, the write waits in the queue for the next write that does not, up to
        `within` seconds, and then goes anyway: a commit (a thread hop, an fsync) saved
        for a write nobody waits for at once, such as a call's start, which its decision
        follows seconds later."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        due = None if within is None else loop.time() + within
        self._queued.append(_Queued(body, done, doing, due))
        if self._writer is None or self._writer.done():
            if due is None:
                self._start_writer()
            else:
                self._flush_at(due)
        return cast(T, await done)

    def _flush_at(self, due: float) -> None:
        if self._flush is None or self._flush.when() > due:
            if self._flush is not None:
                self._flush.cancel()
            self._flush = asyncio.get_running_loop().call_at(due, self._start_writer)

    def _start_writer(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self._queued and (self._writer is None or self._writer.done()):
            self._writer = asyncio.get_running_loop().create_task(self._write_queued())

    def _all_waiting(self) -> float | None:
        """The earliest due time when every queued write may still wait (lazy, not yet
        due): such writes are not worth a commit of their own yet. None: write now."""
        if self._closing:
            return None
        now = asyncio.get_running_loop().time() + _DUE_SLACK
        dues = [queued.due for queued in self._queued]
        if any(due is None or due <= now for due in dues):
            return None
        return min(due for due in dues if due is not None)

    async def _write_queued(self) -> None:
        while self._queued:
            waiting = self._all_waiting()
            if waiting is not None:
                # Lazy writes that queued while the last transaction ran wait for the
                # next write that is not lazy (or their time), as they do when idle.
                self._flush_at(waiting)
                return
            batch, self._queued = self._queued, []
            if len(batch) == 1:
                [(body, done, doing, _)] = batch
                try:
                    result = await self._retrying(partial(self._job, _transaction, body), doing)
                except BaseException as error:
                    _answer(done, error=error)
                else:
                    _answer(done, result)
                continue
            self.groups += 1
            bodies = [queued.body for queued in batch]
            doing = f"{len(batch)} grouped ledger writes ({batch[0][2]}, ...)"
            try:
                outcomes = await self._retrying(
                    partial(self._job, cast(Any, _group), cast(Any, bodies)), doing
                )
            except BaseException as error:
                for queued in batch:
                    _answer(queued.done, error=error)
                continue
            for (_, done, what, _), outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, _Failed):
                    failure: Exception = outcome.error
                    if isinstance(failure, sqlite3.Error):
                        failure = sqlite_error(failure, what)
                    _answer(done, error=failure)
                else:
                    _answer(done, outcome)

    async def read(self, body: Callable[[Tx], T], doing: str) -> T:
        return await self._retrying(lambda: self._job(_read, body), doing)

    async def _job(
        self, run: Callable[[sqlite3.Connection, Callable[[Tx], T]], T], body: Callable[[Tx], T]
    ) -> T:
        """`run(connection, body)` as one job on aiosqlite's connection thread.

        aiosqlite has no public call for this: `_execute` queues a function for its thread
        (the same path its own `execute` takes) and `_conn` is the sqlite3 connection there.
        Both exist in every release this project allows (pyproject.toml)."""
        try:
            raw = self._conn._conn
        except ValueError as error:
            raise StorageError("the ledger is closed") from error
        execute = cast(Callable[..., Awaitable[T]], self._conn._execute)
        return await execute(run, raw, body)

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


def _answer(
    done: asyncio.Future[Any], result: Any = None, *, error: BaseException | None = None
) -> None:
    if done.done():  # its caller was cancelled; the write stands
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(result)


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
