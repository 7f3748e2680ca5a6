"""Searches and one call's story for the command line: calls by caller, time, line,
decision, outcome or agent; every row that tells a call's story; short ids resolved.

Whatever a person types reaches SQL as a parameter only; the statements are fixed text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from flows.errors import CallrecError
from flows.numbers import shown
from flows.outcome import Outcome
from flows.policy import Decision, Direction, LegalBasis
from storage.ports import (
    AccessRecord,
    CallbackLink,
    CallFilter,
    CallListRow,
    CallStory,
    ExportCopy,
    RecordingStatus,
    Row,
    Tx,
)
from storage.reports import access_log
from storage.rows import Context, audit_entry, call_row
from storage.values import opt_ts, parse_ts, ts
from storage.withdrawal import withdrawal_rows

MAX_LIMIT = 100_000
MIN_PREFIX = 6  # hex digits: shorter prefixes match too much to be meant
_HEX = re.compile(r"^[0-9a-f]+$")
# Each kind of id a person may shorten, and the table and column that hold it.
ID_KINDS = {
    "call": ("calls", "call_id"),
    "recording": ("recordings", "id"),
    "withdrawal": ("withdrawals", "id"),
    "export": ("exports", "export_id"),
}
FULL_ID = 32

_LIST_SELECT = (
    "SELECT c.call_id, c.channel_id, c.direction, c.line, c.caller, c.dialed, c.started_at, "
    "c.ended_at, c.decision, c.legal_basis, c.digit, c.outcome, c.agent, c.linked_to, "
    "r.id AS recording_id, r.status AS recording_status "
    "FROM calls c LEFT JOIN recordings r ON r.call_id = c.call_id"
)


async def list_calls(ctx: Context, where: CallFilter) -> list[CallListRow]:
    """The calls that match, newest first, at most `where.limit` of them."""
    if not 1 <= where.limit <= MAX_LIMIT:
        raise CallrecError(f"--limit: {where.limit} is not between 1 and {MAX_LIMIT}")
    # Fixed fragments, one per filter given; the values go as parameters.
    conditions: list[tuple[str, Any]] = [
        (fragment, value)
        for fragment, value in (
            ("c.customer = ?", where.customer),
            ("c.started_at >= ?", None if where.start is None else ts(where.start)),
            ("c.started_at < ?", None if where.end is None else ts(where.end)),
            ("c.line = ?", where.line),
            ("c.decision = ?", None if where.decision is None else Decision(where.decision).value),
            ("c.outcome = ?", None if where.outcome is None else Outcome(where.outcome).value),
            ("c.agent = ?", where.agent),
        )
        if value is not None
    ]
    clause = " AND ".join(fragment for fragment, _ in conditions)
    sql = (
        _LIST_SELECT
        + (f" WHERE {clause}" if clause else "")
        + " ORDER BY c.started_at DESC, c.call_id DESC LIMIT ?"
    )
    params = [value for _, value in conditions] + [where.limit]

    def body(tx: Tx) -> Sequence[Row]:
        return tx.all(sql, params)

    return [_list_row(row) for row in await ctx.db.read(body, "searching calls")]


def _list_row(row: Row) -> CallListRow:
    return CallListRow(
        call_id=row["call_id"],
        uniqueid=row["channel_id"],
        direction=Direction(row["direction"]),
        line=row["line"],
        caller=row["caller"],
        dialed=row["dialed"],
        started_at=parse_ts(row["started_at"]),
        ended_at=opt_ts(row["ended_at"]),
        decision=Decision(row["decision"]),
        legal_basis=None if row["legal_basis"] is None else LegalBasis(row["legal_basis"]),
        digit=row["digit"],
        outcome=None if row["outcome"] is None else Outcome(row["outcome"]),
        agent=row["agent"],
        recording_id=row["recording_id"],
        recording_status=None
        if row["recording_status"] is None
        else RecordingStatus(row["recording_status"]),
        linked_to=row["linked_to"],
    )


_CALLBACKS_SQL = (
    "SELECT b.callback_call_id, b.missed_call_id, b.linked_at, b.overload, a.answered_at "
    "FROM callbacks b LEFT JOIN callback_answers a "
    "ON a.missed_call_id = b.missed_call_id AND a.callback_call_id = b.callback_call_id "
)
_EXPORTS_SQL = (
    "SELECT f.export_id, f.recording_id, f.deleted_at, e.created_at, e.purpose, e.who, "
    "e.dir, e.state FROM export_files f JOIN exports e ON e.export_id = f.export_id "
    "WHERE f.recording_id IS NOT NULL "
)


def _link(row: Row) -> CallbackLink:
    return CallbackLink(
        callback_call_id=row["callback_call_id"],
        missed_call_id=row["missed_call_id"],
        linked_at=parse_ts(row["linked_at"]),
        overload=bool(row["overload"]),
        answered_at=opt_ts(row["answered_at"]),
    )


def _copy(row: Row) -> ExportCopy:
    return ExportCopy(
        export_id=row["export_id"],
        recording_id=row["recording_id"],
        created_at=parse_ts(row["created_at"]),
        purpose=row["purpose"],
        who=row["who"],
        dir=row["dir"],
        state=row["state"],
        deleted_at=opt_ts(row["deleted_at"]),
    )


async def exports(ctx: Context, recording_id: str | None = None) -> list[ExportCopy]:
    """Every copy of a recording (or of all) that an export made, oldest first."""

    def body(tx: Tx) -> Sequence[Row]:
        if recording_id is None:
            return tx.all(_EXPORTS_SQL + "ORDER BY e.created_at, f.id")
        return tx.all(
            _EXPORTS_SQL + "AND f.recording_id = ? ORDER BY e.created_at, f.id", (recording_id,)
        )

    return [_copy(row) for row in await ctx.db.read(body, "reading the export history")]


async def call_story(ctx: Context, call_id: str) -> CallStory | None:
    """The call's row and every row and audit entry about it or its recording."""

    def body(tx: Tx) -> dict[str, Any] | None:
        call = tx.one("SELECT * FROM calls WHERE call_id = ?", (call_id,))
        if call is None:
            return None
        recording = tx.one("SELECT * FROM recordings WHERE call_id = ?", (call_id,))
        recording_id = None if recording is None else recording["id"]
        subjects = [call_id] if recording_id is None else [call_id, recording_id]
        marks = ", ".join("?" * len(subjects))
        return {
            "call": call,
            "recording": recording,
            "callback_of": tx.one(_CALLBACKS_SQL + "WHERE b.callback_call_id = ?", (call_id,)),
            "called_back": tx.all(
                _CALLBACKS_SQL + "WHERE b.missed_call_id = ? ORDER BY b.linked_at", (call_id,)
            ),
            "exports": []
            if recording_id is None
            else tx.all(
                _EXPORTS_SQL + "AND f.recording_id = ? ORDER BY e.created_at, f.id",
                (recording_id,),
            ),
            "audit": tx.all(
                f"SELECT * FROM audit WHERE subject IN ({marks}) ORDER BY seq",  # noqa: S608
                subjects,
            ),
        }

    found = await ctx.db.read(body, "reading a call's story")
    if found is None:
        return None
    call = call_row(found["call"])
    recording = None if found["recording"] is None else ctx.recording(found["recording"])
    # Those that acted on its recording, named its communication, or named its customer
    # after it began (an earlier one covers recordings that existed then, not this one).
    named = ["communication_id = ?"]
    params: list[str] = [call.communication_id or call.call_id]
    if recording is not None:
        named.append(
            "id IN (SELECT withdrawal_id FROM withdrawal_recordings WHERE recording_id = ?)"
        )
        params.append(recording.id)
    if call.customer is not None:
        named.append("(caller = ? AND registered_at >= ?)")
        params += [call.customer, ts(call.started_at)]
    withdrawals = await withdrawal_rows(ctx, "WHERE " + " OR ".join(named), params)
    accesses: list[AccessRecord] = [] if recording is None else await access_log(ctx, recording.id)
    problems: list[str] = []
    audit = [entry for row in found["audit"] if (entry := audit_entry(row, problems)[0])]
    return CallStory(
        call=call,
        recording=recording,
        callback_of=None if found["callback_of"] is None else _link(found["callback_of"]),
        called_back=tuple(_link(row) for row in found["called_back"]),
        withdrawals=tuple(withdrawals),
        accesses=tuple(accesses),
        exports=tuple(_copy(row) for row in found["exports"]),
        audit=tuple(audit),
    )


async def resolve_id(ctx: Context, kind: str, text: str) -> str:
    """The whole id of a `kind` ("call", "recording", "withdrawal", "export") that `text`
    is, or is the start of (at least MIN_PREFIX hex digits); a one-line error for none, or
    for more than one."""
    table, column = ID_KINDS[kind]
    given = text.strip().lower()
    if not MIN_PREFIX <= len(given) <= FULL_ID or not _HEX.match(given):
        raise CallrecError(
            f"no {kind} {shown(text)}: not a {kind} id (its {FULL_ID} hex digits, or the "
            f"first {MIN_PREFIX} or more as tables show them)"
        )
    if len(given) == FULL_ID:
        return given
    # A range on the key ('g' sorts after every hex digit): the primary key's index answers.
    sql = (
        f"SELECT {column} AS id FROM {table} "  # noqa: S608 - names from ID_KINDS only
        f"WHERE {column} >= ? AND {column} < ? ORDER BY {column} LIMIT 2"
    )

    def body(tx: Tx) -> Sequence[Row]:
        return tx.all(sql, (given, given + "g"))

    found = [str(row["id"]) for row in await ctx.db.read(body, f"finding {kind} {given}")]
    if not found:
        raise CallrecError(f"no {kind} id starts with {given}")
    if len(found) > 1:
        raise CallrecError(
            f"{given} is the start of more than one {kind} id ({found[0]}, {found[1]}, ...): "
            "give more digits"
        )
    return found[0]
