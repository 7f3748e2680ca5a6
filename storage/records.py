"""The records the store hands out and takes in (`storage.ports` names them too).

All datetimes are timezone-aware UTC. Phone numbers are E.164 or None (anonymous).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from flows.communication import MissedCandidate
from flows.outcome import Outcome
from flows.policy import Decision, Direction, LegalBasis, Purpose
from flows.retention import Keeping
from flows.withdrawal import WithdrawalScope


class RecordingStatus(enum.StrEnum):
    STORED = "stored"  # audio in the store, hash recorded
    EMPTY = "empty"  # MixMonitor wrote only a header (nobody was bridged): no audio kept
    DELETED = "deleted"  # retention or withdrawal removed it; only the audit entry remains
    MISSING = "missing"  # the ledger expects a file that is not there (flagged by reconcile)


class ClaimState(enum.StrEnum):
    """Whether a controller still holds its id on the ledger (`LedgerDb.check_claim`)."""

    HELD = "held"  # as since the start
    RETAKEN = "retaken"  # it was lost (its session ended) and is held again now
    LOST = "lost"  # lost, and not held again yet: the ledger does not answer (retrying)


@dataclass(frozen=True, slots=True)
class ClaimCheck:
    state: ClaimState
    detail: str = ""  # what happened, one line, for the log (HELD: "")


class WithdrawalVia(enum.StrEnum):
    PHONE = "phone"  # registered by an agent during a call to the center
    EMAIL = "email"  # registered by the DPO from an e-mail


@dataclass(frozen=True, slots=True)
class CallStart:
    call_id: str  # ours: 32 lowercase hex digits, safe in paths and variables
    channel_id: str  # Asterisk's unique id (never used in a path)
    direction: Direction
    line: str | None  # None: the dialed number belongs to no line
    caller: str | None  # E.164 of the customer, None when anonymous or unusable
    dialed: str | None  # E.164 of the line number dialed (inbound) or the customer (callback)
    started_at: datetime
    parent_call_id: str | None = None  # callee leg: the callback it belongs to
    customer: str | None = None  # E.164 of the customer (`flows.communication.customer_of`)
    communication_id: str | None = None  # the communication it belongs to; None: its own
    # When its numbers go unless its decision moves the date (`flows.retention`
    # .numbers_deleted_after); None: its line's retention in the store's policy.
    purge_after: datetime | None = None


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    call_id: str
    decision: Decision
    legal_basis: LegalBasis
    digit: str | None
    reason: str
    prompt: str | None  # prompt id the decision was given to
    prompt_sha256: str | None  # the version of that prompt's audio (prompts/manifest.json)
    decided_at: datetime
    linked_to: str | None = None  # callback: the missed call it answers
    window: timedelta | None = None  # callback: the window used to find it
    overload: bool = False  # callback: the operator's overload switch was on
    communication_id: str | None = None  # a linked callback joins the missed call's
    # The conversation's line, its purposes and the date its data goes (the recording and
    # this call's numbers alike), as the flow decided them; None: the call's line in the
    # store's policy (`flows.retention.keeping_by_name`).
    keep: Keeping | None = None
    # The file MixMonitor will be told to write (a "record" decision only): remembered in
    # the decision's own transaction, so that the decision path waits for one commit.
    recording_file: str | None = None


@dataclass(frozen=True, slots=True)
class CallbackCandidates:
    """What a callback look-up needs: the customer's missed calls of one legal basis since a
    time (newest first, at most `flows.communication.MAX_CANDIDATES`), and the withdrawals
    that name that customer or one of those calls' communications."""

    calls: tuple[MissedCandidate, ...]
    withdrawals: tuple[WithdrawalScope, ...]


@dataclass(frozen=True, slots=True)
class CallRow:
    call_id: str
    channel_id: str
    direction: Direction
    line: str | None
    caller: str | None
    dialed: str | None
    started_at: datetime
    ended_at: datetime | None
    outcome: Outcome | None
    decision: Decision
    decided_at: datetime | None
    digit: str | None
    legal_basis: LegalBasis | None
    prompt: str | None
    prompt_sha256: str | None
    reason: str | None
    linked_to: str | None
    parent_call_id: str | None
    recording_file: str | None  # the path MixMonitor was told to write (spool)
    customer: str | None = None
    communication_id: str | None = None
    controller_id: str | None = None  # the controller it belongs to (None: an older ledger's)
    agent: str | None = None  # who took it (interface or channel name); None: nobody seen


@dataclass(frozen=True, slots=True)
class RecordingRow:
    """One recording; the fields of `callrec recordings list --json` (DESIGN.md)."""

    id: str
    call_id: str
    line: str
    legal_basis: LegalBasis
    caller: str | None
    dialed: str | None
    created_at: datetime
    delete_after: datetime
    sha256: str | None
    path: str | None  # absolute path in the store; None once deleted or when empty
    linked_to: str | None
    purposes: frozenset[Purpose]
    size: int
    status: RecordingStatus
    deleted_at: datetime | None = None
    deletion_reason: str | None = None


@dataclass(frozen=True, slots=True)
class SweepReport:
    # Recording ids deleted (or, on a dry run, due); empty when the sweep handed them to
    # its `on_deleted` as it went instead (then only `count` says how many).
    deleted: tuple[str, ...]
    dry_run: bool
    finished_at: datetime
    count: int  # recordings deleted (or due)
    problems: tuple[str, ...] = ()  # a file or copy that could not be removed (retried next run)


@dataclass(frozen=True, slots=True)
class WithdrawalReport:
    withdrawal_id: str
    caller: str | None  # None: the withdrawal names one communication
    communication_id: str | None
    via: WithdrawalVia
    received_at: datetime
    received_on: str  # ISO date the withdrawal counts as received (flows.retention)
    due_on: str  # ISO date of the last working day for the deletion
    deadline: datetime
    deleted: tuple[str, ...]  # consent recordings deleted
    kept: tuple[tuple[str, str], ...]  # (recording id, why) kept: sales recordings
    completed_at: datetime | None


@dataclass(frozen=True, slots=True)
class CheckpointStatus:
    """The signed checkpoints of the audit chain, as `verify` found them."""

    path: str  # the checkpoint file
    checkpoints: int  # lines signed by this store's key
    bad: int  # lines that are not (unreadable, another key, a signature that fails)
    seq: int | None  # the latest checkpoint (of the longest chain): entries it covers
    head: str | None  # ... the hash of its last entry
    at: datetime | None  # ... when it was taken
    signature_ok: bool  # every line of the file is a checkpoint signed by this store
    covered: bool  # the chain still holds the latest checkpoint's entry with its hash
    entries_after: int  # entries appended since the latest checkpoint


@dataclass(frozen=True, slots=True)
class VerifyReport:
    checked: int
    problems: tuple[str, ...]  # one line each; empty means everything matches
    checkpoint: CheckpointStatus | None = None
    # Other work under way meanwhile (an ingest, an export, a deletion), one line each: no
    # problem, until it has been under way for too long (`storage.verify.IN_FLIGHT_FOR`).
    in_flight: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    ingested: tuple[str, ...] = ()  # call ids whose finished file was ingested now
    deleted_unowned: tuple[str, ...] = ()  # files with no committed RECORD decision: deleted
    flagged: tuple[str, ...] = ()  # human-readable lines for what needs a look
    failed_closed: tuple[str, ...] = ()  # calls without a decision marked as not recorded
    resumed: tuple[str, ...] = ()  # half-done ingests, deletions and exports finished now


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    at: datetime
    action: str  # e.g. "recording.deleted", "withdrawal.registered"
    subject: str  # a recording/call/withdrawal id; never a phone number
    details: dict[str, str] = field(default_factory=dict)  # pseudonymised, no personal data
    prev_hash: str = ""
    hash: str = ""


# Told (items done, items in all) as a long operation goes: the command line draws a bar.
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class CallbackDue:
    """A missed call nobody has called back yet (for the staff's `callrec callbacks`)."""

    call_id: str
    line: str
    caller: str | None  # E.164; None when the caller was anonymous (cannot be called back)
    ended_at: datetime
    due_by: datetime  # ended_at + the policy's callback window
    overdue: bool


@dataclass(frozen=True, slots=True)
class WithdrawalRow:
    withdrawal_id: str
    caller: str | None  # E.164; None when the withdrawal names one communication
    via: WithdrawalVia
    received_at: datetime
    registered_by: str
    registered_at: datetime
    received_on: str
    due_on: str
    deadline: datetime
    completed_at: datetime | None
    deleted: tuple[str, ...]
    kept: tuple[tuple[str, str], ...]
    communication_id: str | None = None  # set when the withdrawal names one communication

    @property
    def met_deadline(self) -> bool | None:
        """None while not completed; then whether it completed by the deadline."""
        return None if self.completed_at is None else self.completed_at <= self.deadline


@dataclass(frozen=True, slots=True)
class AccessRecord:
    at: datetime
    who: str
    purpose: str
    recording_id: str
    allowed: bool
    reason: str


@dataclass(frozen=True, slots=True)
class CallCount:
    line: str | None
    direction: Direction
    decision: Decision
    calls: int


@dataclass(frozen=True, slots=True)
class CallbackSummary:
    callback_call_id: str
    missed_call_id: str
    line: str | None
    missed_ended_at: datetime | None
    called_back_at: datetime
    window: timedelta | None  # the window the lookup used (wider while overloaded)
    overload: bool
    within_window: bool  # called back within the policy's (not the widened) window


@dataclass(frozen=True, slots=True)
class Report:
    start: datetime
    end: datetime
    calls: tuple[CallCount, ...]
    missed: int
    answered: int
    recordings_made: int  # created in the period with audio
    recordings_empty: int  # created in the period without audio (header only, or lost)
    recordings_deleted: int  # deleted in the period, whenever made
    deleted_by_reason: tuple[tuple[str, int], ...]  # ("retention" | "withdrawal", count)
    withdrawals: tuple[WithdrawalRow, ...]
    callbacks: tuple[CallbackSummary, ...]


@dataclass(frozen=True, slots=True)
class CallFilter:
    """What `callrec calls list` searches by; None matches everything. Numbers are E.164."""

    customer: str | None = None
    start: datetime | None = None  # started at or after
    end: datetime | None = None  # started before
    line: str | None = None
    decision: Decision | None = None
    outcome: Outcome | None = None
    agent: str | None = None
    limit: int = 100


@dataclass(frozen=True, slots=True)
class CallListRow:
    """One call as `callrec calls list --json` gives it (README, "Calls")."""

    call_id: str
    uniqueid: str  # Asterisk's uniqueid of the call's channel: joins to CDR and CEL
    direction: Direction
    line: str | None
    caller: str | None
    dialed: str | None
    started_at: datetime
    ended_at: datetime | None
    decision: Decision
    legal_basis: LegalBasis | None
    digit: str | None
    outcome: Outcome | None
    agent: str | None
    recording_id: str | None
    recording_status: RecordingStatus | None
    linked_to: str | None  # a callback: the missed call it answers


@dataclass(frozen=True, slots=True)
class CallbackLink:
    callback_call_id: str
    missed_call_id: str
    linked_at: datetime  # the callback's decision, which linked it
    overload: bool
    answered_at: datetime | None  # when the customer picked up this callback


@dataclass(frozen=True, slots=True)
class ExportCopy:
    """A recording's copy in an export, with the export's who, why and where."""

    export_id: str
    recording_id: str
    created_at: datetime
    purpose: str
    who: str
    dir: str
    state: str  # writing | done | deleted
    deleted_at: datetime | None  # the copy's deletion (with the recording, or a withdrawal)


@dataclass(frozen=True, slots=True)
class CallStory:
    """Everything the ledger knows about one call, for `callrec calls show`."""

    call: CallRow
    recording: RecordingRow | None
    callback_of: CallbackLink | None  # this call is a callback of a missed call
    called_back: tuple[CallbackLink, ...]  # this missed call's callbacks
    withdrawals: tuple[WithdrawalRow, ...]  # those that name it, its customer since, or act on it
    accesses: tuple[AccessRecord, ...]
    exports: tuple[ExportCopy, ...]
    audit: tuple[AuditEntry, ...]  # entries on the call or its recording
