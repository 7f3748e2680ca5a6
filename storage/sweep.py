"""The retention sweep: every recording due is deleted (`storage.deletion`), pipelined
batch by batch; then copies left behind, withdrawals and old calls' numbers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from storage.deletion import (
    DOOMED_COLUMNS,
    SWEEP_BATCH,
    Doomed,
    Removed,
    Target,
    doom,
    drop_finished_notes,
    record_removed,
    remove_files,
    retry_copies,
)
from storage.ports import Progress, SweepReport, Tx
from storage.rows import Context, silent
from storage.values import ts
from storage.withdrawal import enforce_withdrawals

Key = tuple[str, str]  # (delete_after, id) of the last recording of a page


@dataclass(frozen=True, slots=True)
class Page:
    """A page of due recordings: their ids, the key to list the next page after, and (not
    on a dry run) the recordings to delete and the row that notes them being deleted."""

    ids: list[str]
    after: Key
    doomed: list[Doomed]
    deletion: str | None


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

    def page(after: Key) -> Callable[[Tx], Page]:
        # Pages in (delete_after, id) order, each after the last: memory stays flat
        # however many are due, and a recording that cannot be deleted is not met again.
        # A recording another node is deleting meanwhile may be listed too: its files are
        # found already absent, and only the transaction that claims its row reports it.
        columns = "id, delete_after" if dry_run else DOOMED_COLUMNS

        def body(tx: Tx) -> Page:
            rows = tx.all(
                f"SELECT {columns} FROM recordings WHERE status != 'deleted' "  # noqa: S608 - constant SQL
                "AND delete_after <= ? AND (delete_after, id) > (?, ?) "
                "ORDER BY delete_after, id LIMIT ?",
                (when, *after, SWEEP_BATCH),
            )
            ids = [row["id"] for row in rows]
            key = (rows[-1]["delete_after"], rows[-1]["id"]) if rows else after
            if dry_run:
                return Page(ids, key, [], None)
            # Noted as being deleted in the same transaction, before any file goes.
            deletion, doomed = doom(tx, rows, when)
            return Page(ids, key, doomed, deletion)

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
                listed = await ctx.db.read(page(after), "listing due recordings")
                if not listed.ids:
                    return SweepReport(tuple(deleted), True, now, count)
                after = listed.after
                hand_over(listed.ids)
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
    page: Callable[[Key], Callable[[Tx], Page]],
    tally: Callable[[dict[str, str | None]], None],
) -> list[str]:
    """Delete what `page` lists, page by page, each batch's outcome to `tally`; then copies
    left behind and withdrawals due. The problems of the last two."""
    listing = "listing due recordings"
    # Pipelined: while batch k's files are removed (a worker thread), batch k-1's
    # rows are committed and batch k+1 is listed (the ledger's thread). Each batch
    # still commits only after its own files are gone and their directories fsync'd.
    # A copy listed for k+1 that batch k removes is found absent, which is fine.
    # Each page is listed and noted as being deleted in one write transaction.
    current = await ctx.db.write(page(("", "")), listing, serial=False)
    previous: Removed | None = None
    while current.ids:
        committing = (
            None
            if previous is None
            else asyncio.create_task(record_removed(ctx, previous, now, "retention"))
        )
        following_page = asyncio.create_task(
            ctx.db.write(page(current.after), listing, serial=False)
        )
        try:
            removals = await remove_files(
                ctx, current.doomed, "removing expired recordings", now=now, reason="retention"
            )
        finally:
            # Both ledger jobs are awaited whatever fails, so that none is left behind.
            try:
                if committing is not None:
                    tally(await committing)
            finally:
                following = await following_page
        previous = Removed(
            [Target(i, None) for i in current.ids], current.doomed, removals, current.deletion
        )
        current = following
    if previous is not None:
        tally(await record_removed(ctx, previous, now, "retention"))
    problems = await retry_copies(ctx, now)
    _, withdrawal_problems = await enforce_withdrawals(ctx, now, everyone=True)
    await ctx.db.write(drop_finished_notes, "dropping finished deletions' notes", serial=False)
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
