"""Withdrawals of consent: registered, enforced by rule (`flows.withdrawal` decides what a
withdrawal covers), completed once nothing it covers remains, and listed.

A withdrawal is enforced not only when it is registered: whenever a consent recording of
a caller exists whose decision predates a withdrawal by that caller (an ingest that
finished later, a deletion interrupted by a crash), ingest, sweep and reconcile delete it
and credit it to the withdrawal."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flows.errors import CallrecError, NotFoundError
from flows.numbers import normalise, shown
from flows.policy import LegalBasis
from flows.retention import withdrawal_deadline
from flows.withdrawal import Coverage, Covered, WithdrawalScope, coverage, deleted_for
from storage.deletion import SWEEP_BATCH, Target, delete_batch
from storage.ports import Row, Tx, WithdrawalReport, WithdrawalRow, WithdrawalVia
from storage.rows import CALL_ID, Context, checked_name
from storage.values import opt_ts, parse_ts, ts

_SALES_KEPT = (
    "legal basis ZEKom-2 Art. 214(7), not consent: kept as evidence of the transaction "
    "until {due} UTC; a withdrawal of consent does not apply to it"
)


WITHDRAWAL_COLUMNS = "w.id, w.registered_at, w.caller, w.communication_id"


_WITHDRAWAL_PAIRS_SQL = (
    "SELECT r.id AS recording_id, r.legal_basis, r.customer, r.decided_at, r.delete_after, "
    "c.communication_id AS communication, " + WITHDRAWAL_COLUMNS + " "
    "FROM withdrawals w JOIN recordings r ON r.customer = w.caller "
    "JOIN calls c ON c.call_id = r.call_id WHERE r.status != 'deleted' AND {where} "
    "UNION ALL "
    "SELECT r.id AS recording_id, r.legal_basis, r.customer, r.decided_at, r.delete_after, "
    "c.communication_id AS communication, " + WITHDRAWAL_COLUMNS + " "
    "FROM withdrawals w JOIN calls c ON c.communication_id = w.communication_id "
    "JOIN recordings r ON r.call_id = c.call_id WHERE r.status != 'deleted' AND {where}"
)


_WAITING_SELECT = (
    "SELECT c.legal_basis, c.customer, c.decided_at, c.communication_id AS communication, "
    "c.recording_file, c.ended_at, w.id, w.registered_at, w.caller, w.communication_id "
    "FROM withdrawals w JOIN calls c ON "
)


_WAITING_WHERE = (
    " WHERE w.completed_at IS NULL AND c.decision = 'record' "
    "AND c.recording_file IS NOT NULL AND c.legal_basis IS NOT NULL "
    "AND NOT EXISTS (SELECT 1 FROM recordings r WHERE r.call_id = c.call_id)"
)


_WAITING_FILES_SQL = (
    f"{_WAITING_SELECT}c.customer = w.caller{_WAITING_WHERE} UNION ALL "
    f"{_WAITING_SELECT}c.communication_id = w.communication_id{_WAITING_WHERE}"
)


def scope(row: Row) -> WithdrawalScope:
    return WithdrawalScope(
        withdrawal_id=row["id"],
        registered_at=parse_ts(row["registered_at"]),
        customer=row["caller"] or None,
        communication=row["communication_id"],
    )


def communication_named(tx: Tx, call_id: str | None, recording_id: str | None) -> str:
    """The communication of a call or of a recording's call; NotFoundError if none."""
    if recording_id is not None:
        row = tx.one(
            "SELECT c.communication_id FROM recordings r JOIN calls c ON c.call_id = r.call_id "
            "WHERE r.id = ?",
            (recording_id,),
        )
        what = f"recording {recording_id}"
    else:
        row = tx.one("SELECT communication_id FROM calls WHERE call_id = ?", (call_id,))
        what = f"call {call_id}"
    if row is None or row["communication_id"] is None:
        raise NotFoundError(f"no {what} in the ledger")
    return str(row["communication_id"])


@dataclass(frozen=True, slots=True)
class Coverable:
    """A recording a withdrawal may cover, with every withdrawal that names it."""

    recording_id: str
    delete_after: datetime
    item: Covered
    withdrawals: tuple[WithdrawalScope, ...]


def coverables(rows: Iterable[Row]) -> list[Coverable]:
    items: dict[str, tuple[Row, dict[str, WithdrawalScope]]] = {}
    for row in rows:
        _, scopes = items.setdefault(row["recording_id"], (row, {}))
        scopes[row["id"]] = scope(row)
    return [
        Coverable(
            recording_id=rid,
            delete_after=parse_ts(row["delete_after"]),
            item=Covered(
                legal_basis=LegalBasis(row["legal_basis"]),
                customer=row["customer"],
                communication=row["communication"] or "",
                decided_at=parse_ts(row["decided_at"]),
            ),
            withdrawals=tuple(scopes.values()),
        )
        for rid, (row, scopes) in items.items()
    ]


def coverable(tx: Tx, where: str, params: Sequence[Any]) -> list[Coverable]:
    """Recordings not deleted and the withdrawals that name them, for `where` (a
    condition on `w` or `r` with `?` parameters)."""
    sql = _WITHDRAWAL_PAIRS_SQL.format(where=where)
    return coverables(tx.all(sql, (*params, *params)))


async def enforce_withdrawals(
    ctx: Context,
    now: datetime,
    *,
    recording_id: str | None = None,
    withdrawal_id: str | None = None,
    everyone: bool = False,
    complete: bool = False,
) -> tuple[list[str], list[str]]:
    """Delete every recording a withdrawal covers (`flows.withdrawal`) of one recording,
    of one withdrawal, or of everyone; (deleted ids, problems). Then mark withdrawals
    with nothing left complete."""
    params: tuple[str, ...]
    if everyone:
        where, params = "1 = 1", ()
    elif recording_id is not None:
        where, params = "r.id = ?", (recording_id,)
    elif withdrawal_id is not None:
        where, params = "w.id = ?", (withdrawal_id,)
    else:
        return [], []

    def read(tx: Tx) -> Covering:
        return Covering(coverable(tx, where, params), _any_open(tx))

    covering = await ctx.db.read(read, "applying withdrawals")
    return await apply_withdrawals(ctx, now, covering, complete=everyone or complete)


@dataclass(frozen=True, slots=True)
class Covering:
    """What `apply_withdrawals` acts on: recordings with the withdrawals that name them,
    and whether any withdrawal is still open."""

    found: list[Coverable]
    any_open: bool


def covering_recording(tx: Tx, recording_id: str) -> Covering:
    """`Covering` of one recording, read in the caller's transaction: a serial write that
    stores the recording sees every withdrawal registered before it, and one registered
    after it sees the recording."""
    return Covering(coverable(tx, "r.id = ?", (recording_id,)), _any_open(tx))


async def apply_withdrawals(
    ctx: Context, now: datetime, covering: Covering, *, complete: bool = False
) -> tuple[list[str], list[str]]:
    """Delete what `covering` shows a withdrawal covers; (deleted ids, problems). With
    `complete`, or when something was deleted, mark withdrawals with nothing left complete."""
    found, any_open = covering.found, covering.any_open
    targets: list[Target] = []
    for item in found:
        withdrawal = deleted_for(item.item, item.withdrawals)
        if withdrawal is not None:
            targets.append(Target(item.recording_id, withdrawal.withdrawal_id))
    deleted: list[str] = []
    problems: list[str] = []
    for start in range(0, len(targets), SWEEP_BATCH):
        batch = targets[start : start + SWEEP_BATCH]
        outcome = await delete_batch(ctx, batch, now, "withdrawal")
        for target in batch:
            if target.recording_id not in outcome:
                continue  # deleted by another sweep or withdrawal: in its report
            problem = outcome[target.recording_id]
            if problem is None:
                deleted.append(target.recording_id)
            else:
                problems.append(problem)
    if (deleted or complete) and any_open:
        await complete_withdrawals(ctx, now)
    return deleted, problems


def _any_open(tx: Tx) -> bool:
    return tx.one("SELECT 1 FROM withdrawals WHERE completed_at IS NULL LIMIT 1") is not None


async def withdrawals_waiting_for_files(ctx: Context) -> set[str]:
    """Open withdrawals that cover (`flows.withdrawal`) a call whose recording is not in
    the store yet: the call goes on, or its file waits in the spool."""

    def read(tx: Tx) -> Sequence[Row]:
        return tx.all(_WAITING_FILES_SQL)

    rows = await ctx.db.read(read, "looking for files withdrawals wait for")

    def waiting() -> set[str]:
        found: set[str] = set()
        for row in rows:
            item = Covered(
                legal_basis=LegalBasis(row["legal_basis"]),
                customer=row["customer"],
                communication=row["communication"] or "",
                decided_at=parse_ts(row["decided_at"]),
            )
            named = scope(row)
            if coverage(named, item) is not Coverage.DELETE:
                continue
            if row["ended_at"] is None or os.path.lexists(row["recording_file"]):
                found.add(named.withdrawal_id)
        return found

    return await asyncio.to_thread(waiting)


async def complete_withdrawals(ctx: Context, now: datetime) -> None:
    """A withdrawal is complete once nothing it covers for deletion remains anywhere: no
    recording in the store, and no file of a covered call still to come or waiting in the
    spool (an ingest that failed, a call not yet ended)."""
    # Run after every ingest: with no withdrawal open (nearly always), one read and done.
    if not await ctx.db.read(_any_open, "looking for open withdrawals"):
        return
    waiting = await withdrawals_waiting_for_files(ctx)

    def body(tx: Tx) -> int:
        completed = 0
        open_ids = [
            row["id"] for row in tx.all("SELECT id FROM withdrawals WHERE completed_at IS NULL")
        ]
        if not open_ids:
            return 0
        remaining = {
            w.withdrawal_id
            for item in coverable(tx, "w.completed_at IS NULL", ())
            for w in item.withdrawals
            if coverage(w, item.item) is Coverage.DELETE
        }
        for withdrawal_id in open_ids:
            if withdrawal_id in remaining or withdrawal_id in waiting:
                continue
            tx.run("UPDATE withdrawals SET completed_at = ? WHERE id = ?", (ts(now), withdrawal_id))
            completed += 1
            counts = tx.one(
                "SELECT SUM(CASE WHEN action = 'deleted' THEN 1 ELSE 0 END) AS deleted, "
                "SUM(CASE WHEN action = 'kept' THEN 1 ELSE 0 END) AS kept "
                "FROM withdrawal_recordings WHERE withdrawal_id = ?",
                (withdrawal_id,),
            )
            ctx.audit(
                tx,
                now,
                "withdrawal.completed",
                withdrawal_id,
                {
                    "deleted": str(int(counts["deleted"] or 0)) if counts else "0",
                    "kept": str(int(counts["kept"] or 0)) if counts else "0",
                },
            )
        return completed

    if await ctx.db.write(body, "completing withdrawals"):
        await ctx.checkpoint_after(now, "completing withdrawals")


async def withdraw(
    ctx: Context,
    caller: str | None,
    via: WithdrawalVia,
    received_at: datetime,
    registered_by: str,
    now: datetime,
    *,
    call_id: str | None = None,
    recording_id: str | None = None,
) -> WithdrawalReport:
    if sum(x is not None for x in (caller, call_id, recording_id)) != 1:
        raise CallrecError(
            "a withdrawal names the caller's number, a call or a recording: exactly one"
        )
    number = None if caller is None else normalise(caller, country_code=ctx.policy.country_code)
    if call_id is not None and not CALL_ID.match(call_id):
        raise CallrecError(f"not a call id: {shown(call_id)}")
    if recording_id is not None and not CALL_ID.match(recording_id):
        raise CallrecError(f"not a recording id: {shown(recording_id)}")
    ts(received_at)
    ts(now)
    try:
        channel = WithdrawalVia(via)
    except ValueError:
        raise CallrecError(
            f"a withdrawal arrives by phone or email, not {shown(str(via))}"
        ) from None
    who = checked_name(registered_by, "who registers the withdrawal")
    if received_at > now:
        raise CallrecError(
            f"a withdrawal cannot be received ({ts(received_at)}) after it is "
            f"registered ({ts(now)})"
        )
    deadline = withdrawal_deadline(
        received_at,
        working_days=ctx.policy.withdrawal_working_days,
        tz=ctx.policy.timezone,
        cutoff=ctx.policy.receipt_cutoff,
    )
    withdrawal_id = secrets.token_hex(16)

    def register(tx: Tx) -> None:
        communication = (
            None if number is not None else communication_named(tx, call_id, recording_id)
        )
        tx.run(
            "INSERT INTO withdrawals (id, caller, via, received_at, registered_by, "
            "registered_at, received_on, due_on, deadline, communication_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                withdrawal_id,
                number or "",
                channel.value,
                ts(received_at),
                who,
                ts(now),
                deadline.received_on.isoformat(),
                deadline.due_on.isoformat(),
                ts(deadline.deadline),
                communication,
            ),
        )
        kept = [
            item
            for item in coverable(tx, "w.id = ?", (withdrawal_id,))
            if any(coverage(w, item.item) is Coverage.KEEP for w in item.withdrawals)
        ]
        kept.sort(key=lambda item: item.recording_id)
        tx.many(
            "INSERT INTO withdrawal_recordings (withdrawal_id, recording_id, action, why) "
            "VALUES (?, ?, 'kept', ?)",
            [
                (
                    withdrawal_id,
                    item.recording_id,
                    _SALES_KEPT.format(due=item.delete_after.strftime("%Y-%m-%d %H:%M")),
                )
                for item in kept
            ],
        )
        named = (
            {"caller": ctx.pseudo(number)}
            if number is not None
            else {"communication": communication or ""}
        )
        ctx.audit(
            tx,
            now,
            "withdrawal.registered",
            withdrawal_id,
            {
                **named,
                "via": channel.value,
                "registered_by": who,
                "received_at": ts(received_at),
                "received_on": deadline.received_on.isoformat(),
                "due_on": deadline.due_on.isoformat(),
                "deadline": ts(deadline.deadline),
                "kept": str(len(kept)),
            },
        )

    async with ctx.files:
        await ctx.db.write(register, "registering a withdrawal")
        await enforce_withdrawals(ctx, now, withdrawal_id=withdrawal_id, complete=True)
    row = await withdrawal(ctx, withdrawal_id)
    return WithdrawalReport(
        withdrawal_id=row.withdrawal_id,
        caller=row.caller,
        communication_id=row.communication_id,
        via=row.via,
        received_at=row.received_at,
        received_on=row.received_on,
        due_on=row.due_on,
        deadline=row.deadline,
        deleted=row.deleted,
        kept=row.kept,
        completed_at=row.completed_at,
    )


async def withdrawal(ctx: Context, withdrawal_id: str) -> WithdrawalRow:
    rows = await withdrawal_rows(ctx, "WHERE id = ?", (withdrawal_id,))
    if not rows:
        raise NotFoundError(f"no withdrawal {shown(withdrawal_id)}")
    return rows[0]


async def withdrawal_rows(ctx: Context, where: str, params: Sequence[Any]) -> list[WithdrawalRow]:
    def body(tx: Tx) -> tuple[Sequence[Row], Sequence[Row]]:
        rows = tx.all(
            f"SELECT * FROM withdrawals {where} ORDER BY received_at, id",  # noqa: S608
            params,
        )
        items = tx.all(
            "SELECT i.withdrawal_id, i.recording_id, i.action, i.why FROM "
            "withdrawal_recordings i JOIN recordings r ON r.id = i.recording_id "
            "ORDER BY r.created_at, r.id"
        )
        return rows, items

    rows, items = await ctx.db.read(body, "reading withdrawals")
    deleted: dict[str, list[str]] = {}
    kept: dict[str, list[tuple[str, str]]] = {}
    for item in items:
        if item["action"] == "deleted":
            deleted.setdefault(item["withdrawal_id"], []).append(item["recording_id"])
        else:
            kept.setdefault(item["withdrawal_id"], []).append((item["recording_id"], item["why"]))
    return [
        WithdrawalRow(
            withdrawal_id=row["id"],
            caller=row["caller"] or None,
            communication_id=row["communication_id"],
            via=WithdrawalVia(row["via"]),
            received_at=parse_ts(row["received_at"]),
            registered_by=row["registered_by"],
            registered_at=parse_ts(row["registered_at"]),
            received_on=row["received_on"],
            due_on=row["due_on"],
            deadline=parse_ts(row["deadline"]),
            completed_at=opt_ts(row["completed_at"]),
            deleted=tuple(deleted.get(row["id"], ())),
            kept=tuple(kept.get(row["id"], ())),
        )
        for row in rows
    ]


async def withdrawals(ctx: Context) -> list[WithdrawalRow]:
    return await withdrawal_rows(ctx, "", ())
