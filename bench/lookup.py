"""Benchmark 2: the callback lookup on a ledger with a million (ten million) calls.

When an agent calls a customer back, the controller asks the ledger for the missed calls
of that number and the callback's legal basis within the window
(`Ledger.callback_candidates`, of which `flows.communication` takes the newest not yet
answered); the customer waits on the line meanwhile. Timed through the store (aiosqlite: a
worker thread per connection, number normalisation, row mapping) and, as the baseline, the
same statement on the same file with the plain `sqlite3` module: the ratio is the cost of
the async layer. Then the same calls and look-ups on a PostgreSQL ledger (filled with COPY),
its baseline the same statement through a plain psycopg connection.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from bench.figures import Result, Row, count, ms, percentile, ratio, size
from bench.ledger_fill import MINUTE, customer_number, fill_busy_ledger, moment
from bench.pg_driver import database, reachable, server_url
from bench.progress import say
from bench.sizes import Sizes
from flows.communication import MAX_CANDIDATES, prior_call
from flows.errors import CallrecError
from flows.policy import LegalBasis, Policy
from storage.db import ts
from storage.factory import open_ledger
from storage.ledgers import LedgerConfig, redact
from storage.pg_sql import translate
from storage.ports import StoreApi
from storage.sqlite import LEDGER_FILE, MISSED_CANDIDATES_SQL, SqliteStore

END = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)  # the ledger's "now": fixed, so runs compare
TARGET_P99 = 0.001  # seconds (issue 8)
WARM_UP = 200  # look-ups run before timing, so that both sides start with warm caches

# The statement `SqliteStore.callback_candidates` runs, itself: the baseline must use the same
# plan, which `plan` prints.
LOOKUP_SQL = MISSED_CANDIDATES_SQL


@dataclass(frozen=True, slots=True)
class Lookup:
    number: str
    since: datetime
    expect_hit: bool
    basis: LegalBasis


def workload(
    n: int,
    customers: int,
    missed: list[tuple[str, int, LegalBasis]],
    start: int,
    end: int,
    seed: int,
) -> list[Lookup]:
    """Half the look-ups follow a missed call nobody called back yet (found), half ask for a
    random customer at a random moment (mostly nothing within the hour)."""
    rng = random.Random(seed)
    window = Policy().callback_window
    lookups: list[Lookup] = []
    for i in range(n):
        if i % 2 == 0 and missed:
            number, ended, basis = rng.choice(missed)
            at = moment(ended + rng.randrange(0, 50 * MINUTE))
            lookups.append(Lookup(number, at - window, True, basis))
        else:
            at = moment(rng.randrange(start, end))
            number = customer_number(rng.randrange(customers))
            basis = rng.choice((LegalBasis.CONSENT, LegalBasis.ZEKOM2_214_7))
            lookups.append(Lookup(number, at - window, False, basis))
    rng.shuffle(lookups)
    return lookups


def plan(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            f"EXPLAIN QUERY PLAN {LOOKUP_SQL}",
            ("+38630000000", LegalBasis.CONSENT.value, ts(END), MAX_CANDIDATES),
        ).fetchall()
    return [str(row[3]) for row in rows]


def breakdown(db: Path) -> list[tuple[str, int]]:
    """Bytes on disk per table, its indexes included, largest first."""
    with sqlite3.connect(db) as conn:
        owner = dict(conn.execute("SELECT name, tbl_name FROM sqlite_master").fetchall())
        pages = conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall()
    totals: dict[str, int] = {}
    for name, nbytes in pages:
        table = owner.get(name, name)
        totals[table] = totals.get(table, 0) + int(nbytes)
    return sorted(totals.items(), key=lambda item: -item[1])


async def run(sizes: Sizes, work: Path) -> Result:
    data_dir = work / "lookup"
    policy = Policy()
    store = await SqliteStore.open(data_dir, policy, create=True)
    await store.close()
    say(f"lookup: filling a ledger with {count(sizes.ledger_calls)} calls")
    began = time.perf_counter()
    ledger = await asyncio.to_thread(fill_busy_ledger, data_dir, policy, sizes.ledger_calls, END)
    filled_in = time.perf_counter() - began
    db = data_dir / LEDGER_FILE
    missed = [(m.customer, m.ended, LegalBasis(m.basis)) for m in ledger.open_missed]
    lookups = workload(
        sizes.lookups + WARM_UP, ledger.customers, missed, ledger.start, ledger.end, seed=2
    )
    say(f"lookup: timing {count(sizes.lookups)} look-ups through the store and sqlite3")
    raw, close_raw = sqlite_raw(db)
    store = await SqliteStore.open(data_dir, policy, create=True)
    try:
        store_times, raw_times, hits = await _time_lookups(store, raw, lookups)
    finally:
        close_raw()
        await store.close()
    on_disk = db.stat().st_size
    per_million = on_disk / ledger.filled.calls * 1_000_000
    parts = breakdown(db)

    result = Result("lookup", f"Callback lookup: {count(ledger.filled.calls)} calls in the ledger")
    f = ledger.filled
    result.setup += [
        f"ledger: {count(f.calls)} calls over 6 months ({count(f.callbacks)} callbacks, "
        f"{count(f.recordings)} recordings, {count(f.audit_entries)} audit entries, "
        f"{count(ledger.customers)} customers); filled in {filled_in:.0f} s",
        f"{count(sizes.lookups)} look-ups after {WARM_UP} warm-up ones: half for a missed call "
        f"not yet called back ({count(hits)} found), half for a random number",
        "query plan: " + "; ".join(plan(db)),
    ]
    _rows(result, "lookup", lookups, store_times, raw_times)
    result.add(Row("ledger on disk per 1 M calls", size(per_million)))
    result.notes += [
        "baseline: the same SQL on the same file through the sqlite3 module, no event loop; "
        "both warm (the OS page cache holds the file after the fill)",
        "on disk by table (with its indexes): "
        + ", ".join(f"{name} {size(nbytes / f.calls * 1_000_000)}" for name, nbytes in parts[:5])
        + " per 1 M calls",
        "rows are bulk-loaded and secondary indexes built in one pass: a ledger grown call by "
        "call has partly filled index pages and comes out a few per cent larger",
    ]
    await _postgresql(result, sizes, work, policy, lookups)
    return result


def _rows(
    result: Result,
    prefix: str,
    lookups: list[Lookup],
    store_times: list[float],
    raw_times: list[float],
) -> None:
    timed_hits = [k for k, lookup in enumerate(lookups[WARM_UP:]) if lookup.expect_hit]
    timed_misses = [k for k, lookup in enumerate(lookups[WARM_UP:]) if not lookup.expect_hit]
    for label, p, which in (
        ("p50", 50, None),
        ("p99", 99, None),
        ("p99, a missed call found", 99, timed_hits),
        ("p99, nothing within the hour", 99, timed_misses),
    ):
        ours = store_times if which is None else [store_times[k] for k in which]
        base = raw_times if which is None else [raw_times[k] for k in which]
        if not ours:
            continue
        a, b = percentile(ours, p), percentile(base, p)
        row = Row(f"{prefix} {label}", ms(a), ms(b), ratio(a, b))
        if label == "p99":
            row = Row(row.figure, row.value, row.baseline, row.ratio, "< 1 ms", a < TARGET_P99)
        result.add(row)


async def _postgresql(
    result: Result, sizes: Sizes, work: Path, policy: Policy, lookups: list[Lookup]
) -> None:
    """The same ledger (same seed: the same calls) and the same look-ups on PostgreSQL."""
    url = server_url()
    why = reachable(url)
    if why is not None:
        result.notes.append(f"PostgreSQL not run: none at {redact(url)} ({why})")
        return
    data_dir = work / "lookup-pg"
    async with database(url) as db:
        ledger = LedgerConfig(url=db)
        async with await open_ledger(data_dir, policy, ledger, create=True):
            pass
        say(f"lookup: filling a PostgreSQL ledger with {count(sizes.ledger_calls)} calls")
        began = time.perf_counter()
        filled = await asyncio.to_thread(
            fill_busy_ledger, data_dir, policy, sizes.ledger_calls, END, ledger=ledger
        )
        filled_in = time.perf_counter() - began
        say(f"lookup: timing {count(sizes.lookups)} look-ups through the store and psycopg")
        raw, close_raw = pg_raw(db)
        store = await open_ledger(data_dir, policy, ledger)
        try:
            store_times, raw_times, _ = await _time_lookups(store, raw, lookups)
        finally:
            close_raw()
            await store.close()
        with psycopg.connect(db) as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
            on_disk = int(row[0]) if row is not None else 0
            plan = [
                str(line[0]).strip()
                for line in conn.execute(
                    f"EXPLAIN {translate(LOOKUP_SQL)}",
                    ("+38630000000", LegalBasis.CONSENT.value, ts(END), MAX_CANDIDATES),
                ).fetchall()
            ]
    result.setup += [
        f"PostgreSQL: the same {count(filled.filled.calls)} calls loaded with COPY in "
        f"{filled_in:.0f} s, the same look-ups",
        "PostgreSQL query plan: " + "; ".join(plan[:3]),
    ]
    _rows(result, "PostgreSQL lookup", lookups, store_times, raw_times)
    result.add(
        Row("PostgreSQL database per 1 M calls", size(on_disk / filled.filled.calls * 1_000_000))
    )
    result.notes.append(
        "PostgreSQL baseline: the same SQL through one psycopg connection in this thread; the "
        "store's goes through its worker thread and a REPEATABLE READ, READ ONLY transaction"
    )


Raw = Callable[[Lookup], "str | None"]


def sqlite_raw(db: Path) -> tuple[Raw, Callable[[], None]]:
    """The baseline on SQLite: the statement through the sqlite3 module."""
    raw = sqlite3.connect(db)
    raw.row_factory = sqlite3.Row

    def lookup(item: Lookup) -> str | None:
        rows = raw.execute(
            LOOKUP_SQL, (item.number, item.basis.value, ts(item.since), MAX_CANDIDATES)
        ).fetchall()
        row = next((r for r in rows if not r["answered"]), None)
        return None if row is None else str(row["call_id"])

    return lookup, raw.close


def pg_raw(url: str) -> tuple[Raw, Callable[[], None]]:
    """The baseline on PostgreSQL: the same statement (as `storage.pg` translates it)
    through a plain psycopg connection, autocommit, no worker thread."""
    raw = psycopg.connect(url, autocommit=True)
    sql = translate(LOOKUP_SQL)

    def lookup(item: Lookup) -> str | None:
        rows = raw.execute(
            sql, (item.number, item.basis.value, ts(item.since), MAX_CANDIDATES)
        ).fetchall()
        row = next((r for r in rows if not r[-1]), None)
        return None if row is None else str(row[0])

    return lookup, raw.close


async def _time_lookups(
    store: StoreApi, raw: Raw, lookups: list[Lookup]
) -> tuple[list[float], list[float], int]:
    """Each look-up through the store and through the baseline (alternating which goes
    first); both must find the same call."""

    async def through_store(lookup: Lookup) -> tuple[str | None, float]:
        began = time.perf_counter()
        found = await store.callback_candidates(lookup.number, lookup.since, lookup.basis)
        chosen = prior_call(lookup.basis, found.calls, lookup.since)
        elapsed = time.perf_counter() - began
        return (None if chosen is None else chosen.call_id), elapsed

    def through_raw(lookup: Lookup) -> tuple[str | None, float]:
        began = time.perf_counter()
        found = raw(lookup)
        return found, time.perf_counter() - began

    store_times: list[float] = []
    raw_times: list[float] = []
    hits = 0
    for k, lookup in enumerate(lookups):
        if k % 2:
            ours, ours_took = await through_store(lookup)
            theirs, theirs_took = through_raw(lookup)
        else:
            theirs, theirs_took = through_raw(lookup)
            ours, ours_took = await through_store(lookup)
        if ours != theirs:
            raise CallrecError(f"the store found {ours} and the baseline {theirs} for one look-up")
        if lookup.expect_hit and ours is None:
            raise CallrecError("a missed call nobody called back was not found")
        if k >= WARM_UP:
            store_times.append(ours_took)
            raw_times.append(theirs_took)
            hits += ours is not None
    return store_times, raw_times, hits
