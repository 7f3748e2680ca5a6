"""Ingest: a finished MixMonitor file into the store, only for a committed RECORD decision.

One serial transaction reads what the ledger holds for the call and, when the file may be
taken, writes the first step with it: the row of a recording with no audio (MixMonitor's
header only, a caller never bridged), or the intent of a file to place. The intent
(`pending_ingests`: which file goes under which key) is committed before the file is
touched; the blob store places it whole; then the recording is committed and the
source removed. Reconcile finishes an intent whose blob is in place, retries one whose
source is still in the spool, and marks one where both are gone as missing.

The spool's copy is removed once the ledger holds the recording, without an fsync of the
spool directory: a removal a crash undoes leaves a copy of a stored recording, which the
collector's next look at the spool finds and removes (`tidy_source`).

Small steps on a spool file (its type, whether it is only a WAV header, removing an empty
one) run on the event loop (`spool_op`): the spool is MixMonitor's local directory, and a
worker thread costs each call more than they do. Copying and hashing run in threads."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from flows.errors import NotFoundError, StorageError
from flows.policy import Decision, LegalBasis
from flows.retention import keeping_by_name
from storage import files
from storage.ports import RecordingRow, RecordingStatus, Row, Tx
from storage.rows import (
    Context,
    blob_op,
    check_call_id,
    in_thread,
    new_recording_id,
    purposes_of,
    purposes_text,
)
from storage.values import os_error, parse_ts, ts
from storage.withdrawal import Covering, apply_withdrawals, covering_recording

_SUFFIX = re.compile(r"^\.[a-z0-9]{1,8}$")
R = TypeVar("R")


def spool_op(doing: str, step: Callable[[Path], R], source: Path) -> R:
    """`step(source)` at once, a file system error told as ours."""
    try:
        return step(source)
    except OSError as error:
        raise os_error(error, doing) from error


# Seconds a lazy ingest's claim may wait to share the commit of the ledger's next write
# (a live call's decision, most often): under load, one fsync for several calls' steps.
INGEST_WAIT = 0.25


async def ingest(
    ctx: Context, call_id: str, source: Path, now: datetime, *, lazy: bool = False
) -> RecordingRow | None:
    check_call_id(call_id)
    ts(now)
    ctx.ingesting += 1
    try:
        async with ctx.files:
            # Lazy only while no other ingest waits for the file lock behind this one: a
            # queue of ingests must not each wait for company in turn.
            within = INGEST_WAIT if lazy and ctx.ingesting == 1 else None
            return await ingest_now(ctx, call_id, Path(source), now, within=within)
    finally:
        ctx.ingesting -= 1


@dataclass(frozen=True, slots=True)
class _Probe:
    """What the spool file looked like before the ledger was asked: only a header or not,
    or why it could not be read (told only when the call's decision wants the file)."""

    empty: bool = False
    error: StorageError | None = None


def _probe(call_id: str, source: Path) -> _Probe:
    try:
        files.regular_file(source, f"ingesting call {call_id}")
        return _Probe(empty=spool_op(f"reading {source}", files.header_only, source))
    except StorageError as error:
        return _Probe(error=error)


@dataclass(frozen=True, slots=True)
class _Claim:
    """The ledger's answer to "may this file be ingested", taken in one serial transaction
    that also writes the first step when it may: the empty recording's row, or the intent
    of a file to be placed."""

    existing: Row | None
    pending: Row | None
    call: Row | None
    stored: tuple[Row, Covering] | None = None
    intent: tuple[str, str] | None = None  # (recording id, blob key)


async def ingest_now(
    ctx: Context, call_id: str, source: Path, now: datetime, *, within: float | None = None
) -> RecordingRow | None:
    probe = _probe(call_id, source)

    def claim(tx: Tx) -> _Claim:
        state = _Claim(
            tx.one("SELECT * FROM recordings WHERE call_id = ?", (call_id,)),
            tx.one("SELECT * FROM pending_ingests WHERE call_id = ?", (call_id,)),
            tx.one("SELECT * FROM calls WHERE call_id = ?", (call_id,)),
        )
        call = state.call
        if state.existing is not None or state.pending is not None or probe.error is not None:
            return state
        if call is None or call["decision"] != Decision.RECORD.value:
            return state
        created = parse_ts(call["decided_at"])
        recording_id = new_recording_id(created)
        if probe.empty:
            insert = recording_inserter(
                ctx,
                recording_id,
                call,
                now,
                status=RecordingStatus.EMPTY,
                path=None,
                sha256=None,
                size=0,
            )
            return replace(state, stored=insert(tx))
        key = ctx.blobs.key_for(recording_id, created, _suffix(source))
        tx.run(
            "INSERT INTO pending_ingests (recording_id, call_id, source, dest, started_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (recording_id, call_id, str(source), key, ts(now)),
        )
        return replace(state, intent=(recording_id, key))

    state = await ctx.db.write(claim, f"ingesting call {call_id}", within=within)
    if state.existing is not None:
        await tidy_source(ctx, state.existing, source)
        return ctx.recording(state.existing)
    if state.pending is not None:
        return await finish_pending(ctx, state.pending, now)
    call = state.call
    if call is None or call["decision"] != Decision.RECORD.value:
        why = "no such call" if call is None else f"decision {call['decision']}"
        await discard(ctx, call_id, source, now, why)
        return None
    if probe.error is not None:
        raise probe.error
    if state.stored is not None:
        stored, covering = state.stored
        spool_op(f"removing {source}", files.unlink, source)
        await apply_withdrawals(ctx, now, covering, complete=True)
        return ctx.recording(stored)
    assert state.intent is not None  # a RECORD call with a readable file, claimed above
    recording_id, key = state.intent
    try:
        placed = await blob_op(f"storing {source.name}", ctx.blobs.put(source, key))
    except StorageError:
        # Nothing moved (the source is where it was): forget the intent.
        def undo(tx: Tx) -> None:
            tx.run("DELETE FROM pending_ingests WHERE recording_id = ?", (recording_id,))

        await ctx.db.write(undo, f"undoing the ingest of call {call_id}")
        raise
    return await complete(ctx, recording_id, call, key, placed.sha256, placed.size, source, now)


def _suffix(source: Path) -> str:
    suffix = source.suffix.lower() if _SUFFIX.match(source.suffix.lower()) else ".wav"
    if suffix == ".wav16":  # MixMonitor's name for 16 kHz; the file is a plain RIFF WAV
        suffix = ".wav"
    return suffix


async def complete(
    ctx: Context,
    recording_id: str,
    call: Row,
    key: str,
    sha256: str,
    size: int,
    source: Path,
    now: datetime,
) -> RecordingRow:
    row, covering = await insert_recording(
        ctx,
        call["call_id"],
        recording_inserter(
            ctx,
            recording_id,
            call,
            now,
            status=RecordingStatus.STORED,
            path=key,
            sha256=sha256,
            size=size,
        ),
    )
    if source != Path(ctx.blobs.location(key)):
        await in_thread(f"removing {source}", files.unlink, source)
    # complete: a withdrawal that waited for this file may have nothing left now.
    deleted, problems = await apply_withdrawals(ctx, now, covering, complete=True)
    if not deleted and not problems:
        return row  # untouched since it was stored
    return await ctx.require_recording(row.id)


async def insert_recording(
    ctx: Context, call_id: str, insert: Callable[[Tx], tuple[Row, Covering]]
) -> tuple[RecordingRow, Covering]:
    """The recording's row, written with its audit entry (`recording_inserter`), and what
    withdrawals cover it, read in the same (serial) transaction."""
    stored, covering = await ctx.db.write(insert, f"storing the recording of call {call_id}")
    return ctx.recording(stored), covering


def recording_inserter(
    ctx: Context,
    recording_id: str,
    call: Row,
    now: datetime,
    *,
    status: RecordingStatus,
    path: str | None,
    sha256: str | None,
    size: int,
) -> Callable[[Tx], tuple[Row, Covering]]:
    """The body of a transaction that writes the recording's row with its audit entry and
    reads what withdrawals cover it (in a serial transaction)."""
    created = parse_ts(call["decided_at"])
    basis = LegalBasis(call["legal_basis"])
    line_name = call["line"] or ""
    if call["purposes"] is not None:
        # What the decision fixed (`flows.retention.Keeping`): the conversation's line, its
        # purposes, and the date its data goes, the call's numbers alike.
        due = parse_ts(call["purge_after"])
        purposes = purposes_of(call["purposes"])
    else:  # decided before the ledger kept it (schema 9): the line as configured now
        keep = keeping_by_name(ctx.policy, line_name, basis, created)
        due, purposes = keep.delete_after, keep.purposes
    action = "recording.stored" if status is RecordingStatus.STORED else f"recording.{status}"

    def body(tx: Tx) -> tuple[Row, Covering]:
        tx.run("DELETE FROM pending_ingests WHERE recording_id = ?", (recording_id,))
        tx.run(
            "INSERT INTO recordings (id, call_id, line, legal_basis, caller, dialed, "
            "customer, decided_at, created_at, delete_after, sha256, path, linked_to, "
            "purposes, size, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                recording_id,
                call["call_id"],
                line_name,
                basis.value,
                call["caller"],
                call["dialed"],
                call["customer"],
                call["decided_at"],
                ts(created),
                ts(due),
                sha256,
                path,
                call["linked_to"],
                purposes_text(purposes),
                size,
                status.value,
            ),
        )
        ctx.audit(
            tx,
            now,
            action,
            recording_id,
            {
                "call_id": call["call_id"],
                "line": line_name,
                "legal_basis": basis.value,
                "customer": ctx.pseudo(call["customer"]),
                "sha256": sha256 or "",
                "size": str(size),
                "delete_after": ts(due),
                "linked_to": call["linked_to"] or "",
            },
        )
        stored = tx.one("SELECT * FROM recordings WHERE id = ?", (recording_id,))
        assert stored is not None  # inserted just above, in this transaction
        return stored, covering_recording(tx, recording_id)

    return body


async def discard(ctx: Context, call_id: str, source: Path, now: datetime, why: str) -> None:
    """A file nobody may keep (no committed RECORD decision): audited, then deleted."""
    try:
        files.regular_file(source, "discarding")
        digest, size = await in_thread(f"reading {source}", files.hash_file, source)
    except NotFoundError:
        return
    except StorageError:
        # A symlink or a device: remove the entry itself, never what it points to.
        digest, size = "", 0

    def body(tx: Tx) -> None:
        ctx.audit(
            tx,
            now,
            "recording.discarded",
            call_id,
            {"reason": why, "sha256": digest, "size": str(size)},
        )

    await ctx.db.write(body, f"discarding the file of call {call_id}")
    await in_thread(f"removing {source}", files.remove, source)


async def tidy_source(ctx: Context, existing: Row, source: Path) -> None:
    """The call is already ingested; a source still there is a leftover copy of it."""
    if existing["path"] is not None and Path(ctx.blobs.location(existing["path"])) == source:
        return
    try:
        files.regular_file(source, "ingest")
    except StorageError:
        return
    if existing["status"] == RecordingStatus.EMPTY.value:
        if await in_thread(f"reading {source}", files.header_only, source):
            await in_thread(f"removing {source}", files.unlink, source)
        return
    digest, _ = await in_thread(f"reading {source}", files.hash_file, source)
    if digest == existing["sha256"]:
        await in_thread(f"removing {source}", files.unlink, source)


async def finish_pending(ctx: Context, pending: Row, now: datetime) -> RecordingRow | None:
    recording_id = str(pending["recording_id"])
    key = str(pending["dest"])
    source = Path(pending["source"])

    def read_call(tx: Tx) -> Row | None:
        return tx.one("SELECT * FROM calls WHERE call_id = ?", (pending["call_id"],))

    call = await ctx.db.read(read_call, "finishing an ingest")
    assert call is not None  # pending_ingests.call_id references calls
    where = ctx.blobs.location(key)
    await blob_op(f"removing what storing {where} left", ctx.blobs.discard_partial(key))
    (there,) = await blob_op(f"reading {where}", ctx.blobs.exists_many([key]))
    if there:
        digest, size = await blob_op(f"reading {where}", ctx.blobs.hash(key))
        return await complete(ctx, recording_id, call, key, digest, size, source, now)
    if await asyncio.to_thread(source.exists):
        placed = await blob_op(f"storing {source.name}", ctx.blobs.put(source, key))
        return await complete(ctx, recording_id, call, key, placed.sha256, placed.size, source, now)
    row, _ = await insert_recording(
        ctx,
        call["call_id"],
        recording_inserter(
            ctx,
            recording_id,
            call,
            now,
            status=RecordingStatus.MISSING,
            path=key,
            sha256=None,
            size=0,
        ),
    )
    return row
