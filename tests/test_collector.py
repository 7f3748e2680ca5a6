"""The running controller's collection of MixMonitor files: only closed files are stored,
failed ingests are retried while it runs, withdrawals wait for files still in the spool,
and a call whose end never came is closed after the longest plausible call."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from fakes import ListSink, SetClock
from storage_helpers import ALICE, POLICY, T0, open_store, record_call, wav_bytes

from agi.collector import RecordingCollector
from agi.spool import SpoolWatch
from flows.outcome import Outcome
from storage import files
from storage.ports import RecordingStatus, WithdrawalVia
from storage.store import Store

pytestmark = pytest.mark.usefixtures("ledger")


@pytest.fixture
async def store(tmp_path: Path, spool: Path, ledger: str) -> AsyncIterator[Store]:
    async with await open_store(tmp_path / "data", POLICY, spool_dir=spool, create=True) as opened:
        yield opened


@pytest.fixture
async def collector(store: Store, spool: Path) -> AsyncIterator[RecordingCollector]:
    clock = SetClock(T0 + timedelta(minutes=5))
    collector = RecordingCollector(
        store,
        store,
        clock,
        ListSink(),
        SpoolWatch(spool),
        close_wait=0.3,
        retry_first=0.01,
        retry_max=0.01,
    )
    collector.start(check=False)  # the tests run the checks themselves
    try:
        yield collector
    finally:
        await collector.stop()


async def retried(collector: RecordingCollector, call_id: str) -> None:
    """Run the controller's periodic check until the call's file is collected."""
    for _ in range(100):
        await collector.check()
        await collector.drain()
        if not collector.pending(call_id):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"call {call_id} was never collected")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_a_file_still_open_is_left_in_the_spool_until_it_is_closed(
    store: Store, spool: Path, collector: RecordingCollector
) -> None:
    """A file some writer still has open is never hashed: it stays in the spool, and once
    it is closed (the last frames and the header written) the store keeps it as closed."""
    call_id, path = await record_call(store, spool, audio=wav_bytes(frames=800))
    with path.open("ab") as writer:
        writer.write(b"\x01\x02" * 2000)
        writer.flush()
        assert await collector.collect(call_id) is None
        assert path.exists() and collector.retrying() == {call_id: 1}
        assert await store.recordings() == []
        writer.write(b"\x03\x04" * 1000)  # MixMonitor's buffered last frames
    final = path.read_bytes()
    await retried(collector, call_id)
    [recording] = await store.recordings()
    assert recording.status is RecordingStatus.STORED
    assert (recording.size, recording.sha256) == (len(final), sha256(final))
    assert recording.path is not None and Path(recording.path).read_bytes() == final
    assert not path.exists() and collector.retrying() == {}


async def test_a_file_closed_before_the_watch_began_is_collected(
    store: Store, spool: Path, tmp_path: Path
) -> None:
    """After a restart no close is seen for a file finished while the controller was away:
    unchanged since before the watch began, and held open by nobody, it is collected."""
    call_id, path = await record_call(store, spool)
    old = path.stat().st_mtime - 60
    os.utime(path, (old, old))
    watch = SpoolWatch(spool, quiet=1.0)
    collector = RecordingCollector(store, store, SetClock(), ListSink(), watch, close_wait=0.2)
    collector.start(check=False)
    try:
        recording = await collector.collect(call_id)
    finally:
        await collector.stop()
    assert recording is not None and recording.status is RecordingStatus.STORED


async def test_a_failed_ingest_is_retried_while_the_controller_runs(
    store: Store,
    spool: Path,
    collector: RecordingCollector,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store's disk is full when the call ends: the file stays in the spool and the
    running controller tries again, with a pause, until it is stored; no restart needed."""
    call_id, path = await record_call(store, spool)
    audio = path.read_bytes()
    attempts = 0
    real = files._fsync_and_hash

    def full(source: Path) -> tuple[str, int]:
        nonlocal attempts
        attempts += 1
        if attempts <= 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(source)

    monkeypatch.setattr(files, "_fsync_and_hash", full)
    assert await collector.collect(call_id) is None
    assert path.read_bytes() == audio and collector.retrying() == {call_id: 1}
    await retried(collector, call_id)
    assert attempts == 3
    [recording] = await store.recordings()
    assert recording.status is RecordingStatus.STORED and recording.sha256 == sha256(audio)
    assert not path.exists()


async def test_a_withdrawal_is_complete_only_once_the_spool_file_is_gone(
    store: Store, spool: Path, collector: RecordingCollector
) -> None:
    """A consent recording whose ingest failed is still in the spool when the caller
    withdraws: the withdrawal stays open (nothing of it may remain anywhere) until the
    controller has taken the file in and deleted it."""
    call_id, path = await record_call(store, spool, caller=ALICE)
    now = T0 + timedelta(hours=1)
    report = await store.withdraw(ALICE, WithdrawalVia.PHONE, now, "agent 7", now)
    assert report.completed_at is None, "the recording is still in the spool"
    assert path.exists()
    await collector.collect(call_id)
    assert not path.exists()
    [recording] = await store.recordings(include_deleted=True)
    assert recording.status is RecordingStatus.DELETED
    [withdrawal] = await store.withdrawals()
    assert withdrawal.completed_at is not None and withdrawal.deleted == (recording.id,)


async def test_a_call_whose_end_never_came_is_closed_and_its_file_stored(
    store: Store, spool: Path, collector: RecordingCollector
) -> None:
    """A recorded call with no reported end is closed by the running controller once it has
    been open longer than any call lasts (audited), and its finished file is stored; a call
    within the bound is left alone."""
    stale_id, stale = await record_call(store, spool, end=False)
    fresh_id, _ = await record_call(store, spool, at=T0 + timedelta(hours=11), end=False)
    clock = SetClock(T0 + timedelta(hours=12, minutes=1))
    collector._clock = clock  # the controller's clock, half a day on
    await collector.check()
    await collector.drain()
    row = await store.get_call(stale_id)
    assert row is not None and row.ended_at == clock.now()
    assert row.outcome is Outcome.ANSWERED  # audio beyond the header: an agent talked
    [recording] = await store.recordings()
    assert recording.call_id == stale_id and recording.status is RecordingStatus.STORED
    assert not stale.exists()
    fresh = await store.get_call(fresh_id)
    assert fresh is not None and fresh.ended_at is None
    actions = [entry.action for entry in await store.audit_entries(subject=stale_id)]
    assert "call.closed_unreported" in actions
