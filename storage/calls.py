"""The live call's ledger: a call's start, its committed decision, its end, the callback
look-up and the overload switch (`storage.ports.Ledger`). Fast and small: one transaction
each, no file work except judging a call whose end was never reported."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from flows.communication import MAX_CANDIDATES, MissedCandidate
from flows.errors import NotFoundError, StorageError
from flows.numbers import try_normalise
from flows.outcome import Outcome, agent_name, outcome_after_restart
from flows.policy import Decision, Direction, LegalBasis
from flows.retention import delete_after, keeping_by_name
from storage import files
from storage.ports import CallbackCandidates, CallRow, CallStart, DecisionRecord, Row, Tx
from storage.rows import (
    CALL_ID,
    Context,
    call_row,
    check_call_id,
    checked_name,
    in_thread,
    purposes_text,
)
from storage.values import opt_ts, parse_ts, ts
from storage.withdrawal import WITHDRAWAL_COLUMNS, scope

SERVING = "store.serving"  # the audit action that marks a store of real calls
STORE_SUBJECT = "store"
SERVING_SQL = "SELECT at FROM audit WHERE subject = ? AND action = ? ORDER BY seq LIMIT 1"

# `withdrawn`: a withdrawal names the customer or this call's communication, so the look-up
# reads the withdrawals (a second statement, a second wait on the ledger) only then.
MISSED_CANDIDATES_SQL = (
    "SELECT c.call_id, c.line, c.legal_basis, c.decision, c.decided_at, c.ended_at, "
    "(EXISTS (SELECT 1 FROM withdrawals w WHERE w.caller = c.customer) "
    "OR EXISTS (SELECT 1 FROM withdrawals w WHERE w.communication_id = c.call_id)) AS withdrawn, "
    "EXISTS (SELECT 1 FROM callback_answers a WHERE a.missed_call_id = c.call_id) AS answered "
    "FROM calls c "
    "WHERE c.customer = ? AND c.legal_basis = ? AND c.outcome = 'missed' "
    "AND c.direction = 'inbound' AND c.ended_at >= ? AND c.line IS NOT NULL "
    "ORDER BY c.ended_at DESC LIMIT ?"
)


# Seconds a lazy call start may wait to share the commit of the ledger's next write: the
# call's own decision or end, seconds later, carries it if nothing else does first.
START_WAIT = 0.25
# ... and a lazy call end, the commit of its recording's ingest, which follows once
# MixMonitor has closed the file (`agi.collector`).
END_WAIT = 0.25


async def start_call(ctx: Context, call: CallStart, *, lazy: bool = False) -> None:
    body = call_inserter(ctx, call)
    within = START_WAIT if lazy else None
    await ctx.db.write(body, f"starting call {call.call_id}", serial=False, within=within)


def call_inserter(ctx: Context, call: CallStart) -> Callable[[Tx], None]:
    """A transaction body that records the call's start, once: again with the same channel
    it does nothing, with another it is refused."""
    check_call_id(call.call_id)
    if call.parent_call_id is not None:
        check_call_id(call.parent_call_id)
    code = ctx.policy.country_code
    caller = try_normalise(call.caller, country_code=code)
    dialed = try_normalise(call.dialed, country_code=code)
    direction = Direction(call.direction)
    customer = try_normalise(call.customer, country_code=code)
    communication = call.communication_id or call.call_id
    check_call_id(communication)
    purge = call.purge_after
    if purge is None:
        line = ctx.policy.line_named(call.line or "")
        months = ctx.policy.retention_months if line is None else line.retention_months
        purge = delete_after(call.started_at, months=months, tz=ctx.policy.timezone)

    # The calls of one controller are its own (`controller_id`): their rows need no
    # ledger-wide order, only the audit chain's head does (`LedgerDb.append_audit`).
    def body(tx: Tx) -> None:
        added = tx.run(
            "INSERT INTO calls (call_id, channel_id, direction, line, caller, dialed, "
            "customer, started_at, purge_after, parent_call_id, communication_id, "
            "controller_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (call_id) DO NOTHING",
            (
                call.call_id,
                str(call.channel_id),
                direction.value,
                call.line,
                caller,
                dialed,
                customer,
                ts(call.started_at),
                ts(purge),
                call.parent_call_id,
                communication,
                ctx.controller_id,
            ),
        )
        if added == 0:
            old = tx.one("SELECT channel_id FROM calls WHERE call_id = ?", (call.call_id,))
            if old is None or old["channel_id"] != str(call.channel_id):
                raise StorageError("call id already used by another channel", call_id=call.call_id)

    return body


async def commit_decision(
    ctx: Context, record: DecisionRecord, start: CallStart | None = None
) -> None:
    check_call_id(record.call_id)
    if start is not None and start.call_id != record.call_id:
        raise StorageError("the start given is another call's", call_id=record.call_id)
    # A start still on its way (lazy, or on another connection) is written here first, so
    # the decision never waits for it nor fails for its lag.
    starting = None if start is None else call_inserter(ctx, start)
    if record.linked_to is not None:
        check_call_id(record.linked_to)
    if record.communication_id is not None:
        check_call_id(record.communication_id)
    decision = Decision(record.decision)
    basis = LegalBasis(record.legal_basis)
    when = ts(record.decided_at)
    if record.recording_file is not None and decision is not Decision.RECORD:
        raise StorageError(
            "no committed decision to record: no recording file", call_id=record.call_id
        )

    def body(tx: Tx) -> None:
        if starting is not None:
            starting(tx)
        row = tx.one(
            "SELECT decision, decided_at, legal_basis, customer, line FROM calls WHERE call_id = ?",
            (record.call_id,),
        )
        if row is None:
            raise NotFoundError("no such call", call_id=record.call_id)
        if row["decided_at"] is not None:
            if row["decision"] == decision.value and row["legal_basis"] == basis.value:
                return  # the same decision again: already durable
            raise StorageError(
                f"a decision ({row['decision']}) is already committed; it is final",
                call_id=record.call_id,
            )
        # The conversation's line decides for the call from here on: a linked callback
        # takes the missed call's line, and its numbers go with the recording it belongs to.
        keep = record.keep or keeping_by_name(ctx.policy, row["line"], basis, record.decided_at)
        # One statement: the communication and the recording file change only when given.
        tx.run(
            "UPDATE calls SET decision = ?, decided_at = ?, digit = ?, legal_basis = ?, "
            "prompt = ?, prompt_sha256 = ?, reason = ?, linked_to = ?, line = ?, "
            "purge_after = ?, purposes = ?, "
            "communication_id = COALESCE(?, communication_id), "
            "recording_file = COALESCE(?, recording_file) WHERE call_id = ?",
            (
                decision.value,
                when,
                record.digit,
                basis.value,
                record.prompt,
                record.prompt_sha256,
                record.reason,
                record.linked_to,
                keep.line or row["line"],
                ts(keep.delete_after),
                purposes_text(keep.purposes),
                record.communication_id,
                record.recording_file,
                record.call_id,
            ),
        )
        details = {
            "decision": decision.value,
            "legal_basis": basis.value,
            "digit": record.digit or "",
            "prompt": record.prompt or "",
            "prompt_sha256": record.prompt_sha256 or "",
            "customer": ctx.pseudo(row["customer"]),
            "line": keep.line or row["line"] or "",
            "delete_after": ts(keep.delete_after),
        }
        if keep.line and row["line"] is not None and keep.line != row["line"]:
            details["call_line"] = row["line"]  # the line the endpoint named
        if record.linked_to is not None:
            missed = tx.one("SELECT 1 FROM calls WHERE call_id = ?", (record.linked_to,))
            if missed is None:
                raise NotFoundError(
                    f"the missed call {record.linked_to} is not in the ledger",
                    call_id=record.call_id,
                )
            tx.run(
                "INSERT INTO callbacks (callback_call_id, missed_call_id, window_seconds, "
                "overload, linked_at) VALUES (?, ?, ?, ?, ?)",
                (
                    record.call_id,
                    record.linked_to,
                    None if record.window is None else record.window.total_seconds(),
                    int(record.overload),
                    when,
                ),
            )
            details["linked_to"] = record.linked_to
            details["overload"] = "on" if record.overload else "off"
        ctx.audit(tx, record.decided_at, "decision.committed", record.call_id, details)

    await ctx.db.write(body, f"committing the decision of call {record.call_id}", serial=False)


async def set_recording_file(ctx: Context, call_id: str, path: str) -> None:
    check_call_id(call_id)

    def body(tx: Tx) -> None:
        row = tx.one("SELECT decision FROM calls WHERE call_id = ?", (call_id,))
        if row is None:
            raise NotFoundError("no such call", call_id=call_id)
        if row["decision"] != Decision.RECORD.value:
            raise StorageError(
                "no committed decision to record: no recording file", call_id=call_id
            )
        tx.run("UPDATE calls SET recording_file = ? WHERE call_id = ?", (str(path), call_id))

    await ctx.db.write(body, f"noting the recording file of call {call_id}", serial=False)


async def mark_unrecorded(ctx: Context, call_id: str, reason: str, at: datetime) -> bool:
    """A committed decision to record that could not be carried out, and why: once per call,
    and never for a call whose recording is stored or being stored. Whether it was marked."""
    check_call_id(call_id)

    def body(tx: Tx) -> bool:
        if tx.one("SELECT 1 FROM calls WHERE call_id = ?", (call_id,)) is None:
            raise NotFoundError("no such call", call_id=call_id)
        if (
            tx.one("SELECT 1 FROM recordings WHERE call_id = ?", (call_id,)) is not None
            or tx.one("SELECT 1 FROM pending_ingests WHERE call_id = ?", (call_id,)) is not None
            or tx.one(
                "SELECT 1 FROM audit WHERE subject = ? AND action = ?",
                (call_id, "recording.not_started"),
            )
            is not None
        ):
            return False
        ctx.audit(tx, at, "recording.not_started", call_id, {"reason": reason})
        return True

    return await ctx.db.write(body, f"marking call {call_id} unrecorded", serial=False)


async def end_call(
    ctx: Context,
    call_id: str,
    ended_at: datetime,
    outcome: Outcome,
    agent: str | None = None,
    *,
    lazy: bool = False,
) -> CallRow:
    check_call_id(call_id)
    result = Outcome(outcome)
    when = ts(ended_at)
    who = None if agent is None else agent_name(agent)

    # The row comes back from the same transaction: the recording's collection goes on from
    # it without a read of its own.
    def body(tx: Tx) -> Row:
        changed = tx.run(
            "UPDATE calls SET ended_at = ?, outcome = ?, agent = ? "
            "WHERE call_id = ? AND ended_at IS NULL",
            (when, result.value, who, call_id),
        )
        row = tx.one("SELECT * FROM calls WHERE call_id = ?", (call_id,))
        if row is None:
            raise NotFoundError("no such call", call_id=call_id)
        if changed and result is Outcome.ANSWERED:
            # A callback the customer picked up answers its missed call, once: the
            # first answered attempt is the one on record.
            tx.run(
                "INSERT INTO callback_answers (missed_call_id, callback_call_id, answered_at) "
                "SELECT missed_call_id, callback_call_id, ? FROM callbacks "
                "WHERE callback_call_id = ? ON CONFLICT DO NOTHING",
                (when, call_id),
            )
        return row

    within = END_WAIT if lazy else None
    return call_row(await ctx.db.write(body, f"ending call {call_id}", serial=False, within=within))


async def close_stale_calls(ctx: Context, started_before: datetime, now: datetime) -> list[str]:
    """End every open call started before `started_before`: Asterisk never reported its
    end, and none lasts that long. Judged as a call that ended unseen
    (`flows.outcome.outcome_after_restart`), audited as `call.closed_unreported`.
    Returns their call ids, so their files can be collected."""
    cutoff = ts(started_before)
    when = ts(now)

    def read(tx: Tx) -> Sequence[Row]:
        return tx.all(
            # `recorded`: the store took its file with audio (its end was not stored then).
            "SELECT c.call_id, c.decided_at, c.recording_file, "
            "EXISTS (SELECT 1 FROM recordings r WHERE r.call_id = c.call_id AND r.size > 0) "
            "AS recorded FROM calls c "
            "WHERE c.ended_at IS NULL AND c.started_at < ? "
            "AND (c.controller_id = ? OR c.controller_id IS NULL) "
            "ORDER BY c.started_at",
            (cutoff, ctx.controller_id),
        )

    rows = await ctx.db.read(read, "listing calls with no end")
    if not rows:
        return []

    def judge() -> list[tuple[str, Outcome]]:
        judged = []
        for row in rows:
            file = row["recording_file"]
            audio = bool(row["recorded"])  # its file ingested already (its end not stored)
            if file is not None and not audio:
                with contextlib.suppress(OSError):
                    audio = not files.header_only(Path(file))
            outcome = outcome_after_restart(
                decided=row["decided_at"] is not None, recorded_audio=audio
            )
            judged.append((str(row["call_id"]), outcome))
        return judged

    judged = await in_thread("judging calls with no end", judge)
    reason = f"no end reported by {cutoff}: closed as longer than any call"

    def body(tx: Tx) -> list[str]:
        closed = []
        for call_id, outcome in judged:
            changed = tx.run(
                "UPDATE calls SET ended_at = ?, outcome = ?, reason = ? "
                "WHERE call_id = ? AND ended_at IS NULL",
                (when, outcome.value, reason, call_id),
            )
            if changed:
                closed.append(call_id)
                ctx.audit(
                    tx,
                    now,
                    "call.closed_unreported",
                    call_id,
                    {"outcome": outcome.value, "started_before": cutoff},
                )
        return closed

    return await ctx.db.write(body, "closing calls with no end")


async def callback_candidates(
    ctx: Context, customer: str, since: datetime, legal_basis: LegalBasis
) -> CallbackCandidates:
    number = try_normalise(customer, country_code=ctx.policy.country_code)
    if number is None:
        return CallbackCandidates((), ())
    basis = LegalBasis(legal_basis)
    after = ts(since)

    def body(tx: Tx) -> tuple[Sequence[Row], Sequence[Row]]:
        calls = tx.all(MISSED_CANDIDATES_SQL, (number, basis.value, after, MAX_CANDIDATES))
        if not any(row["withdrawn"] for row in calls):
            return calls, []  # what the query below would find: nothing
        ids = [row["call_id"] for row in calls]
        marks = ", ".join("?" * len(ids))
        withdrawals = tx.all(
            f"SELECT {WITHDRAWAL_COLUMNS} FROM withdrawals w WHERE w.caller = ? "  # noqa: S608
            f"UNION SELECT {WITHDRAWAL_COLUMNS} FROM withdrawals w "
            f"WHERE w.communication_id IN ({marks})",
            (number, *ids),
        )
        return calls, withdrawals

    calls, withdrawals = await ctx.db.read(body, "looking up missed calls")
    return CallbackCandidates(
        calls=tuple(
            MissedCandidate(
                call_id=row["call_id"],
                line=row["line"],
                legal_basis=LegalBasis(row["legal_basis"]),
                decision=Decision(row["decision"]),
                decided_at=opt_ts(row["decided_at"]),
                ended_at=parse_ts(row["ended_at"]),
                answered_by_callback=bool(row["answered"]),
            )
            for row in calls
        ),
        withdrawals=tuple(scope(row) for row in withdrawals),
    )


async def overload(ctx: Context) -> bool:
    def body(tx: Tx) -> Row | None:
        return tx.one("SELECT on_ FROM overload_switch ORDER BY seq DESC LIMIT 1")

    row = await ctx.db.read(body, "reading the overload switch")
    return row is not None and bool(row["on_"])


async def set_overload(ctx: Context, on: bool, by: str, now: datetime) -> None:
    who = checked_name(by, "the operator turning the overload switch")

    def body(tx: Tx) -> None:
        tx.run(
            'INSERT INTO overload_switch (at, on_, "by") VALUES (?, ?, ?)',
            (ts(now), int(on), who),
        )
        ctx.audit(tx, now, "overload.on" if on else "overload.off", "overload", {"by": who})

    await ctx.db.write(body, "turning the overload switch")


async def mark_serving(ctx: Context, now: datetime, by: str) -> None:
    """Note, once and in the audit chain, that this store serves real calls (`serve`
    and `fastagi` call this at start). From then on commands write to it only at the
    machine's time: a store of a demo or a replay is never marked."""

    def body(tx: Tx) -> None:
        if tx.one(SERVING_SQL, (STORE_SUBJECT, SERVING)) is None:
            ctx.audit(tx, now, SERVING, STORE_SUBJECT, {"by": by})

    await ctx.db.write(body, "marking the store as serving calls")


async def serving_since(ctx: Context) -> datetime | None:
    """When this store began to serve real calls; None for a demo or replay store."""

    def body(tx: Tx) -> Row | None:
        return tx.one(SERVING_SQL, (STORE_SUBJECT, SERVING))

    row = await ctx.db.read(body, "reading whether the store serves calls")
    return None if row is None else parse_ts(row["at"])


async def get_call(ctx: Context, call_id: str) -> CallRow | None:
    def body(tx: Tx) -> Row | None:
        return tx.one("SELECT * FROM calls WHERE call_id = ?", (call_id,))

    row = await ctx.db.read(body, "reading a call")
    return None if row is None else call_row(row)


async def open_calls(ctx: Context) -> list[CallRow]:
    def body(tx: Tx) -> Sequence[Row]:
        return tx.all(
            "SELECT c.* FROM calls c WHERE c.ended_at IS NULL "
            "AND (c.controller_id = ? OR c.controller_id IS NULL) "
            "ORDER BY c.started_at, c.call_id",
            (ctx.controller_id,),
        )

    return [call_row(row) for row in await ctx.db.read(body, "listing open calls")]


async def has_stored_audio(ctx: Context, call_id: str) -> bool:
    """Whether the store took the call's recording with audio (stored, or stored and
    deleted since): an open call whose end was not stored may have had its file ingested,
    and is then judged by that, its spool file being gone."""
    check_call_id(call_id)

    def body(tx: Tx) -> bool:
        found = tx.one("SELECT 1 FROM recordings WHERE call_id = ? AND size > 0", (call_id,))
        return found is not None

    return await ctx.db.read(body, "reading whether a call was recorded")


async def call_of_spool_file(ctx: Context, path: Path) -> Row | None:
    def body(tx: Tx) -> Row | None:
        row = tx.one("SELECT * FROM calls WHERE recording_file = ?", (str(path),))
        if row is None and CALL_ID.match(path.stem):
            row = tx.one("SELECT * FROM calls WHERE call_id = ?", (path.stem,))
        return row

    return await ctx.db.read(body, "finding a spool file's call")
