"""The retention sweep: every recording due is deleted (`storage.deletion`), pipelined
batch by batch; then copies left behind, withdrawals and old calls' numbers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime

from storage.deletion import (
    SWEEP_BATCH,
    Doomed,
    Removed,
    Target,
    list_doomed,
    record_removed,
    remove_files,
    retry_copies,
)
from storage.ports import Progress, SweepReport, Tx
from storage.rows import Context, silent
from storage.values import ts
from storage.withdrawal import enforce_withdrawals


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

    Key = tuple[str, str]  # (delete_after, id) of the last recording of a page

    def page(after: Key) -> Callable[[Tx], tuple[list[str], Key, list[Doomed]]]:
        # Pages in (delete_after, id) order, each after the last: memory stays flat
        # however many are due, and a recording that cannot be deleted is not met again.
        def body(tx: Tx) -> tuple[list[str], Key, list[Doomed]]:
            rows = tx.all(
                "SELECT id, delete_after FROM recordings WHERE status != 'deleted' "
                "AND delete_after <= ? AND (delete_after, id) > (?, ?) "
                "ORDER BY delete_after, id LIMIT ?",
                (when, *after, SWEEP_BATCH),
            )
            last = (rows[-1]["delete_after"], rows[-1]["id"]) if rows else after
            ids = [row["id"] for row in rows]
            return ids, last, ([] if dry_run else list_doomed(tx, ids, when))

        return body

    after: Key = ("", "")
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

    listing = "listing due recordings"
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
            while True:
                ids, after, _ = await ctx.db.read(page(after), "listing due recordings")
                if not ids:
                    return SweepReport(tuple(deleted), True, now, count)
                hand_over(ids)
                tell(count, total)
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
        problems += await retry_copies(ctx, now)
        _, withdrawal_problems = await enforce_withdrawals(ctx, now, everyone=True)
        problems += withdrawal_problems
        await scrub_calls(ctx, now)
    return SweepReport(tuple(deleted), False, now, count, tuple(problems))


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
