"""Two controllers, one ledger and one store: a node's reconcile at start and its verify leave
another node's export, temporary file, ingest and deletion in progress alone, and still
report (or clean up) what nobody is working on."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from storage_helpers import BOB, POLICY, T0, keep_recording, new_id, open_store, record_call

from flows.policy import Purpose
from storage import files
from storage import sweep as sweep_module
from storage.blobs import LocalBlobs
from storage.deletion import record_removed
from storage.ports import Placed, RecordingStatus, Tx
from storage.store import Store
from storage.values import ts

pytestmark = pytest.mark.usefixtures("ledger")
LATER = T0 + timedelta(minutes=4)


class HeldBlobs(LocalBlobs):
    """The store's own blob store, whose `put` or `open` stops until `release` is set: a
    node's ingest or export caught in the middle, as another node sees it then."""

    def __init__(self, root: Path, *, hold: str) -> None:
        super().__init__(root)
        self.hold = hold  # "placed": the file is in place, its row not yet committed;
        # "copying": a copy to the store has begun (its temporary file); "open": an export
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    async def _wait(self) -> None:
        self.reached.set()
        await self.release.wait()

    async def put(self, source: Path, key: str) -> Placed:
        if self.hold == "placed":
            placed = await super().put(source, key)
            await self._wait()
            return placed
        if self.hold != "copying":
            return await super().put(source, key)
        # A copy across file systems, under way: what `files.copy_durably` writes first.
        partial = Path(self.location(self.partial_key(key)))
        await asyncio.to_thread(files.private_dir, partial.parent)
        await asyncio.to_thread(partial.write_bytes, source.read_bytes()[:64])
        await self._wait()
        digest, size = await asyncio.to_thread(files.copy_durably, source, self.path(key))
        return Placed(digest, size, renamed=False)

    async def open(self, key: str) -> Path:
        if self.hold == "open":
            await self._wait()
        return await super().open(key)


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[tuple[Store, Store]]:
    """Controllers node-a and node-b on one store and ledger, each with its own spool."""
    data = tmp_path / "store"
    for name in ("spool-a", "spool-b"):
        (tmp_path / name).mkdir()
    a = await open_store(data, POLICY, create=True, controller_id="node-a")
    b = await open_store(data, POLICY, controller_id="node-b")
    try:
        yield a, b
    finally:
        await b.close()
        await a.close()


def _hold(store: Store, hold: str) -> HeldBlobs:
    held = HeldBlobs(store.data_dir, hold=hold)
    store.ctx.blobs = held
    return held


async def test_a_restart_leaves_another_nodes_export_in_progress_alone(
    tmp_path: Path, nodes: tuple[Store, Store]
) -> None:
    """While node A writes an export, node B's reconcile neither abandons it nor removes its
    files, and A's export completes; B still abandons its own unfinished export and one
    written before exports had owners."""
    a, b = nodes
    call_id, source = await record_call(a, tmp_path / "spool-a")
    row = await a.ingest(call_id, source, LATER)
    assert row is not None
    held = _hold(a, "open")
    out = tmp_path / "out"
    exporting = asyncio.create_task(a.export([row.id], out, Purpose.EVIDENCE, "dpo", T0))
    await asyncio.wait_for(held.reached.wait(), 30)
    (theirs,) = await _writing(a)
    own = await _crashed_export(b, tmp_path / "b-out", "node-b")
    legacy = await _crashed_export(b, tmp_path / "old-out", None)

    report = await b.reconcile(tmp_path / "spool-b", LATER)

    assert await _state(a, theirs) == "writing"
    assert (out / f"callrec-export-{theirs}").is_dir()
    assert not any(theirs in line for line in report.resumed + report.flagged)
    assert f"export {own[0]}: unfinished, its files removed" in report.resumed
    assert f"export {legacy[0]}: unfinished, its files removed" in report.resumed
    assert not own[1].exists() and not legacy[1].exists()
    held.release.set()
    folder = await asyncio.wait_for(exporting, 30)
    assert folder == out / f"callrec-export-{theirs}"
    assert (folder / f"{row.id}.wav").read_bytes() == Path(row.path or "").read_bytes()
    assert await _state(a, theirs) == "done"


async def test_a_restart_leaves_another_nodes_temporary_file_alone(
    tmp_path: Path, nodes: tuple[Store, Store]
) -> None:
    """While node A copies a recording into the store (its temporary file there), node B's
    reconcile neither removes nor flags that file, and A's ingest completes whole; B still
    removes a temporary file no ingest is writing."""
    a, b = nodes
    held = _hold(a, "copying")
    call_id, source = await record_call(a, tmp_path / "spool-a")
    audio = source.read_bytes()
    ingesting = asyncio.create_task(a.ingest(call_id, source, LATER))
    await asyncio.wait_for(held.reached.wait(), 30)
    (theirs,) = [
        p for p in (a.data_dir / "recordings").rglob(f"*{files.TEMP_SUFFIX}") if p.is_file()
    ]
    stray = theirs.with_name(f".{new_id()}.wav{files.TEMP_SUFFIX}")
    stray.write_bytes(b"left by a crash")

    report = await b.reconcile(tmp_path / "spool-b", LATER)

    assert theirs.exists()
    assert not stray.exists()
    assert any(stray.name in line for line in report.resumed)
    assert not any(theirs.name in line for line in report.resumed + report.flagged)
    held.release.set()
    row = await asyncio.wait_for(ingesting, 30)
    assert row is not None and row.status is RecordingStatus.STORED
    assert row.sha256 == hashlib.sha256(audio).hexdigest()
    assert Path(row.path or "").read_bytes() == audio and not theirs.exists()


async def test_a_restart_leaves_another_nodes_ingest_in_flight_alone(
    tmp_path: Path, nodes: tuple[Store, Store]
) -> None:
    """A file node A has placed in the store, its recording not yet committed, is neither
    flagged nor removed by node B's reconcile, and A's ingest completes; a file in the
    store that belongs to no recording and no ingest is still flagged."""
    a, b = nodes
    held = _hold(a, "placed")
    call_id, source = await record_call(a, tmp_path / "spool-a")
    ingesting = asyncio.create_task(a.ingest(call_id, source, LATER))
    await asyncio.wait_for(held.reached.wait(), 30)
    (placed,) = [p for p in (a.data_dir / "recordings").rglob("*.wav") if p.is_file()]
    stray = placed.with_name(f"{new_id()}.wav")
    stray.write_bytes(b"nobody's")

    report = await b.reconcile(tmp_path / "spool-b", LATER)

    assert placed.exists()
    assert not any(placed.name in line for line in report.flagged + report.resumed)
    assert any(stray.name in line and "belongs to no recording" in line for line in report.flagged)
    held.release.set()
    row = await asyncio.wait_for(ingesting, 30)
    assert row is not None and row.status is RecordingStatus.STORED
    assert Path(row.path or "") == placed and placed.exists()


async def test_another_nodes_deletion_between_its_steps_is_not_taken_for_a_missing_file(
    tmp_path: Path, nodes: tuple[Store, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While node A's sweep has removed an exported recording's file and copy (and rewritten
    the export's manifest) but not yet committed its deletion, node B's reconcile neither
    marks the recording missing nor flags it, and B's verify calls it and the export in
    flight, not a problem; A's sweep then deletes it, audited once, and all verifies."""
    a, b = nodes
    call_id, source = await record_call(a, tmp_path / "spool-a")
    row = await a.ingest(call_id, source, LATER)
    assert row is not None and row.path is not None
    other_id, other_source = await record_call(a, tmp_path / "spool-a", caller=BOB)
    other = await a.ingest(other_id, other_source, LATER)
    assert other is not None
    folder = await a.export([row.id, other.id], tmp_path / "out", Purpose.EVIDENCE, "dpo", T0)
    await keep_recording(a, other.id)
    now = row.delete_after + timedelta(hours=1)
    reached, release = asyncio.Event(), asyncio.Event()

    async def held(*args: Any, **kwargs: Any) -> dict[str, str | None]:
        reached.set()  # every file of the batch is gone, nothing is committed yet
        await release.wait()
        return await record_removed(*args, **kwargs)

    monkeypatch.setattr(sweep_module, "record_removed", held)
    sweeping = asyncio.create_task(a.sweep(now))
    await asyncio.wait_for(reached.wait(), 30)
    assert not Path(row.path).exists() and not (folder / f"{row.id}.wav").exists()

    report = await b.reconcile(tmp_path / "spool-b", now)
    checked = await b.verify(now=now)

    assert not any(row.id in line for line in report.flagged), report.flagged
    during = await b.recording(row.id)
    assert during is not None and during.status is RecordingStatus.STORED
    assert checked.ok, checked.problems
    assert f"recording {row.id}: being deleted since {ts(now)}" in checked.in_flight
    assert any("manifest.json: being pruned" in line for line in checked.in_flight)
    release.set()
    swept = await asyncio.wait_for(sweeping, 30)
    assert swept.deleted == (row.id,)
    after = await b.recording(row.id)
    assert after is not None and after.status is RecordingStatus.DELETED
    actions = [entry.action for entry in await b.audit_entries(row.id)]
    assert actions.count("recording.deleted") == 1 and "recording.missing" not in actions
    final = await b.verify(now=now)
    assert final.ok and not final.in_flight, final.problems


async def test_a_file_gone_without_a_deletion_is_still_flagged_missing(
    tmp_path: Path, nodes: tuple[Store, Store]
) -> None:
    """A stored recording whose file disappeared while no deletion was under way is marked
    missing by node B's reconcile, and B's verify reports it."""
    a, b = nodes
    call_id, source = await record_call(a, tmp_path / "spool-a")
    row = await a.ingest(call_id, source, LATER)
    assert row is not None and row.path is not None
    Path(row.path).unlink()

    checked = await b.verify(now=LATER)
    report = await b.reconcile(tmp_path / "spool-b", LATER)

    assert any(f"recording {row.id}: file missing" in line for line in checked.problems)
    assert f"recording {row.id} (call {call_id}): file missing" in report.flagged
    flagged = await b.recording(row.id)
    assert flagged is not None and flagged.status is RecordingStatus.MISSING


@pytest.mark.parametrize("hold", ["copying", "placed"])
async def test_verify_calls_another_nodes_ingest_in_flight_not_a_problem(
    tmp_path: Path, nodes: tuple[Store, Store], hold: str
) -> None:
    """While node A ingests a recording (its temporary file being written, or its file
    placed before its recording is committed), node B's verify finds no problem and lists
    the ingest in flight; an hour on, the same unfinished ingest is a problem, and a
    temporary file no ingest is writing is one all along."""
    a, b = nodes
    held = _hold(a, hold)
    call_id, source = await record_call(a, tmp_path / "spool-a")
    ingesting = asyncio.create_task(a.ingest(call_id, source, LATER))
    await asyncio.wait_for(held.reached.wait(), 30)

    checked = await b.verify(now=LATER + timedelta(minutes=5))

    assert checked.ok, checked.problems
    assert f"call {call_id}: being ingested since {ts(LATER)}" in checked.in_flight
    later = await b.verify(now=LATER + timedelta(hours=2))
    assert any(
        line.startswith(f"call {call_id}: ingest not finished since") for line in later.problems
    ), later.problems
    stray = a.data_dir / "recordings" / "2025" / f".{new_id()}.wav{files.TEMP_SUFFIX}"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"left by a crash")
    with_stray = await b.verify(now=LATER + timedelta(minutes=5))
    assert [line for line in with_stray.problems if stray.name in line], with_stray.problems
    stray.unlink()
    held.release.set()
    row = await asyncio.wait_for(ingesting, 30)
    assert row is not None and row.status is RecordingStatus.STORED
    final = await b.verify(now=LATER + timedelta(minutes=5))
    assert final.ok and not final.in_flight, final.problems


async def test_verify_sees_an_ingest_begun_after_it_read_the_ledger(
    tmp_path: Path, nodes: tuple[Store, Store]
) -> None:
    """An ingest on node A that places its file after node B's verify read the ledger and
    before it listed the store is no file without a recording: verify looks again."""
    a, b = nodes
    held = _hold(a, "placed")
    call_id, source = await record_call(a, tmp_path / "spool-a")
    tasks: list[asyncio.Task[object]] = []

    class Late(LocalBlobs):
        async def list(self) -> list[str]:
            tasks.append(asyncio.create_task(a.ingest(call_id, source, LATER)))
            await asyncio.wait_for(held.reached.wait(), 30)
            return await super().list()

    b.ctx.blobs = Late(b.data_dir)

    checked = await b.verify(now=LATER)

    assert tasks and checked.ok, checked.problems
    held.release.set()
    await asyncio.wait_for(tasks[0], 30)
    assert (await b.verify(now=LATER)).ok


async def test_verify_calls_another_nodes_export_in_flight_until_it_is_stale(
    tmp_path: Path, nodes: tuple[Store, Store]
) -> None:
    """While node A writes an export, node B's verify lists it in flight and finds no
    problem; two hours on, the same unfinished export is reported."""
    a, b = nodes
    call_id, source = await record_call(a, tmp_path / "spool-a")
    row = await a.ingest(call_id, source, LATER)
    assert row is not None
    held = _hold(a, "open")
    exporting = asyncio.create_task(
        a.export([row.id], tmp_path / "out", Purpose.EVIDENCE, "dpo", LATER)
    )
    await asyncio.wait_for(held.reached.wait(), 30)
    (export_id,) = await _writing(a)

    checked = await b.verify(now=LATER)
    later = await b.verify(now=LATER + timedelta(hours=2))

    assert checked.ok, checked.problems
    assert f"export {export_id}: being written since {ts(LATER)}" in checked.in_flight
    assert any(line.startswith(f"export {export_id}: unfinished since") for line in later.problems)
    held.release.set()
    await asyncio.wait_for(exporting, 30)
    assert (await b.verify(now=LATER + timedelta(hours=2))).ok


async def _crashed_export(store: Store, dest: Path, owner: str | None) -> tuple[str, Path]:
    """What a controller killed while writing an export leaves: its rows, state 'writing',
    and part of a copy. (Its id, the copy.)"""
    export_id = new_id()
    folder = dest / f"callrec-export-{export_id}"
    folder.mkdir(parents=True)
    copy = folder / f"{new_id()}.wav"
    copy.write_bytes(b"part of a copy")

    def register(tx: Tx) -> None:
        tx.run(
            "INSERT INTO exports (export_id, dir, purpose, who, created_at, state, "
            "controller_id) VALUES (?, ?, 'evidence', 'dpo', ?, 'writing', ?)",
            (export_id, str(folder), "2025-03-03T09:00:00.000000Z", owner),
        )
        tx.run(
            "INSERT INTO export_files (export_id, recording_id, path, sha256) "
            "VALUES (?, NULL, ?, NULL)",
            (export_id, str(copy)),
        )

    await store.ctx.db.write(register, "a test's crashed export")
    return export_id, copy


async def _writing(store: Store) -> list[str]:
    def read(tx: Tx) -> list[str]:
        rows = tx.all("SELECT export_id FROM exports WHERE state = 'writing'")
        return [str(row["export_id"]) for row in rows]

    return await store.ctx.db.read(read, "a test's look at exports")


async def _state(store: Store, export_id: str) -> str:
    def read(tx: Tx) -> str:
        row = tx.one("SELECT state FROM exports WHERE export_id = ?", (export_id,))
        return "" if row is None else str(row["state"])

    return await store.ctx.db.read(read, "a test's look at an export")
