"""What only the PostgreSQL ledger has to show: the same schema as SQLite's, its own guards,
and a data directory that belongs to its ledger."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import pg_server
import psycopg
import pytest
from storage_helpers import POLICY, T0, alice_calls, new_id, record_call

from flows.errors import NotFoundError, StorageError
from flows.policy import Decision, LegalBasis
from storage import deletion
from storage.factory import open_ledger
from storage.ledgers import LedgerConfig
from storage.pg import WRITE_LOCK
from storage.pg_schema import PG_MIGRATIONS
from storage.pg_sql import _with_arrays, translate
from storage.ports import DecisionRecord, RecordingStatus, Tx
from storage.schema import MIGRATIONS


def _sqlite_schema(path: Path) -> tuple[dict[str, list[str]], set[str]]:
    with sqlite3.connect(path) as raw:
        tables = [
            r[0]
            for r in raw.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        columns = {t: [r[1] for r in raw.execute(f"PRAGMA table_info({t})")] for t in tables}
        indexes = {
            r[0]
            for r in raw.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            )
        }
    return columns, indexes


def _pg_schema(url: str) -> tuple[dict[str, list[str]], set[str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
        ).fetchall()
        indexes = {
            r[0]
            for r in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
                "AND indexname NOT LIKE '%_pkey' AND indexname NOT LIKE '%_key'"
            )
        }
    columns: dict[str, list[str]] = {}
    for table, column in rows:
        columns.setdefault(table, []).append(column)
    return columns, indexes


async def test_postgresql_ledger_has_the_sqlite_schema(tmp_path: Path, pg_database: str) -> None:
    """Both backends' migrations, numbered alike, make the same tables, columns and indexes."""
    assert len(PG_MIGRATIONS) == len(MIGRATIONS)
    async with await open_ledger(tmp_path / "lite", POLICY, create=True):
        pass
    with pg_server.schema(pg_database) as url:
        async with await open_ledger(
            tmp_path / "pg", POLICY, create=True, ledger=LedgerConfig(url=url)
        ):
            pass
        assert _pg_schema(url) == _sqlite_schema(tmp_path / "lite" / "ledger.sqlite3")


async def test_audit_log_refuses_truncate_and_verify_sees_a_gutted_guard(
    tmp_path: Path, pg_database: str
) -> None:
    """TRUNCATE of the audit log is refused; a guard function replaced by one that lets
    changes through is reported by verify."""
    spool = tmp_path / "spool"
    spool.mkdir()
    with pg_server.schema(pg_database) as url:
        ledger = LedgerConfig(url=url)
        async with await open_ledger(tmp_path / "d", POLICY, create=True, ledger=ledger) as s:
            call_id, source = await record_call(s, spool)
            await s.ingest(call_id, source, T0)
            with psycopg.connect(url, autocommit=True) as conn:
                with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                    conn.execute("TRUNCATE audit")
                conn.execute(
                    "CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger "
                    "LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$"
                )
            problems = (await s.verify()).problems
    assert "ledger: the trigger audit_no_update was replaced (its definition changed)" in problems
    assert "ledger: the trigger audit_no_truncate was replaced (its definition changed)" in problems


async def test_a_data_directory_and_its_ledger_belong_together(
    tmp_path: Path, pg_database: str
) -> None:
    """A new data directory is not paired with a ledger that holds a store, a missing store
    is not made without `create`, and a SQLite data directory is not switched silently."""
    with pg_server.schema(pg_database) as url:
        ledger = LedgerConfig(url=url)
        with pytest.raises(NotFoundError, match=r"no store at .* \(the ledger .* holds none\)"):
            await open_ledger(tmp_path / "a", POLICY, ledger=ledger)
        async with await open_ledger(tmp_path / "a", POLICY, create=True, ledger=ledger):
            pass
        with pytest.raises(StorageError, match="already holds a store whose keys are not in"):
            await open_ledger(tmp_path / "b", POLICY, create=True, ledger=ledger)
        async with await open_ledger(tmp_path / "lite", POLICY, create=True):
            pass
        with pytest.raises(StorageError, match="holds a SQLite ledger"):
            await open_ledger(tmp_path / "lite", POLICY, ledger=ledger)


async def test_controllers_starting_at_once_migrate_the_ledger_once(
    tmp_path: Path, pg_database: str
) -> None:
    """Several controllers creating one new store at the same moment apply each migration
    once, share one set of keys, and every one of them verifies the ledger clean."""
    with pg_server.schema(pg_database) as url:
        ledger = LedgerConfig(url=url)
        stores = await asyncio.gather(
            *(open_ledger(tmp_path / "d", POLICY, create=True, ledger=ledger) for _ in range(4))
        )
        try:
            for store in stores:
                await store.set_overload(True, "lead", T0)
            reports = [await store.verify() for store in stores]
            assert all(report.ok for report in reports), [r.problems for r in reports]
        finally:
            for store in stores:
                await store.close()
        with psycopg.connect(url) as conn:
            versions = [r[0] for r in conn.execute("SELECT version FROM schema_version")]
    assert sorted(versions) == list(range(1, len(MIGRATIONS) + 1))


@pytest.mark.parametrize(
    ("sqlite", "postgresql"),
    [
        (
            "SELECT a FROM t WHERE b = ? AND c LIKE 'x%'",
            "SELECT a FROM t WHERE b = %s AND c LIKE 'x%%'",
        ),
        ("SELECT '?' , ?", "SELECT '?' , %s"),
        (
            "INSERT OR IGNORE INTO t (a) VALUES (?)",
            "INSERT INTO t (a) VALUES (%s) ON CONFLICT DO NOTHING",
        ),
        (
            "SELECT 1 FROM t a NOT INDEXED WHERE x IS y",
            "SELECT 1 FROM t a WHERE x IS NOT DISTINCT FROM y",
        ),
        ("SELECT 'it IS so' WHERE x IS NULL", "SELECT 'it IS so' WHERE x IS NULL"),
        ("SELECT SUM(a = 'k') FROM t", "SELECT SUM(CASE WHEN a = 'k' THEN 1 ELSE 0 END) FROM t"),
    ],
)
def test_statements_are_translated_outside_their_literals(sqlite: str, postgresql: str) -> None:
    """Placeholders and SQLite spellings are rewritten in SQL, never inside a string literal
    (where only `%` is doubled, as psycopg reads it there too)."""
    assert translate(sqlite) == postgresql


def test_long_in_lists_select_the_same_rows_as_arrays(pg_database: str) -> None:
    """A list of 16 or more placeholders goes to PostgreSQL as one array parameter: IN and
    NOT IN select exactly the rows they name, the parameters around the list in place."""
    ids = [f"r{i:02d}" for i in range(40)]
    chosen = ids[::2]
    marks = ", ".join("?" * len(chosen))
    with pg_server.schema(pg_database) as url, psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE listed (id text, tag text)")
        with conn.cursor() as cursor:
            cursor.executemany("INSERT INTO listed VALUES (%s, 'a')", [(i,) for i in ids])
        for negate, expected in ((False, set(chosen)), (True, set(ids) - set(chosen))):
            sql = (
                f"SELECT id FROM listed WHERE tag = ? AND id {'NOT ' if negate else ''}IN "
                f"({marks}) AND id NOT IN ('r00', ?)"
            )
            text, values = _with_arrays(sql, ("a", *chosen, "r01"))
            assert "?, ?" not in text and len(values) == 3
            found = {row[0] for row in conn.execute(translate(text), values)}
            assert found == expected - {"r00", "r01"}


async def test_a_call_starts_while_another_node_holds_the_ledgers_write_lock(
    tmp_path: Path, pg_database: str
) -> None:
    """While another session holds the ledger's advisory write lock (a node mid-sweep), a
    call start commits at once; the decision's audit entry waits for the lock and commits
    after it is released, on one unforked chain."""
    with pg_server.schema(pg_database) as url:
        ledger = LedgerConfig(url=url)
        async with await open_ledger(tmp_path / "d", POLICY, create=True, ledger=ledger) as s:
            call_id = new_id()
            with psycopg.connect(url) as holder:
                holder.execute(
                    "SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))", (WRITE_LOCK,)
                )
                await asyncio.wait_for(
                    s.start_call(alice_calls(call_id, "chan-1")),
                    timeout=30,
                )
                decision = asyncio.ensure_future(
                    s.commit_decision(
                        DecisionRecord(
                            call_id=call_id,
                            decision=Decision.RECORD,
                            legal_basis=LegalBasis.CONSENT,
                            digit="1",
                            reason="consented",
                            prompt=None,
                            prompt_sha256=None,
                            decided_at=T0 + timedelta(seconds=10),
                        )
                    )
                )
                await asyncio.sleep(1.0)
                assert not decision.done()  # its audit append waits for the chain's head
                holder.rollback()
                await asyncio.wait_for(decision, timeout=30)
            call = await s.get_call(call_id)
            report = await s.verify()
    assert call is not None and call.decision == Decision.RECORD.value
    assert report.ok, report.problems


async def test_a_node_whose_keys_are_not_the_ledgers_is_refused(
    tmp_path: Path, pg_database: str
) -> None:
    """A second data directory on a shared ledger opens with a copy of the first one's keys
    and appends to the one chain, every entry of which verifies; one with another store's
    audit key, or another pseudonym key, is refused with a line naming the key, before it
    writes anything."""
    spool = tmp_path / "spool"
    spool.mkdir()
    first, second, other = tmp_path / "a", tmp_path / "b", tmp_path / "other"
    keys = ("pseudonym.key", "audit.key", "checkpoint.key", "checkpoint.pub")
    with pg_server.schema(pg_database) as url, pg_server.schema(pg_database) as other_url:
        ledger = LedgerConfig(url=url)
        async with await open_ledger(first, POLICY, create=True, ledger=ledger) as store:
            call_id, source = await record_call(store, spool)
            await store.ingest(call_id, source, T0)
        async with await open_ledger(
            other, POLICY, create=True, ledger=LedgerConfig(url=other_url)
        ):
            pass
        second.mkdir(mode=0o700)
        for name in keys:
            shutil.copy2(first / name, second / name)
        async with await open_ledger(second, POLICY, ledger=ledger) as store:
            call_id, source = await record_call(store, spool)
            await store.ingest(call_id, source, T0)
            # Its recordings and checkpoints are its own directory's here; the chain is one.
            problems = (await store.verify()).problems
        assert [p for p in problems if p.startswith("audit:")] == [], problems
        head = await _audit_head(url)
        shutil.copy2(other / "audit.key", second / "audit.key")
        with pytest.raises(StorageError, match=r"audit\.key is not the key of the ledger"):
            await open_ledger(second, POLICY, ledger=ledger)
        shutil.copy2(first / "audit.key", second / "audit.key")
        shutil.copy2(other / "pseudonym.key", second / "pseudonym.key")
        with pytest.raises(StorageError, match=r"pseudonym\.key is not the pseudonym key"):
            await open_ledger(second, POLICY, ledger=ledger)
        assert await _audit_head(url) == head


async def _audit_head(url: str) -> tuple[int, str]:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


async def test_a_page_another_node_deletes_under_the_sweep_does_not_end_it(
    tmp_path: Path, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep whose first page another node holds locked and then commits as deleted goes
    on to delete every other due recording in the same run, each once, and all verifies."""
    monkeypatch.setattr("storage.sweep.SWEEP_BATCH", 2)
    spool = tmp_path / "spool"
    spool.mkdir()
    with pg_server.schema(pg_database) as url:
        ledger = LedgerConfig(url=url)
        data = tmp_path / "store"
        a = await open_ledger(data, POLICY, ledger, create=True, controller_id="node-a")
        b = await open_ledger(data, POLICY, ledger, controller_id="node-b")
        try:
            rows = []
            for _ in range(6):
                call_id, source = await record_call(a, spool)
                row = await a.ingest(call_id, source, T0 + timedelta(minutes=4))
                assert row is not None
                rows.append(row)
            rows.sort(key=lambda r: (r.delete_after, r.id))
            first = [r.id for r in rows[:2]]  # the first page of B's sweep
            now = max(r.delete_after for r in rows) + timedelta(hours=1)
            # The holder is node A's own deletion, not a bare UPDATE: each deleted recording
            # then has its files gone and its audit entry, as verify wants.
            holding = _hold_claim(monkeypatch, first)
            taking = asyncio.create_task(
                deletion.delete_batch(
                    a.ctx, [deletion.Target(i, None) for i in first], now, "retention"
                )
            )
            await asyncio.to_thread(holding.reached.wait, 30)
            assert holding.pid is not None
            sweeping = asyncio.create_task(b.sweep(now))
            try:
                # B listed A's rows, found their files gone, and its commit now waits
                # for A's.
                await asyncio.to_thread(_wait_until_blocked_by, url, holding.pid)
            finally:
                holding.release.set()
            taken = await asyncio.wait_for(taking, 30)
            swept = await asyncio.wait_for(sweeping, 30)

            assert taken == dict.fromkeys(first)
            assert sorted(swept.deleted) == sorted(r.id for r in rows[2:])
            assert swept.count == 4 and not swept.problems
            for row in rows:
                after = await b.recording(row.id)
                assert after is not None and after.status is RecordingStatus.DELETED
                actions = [entry.action for entry in await b.audit_entries(row.id)]
                assert actions.count("recording.deleted") == 1, (row.id, actions)
            report = await b.verify(now=now)
            assert report.ok and not report.in_flight, report.problems
        finally:
            await b.close()
            await a.close()


class _Held:
    """Where a deletion's transaction stops once it has marked its rows deleted."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.release = threading.Event()
        self.pid: int | None = None  # the backend of the held transaction


def _hold_claim(monkeypatch: pytest.MonkeyPatch, ids: Sequence[str]) -> _Held:
    """The deletion of exactly `ids` stops inside its transaction after its claim (rows
    marked deleted and locked, not committed) until released; any other claim goes on."""
    held = _Held()
    claim = deletion.claim

    def holding(tx: Tx, targets: Sequence[deletion.Target], when: str, reason: str) -> set[str]:
        claimed = claim(tx, targets, when, reason)
        if sorted(t.recording_id for t in targets) == sorted(ids) and not held.reached.is_set():
            held.pid = int(tx.one("SELECT pg_backend_pid() AS pid")["pid"])
            held.reached.set()
            held.release.wait(60)
        return claimed

    monkeypatch.setattr(deletion, "claim", holding)
    return held


def _wait_until_blocked_by(url: str, pid: int) -> None:
    """Until a sweep's commit of its deletions waits for a lock that backend `pid` holds
    (the audit's head, then the rows)."""
    deadline = time.monotonic() + 30
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid)) "
                "AND wait_event_type = 'Lock'",
                (pid,),
            ).fetchone()
            if waiting is not None and waiting[0]:
                return
            time.sleep(0.05)
    raise AssertionError("the sweep never waited for the other node's deletion")
