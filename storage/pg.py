"""The ledger on PostgreSQL: the same `read`/`write` of synchronous bodies as `storage.db`.

Theory of operation. A body is the same plain function of a `Tx` the SQLite ledger runs, and
the whole transaction (BEGIN, body, COMMIT or ROLLBACK) runs as ONE job on one of a few
worker threads, each holding its own psycopg connection (the synchronous API: no hop back to
the event loop between statements, the reason `storage.db` runs whole transactions on
aiosqlite's thread). A cancelled caller leaves no transaction open: its job finishes on its
own, committed or rolled back.

SQLite's `BEGIN IMMEDIATE` takes the database's write lock first, and the store relies on it:
the audit chain's head is read and extended in one transaction, and a withdrawal decides
what it covers from rows it read. Here a serial write transaction (the default) starts with
`pg_advisory_xact_lock` on one key per ledger (its schema), released by COMMIT or ROLLBACK,
so those transactions of every controller on the ledger follow one another exactly as on
SQLite, and READ COMMITTED statements after the lock see everything committed before it.
The call path (start, decision, end: `write(..., serial=False)`) touches only its own
call's rows and takes no lock to begin with; a body of it that appends to the audit chain
takes the same lock at the append, before it reads the head, so the chain never forks and
the lock is held only from the append to the COMMIT. Deletions need no lock to be counted
once: each is a conditional UPDATE (`storage.deletion.claim`).
Reads take no lock: each runs in a REPEATABLE READ, READ ONLY snapshot. Writers wait for the
lock in the server's queue (first come, first served) up to `retry_for` seconds; a
serialization failure or a deadlock retries the whole body with a growing pause until then,
like SQLITE_BUSY in `storage.db`.

A read is answered as soon as its body returns: its COMMIT only ends a read-only snapshot,
and its worker sends it afterwards, before it takes another job; a write is answered after
its COMMIT, which makes it durable. (Sending the BEGIN in one pipeline with the first
statement was measured too: psycopg's pipeline cost more here than the round trip it saved.)

Durability: every session runs with `synchronous_commit = on`, so a committed decision is
on the server's disk (and, with synchronous replication configured on the server, on its
standby) before `write` returns.

Statements are written for SQLite with `?` placeholders; each is translated once (cached):
`?` becomes `%s`, a literal `%` is doubled, and the few SQLite spellings the store still uses
(`INSERT OR IGNORE`, `NOT INDEXED`, `json_extract`, `IS` between values, `SUM` of a
comparison) are rewritten to their PostgreSQL equivalents (`storage.pg_sql`). `PgDatabase`
also answers the rest of the ledger port (`append_audit`, `guard_problems`, `json_text`,
`full_scan`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any, Protocol, TypeVar

import psycopg
from psycopg import errors as pg_errors

from flows.errors import IntegrityError, StorageError, StoreFullError, StoreReadOnlyError
from storage import chain
from storage.db import RETRY_FOR
from storage.ledgers import redact
from storage.pg_claim import ControllerClaim
from storage.pg_sql import (
    _PLAIN_INSERT,
    COPY_FROM,
    Params,
    Row,
    _params,
    _rows,
    _with_arrays,
    translate,
)
from storage.ports import ClaimCheck, ClaimState, Tx

T = TypeVar("T")

# How long a heartbeat of the controller id's lock may take before it counts as unanswered.
CLAIM_CHECK_TIMEOUT = 10.0
POOL_SIZE = 4  # connections (and threads) per store: one writer at a time, reads beside it
# A stuck writer (a process frozen mid-transaction) is cut off by the server after this, so
# that the ledger's lock is never held for longer by a session that does nothing.
IDLE_IN_TRANSACTION = 60.0
WRITE_LOCK = 0x63616C6C  # the advisory lock's first key ("call"); the second is the schema
_LOCK = f"SELECT pg_advisory_xact_lock({WRITE_LOCK}, hashtext(current_schema()))"
# What opens a transaction of each mode, in one round trip (a serial one's two statements
# have no parameters, so both go at once).
_BEGIN = {
    "serial": f"BEGIN ISOLATION LEVEL READ COMMITTED; {_LOCK}",
    "write": "BEGIN ISOLATION LEVEL READ COMMITTED",
    "read": "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
}
_RETRYABLE = (
    pg_errors.SerializationFailure,
    pg_errors.DeadlockDetected,
    pg_errors.LockNotAvailable,
)


class Transactions(Protocol):
    """What the store needs of a ledger: `storage.db.Database` or `PgDatabase`."""

    async def read(self, body: Callable[[Tx], T], doing: str) -> T: ...

    async def write(
        self,
        body: Callable[[Tx], T],
        doing: str,
        *,
        serial: bool = True,
        within: float | None = None,
    ) -> T: ...

    async def close(self) -> None: ...


def _soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
        loop.call_soon_threadsafe(callback)


class PgTx(Tx):
    """The statements of one transaction on one psycopg connection (its worker's thread)."""

    dialect = "postgresql"

    def __init__(self, conn: psycopg.Connection[Row], *, locked: bool = False) -> None:
        self._pg = conn
        self.locked = locked  # this transaction holds the ledger's advisory lock

    def lock(self) -> None:
        """Take the ledger's advisory lock for the rest of this transaction (once)."""
        if not self.locked:
            self.run(_LOCK)
            self.locked = True

    def run(self, sql: str, params: Params = ()) -> int:
        sql, values = _with_arrays(sql, _params(params))
        with self._pg.cursor() as cursor:
            cursor.execute(translate(sql), values)
            return cursor.rowcount

    def many(self, sql: str, rows: Iterable[Params]) -> None:
        batch = [_params(row) for row in rows]
        if not batch:
            return
        plain = _PLAIN_INSERT.match(sql) if len(batch) >= COPY_FROM else None
        with self._pg.cursor() as cursor:
            if plain is None:
                cursor.executemany(translate(sql), batch)
                return
            # Row by row, executemany costs some 12 ms of this thread per 1,000 audit rows,
            # COPY about 1 ms; triggers and constraints apply to both alike.
            table, columns = plain.group(1), " ".join(plain.group(2).split())
            with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for row in batch:
                    copy.write_row(row)

    def all(self, sql: str, params: Params = ()) -> list[Any]:
        sql, values = _with_arrays(sql, _params(params))
        with self._pg.cursor() as cursor:
            cursor.execute(translate(sql), values)
            return cursor.fetchall() if cursor.description else []

    def one(self, sql: str, params: Params = ()) -> Any:
        rows = self.all(sql, params)
        return rows[0] if rows else None


def pg_error(error: psycopg.Error, doing: str) -> StorageError:
    """One of ours for a PostgreSQL error, naming what was being done."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, pg_errors.ReadOnlySqlTransaction | pg_errors.InsufficientPrivilege):
        return StoreReadOnlyError(f"{doing}: the ledger cannot be written ({text})")
    if isinstance(error, pg_errors.DiskFull | pg_errors.InsufficientResources):
        return StoreFullError(f"{doing}: no space left for the ledger ({text})")
    if isinstance(error, psycopg.IntegrityError | pg_errors.RaiseException):
        return IntegrityError(f"{doing}: {text}")
    return StorageError(f"{doing}: {text}")


StepRunner = Callable[[Tx], None]


class PgDatabase:
    """A small pool of psycopg connections, one per worker thread, and their transactions."""

    def __init__(self, conninfo: str, *, password: str | None, retry_for: float, pool: int):
        self._conninfo = conninfo
        self._password = password
        self._retry_for = retry_for
        self._local = threading.local()
        self._conns: list[psycopg.Connection[Row]] = []
        self._conns_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=pool, thread_name_prefix="callrec-pg")
        self._closed = False
        self._claim: ControllerClaim | None = None  # holds the controller id
        self._checking: asyncio.Future[ClaimCheck] | None = None

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        password: str | None = None,
        retry_for: float = RETRY_FOR,
        pool: int = POOL_SIZE,
    ) -> PgDatabase:
        """Connect (the first connection, to fail early and clearly); migrate with `migrate`."""
        database = cls(url, password=password, retry_for=retry_for, pool=pool)
        try:
            await database.read(lambda tx: None, f"connecting to the ledger {redact(url)}")
        except BaseException:
            await database.close()
            raise
        return database

    async def version(self) -> int:
        """The schema version the ledger is at (0: nothing migrated yet)."""

        def body(tx: Tx) -> int:
            exists = tx.one("SELECT to_regclass('schema_version') IS NOT NULL AS present")
            if exists is None or not exists["present"]:
                return 0
            row = tx.one("SELECT MAX(version) AS v FROM schema_version")
            return int(row["v"] or 0) if row is not None else 0

        return await self.read(body, "reading the ledger's schema version")

    # ---- the rest of `storage.ports.LedgerDb`, for the store split into use cases

    def append_audit(
        self,
        tx: Tx,
        key: bytes,
        at: datetime,
        action: str,
        entries: Sequence[tuple[str, Mapping[str, str]]],
    ) -> None:
        # A serial transaction began with the ledger's advisory lock; any other takes it here,
        # before reading the head, and holds it to its COMMIT: nobody else appends meanwhile.
        if isinstance(tx, PgTx):
            tx.lock()
        chain.append(tx, key, at, action, entries)

    def guard_problems(self, tx: Tx) -> list[str]:
        from storage import pg_schema

        return pg_schema.guard_problems(tx)

    def json_text(self, column: str, key: str) -> str:
        return f"({column}::jsonb ->> '{key}')"

    def full_scan(self, table: str, alias: str) -> str:
        return f"{table} {alias}"

    async def claim_controller(self, controller_id: str) -> None:
        """Many controllers share a PostgreSQL ledger, but each id names one: a session-level
        advisory lock keyed by the id, held until `close` (`storage.pg_claim`)."""
        if self._claim is None:
            claim = ControllerClaim(self._connect, controller_id)
            await asyncio.to_thread(claim.take)
            self._claim = claim

    async def check_claim(self) -> ClaimCheck:
        """The heartbeat of the controller id's lock (`ControllerClaim.check`); a check the
        server leaves unanswered for `CLAIM_CHECK_TIMEOUT` counts as lost, and none is
        started while it hangs."""
        claim = self._claim
        if claim is None:
            return ClaimCheck(ClaimState.HELD)
        previous = self._checking
        if previous is not None:
            if not previous.done():
                return ClaimCheck(ClaimState.LOST, "the ledger has not answered the last check")
            if not previous.cancelled():
                previous.exception()  # seen: one that timed out is found again below
        self._checking = asyncio.ensure_future(asyncio.to_thread(claim.check))
        try:
            return await asyncio.wait_for(asyncio.shield(self._checking), CLAIM_CHECK_TIMEOUT)
        except TimeoutError:
            return ClaimCheck(
                ClaimState.LOST, f"the ledger did not answer within {CLAIM_CHECK_TIMEOUT:g} s"
            )

    async def migrate(self, runners: Mapping[Any, StepRunner] | None = None) -> int:
        from storage import pg_schema  # the schema needs this module's types

        return await pg_schema.migrate(self, runners=runners)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._claim is not None:
            self._claim.close()  # the session's end releases the controller id
            self._claim = None
        if self._checking is not None:
            self._checking.cancel()
        await asyncio.to_thread(self._executor.shutdown, True)
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()

    async def write(
        self,
        body: Callable[[Tx], T],
        doing: str,
        *,
        serial: bool = True,
        within: float | None = None,
    ) -> T:
        """Run `body` in one write transaction: `serial`, after every earlier serial writer
        of the ledger (and every audit append); else beside them, with only its audit
        append, if any, after theirs. At once, `within` or not: each write has a
        connection of its own here, so there is no other transaction to join."""
        return await self._retrying(body, "serial" if serial else "write", doing)

    async def read(self, body: Callable[[Tx], T], doing: str) -> T:
        return await self._retrying(body, "read", doing)

    def _connect(
        self, application_name: str = "callrec", **options: Any
    ) -> psycopg.Connection[Row]:
        extra: dict[str, Any] = {"application_name": application_name, "connect_timeout": 10}
        extra.update(options)
        if self._password is not None:
            extra["password"] = self._password
        # autocommit: the transactions below are spelled out, BEGIN to COMMIT.
        return psycopg.connect(self._conninfo, row_factory=_rows, autocommit=True, **extra)

    def _connection(self) -> psycopg.Connection[Row]:
        conn: psycopg.Connection[Row] | None = getattr(self._local, "conn", None)
        if conn is not None and not conn.closed:
            return conn
        conn = self._connect()
        conn.execute("SET synchronous_commit = on")
        # Writers wait for the lock in the server's queue, first come first served, for as
        # long as `write` would retry: with a short timeout and retries, a writer that gave
        # up lost its place to newer ones, and under load a call start waited 30 s.
        conn.execute(f"SET lock_timeout = '{int(self._retry_for * 1000)}ms'")
        conn.execute(
            f"SET idle_in_transaction_session_timeout = '{int(IDLE_IN_TRANSACTION * 1000)}ms'"
        )
        self._local.conn = conn
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    def _transaction(
        self, body: Callable[[Tx], T], mode: str, answer: Callable[[T], None] | None = None
    ) -> T:
        """`body` in one transaction of `mode`. `answer` (a read's) is given the result as
        soon as the body has it, before the COMMIT that only ends a read-only snapshot."""
        conn = self._connection()
        try:
            conn.execute(_BEGIN[mode])
            result = body(PgTx(conn, locked=mode == "serial"))
            if answer is not None:
                answer(result)
            conn.execute("COMMIT")
        except BaseException:
            if not conn.closed:
                try:
                    conn.execute("ROLLBACK")
                except psycopg.Error:
                    conn.close()  # broken: the next job of this thread reconnects
            raise
        return result

    def _job(self, body: Callable[[Tx], T], mode: str) -> asyncio.Future[T]:
        """`body`'s transaction on a worker. A write is done when its COMMIT is; a read is
        answered as soon as its rows are in, while its worker ends the snapshot."""
        loop = asyncio.get_running_loop()
        if mode != "read":
            return loop.run_in_executor(self._executor, self._transaction, body, mode)
        answered: asyncio.Future[T] = loop.create_future()

        def settle(value: T) -> None:
            if not answered.done():
                answered.set_result(value)

        def answer(value: T) -> None:
            _soon(loop, functools.partial(settle, value))

        def ended(job: Future[T]) -> None:
            if answered.done():
                return
            if job.cancelled():  # never started: the store closed
                answered.cancel()
                return
            error = job.exception()  # the body failed (or never answered)
            if error is None:
                answered.set_result(job.result())
            else:
                answered.set_exception(error)

        job = self._executor.submit(self._transaction, body, mode, answer)
        job.add_done_callback(lambda done: _soon(loop, functools.partial(ended, done)))
        return answered

    async def _retrying(self, body: Callable[[Tx], T], mode: str, doing: str) -> T:
        if self._closed:
            raise StorageError(f"{doing}: the ledger is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._retry_for
        pause = 0.02
        while True:
            try:
                return await self._job(body, mode)
            except _RETRYABLE as error:
                if loop.time() + pause > deadline:
                    raise StorageError(
                        f"{doing}: the ledger stayed locked by another writer for "
                        f"{self._retry_for:g} s ({pg_error(error, doing)})"
                    ) from error
            except psycopg.Error as error:
                raise pg_error(error, doing) from error
            except RuntimeError as error:  # the executor was shut down under us
                raise StorageError(f"{doing}: the ledger is closed") from error
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)
