"""Export copies, one recording at a time: deleting a recording removes its own copies from
every export that holds one, and nothing of another recording's.

An export left with no recording goes whole (manifest, SHA256SUMS, signature, its folder).
One that still holds others has its manifest, SHA256SUMS and signature written again
without the recording (`storage.exportfiles.prune`), so that what remains still verifies
offline; the manifest notes the removal and the audit log has an `export.copy_removed`
entry for it, naming the export, the recording and why (retention or a withdrawal).

Crash-safe in the order of `storage.deletion`: files first, then one commit. A run killed
in between is done again; a copy already gone counts as removed, and pruning a manifest
that already notes a removal changes nothing more.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from storage import exportfiles, files
from storage.ports import Row, Tx
from storage.rows import Context
from storage.values import ts


@dataclass(frozen=True, slots=True)
class HeldIn:
    """An export holding a copy about to be removed: its own files' rows (manifest,
    SHA256SUMS, signature: `id`, `path`), the recordings with a live copy in it, and
    whether it is finished (one still being written is its writer's, or reconcile's)."""

    export_id: str
    folder: Path
    done: bool
    paper: tuple[Row, ...]
    holding: frozenset[str]


@dataclass(frozen=True, slots=True)
class ExportChange:
    """What removing copies did to one export."""

    export_id: str
    recordings: tuple[str, ...]  # whose copies left it
    emptied: bool  # no recording is left: the export went whole
    paper_removed: tuple[int, ...]
    digests: tuple[tuple[int, str], ...]  # (file id, its new SHA-256) of files written again
    problems: tuple[str, ...]


def copies_of(tx: Tx, ids: Sequence[str]) -> tuple[dict[str, list[Row]], dict[str, HeldIn]]:
    """The live export copies of the recordings `ids`, by recording (`id`, `export_id`,
    `path`), and each export that holds one."""
    if not ids:
        return {}, {}
    marks = ", ".join("?" * len(ids))
    copies: dict[str, list[Row]] = {}
    for copy in tx.all(
        "SELECT recording_id, id, export_id, path FROM export_files "  # noqa: S608 - only placeholders are added
        f"WHERE deleted_at IS NULL AND recording_id IN ({marks})",
        ids,
    ):
        copies.setdefault(copy["recording_id"], []).append(copy)
    export_ids = sorted({copy["export_id"] for found in copies.values() for copy in found})
    if not export_ids:
        return copies, {}
    marks = ", ".join("?" * len(export_ids))
    exports = {
        row["export_id"]: row
        for row in tx.all(
            f"SELECT export_id, dir, state FROM exports WHERE export_id IN ({marks})",  # noqa: S608 - only placeholders are added
            export_ids,
        )
    }
    paper: dict[str, list[Row]] = {}
    holding: dict[str, set[str]] = {}
    for row in tx.all(
        "SELECT id, export_id, recording_id, path FROM export_files "  # noqa: S608 - only placeholders are added
        f"WHERE deleted_at IS NULL AND export_id IN ({marks})",
        export_ids,
    ):
        if row["recording_id"] is None:
            paper.setdefault(row["export_id"], []).append(row)
        else:
            holding.setdefault(row["export_id"], set()).add(row["recording_id"])
    held = {
        export_id: HeldIn(
            export_id=export_id,
            folder=Path(exports[export_id]["dir"]),
            done=exports[export_id]["state"] == "done",
            paper=tuple(paper.get(export_id, ())),
            holding=frozenset(holding.get(export_id, ())),
        )
        for export_id in export_ids
    }
    return copies, held


def remove_copies(
    items: Sequence[tuple[str, Sequence[Row]]],
    exports: Mapping[str, HeldIn],
    reasons: Mapping[str, str],
    at: datetime,
    key: Ed25519PrivateKey,
) -> tuple[list[tuple[tuple[int, ...], list[str]]], list[ExportChange]]:
    """Remove the copies of `items` (recording id, its copies) and bring each export they
    leave up to date (blocking): for each item the copies removed and the problems, and
    what was done to each export. A recording leaves an export only when all its copies
    there are gone; a copy that stays (a permission, a stick unplugged), or an export that
    could not be brought up to date, is tried again by the next sweep."""
    removed_in: list[tuple[list[tuple[int, str]], list[str]]] = []  # (copy id, export id)
    left = {export_id: set(held.holding) for export_id, held in exports.items()}
    gone_from: dict[str, list[str]] = {}
    with files.Unlinker() as unlinker:
        for recording_id, copies in items:
            removed: list[tuple[int, str]] = []
            problems: list[str] = []
            kept_in: set[str] = set()
            for copy in copies:
                try:
                    unlinker.unlink(copy["path"])
                    removed.append((int(copy["id"]), copy["export_id"]))
                except OSError as error:
                    problems.append(f"export copy {copy['path']}: {error.strerror or error}")
                    kept_in.add(copy["export_id"])
            for export_id in sorted({copy["export_id"] for copy in copies} - kept_in):
                left[export_id].discard(recording_id)
                gone_from.setdefault(export_id, []).append(recording_id)
            removed_in.append((removed, problems))
        unlinker.sync()  # the copies are gone for good before a manifest says so
        changes = [
            _bring_up_to_date(unlinker, exports[export_id], recordings, not left[export_id],
                              {r: reasons[r] for r in recordings}, at, key)
            for export_id, recordings in gone_from.items()
        ]  # fmt: skip
        unlinker.sync()
    # An export not brought up to date (its manifest could not be written again, or, with
    # nothing left, its own files not removed) keeps its copies listed: the next sweep's
    # `retry_copies` finds them already gone and tries the export again.
    unfinished = {change.export_id for change in changes if change.problems}
    per_item = [
        (tuple(copy for copy, export_id in removed if export_id not in unfinished), problems)
        for removed, problems in removed_in
    ]
    return per_item, changes


def _bring_up_to_date(
    unlinker: files.Unlinker,
    held: HeldIn,
    recordings: list[str],
    emptied: bool,
    reasons: Mapping[str, str],
    at: datetime,
    key: Ed25519PrivateKey,
) -> ExportChange:
    """An export that `recordings` left: written again without them, or, with none left,
    removed whole. The ledger may still count a recording whose copy an earlier batch of
    the same sweep removed (not yet committed): the manifest, which that batch already
    wrote again, is what says whether any is left."""
    digests: tuple[tuple[int, str], ...] = ()
    problems: list[str] = []
    if not emptied and held.done:
        digests, problems, remaining = _rewrite(held, reasons, at, key)
        emptied = remaining == 0
    if not emptied:
        return ExportChange(held.export_id, tuple(recordings), False, (), digests, tuple(problems))
    removed, problems = _remove_paper(unlinker, held)
    return ExportChange(
        held.export_id, tuple(recordings), True, tuple(removed), (), tuple(problems)
    )


def _remove_paper(unlinker: files.Unlinker, held: HeldIn) -> tuple[list[int], list[str]]:
    """An export with no recording left: its own files, then its folder."""
    removed: list[int] = []
    problems: list[str] = []
    for paper in held.paper:
        try:
            unlinker.unlink(paper["path"])
            removed.append(int(paper["id"]))
        except OSError as error:
            problems.append(f"export file {paper['path']}: {error.strerror or error}")
    if not problems:
        with contextlib.suppress(OSError):
            held.folder.rmdir()
            unlinker.removed_dir(str(held.folder))
    return removed, problems


def _rewrite(
    held: HeldIn, reasons: Mapping[str, str], at: datetime, key: Ed25519PrivateKey
) -> tuple[tuple[tuple[int, str], ...], list[str], int | None]:
    """The export's files written again without `reasons`' recordings: (file id, SHA-256)
    of each, problems, and how many recordings its manifest still holds (None: unknown)."""
    ids = {Path(paper["path"]).name: int(paper["id"]) for paper in held.paper}
    if exportfiles.MANIFEST not in ids:
        return (), [], None
    try:
        # An export made before SHA256SUMS existed has none registered: its manifest alone
        # is written again (a file not registered first could escape a later deletion).
        written, remaining = exportfiles.prune(
            held.folder, reasons, at.isoformat(), key, signed=exportfiles.SUMS in ids
        )
    except (OSError, ValueError) as error:
        why = error.strerror if isinstance(error, OSError) and error.strerror else error
        return (
            (),
            [
                f"export {held.export_id}: the copy of {', '.join(sorted(reasons))} was removed, "
                f"but its manifest could not be written again ({why})"
            ],
            None,
        )
    pairs = tuple((ids[name], digest) for name, digest in written.items() if name in ids)
    return pairs, [], remaining


def mark_copies_in(tx: Tx, copy_ids: Sequence[int], now: datetime) -> None:
    """Note the export files `copy_ids` removed; an export with none left is deleted."""
    tx.many(
        "UPDATE export_files SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL",
        [(ts(now), copy_id) for copy_id in copy_ids],
    )
    tx.run(
        "UPDATE exports SET state = 'deleted' WHERE state != 'deleted' AND NOT EXISTS "
        "(SELECT 1 FROM export_files f WHERE f.export_id = exports.export_id "
        "AND f.deleted_at IS NULL)"
    )


def note_changes(
    ctx: Context,
    tx: Tx,
    changes: Sequence[ExportChange],
    now: datetime,
    why: Mapping[str, tuple[str, str | None]],
) -> None:
    """Commit what `changes` did to their exports (after the copies themselves are marked):
    files removed, the new SHA-256 of files written again, and an `export.copy_removed`
    audit entry for each recording that left an export (one not brought up to date is
    tried again, and noted then). `why`: recording id -> (reason, withdrawal id or None)."""
    paper = [file_id for change in changes for file_id in change.paper_removed]
    if paper:
        mark_copies_in(tx, paper, now)
    tx.many(
        "UPDATE export_files SET sha256 = ? WHERE id = ? AND deleted_at IS NULL",
        [(digest, file_id) for change in changes for file_id, digest in change.digests],
    )
    entries = [
        (
            change.export_id,
            {
                "recording_id": recording_id,
                "reason": why[recording_id][0],
                "withdrawal_id": why[recording_id][1] or "",
                "export": "deleted" if change.emptied else "kept",
            },
        )
        for change in changes
        if not change.problems
        for recording_id in change.recordings
    ]
    if entries:
        ctx.audit_many(tx, now, "export.copy_removed", entries)
