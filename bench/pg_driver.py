"""The PostgreSQL driver, chosen by measurement: psycopg 3 against asyncpg on the path every
call takes, call start + decision committed (two write transactions, the store's own
statements, the audit entry and the ledger's advisory write lock), with SQLite beside them.

psycopg runs the store itself (`storage.pg`: synchronous bodies on worker threads). asyncpg
cannot run those bodies (its API is async only), so its variant spells the same two
transactions out as async code: the statements, parameters, lock and HMAC of the store's.
Each variant gets a database of its own. `python -m bench --only drivers` (PostgreSQL from
CALLREC_BENCH_PG_URL, else CALLREC_TEST_PG_URL, else the test cluster of `make pg`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psycopg

from bench.figures import Result, Row, ms, percentile, rate
from bench.progress import say
from bench.sizes import Sizes
from flows.policy import Decision, Direction, LegalBasis, Policy
from flows.retention import delete_after
from storage import pg
from storage.audit import GENESIS, canonical
from storage.chain import entry_mac
from storage.factory import open_ledger
from storage.ledgers import LedgerConfig, redact
from storage.ports import CallStart, DecisionRecord
from storage.values import ts

DEFAULT_URL = "postgresql://callrec_test:callrec_test@127.0.0.1:5432/postgres"
IN_FLIGHT = 50  # calls between start and decision at once, as on a busy node
POLICY = Policy()
T0 = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)


def server_url() -> str:
    return (
        os.environ.get("CALLREC_BENCH_PG_URL")
        or os.environ.get("CALLREC_TEST_PG_URL")
        or (DEFAULT_URL)
    )


def reachable(url: str) -> str | None:
    try:
        with psycopg.connect(url, connect_timeout=3):
            return None
    except psycopg.Error as error:
        return str(error).strip().splitlines()[0] if str(error).strip() else repr(error)


@asynccontextmanager
async def database(url: str) -> AsyncIterator[str]:
    """A new database on the server at `url`, dropped afterwards."""
    name = f"callrec_bench_{secrets.token_hex(4)}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(url)._replace(path=f"/{name}"))
    finally:
        _drop(url, name)


def _drop(url: str, name: str) -> None:
    """Drop the database `name`. FORCE ends our own sessions; one of the server's (an
    autovacuum worker after a bulk load) it may not end for an unprivileged role, and a
    plain DROP then waits for it, tried again for a while."""
    with psycopg.connect(url, autocommit=True) as conn:
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        for _ in range(60):
            with contextlib.suppress(psycopg.errors.ObjectInUse):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
                return
            time.sleep(1.0)
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


@dataclass(frozen=True, slots=True)
class Timed:
    setups_per_s: float
    decision: list[float]  # seconds from asking to commit the decision to it being committed


def _call(i: int) -> tuple[CallStart, DecisionRecord]:
    call_id = secrets.token_hex(16)
    at = T0 + timedelta(milliseconds=i)
    start = CallStart(
        call_id=call_id,
        channel_id=f"{1_700_000_000 + i}.{i}",
        direction=Direction.INBOUND,
        line="service",
        caller=f"+38641{i % 1_000_000:06d}",
        dialed="+38640404040",
        started_at=at,
        customer=f"+38641{i % 1_000_000:06d}",
    )
    decision = DecisionRecord(
        call_id=call_id,
        decision=Decision.RECORD,
        legal_basis=LegalBasis.CONSENT,
        digit="1",
        reason="the caller pressed 1",
        prompt="callrec-consent-question",
        prompt_sha256="ab" * 32,
        decided_at=at + timedelta(seconds=12),
    )
    return start, decision


async def _drive(
    n: int,
    start: Callable[[CallStart], Awaitable[None]],
    decide: Callable[[DecisionRecord], Awaitable[None]],
) -> Timed:
    calls = [_call(i) for i in range(n)]
    gate = asyncio.Semaphore(IN_FLIGHT)
    latencies: list[float] = []

    async def one(call: tuple[CallStart, DecisionRecord]) -> None:
        async with gate:
            await start(call[0])
            asked = time.perf_counter()
            await decide(call[1])
            latencies.append(time.perf_counter() - asked)

    began = time.perf_counter()
    await asyncio.gather(*(one(call) for call in calls))
    return Timed(n / (time.perf_counter() - began), latencies)


async def _store(n: int, work: Path, ledger: LedgerConfig | None) -> Timed:
    async with await open_ledger(work, POLICY, ledger, create=True) as store:
        return await _drive(n, store.start_call, store.commit_decision)


async def _asyncpg(n: int, url: str, work: Path) -> Timed:
    # The schema and keys as the store makes them; then asyncpg alone on that ledger.
    async with await open_ledger(work, POLICY, LedgerConfig(url=url), create=True):
        pass
    key = secrets.token_bytes(32)
    pool = await asyncpg.create_pool(url, min_size=4, max_size=4)
    assert pool is not None
    lock = "SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))"

    async def start(call: CallStart) -> None:
        purge = delete_after(call.started_at, months=6, tz=POLICY.timezone)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO calls (call_id, channel_id, direction, line, caller, dialed, "
                "customer, started_at, purge_after, parent_call_id, communication_id) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) "
                "ON CONFLICT (call_id) DO NOTHING",
                call.call_id,
                call.channel_id,
                "inbound",
                call.line,
                call.caller,
                call.dialed,
                call.customer,
                ts(call.started_at),
                ts(purge),
                None,
                call.call_id,
            )

    async def decide(record: DecisionRecord) -> None:
        when = ts(record.decided_at)
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT decision, decided_at, legal_basis, customer FROM calls WHERE call_id = $1",
                record.call_id,
            )
            assert row is not None and row["decided_at"] is None
            await conn.execute(
                "UPDATE calls SET decision = $1, decided_at = $2, digit = $3, legal_basis = $4, "
                "prompt = $5, prompt_sha256 = $6, reason = $7, linked_to = $8 WHERE call_id = $9",
                "record",
                when,
                record.digit,
                "consent",
                record.prompt,
                record.prompt_sha256,
                record.reason,
                None,
                record.call_id,
            )
            await conn.execute(lock, pg.WRITE_LOCK)  # as the store: at the audit append
            head = await conn.fetchrow("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            seq, prev = (0, GENESIS) if head is None else (int(head["seq"]), str(head["hash"]))
            details = {"decision": "record", "legal_basis": "consent", "digit": "1"}
            body = canonical(seq + 1, when, "decision.committed", record.call_id, details)
            await conn.execute(
                "INSERT INTO audit (seq, at, action, subject, details, prev_hash, hash) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7)",
                seq + 1,
                when,
                "decision.committed",
                record.call_id,
                json.dumps(details, sort_keys=True),
                prev,
                entry_mac(key, prev, body),
            )

    try:
        return await _drive(n, start, decide)
    finally:
        await pool.close()


_START = (
    "INSERT INTO calls (call_id, channel_id, direction, line, caller, dialed, "
    "customer, started_at, purge_after, parent_call_id, communication_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (call_id) DO NOTHING"
)


async def _starts(n: int, url: str, work: Path, *, locked: bool) -> float:
    """Call starts per second alone, through psycopg, with or without the write lock."""
    async with await open_ledger(work, POLICY, LedgerConfig(url=url), create=True):
        pass
    db = await pg.PgDatabase.connect(url)
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(i: int) -> None:
        call, _ = _call(i)
        params = (
            call.call_id,
            call.channel_id,
            "inbound",
            call.line,
            call.caller,
            call.dialed,
            call.customer,
            ts(call.started_at),
            ts(call.started_at),
            None,
            call.call_id,
        )
        async with gate:
            await db.write(lambda tx: tx.run(_START, params), "starting a call", serial=locked)

    try:
        began = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - began)
    finally:
        await db.close()


async def run(sizes: Sizes, work: Path) -> Result:
    n = 300 if sizes.name == "tiny" else 3_000
    result = Result("drivers", f"PostgreSQL driver: call start + decision, {n} calls")
    result.setup.append(
        f"{IN_FLIGHT} calls in flight; per call two write transactions (start; decision + "
        "audit entry, the ledger's advisory lock taken at the append); synchronous_commit on"
    )
    timed: dict[str, Timed] = {}
    say(f"drivers: {n} calls on SQLite")
    timed["SQLite (aiosqlite)"] = await _store(n, work / "sqlite", None)
    url = server_url()
    why = reachable(url)
    if why is not None:
        result.notes.append(f"PostgreSQL not run: none at {redact(url)} ({why})")
        sqlite = timed["SQLite (aiosqlite)"]
        result.add(Row("SQLite (aiosqlite): setups/s", rate(n, n / sqlite.setups_per_s, "calls")))
        return result
    async with database(url) as db:
        say(f"drivers: {n} calls on PostgreSQL through psycopg 3")
        timed["PostgreSQL, psycopg 3"] = await _store(n, work / "psycopg", LedgerConfig(url=db))
    async with database(url) as db:
        say(f"drivers: {n} calls on PostgreSQL through asyncpg")
        timed["PostgreSQL, asyncpg"] = await _asyncpg(n, db, work / "asyncpg")
    starts: dict[bool, float] = {}
    for locked in (True, False):
        async with database(url) as db:
            say(f"drivers: {n} call starts alone, {'with' if locked else 'without'} the lock")
            starts[locked] = await _starts(n, db, work / f"starts-{locked}", locked=locked)
    base = timed["PostgreSQL, psycopg 3"]
    for name, t in timed.items():
        ratio = f"{t.setups_per_s / base.setups_per_s:.2f}x"
        result.add(Row(f"{name}: setups/s", rate(n, n / t.setups_per_s, "calls"), ratio=ratio))
        result.add(Row(f"{name}: decision committed p50", ms(percentile(t.decision, 50))))
        result.add(Row(f"{name}: decision committed p99", ms(percentile(t.decision, 99))))
    result.add(
        Row(
            "call starts alone, serial (the advisory lock first)",
            rate(n, n / starts[True], "calls"),
            baseline=rate(n, n / starts[False], "calls"),
            ratio=f"{starts[False] / starts[True]:.2f}x",
        )
    )
    result.notes.append("ratio: setups/s against psycopg 3 in the same run")
    result.notes.append(
        "asyncpg runs the two transactions hand-written (no number normalising, pseudonym or "
        "validation the store does); the lock row's baseline is the same starts without it"
    )
    return result
