"""The store's interfaces: what it is asked, and the two narrow ports it is built on.

Asked: `Ledger` is what a live call needs (fast, small); `RecordingStore` is what the
retention and the data protection officer need; `Queries` what the command line asks
besides. `storage.store.Store` answers all three, once, with the use cases of storage/
(`calls`, `ingest`, `sweep`, `withdrawal`, `access`, `verify`, `reconcile`, `reports`).

Built on: `LedgerDb`, rows in transactions (`Tx`) and the audit chain's append, and
`BlobStore`, the recordings' audio under opaque keys. SQLite (`storage.sqlite`) and the
local file system (`storage.blobs`) implement them today; PostgreSQL and an S3-compatible
object store are further implementations of these two, not rewrites of the use cases.

All datetimes are timezone-aware UTC. Phone numbers are E.164 or None (anonymous).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from flows.outcome import Outcome
from flows.policy import LegalBasis, Purpose
from storage.records import (
    AccessRecord,
    AuditEntry,
    CallbackCandidates,
    CallbackDue,
    CallbackLink,
    CallbackSummary,
    CallCount,
    CallFilter,
    CallListRow,
    CallRow,
    CallStart,
    CallStory,
    CheckpointStatus,
    ClaimCheck,
    ClaimState,
    DecisionRecord,
    ExportCopy,
    Progress,
    ReconcileReport,
    RecordingRow,
    RecordingStatus,
    Report,
    SweepReport,
    VerifyReport,
    WithdrawalReport,
    WithdrawalRow,
    WithdrawalVia,
)

if TYPE_CHECKING:
    from storage.checkpoints import Checkpoint

__all__ = [
    "AccessRecord",
    "AuditEntry",
    "BlobStore",
    "CallCount",
    "CallFilter",
    "CallListRow",
    "CallRow",
    "CallStart",
    "CallStory",
    "CallbackCandidates",
    "CallbackDue",
    "CallbackLink",
    "CallbackSummary",
    "CheckpointStatus",
    "ClaimCheck",
    "ClaimState",
    "DecisionRecord",
    "ExportCopy",
    "Ledger",
    "LedgerDb",
    "Placed",
    "Progress",
    "Queries",
    "ReconcileReport",
    "RecordingRow",
    "RecordingStatus",
    "RecordingStore",
    "Report",
    "Row",
    "StoreApi",
    "SweepReport",
    "Tx",
    "VerifyReport",
    "WithdrawalReport",
    "WithdrawalRow",
    "WithdrawalVia",
]

T = TypeVar("T")


class Row(Protocol):
    """A row of a result: indexed by column name (or position)."""

    def __getitem__(self, key: int | str, /) -> Any: ...


class Tx(Protocol):
    """The statements of one transaction (`storage.db.Tx` on SQLite). The SQL is portable,
    what SQLite and PostgreSQL both accept, with `?` placeholders."""

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute one statement; the number of rows it changed."""

    def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    def all(self, sql: str, params: Sequence[Any] = ()) -> Sequence[Row]: ...

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...


class LedgerDb(Protocol):
    """The ledger port: rows in transactions, and the audit chain appended with its head
    serialized (no two transactions append after the same head)."""

    async def read(self, body: Callable[[Tx], T], doing: str) -> T:
        """Run the synchronous `body` in one read transaction."""

    async def write(
        self,
        body: Callable[[Tx], T],
        doing: str,
        *,
        serial: bool = True,
        within: float | None = None,
    ) -> T:
        """Run the synchronous `body` in one write transaction: all of it or nothing.

        `serial` (the default): after every earlier write transaction of the ledger, as if
        alone on it, for bodies that read rows and decide what to write from them. False:
        a body whose rows are its own call's (or guarded by their keys and conditions);
        on a ledger many controllers share it runs beside others, and only its audit
        append (if any) waits for the chain's head.

        `within`: a write nothing waits for at once may wait up to that many seconds for
        the next write of the ledger and share its transaction (a ledger that commits each
        write on its own may commit it at once). Writes keep their order either way."""

    def append_audit(
        self,
        tx: Tx,
        key: bytes,
        at: datetime,
        action: str,
        entries: Sequence[tuple[str, Mapping[str, str]]],
    ) -> None:
        """Append one entry per (subject, details), chained in order and keyed with `key`
        (`storage.chain.append`), in `tx`, with nobody else appending after the same head."""

    def guard_problems(self, tx: Tx) -> list[str]:
        """What this engine's own guards of the ledger (append-only triggers) say is wrong."""

    def json_text(self, column: str, key: str) -> str:
        """An SQL expression for the text at `key` of the JSON object in `column`."""

    def full_scan(self, table: str, alias: str) -> str:
        """`table alias` in a FROM clause, read in its own order rather than by an index."""

    async def claim_controller(self, controller_id: str) -> None:
        """Hold the ledger for the controller `controller_id` until `close`; a StorageError
        saying who holds it when it may not (SQLite: another controller on the data
        directory; a shared ledger: another controller with the same id)."""

    async def check_claim(self) -> ClaimCheck:
        """Whether `claim_controller`'s hold is still there, taken again when it was lost;
        `ControllerConflict` when another controller holds it now (the controller's
        heartbeat, every few seconds)."""

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Placed:
    sha256: str
    size: int
    renamed: bool  # True: the source is gone (moved); False: copied, the source remains


class BlobStore(Protocol):
    """The recordings' audio under opaque keys (made by `key_for`). Every change is durable
    when the call returns. OSError for what the medium refuses."""

    def key_for(self, recording_id: str, created: datetime, suffix: str) -> str: ...

    def recording_id_of(self, key: str) -> str:
        """The recording id a key was made for."""

    def location(self, key: str) -> str:
        """Where the blob is, for people and `RecordingRow.path` (a local path today)."""

    async def put(self, source: Path, key: str) -> Placed:
        """Store the file `source` under `key`, whole or not at all. The source is left for
        the caller to remove once the ledger has the recording (`renamed` says if it went)."""

    async def open(self, key: str) -> Path:
        """A local file holding the blob's content, to read."""

    async def size(self, key: str) -> int | None:
        """Its size in bytes; None when there is no such blob."""

    async def hash(self, key: str) -> tuple[str, int]:
        """(SHA-256, size); FileNotFoundError when there is no such blob."""

    async def exists_many(self, keys: Sequence[str]) -> list[bool]: ...

    async def remove(self, key: str) -> bool:
        """False when it was already gone."""

    async def remove_many(self, keys: Sequence[str]) -> list[bool | OSError]:
        """For each key: True (removed), False (already gone) or the error that kept it."""

    async def discard_partial(self, key: str) -> list[str]:
        """Remove what an interrupted `put` of `key` left; what it removed, as keys."""

    def partial_key(self, key: str) -> str:
        """How `list` shows an unfinished `put` of `key` (a temporary file, locally)."""

    async def partials(self) -> list[str]:
        """The keys with a `put` unfinished (in progress, or interrupted), in order."""

    async def list(self) -> list[str]:
        """Every key held, in order."""


class Ledger(Protocol):
    """What a live call needs from the store."""

    async def start_call(self, call: CallStart, *, lazy: bool = False) -> None:
        """Record a call's start. `lazy`: nobody waits for it before the call's next write
        (its decision or end), so it may wait a moment for another write and share its
        commit; a decision or end written meanwhile is queued after it."""

    async def commit_decision(self, record: DecisionRecord, start: CallStart | None = None) -> None:
        """Durably store the decision (fsync'd by the database) before returning. `start`:
        the call's start, recorded first in the same transaction unless it is already (a
        lazy `start_call` need not be waited for)."""

    async def set_recording_file(self, call_id: str, path: str) -> None:
        """Remember the file MixMonitor was told to write, before it is told."""

    async def mark_unrecorded(self, call_id: str, reason: str, at: datetime) -> bool:
        """A committed decision to record that could not be carried out, and why (an audit
        entry `recording.not_started` on the call, once; none for a call whose recording is
        stored or being stored). Whether it was marked now."""

    async def end_call(
        self,
        call_id: str,
        ended_at: datetime,
        outcome: Outcome,
        agent: str | None = None,
        *,
        lazy: bool = False,
    ) -> CallRow:
        """Store how the call ended and who took it (`agent`: as Asterisk named them); the
        call as the ledger holds it then (an end stored before stays as it was). `lazy`:
        the end may wait a moment to share the commit of the ledger's next write (the
        ingest of the call's recording, once MixMonitor has closed it); it returns only
        once committed either way."""

    async def callback_candidates(
        self, customer: str, since: datetime, legal_basis: LegalBasis
    ) -> CallbackCandidates:
        """The customer's missed inbound calls of `legal_basis` that ended at or after
        `since`, and the withdrawals touching them; `flows.communication` chooses."""

    async def overload(self) -> bool:
        """Whether the operator's overload switch is on now."""

    async def get_call(self, call_id: str) -> CallRow | None: ...

    async def has_stored_audio(self, call_id: str) -> bool:
        """Whether the store took the call's recording with audio (even if deleted since)."""

    async def open_calls(self) -> list[CallRow]:
        """Calls started and not ended (for reconciling after a restart)."""

    async def close_stale_calls(self, started_before: datetime, now: datetime) -> list[str]:
        """End (audited) the calls still open that started before `started_before`: no call
        lasts that long, so their end was never reported. Their call ids."""


class RecordingStore(Protocol):
    """Retention, withdrawal, access and proof: what the DPO answers for."""

    async def ingest(
        self, call_id: str, source: Path, now: datetime, *, lazy: bool = False
    ) -> RecordingRow | None:
        """Move a finished MixMonitor file into the store. None when the call has no
        committed RECORD decision (the file is then deleted and audited, never kept).
        `lazy`: its first commit may wait a moment to share the ledger's next write (a live
        call's), unless other ingests wait behind it; each step is still committed before
        the next one starts."""

    async def sweep(
        self,
        now: datetime,
        *,
        dry_run: bool = False,
        progress: Progress | None = None,
        on_deleted: Callable[[Sequence[str]], None] | None = None,
    ) -> SweepReport: ...

    async def withdraw(
        self,
        caller: str | None,
        via: WithdrawalVia,
        received_at: datetime,
        registered_by: str,
        now: datetime,
        *,
        call_id: str | None = None,
        recording_id: str | None = None,
    ) -> WithdrawalReport:
        """Register a withdrawal of every communication of `caller`, or of the one
        communication of `call_id` or `recording_id` (exactly one of the three)."""

    async def access(self, recording_id: str, purpose: Purpose, who: str, now: datetime) -> Path:
        """The audio's path, logged; `AccessRefused` when the purpose does not fit."""

    async def export(
        self,
        recording_ids: list[str],
        dest: Path,
        purpose: Purpose,
        who: str,
        now: datetime,
        *,
        progress: Progress | None = None,
    ) -> Path: ...

    async def verify(
        self,
        *,
        progress: Progress | None = None,
        checkpoint_file: Path | None = None,
        now: datetime | None = None,
    ) -> VerifyReport: ...

    async def reconcile(
        self,
        spool: Path,
        now: datetime,
        *,
        longest_call: timedelta | None = None,
        finished: Callable[[Path], bool] | None = None,
    ) -> ReconcileReport: ...

    async def recordings(self, *, include_deleted: bool = False) -> list[RecordingRow]: ...

    async def recording(self, recording_id: str) -> RecordingRow | None: ...

    async def set_overload(self, on: bool, by: str, now: datetime) -> None:
        """The operator's overload switch: explicit and audited, never silent."""


class Queries(Protocol):
    """What the command line asks besides the two ports above."""

    async def callbacks_due(self, now: datetime) -> list[CallbackDue]: ...

    async def report(self, start: datetime, end: datetime) -> Report: ...

    async def audit_entries(self, subject: str | None = None) -> list[AuditEntry]: ...

    async def withdrawals(self) -> list[WithdrawalRow]: ...

    async def access_log(self, recording_id: str | None = None) -> list[AccessRecord]: ...

    async def exports(self, recording_id: str | None = None) -> list[ExportCopy]:
        """The copies exports made (of one recording, or of all), oldest first."""

    async def calls(self, where: CallFilter) -> list[CallListRow]:
        """The calls that match, newest first, at most `where.limit`."""

    async def call_story(self, call_id: str) -> CallStory | None:
        """Every row and audit entry about one call and its recording."""

    async def resolve_id(self, kind: str, text: str) -> str:
        """The whole id of a call, recording, withdrawal or export that `text` starts; a
        CallrecError when none or more than one does."""


class StoreApi(Ledger, RecordingStore, Queries, Protocol):
    """A whole store as the command line and the controller use it (`storage.store.Store`,
    opened by `storage.factory.open_store`)."""

    @property
    def data_dir(self) -> Path: ...

    @property
    def spool_dir(self) -> Path | None: ...

    created: bool  # made by the `open` that returned it

    async def close(self) -> None: ...

    async def claim_controller(self) -> None:
        """Hold the store for this controller while it serves calls (`LedgerDb`)."""

    async def keep_claim(self) -> ClaimCheck:
        """The heartbeat of that hold (`LedgerDb.check_claim`)."""

    async def mark_serving(self, now: datetime, by: str) -> None:
        """Note, once and in the audit chain, that this store serves real calls."""

    async def serving_since(self) -> datetime | None:
        """When this store began to serve real calls; None for a demo or replay store."""

    async def audit_head(self) -> tuple[int, str]:
        """(entries in the audit chain, the last one's hash)."""

    async def checkpoint(self, now: datetime) -> Checkpoint:
        """Sign the audit chain's head as of `now` and append it to the checkpoint file."""

    def checkpoint_public_key(self) -> bytes:
        """The key that checks this store's checkpoints (PEM)."""
