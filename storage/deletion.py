"""Deleting recordings, in batches: the rows are listed and the batch noted as being
deleted (a row of `deletions` naming them), the copies and audio go (their directories
fsync'd), then the rows are committed as deleted with an audit entry each and the note
goes. A crash in between leaves rows whose files are gone, which the next run deletes
again as "already absent"; meanwhile the note tells a checker on another node that such a
file is being deleted, not missing.
Shared by the retention sweep and withdrawals. A recording's export copies go with it,
and nothing else of the exports that hold them (`storage.exportcopies`)."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from storage.exportcopies import ExportChange, HeldIn, copies_of, mark_copies_in, note_changes
from storage.exportcopies import remove_copies as remove_export_copies
from storage.ports import Row, Tx
from storage.rows import Context, blob_op
from storage.values import ts

SWEEP_BATCH = 2000  # recordings a deletion step lists, removes and commits at once


@dataclass(frozen=True, slots=True)
class Target:
    """A recording to delete and the withdrawal it is deleted for (None: retention)."""

    recording_id: str
    withdrawal_id: str | None


@dataclass(frozen=True, slots=True)
class Doomed:
    """A recording about to be deleted: its row, its audio's blob key (None: none kept), its
    export copies (local files) and the exports that hold them."""

    row: Row
    audio: str | None
    copies: tuple[Row, ...]
    exports: tuple[HeldIn, ...] = ()


@dataclass(frozen=True, slots=True)
class Removal:
    """What removing one recording's files did. `file_state` None: its audio is still there.
    `exports`: what the batch did to the exports its copies were in (on the batch's first
    removal only, so that each is committed once)."""

    file_state: str | None
    copies_removed: tuple[int, ...]
    problems: tuple[str, ...]
    exports: tuple[ExportChange, ...] = ()


@dataclass(frozen=True, slots=True)
class Removed:
    """A batch whose files are gone (or could not go), its rows not yet marked deleted;
    `deletion` its row in `deletions` (None: nothing was listed)."""

    targets: Sequence[Target]
    doomed: list[Doomed]
    removals: list[Removal]
    deletion: str | None


async def remove_files(
    ctx: Context,
    doomed: Sequence[Doomed],
    doing: str = "removing recordings",
    *,
    now: datetime,
    reason: str,
) -> list[Removal]:
    """Remove the audio of `doomed` (the blob store, several at once, durably), then their
    export copies (each directory that lost a file fsync'd once, so that none of the names
    comes back), and bring the exports that held them up to date (`storage.exportcopies`;
    `reason` and `now` are noted in their manifests)."""
    audio = iter(
        await blob_op(
            doing,
            ctx.blobs.remove_many([i.audio for i in doomed if i.audio is not None]),
        )
    )
    states: list[str | None] = []
    problems: list[list[str]] = []
    for item in doomed:
        state: str | None = "none"
        lines: list[str] = []
        if item.audio is not None:
            outcome = next(audio)
            if isinstance(outcome, OSError):
                lines.append(
                    f"recording {item.row['id']}: {outcome.strerror or outcome} (kept for now)"
                )
                state = None
            else:
                state = "removed" if outcome else "already absent"
        states.append(state)
        problems.append(lines)
    copied, changes = await remove_copies(
        ctx, doomed, {item.row["id"]: reason for item in doomed}, now, doing
    )
    # A manifest that could not be written again is a problem of each recording that left it.
    export_problems: dict[str, list[str]] = {}
    for change in changes:
        for recording_id in change.recordings:
            export_problems.setdefault(recording_id, []).extend(change.problems)
    return [
        Removal(
            state,
            removed,
            tuple(copy_problems + export_problems.get(item.row["id"], []) + lines),
            tuple(changes) if n == 0 else (),
        )
        for n, (item, state, lines, (removed, copy_problems)) in enumerate(
            zip(doomed, states, problems, copied, strict=True)
        )
    ]


async def remove_copies(
    ctx: Context,
    doomed: Sequence[Doomed],
    reasons: dict[str, str],
    now: datetime,
    doing: str,
) -> tuple[list[tuple[tuple[int, ...], list[str]]], list[ExportChange]]:
    """The export copies of `doomed` removed (`storage.exportcopies.remove_copies`)."""
    if not any(item.copies for item in doomed):
        return [((), [])] * len(doomed), []
    exports = {held.export_id: held for item in doomed for held in item.exports}
    items = [(item.row["id"], item.copies) for item in doomed]
    return await blob_op(
        doing,
        asyncio.to_thread(
            remove_export_copies, items, exports, reasons, now, ctx.audit_keys.signing
        ),
    )


async def delete_batch(
    ctx: Context, targets: Sequence[Target], now: datetime, reason: str
) -> dict[str, str | None]:
    """Delete recordings: their copies and audio, then their rows, in three steps for
    the whole batch (one read, one file job, one write). Each id this call deleted maps to
    None, each with a problem to its problem line (`record_removed`).

    Files go first and their directories are fsync'd (once each) before the rows are
    committed: a crash in between leaves rows whose files are gone, which the next
    sweep deletes again as "already absent". A recording whose audio could not be
    removed keeps its row (and is due again); the copies that did go are noted."""
    ids = [target.recording_id for target in targets]
    deletion, items = await ctx.db.write(
        lambda tx: mark_doomed(tx, ids, ts(now)), "marking recordings for deletion", serial=False
    )
    removals = await remove_files(ctx, items, now=now, reason=reason)
    removed = Removed(targets, items, removals, deletion)
    return await record_removed(ctx, removed, now, reason)


# What a deletion reads of a recording (its audit entry and its files): a sweep batch reads
# a thousand rows, and the other columns only cost the time to build them.
DOOMED_COLUMNS = "id, call_id, path, legal_basis, sha256, size, created_at, delete_after"


def mark_doomed(tx: Tx, ids: Sequence[str], since: str) -> tuple[str | None, list[Doomed]]:
    """The recordings of `ids` not deleted yet, noted as being deleted from `since` on
    (before any of their files goes), with their live export copies and the exports that
    hold them, in the order of `ids` (`doom`)."""
    if not ids:
        return None, []
    marks = ", ".join("?" * len(ids))
    order = {recording_id: n for n, recording_id in enumerate(ids)}
    rows = sorted(
        tx.all(
            f"SELECT {DOOMED_COLUMNS} FROM recordings WHERE id IN ({marks}) "  # noqa: S608 - only placeholders are added
            "AND status != 'deleted'",
            ids,
        ),
        key=lambda row: order[row["id"]],
    )
    return doom(tx, rows, since)


def doom(tx: Tx, rows: Sequence[Row], since: str) -> tuple[str | None, list[Doomed]]:
    """`rows` (`DOOMED_COLUMNS`) noted as being deleted from `since` on (`note_deletion`),
    and as recordings to delete (`doomed_of`)."""
    return note_deletion(tx, (row["id"] for row in rows), since), doomed_of(tx, rows)


def note_deletion(tx: Tx, ids: Iterable[str], since: str) -> str | None:
    """Note the recordings of `ids` as being deleted from `since` on: one row of
    `deletions` for the batch, gone again when the batch is committed. Its id (None: no
    recordings, nothing noted)."""
    listed = list(ids)
    if not listed:
        return None
    note = secrets.token_hex(16)
    tx.run(
        "INSERT INTO deletions (id, since, ids) VALUES (?, ?, ?)",
        (note, since, json.dumps(listed)),
    )
    return note


def drop_finished_notes(tx: Tx) -> None:
    """Drop the notes of deletions whose recordings are all deleted by now. A deletion
    drops its own note when it commits; one cut short by a crash leaves it, until the next
    sweep or withdrawal has deleted what it named."""
    for note in tx.all("SELECT id, ids FROM deletions"):
        ids = json.loads(note["ids"])
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            if tx.all(
                f"SELECT id FROM recordings WHERE id IN ({marks}) "  # noqa: S608 - only placeholders are added
                "AND status != 'deleted' LIMIT 1",
                chunk,
            ):
                break
        else:
            tx.run("DELETE FROM deletions WHERE id = ?", (note["id"],))


def being_deleted(tx: Tx, ids: Iterable[str] | None = None) -> dict[str, str]:
    """Of the recordings of `ids` (None: all), those a deletion has noted and not yet
    committed, each with when the latest such deletion began (the one under way; an
    earlier one was cut short). A handful of rows: one for each deletion step under way,
    or cut short by a crash."""
    wanted = None if ids is None else set(ids)
    found: dict[str, str] = {}
    for row in tx.all("SELECT since, ids FROM deletions"):
        since = str(row["since"])
        for recording_id in json.loads(row["ids"]):
            if wanted is not None and recording_id not in wanted:
                continue
            if recording_id not in found or since > found[recording_id]:
                found[recording_id] = since
    return found


def doomed_of(tx: Tx, rows: Sequence[Row]) -> list[Doomed]:
    """`rows` (`DOOMED_COLUMNS`) as recordings to delete, in their order, with their live
    export copies and the exports that hold them."""
    copies, exports = copies_of(tx, [row["id"] for row in rows])
    return [doomed_with(row, row["path"], copies.get(row["id"], []), exports) for row in rows]


def doomed_with(
    row: Row, audio: str | None, copies: Sequence[Row], exports: dict[str, HeldIn]
) -> Doomed:
    held = tuple(exports[e] for e in sorted({copy["export_id"] for copy in copies}))
    return Doomed(row, audio, tuple(copies), held)


async def record_removed(
    ctx: Context, removed: Removed, now: datetime, reason: str
) -> dict[str, str | None]:
    """Commit the deletions whose files are gone (one write transaction, an audit entry
    each). Each recording this transaction deleted maps to None, each with a problem to its
    problem line; a recording deleted by someone else (already, or meanwhile) is left out,
    so that no two reports name the same deletion."""
    by_id = {target.recording_id: target for target in removed.targets}
    outcome: dict[str, str | None] = {}
    if not removed.doomed:
        return outcome
    pairs = list(zip(removed.doomed, removed.removals, strict=True))
    copies_gone = [c for removal in removed.removals for c in removal.copies_removed]
    changes = [change for removal in removed.removals for change in removal.exports]
    when = ts(now)

    def body(tx: Tx) -> list[tuple[Target, Doomed, Removal]]:
        if copies_gone:
            mark_copies_in(tx, copies_gone, now)
        why = {t.recording_id: (reason, t.withdrawal_id) for t in removed.targets}
        note_changes(ctx, tx, changes, now, why)
        # The batch is no longer being deleted: the recordings whose audio is still there
        # keep their rows, due again; the others are marked deleted now.
        if removed.deletion is not None:
            tx.run("DELETE FROM deletions WHERE id = ?", (removed.deletion,))
        removed_audio = [(i, r) for i, r in pairs if r.file_state is not None]
        if not removed_audio:
            return []
        claimed = claim(tx, [by_id[item.row["id"]] for item, _ in removed_audio], when, reason)
        # Rows deleted meanwhile (another node's sweep, a withdrawal) are not claimed here:
        # their deletion, audit entry and report are the other transaction's.
        gone = [
            (by_id[item.row["id"]], item, removal)
            for item, removal in removed_audio
            if item.row["id"] in claimed
        ]
        tx.many(
            "INSERT INTO withdrawal_recordings (withdrawal_id, recording_id, action, why) "
            "VALUES (?, ?, 'deleted', ?) ON CONFLICT DO NOTHING",
            [
                (t.withdrawal_id, t.recording_id, "consent withdrawn")
                for t, _, _ in gone
                if t.withdrawal_id is not None
            ],
        )
        ctx.audit_many(
            tx,
            now,
            "recording.deleted",
            [
                (
                    target.recording_id,
                    {
                        "call_id": item.row["call_id"],
                        "reason": reason,
                        "withdrawal_id": target.withdrawal_id or "",
                        "legal_basis": item.row["legal_basis"],
                        "sha256": item.row["sha256"] or "",
                        "size": str(item.row["size"]),
                        "created_at": item.row["created_at"],
                        "delete_after": item.row["delete_after"],
                        "file": str(removal.file_state),
                        "copies_removed": str(len(removal.copies_removed)),
                        "copies_left": str(len(item.copies) - len(removal.copies_removed)),
                    },
                )
                for target, item, removal in gone
            ],
        )
        return gone

    first = removed.targets[0].recording_id
    what = (
        f"deleting recording {first}"
        if len(removed.targets) == 1
        else f"deleting {len(removed.doomed)} recordings"
    )
    gone = await ctx.db.write(body, what)
    if gone:
        await ctx.checkpoint_after(now, what)
    mine = {target.recording_id for target, _, _ in gone}
    for item, removal in pairs:
        recording_id = item.row["id"]
        if removal.problems:
            outcome[recording_id] = "; ".join(removal.problems)
        elif recording_id in mine:
            outcome[recording_id] = None
    return outcome


def claim(tx: Tx, targets: Sequence[Target], when: str, reason: str) -> set[str]:
    """Mark `targets` deleted where no one has yet; the ids this transaction marked.

    The condition is in the UPDATE itself, so two nodes that both removed a recording's
    files cannot both mark it: on PostgreSQL the second UPDATE waits for the first's row
    lock and then finds the row deleted. Each deletion is claimed by exactly one
    transaction, which alone audits and reports it."""
    claimed: set[str] = set()
    by_withdrawal: dict[str | None, list[str]] = {}
    for target in targets:
        by_withdrawal.setdefault(target.withdrawal_id, []).append(target.recording_id)
    for withdrawal_id, ids in by_withdrawal.items():
        marks = ", ".join("?" * len(ids))
        rows = tx.all(
            "UPDATE recordings SET status = 'deleted', deleted_at = ?, "  # noqa: S608 - only placeholders are added
            "deletion_reason = ?, withdrawal_id = ?, path = NULL, caller = NULL, "
            f"dialed = NULL, customer = NULL WHERE id IN ({marks}) AND status != 'deleted' "
            "RETURNING id",
            (when, reason, withdrawal_id, *ids),
        )
        claimed.update(row["id"] for row in rows)
    return claimed


async def retry_copies(ctx: Context, now: datetime) -> list[str]:
    """Copies a deletion could not remove (a stick unplugged, a permission): try again."""

    def read(tx: Tx) -> list[Doomed]:
        # Driven by the live copies (few), not by the deleted recordings (most of them).
        rows = tx.all(
            "SELECT r.id, r.deletion_reason, r.withdrawal_id FROM recordings r "
            "WHERE r.status = 'deleted' AND r.id IN (SELECT f.recording_id FROM export_files f "
            "WHERE f.deleted_at IS NULL)"
        )
        copies, exports = copies_of(tx, [row["id"] for row in rows])
        return [doomed_with(row, None, copies.get(row["id"], []), exports) for row in rows]

    doomed = await ctx.db.read(read, "listing copies left behind")
    if not doomed:
        return []
    reasons = {item.row["id"]: str(item.row["deletion_reason"]) for item in doomed}
    copied, changes = await remove_copies(ctx, doomed, reasons, now, "removing copies left behind")

    def body(tx: Tx) -> None:
        mark_copies_in(tx, [copy for removed, _ in copied for copy in removed], now)
        why = {
            item.row["id"]: (reasons[item.row["id"]], item.row["withdrawal_id"]) for item in doomed
        }
        note_changes(ctx, tx, changes, now, why)

    await ctx.db.write(body, "noting removed export copies")
    problems = [problem for _, found in copied for problem in found]
    return problems + [problem for change in changes for problem in change.problems]
