"""Reconcile, run at start: finish what a crash interrupted and account for every file of
the store and of the spool."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from flows.errors import StorageError
from flows.numbers import shown
from flows.outcome import Outcome
from flows.policy import Decision
from storage import files
from storage.access import abandon_export
from storage.calls import call_of_spool_file, close_stale_calls
from storage.deletion import being_deleted
from storage.ingest import discard, finish_pending, ingest_now, tidy_source
from storage.ports import ReconcileReport, RecordingStatus, Row, Tx
from storage.rows import Context, blob_op, in_thread
from storage.values import ts
from storage.withdrawal import enforce_withdrawals


@dataclass(slots=True)
class Reconciling:
    ingested: list[str] = field(default_factory=list)
    unowned: list[str] = field(default_factory=list)
    flagged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)


async def reconcile(
    ctx: Context,
    spool: Path,
    now: datetime,
    *,
    longest_call: timedelta | None = None,
    finished: Callable[[Path], bool] | None = None,
) -> ReconcileReport:
    """Run at start: finish what a crash interrupted and account for every file.

    `longest_call`: a call open for longer is closed (its end was never reported) and its
    file ingested. `finished(path)`: whether the writer is done with a spool file; one
    that may still be written is left for the controller, never hashed (default: all
    are finished)."""
    ts(now)
    report = Reconciling()
    async with ctx.files:
        await resume_ingests(ctx, now, report.resumed, report.flagged)
        await resume_exports(ctx, now, report.resumed)
        await remove_temp_files(ctx, report.resumed)
        report.failed += await fail_closed(ctx, now)
        if longest_call is not None:
            for call_id in await close_stale_calls(ctx, now - longest_call, now):
                report.flagged.append(
                    f"call {call_id}: no end was reported for longer than any call "
                    f"({longest_call}); closed"
                )
        spool = Path(spool)
        if await asyncio.to_thread(spool.is_dir):
            await adopt_spool(ctx, spool, now, report, finished)
        await check_stored(ctx, now, report.flagged, report.resumed)
        await flag_calls_without_file(ctx, report.flagged)
        deleted, problems = await enforce_withdrawals(ctx, now, everyone=True)
        report.resumed += [f"recording {rid} deleted for a withdrawal" for rid in deleted]
        report.flagged += problems
    return ReconcileReport(
        ingested=tuple(report.ingested),
        deleted_unowned=tuple(report.unowned),
        flagged=tuple(report.flagged),
        failed_closed=tuple(report.failed),
        resumed=tuple(report.resumed),
    )


async def resume_ingests(
    ctx: Context, now: datetime, resumed: list[str], flagged: list[str]
) -> None:
    def read(tx: Tx) -> Sequence[Row]:
        # Another controller's ingest (its spool, its file) is its own to finish.
        return tx.all(
            "SELECT p.* FROM pending_ingests p JOIN calls c ON c.call_id = p.call_id "
            "WHERE (c.controller_id = ? OR c.controller_id IS NULL) ORDER BY p.started_at",
            (ctx.controller_id,),
        )

    for pending in await ctx.db.read(read, "listing unfinished ingests"):
        try:
            row = await finish_pending(ctx, pending, now)
        except StorageError as error:
            flagged.append(f"call {pending['call_id']}: ingest not finished: {error}")
            continue
        if row is not None and row.status is RecordingStatus.MISSING:
            flagged.append(
                f"call {pending['call_id']}: its recording was being stored and neither "
                "the spool file nor the stored file exists (recording marked missing)"
            )
        else:
            resumed.append(f"call {pending['call_id']}: ingest finished")


async def resume_exports(ctx: Context, now: datetime, resumed: list[str]) -> None:
    def read(tx: Tx) -> Sequence[Row]:
        # Another controller's export may be being written right now: its own to finish.
        return tx.all(
            "SELECT export_id FROM exports WHERE state = 'writing' "
            "AND (controller_id = ? OR controller_id IS NULL)",
            (ctx.controller_id,),
        )

    for row in await ctx.db.read(read, "listing unfinished exports"):
        await abandon_export(ctx, row["export_id"], now)
        resumed.append(f"export {row['export_id']}: unfinished, its files removed")


async def remove_temp_files(ctx: Context, resumed: list[str]) -> None:
    """What interrupted ingests left in the store, not what another controller's ingest is
    writing now. An ingest commits its intent (`pending_ingests`) before the blob store
    makes a temporary file, and the intent goes only once the file is renamed away (or, on
    failure, removed): a temporary file without an intent has no writer, and one whose
    intent is another controller's call is that controller's ingest in progress (finished,
    or cleaned up, at its own restart). An age bound would not do: copying a long recording
    to a slow shared store takes as long as it takes."""
    partial = await blob_op("listing temporary files", ctx.blobs.partials())
    if not partial:
        return

    def theirs(tx: Tx) -> set[str]:
        rows = tx.all(
            "SELECT p.dest FROM pending_ingests p JOIN calls c ON c.call_id = p.call_id "
            "WHERE c.controller_id <> ?",
            (ctx.controller_id,),
        )
        return {str(row["dest"]) for row in rows}

    busy = await ctx.db.read(theirs, "listing other controllers' ingests")
    for key in partial:
        if key in busy:
            continue
        for removed in await blob_op("removing a temporary file", ctx.blobs.discard_partial(key)):
            resumed.append(f"store: removed the temporary file {removed}")


async def fail_closed(ctx: Context, now: datetime) -> list[str]:
    """Open calls without a committed decision: nothing may be recorded for them, and
    their caller did not finish the notice (so no callback treats them as missed)."""

    def body(tx: Tx) -> list[str]:
        # Only this controller's: another one's call without a decision may be live.
        rows = tx.all(
            "SELECT c.call_id FROM calls c WHERE c.ended_at IS NULL "
            "AND c.decided_at IS NULL AND (c.controller_id = ? OR c.controller_id IS NULL)",
            (ctx.controller_id,),
        )
        ids = [str(row["call_id"]) for row in rows]
        for call_id in ids:
            tx.run(
                "UPDATE calls SET ended_at = ?, outcome = ?, reason = ? WHERE call_id = ?",
                (
                    ts(now),
                    Outcome.ABANDONED_IN_PROMPT.value,
                    "controller restarted before a decision: not recorded",
                    call_id,
                ),
            )
            ctx.audit(tx, now, "call.failed_closed", call_id, {"reason": "no committed decision"})
        return ids

    return await ctx.db.write(body, "closing calls without a decision")


async def adopt_spool(
    ctx: Context,
    spool: Path,
    now: datetime,
    report: Reconciling,
    finished: Callable[[Path], bool] | None,
) -> None:
    paths = await asyncio.to_thread(lambda: sorted(spool.iterdir()))
    for path in paths:
        if await asyncio.to_thread(path.is_symlink):
            # Never followed: it could point at any file of the machine.
            await in_thread(f"removing {path}", files.remove, path)
            report.flagged.append(f"spool: removed a symbolic link {shown(path.name)}")
            continue
        if await asyncio.to_thread(path.is_dir):
            continue
        call = await call_of_spool_file(ctx, path)
        if call is None or call["decision"] != Decision.RECORD.value:
            call_id = None if call is None else str(call["call_id"])
            why = "no such call" if call is None else f"decision {call['decision']}"
            await discard(ctx, call_id or "unknown", path, now, why)
            report.unowned.append(call_id or shown(path.name))
            continue
        call_id = str(call["call_id"])

        def stored(tx: Tx, cid: str = call_id) -> Row | None:
            return tx.one("SELECT * FROM recordings WHERE call_id = ?", (cid,))

        existing = await ctx.db.read(stored, "reading a recording")
        if existing is not None:
            await tidy_source(ctx, existing, path)
            if await asyncio.to_thread(path.exists):
                report.flagged.append(
                    f"spool: {shown(path.name)} differs from the stored recording of "
                    f"call {call_id}; left for a look"
                )
            else:
                report.resumed.append(f"call {call_id}: leftover spool copy removed")
            continue
        if call["ended_at"] is None:
            report.flagged.append(f"call {call_id}: still open, its recording stays in the spool")
            continue
        if finished is not None and not await asyncio.to_thread(finished, path):
            report.flagged.append(
                f"call {call_id}: its recording may still be written; left in the spool "
                "for the controller"
            )
            continue
        try:
            row = await ingest_now(ctx, call_id, path, now)
        except StorageError as error:
            report.flagged.append(f"call {call_id}: not ingested: {error}")
            continue
        if row is not None:
            report.ingested.append(call_id)


async def check_stored(ctx: Context, now: datetime, flagged: list[str], resumed: list[str]) -> None:
    def read(tx: Tx) -> Sequence[Row]:
        return tx.all(
            "SELECT id, call_id, path, sha256, status FROM recordings "
            "WHERE path IS NOT NULL AND status IN ('stored', 'missing')"
        )

    rows = await ctx.db.read(read, "listing stored recordings")
    exists = await blob_op(
        "listing stored recordings", ctx.blobs.exists_many([r["path"] for r in rows])
    )
    referenced = {str(r["path"]) for r in rows}
    for row, present in zip(rows, exists, strict=True):
        status = row["status"]
        if status == RecordingStatus.STORED.value and not present:
            if await mark_missing(ctx, row["id"], now):
                flagged.append(f"recording {row['id']} (call {row['call_id']}): file missing")
        elif status == RecordingStatus.MISSING.value and present:
            digest, _ = await blob_op("reading a reappeared file", ctx.blobs.hash(row["path"]))
            if row["sha256"] is not None and digest == row["sha256"]:
                await set_status(ctx, row["id"], RecordingStatus.STORED, now)
                resumed.append(f"recording {row['id']}: its file is back and matches")
            else:
                flagged.append(f"recording {row['id']}: a different file is at its path")
    held = await blob_op("listing the store", ctx.blobs.list())
    orphans = await not_in_flight(ctx, [key for key in held if key not in referenced])
    if orphans:
        await place_orphans(ctx, orphans, now, flagged, resumed)


async def not_in_flight(ctx: Context, keys: list[str]) -> list[str]:
    """`keys` without those an ingest (this controller's or another's) is placing now, or
    placed since the recordings were read. Read after the store was listed, in one
    snapshot: an ingest commits its intent before it places the file, and turns the intent
    into the recording row in one transaction, so a file listed is either still pending
    or a recording by then."""
    if not keys:
        return keys

    def read(tx: Tx) -> set[str]:
        known = {str(row["dest"]) for row in tx.all("SELECT dest FROM pending_ingests")}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            rows = tx.all(
                f"SELECT path FROM recordings WHERE path IN ({marks}) "  # noqa: S608 - only placeholders
                "AND status IN ('stored', 'missing')",
                chunk,
            )
            known.update(str(row["path"]) for row in rows)
        return known

    known = await ctx.db.read(read, "listing ingests in progress")
    busy = known | {ctx.blobs.partial_key(key) for key in known}
    return [key for key in keys if key not in busy]


async def place_orphans(
    ctx: Context, orphans: list[str], now: datetime, flagged: list[str], resumed: list[str]
) -> None:
    """A file in the store no row points at. If its name is a recording that was
    deleted (a restored backup), the ledger says it must be gone; otherwise flag it."""
    for key in orphans:

        def read(tx: Tx, stem: str = ctx.blobs.recording_id_of(key)) -> Row | None:
            return tx.one("SELECT id, status FROM recordings WHERE id = ?", (stem,))

        row = await ctx.db.read(read, "identifying a file in the store")
        if row is not None and row["status"] == RecordingStatus.DELETED.value:
            await blob_op(f"removing {key}", ctx.blobs.remove(key))

            def body(tx: Tx, recording_id: str = row["id"]) -> None:
                ctx.audit(
                    tx,
                    now,
                    "recording.deleted",
                    recording_id,
                    {"reason": "reappeared after its deletion", "file": "removed"},
                )

            await ctx.db.write(body, "deleting a reappeared recording")
            await ctx.checkpoint_after(now, "deleting a reappeared recording")
            resumed.append(f"recording {row['id']}: deleted again (it had reappeared)")
        else:
            flagged.append(f"store: {key} belongs to no recording")


async def mark_missing(ctx: Context, recording_id: str, now: datetime) -> bool:
    """Mark a stored recording whose file was not found as missing; whether it was. Decided
    again in the write transaction, after the store was looked at: a deletion (this node's
    or another's) notes its recordings (`deletions`) before it removes their files, and
    marks them deleted once they are gone, so a row still stored and not being deleted really
    has lost its file.
    One being deleted is left to that deletion (or, if it was cut short, to the next sweep
    or withdrawal, which finds the file already absent)."""

    def body(tx: Tx) -> bool:
        if being_deleted(tx, [recording_id]):
            return False
        found = tx.all(
            "UPDATE recordings SET status = ? WHERE id = ? AND status = ? RETURNING id",
            (RecordingStatus.MISSING.value, recording_id, RecordingStatus.STORED.value),
        )
        if found:
            ctx.audit(tx, now, f"recording.{RecordingStatus.MISSING.value}", recording_id, {})
        return bool(found)

    return await ctx.db.write(body, f"marking recording {recording_id} missing")


async def set_status(
    ctx: Context, recording_id: str, status: RecordingStatus, now: datetime
) -> None:
    def body(tx: Tx) -> None:
        tx.run("UPDATE recordings SET status = ? WHERE id = ?", (status.value, recording_id))
        ctx.audit(tx, now, f"recording.{status.value}", recording_id, {})

    await ctx.db.write(body, f"marking recording {recording_id} {status.value}")


async def flag_calls_without_file(ctx: Context, flagged: list[str]) -> None:
    """Told to record, ended, and no file ever arrived: said once, not at every start."""

    def read(tx: Tx) -> Sequence[Row]:
        return tx.all(
            "SELECT c.call_id, c.recording_file FROM calls c "
            "WHERE c.recording_file IS NOT NULL "
            "AND c.ended_at IS NOT NULL AND c.file_flagged = 0 "
            "AND NOT EXISTS (SELECT 1 FROM recordings r WHERE r.call_id = c.call_id) "
            "AND NOT EXISTS (SELECT 1 FROM pending_ingests p WHERE p.call_id = c.call_id) "
            # Another controller's spool is not ours to look in.
            "AND (c.controller_id = ? OR c.controller_id IS NULL)",
            (ctx.controller_id,),
        )

    rows = await ctx.db.read(read, "checking calls without a file")
    # A file still in the spool (left for the controller) has arrived: not flagged.
    present = await asyncio.to_thread(
        lambda: [os.path.lexists(row["recording_file"]) for row in rows]
    )
    ids = [str(row["call_id"]) for row, here in zip(rows, present, strict=True) if not here]

    def body(tx: Tx) -> None:
        tx.many("UPDATE calls SET file_flagged = 1 WHERE call_id = ?", [(i,) for i in ids])

    await ctx.db.write(body, "flagging calls without a file")
    for call_id in ids:
        flagged.append(f"call {call_id}: recording was started but no file arrived")
