"""What the command line asks of the ledger: recordings, the access log, the callbacks
due and the period report."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from flows.outcome import Outcome
from flows.policy import Decision, Direction
from storage.ports import (
    AccessRecord,
    CallbackDue,
    CallbackSummary,
    CallCount,
    RecordingRow,
    Report,
    Row,
    Tx,
)
from storage.rows import Context
from storage.values import opt_ts, parse_ts, ts
from storage.withdrawal import withdrawal_rows

DUE_HORIZON = timedelta(days=1)  # older missed calls are history for `report`, not a to-do list


async def recordings(ctx: Context, *, include_deleted: bool = False) -> list[RecordingRow]:
    where = "" if include_deleted else "WHERE status != 'deleted'"

    def body(tx: Tx) -> Sequence[Row]:
        return tx.all(
            f"SELECT * FROM recordings {where} ORDER BY created_at, id"  # noqa: S608
        )

    return [ctx.recording(row) for row in await ctx.db.read(body, "listing recordings")]


async def access_log(ctx: Context, recording_id: str | None = None) -> list[AccessRecord]:
    def body(tx: Tx) -> Sequence[Row]:
        if recording_id is None:
            return tx.all("SELECT * FROM access_log ORDER BY id")
        return tx.all(
            "SELECT * FROM access_log WHERE recording_id = ? ORDER BY id", (recording_id,)
        )

    return [
        AccessRecord(
            at=parse_ts(row["at"]),
            who=row["who"],
            purpose=row["purpose"],
            recording_id=row["recording_id"],
            allowed=bool(row["allowed"]),
            reason=row["reason"],
        )
        for row in await ctx.db.read(body, "reading the access log")
    ]


async def callbacks_due(ctx: Context, now: datetime) -> list[CallbackDue]:
    window = ctx.policy.callback_window

    def body(tx: Tx) -> Sequence[Row]:
        return tx.all(
            "SELECT c.call_id, c.line, c.customer, c.ended_at FROM calls c "
            "WHERE c.outcome = 'missed' AND c.direction = 'inbound' AND c.line IS NOT NULL "
            "AND c.ended_at >= ? AND c.ended_at <= ? "
            "AND NOT EXISTS (SELECT 1 FROM callback_answers b "
            "  WHERE b.missed_call_id = c.call_id) "
            "AND NOT EXISTS (SELECT 1 FROM calls a WHERE a.customer = c.customer "
            "  AND a.direction = 'inbound' AND a.outcome = 'answered' "
            "  AND a.started_at >= c.ended_at) "
            "ORDER BY c.ended_at, c.call_id",
            (ts(now - DUE_HORIZON), ts(now)),
        )

    due: list[CallbackDue] = []
    for row in await ctx.db.read(body, "listing callbacks due"):
        ended = parse_ts(row["ended_at"])
        due.append(
            CallbackDue(
                call_id=row["call_id"],
                line=row["line"],
                caller=row["customer"],
                ended_at=ended,
                due_by=ended + window,
                overdue=now > ended + window,
            )
        )
    return due


async def report(ctx: Context, start: datetime, end: datetime) -> Report:
    lo, hi = ts(start), ts(end)

    def body(tx: Tx) -> dict[str, Sequence[Row]]:
        return {
            "calls": tx.all(
                "SELECT line, direction, decision, COUNT(*) AS n FROM calls "
                "WHERE started_at >= ? AND started_at < ? "
                "GROUP BY line, direction, decision ORDER BY line, direction, decision",
                (lo, hi),
            ),
            "outcomes": tx.all(
                "SELECT outcome, COUNT(*) AS n FROM calls WHERE started_at >= ? "
                "AND started_at < ? AND direction = 'inbound' GROUP BY outcome",
                (lo, hi),
            ),
            "made": tx.all(
                "SELECT SUM(CASE WHEN size > 0 THEN 1 ELSE 0 END) AS made, "
                "SUM(CASE WHEN size = 0 THEN 1 ELSE 0 END) AS empty FROM recordings "
                "WHERE created_at >= ? AND created_at < ?",
                (lo, hi),
            ),
            "deleted": tx.all(
                "SELECT deletion_reason, COUNT(*) AS n FROM recordings "
                "WHERE status = 'deleted' AND deleted_at >= ? AND deleted_at < ? "
                "GROUP BY deletion_reason ORDER BY deletion_reason",
                (lo, hi),
            ),
            "callbacks": tx.all(
                "SELECT b.callback_call_id, b.missed_call_id, b.window_seconds, b.overload, "
                "b.linked_at, m.line, m.ended_at FROM callbacks b "
                "JOIN calls m ON m.call_id = b.missed_call_id "
                "WHERE b.linked_at >= ? AND b.linked_at < ? ORDER BY b.linked_at",
                (lo, hi),
            ),
        }

    data = await ctx.db.read(body, "building the report")
    outcomes = {row["outcome"]: int(row["n"]) for row in data["outcomes"]}
    made = data["made"][0]
    callbacks: list[CallbackSummary] = []
    for row in data["callbacks"]:
        called = parse_ts(row["linked_at"])
        ended = opt_ts(row["ended_at"])
        callbacks.append(
            CallbackSummary(
                callback_call_id=row["callback_call_id"],
                missed_call_id=row["missed_call_id"],
                line=row["line"],
                missed_ended_at=ended,
                called_back_at=called,
                window=None
                if row["window_seconds"] is None
                else timedelta(seconds=float(row["window_seconds"])),
                overload=bool(row["overload"]),
                within_window=ended is not None and called - ended <= ctx.policy.callback_window,
            )
        )
    withdrawals = await withdrawal_rows(ctx, "WHERE received_at >= ? AND received_at < ?", (lo, hi))
    deleted = tuple((str(row["deletion_reason"]), int(row["n"])) for row in data["deleted"])
    return Report(
        start=start,
        end=end,
        calls=tuple(
            CallCount(
                line=row["line"],
                direction=Direction(row["direction"]),
                decision=Decision(row["decision"]),
                calls=int(row["n"]),
            )
            for row in data["calls"]
        ),
        missed=outcomes.get(Outcome.MISSED.value, 0),
        answered=outcomes.get(Outcome.ANSWERED.value, 0),
        recordings_made=int(made["made"] or 0),
        recordings_empty=int(made["empty"] or 0),
        recordings_deleted=sum(n for _, n in deleted),
        deleted_by_reason=deleted,
        withdrawals=tuple(withdrawals),
        callbacks=tuple(callbacks),
    )
