"""One call's story as a timeline: what `callrec calls show` prints, built from the rows and
audit entries the ledger keeps about the call (`storage.ports.CallStory`). Pure: no I/O.

The ledger stores the prompt and the key with the decision they led to, so they carry the
decision's time; the agent is known at the end of the call, so it carries the end's time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from flows.policy import Decision
from storage.ports import AuditEntry, CallStory

_INGESTED = frozenset({"recording.stored", "recording.empty"})
# Audit actions the rows already tell (the timeline shows each fact once).
_TOLD_BY_ROWS = frozenset(
    {
        "decision.committed",
        "recording.stored",
        "recording.empty",
        "recording.deleted",
        "withdrawal.registered",
        "withdrawal.completed",
        "export.created",
    }
)


@dataclass(frozen=True, slots=True)
class Event:
    """One step of a call's story; `details` are the fields of `calls show --json`."""

    at: datetime | None
    event: str
    text: str
    details: dict[str, str] = field(default_factory=dict)


def timeline(story: CallStory) -> list[Event]:
    """The steps of the call, in time order (steps at the same time in the order they
    happen: prompt, key, decision, recording)."""
    call, recording = story.call, story.recording
    events: list[Event] = []
    where = f" on line {call.line}" if call.line else ""
    events.append(
        Event(
            call.started_at,
            "entered",
            f"{call.direction.value} call{where}, uniqueid {call.channel_id}",
            {
                "direction": call.direction.value,
                "line": call.line or "",
                "uniqueid": call.channel_id,
            },
        )
    )
    decided = call.decided_at
    if decided is not None and call.prompt:
        version = (call.prompt_sha256 or "")[:12]
        events.append(
            Event(
                decided,
                "prompt",
                f"prompt {call.prompt} played" + (f", version {version}" if version else ""),
                {"prompt": call.prompt, "prompt_sha256": call.prompt_sha256 or ""},
            )
        )
    if decided is not None and call.digit:
        events.append(Event(decided, "key", f"key {call.digit} pressed", {"digit": call.digit}))
    if decided is not None:
        basis = call.legal_basis.value if call.legal_basis else ""
        events.append(
            Event(
                decided,
                "decision",
                f"decision committed: {call.decision.value} ({basis}; {call.reason or ''})",
                {
                    "decision": call.decision.value,
                    "legal_basis": basis,
                    "reason": call.reason or "",
                },
            )
        )
    if story.callback_of is not None:
        link = story.callback_of
        events.append(
            Event(
                link.linked_at,
                "callback_of",
                f"a callback of missed call {link.missed_call_id[:8]}"
                + (" (overload switch on)" if link.overload else ""),
                {"missed_call_id": link.missed_call_id, "overload": str(link.overload).lower()},
            )
        )
    not_started = any(e.action == "recording.not_started" for e in story.audit)
    if (
        decided is not None
        and call.decision is Decision.RECORD
        and call.recording_file
        and not not_started
    ):
        name = Path(call.recording_file).name
        events.append(
            Event(decided, "recording_started", f"recording started ({name})", {"file": name})
        )
    if call.agent is not None:
        events.append(Event(call.ended_at, "agent", f"agent {call.agent}", {"agent": call.agent}))
    if call.ended_at is not None:
        outcome = call.outcome.value if call.outcome else ""
        events.append(Event(call.ended_at, "ended", f"ended: {outcome}", {"outcome": outcome}))
    for link in story.called_back:
        events.append(
            Event(
                link.linked_at,
                "called_back",
                f"called back by call {link.callback_call_id[:8]}",
                {"callback_call_id": link.callback_call_id},
            )
        )
        if link.answered_at is not None:
            events.append(
                Event(
                    link.answered_at,
                    "callback_answered",
                    f"callback {link.callback_call_id[:8]} answered",
                    {"callback_call_id": link.callback_call_id},
                )
            )
    if recording is not None:
        # Its row carries the decision's time (retention counts from it); the audit entry
        # of its ingest says when the file came into the store.
        stored = [e.at for e in story.audit if e.action in _INGESTED and e.subject == recording.id]
        events.append(
            Event(
                stored[0] if stored else recording.created_at,
                "ingested",
                f"recording {recording.id} stored: {recording.size} bytes, "
                f"sha256 {(recording.sha256 or '')[:12]}, kept until "
                f"{recording.delete_after.date().isoformat()}",
                {
                    "recording_id": recording.id,
                    "size": str(recording.size),
                    "sha256": recording.sha256 or "",
                },
            )
        )
    for withdrawal in story.withdrawals:
        acted = ""
        if recording is not None:
            if recording.id in withdrawal.deleted:
                acted = "deleted"
            for kept, why in withdrawal.kept:
                if kept == recording.id:
                    acted = f"kept: {why}"
        events.append(
            Event(
                withdrawal.registered_at,
                "withdrawal",
                f"withdrawal {withdrawal.withdrawal_id[:8]} registered ({withdrawal.via.value}, "
                f"by {withdrawal.registered_by})" + (f"; this recording {acted}" if acted else ""),
                {
                    "withdrawal_id": withdrawal.withdrawal_id,
                    "via": withdrawal.via.value,
                    "recording": acted,
                },
            )
        )
        if withdrawal.completed_at is not None:
            events.append(
                Event(
                    withdrawal.completed_at,
                    "withdrawal_completed",
                    f"withdrawal {withdrawal.withdrawal_id[:8]} completed",
                    {"withdrawal_id": withdrawal.withdrawal_id},
                )
            )
    exported = {f"export {copy.export_id}" for copy in story.exports}
    for access in story.accesses:
        if access.allowed and access.reason in exported:
            continue  # the export's own step says it
        verdict = "allowed" if access.allowed else f"refused: {access.reason}"
        events.append(
            Event(
                access.at,
                "access",
                f"accessed by {access.who} for {access.purpose}: {verdict}",
                {
                    "who": access.who,
                    "purpose": access.purpose,
                    "allowed": str(access.allowed).lower(),
                    "reason": access.reason,
                },
            )
        )
    for copy in story.exports:
        events.append(
            Event(
                copy.created_at,
                "export",
                f"exported by {copy.who} for {copy.purpose} to {copy.dir}",
                {
                    "export_id": copy.export_id,
                    "who": copy.who,
                    "purpose": copy.purpose,
                    "dir": copy.dir,
                },
            )
        )
        if copy.deleted_at is not None:
            events.append(
                Event(
                    copy.deleted_at,
                    "export_copy_deleted",
                    f"its copy in export {copy.export_id[:8]} deleted",
                    {"export_id": copy.export_id},
                )
            )
    if recording is not None and recording.deleted_at is not None:
        reason = recording.deletion_reason or ""
        events.append(
            Event(
                recording.deleted_at, "deleted", f"recording deleted ({reason})", {"reason": reason}
            )
        )
    events += [_audit_event(entry) for entry in story.audit if entry.action not in _TOLD_BY_ROWS]
    order = {id(event): n for n, event in enumerate(events)}
    return sorted(
        events,
        key=lambda e: (e.at is None, e.at or call.started_at, order[id(e)]),
    )


def _audit_event(entry: AuditEntry) -> Event:
    said = ", ".join(f"{k} {v}" for k, v in sorted(entry.details.items()) if v)
    return Event(
        entry.at,
        entry.action,
        entry.action.replace(".", " ").replace("_", " ") + (f" ({said})" if said else ""),
        dict(entry.details),
    )
