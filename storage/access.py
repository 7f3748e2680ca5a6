"""Access to a recording and its export: each for a purpose its legal basis allows
(`flows.purposes`), logged whether allowed or refused. An export registers every file it
will write before writing it, so no copy can escape a later deletion. Its manifest,
SHA256SUMS and signature (`storage.exportfiles`) let an auditor check it offline."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from flows.errors import AccessRefused, CallrecError, IntegrityError, NotFoundError
from flows.numbers import shown
from flows.policy import Purpose
from flows.purposes import may_serve
from storage import exportfiles, files
from storage.exportcopies import mark_copies_in
from storage.ports import Progress, RecordingRow, RecordingStatus, Row, Tx
from storage.rows import Context, blob_op, checked_name, in_thread, silent
from storage.values import ts

MANIFEST = exportfiles.MANIFEST


def log_access(
    tx: Tx,
    now: datetime,
    who: str,
    purpose: str,
    recording_id: str,
    allowed: bool,
    reason: str,
) -> None:
    tx.run(
        "INSERT INTO access_log (at, who, purpose, recording_id, allowed, reason) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (ts(now), who, purpose, recording_id[:64], int(allowed), reason),
    )


def refusal_of(ctx: Context, row: RecordingRow | None, recording_id: str, purpose: Purpose) -> str:
    """Why `row` may not serve `purpose`, or "" when it may: the purposes its line allowed
    when it was made, as far as the purposes configured now still allow them."""
    if row is None:
        return f"no recording {shown(recording_id)}"
    if row.status is RecordingStatus.DELETED:
        when = "" if row.deleted_at is None else f" on {ts(row.deleted_at)}"
        return f"recording {row.id} was deleted{when} ({row.deletion_reason})"
    if row.status is RecordingStatus.EMPTY:
        return f"recording {row.id} is empty: nothing was recorded"
    if row.status is RecordingStatus.MISSING:
        return f"recording {row.id}: its file is missing"
    if not may_serve(ctx.policy.purposes, row.legal_basis, purpose, row.purposes):
        allowed = ", ".join(
            sorted(p.value for p in row.purposes & ctx.policy.allowed(row.legal_basis))
        )
        return (
            f"purpose {purpose.value!r} does not fit recording {row.id} "
            f"(legal basis {row.legal_basis.value}; it may serve only: {allowed})"
        )
    return ""


def purpose_named(purpose: Purpose | str) -> Purpose:
    try:
        return Purpose(purpose)
    except ValueError:
        raise AccessRefused(f"unknown purpose {shown(str(purpose))}") from None


async def access(
    ctx: Context, recording_id: str, purpose: Purpose, who: str, now: datetime
) -> Path:
    person = checked_name(who, "who accesses a recording")
    ts(now)
    try:
        wanted = purpose_named(purpose)
    except AccessRefused as error:
        await refuse_logged(ctx, now, person, str(purpose)[:32], recording_id, str(error))
        raise
    row, key = await ctx.get_stored(recording_id)
    refusal = refusal_of(ctx, row, recording_id, wanted)
    if not refusal and row is not None and key is not None:
        size = await ctx.blobs.size(key)
        if size != row.size:
            refusal = f"recording {row.id}: its file is missing or truncated"
            await refuse_logged(ctx, now, person, wanted.value, recording_id, refusal)
            raise IntegrityError(refusal)
    if refusal:
        await refuse_logged(ctx, now, person, wanted.value, recording_id, refusal)
        if row is None:
            raise NotFoundError(refusal)
        if row.status is RecordingStatus.MISSING:
            raise IntegrityError(refusal)
        raise AccessRefused(refusal)
    assert row is not None and key is not None  # no refusal: a stored file

    def body(tx: Tx) -> None:
        log_access(tx, now, person, wanted.value, row.id, True, f"fits {row.legal_basis.value}")

    await ctx.db.write(body, "logging an access")
    return await blob_op(f"opening recording {row.id}", ctx.blobs.open(key))


async def refuse_logged(
    ctx: Context, now: datetime, who: str, purpose: str, recording_id: str, reason: str
) -> None:
    def body(tx: Tx) -> None:
        log_access(tx, now, who, purpose, recording_id, False, reason)

    await ctx.db.write(body, "logging a refused access")


async def export(
    ctx: Context,
    recording_ids: list[str],
    dest: Path,
    purpose: Purpose,
    who: str,
    now: datetime,
    *,
    progress: Progress | None = None,
) -> Path:
    """Copy the recordings and a `manifest.json` (metadata, SHA-256, their audit entries)
    into a new directory under `dest`; every file is registered as a copy first, so
    retention and withdrawals delete it with the original. All or nothing."""
    person = checked_name(who, "who exports recordings")
    wanted = purpose_named(purpose)
    if not recording_ids:
        raise CallrecError("export: name at least one recording")
    ids = list(dict.fromkeys(recording_ids))
    async with ctx.files:
        rows: list[RecordingRow] = []
        keys: dict[str, str] = {}
        for recording_id in ids:
            row, key = await ctx.get_stored(recording_id)
            refusal = refusal_of(ctx, row, recording_id, wanted)
            if refusal:
                await refuse_logged(ctx, now, person, wanted.value, recording_id, refusal)
                if row is None:
                    raise NotFoundError(f"export refused: {refusal}")
                raise AccessRefused(f"export refused: {refusal}")
            assert row is not None and key is not None
            rows.append(row)
            keys[row.id] = key
        export_id = secrets.token_hex(16)
        base = await asyncio.to_thread(Path(dest).absolute)
        folder = base / f"callrec-export-{export_id}"
        targets = [(row, folder / f"{row.id}{Path(row.path or '').suffix}") for row in rows]
        manifest_path = folder / MANIFEST

        def register(tx: Tx) -> None:
            tx.run(
                "INSERT INTO exports (export_id, dir, purpose, who, created_at, state, "
                "controller_id) VALUES (?, ?, ?, ?, ?, 'writing', ?)",
                (export_id, str(folder), wanted.value, person, ts(now), ctx.controller_id),
            )
            tx.many(
                "INSERT INTO export_files (export_id, recording_id, path, sha256) "
                "VALUES (?, ?, ?, ?)",
                [(export_id, row.id, str(path), row.sha256) for row, path in targets]
                + [(export_id, None, str(folder / name), None) for name in exportfiles.PAPER],
            )
            for row in rows:
                log_access(tx, now, person, wanted.value, row.id, True, f"export {export_id}")

        await ctx.db.write(register, "registering an export")
        try:
            await write_export(
                ctx, export_id, folder, [(row, keys[row.id], path) for row, path in targets],
                manifest_path, wanted, person, now, progress or silent,
            )  # fmt: skip
        except BaseException:
            await abandon_export(ctx, export_id, now)
            raise
        return folder


async def write_export(
    ctx: Context,
    export_id: str,
    folder: Path,
    targets: list[tuple[RecordingRow, str, Path]],
    manifest_path: Path,
    purpose: Purpose,
    who: str,
    now: datetime,
    tell: Progress,
) -> None:
    await in_thread(f"creating {folder}", files.private_dir, folder)
    entries: list[dict[str, Any]] = []
    tell(0, len(targets))
    for copied, (row, key, path) in enumerate(targets, start=1):
        source = await blob_op(f"opening recording {row.id}", ctx.blobs.open(key))
        digest, size = await in_thread(
            f"copying recording {row.id}", files.copy_durably, source, path
        )
        if digest != row.sha256 or size != row.size:
            raise IntegrityError(
                f"recording {row.id} no longer matches its SHA-256 in the ledger: "
                "not exported (run `callrec recordings verify`)"
            )
        tell(copied, len(targets))
        audit = await ctx.audit_entries(subject=row.id)
        audit += await ctx.audit_entries(subject=row.call_id)
        audit.sort(key=lambda entry: entry.seq)
        entries.append(
            {
                "id": row.id,
                "file": path.name,
                "sha256": row.sha256,
                "size": row.size,
                "call_id": row.call_id,
                "line": row.line,
                "legal_basis": row.legal_basis.value,
                "caller": row.caller,
                "dialed": row.dialed,
                "created_at": row.created_at.isoformat(),
                "delete_after": row.delete_after.isoformat(),
                "linked_to": row.linked_to,
                "purposes": sorted(p.value for p in row.purposes),
                "audit": [
                    {
                        "seq": entry.seq,
                        "at": entry.at.isoformat(),
                        "action": entry.action,
                        "subject": entry.subject,
                        "details": entry.details,
                        "prev_hash": entry.prev_hash,
                        "hash": entry.hash,
                    }
                    for entry in audit
                ],
            }
        )
    manifest: dict[str, Any] = {
        "export_id": export_id,
        "created_at": now.isoformat(),
        "purpose": purpose.value,
        "exported_by": who,
        "hash_chain": "sha256(prev_hash + canonical JSON of seq, at, action, subject, "
        "details; sorted keys, no spaces)",
        "recordings": entries,
        "removed": [],  # recordings whose copies left since: retention, withdrawals
    }
    digests = await in_thread(
        f"writing {manifest_path}",
        exportfiles.write_paper,
        folder,
        manifest,
        ctx.audit_keys.signing,
    )

    def done(tx: Tx) -> None:
        tx.many(
            "UPDATE export_files SET sha256 = ? WHERE export_id = ? AND path = ?",
            [(digest, export_id, str(folder / name)) for name, digest in digests.items()],
        )
        tx.run("UPDATE exports SET state = 'done' WHERE export_id = ?", (export_id,))
        ctx.audit(
            tx,
            now,
            "export.created",
            export_id,
            {
                "recordings": ",".join(row.id for row, _, _ in targets),
                "purpose": purpose.value,
                "by": who,
            },
        )

    await ctx.db.write(done, "finishing an export")


async def abandon_export(ctx: Context, export_id: str, now: datetime) -> None:
    """Remove every file of an unfinished export (they are registered before written)."""

    def read(tx: Tx) -> Sequence[Row]:
        return tx.all(
            "SELECT id, path FROM export_files WHERE export_id = ? AND deleted_at IS NULL",
            (export_id,),
        )

    removed: list[int] = []
    folders: set[Path] = set()
    for copy in await ctx.db.read(read, "reading an unfinished export"):
        with contextlib.suppress(OSError):
            await asyncio.to_thread(files.remove, Path(copy["path"]))
            removed.append(int(copy["id"]))
        folders.add(Path(copy["path"]).parent)

    def clear(folder: Path) -> None:
        for leftover in folder.glob(f".*{files.TEMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                files.remove(leftover)
        with contextlib.suppress(OSError):
            folder.rmdir()

    for folder in folders:
        await asyncio.to_thread(clear, folder)

    def body(tx: Tx) -> None:
        mark_copies_in(tx, removed, now)
        ctx.audit(tx, now, "export.abandoned", export_id, {})

    await ctx.db.write(body, "abandoning an export")
