"""The store and the spool: a withdrawal waits for the files of its calls still to come or
still in the spool, reconcile closes calls whose end was never reported, and leaves a file
the writer may not have finished."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from storage_helpers import ALICE, POLICY, T0, open_store, record_call

from storage.ports import WithdrawalVia
from storage.sqlite import SqliteStore

pytestmark = pytest.mark.usefixtures("ledger")


@pytest.fixture
async def store(tmp_path: Path, spool: Path, ledger: str) -> AsyncIterator[SqliteStore]:
    async with await open_store(tmp_path / "data", POLICY, spool_dir=spool, create=True) as opened:
        yield opened


async def test_a_withdrawal_waits_for_a_file_still_in_the_spool(
    store: SqliteStore, spool: Path
) -> None:
    """A consent recording not yet ingested (its ingest failed) is in the spool when the
    caller withdraws: the withdrawal is not complete until it has been stored and deleted."""
    call_id, path = await record_call(store, spool, caller=ALICE)
    now = T0 + timedelta(hours=1)
    report = await store.withdraw(ALICE, WithdrawalVia.PHONE, now, "agent 7", now)
    assert report.completed_at is None, "the recording is still in the spool"
    await store.ingest(call_id, path, now + timedelta(minutes=1))
    [withdrawal] = await store.withdrawals()
    assert withdrawal.completed_at is not None and len(withdrawal.deleted) == 1
    assert not path.exists()


async def test_a_withdrawal_waits_for_a_call_still_recording(
    store: SqliteStore, spool: Path
) -> None:
    """A consent call of the caller still in progress when the withdrawal is registered:
    its recording is yet to come, so the withdrawal is not complete."""
    await record_call(store, spool, caller=ALICE, end=False)
    now = T0 + timedelta(minutes=1)
    report = await store.withdraw(ALICE, WithdrawalVia.PHONE, now, "agent 7", now)
    assert report.completed_at is None


async def test_reconcile_closes_calls_open_longer_than_any_call(
    store: SqliteStore, spool: Path
) -> None:
    """At start, a decided call open for longer than the longest call is closed and its
    file ingested; a younger open call keeps its file in the spool."""
    stale_id, stale = await record_call(store, spool, end=False)
    young_id, young = await record_call(store, spool, at=T0 + timedelta(hours=10), end=False)
    now = T0 + timedelta(hours=12, minutes=1)
    report = await store.reconcile(spool, now, longest_call=timedelta(hours=12))
    assert report.ingested == (stale_id,)
    assert not stale.exists() and young.exists()
    row = await store.get_call(stale_id)
    assert row is not None and row.ended_at == now
    young_row = await store.get_call(young_id)
    assert young_row is not None and young_row.ended_at is None


async def test_reconcile_leaves_a_file_that_may_still_be_written(
    store: SqliteStore, spool: Path
) -> None:
    """A spool file of an ended call that the writer may not have finished is not hashed at
    start: it stays for the controller, and is not reported as a file that never came."""
    call_id, path = await record_call(store, spool)
    report = await store.reconcile(spool, T0 + timedelta(hours=1), finished=lambda _: False)
    assert report.ingested == () and path.exists()
    assert any("may still be written" in line for line in report.flagged)
    again = await store.reconcile(spool, T0 + timedelta(hours=1), finished=lambda _: False)
    assert not any("no file arrived" in line for line in again.flagged)
    assert await store.recordings() == []
    assert call_id in path.name
