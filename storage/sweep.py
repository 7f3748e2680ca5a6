"""The retention sweep: every recording due is deleted (`storage.deletion`), pipelined
batch by batch; then copies left behind, withdrawals and old calls' numbers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from datetime import datetime

from storage.deletion import (
    DOOMED_COLUMNS,
    SWEEP_BATCH,
    Doomed,
    Removed,
    Target,
    doomed_of,
    record_removed,
    remove_files,
    retry_copies,
)
from storage.ports import Progress, Row, SweepReport, Tx
from storage.rows import Context, silent
from storage.values import ts
from storage.withdrawal import enforce_withdrawals

Key = tuple[str, str]  # (delete_after, id) of the last recording of a page
MARK_ATTEMPTS = 3  # pages a sweep tries to mark where another node deleted them meanwhile


async def sweep(
    ctx: Context,
    now: datetime,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    on_deleted: Callable[[Sequence[str]], None] | None = None,
) -> SweepReport:
    """Delete every recording due at `now` (`storage.deletion` says in which order). With
    `on_deleted`, each batch's ids go to it as soon as their deletion is committed (on a dry
    run: as they are listed) and the report keeps none of them, so a sweep's memory does not
    grow with the number of recordings it deletes."""
    when = ts(now)
    tell = progress or silent

    def page(after: Key) -> Callable[[Tx], tuple[list[str], Key, list[Doomed]]]:
        # Pages in (delete_after, id) order, each after the last: memory stays flat
        # however many are due, and a recording that cannot be deleted is not met again.
        due = (
            "WHERE status != 'deleted' AND delete_after <= ? AND (delete_after, id) > (?, ?) "
            "ORDER BY delete_after, id LIMIT ?"
        )
        arguments = (when, *after, SWEEP_BATCH)

        def body(tx: Tx) -> tuple[list[str], Key, list[Doomed]]:
            for _ in range(0 if dry_run else MARK_ATTEMPTS):
                # Listed and marked as being deleted in one statement, before any file goes.
                marked = tx.all(
                    "UPDATE recordings SET deleting_since = ? WHERE status != 'deleted' "  # noqa: S608 - constant SQL
                    f"AND id IN (SELECT id FROM recordings {due}) RETURNING {DOOMED_COLUMNS}",
                    (when, *arguments),
                )
                if marked:
                    rows = sorted(marked, key=lambda row: (row["delete_after"], row["id"]))
                    return [row["id"] for row in rows], key_of(rows), doomed_of(tx, rows)
                # Nothing marked: the end, or a page another node deleted meanwhile (on
                # PostgreSQL the UPDATE skips a row it found deleted once its lock went).
                if not tx.all(f"SELECT id FROM recordings {due}", arguments):  # noqa: S608 - constant SQL
                    return [], after, []
            # A dry run; or pages deleted by others again and again: go on after the
            # listing (what another node's deletion failed on is due at the next sweep).
            listed = tx.all(f"SELECT id, delete_after FROM recordings {due}", arguments)  # noqa: S608 - constant SQL
            return [row["id"] for row in listed], key_of(listed), []

        def key_of(rows: Sequence[Row]) -> Key:
            return (rows[-1]["delete_after"], rows[-1]["id"]) if rows else after

        return body

    deleted: list[str] = []
    count = 0
    problems: list[str] = []

    def hand_over(ids: list[str]) -> None:
        nonlocal count
        count += len(ids)
        if on_deleted is None:
            deleted.extend(ids)
        elif ids:
            on_deleted(ids)

    def tally(outcome: dict[str, str | None]) -> None:
        hand_over([recording_id for recording_id, problem in outcome.items() if not problem])
        problems.extend(problem for problem in outcome.values() if problem)
        tell(count + len(problems), total)

    async with ctx.files:
        total = await ctx.db.read(
            lambda tx: int(
                tx.all(
                    "SELECT COUNT(*) AS n FROM recordings WHERE status != 'deleted' "
                    "AND delete_after <= ?",
                    (when,),
                )[0]["n"]
            ),
            "counting due recordings",
        )
        tell(0, total)
        if dry_run:
            after: Key = ("", "")
            while True:
                ids, after, _ = await ctx.db.read(page(after), "listing due recordings")
                if not ids:
                    return SweepReport(tuple(deleted), True, now, count)
                hand_over(ids)
                tell(count, total)
        # The old calls' numbers go beside the deletions (another connection on
        # PostgreSQL, between the batches' jobs on SQLite): they do not depend on them.
        scrubbing = asyncio.create_task(scrub_calls(ctx, now))
        try:
            problems += await _delete_due(ctx, now, page, tally)
        except BaseException:
            # The first failure is the one to report; the scrub is awaited all the same.
            with contextlib.suppress(Exception):
                await scrubbing
            raise
        await scrubbing
    return SweepReport(tuple(deleted), False, now, count, tuple(problems))


async def _delete_due(
    ctx: Context,
    now: datetime,
    page: Callable[[Key], Callable[[Tx], tuple[list[str], Key, list[Doomed]]]],
    tally: Callable[[dict[str, str | None]], None],
) -> list[str]:
    """Delete what `page` lists, page by page, each batch's outcome to `tally`; then copies
    left behind and withdrawals due. The problems of the last two."""
    listing = "listing due recordings"
    after: Key = ("", "")
    # Pipelined: while batch k's files are removed (a worker thread), batch k-1's
    # rows are committed and batch k+1 is listed (the ledger's thread). Each batch
    # still commits only after its own files are gone and their directories fsync'd.
    # A copy listed for k+1 that batch k removes is found absent, which is fine.
    # Each page is listed and marked as being deleted in one write transaction.
    ids, after, doomed = await ctx.db.write(page(after), listing, serial=False)
    previous: Removed | None = None
    while ids:
        committing = (
            None
            if previous is None
            else asyncio.create_task(record_removed(ctx, previous, now, "retention"))
        )
        following_page = asyncio.create_task(ctx.db.write(page(after), listing, serial=False))
        try:
            removals = await remove_files(
                ctx, doomed, "removing expired recordings", now=now, reason="retention"
            )
        finally:
            # Both ledger jobs are awaited whatever fails, so that none is left behind.
            try:
                if committing is not None:
                    tally(await committing)
            finally:
                following = await following_page
        previous = Removed([Target(i, None) for i in ids], doomed, removals)
        ids, after, doomed = following
    if previous is not None:
        tally(await record_removed(ctx, previous, now, "retention"))
    problems = await retry_copies(ctx, now)
    _, withdrawal_problems = await enforce_withdrawals(ctx, now, everyone=True)
    return problems + withdrawal_problems


async def scrub_calls(ctx: Context, now: datetime) -> None:
    """Calls past the retention period keep their line, times and decision for the
    report, not the numbers: no call outlives its recording as personal data."""

    def body(tx: Tx) -> None:
        tx.run(
            "UPDATE calls SET caller = NULL, dialed = NULL, customer = NULL, "
            "recording_file = NULL, scrubbed = 1 WHERE scrubbed = 0 AND purge_after <= ?",
            (ts(now),),
        )

    await ctx.db.write(body, "removing old calls' numbers")
