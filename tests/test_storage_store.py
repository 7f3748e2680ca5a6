"""What the data protection officer relies on, on a real SQLite file and real files."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import re
import sqlite3
import stat
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from storage_helpers import (
    ALICE,
    BOB,
    LEDGER_INTEGRITY,
    POLICY,
    T0,
    alice_calls,
    keep_recording,
    new_id,
    open_store,
    raw_ledger,
    record_call,
    wav_bytes,
)

from flows.communication import MAX_CANDIDATES, look_up_answer
from flows.errors import AccessRefused, NotFoundError, StorageError
from flows.events import PriorCallFound
from flows.outcome import Outcome
from flows.policy import Decision, Direction, LegalBasis, Purpose
from flows.retention import delete_after
from storage import deletion
from storage.audit import load_key, pseudonym
from storage.ports import (
    AuditEntry,
    CallStart,
    DecisionRecord,
    Ledger,
    Queries,
    RecordingStatus,
    RecordingStore,
    WithdrawalVia,
)
from storage.schema import MIGRATIONS, migrate
from storage.sqlite import (
    MISSED_CANDIDATES_SQL,
    SWEEP_BATCH,
    SqliteStore,
    make_recording_id,
)
from storage.values import ts

pytestmark = pytest.mark.usefixtures("ledger")


@pytest.fixture
async def store(tmp_path: Path, spool: Path, ledger: str) -> AsyncIterator[SqliteStore]:
    async with await open_store(tmp_path / "data", POLICY, spool_dir=spool, create=True) as opened:
        yield opened


def _raw(store: SqliteStore) -> contextlib.AbstractContextManager[Any]:
    return raw_ledger(store.data_dir)


# ------------------------------------------------------------------- the ledger


async def test_store_implements_the_ports(store: SqliteStore) -> None:
    """One object is the Ledger, the RecordingStore and the Queries (mypy checks these)."""
    ledger: Ledger = store
    recordings: RecordingStore = store
    queries: Queries = store
    assert {id(ledger), id(recordings), id(queries)} == {id(store)}


async def test_store_files_are_private(store: SqliteStore, ledger: str) -> None:
    """The data directory is 0700, the ledger and the pseudonym key 0600, the key 32 bytes."""
    assert stat.S_IMODE(store.data_dir.stat().st_mode) == 0o700
    file = store.data_dir / "ledger.sqlite3"
    key = store.data_dir / "pseudonym.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(key.read_bytes()) == 32
    if ledger == "postgresql":  # the ledger is the server's; no file of it here
        assert not file.exists()
        return
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    with _raw(store) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_decision_is_committed_before_return(store: SqliteStore, spool: Path) -> None:
    """Another connection sees the decision as soon as commit_decision returns."""
    call_id, _ = await record_call(store, spool, end=False)
    with _raw(store) as raw:
        row = raw.execute(
            "SELECT decision, legal_basis, digit FROM calls WHERE call_id = ?", (call_id,)
        ).fetchone()
    assert row == ("record", "consent", "1")


async def test_a_decision_carries_its_call_start_however_the_two_race(
    store: SqliteStore,
) -> None:
    """A decision given its call's start records the call first when the start has not
    reached the ledger (a lazy start, or one on another connection), and leaves it alone
    when it has; a start for another channel under the same call id is refused."""
    start = alice_calls(new_id(), "1796457000.1")
    decided = DecisionRecord(
        start.call_id, Decision.RECORD, LegalBasis.CONSENT, "1", "test", None, None, T0
    )
    await asyncio.gather(store.commit_decision(decided, start), store.start_call(start))
    row = await store.get_call(start.call_id)
    assert row is not None and row.decision is Decision.RECORD and row.started_at == T0
    other = replace(start, call_id=new_id())
    await store.start_call(other)
    clash = replace(other, channel_id="1796457000.2")
    with pytest.raises(StorageError, match="another channel"):
        await store.commit_decision(replace(decided, call_id=other.call_id), clash)
    row = await store.get_call(other.call_id)
    assert row is not None and row.decided_at is None


async def test_a_committed_decision_is_final(store: SqliteStore, spool: Path) -> None:
    """The same decision again is a no-op; a different one is refused."""
    call_id, _ = await record_call(store, spool, decision=Decision.REFUSE, end=False)
    again = DecisionRecord(
        call_id, Decision.REFUSE, LegalBasis.CONSENT, "2", "again", None, None, T0
    )
    await store.commit_decision(again)
    with pytest.raises(StorageError, match="already committed"):
        await store.commit_decision(
            DecisionRecord(call_id, Decision.RECORD, LegalBasis.CONSENT, "1", "x", None, None, T0)
        )
    with pytest.raises(StorageError, match="no committed decision to record"):
        await store.set_recording_file(call_id, str(spool / "x.wav"))
    row = await store.get_call(call_id)
    assert row is not None and row.decision is Decision.REFUSE


async def _prior(
    store: SqliteStore, customer: str, since: datetime, basis: LegalBasis = LegalBasis.CONSENT
) -> PriorCallFound | None:
    """What a callback of `basis` would answer, from the store's candidates."""
    found = await store.callback_candidates(customer, since, basis)
    answer = look_up_answer(basis, since, ALICE, found.calls, found.withdrawals)
    return answer if isinstance(answer, PriorCallFound) else None


async def test_callback_candidates_give_the_newest_not_answered(
    store: SqliteStore, spool: Path
) -> None:
    """The newest missed call within the window wins; one whose callback was answered is
    passed over, one whose callback nobody picked up is not; answered calls and other
    callers never match."""
    older, _ = await record_call(store, spool, outcome=Outcome.MISSED, decision=Decision.NONE)
    newer, _ = await record_call(
        store, spool, at=T0 + timedelta(minutes=10), outcome=Outcome.MISSED
    )
    await record_call(store, spool, at=T0 + timedelta(minutes=20), outcome=Outcome.ANSWERED)
    await record_call(
        store, spool, caller=BOB, at=T0 + timedelta(minutes=25), outcome=Outcome.MISSED
    )
    since = T0 - timedelta(hours=1)
    found = await _prior(store, ALICE, since)
    assert found is not None and found.call_id == newer
    assert found.decision is Decision.RECORD and found.line == "service"
    assert found.consent_withdrawn is False
    assert await _prior(store, "041 111 111", since) is not None  # national form
    assert await _prior(store, ALICE, T0 + timedelta(minutes=30)) is None
    await record_call(  # a callback nobody picked up: the missed call stays open
        store,
        spool,
        at=T0 + timedelta(minutes=30),
        direction=Direction.CALLBACK,
        caller=ALICE,
        linked_to=newer,
        window=timedelta(hours=1),
        outcome=Outcome.MISSED,
    )
    found = await _prior(store, ALICE, since)
    assert found is not None and found.call_id == newer
    await record_call(  # a callback the customer picked up answers it, once
        store,
        spool,
        at=T0 + timedelta(minutes=40),
        direction=Direction.CALLBACK,
        caller=ALICE,
        linked_to=newer,
        window=timedelta(hours=1),
    )
    found = await _prior(store, ALICE, since)
    assert found is not None and found.call_id == older
    assert found.decision is Decision.NONE


async def test_callback_candidates_are_of_one_legal_basis(store: SqliteStore, spool: Path) -> None:
    """A sales callback never finds a missed service call, nor the reverse."""
    service, _ = await record_call(store, spool, outcome=Outcome.MISSED, decision=Decision.REFUSE)
    sales, _ = await record_call(
        store, spool, line="sales", at=T0 + timedelta(minutes=5), outcome=Outcome.MISSED
    )
    since = T0 - timedelta(hours=1)
    as_service = await _prior(store, ALICE, since, LegalBasis.CONSENT)
    as_sales = await _prior(store, ALICE, since, LegalBasis.ZEKOM2_214_7)
    assert as_service is not None and as_service.call_id == service
    assert as_sales is not None and as_sales.call_id == sales


async def test_a_missed_call_is_answered_once(store: SqliteStore, spool: Path) -> None:
    """Two callbacks that both reach the customer: the first answer is the one on record."""
    missed, _ = await record_call(store, spool, outcome=Outcome.MISSED)
    first, _ = await record_call(
        store,
        spool,
        at=T0 + timedelta(minutes=10),
        direction=Direction.CALLBACK,
        caller=ALICE,
        linked_to=missed,
    )
    await record_call(
        store,
        spool,
        at=T0 + timedelta(minutes=12),
        direction=Direction.CALLBACK,
        caller=ALICE,
        linked_to=missed,
    )
    with _raw(store) as raw:
        rows = raw.execute("SELECT missed_call_id, callback_call_id FROM callback_answers")
        assert [tuple(r) for r in rows] == [(missed, first)]
        with pytest.raises(LEDGER_INTEGRITY):
            raw.execute(
                "INSERT INTO callback_answers VALUES (?, ?, '2025-01-01')", (missed, new_id())
            )


async def test_withdrawal_voids_consent_for_later_callbacks(
    store: SqliteStore, spool: Path
) -> None:
    """A withdrawal registered after the missed call's decision sets consent_withdrawn; a
    consent given after the withdrawal is not affected."""
    missed, _ = await record_call(store, spool, outcome=Outcome.MISSED)
    await store.withdraw(
        ALICE, WithdrawalVia.PHONE, T0 + timedelta(minutes=5), "agent 7", T0 + timedelta(minutes=5)
    )
    found = await _prior(store, ALICE, T0)
    assert found is not None and found.call_id == missed and found.consent_withdrawn
    later, _ = await record_call(
        store, spool, at=T0 + timedelta(minutes=30), outcome=Outcome.MISSED
    )
    found = await _prior(store, ALICE, T0)
    assert found is not None and found.call_id == later and not found.consent_withdrawn


async def test_callback_candidates_see_a_withdrawal_named_by_the_call(
    store: SqliteStore, spool: Path
) -> None:
    """A withdrawal that names the missed call (not the number) also reaches the callback's
    look-up: the callback is told the consent was withdrawn."""
    missed, _ = await record_call(store, spool, outcome=Outcome.MISSED)
    await record_call(store, spool, caller=BOB, outcome=Outcome.MISSED)
    await store.withdraw(
        None,
        WithdrawalVia.PHONE,
        T0 + timedelta(minutes=5),
        "agent 7",
        T0 + timedelta(minutes=5),
        call_id=missed,
    )
    found = await _prior(store, ALICE, T0)
    assert found is not None and found.call_id == missed and found.consent_withdrawn
    other = await _prior(store, BOB, T0)
    assert other is not None and not other.consent_withdrawn


def _lookup_plan(raw: sqlite3.Connection) -> str:
    params = (ALICE, LegalBasis.CONSENT.value, "2025", MAX_CANDIDATES)
    rows = raw.execute(f"EXPLAIN QUERY PLAN {MISSED_CANDIDATES_SQL}", params)
    return " ".join(str(row[-1]) for row in rows)


@pytest.mark.sqlite_only("EXPLAIN QUERY PLAN and its wording are SQLite's")
async def test_callback_candidates_use_their_index(store: SqliteStore, spool: Path) -> None:
    """The look-up is answered from its index alone (the calls table is not read), so it
    stays fast at millions of calls."""
    await record_call(store, spool, outcome=Outcome.MISSED)
    with _raw(store) as raw:
        plan = _lookup_plan(raw)
    assert (
        "SEARCH c USING COVERING INDEX calls_missed (customer=? AND legal_basis=? AND ended_at>?)"
        in plan
    )
    assert "callback_answers" in plan


async def test_overload_switch_is_explicit_and_audited(store: SqliteStore) -> None:
    """The switch starts off; each change is an audit entry naming who turned it."""
    assert await store.overload() is False
    await store.set_overload(True, "shift lead", T0)
    assert await store.overload() is True
    await store.set_overload(False, "shift lead", T0 + timedelta(hours=2))
    assert await store.overload() is False
    actions = [(e.action, e.details["by"]) for e in await store.audit_entries("overload")]
    assert actions == [("overload.on", "shift lead"), ("overload.off", "shift lead")]


async def test_open_calls_lists_calls_not_ended(store: SqliteStore, spool: Path) -> None:
    """Calls started and not ended are listed; ended ones are not."""
    open_id, _ = await record_call(store, spool, end=False)
    await record_call(store, spool)
    assert [row.call_id for row in await store.open_calls()] == [open_id]
    await store.end_call(open_id, T0 + timedelta(minutes=1), Outcome.ANSWERED)
    await store.end_call(open_id, T0 + timedelta(minutes=9), Outcome.MISSED)  # first end wins
    row = await store.get_call(open_id)
    assert row is not None and row.outcome is Outcome.ANSWERED
    assert await store.open_calls() == []


# --------------------------------------------------------------------- ingest


async def test_ingest_stores_the_file_durably_with_its_metadata(
    store: SqliteStore, spool: Path
) -> None:
    """The file moves into recordings/YYYY/MM/DD/<id>.wav, mode 0600, with its
    SHA-256, the call's line, basis, numbers, purposes and a six-month delete-after."""
    call_id, source = await record_call(store, spool)
    audio = source.read_bytes()
    row = await store.ingest(call_id, source, T0 + timedelta(minutes=4))
    assert row is not None and row.status is RecordingStatus.STORED
    assert not source.exists()
    assert row.path is not None
    stored = Path(row.path)
    assert stored.parent == store.recordings_dir / "2025" / "03" / "03"
    assert stored.name == f"{row.id}.wav" and row.id != call_id
    assert stored.read_bytes() == audio
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert row.sha256 == hashlib.sha256(audio).hexdigest() and row.size == len(audio)
    assert (row.line, row.legal_basis, row.caller, row.dialed) == (
        "service",
        LegalBasis.CONSENT,
        ALICE,
        "+38640404040",
    )
    assert row.created_at == T0 + timedelta(seconds=12)  # when the decision started it
    assert row.delete_after == delete_after(row.created_at, months=6, tz="Europe/Ljubljana")
    assert row.purposes == {Purpose.QUALITY, Purpose.EVIDENCE}
    assert await store.recordings() == [row]


async def test_a_decision_to_record_is_marked_unrecorded_once_and_never_when_stored(
    store: SqliteStore, spool: Path
) -> None:
    """`recording.not_started` is written once per call, and never for a call whose
    recording the store holds (a second look after the file was taken in)."""
    stored_id, source = await record_call(store, spool)
    await store.ingest(stored_id, source, T0 + timedelta(minutes=4))
    assert not await store.mark_unrecorded(stored_id, "no file", T0 + timedelta(minutes=5))
    left_id, left_file = await record_call(store, spool, at=T0 + timedelta(minutes=1))
    left_file.unlink()
    assert await store.mark_unrecorded(left_id, "caller left", T0 + timedelta(minutes=5))
    assert not await store.mark_unrecorded(left_id, "again", T0 + timedelta(minutes=6))

    def reasons(entries: Sequence[AuditEntry]) -> list[str]:
        return [e.details["reason"] for e in entries if e.action == "recording.not_started"]

    assert reasons(await store.audit_entries(left_id)) == ["caller left"]
    assert reasons(await store.audit_entries(stored_id)) == []


async def test_recording_ids_follow_the_order_the_recordings_were_made(
    store: SqliteStore, spool: Path
) -> None:
    """Ids are 32 hex digits: the creation time in milliseconds, then 20 random ones. So
    recordings made in order have ids in order (a sweep's audit entries, keyed on them,
    share index pages) and two made in the same millisecond still differ."""
    made = [T0 + timedelta(hours=k) for k in (2, 0, 1)]
    rows = []
    for at in made:
        call_id, source = await record_call(store, spool, at=at)
        row = await store.ingest(call_id, source, at + timedelta(minutes=4))
        assert row is not None
        rows.append(row)
    for row in rows:
        assert re.fullmatch(r"[0-9a-f]{32}", row.id)
        assert int(row.id[:12], 16) == int(row.created_at.timestamp() * 1000)
    by_id = sorted(rows, key=lambda row: row.id)
    assert [row.created_at for row in by_id] == sorted(row.created_at for row in rows)
    twins = []
    for _ in range(2):  # decided in the same millisecond
        call_id, source = await record_call(store, spool, at=T0 + timedelta(hours=3))
        row = await store.ingest(call_id, source, T0 + timedelta(hours=3, minutes=4))
        assert row is not None
        twins.append(row)
    assert twins[0].created_at == twins[1].created_at
    assert twins[0].id[:12] == twins[1].id[:12] and twins[0].id != twins[1].id


@pytest.mark.parametrize(
    ("created_ms", "tail"),
    [(-1, "0" * 20), (16**12, "0" * 20), (0, "0" * 19), (0, "../" + "0" * 17), (0, "G" * 20)],
)
def test_a_recording_id_is_made_only_of_a_time_and_hex_digits(created_ms: int, tail: str) -> None:
    with pytest.raises(ValueError, match="no recording id"):
        make_recording_id(created_ms, tail)


async def test_ingest_across_file_systems_copies_then_removes_the_source(
    store: SqliteStore,
) -> None:
    """From another file system (tmpfs) the file is copied, fsync'd, renamed into place,
    and only then is the source removed."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == store.data_dir.stat().st_dev:
        pytest.skip("no second file system (/dev/shm) to ingest from")
    other = shm / f"callrec-test-{new_id()}"
    other.mkdir()
    try:
        call_id, source = await record_call(store, other)
        audio = source.read_bytes()
        row = await store.ingest(call_id, source, T0)
        assert row is not None and row.path is not None
        assert Path(row.path).read_bytes() == audio and not source.exists()
        assert not list(Path(row.path).parent.glob(".*"))  # no temporary file left
    finally:
        for leftover in other.iterdir():
            leftover.unlink()
        other.rmdir()


async def test_ingesting_the_same_call_twice_is_a_no_op(store: SqliteStore, spool: Path) -> None:
    """The second ingest returns the same row and adds no audit entry."""
    call_id, source = await record_call(store, spool)
    first = await store.ingest(call_id, source, T0)
    entries = len(await store.audit_entries())
    again = await store.ingest(call_id, source, T0 + timedelta(minutes=1))
    assert again == first
    assert len(await store.audit_entries()) == entries
    assert len(await store.recordings()) == 1


async def test_header_only_wav_is_recorded_as_empty(store: SqliteStore, spool: Path) -> None:
    """MixMonitor's header without audio (nobody was bridged) is a row marked EMPTY and no
    file; nothing is kept as evidence."""
    call_id, source = await record_call(store, spool, audio=wav_bytes(frames=0))
    assert source.stat().st_size == 44
    row = await store.ingest(call_id, source, T0)
    assert row is not None and row.status is RecordingStatus.EMPTY
    assert row.path is None and row.sha256 is None and row.size == 0
    assert not source.exists()
    assert not [p for p in store.recordings_dir.rglob("*") if p.is_file()]
    with pytest.raises(AccessRefused, match="empty"):
        await store.access(row.id, Purpose.QUALITY, "qa", T0)


async def test_file_without_a_record_decision_is_deleted_and_audited(
    store: SqliteStore, spool: Path
) -> None:
    """A file for a call whose caller refused is never kept: deleted, audited, None."""
    call_id, _ = await record_call(store, spool, decision=Decision.REFUSE)
    stray = spool / f"{call_id}.wav"
    stray.write_bytes(wav_bytes())
    assert await store.ingest(call_id, stray, T0) is None
    assert not stray.exists()
    entry = (await store.audit_entries(call_id))[-1]
    assert entry.action == "recording.discarded"
    assert entry.details["sha256"] == hashlib.sha256(wav_bytes()).hexdigest()
    assert await store.recordings(include_deleted=True) == []


async def test_callback_recording_is_linked_to_the_missed_call(
    store: SqliteStore, spool: Path
) -> None:
    """A callback's recording carries the id of the missed call it answers."""
    missed, _ = await record_call(store, spool, outcome=Outcome.MISSED)
    callback, source = await record_call(
        store,
        spool,
        at=T0 + timedelta(minutes=30),
        direction=Direction.CALLBACK,
        caller=ALICE,
        linked_to=missed,
        window=timedelta(hours=1),
    )
    row = await store.ingest(callback, source, T0 + timedelta(minutes=40))
    assert row is not None and row.linked_to == missed and row.dialed == ALICE


# ----------------------------------------------------------------------- sweep


async def test_sweep_deletes_on_time_with_every_copy(
    store: SqliteStore, spool: Path, tmp_path: Path
) -> None:
    """Not a microsecond early; at delete_after the audio, every export copy and the
    manifest go, the row keeps no number, and an audit entry proves the deletion."""
    call_id, source = await record_call(store, spool, line="sales")
    row = await store.ingest(call_id, source, T0)
    assert row is not None and row.path is not None
    export = await store.export([row.id], tmp_path / "out", Purpose.EVIDENCE, "dpo", T0)
    assert (export / f"{row.id}.wav").exists()
    early = await store.sweep(row.delete_after - timedelta(microseconds=1))
    assert early.deleted == () and Path(row.path).exists()
    result = await store.sweep(row.delete_after)
    assert result.deleted == (row.id,) and result.problems == ()
    assert not Path(row.path).exists() and not export.exists()
    gone = await store.recording(row.id)
    assert gone is not None and gone.status is RecordingStatus.DELETED
    assert gone.path is None and gone.caller is None and gone.dialed is None
    assert gone.deleted_at == row.delete_after and gone.deletion_reason == "retention"
    entry = (await store.audit_entries(row.id))[-1]
    assert entry.action == "recording.deleted"
    assert entry.details["sha256"] == row.sha256 and entry.details["reason"] == "retention"
    assert entry.details["copies_removed"] == "1"  # the recording's copy in the export
    export_id = export.name.removeprefix("callrec-export-")
    removal = (await store.audit_entries(export_id))[-1]
    assert removal.action == "export.copy_removed"
    assert removal.details["recording_id"] == row.id and removal.details["export"] == "deleted"
    assert (await store.sweep(row.delete_after + timedelta(hours=1))).deleted == ()
    assert await store.recordings() == []
    assert (await store.verify()).ok


async def test_sweep_over_several_batches_deletes_all_but_the_stuck_one(
    store: SqliteStore, spool: Path
) -> None:
    """More recordings than one batch holds, made minutes apart: all go in one sweep, in
    the order they fell due, except one whose file cannot be removed (here a directory
    stands in its place), which stays stored, is reported, and goes at the next sweep."""
    rows = []
    for n in range(SWEEP_BATCH * 2 + 7):
        call_id, source = await record_call(store, spool, at=T0 + timedelta(minutes=n))
        row = await store.ingest(call_id, source, T0 + timedelta(minutes=n))
        assert row is not None and row.path is not None
        rows.append(row)
    stuck = rows[SWEEP_BATCH + 3]
    assert stuck.path is not None
    Path(stuck.path).unlink()
    Path(stuck.path).mkdir()
    (Path(stuck.path) / "keep").write_bytes(b"x")
    due = rows[-1].delete_after
    result = await store.sweep(due)
    assert list(result.deleted) == [r.id for r in rows if r is not stuck]
    assert len(result.problems) == 1 and stuck.id in result.problems[0]
    assert all(not Path(str(r.path)).exists() for r in rows if r is not stuck)
    left = await store.recordings()
    assert [r.id for r in left] == [stuck.id] and left[0].status is RecordingStatus.STORED
    deletions = [e for e in await store.audit_entries() if e.action == "recording.deleted"]
    assert len(deletions) == len(rows) - 1
    (Path(stuck.path) / "keep").unlink()
    Path(stuck.path).rmdir()
    again = await store.sweep(due)
    assert again.deleted == (stuck.id,) and again.problems == ()
    assert await store.recordings() == []
    assert (await store.verify()).ok


async def test_a_directory_that_cannot_be_opened_keeps_only_its_own_recordings(
    store: SqliteStore, spool: Path
) -> None:
    """One day's directory that cannot be opened (here a symlink loop stands in its place)
    is that day's problem: the sweep deletes the other days' recordings, reports the stuck
    one, and deletes it once the directory is back."""
    rows = []
    for day in range(3):
        at = T0 + timedelta(days=day)
        call_id, source = await record_call(store, spool, at=at)
        row = await store.ingest(call_id, source, at + timedelta(minutes=4))
        assert row is not None and row.path is not None
        rows.append(row)
    stuck = Path(str(rows[1].path))
    day_dir, moved = stuck.parent, stuck.parent.with_name("moved-away")
    day_dir.rename(moved)
    day_dir.symlink_to(day_dir.name)  # opening it: ELOOP
    due = rows[-1].delete_after
    result = await store.sweep(due)
    assert list(result.deleted) == [rows[0].id, rows[2].id]
    assert len(result.problems) == 1 and rows[1].id in result.problems[0]
    assert "kept for now" in result.problems[0]
    left = await store.recordings()
    assert [r.id for r in left] == [rows[1].id] and left[0].status is RecordingStatus.STORED
    day_dir.unlink()
    moved.rename(day_dir)
    again = await store.sweep(due)
    assert again.deleted == (rows[1].id,) and again.problems == ()
    assert not stuck.exists()
    assert (await store.verify()).ok


async def test_sweep_hands_deleted_ids_over_batch_by_batch(store: SqliteStore, spool: Path) -> None:
    """With `on_deleted`, each batch's ids are handed over once its deletion is committed,
    in the order they fell due, and the report keeps none of them."""
    ids = []
    for n in range(SWEEP_BATCH + 5):
        call_id, source = await record_call(store, spool, at=T0 + timedelta(minutes=n))
        row = await store.ingest(call_id, source, T0 + timedelta(minutes=n))
        assert row is not None
        ids.append(row.id)
    batches: list[list[str]] = []

    def received(batch: Sequence[str]) -> None:
        batches.append(list(batch))

    due = (await store.recordings())[-1].delete_after
    dry = await store.sweep(due, dry_run=True, on_deleted=received)
    assert dry.deleted == () and dry.count == len(ids) and [i for b in batches for i in b] == ids
    batches.clear()
    result = await store.sweep(due, on_deleted=received)
    assert result.deleted == () and result.count == len(ids) and result.problems == ()
    assert [len(b) for b in batches] == [SWEEP_BATCH, 5]
    assert [i for b in batches for i in b] == ids
    for recording_id in ids[:3] + ids[-3:]:
        row = await store.recording(recording_id)
        assert row is not None and row.status is RecordingStatus.DELETED
    assert await store.recordings() == []


async def test_a_directory_that_cannot_be_synced_fails_the_sweep_with_our_error(
    store: SqliteStore, spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An I/O error making a removal durable is a StorageError naming what was being done
    (the controller's sweeper catches ours and tries again next interval), and the row is
    not committed as deleted."""
    call_id, source = await record_call(store, spool)
    row = await store.ingest(call_id, source, T0)
    assert row is not None
    real_fsync = os.fsync

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(StorageError, match="removing expired recordings"):
        await store.sweep(row.delete_after)
    monkeypatch.setattr(os, "fsync", real_fsync)
    still = await store.recording(row.id)
    assert still is not None and still.status is RecordingStatus.STORED
    again = await store.sweep(row.delete_after)
    assert again.deleted == (row.id,)
    assert (await store.verify()).ok


async def test_sweep_dry_run_lists_without_deleting(store: SqliteStore, spool: Path) -> None:
    """A dry run names what is due and changes nothing."""
    call_id, source = await record_call(store, spool, line="sales")
    row = await store.ingest(call_id, source, T0)
    assert row is not None and row.path is not None
    entries = len(await store.audit_entries())
    result = await store.sweep(row.delete_after + timedelta(days=1), dry_run=True)
    assert result.dry_run and result.deleted == (row.id,)
    assert Path(row.path).exists()
    assert len(await store.audit_entries()) == entries


async def test_sweep_removes_old_calls_numbers(store: SqliteStore, spool: Path) -> None:
    """Past the retention period a call keeps its line and decision, not its numbers."""
    call_id, _ = await record_call(store, spool, decision=Decision.REFUSE)
    await store.sweep(T0 + timedelta(days=150))
    row = await store.get_call(call_id)
    assert row is not None and row.caller == ALICE
    await store.sweep(T0 + timedelta(days=200))
    row = await store.get_call(call_id)
    assert row is not None and row.caller is None and row.dialed is None
    assert row.line == "service" and row.decision is Decision.REFUSE


async def test_a_recordings_call_loses_its_numbers_in_the_sweep_that_deletes_it(
    store: SqliteStore, spool: Path
) -> None:
    """The sweep that deletes a recording at its time also takes its call's numbers; a
    withdrawal, which deletes before the call's own time has come, leaves the call's numbers
    (for the report) until the sweep at that time."""
    kept_id, kept_file = await record_call(store, spool)
    withdrawn_id, withdrawn_file = await record_call(store, spool, caller=BOB)
    kept = await store.ingest(kept_id, kept_file, T0 + timedelta(minutes=5))
    assert await store.ingest(withdrawn_id, withdrawn_file, T0 + timedelta(minutes=5))
    later = T0 + timedelta(days=1)
    report = await store.withdraw(BOB, WithdrawalVia.PHONE, later, "agent 7", later)
    assert len(report.deleted) == 1
    withdrawn = await store.get_call(withdrawn_id)
    assert withdrawn is not None and withdrawn.caller == BOB
    assert kept is not None
    result = await store.sweep(kept.delete_after)
    assert result.deleted == (kept.id,)
    for call_id in (kept_id, withdrawn_id):
        row = await store.get_call(call_id)
        assert row is not None and row.caller is None and row.dialed is None
        assert row.recording_file is None and row.decision is Decision.RECORD
    assert (await store.verify()).ok


# ------------------------------------------------------------------ withdrawal


async def test_withdrawal_deletes_consent_recordings_and_keeps_sales_ones(
    store: SqliteStore, spool: Path
) -> None:
    """Consent recordings of the caller (inbound and callbacks) are deleted at once; sales
    recordings are kept and the report says why; other callers are untouched."""
    consent_id, f1 = await record_call(store, spool, outcome=Outcome.MISSED)
    callback_id, f2 = await record_call(
        store,
        spool,
        at=T0 + timedelta(minutes=20),
        direction=Direction.CALLBACK,
        caller=ALICE,
        linked_to=consent_id,
    )
    sales_id, f3 = await record_call(store, spool, line="sales")
    bob_id, f4 = await record_call(store, spool, caller=BOB)
    rows = {
        cid: await store.ingest(cid, f, T0 + timedelta(hours=1))
        for cid, f in ((consent_id, f1), (callback_id, f2), (sales_id, f3), (bob_id, f4))
    }
    received = T0 + timedelta(days=1, hours=8)  # Tuesday 17:00 Ljubljana
    report = await store.withdraw(
        "041 111 111", WithdrawalVia.EMAIL, received, "dpo", received + timedelta(hours=1)
    )
    assert report.caller == ALICE and report.via is WithdrawalVia.EMAIL
    assert (report.received_on, report.due_on) == ("2025-03-04", "2025-03-11")
    assert set(report.deleted) == {rows[consent_id].id, rows[callback_id].id}  # type: ignore[union-attr]
    assert [rid for rid, _ in report.kept] == [rows[sales_id].id]  # type: ignore[union-attr]
    assert "ZEKom-2" in report.kept[0][1] and "does not apply" in report.kept[0][1]
    assert report.completed_at == received + timedelta(hours=1)
    assert report.completed_at <= report.deadline
    for cid in (consent_id, callback_id):
        gone = await store.recording(rows[cid].id)  # type: ignore[union-attr]
        assert gone is not None and gone.status is RecordingStatus.DELETED
        assert gone.deletion_reason == "withdrawal"
    assert {r.call_id for r in await store.recordings()} == {sales_id, bob_id}
    listed = await store.withdrawals()
    assert [w.withdrawal_id for w in listed] == [report.withdrawal_id]
    assert listed[0].met_deadline is True
    actions = [e.action for e in await store.audit_entries(report.withdrawal_id)]
    assert actions == ["withdrawal.registered", "withdrawal.completed"]


async def test_withdrawal_finding_only_sales_recordings_says_so(
    store: SqliteStore, spool: Path
) -> None:
    """Nothing is deleted and every kept recording is listed with its reason."""
    call_id, source = await record_call(store, spool, line="sales")
    row = await store.ingest(call_id, source, T0)
    report = await store.withdraw(
        ALICE, WithdrawalVia.PHONE, T0 + timedelta(hours=1), "agent 3", T0 + timedelta(hours=1)
    )
    assert report.deleted == ()
    assert row is not None and report.kept[0][0] == row.id
    still = await store.recording(row.id)
    assert still is not None and still.status is RecordingStatus.STORED


async def test_recording_ingested_after_a_withdrawal_is_deleted(
    store: SqliteStore, spool: Path
) -> None:
    """A consent call still running when its caller withdraws is deleted as it arrives."""
    call_id, source = await record_call(store, spool, end=False)
    report = await store.withdraw(
        ALICE, WithdrawalVia.PHONE, T0 + timedelta(minutes=1), "agent 3", T0 + timedelta(minutes=1)
    )
    await store.end_call(call_id, T0 + timedelta(minutes=3), Outcome.ANSWERED)
    row = await store.ingest(call_id, source, T0 + timedelta(minutes=4))
    assert row is not None and row.status is RecordingStatus.DELETED
    assert not [p for p in store.recordings_dir.rglob("*") if p.is_file()]
    listed = (await store.withdrawals())[0]
    assert listed.withdrawal_id == report.withdrawal_id and listed.deleted == (row.id,)


async def test_withdrawal_refuses_bad_input(store: SqliteStore) -> None:
    """An unusable number, an empty registrar or a receipt after registration is refused."""
    from flows.errors import CallrecError, NumberError

    with pytest.raises(NumberError):
        await store.withdraw("../../etc/passwd", WithdrawalVia.EMAIL, T0, "dpo", T0)
    with pytest.raises(CallrecError, match="who registers"):
        await store.withdraw(ALICE, WithdrawalVia.EMAIL, T0, "  ", T0)
    with pytest.raises(CallrecError, match="after it is registered"):
        await store.withdraw(ALICE, WithdrawalVia.EMAIL, T0 + timedelta(days=1), "dpo", T0)
    assert await store.withdrawals() == []


# ---------------------------------------------------------- access and export


async def test_access_checks_the_purpose_and_logs_every_attempt(
    store: SqliteStore, spool: Path
) -> None:
    """Training may use a sales recording, not a consent one; both attempts are logged."""
    sales_id, f1 = await record_call(store, spool, line="sales")
    consent_id, f2 = await record_call(store, spool)
    sales = await store.ingest(sales_id, f1, T0)
    consent = await store.ingest(consent_id, f2, T0)
    assert sales is not None and consent is not None
    path = await store.access(sales.id, Purpose.TRAINING, "trainer", T0 + timedelta(hours=1))
    assert path == Path(str(sales.path))
    with pytest.raises(AccessRefused, match="does not fit"):
        await store.access(consent.id, Purpose.TRAINING, "trainer", T0 + timedelta(hours=2))
    assert await store.access(consent.id, Purpose.QUALITY, "qa lead", T0) == Path(str(consent.path))
    log = await store.access_log()
    assert [(a.recording_id, a.purpose, a.who, a.allowed) for a in log] == [
        (sales.id, "training", "trainer", True),
        (consent.id, "training", "trainer", False),
        (consent.id, "quality", "qa lead", True),
    ]
    assert "legal basis consent" in log[1].reason


async def test_access_to_a_deleted_or_unknown_recording_is_refused(
    store: SqliteStore, spool: Path
) -> None:
    """Deleted means gone for every purpose; an unknown id is not found; both are logged."""
    call_id, source = await record_call(store, spool, line="sales")
    row = await store.ingest(call_id, source, T0)
    assert row is not None
    await store.sweep(row.delete_after)
    with pytest.raises(AccessRefused, match="deleted"):
        await store.access(row.id, Purpose.EVIDENCE, "lawyer", row.delete_after)
    with pytest.raises(NotFoundError):
        await store.access("nope", Purpose.EVIDENCE, "lawyer", row.delete_after)
    assert [a.allowed for a in await store.access_log()] == [False, False]


async def test_export_writes_audio_and_a_manifest_that_proves_it(
    store: SqliteStore, spool: Path, tmp_path: Path
) -> None:
    """The export holds the audio, its SHA-256, the metadata and the audit entries whose
    hashes chain as stored."""
    call_id, source = await record_call(store, spool)
    row = await store.ingest(call_id, source, T0)
    assert row is not None
    folder = await store.export([row.id], tmp_path / "evidence", Purpose.EVIDENCE, "dpo", T0)
    manifest = json.loads((folder / "manifest.json").read_text())
    [item] = manifest["recordings"]
    audio = (folder / item["file"]).read_bytes()
    assert hashlib.sha256(audio).hexdigest() == item["sha256"] == row.sha256
    assert (item["call_id"], item["legal_basis"], item["caller"]) == (call_id, "consent", ALICE)
    chain = {e.seq: e.hash for e in await store.audit_entries()}
    actions = [entry["action"] for entry in item["audit"]]
    assert actions == ["decision.committed", "recording.stored"]
    for entry in item["audit"]:
        assert chain[entry["seq"]] == entry["hash"]
    assert manifest["purpose"] == "evidence" and manifest["exported_by"] == "dpo"
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_export_for_a_wrong_purpose_exports_nothing(
    store: SqliteStore, spool: Path, tmp_path: Path
) -> None:
    """One recording that may not serve the purpose refuses the whole export."""
    sales_id, f1 = await record_call(store, spool, line="sales")
    consent_id, f2 = await record_call(store, spool)
    sales = await store.ingest(sales_id, f1, T0)
    consent = await store.ingest(consent_id, f2, T0)
    assert sales is not None and consent is not None
    with pytest.raises(AccessRefused):
        await store.export([sales.id, consent.id], tmp_path / "x", Purpose.TRAINING, "t", T0)
    assert not (tmp_path / "x").exists()
    assert [a.allowed for a in await store.access_log(consent.id)] == [False]


# ---------------------------------------------------------------------- verify


async def test_verify_passes_on_an_intact_store(store: SqliteStore, spool: Path) -> None:
    """Hashes and the audit chain match after ordinary work."""
    for line in ("sales", "service"):
        call_id, source = await record_call(store, spool, line=line)
        await store.ingest(call_id, source, T0)
    await store.withdraw(ALICE, WithdrawalVia.EMAIL, T0, "dpo", T0 + timedelta(hours=1))
    report = await store.verify()
    assert report.ok, report.problems
    assert report.checked >= 6


async def test_verify_reports_one_changed_byte_in_a_recording(
    store: SqliteStore, spool: Path
) -> None:
    """Flipping one byte of a stored file is reported for that recording."""
    call_id, source = await record_call(store, spool)
    row = await store.ingest(call_id, source, T0)
    assert row is not None and row.path is not None
    data = bytearray(Path(row.path).read_bytes())
    data[100] ^= 0x01
    Path(row.path).write_bytes(bytes(data))
    report = await store.verify()
    assert report.problems == (
        f"recording {row.id}: content changed (SHA-256 does not match the ledger)",
    )


async def test_verify_reports_one_changed_byte_in_the_audit_log(
    store: SqliteStore, spool: Path
) -> None:
    """The audit log refuses updates; with its trigger dropped, a changed byte is reported,
    and so is the dropped trigger."""
    call_id, source = await record_call(store, spool)
    await store.ingest(call_id, source, T0)
    with _raw(store) as raw:
        with pytest.raises(LEDGER_INTEGRITY, match="append-only"):
            raw.execute("UPDATE audit SET action = 'x' WHERE seq = 1")
        with pytest.raises(LEDGER_INTEGRITY, match="append-only"):
            raw.execute("DELETE FROM audit WHERE seq = 1")
        raw.execute("DROP TRIGGER audit_no_update")
        details = raw.execute("SELECT details FROM audit WHERE seq = 1").fetchone()[0]
        changed = details.replace('"digit": "1"', '"digit": "2"')
        assert changed != details
        raw.execute("UPDATE audit SET details = ? WHERE seq = 1", (changed,))
    report = await store.verify()
    assert "audit: entry 1 was changed (its hash does not match)" in report.problems
    assert "ledger: the append-only trigger audit_no_update was removed" in report.problems


async def test_verify_reports_a_removed_audit_entry(store: SqliteStore, spool: Path) -> None:
    """An entry removed from the middle of the chain breaks the link after it."""
    for _ in range(3):
        call_id, source = await record_call(store, spool)
        await store.ingest(call_id, source, T0)
    with _raw(store) as raw:
        raw.execute("DROP TRIGGER audit_no_delete")
        raw.execute("DELETE FROM audit WHERE seq = 2")
    problems = (await store.verify()).problems
    assert "audit: entry 2 is missing (next stored entry is 3)" in problems
    assert "audit: entry 3 does not link to the entry before it" in problems


async def test_audit_log_holds_no_phone_number(store: SqliteStore, spool: Path) -> None:
    """Callers appear in the audit log only as keyed pseudonyms."""
    call_id, source = await record_call(store, spool)
    await store.ingest(call_id, source, T0)
    await store.withdraw(ALICE, WithdrawalVia.PHONE, T0, "agent", T0 + timedelta(minutes=9))
    with _raw(store) as raw:
        dump = "\n".join(str(row) for row in raw.execute("SELECT * FROM audit"))
    for needle in (ALICE, ALICE[1:], ALICE[4:], "40404040"):
        assert needle not in dump
    key = (store.data_dir / "pseudonym.key").read_bytes()
    assert pseudonym(key, ALICE) in dump


# ------------------------------------------------------------------- reconcile


async def test_reconcile_accounts_for_every_spool_file_and_open_call(
    store: SqliteStore, spool: Path
) -> None:
    """At start: a finished file of an ended RECORD call is ingested; files without a
    RECORD decision (a refused call, an unknown name, a symlink) are deleted; a running
    call's file stays; an open call without a decision is failed closed."""
    ended, ended_file = await record_call(store, spool)
    refused, _ = await record_call(store, spool, decision=Decision.REFUSE)
    refused_file = spool / f"{refused}.wav"
    refused_file.write_bytes(wav_bytes())
    unknown = spool / "strange name.wav"
    unknown.write_bytes(wav_bytes())
    link = spool / "link.wav"
    link.symlink_to(store.data_dir / "pseudonym.key")
    running, running_file = await record_call(store, spool, end=False)
    undecided = new_id()
    await store.start_call(
        CallStart(undecided, "1.1", Direction.INBOUND, "service", ALICE, "+38640404040", T0)
    )
    report = await store.reconcile(spool, T0 + timedelta(hours=1))
    assert report.ingested == (ended,)
    assert set(report.deleted_unowned) == {refused, "'strange name.wav'"}
    assert report.failed_closed == (undecided,)
    assert any("symbolic link" in line for line in report.flagged)
    assert any(running in line and "still open" in line for line in report.flagged)
    assert sorted(p.name for p in spool.iterdir()) == [running_file.name]
    assert not ended_file.exists() and (store.data_dir / "pseudonym.key").exists()
    closed = await store.get_call(undecided)
    assert closed is not None and closed.outcome is Outcome.ABANDONED_IN_PROMPT
    assert closed.decision is Decision.NONE
    assert [c.call_id for c in await store.open_calls()] == [running]
    again = await store.reconcile(spool, T0 + timedelta(hours=2))
    assert again.ingested == () and again.deleted_unowned == () and again.failed_closed == ()


async def test_reconcile_flags_missing_files_and_calls_without_one(
    store: SqliteStore, spool: Path
) -> None:
    """A stored recording whose file vanished becomes MISSING; a call told to record whose
    file never arrived is flagged once."""
    call_id, source = await record_call(store, spool)
    row = await store.ingest(call_id, source, T0)
    assert row is not None and row.path is not None
    os.unlink(row.path)
    never, never_file = await record_call(store, spool)
    never_file.unlink()
    report = await store.reconcile(spool, T0 + timedelta(hours=1))
    assert any(row.id in line and "file missing" in line for line in report.flagged)
    assert any(never in line and "no file arrived" in line for line in report.flagged)
    missing = await store.recording(row.id)
    assert missing is not None and missing.status is RecordingStatus.MISSING
    assert (await store.reconcile(spool, T0 + timedelta(hours=2))).flagged == ()
    assert (
        f"recording {row.id}: file missing (flagged by reconcile)"
        in (await store.verify()).problems
    )


async def test_reconcile_deletes_a_recording_that_reappears(
    store: SqliteStore, spool: Path
) -> None:
    """A deleted recording restored from a backup is deleted again and audited."""
    call_id, source = await record_call(store, spool, line="sales")
    row = await store.ingest(call_id, source, T0)
    assert row is not None and row.path is not None
    audio = Path(row.path).read_bytes()
    await store.sweep(row.delete_after)
    Path(row.path).write_bytes(audio)
    report = await store.reconcile(spool, row.delete_after + timedelta(hours=1))
    assert not Path(row.path).exists()
    assert any("reappeared" in line for line in report.resumed)
    assert (await store.audit_entries(row.id))[-1].details["reason"] == (
        "reappeared after its deletion"
    )


# ------------------------------------------------------------------ migrations


async def _old_ledger(
    tmp_path: Path, version: int, insert: str, params: tuple[str | None, ...]
) -> Path:
    """A data directory whose ledger stopped at schema `version`, with one row inserted."""
    import aiosqlite

    data = tmp_path / "data"
    data.mkdir()
    async with aiosqlite.connect(data / "ledger.sqlite3", isolation_level=None) as conn:
        assert await migrate(conn, MIGRATIONS[:version]) == version
        await conn.execute(insert, params)
    load_key(data / "pseudonym.key", create=True)  # an old store had its key too
    return data


@pytest.mark.sqlite_only("builds an older SQLite ledger file")
async def test_an_older_database_is_migrated_on_open(tmp_path: Path) -> None:
    """A ledger at schema version 1 gains the later tables and keeps its calls."""
    call_id = new_id()
    data = await _old_ledger(
        tmp_path,
        1,
        "INSERT INTO calls (call_id, channel_id, direction, started_at, purge_after) "
        "VALUES (?, '1.1', 'inbound', '2025-03-03T09:00:00.000000Z', "
        "'2025-09-03T09:00:00.000000Z')",
        (call_id,),
    )
    async with await open_store(data, POLICY) as store:
        row = await store.get_call(call_id)
        assert row is not None and row.decision is Decision.NONE
        assert await store.recordings() == []
        assert (await store.verify()).ok
    with sqlite3.connect(data / "ledger.sqlite3") as raw:
        assert raw.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == len(
            MIGRATIONS
        )


@pytest.mark.sqlite_only("builds an older SQLite ledger file")
async def test_an_older_ledger_gets_the_covering_lookup_index(tmp_path: Path) -> None:
    """A ledger of schema version 3 (lookup index on customer and time only) is migrated:
    its missed calls are found as before, now from the covering index."""
    call_id = new_id()
    data = await _old_ledger(
        tmp_path,
        3,
        "INSERT INTO calls (call_id, channel_id, direction, line, caller, customer, "
        "started_at, purge_after, ended_at, outcome, decision, decided_at, legal_basis) "
        "VALUES (?, '1.1', 'inbound', 'service', ?, ?, '2025-03-03T09:00:00.000000Z', "
        "'2025-09-03T09:00:00.000000Z', '2025-03-03T09:02:00.000000Z', 'missed', "
        "'record', '2025-03-03T09:00:20.000000Z', 'consent')",
        (call_id, ALICE, ALICE),
    )
    async with await open_store(data, POLICY) as store:
        found = await _prior(store, ALICE, T0 - timedelta(minutes=30))
        assert found is not None and found.call_id == call_id
        assert found.decision is Decision.RECORD and not found.consent_withdrawn
    with sqlite3.connect(data / "ledger.sqlite3") as raw:
        plan = _lookup_plan(raw)
    assert "USING COVERING INDEX calls_missed" in plan


@pytest.mark.sqlite_only("turns a SQLite ledger back into schema version 12")
async def test_a_deletion_an_older_ledger_had_under_way_is_still_known_after_migration(
    tmp_path: Path, spool: Path
) -> None:
    """A recording an older program had marked as being deleted (its file gone, the crash
    before the commit) is called in flight, not missing, by the migrated ledger; the next
    sweep deletes it as already absent, and all verifies."""
    data = tmp_path / "data"
    async with await open_store(data, POLICY, create=True) as store:
        call_id, source = await record_call(store, spool)
        row = await store.ingest(call_id, source, T0)
        assert row is not None and row.path is not None
    began = row.delete_after + timedelta(minutes=1)
    with sqlite3.connect(data / "ledger.sqlite3") as raw:
        # What version 12 was: the intent as a column of the recording.
        raw.execute("DROP TABLE deletions")
        raw.execute("ALTER TABLE recordings ADD COLUMN deleting_since TEXT")
        raw.execute("UPDATE recordings SET deleting_since = ?", (ts(began),))
        raw.execute("DELETE FROM schema_version WHERE version > 12")
    Path(row.path).unlink()
    now = began + timedelta(minutes=5)

    async with await open_store(data, POLICY) as store:
        checked = await store.verify(now=now)
        assert checked.ok, checked.problems
        assert f"recording {row.id}: being deleted since {ts(began)}" in checked.in_flight
        report = await store.reconcile(spool, now)
        assert not report.flagged
        swept = await store.sweep(now)
        assert swept.deleted == (row.id,) and not swept.problems
        deleted = (await store.audit_entries(row.id))[-1]
        assert deleted.action == "recording.deleted"
        assert deleted.details["file"] == "already absent"
        final = await store.verify(now=now)
        assert final.ok and not final.in_flight, final.problems
    with sqlite3.connect(data / "ledger.sqlite3") as raw:
        columns = [c[1] for c in raw.execute("PRAGMA table_info(recordings)")]
        assert "deleting_since" not in columns
        assert raw.execute("SELECT COUNT(*) FROM deletions").fetchone()[0] == 0


async def test_a_deletion_under_way_is_judged_by_its_latest_attempt(
    store: SqliteStore, spool: Path
) -> None:
    """A recording whose file is gone while a deletion of it is under way is in flight
    since that deletion began, however old the note of an earlier attempt cut short."""
    call_id, source = await record_call(store, spool)
    row = await store.ingest(call_id, source, T0)
    assert row is not None and row.path is not None
    now = row.delete_after + timedelta(hours=3)
    for began in (ts(now - timedelta(hours=2)), ts(now - timedelta(minutes=1))):
        await store.ctx.db.write(
            lambda tx, at=began: deletion.note_deletion(tx, [row.id], at), "a test's notes"
        )
    Path(row.path).unlink()

    checked = await store.verify(now=now)

    assert checked.ok, checked.problems
    since = ts(now - timedelta(minutes=1))
    assert f"recording {row.id}: being deleted since {since}" in checked.in_flight


async def test_a_later_deletion_never_takes_the_note_of_one_dropped(
    store: SqliteStore, spool: Path
) -> None:
    """When a sweep drops the note of a deletion whose recordings it deleted itself, a
    deletion begun after it gets a note of its own: the first one's commit, which deletes
    its note by id, leaves the later one's in place."""
    rows = []
    for caller in (ALICE, BOB):
        call_id, source = await record_call(store, spool, caller=caller)
        row = await store.ingest(call_id, source, T0)
        assert row is not None
        rows.append(row)
    due, kept = rows
    await keep_recording(store, kept.id)
    now = due.delete_after + timedelta(hours=1)
    when = ts(now)
    first = await store.ctx.db.write(
        lambda tx: deletion.note_deletion(tx, [due.id], when), "another node's deletion"
    )
    swept = await store.sweep(now)  # deletes `due` itself, and drops the first's note
    assert swept.deleted == (due.id,)
    later = await store.ctx.db.write(
        lambda tx: deletion.note_deletion(tx, [kept.id], when), "a later deletion"
    )

    assert later != first
    await store.ctx.db.write(
        lambda tx: tx.run("DELETE FROM deletions WHERE id = ?", (first,)), "the first's commit"
    )
    noted = await store.ctx.db.read(deletion.being_deleted, "reading the notes")
    assert noted == {kept.id: when}


@pytest.mark.sqlite_only("writes a newer version into the SQLite file")
async def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    """A ledger written by a newer program is not opened (nor written) by an older one."""
    data = tmp_path / "data"
    async with await open_store(data, POLICY, create=True):
        pass
    with sqlite3.connect(data / "ledger.sqlite3") as raw:
        raw.execute("INSERT INTO schema_version (version) VALUES (?)", (len(MIGRATIONS) + 1,))
    with pytest.raises(StorageError, match="newer than this program"):
        await open_store(data, POLICY)


# --------------------------------------------------------------------- queries


async def test_callbacks_due_lists_missed_calls_not_yet_called_back(
    store: SqliteStore, spool: Path
) -> None:
    """Missed calls without a callback (and without a later answered call from the same
    number) are due within the window and overdue after it."""
    first, _ = await record_call(store, spool, outcome=Outcome.MISSED)
    called, _ = await record_call(store, spool, caller=BOB, outcome=Outcome.MISSED)
    await record_call(
        store,
        spool,
        at=T0 + timedelta(minutes=10),
        direction=Direction.CALLBACK,
        caller=BOB,
        linked_to=called,
    )
    now = T0 + timedelta(minutes=30)
    due = await store.callbacks_due(now)
    assert [(d.call_id, d.caller, d.overdue) for d in due] == [(first, ALICE, False)]
    assert due[0].due_by == due[0].ended_at + POLICY.callback_window
    assert (await store.callbacks_due(T0 + timedelta(hours=2)))[0].overdue
    await record_call(store, spool, at=T0 + timedelta(minutes=40))  # Alice got through
    assert await store.callbacks_due(T0 + timedelta(hours=2)) == []


async def test_report_counts_what_happened_in_a_period(store: SqliteStore, spool: Path) -> None:
    """Calls by line and decision, recordings made and deleted, withdrawals with their
    deadline met, callbacks with whether they came within the window."""
    missed, missed_file = await record_call(store, spool, outcome=Outcome.MISSED)
    await record_call(store, spool, decision=Decision.REFUSE)
    sales, f = await record_call(store, spool, line="sales")
    await store.ingest(sales, f, T0)
    callback, callback_file = await record_call(
        store,
        spool,
        at=T0 + timedelta(hours=2),
        direction=Direction.CALLBACK,
        caller=ALICE,
        linked_to=missed,
        window=timedelta(hours=3),
        overload=True,
    )
    # Alice's two consent recordings are stored before she withdraws (a withdrawal is met
    # only once nothing of hers is left, the spool included).
    await store.ingest(missed, missed_file, T0 + timedelta(minutes=5))
    await store.ingest(callback, callback_file, T0 + timedelta(hours=2, minutes=5))
    await store.withdraw(ALICE, WithdrawalVia.EMAIL, T0, "dpo", T0 + timedelta(hours=3))
    report = await store.report(T0 - timedelta(hours=1), T0 + timedelta(days=1))
    counts = {(c.line, c.direction, c.decision): c.calls for c in report.calls}
    assert counts[("service", Direction.INBOUND, Decision.RECORD)] == 1
    assert counts[("service", Direction.INBOUND, Decision.REFUSE)] == 1
    assert counts[("sales", Direction.INBOUND, Decision.RECORD)] == 1
    assert counts[("service", Direction.CALLBACK, Decision.RECORD)] == 1
    assert (report.missed, report.answered) == (1, 2)
    assert report.recordings_made == 3 and report.recordings_deleted == 2
    assert [w.met_deadline for w in report.withdrawals] == [True]
    [callback] = report.callbacks
    assert callback.missed_call_id == missed and callback.overload
    assert callback.within_window is False  # 2 h after a 1 h window: only the switch allowed it
    assert callback.window == timedelta(hours=3)


async def test_reconcile_adopts_a_missing_file_that_comes_back(
    store: SqliteStore, spool: Path
) -> None:
    """A file flagged missing that reappears with its recorded SHA-256 is stored again."""
    call_id, source = await record_call(store, spool)
    row = await store.ingest(call_id, source, T0)
    assert row is not None and row.path is not None
    audio = Path(row.path).read_bytes()
    os.unlink(row.path)
    await store.reconcile(spool, T0 + timedelta(hours=1))
    Path(row.path).write_bytes(audio)
    report = await store.reconcile(spool, T0 + timedelta(hours=2))
    assert any("is back and matches" in line for line in report.resumed)
    back = await store.recording(row.id)
    assert back is not None and back.status is RecordingStatus.STORED
    assert (await store.verify()).ok


async def test_verify_reports_spool_files_left_out_of_the_store(
    store: SqliteStore, spool: Path
) -> None:
    """A finished call's file still in the spool is outside retention: verify says so."""
    call_id, source = await record_call(store, spool)
    assert (await store.verify()).problems == (
        f"spool: {source.name} is not in the store (reconcile takes it)",
    )
    await store.reconcile(spool, T0 + timedelta(hours=1))
    assert (await store.verify()).ok
    assert [r.call_id for r in await store.recordings()] == [call_id]


@pytest.mark.sqlite_only("builds an older SQLite ledger file")
async def test_a_version_4_ledger_gains_communications(tmp_path: Path) -> None:
    """Migration 5: every call gets its communication, and of two old callbacks to a missed
    call only the answered one uses it up; the unanswered one leaves it open no more."""
    missed, answered, unanswered = new_id(), new_id(), new_id()
    call = (
        "INSERT INTO calls (call_id, channel_id, direction, line, customer, started_at, "
        "purge_after, ended_at, outcome, decision, decided_at, legal_basis, linked_to) VALUES "
        "(?, '1', ?, 'service', ?, '2025-03-03T09:00:00.000000Z', '2025-09-03T09:00:00.000000Z', "
        "?, ?, 'record', '2025-03-03T09:00:20.000000Z', 'consent', ?)"
    )
    data = await _old_ledger(
        tmp_path,
        4,
        call,
        (missed, "inbound", ALICE, "2025-03-03T09:02:00.000000Z", "missed", None),
    )
    with sqlite3.connect(data / "ledger.sqlite3") as raw:
        for cid, ended, outcome in (
            (unanswered, "2025-03-03T09:10:00.000000Z", "missed"),
            (answered, "2025-03-03T09:20:00.000000Z", "answered"),
        ):
            raw.execute(call, (cid, "callback", ALICE, ended, outcome, missed))
            raw.execute(
                "INSERT INTO callbacks VALUES (?, ?, 3600, 0, '2025-03-03T09:05:00.000000Z')",
                (cid, missed),
            )
    async with await open_store(data, POLICY) as store:
        for cid in (missed, answered, unanswered):
            row = await store.get_call(cid)
            assert row is not None and row.communication_id == missed
    with sqlite3.connect(data / "ledger.sqlite3") as raw:
        rows = raw.execute("SELECT missed_call_id, callback_call_id FROM callback_answers")
        assert [tuple(r) for r in rows] == [(missed, answered)]
