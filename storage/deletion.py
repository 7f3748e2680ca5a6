"""Deleting recordings, in batches: the copies and audio go first (their directories
fsync'd), then the rows are committed as deleted with an audit entry each. A crash in
between leaves rows whose files are gone, which the next run deletes again as "already
absent". Shared by the retention sweep and withdrawals."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from storage import files
from storage.ports import Row, Tx
from storage.rows import Context, blob_op
from storage.values import ts

SWEEP_BATCH = 1000


@dataclass(frozen=True, slots=True)
class Target:
    """A recording to delete and the withdrawal it is deleted for (None: retention)."""

    recording_id: str
    withdrawal_id: str | None


@dataclass(frozen=True, slots=True)
class Doomed:
    """A recording about to be deleted: its row, its audio's blob key (None: none kept) and
    its export copies (local files)."""

    row: Row
    audio: str | None
    copies: tuple[Row, ...]


@dataclass(frozen=True, slots=True)
class Removal:
    """What removing one recording's files did. `file_state` None: its audio is still there."""

    file_state: str | None
    copies_removed: tuple[int, ...]
    problems: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Removed:
    """A batch whose files are gone (or could not go), its rows not yet marked deleted."""

    targets: Sequence[Target]
    doomed: list[Doomed]
    removals: list[Removal]


async def remove_files(
    ctx: Context, doomed: Sequence[Doomed], doing: str = "removing recordings"
) -> list[Removal]:
    """Remove the audio of `doomed` (the blob store, several at once, durably), then their
    export copies (each directory that lost a file fsync'd once, so that none of the names
    comes back)."""
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
    if any(item.copies for item in doomed):
        copied = await blob_op(doing, asyncio.to_thread(_remove_copies, doomed))
    else:
        copied = [((), [])] * len(doomed)
    return [
        Removal(state, removed, tuple(copy_problems + lines))
        for state, lines, (removed, copy_problems) in zip(states, problems, copied, strict=True)
    ]


def _remove_copies(doomed: Sequence[Doomed]) -> list[tuple[tuple[int, ...], list[str]]]:
    """Remove the export copies of `doomed` (blocking); for each, the copies removed and
    the problems. An export folder left empty goes too."""
    result: list[tuple[tuple[int, ...], list[str]]] = []
    with files.Unlinker() as unlinker:
        for item in doomed:
            removed: list[int] = []
            problems: list[str] = []
            for copy in item.copies:
                try:
                    unlinker.unlink(copy["path"])
                    removed.append(int(copy["id"]))
                except OSError as error:
                    problems.append(f"export copy {copy['path']}: {error.strerror or error}")
            for export_dir in {Path(copy["path"]).parent for copy in item.copies}:
                with contextlib.suppress(OSError):
                    export_dir.rmdir()
                    unlinker.removed_dir(str(export_dir))
            result.append((tuple(removed), problems))
        unlinker.sync()
    return result


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
    items = await ctx.db.read(lambda tx: list_doomed(tx, ids), "reading recordings")
    removals = await remove_files(ctx, items)
    removed = Removed(targets, items, removals)
    return await record_removed(ctx, removed, now, reason)


def list_doomed(tx: Tx, ids: Sequence[str]) -> list[Doomed]:
    """The recordings of `ids` not deleted yet, with every live copy of an export that
    holds them (an export goes as a whole)."""
    if not ids:
        return []
    marks = ", ".join("?" * len(ids))
    rows = tx.all(
        f"SELECT * FROM recordings WHERE id IN ({marks}) AND status != 'deleted'",  # noqa: S608 - only placeholders are added
        ids,
    )
    copies: dict[str, list[Row]] = {}
    copies_sql = (
        "SELECT g.recording_id AS of_id, f.id, f.export_id, f.path FROM export_files g "  # noqa: S608 - only placeholders are added
        "JOIN export_files f ON f.export_id = g.export_id AND f.deleted_at IS NULL "
        f"WHERE g.recording_id IN ({marks})"
    )
    for copy in tx.all(copies_sql, ids):
        copies.setdefault(copy["of_id"], []).append(copy)
    order = {recording_id: n for n, recording_id in enumerate(ids)}
    return [
        Doomed(
            row,
            row["path"],
            tuple(copies.get(row["id"], ())),
        )
        for row in sorted(rows, key=lambda row: order[row["id"]])
    ]


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
    when = ts(now)

    def body(tx: Tx) -> list[tuple[Target, Doomed, Removal]]:
        if copies_gone:
            mark_copies_in(tx, copies_gone, now)
        # The audio of the others is still there: their rows stay, due again.
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


async def mark_copies(ctx: Context, copy_ids: Sequence[int], now: datetime) -> None:
    if not copy_ids:
        return

    def body(tx: Tx) -> None:
        mark_copies_in(tx, copy_ids, now)

    await ctx.db.write(body, "noting removed export copies")


def mark_copies_in(tx: Tx, copy_ids: Sequence[int], now: datetime) -> None:
    tx.many(
        "UPDATE export_files SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL",
        [(ts(now), copy_id) for copy_id in copy_ids],
    )
    tx.run(
        "UPDATE exports SET state = 'deleted' WHERE state != 'deleted' AND NOT EXISTS "
        "(SELECT 1 FROM export_files f WHERE f.export_id = exports.export_id "
        "AND f.deleted_at IS NULL)"
    )


async def retry_copies(ctx: Context, now: datetime) -> list[str]:
    """Copies a deletion could not remove (a stick unplugged, a permission): try again."""

    def read(tx: Tx) -> Sequence[Row]:
        return tx.all(
            "SELECT f.id, f.path FROM export_files f WHERE f.deleted_at IS NULL AND "
            "f.export_id IN (SELECT g.export_id FROM export_files g JOIN recordings r "
            "ON r.id = g.recording_id WHERE r.status = 'deleted')"
        )

    problems: list[str] = []
    removed: list[int] = []
    for copy in await ctx.db.read(read, "listing copies left behind"):
        try:
            await asyncio.to_thread(files.remove, Path(copy["path"]))
            removed.append(int(copy["id"]))
        except OSError as error:
            problems.append(f"export copy {copy['path']}: {error.strerror or error}")
    await mark_copies(ctx, removed, now)
    return problems
