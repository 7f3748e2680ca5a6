"""Many controllers, one ledger: sweeps and withdrawals of several nodes at the same time on
one PostgreSQL ledger delete every due recording exactly once and keep one audit chain."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pg_server
from storage_helpers import ALICE, BOB, POLICY, T0, record_call

from flows.outcome import Outcome
from flows.policy import Decision
from storage.factory import open_ledger
from storage.ledgers import LedgerConfig

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("storage_node_child.py")
NOW = T0 + timedelta(days=200)  # recordings made at T0 are due, those of yesterday are not
RECORDINGS = 80
SWEPT = 150  # due recordings two nodes sweep at once: one batch each, listed by both


async def _node(spec: dict[str, object]) -> dict[str, list[str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        json.dumps(spec),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, err.decode()
    result: dict[str, list[str]] = json.loads(out)
    return result


async def test_nodes_sweeping_and_withdrawing_at_once_delete_each_recording_once(
    tmp_path: Path, pg_database: str
) -> None:
    """Three controller processes sweep and withdraw the same caller concurrently on one
    PostgreSQL ledger: each due or withdrawn recording is deleted once, with one audit entry,
    nothing else is touched, and the audit chain verifies."""
    data, spool = tmp_path / "data", tmp_path / "spool"
    spool.mkdir()
    with pg_server.schema(pg_database) as url:
        ledger = LedgerConfig(url=url)
        due: set[str] = set()
        withdrawn: set[str] = set()
        kept: set[str] = set()
        async with await open_ledger(data, POLICY, create=True, ledger=ledger) as store:
            for i in range(RECORDINGS):
                at = T0 if i % 2 == 0 else NOW - timedelta(days=1)
                caller = ALICE if i % 4 < 2 else BOB
                call_id, source = await record_call(
                    store,
                    spool,
                    at=at,
                    caller=caller,
                    decision=Decision.RECORD,
                    outcome=Outcome.ANSWERED,
                )
                row = await store.ingest(call_id, source, at + timedelta(minutes=4))
                assert row is not None
                if at == T0:
                    due.add(row.id)
                elif caller == ALICE:
                    withdrawn.add(row.id)
                else:
                    kept.add(row.id)
        start = time.time() + 2.0  # both children connected and waiting by then
        common = {"data_dir": str(data), "ledger_url": url, "now": NOW.isoformat()}
        results = await asyncio.gather(
            _node({**common, "start_at": start, "caller": ALICE, "ops": ["sweep", "withdraw"]}),
            _node({**common, "start_at": start, "caller": ALICE, "ops": ["withdraw", "sweep"]}),
            _node({**common, "start_at": start, "caller": ALICE, "ops": ["sweep", "withdraw"]}),
        )
        async with await open_ledger(data, POLICY, ledger=ledger) as store:
            recordings = {r.id: r for r in await store.recordings(include_deleted=True)}
            entries = await store.audit_entries()
            report = await store.verify()
    # Every deletion is in exactly one report: the reports partition what was deleted.
    reports = [rid for node in results for ids in node.values() for rid in ids]
    reported = set(reports)
    assert len(reports) == len(reported), Counter(reports).most_common(3)
    deletions = Counter(e.subject for e in entries if e.action == "recording.deleted")
    assert report.ok, report.problems
    assert set(deletions) == due | withdrawn
    assert all(count == 1 for count in deletions.values()), deletions.most_common(3)
    assert set(reported) == due | withdrawn
    assert {rid for rid, r in recordings.items() if r.status.value == "deleted"} == due | withdrawn
    assert all(recordings[rid].status.value != "deleted" for rid in kept)
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))


async def test_two_nodes_sweeping_at_once_report_each_deletion_once(
    tmp_path: Path, pg_database: str
) -> None:
    """Two controller processes sweep one PostgreSQL ledger at the same moment: their reports
    are disjoint and together name exactly the recordings deleted, each deleted and audited
    once, and the audit chain verifies."""
    data, spool = tmp_path / "data", tmp_path / "spool"
    spool.mkdir()
    with pg_server.schema(pg_database) as url:
        ledger = LedgerConfig(url=url)
        due: set[str] = set()
        async with await open_ledger(data, POLICY, create=True, ledger=ledger) as store:
            for i in range(SWEPT):
                call_id, source = await record_call(
                    store,
                    spool,
                    at=T0 + timedelta(seconds=i),
                    caller=ALICE if i % 2 else BOB,
                    decision=Decision.RECORD,
                    outcome=Outcome.ANSWERED,
                )
                row = await store.ingest(call_id, source, T0 + timedelta(minutes=4))
                assert row is not None
                due.add(row.id)
        start = time.time() + 2.0
        common = {"data_dir": str(data), "ledger_url": url, "now": NOW.isoformat()}
        results = await asyncio.gather(
            _node({**common, "start_at": start, "caller": ALICE, "ops": ["sweep"]}),
            _node({**common, "start_at": start, "caller": ALICE, "ops": ["sweep"]}),
        )
        async with await open_ledger(data, POLICY, ledger=ledger) as store:
            recordings = await store.recordings(include_deleted=True)
            entries = await store.audit_entries()
            report = await store.verify()
    first, second = (set(ids) for node in results for ids in node.values())
    deleted = {r.id for r in recordings if r.status.value == "deleted"}
    deletions = Counter(e.subject for e in entries if e.action == "recording.deleted")
    assert report.ok, report.problems
    assert deleted == due
    assert first & second == set()
    assert first | second == deleted
    assert set(deletions) == due
    assert all(count == 1 for count in deletions.values()), deletions.most_common(3)
