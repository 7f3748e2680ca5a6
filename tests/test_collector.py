"""The running controller's collection of MixMonitor files: only closed files are stored,
failed ingests are retried while it runs, withdrawals wait for files still in the spool,
and a call whose end never came is closed after the longest plausible call."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from fakes import ListSink, SetClock
from storage_helpers import ALICE, POLICY, T0, open_store, record_call, wav_bytes

from agi.collector import RecordingCollector
from agi.session import SessionDeps, finish_call
from agi.spool import SpoolWatch
from agi.stasis import _outcome_after_restart
from flows.errors import StoreFullError
from flows.outcome import Outcome
from flows.policy import LegalBasis
from storage import files
from storage.calls import END_WAIT
from storage.ports import CallRow, Ledger, RecordingStatus, WithdrawalVia
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


@contextlib.asynccontextmanager
async def finishing(
    store: Store, spool: Path, ledger: Ledger | None = None
) -> AsyncIterator[tuple[SessionDeps, ListSink]]:
    """What a controller's sessions share, enough to finish calls: the store (or `ledger`
    in front of it) and a running collector."""
    sink, clock = ListSink(), SetClock(T0 + timedelta(minutes=5))
    collector = RecordingCollector(
        store, store, clock, sink, SpoolWatch(spool), close_wait=0.3, retry_first=0.01
    )
    collector.start(check=False)
    deps = SessionDeps(
        ledger=store if ledger is None else ledger,
        store=store,
        clock=clock,
        events=sink,
        spool_dir=spool,
        prompt_versions={},
        collector=collector,
    )
    try:
        yield deps, sink
    finally:
        await collector.stop()


def transactions_shared(store: Store) -> int | None:
    """How many of the SQLite ledger's transactions carried more than one write (None on
    PostgreSQL, whose writes each commit at once)."""
    groups = getattr(store.ctx.db, "groups", None)
    return groups if isinstance(groups, int) else None


async def test_a_recorded_call_ends_in_the_commit_of_its_recording(
    store: Store, spool: Path
) -> None:
    """The end of a call whose file is known is not committed alone: it waits for the
    file's ingest and goes in the same transaction; both are stored when the call is
    finished."""
    async with finishing(store, spool) as (deps, _):
        call_id, path = await record_call(store, spool, end=False)
        shared = transactions_shared(store)
        with path.open("ab") as mixmonitor:  # open until after the hangup, as it is
            mixmonitor.write(b"\x01\x02" * 100)
            mixmonitor.flush()
            finishing_call = asyncio.create_task(
                finish_call(
                    call_id, Outcome.ANSWERED, deps, agent="Local/agent-1@ctx", file=str(path)
                )
            )
            await asyncio.sleep(END_WAIT / 5)
            assert not finishing_call.done()
            mixmonitor.write(b"\x03\x04" * 100)  # its last frames
        recording = await finishing_call
    assert recording is not None and recording.status is RecordingStatus.STORED
    row = await store.get_call(call_id)
    assert row is not None and row.ended_at == T0 + timedelta(minutes=5)
    assert (row.outcome, row.agent) == (Outcome.ANSWERED, "Local/agent-1@ctx")
    assert not path.exists()
    if shared is not None:
        assert transactions_shared(store) == shared + 1


async def test_a_recorded_call_whose_file_never_came_is_ended_and_marked(
    store: Store, spool: Path
) -> None:
    """MixMonitor never ran (the caller left before the queue): the end is still stored,
    and the decision to record is marked as not carried out."""
    call_id, path = await record_call(store, spool, end=False)
    path.unlink()
    async with finishing(store, spool) as (deps, sink):
        assert await finish_call(call_id, Outcome.MISSED, deps, file=str(path)) is None
    row = await store.get_call(call_id)
    assert row is not None and row.outcome is Outcome.MISSED
    assert sink.kinds() == ["recording/skipped"]
    actions = [entry.action for entry in await store.audit_entries(subject=call_id)]
    assert "recording.not_started" in actions


class _EndRefused:
    """The store, except that it cannot take a call's end (a full disk for a moment)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def end_call(self, *args: object, **options: object) -> CallRow:
        raise StoreFullError("no space left for the ledger (injected)")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def test_a_recording_is_stored_when_its_call_end_could_not_be(
    store: Store, spool: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The end is refused: the finished file is stored all the same (kept, and due for
    deletion on its date), and the call stays open. Judged later without its spool file (a
    restart, or the check for calls no end was reported for), it counts as answered by its
    stored audio, never as a missed call to be called back."""
    async with finishing(store, spool, cast(Ledger, _EndRefused(store))) as (deps, _):
        call_id, path = await record_call(store, spool, end=False)
        recording = await finish_call(call_id, Outcome.ANSWERED, deps, file=str(path))
        assert recording is not None and recording.status is RecordingStatus.STORED
        row = await store.get_call(call_id)
        assert row is not None and row.ended_at is None
        assert f"call {call_id}: outcome answered not stored" in caplog.text
        assert not path.exists()
        [open_row] = await store.open_calls()
        stored = await store.has_stored_audio(call_id)  # what a restarted controller reads
        assert stored and _outcome_after_restart(open_row, stored=stored) is Outcome.ANSWERED
        cast(SetClock, deps.clock).advance(timedelta(hours=13))
        await deps.collector.check()
    row = await store.get_call(call_id)
    assert row is not None and row.outcome is Outcome.ANSWERED
    later = T0 + timedelta(hours=13)
    found = await store.callback_candidates(ALICE, later - timedelta(days=1), LegalBasis.CONSENT)
    assert [call.call_id for call in found.calls] == []


async def test_a_call_end_survives_its_finisher_being_cancelled(store: Store, spool: Path) -> None:
    """A shutdown cancels a call's worker just as it finishes the call: its end is stored
    all the same."""
    async with finishing(store, spool) as (deps, _):
        call_id, path = await record_call(store, spool, end=False)
        path.unlink()
        finishing_call = asyncio.create_task(finish_call(call_id, Outcome.MISSED, deps))
        await asyncio.sleep(0)
        finishing_call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await finishing_call
        for _ in range(200):
            row = await store.get_call(call_id)
            if row is not None and row.ended_at is not None:
                break
            await asyncio.sleep(0.01)
    assert row is not None and row.outcome is Outcome.MISSED
