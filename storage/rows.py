"""What every use case of the store shares: its parts (`Context`), the rows of the ledger as
the ports' records, the audit append and checkpoints, and checks of ids and names.

The lowest layer of the use cases: it imports no other use case and no backend.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import ParamSpec, TypeVar

from flows.errors import CallrecError, NotFoundError, StorageError
from flows.numbers import shown
from flows.outcome import Outcome
from flows.policy import Decision, Direction, LegalBasis, Policy, Purpose
from storage import chain, checkpoints
from storage.audit import canonical, pseudonym
from storage.ports import (
    AuditEntry,
    BlobStore,
    CallRow,
    LedgerDb,
    RecordingRow,
    RecordingStatus,
    Row,
    Tx,
)
from storage.values import opt_ts, os_error, parse_ts, ts

log = logging.getLogger("callrec.store")
P = ParamSpec("P")
R = TypeVar("R")

CALL_ID = re.compile(r"^[0-9a-f]{32}$")
_ID_TAIL = re.compile(r"^[0-9a-f]{20}$")  # the random part of a recording id
MAX_NAME = 200  # a person's name or role in the logs; longer input is refused, not cut


@dataclass(slots=True)
class Context:
    """The parts the use cases work with: the ledger, the blobs, the policy and keys."""

    db: LedgerDb
    blobs: BlobStore
    policy: Policy
    key: bytes  # the pseudonym key of callers in the audit log
    audit_keys: chain.AuditKeys  # the chain's MAC key and the checkpoints' signing key
    data_dir: Path
    checkpoints_dir: Path
    spool_dir: Path | None = None
    # The controller this store works for: the calls it starts are its own, and only its
    # own are settled after a restart (`storage.datadir.default_controller_id`). Calls of
    # a ledger older than controller ids have none and are every controller's.
    controller_id: str = ""
    # Serialises this process's file work (ingest, deletions, exports, reconcile); other
    # processes are kept consistent by the ledger's transactions.
    files: asyncio.Lock = field(default_factory=asyncio.Lock)
    ingesting: int = 0  # ingests under way or waiting for `files`

    def pseudo(self, number: str | None) -> str:
        return "anonymous" if number is None else pseudonym(self.key, number)

    def audit(
        self, tx: Tx, at: datetime, action: str, subject: str, details: dict[str, str]
    ) -> None:
        self.db.append_audit(tx, self.audit_keys.mac, at, action, [(subject, details)])

    def audit_many(
        self, tx: Tx, at: datetime, action: str, entries: Sequence[tuple[str, Mapping[str, str]]]
    ) -> None:
        """Append one keyed audit entry per (subject, details), chained in order."""
        self.db.append_audit(tx, self.audit_keys.mac, at, action, entries)

    def recording(self, row: Row) -> RecordingRow:
        return RecordingRow(
            id=row["id"],
            call_id=row["call_id"],
            line=row["line"],
            legal_basis=LegalBasis(row["legal_basis"]),
            caller=row["caller"],
            dialed=row["dialed"],
            created_at=parse_ts(row["created_at"]),
            delete_after=parse_ts(row["delete_after"]),
            sha256=row["sha256"],
            path=None if row["path"] is None else self.blobs.location(row["path"]),
            linked_to=row["linked_to"],
            purposes=purposes_of(row["purposes"]),
            size=int(row["size"]),
            status=RecordingStatus(row["status"]),
            deleted_at=opt_ts(row["deleted_at"]),
            deletion_reason=row["deletion_reason"],
        )

    async def get_recording(self, recording_id: str) -> RecordingRow | None:
        row, _ = await self.get_stored(recording_id)
        return row

    async def get_stored(self, recording_id: str) -> tuple[RecordingRow | None, str | None]:
        """A recording and the key of its blob (None: none kept)."""

        def body(tx: Tx) -> Row | None:
            return tx.one("SELECT * FROM recordings WHERE id = ?", (recording_id,))

        row = await self.db.read(body, "reading a recording")
        return (None, None) if row is None else (self.recording(row), row["path"])

    async def require_recording(self, recording_id: str) -> RecordingRow:
        row = await self.get_recording(recording_id)
        if row is None:
            raise NotFoundError(f"no recording {shown(recording_id)}")
        return row

    async def audit_entries(self, subject: str | None = None) -> list[AuditEntry]:
        def body(tx: Tx) -> Sequence[Row]:
            if subject is None:
                return tx.all("SELECT * FROM audit ORDER BY seq")
            return tx.all("SELECT * FROM audit WHERE subject = ? ORDER BY seq", (subject,))

        entries: list[AuditEntry] = []
        problems: list[str] = []
        for row in await self.db.read(body, "reading the audit log"):
            entry, _ = audit_entry(row, problems)
            if entry is not None:
                entries.append(entry)
        return entries

    async def audit_head(self) -> tuple[int, str]:
        """(entries in the audit chain, the last one's hash)."""
        return await self.db.read(chain.head, "reading the audit chain's head")

    async def checkpoint(self, now: datetime) -> checkpoints.Checkpoint:
        """Sign the audit chain's head as of `now` and append it to the checkpoint file."""
        seq, head = await self.audit_head()
        signed = checkpoints.sign(self.audit_keys.signing, seq, head, ts(now))
        await in_thread(
            f"writing a checkpoint to {self.checkpoints_dir}",
            checkpoints.append,
            self.checkpoints_dir,
            signed,
        )
        return signed

    async def checkpoint_after(self, now: datetime, what: str) -> None:
        """A checkpoint after committed work (a deletion batch, a completed withdrawal).
        The work stands whether or not its checkpoint can be written: raising here would
        tell the operator it failed and invite a second withdrawal. The failure is logged;
        the controller's next scheduled checkpoint covers the entries, and until then
        `verify` reports them as entries after the latest checkpoint."""
        try:
            await self.checkpoint(now)
        except StorageError as error:
            log.error("no checkpoint after %s (the next one will cover it): %s", what, error)


async def in_thread(doing: str, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """`fn` on a worker thread, a file system error told as ours."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except OSError as error:
        raise os_error(error, doing) from error


async def blob_op(doing: str, step: Awaitable[R]) -> R:
    """A blob store step, a file system error told as ours."""
    try:
        return await step
    except OSError as error:
        raise os_error(error, doing) from error


def silent(done: int, total: int) -> None:
    """Progress nobody watches."""


def call_row(row: Row) -> CallRow:
    return CallRow(
        call_id=row["call_id"],
        channel_id=row["channel_id"],
        direction=Direction(row["direction"]),
        line=row["line"],
        caller=row["caller"],
        dialed=row["dialed"],
        started_at=parse_ts(row["started_at"]),
        ended_at=opt_ts(row["ended_at"]),
        outcome=None if row["outcome"] is None else Outcome(row["outcome"]),
        decision=Decision(row["decision"]),
        decided_at=opt_ts(row["decided_at"]),
        digit=row["digit"],
        legal_basis=None if row["legal_basis"] is None else LegalBasis(row["legal_basis"]),
        prompt=row["prompt"],
        prompt_sha256=row["prompt_sha256"],
        reason=row["reason"],
        linked_to=row["linked_to"],
        parent_call_id=row["parent_call_id"],
        recording_file=row["recording_file"],
        customer=row["customer"],
        communication_id=row["communication_id"],
        controller_id=row["controller_id"],
        agent=row["agent"],
    )


def audit_entry(row: Row, problems: list[str]) -> tuple[AuditEntry | None, str]:
    """The entry of an audit row and the canonical body its hash covers; None (and a
    problem line) when it cannot be read."""
    try:
        details = json.loads(row["details"])
        at = parse_ts(row["at"])
    except (ValueError, TypeError) as error:
        problems.append(f"audit: entry {row['seq']} is unreadable ({error})")
        return None, ""
    if not isinstance(details, dict):
        problems.append(f"audit: entry {row['seq']} is unreadable (details not an object)")
        return None, ""
    body = canonical(int(row["seq"]), row["at"], row["action"], row["subject"], details)
    entry = AuditEntry(
        seq=int(row["seq"]),
        at=at,
        action=row["action"],
        subject=row["subject"],
        details={str(k): str(v) for k, v in details.items()},
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )
    return entry, body


def make_recording_id(created_ms: int, tail: str) -> str:
    """A recording's id: 32 hex digits, the first 12 its creation time (milliseconds since
    the epoch), the other 20 `tail` (random). Ids made in time order sit side by side in
    every index keyed on them: a sweep deletes recordings in the order they were made, and
    its audit entries (keyed on the id) then fill a few index pages per batch, not one page
    per entry as random ids did."""
    if not _ID_TAIL.match(tail) or not 0 <= created_ms < 16**12:
        raise ValueError(f"no recording id from {created_ms} and {tail!r}")
    return f"{created_ms:012x}{tail}"


SHORT_ID = 8  # the prefix of a random id (call, withdrawal, export) that tables show
SHORT_RECORDING_ID = 16  # a recording id's time (12 digits) and 4 of its random ones


def short_id(any_id: str) -> str:
    """A call's, withdrawal's or export's id as tables show it: its first 8 (random) digits,
    accepted wherever the id is (`storage.queries.resolve_id`)."""
    return any_id[:SHORT_ID]


def short_recording_id(recording_id: str) -> str:
    """A recording id as tables show it, accepted wherever the id is: its first 16 digits.
    The first 12 are its creation time in milliseconds, so 8 would not tell apart the
    recordings of one minute; 4 random ones more tell apart those of one millisecond."""
    return recording_id[:SHORT_RECORDING_ID]


def new_recording_id(created: datetime) -> str:
    return make_recording_id(int(created.timestamp() * 1000), secrets.token_hex(10))


def check_call_id(call_id: str) -> None:
    if not isinstance(call_id, str) or not CALL_ID.match(call_id):
        raise StorageError(f"malformed call id {shown(str(call_id))}: expected 32 hex digits")


def checked_name(value: str, what: str) -> str:
    """A name or role for the logs: printable, not empty, not a novel."""
    if not isinstance(value, str):
        raise CallrecError(f"{what} must be text")
    text = value.strip()
    if not text or len(text) > MAX_NAME or not text.isprintable():
        raise CallrecError(
            f"{what} must be 1 to {MAX_NAME} printable characters, got {shown(value)}"
        )
    return text


def purposes_text(purposes: Iterable[Purpose]) -> str:
    return ",".join(sorted(Purpose(p).value for p in purposes))


def purposes_of(text: str) -> frozenset[Purpose]:
    return frozenset(Purpose(p) for p in text.split(",") if p)
