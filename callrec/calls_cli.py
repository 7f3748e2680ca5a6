"""`callrec calls list|show`, `recordings show` as text and `recordings access-log`: one
call's story and the search for calls, for an operator and for the data protection officer.

Times follow the one rule (`callrec.times`); ids may be given as the prefix tables show
(`storage.queries.resolve_id`).
"""

from __future__ import annotations

import argparse
from typing import Any

from callrec.cli import EXIT_OK, print_json, table, time_arg, to_json
from callrec.config import Settings
from callrec.story import timeline
from callrec.times import local
from flows.errors import CallrecError
from flows.numbers import normalise
from flows.outcome import Outcome
from flows.policy import Decision
from storage.ports import (
    AccessRecord,
    AuditEntry,
    CallFilter,
    ExportCopy,
    RecordingRow,
    StoreApi,
)
from storage.rows import short_id, short_recording_id

DEFAULT_LIMIT = 100


def add_calls_parser(sub: Any) -> None:
    """`calls list` and `calls show` on the top-level subparsers."""
    calls = sub.add_parser("calls", help="search calls, or show one call's story")
    csub = calls.add_subparsers(dest="action", required=True, metavar="ACTION")
    cl = csub.add_parser("list", help="calls, newest first (refused and unrecorded ones too)")
    cl.add_argument("--caller", help="the customer's number, in any format")
    cl.add_argument("--from", dest="start", help="started at or after (ISO-8601, with offset)")
    cl.add_argument("--to", dest="end", help="started before (ISO-8601, with offset)")
    cl.add_argument("--line", help="the line's name")
    cl.add_argument("--decision", choices=[d.value for d in Decision])
    cl.add_argument("--outcome", choices=[o.value for o in Outcome])
    cl.add_argument("--agent", help="the agent's interface, as `calls show` names it")
    cl.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="at most this many")
    cl.add_argument("--json", action="store_true")
    cs = csub.add_parser("show", help="one call's timeline, from entering to deletion")
    cs.add_argument("id", help="the call's id, or its first 6 or more digits")
    cs.add_argument("--json", action="store_true")


def add_access_log_parser(rsub: Any) -> None:
    """`recordings access-log [ID]` on the recordings' subparsers."""
    ra = rsub.add_parser("access-log", help="who accessed or exported recordings, and why")
    ra.add_argument("id", nargs="?", help="one recording (default: all)")
    ra.add_argument("--json", action="store_true")


async def calls(settings: Settings, args: argparse.Namespace, store: StoreApi) -> int:
    if args.action == "list":
        return await _list(settings, args, store)
    return await _show(settings, args, store)


async def _list(settings: Settings, args: argparse.Namespace, store: StoreApi) -> int:
    where = CallFilter(
        customer=None
        if args.caller is None
        else normalise(args.caller, country_code=settings.policy.country_code),
        start=None if args.start is None else time_arg(args.start, "--from"),
        end=None if args.end is None else time_arg(args.end, "--to"),
        line=args.line,
        decision=None if args.decision is None else Decision(args.decision),
        outcome=None if args.outcome is None else Outcome(args.outcome),
        agent=args.agent,
        limit=args.limit,
    )
    rows = await store.calls(where)
    if args.json:
        print_json(rows)
        return EXIT_OK
    tz = settings.policy.timezone
    print(
        table(
            [
                (
                    short_id(r.call_id),
                    local(r.started_at, tz),
                    r.line or "",
                    r.direction.value,
                    r.caller or "",
                    r.decision.value,
                    r.digit or "",
                    r.outcome.value if r.outcome else "",
                    r.agent or "",
                    "" if r.recording_id is None else short_recording_id(r.recording_id),
                )
                for r in rows
            ],
            [
                "call",
                f"started ({tz})",
                "line",
                "direction",
                "caller",
                "decision",
                "key",
                "outcome",
                "agent",
                "recording",
            ],
        )
    )
    return EXIT_OK


async def _show(settings: Settings, args: argparse.Namespace, store: StoreApi) -> int:
    call_id = await store.resolve_id("call", args.id)
    story = await store.call_story(call_id)
    if story is None:
        raise CallrecError(f"no call {call_id}")
    events = timeline(story)
    if args.json:
        call = to_json(story.call)
        call["uniqueid"] = story.call.channel_id
        print_json(
            {
                "call": call,
                "recording": story.recording,
                "timeline": [
                    {"at": e.at, "event": e.event, "text": e.text, "details": e.details}
                    for e in events
                ],
            }
        )
        return EXIT_OK
    tz = settings.policy.timezone
    c = story.call
    basis = f" ({c.legal_basis.value})" if c.legal_basis else ""
    fields = [
        ("call", c.call_id),
        ("uniqueid", c.channel_id),
        ("direction", c.direction.value),
        ("line", c.line or ""),
        ("caller", c.caller or "anonymous"),
        ("dialed", c.dialed or ""),
        ("decision", f"{c.decision.value}{basis}" + (f", key {c.digit}" if c.digit else "")),
        ("outcome", c.outcome.value if c.outcome else "(not ended)"),
        ("agent", c.agent or ""),
        (
            "recording",
            ""
            if story.recording is None
            else f"{story.recording.id} ({story.recording.status.value})",
        ),
        ("communication", c.communication_id or c.call_id),
    ]
    _print_fields(fields)
    print(f"\ntimeline ({tz}):")
    width = max((len(e.event) for e in events), default=0)
    for e in events:
        print(f"  {local(e.at, tz):<25}  {e.event:<{width}}  {e.text}")
    return EXIT_OK


def _print_fields(fields: list[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in fields)
    for label, value in fields:
        print(f"{label:<{width}}  {value}".rstrip())


async def show_recording(settings: Settings, args: argparse.Namespace, store: StoreApi) -> int:
    """`recordings show ID`: labelled fields, then its audit, accesses and exports."""
    recording_id = await store.resolve_id("recording", args.id)
    row = await store.recording(recording_id)
    if row is None:
        raise CallrecError(f"no recording {recording_id}")
    audit = await store.audit_entries(subject=recording_id)
    accesses = await store.access_log(recording_id)
    copies = await store.exports(recording_id)
    if args.json:
        print_json({"recording": row, "audit": audit, "access_log": accesses, "exports": copies})
        return EXIT_OK
    tz = settings.policy.timezone
    _print_fields(_recording_fields(row, tz))
    print(f"\naudit ({tz}):")
    print(_audit_table(audit, tz) if audit else "  none")
    print(f"\naccess log ({tz}):")
    print(_access_table(accesses, tz) if accesses else "  none")
    print(f"\nexports ({tz}):")
    print(_export_table(copies, tz) if copies else "  none")
    return EXIT_OK


def _recording_fields(row: RecordingRow, tz: str) -> list[tuple[str, str]]:
    deleted = (
        ""
        if row.deleted_at is None
        else f"{local(row.deleted_at, tz)} ({row.deletion_reason or ''})"
    )
    return [
        ("recording", row.id),
        ("call", row.call_id),
        ("line", row.line),
        ("legal basis", row.legal_basis.value),
        ("status", row.status.value),
        ("caller", row.caller or "anonymous"),
        ("dialed", row.dialed or ""),
        ("created", local(row.created_at, tz)),
        ("delete after", local(row.delete_after, tz)),
        ("deleted", deleted),
        ("size", f"{row.size} bytes"),
        ("sha256", row.sha256 or ""),
        ("path", row.path or ""),
        ("purposes", ", ".join(sorted(p.value for p in row.purposes))),
        ("linked to", row.linked_to or ""),
    ]


def _audit_table(audit: list[AuditEntry], tz: str) -> str:
    return table(
        [
            (
                e.seq,
                local(e.at, tz),
                e.action,
                ", ".join(f"{k} {v}" for k, v in sorted(e.details.items()) if v),
            )
            for e in audit
        ],
        ["entry", "at", "action", "details"],
    )


def _access_table(accesses: list[AccessRecord], tz: str) -> str:
    return table(
        [
            (
                local(a.at, tz),
                short_recording_id(a.recording_id),
                a.who,
                a.purpose,
                "allowed" if a.allowed else "refused",
                a.reason,
            )
            for a in accesses
        ],
        ["at", "recording", "who", "purpose", "result", "reason"],
    )


def _export_table(copies: list[ExportCopy], tz: str) -> str:
    return table(
        [
            (
                local(c.created_at, tz),
                short_id(c.export_id),
                short_recording_id(c.recording_id),
                c.who,
                c.purpose,
                c.state,
                "" if c.deleted_at is None else local(c.deleted_at, tz),
                c.dir,
            )
            for c in copies
        ],
        ["at", "export", "recording", "who", "purpose", "state", "copy deleted", "dir"],
    )


async def access_log(settings: Settings, args: argparse.Namespace, store: StoreApi) -> int:
    """`recordings access-log [ID]`: every access (allowed or refused) and every export."""
    recording_id = None if args.id is None else await store.resolve_id("recording", args.id)
    accesses = await store.access_log(recording_id)
    copies = await store.exports(recording_id)
    if args.json:
        print_json({"accesses": accesses, "exports": copies})
        return EXIT_OK
    tz = settings.policy.timezone
    print(f"accesses ({tz}):")
    print(_access_table(accesses, tz) if accesses else "  none")
    print(f"\nexports ({tz}):")
    print(_export_table(copies, tz) if copies else "  none")
    return EXIT_OK
