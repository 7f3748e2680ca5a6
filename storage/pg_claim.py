"""A controller id held on a PostgreSQL ledger: a session-level advisory lock, and its
heartbeat.

Each id names one controller: a second one with the same id would settle the first one's
live calls and spool as its own. The lock is keyed by the id and the ledger's schema, taken
on a connection of its own, and held for the controller's life; the server drops it when
that session ends, a controller killed with -9 or cut off included.

The session can also end while the controller runs: a server restart or failover, a network
cut, `pg_terminate_backend`. Nothing says so until the connection is used, so `check` uses
it every few seconds (`callrec.controller`). Lost, the lock is taken again on a new session;
while the server does not answer, `check` says LOST and is called again (the calls go on,
and the ledger's own writes fail closed as always). Taken meanwhile by another session, the
id is another controller's now: `ControllerConflict`, and this one stops. One exception: a
session of this process that the server still keeps (its end of a cut connection) is ours,
not a rival; it is ended and the lock taken at the next check.

A rival may also take the id and let it go again between two checks (it started, worked
and stopped). The lock alone cannot tell: it is free again. So whoever takes the lock adds
one to the id's generation in `controller_claims`, in the lock's own session; a controller
that takes its lock again expects to find the generation it left there, and any other means
a rival held the id meanwhile: `ControllerConflict` as well.

Blocking: each method runs on a worker thread. TCP keepalives and `tcp_user_timeout` bound
how long a check can hang on a connection whose peer is gone.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg

from flows.errors import ControllerConflict, StorageError
from flows.numbers import shown
from storage.records import ClaimCheck, ClaimState
from storage.values import ts

# One bigint key per (schema, id); a collision of two ids' hashes would refuse the second
# with a message naming the first's session, never admit two.
_KEY = "SELECT hashtextextended('callrec controller ' || current_schema() || ' ' || %s, 0) AS k"
_TRY = "SELECT pg_try_advisory_lock(%s::bigint) AS got"
# pg_locks shows a bigint key as (classid, objid) = (high, low 32 bits), objsubid 1.
_WHERE_KEY = (
    "l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.classid = %s::bigint::oid "
    "AND l.objid = %s::bigint::oid AND l.database = "
    "(SELECT oid FROM pg_database WHERE datname = current_database())"
)
# Constants only go into these two (no input).
_HOLDER = (
    "SELECT l.pid, a.application_name || COALESCE(' from ' || host(a.client_addr), '') "  # noqa: S608
    f"AS who FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE {_WHERE_KEY}"
)
_MINE = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = pg_backend_pid() "  # noqa: S608
    f"AND {_WHERE_KEY})"
)

# The id's generation (`storage.schema.CONTROLLER_CLAIMS`), written only by a session that
# holds the id's lock: taken at start, it goes up whatever it was; taken again after a loss,
# only from the generation this controller left there.
_TAKEN = (
    "INSERT INTO controller_claims (controller_id, generation, taken_at, taken_by) "
    "VALUES (%s, 1, %s, %s) ON CONFLICT (controller_id) DO UPDATE SET "
    "generation = controller_claims.generation + 1, taken_at = EXCLUDED.taken_at, "
    "taken_by = EXCLUDED.taken_by RETURNING generation"
)
_RETAKEN = (
    "UPDATE controller_claims SET generation = generation + 1, taken_at = %s, taken_by = %s "
    "WHERE controller_id = %s AND generation = %s RETURNING generation"
)
_LAST = "SELECT taken_at, taken_by FROM controller_claims WHERE controller_id = %s"

KEEPALIVE = 5  # seconds: a dead peer is noticed after about three of them
Connect = Callable[..., "psycopg.Connection[Any]"]


class ControllerClaim:
    """The advisory lock of one controller id, on a connection of its own."""

    def __init__(self, connect: Connect, controller_id: str) -> None:
        self._connect = connect
        self.controller_id = controller_id
        self._conn: psycopg.Connection[Any] | None = None
        self._backend: int | None = None  # the server's pid of the session holding it
        self._key: int | None = None
        self._generation = 0  # of the id's claims, as this controller last took it
        self._closed = False
        self.me = f"callrec pid {os.getpid()} on {socket.gethostname()}"[:63]

    def take(self) -> None:
        """At start: hold the id, or a StorageError naming who does."""
        conn = self._open()
        try:
            holder = self._try(conn)
            if holder is None:
                self._generation = self._taken(conn)
        except psycopg.Error as error:
            conn.close()
            raise StorageError(
                f"claiming the controller id {self.controller_id}: {_first_line(error)}"
            ) from error
        except BaseException:
            conn.close()
            raise
        if holder is not None:
            conn.close()
            raise StorageError(
                f"another controller with the id {self.controller_id} "
                f"({shown(holder[1], 120)}) serves this PostgreSQL ledger: stop it first, or "
                "give this one its own storage.controller_id"
            ) from None
        self._hold(conn)

    def check(self) -> ClaimCheck:
        """Whether the id is still held; lost, take it again. `ControllerConflict` when
        another controller holds it now."""
        conn = self._conn
        if conn is not None and not conn.closed:
            try:
                row = conn.execute(_MINE, self._pair()).fetchone()
                if row is not None and row[0]:
                    return ClaimCheck(ClaimState.HELD)
                holder = self._try(conn)  # the session lives on without the lock
                rival = None if holder is not None else self._taken_again(conn)
            except psycopg.Error as error:
                self._drop()
                why = _first_line(error)
            else:
                if rival is not None:
                    self._drop()
                    raise self._held_meanwhile(rival)
                if holder is None:
                    return ClaimCheck(ClaimState.RETAKEN, "the lock was released; held again")
                if holder[0] == 0:
                    return ClaimCheck(ClaimState.LOST, "the lock was released; retrying")
                self._drop()
                raise self._conflict(holder[1])
        else:
            why = "no session holds it"
        try:
            conn = self._open()
        except StorageError as error:
            return ClaimCheck(ClaimState.LOST, f"its session ended ({why}); {error}")
        try:
            holder = self._try(conn)
            rival = None if holder is not None else self._taken_again(conn)
        except (psycopg.Error, StorageError) as error:
            conn.close()
            return ClaimCheck(ClaimState.LOST, f"its session ended ({why}); {error}")
        if rival is not None:
            conn.close()
            raise self._held_meanwhile(rival)
        if holder is None:
            self._hold(conn)
            return ClaimCheck(ClaimState.RETAKEN, f"its session ended ({why}); held again")
        pid, who = holder
        if pid == 0:  # its holder let go between the two statements: try again
            conn.close()
            return ClaimCheck(ClaimState.LOST, f"its session ended ({why}); retrying")
        if pid == self._backend:
            # Our own earlier session, which the server has not seen end (a cut
            # connection): ours to end, not a rival's lock.
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            conn.close()
            return ClaimCheck(
                ClaimState.LOST,
                f"its session ended ({why}); the server still kept it (pid {pid}): ended it",
            )
        conn.close()
        raise self._conflict(who)

    def close(self) -> None:
        """Let go of the id (the session's end releases it), for good: a check still under
        way on its thread keeps no session it opens after this."""
        self._closed = True
        self._drop()

    def _conflict(self, who: str) -> ControllerConflict:
        return ControllerConflict(
            f"another controller with the id {self.controller_id} ({shown(who, 120)}) took "
            "this PostgreSQL ledger while this controller's lock session was lost: this one "
            "stops, since two controllers with one id would settle each other's calls"
        )

    def _held_meanwhile(self, who: str) -> ControllerConflict:
        return ControllerConflict(
            f"another controller with the id {self.controller_id} ({shown(who, 120)}) held "
            "this PostgreSQL ledger while this controller's lock session was lost, and has "
            "let it go again: this one stops, since that controller may have settled this "
            "one's calls as its own"
        )

    def _taken(self, conn: psycopg.Connection[Any]) -> int:
        """The id's next generation, ours now (the lock just taken on `conn`)."""
        row = conn.execute(_TAKEN, (self.controller_id, _now(), self.me)).fetchone()
        assert row is not None  # RETURNING of an upsert
        return int(row[0])

    def _taken_again(self, conn: psycopg.Connection[Any]) -> str | None:
        """After the lock was taken again on `conn`: None when the id's generation is still
        ours (and is the next one now), else who took it last and when."""
        row = conn.execute(
            _RETAKEN, (_now(), self.me, self.controller_id, self._generation)
        ).fetchone()
        if row is not None:
            self._generation = int(row[0])
            return None
        last = conn.execute(_LAST, (self.controller_id,)).fetchone()
        return "unknown" if last is None else f"{last[1]}, at {last[0]}"

    def _open(self) -> psycopg.Connection[Any]:
        try:
            return self._connect(
                application_name=self.me,
                keepalives=1,
                keepalives_idle=KEEPALIVE,
                keepalives_interval=KEEPALIVE,
                keepalives_count=3,
                tcp_user_timeout=3 * KEEPALIVE * 1000,
            )
        except psycopg.Error as error:
            raise StorageError(
                f"claiming the controller id {self.controller_id}: {_first_line(error)}"
            ) from error

    def _try(self, conn: psycopg.Connection[Any]) -> tuple[int, str] | None:
        """Take the lock on `conn`; None when taken, else (pid, who) of its holder."""
        if self._key is None:
            row = conn.execute(_KEY, (self.controller_id,)).fetchone()
            assert row is not None
            self._key = int(row[0])
        row = conn.execute(_TRY, (self._key,)).fetchone()
        if row is not None and row[0]:
            return None
        found = conn.execute(_HOLDER, self._pair()).fetchone()
        if found is None:
            return (0, "unknown")
        return int(found[0]), str(found[1] or "unknown")

    def _pair(self) -> tuple[int, int]:
        assert self._key is not None
        return (self._key >> 32) & 0xFFFFFFFF, self._key & 0xFFFFFFFF

    def _hold(self, conn: psycopg.Connection[Any]) -> None:
        if self._closed:
            conn.close()
            return
        self._conn = conn
        self._backend = conn.info.backend_pid

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()


def _now() -> str:
    return ts(datetime.now(UTC))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
