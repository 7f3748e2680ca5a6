"""The embedded store: the ledger in one SQLite file, recordings in a directory beside it.

Layout under `data_dir` (created 0700):

    ledger.sqlite3            calls, decisions, callbacks, recordings, withdrawals, exports,
                              the hash-chained audit log and the access log (0600)
    pseudonym.key             the key of the callers' pseudonyms in the audit log (0600)
    audit.key                 the key of the audit chain's MACs (0600, `storage.chain`)
    checkpoint.key, .pub      the key pair that signs the audit's checkpoints (0600, 0644)
    checkpoints/              the signed checkpoints of the audit chain (`storage.checkpoints`)
    recordings/YYYY/MM/DD/    one file per recording, named by the recording's id (0600)

Theory of operation. Every change to a file is bracketed by the ledger so that a `kill -9`
anywhere leaves a state `reconcile` (run at start) or the next `sweep` completes:

* ingest commits its intent (`pending_ingests`: which file goes where) before touching the
  file, moves it durably (`storage.files`), then commits the recording and removes the
  source. Reconcile finishes an intent whose file is in place, retries one whose source is
  still in the spool, and flags one where both are gone.
* a deletion (retention or withdrawal) removes every export copy and the audio first and
  only then commits the row as DELETED with its audit entry; until then the row still says
  the file is due, so a re-run finds it again and removing an absent file is no error.
* an export registers every file it will write before writing it, so no copy can escape a
  later deletion.

A withdrawal is also enforced by rule, not only at the moment it is registered: whenever a
consent recording of a caller exists whose decision predates a withdrawal by that caller
(an ingest that finished later, a deletion interrupted by a crash), ingest, sweep and
reconcile delete it and credit it to the withdrawal.

Times come in as arguments; storage never reads the clock. Phone numbers and other caller
supplied text only ever reach SQL as parameters and never a path: files are named by ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from flows.communication import MAX_CANDIDATES, MissedCandidate
from flows.errors import (
    AccessRefused,
    CallrecError,
    IntegrityError,
    NotFoundError,
    StorageError,
)
from flows.numbers import normalise, shown, try_normalise
from flows.outcome import Outcome, outcome_after_restart
from flows.policy import Decision, Direction, LegalBasis, Policy, Purpose
from flows.purposes import ALLOWED, may_serve
from flows.retention import delete_after, withdrawal_deadline
from flows.withdrawal import Coverage, Covered, WithdrawalScope, coverage, deleted_for
from storage import chain, checkpoints, files, integrity
from storage.audit import canonical, load_key, pseudonym
from storage.backends import POSTGRESQL, LedgerConfig, make_dirs, open_postgres
from storage.db import (
    BUSY_TIMEOUT,
    RETRY_FOR,
    Database,
    Tx,
    opt_ts,
    os_error,
    parse_ts,
    ts,
)
from storage.pg import Transactions
from storage.ports import (
    AccessRecord,
    AuditEntry,
    CallbackCandidates,
    CallbackDue,
    CallbackSummary,
    CallCount,
    CallRow,
    CallStart,
    DecisionRecord,
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

log = logging.getLogger("callrec.store")
P = ParamSpec("P")
R = TypeVar("R")
LEDGER_FILE = "ledger.sqlite3"
KEY_FILE = "pseudonym.key"
RECORDINGS_DIR = "recordings"
EXPORTS_DIR = "exports"
SPOOL_DIR = "spool"  # the default spool, inside the data directory
_KEY_TEMP = re.compile(rf"^\.{re.escape(KEY_FILE)}\.[0-9a-f]+\.tmp$")  # a key being written
SERVING = "store.serving"  # the audit action that marks a store of real calls
STORE_SUBJECT = "store"
SERVING_SQL = "SELECT at FROM audit WHERE subject = ? AND action = ? ORDER BY seq LIMIT 1"
MANIFEST = "manifest.json"
CALL_ID = re.compile(r"^[0-9a-f]{32}$")
_SUFFIX = re.compile(r"^\.[a-z0-9]{1,8}$")
_ID_TAIL = re.compile(r"^[0-9a-f]{20}$")  # the random part of a recording id
# Recordings deleted per step of a sweep or withdrawal: one read, one file job and one write
# transaction each. Every batch fsyncs the directories it changed, and each such fsync makes
# the file system commit its journal: at 200 a batch the sweep took about 1.8x the time of
# `find -delete`, at 1,000 about 1.6x (bench/sweep.py, before files were removed on several
# threads). A batch's write holds the ledger (and the decisions of live calls waiting
# behind it) for some tens of milliseconds.
SWEEP_BATCH = 1000
DUE_HORIZON = timedelta(days=1)  # older missed calls are history for `report`, not a to-do list
MAX_NAME = 200  # a person's name or role in the logs; longer input is refused, not cut
AUDIT_BATCH = 5000  # audit entries read per query while verifying

_SALES_KEPT = (
    "legal basis ZEKom-2 Art. 214(7), not consent: kept as evidence of the transaction "
    "until {due} UTC; a withdrawal of consent does not apply to it"
)


@dataclass(frozen=True, slots=True)
class _Target:
    """A recording to delete and the withdrawal it is deleted for (None: retention)."""

    recording_id: str
    withdrawal_id: str | None


@dataclass(frozen=True, slots=True)
class _Doomed:
    """A recording about to be deleted: its row, its audio (None: none kept) and copies.
    The audio's path is text, not a `Path`: pathlib interns every name it parses, and the
    interpreter's table of interned names then grew with every recording a sweep deleted
    (1.9 MB at 100,000) and never shrank."""

    row: sqlite3.Row
    audio: str | None
    copies: tuple[sqlite3.Row, ...]


@dataclass(frozen=True, slots=True)
class _Removal:
    """What removing one recording's files did. `file_state` None: its audio is still there."""

    file_state: str | None
    copies_removed: tuple[int, ...]
    problems: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Removed:
    """A batch whose files are gone (or could not go), its rows not yet marked deleted."""

    targets: Sequence[_Target]
    doomed: list[_Doomed]
    removals: list[_Removal]


def _silent(done: int, total: int) -> None:
    """Progress nobody watches."""


def _remove_files(doomed: Sequence[_Doomed]) -> list[_Removal]:
    """Remove the copies and audio of `doomed` (blocking: one worker-thread job, the audio
    several files at once), then fsync each directory that lost a file, once, so that none
    of the names comes back."""
    removals = []
    with files.Unlinker() as unlinker:
        audio = iter(unlinker.unlink_many([i.audio for i in doomed if i.audio is not None]))
        for item in doomed:
            removed: list[int] = []
            problems: list[str] = []
            for copy in item.copies:
                try:
                    unlinker.unlink(copy["path"])
                    removed.append(int(copy["id"]))
                except OSError as error:
                    problems.append(f"export copy {copy['path']}: {error.strerror or error}")
            for export_dir in {Path(copy["path"]).parent for copy in item.copies}:
                with contextlib.suppress(OSError):
                    export_dir.rmdir()
                    unlinker.removed_dir(str(export_dir))
            state: str | None = "none"
            if item.audio is not None:
                outcome = next(audio)
                if isinstance(outcome, OSError):
                    problems.append(
                        f"recording {item.row['id']}: {outcome.strerror or outcome} (kept for now)"
                    )
                    state = None
                else:
                    state = "removed" if outcome else "already absent"
            removals.append(_Removal(state, tuple(removed), tuple(problems)))
        unlinker.sync()
    return removals


# The callback look-up's candidates: the customer's missed inbound calls of one legal basis
# since a time, newest first, each with whether a callback was answered for it. Which one a
# callback answers is `flows.communication`'s choice.
MISSED_CANDIDATES_SQL = (
    "SELECT c.call_id, c.line, c.legal_basis, c.decision, c.decided_at, c.ended_at, "
    "EXISTS (SELECT 1 FROM callback_answers a WHERE a.missed_call_id = c.call_id) AS answered "
    "FROM calls c "
    "WHERE c.customer = ? AND c.legal_basis = ? AND c.outcome = 'missed' "
    "AND c.direction = 'inbound' AND c.ended_at >= ? AND c.line IS NOT NULL "
    "ORDER BY c.ended_at DESC LIMIT ?"
)

_WITHDRAWAL_COLUMNS = "w.id, w.registered_at, w.caller, w.communication_id"

# Withdrawals and the recordings not deleted yet that they may cover: those of the customer
# they name, and those of the communication they name. `flows.withdrawal` decides.
_WITHDRAWAL_PAIRS_SQL = (
    "SELECT r.id AS recording_id, r.legal_basis, r.customer, r.decided_at, r.delete_after, "
    "c.communication_id AS communication, " + _WITHDRAWAL_COLUMNS + " "
    "FROM withdrawals w JOIN recordings r ON r.customer = w.caller "
    "JOIN calls c ON c.call_id = r.call_id WHERE r.status != 'deleted' AND {where} "
    "UNION ALL "
    "SELECT r.id AS recording_id, r.legal_basis, r.customer, r.decided_at, r.delete_after, "
    "c.communication_id AS communication, " + _WITHDRAWAL_COLUMNS + " "
    "FROM withdrawals w JOIN calls c ON c.communication_id = w.communication_id "
    "JOIN recordings r ON r.call_id = c.call_id WHERE r.status != 'deleted' AND {where}"
)


# Withdrawals and the calls they may cover whose recording is not in the store yet (the
# call goes on, or its file waits in the spool): a withdrawal is not complete before them.
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


def _scope(row: sqlite3.Row) -> WithdrawalScope:
    return WithdrawalScope(
        withdrawal_id=row["id"],
        registered_at=parse_ts(row["registered_at"]),
        customer=row["caller"] or None,
        communication=row["communication_id"],
    )


def _communication_named(tx: Tx, call_id: str | None, recording_id: str | None) -> str:
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
class _Coverable:
    """A recording a withdrawal may cover, with every withdrawal that names it."""

    recording_id: str
    delete_after: datetime
    item: Covered
    withdrawals: tuple[WithdrawalScope, ...]


def _coverables(rows: Iterable[sqlite3.Row]) -> list[_Coverable]:
    items: dict[str, tuple[sqlite3.Row, dict[str, WithdrawalScope]]] = {}
    for row in rows:
        _, scopes = items.setdefault(row["recording_id"], (row, {}))
        scopes[row["id"]] = _scope(row)
    return [
        _Coverable(
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


@dataclass(slots=True)
class _Reconciling:
    ingested: list[str] = field(default_factory=list)
    unowned: list[str] = field(default_factory=list)
    flagged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)


def make_recording_id(created_ms: int, tail: str) -> str:
    """A recording's id: 32 hex digits, the first 12 its creation time (milliseconds since
    the epoch), the other 20 `tail` (random). Ids made in time order sit side by side in
    every index keyed on them: a sweep deletes recordings in the order they were made, and
    its audit entries (keyed on the id) then fill a few index pages per batch, not one page
    per entry as random ids did."""
    if not _ID_TAIL.match(tail) or not 0 <= created_ms < 16**12:
        raise ValueError(f"no recording id from {created_ms} and {tail!r}")
    return f"{created_ms:012x}{tail}"


def short_recording_id(recording_id: str) -> str:
    """A recording id shortened for a table: its last 8 (random) digits. The first ones are
    its creation time and do not tell apart recordings made within the same minute."""
    return f"…{recording_id[-8:]}"


def _new_recording_id(created: datetime) -> str:
    return make_recording_id(int(created.timestamp() * 1000), secrets.token_hex(10))


def _check_call_id(call_id: str) -> None:
    if not isinstance(call_id, str) or not CALL_ID.match(call_id):
        raise StorageError(f"malformed call id {shown(str(call_id))}: expected 32 hex digits")


def _person(value: str, what: str) -> str:
    """A name or role for the logs: printable, not empty, not a novel."""
    if not isinstance(value, str):
        raise CallrecError(f"{what} must be text")
    text = value.strip()
    if not text or len(text) > MAX_NAME or not text.isprintable():
        raise CallrecError(
            f"{what} must be 1 to {MAX_NAME} printable characters, got {shown(value)}"
        )
    return text


def _purposes_text(purposes: Iterable[Purpose]) -> str:
    return ",".join(sorted(p.value for p in purposes))


def _purposes(text: str) -> frozenset[Purpose]:
    return frozenset(Purpose(p) for p in text.split(",") if p)


def _claim(root: Path) -> None:
    """Make `root` the directory of a new store (0700), refusing one that holds anything
    else: a new store never lands in a home or system directory by a slip of the config,
    and never beside recordings whose ledger is lost. What an interrupted creation leaves
    (the key, empty directories of the store) is allowed."""
    try:
        entries = list(root.iterdir())
    except FileNotFoundError:
        files.private_dir(root)
        return
    for entry in entries:
        name = entry.name
        if name in (KEY_FILE, "lost+found") or _KEY_TEMP.match(name):
            continue
        if name in (RECORDINGS_DIR, EXPORTS_DIR, SPOOL_DIR) and not _holds_files(entry):
            continue
        raise StorageError(
            f"no store at {root} (no {LEDGER_FILE}), and it is not empty ({shown(name, 40)} "
            "is there): restore the ledger from the backup, or name a new or empty directory"
        )
    root.chmod(files.PRIVATE_DIR)


def _holds_files(directory: Path) -> bool:
    if directory.is_symlink() or not directory.is_dir():
        return True
    return any(names for _, _, names in os.walk(directory))


class SqliteStore:
    """`storage.ports.Ledger`, `RecordingStore` and `Queries` on SQLite and local files."""

    def __init__(
        self,
        db: Transactions,
        policy: Policy,
        data_dir: Path,
        spool_dir: Path | None,
        key: bytes,
        audit_keys: chain.AuditKeys,
    ) -> None:
        self._db = db
        self.policy = policy
        self.data_dir = data_dir
        self.spool_dir = spool_dir
        self.recordings_dir = data_dir / RECORDINGS_DIR
        self.exports_dir = data_dir / EXPORTS_DIR
        self._key = key
        self.created = False  # made by the `open` that returned it
        self._audit_keys = audit_keys
        self.checkpoints_dir = data_dir / checkpoints.CHECKPOINTS_DIR
        # Serialises this process's file work (ingest, deletions, exports, reconcile);
        # other processes are kept consistent by the ledger's transactions.
        self._files = asyncio.Lock()

    @classmethod
    async def open(
        cls,
        data_dir: Path,
        policy: Policy,
        *,
        create: bool = False,
        spool_dir: Path | None = None,
        busy_timeout: float = BUSY_TIMEOUT,
        retry_for: float = RETRY_FOR,
        ledger: LedgerConfig | None = None,
    ) -> SqliteStore:
        """Open the store rooted at `data_dir`, migrating its ledger as needed.

        A store is made only with `create` (then `created` says whether this call made it),
        and only in a new or empty directory: a path without a ledger is otherwise a
        `NotFoundError` naming it, so a mistyped data directory never becomes a new, empty
        store that verifies clean. A ledger whose pseudonym key is missing never opens.
        `spool_dir` is where MixMonitor writes; `verify` then also reports files left there.
        `ledger` names a PostgreSQL ledger instead of the data directory's SQLite file.
        """
        if ledger is not None and ledger.backend == POSTGRESQL:
            root = await asyncio.to_thread(Path(data_dir).absolute)
            pg, key, created = await open_postgres(
                root,
                ledger,
                create=create,
                retry_for=retry_for,
                ledger_file=LEDGER_FILE,
                key_file=KEY_FILE,
                claim=_claim,
                prepare_dirs=make_dirs(RECORDINGS_DIR, EXPORTS_DIR),
            )
            try:
                keys = await asyncio.to_thread(chain.load_keys, root)
            except BaseException:
                await pg.close()
                raise
            store = cls(pg, policy, root, spool_dir, key, keys)
            store.created = created
            return store

        def prepare() -> tuple[Path, bytes, bool]:
            root = Path(data_dir).absolute()
            new = not os.path.lexists(root / LEDGER_FILE)
            if new:
                if not create:
                    raise NotFoundError(
                        f"no store at {root} (no {LEDGER_FILE} there): check the data "
                        "directory, or create a store with `callrec init`"
                    )
                _claim(root)
            files.private_dir(root / RECORDINGS_DIR)
            files.private_dir(root / EXPORTS_DIR)
            # The key before the ledger: a ledger is never without its key, and a creation
            # cut short (a key, no ledger) is finished by the next one.
            key = load_key(root / KEY_FILE, create=new)
            if new:
                with contextlib.suppress(FileExistsError):  # another process made it first
                    os.close(files.new_file(root / LEDGER_FILE))
            return root, key, new

        try:
            data_dir, key, created = await asyncio.to_thread(prepare)
        except OSError as error:
            raise os_error(error, f"opening the store {data_dir}") from error
        db = await Database.open(
            data_dir / LEDGER_FILE,
            busy_timeout=busy_timeout,
            retry_for=retry_for,
            runners=chain.migration_runners(data_dir),
        )
        try:
            audit_keys = await asyncio.to_thread(chain.load_keys, data_dir)
        except BaseException:
            await db.close()
            raise
        store = cls(db, policy, data_dir, spool_dir, key, audit_keys)
        store.created = created
        return store

    async def close(self) -> None:
        await self._db.close()

    async def __aenter__(self) -> SqliteStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # ----------------------------------------------------------------- helpers

    def _pseudo(self, number: str | None) -> str:
        return "anonymous" if number is None else pseudonym(self._key, number)

    def _abs(self, relative: str) -> Path:
        return self.data_dir / relative

    def _rel(self, path: Path) -> str:
        return str(path.relative_to(self.data_dir))

    def _audit(
        self, tx: Tx, at: datetime, action: str, subject: str, details: dict[str, str]
    ) -> None:
        self._audit_many(tx, at, action, [(subject, details)])

    def _audit_many(
        self, tx: Tx, at: datetime, action: str, entries: Sequence[tuple[str, dict[str, str]]]
    ) -> None:
        """Append one keyed audit entry per (subject, details), chained in order."""
        chain.append(tx, self._audit_keys.mac, at, action, entries)

    @staticmethod
    async def _in_thread(doing: str, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except OSError as error:
            raise os_error(error, doing) from error

    @staticmethod
    def _call(row: sqlite3.Row) -> CallRow:
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
        )

    def _recording(self, row: sqlite3.Row) -> RecordingRow:
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
            path=None if row["path"] is None else str(self._abs(row["path"])),
            linked_to=row["linked_to"],
            purposes=_purposes(row["purposes"]),
            size=int(row["size"]),
            status=RecordingStatus(row["status"]),
            deleted_at=opt_ts(row["deleted_at"]),
            deletion_reason=row["deletion_reason"],
        )

    # ------------------------------------------------------------------ ledger

    async def start_call(self, call: CallStart) -> None:
        _check_call_id(call.call_id)
        if call.parent_call_id is not None:
            _check_call_id(call.parent_call_id)
        code = self.policy.country_code
        caller = try_normalise(call.caller, country_code=code)
        dialed = try_normalise(call.dialed, country_code=code)
        direction = Direction(call.direction)
        customer = try_normalise(call.customer, country_code=code)
        communication = call.communication_id or call.call_id
        _check_call_id(communication)
        purge = delete_after(
            call.started_at, months=self.policy.retention_months, tz=self.policy.timezone
        )

        def body(tx: Tx) -> None:
            added = tx.run(
                "INSERT INTO calls (call_id, channel_id, direction, line, caller, dialed, "
                "customer, started_at, purge_after, parent_call_id, communication_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (call_id) DO NOTHING",
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
                ),
            )
            if added == 0:
                old = tx.one("SELECT channel_id FROM calls WHERE call_id = ?", (call.call_id,))
                if old is None or old["channel_id"] != str(call.channel_id):
                    raise StorageError(
                        "call id already used by another channel", call_id=call.call_id
                    )

        await self._db.write(body, f"starting call {call.call_id}")

    async def commit_decision(self, record: DecisionRecord) -> None:
        _check_call_id(record.call_id)
        if record.linked_to is not None:
            _check_call_id(record.linked_to)
        if record.communication_id is not None:
            _check_call_id(record.communication_id)
        decision = Decision(record.decision)
        basis = LegalBasis(record.legal_basis)
        when = ts(record.decided_at)

        def body(tx: Tx) -> None:
            row = tx.one(
                "SELECT decision, decided_at, legal_basis, customer FROM calls WHERE call_id = ?",
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
            tx.run(
                "UPDATE calls SET decision = ?, decided_at = ?, digit = ?, legal_basis = ?, "
                "prompt = ?, prompt_sha256 = ?, reason = ?, linked_to = ? WHERE call_id = ?",
                (
                    decision.value,
                    when,
                    record.digit,
                    basis.value,
                    record.prompt,
                    record.prompt_sha256,
                    record.reason,
                    record.linked_to,
                    record.call_id,
                ),
            )
            details = {
                "decision": decision.value,
                "legal_basis": basis.value,
                "digit": record.digit or "",
                "prompt": record.prompt or "",
                "prompt_sha256": record.prompt_sha256 or "",
                "customer": self._pseudo(row["customer"]),
            }
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
            if record.communication_id is not None:
                tx.run(
                    "UPDATE calls SET communication_id = ? WHERE call_id = ?",
                    (record.communication_id, record.call_id),
                )
            self._audit(tx, record.decided_at, "decision.committed", record.call_id, details)

        await self._db.write(body, f"committing the decision of call {record.call_id}")

    async def set_recording_file(self, call_id: str, path: str) -> None:
        _check_call_id(call_id)

        def body(tx: Tx) -> None:
            row = tx.one("SELECT decision FROM calls WHERE call_id = ?", (call_id,))
            if row is None:
                raise NotFoundError("no such call", call_id=call_id)
            if row["decision"] != Decision.RECORD.value:
                raise StorageError(
                    "no committed decision to record: no recording file", call_id=call_id
                )
            tx.run("UPDATE calls SET recording_file = ? WHERE call_id = ?", (str(path), call_id))

        await self._db.write(body, f"noting the recording file of call {call_id}")

    async def end_call(self, call_id: str, ended_at: datetime, outcome: Outcome) -> None:
        _check_call_id(call_id)
        result = Outcome(outcome)
        when = ts(ended_at)

        def body(tx: Tx) -> None:
            changed = tx.run(
                "UPDATE calls SET ended_at = ?, outcome = ? WHERE call_id = ? AND ended_at IS NULL",
                (when, result.value, call_id),
            )
            if changed == 0 and tx.one("SELECT 1 FROM calls WHERE call_id = ?", (call_id,)) is None:
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

        await self._db.write(body, f"ending call {call_id}")

    async def close_stale_calls(self, started_before: datetime, now: datetime) -> list[str]:
        """End every open call started before `started_before`: Asterisk never reported its
        end, and none lasts that long. Judged as a call that ended unseen
        (`flows.outcome.outcome_after_restart`), audited as `call.closed_unreported`.
        Returns their call ids, so their files can be collected."""
        cutoff = ts(started_before)
        when = ts(now)

        def read(tx: Tx) -> list[sqlite3.Row]:
            return tx.all(
                "SELECT call_id, decided_at, recording_file FROM calls "
                "WHERE ended_at IS NULL AND started_at < ? ORDER BY started_at",
                (cutoff,),
            )

        rows = await self._db.read(read, "listing calls with no end")
        if not rows:
            return []

        def judge() -> list[tuple[str, Outcome]]:
            judged = []
            for row in rows:
                file = row["recording_file"]
                audio = False
                if file is not None:
                    with contextlib.suppress(OSError):
                        audio = not files.header_only(Path(file))
                outcome = outcome_after_restart(
                    decided=row["decided_at"] is not None, recorded_audio=audio
                )
                judged.append((str(row["call_id"]), outcome))
            return judged

        judged = await self._in_thread("judging calls with no end", judge)
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
                    self._audit(
                        tx,
                        now,
                        "call.closed_unreported",
                        call_id,
                        {"outcome": outcome.value, "started_before": cutoff},
                    )
            return closed

        return await self._db.write(body, "closing calls with no end")

    async def callback_candidates(
        self, customer: str, since: datetime, legal_basis: LegalBasis
    ) -> CallbackCandidates:
        number = try_normalise(customer, country_code=self.policy.country_code)
        if number is None:
            return CallbackCandidates((), ())
        basis = LegalBasis(legal_basis)
        after = ts(since)

        def body(tx: Tx) -> tuple[list[sqlite3.Row], list[sqlite3.Row]]:
            calls = tx.all(MISSED_CANDIDATES_SQL, (number, basis.value, after, MAX_CANDIDATES))
            if not calls:
                return calls, []
            ids = [row["call_id"] for row in calls]
            marks = ", ".join("?" * len(ids))
            withdrawals = tx.all(
                f"SELECT {_WITHDRAWAL_COLUMNS} FROM withdrawals w WHERE w.caller = ? "  # noqa: S608
                f"UNION SELECT {_WITHDRAWAL_COLUMNS} FROM withdrawals w "
                f"WHERE w.communication_id IN ({marks})",
                (number, *ids),
            )
            return calls, withdrawals

        calls, withdrawals = await self._db.read(body, "looking up missed calls")
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
            withdrawals=tuple(_scope(row) for row in withdrawals),
        )

    async def overload(self) -> bool:
        def body(tx: Tx) -> sqlite3.Row | None:
            return tx.one("SELECT on_ FROM overload_switch ORDER BY seq DESC LIMIT 1")

        row = await self._db.read(body, "reading the overload switch")
        return row is not None and bool(row["on_"])

    async def set_overload(self, on: bool, by: str, now: datetime) -> None:
        who = _person(by, "the operator turning the overload switch")

        def body(tx: Tx) -> None:
            tx.run(
                "INSERT INTO overload_switch (at, on_, by) VALUES (?, ?, ?)",
                (ts(now), int(on), who),
            )
            self._audit(tx, now, "overload.on" if on else "overload.off", "overload", {"by": who})

        await self._db.write(body, "turning the overload switch")

    # ------------------------------------------------------- a store of real calls

    async def mark_serving(self, now: datetime, by: str) -> None:
        """Note, once and in the audit chain, that this store serves real calls (`serve`
        and `fastagi` call this at start). From then on commands write to it only at the
        machine's time: a store of a demo or a replay is never marked."""

        def body(tx: Tx) -> None:
            if tx.one(SERVING_SQL, (STORE_SUBJECT, SERVING)) is None:
                self._audit(tx, now, SERVING, STORE_SUBJECT, {"by": by})

        await self._db.write(body, "marking the store as serving calls")

    async def serving_since(self) -> datetime | None:
        """When this store began to serve real calls; None for a demo or replay store."""

        def body(tx: Tx) -> sqlite3.Row | None:
            return tx.one(SERVING_SQL, (STORE_SUBJECT, SERVING))

        row = await self._db.read(body, "reading whether the store serves calls")
        return None if row is None else parse_ts(row["at"])

    async def get_call(self, call_id: str) -> CallRow | None:
        def body(tx: Tx) -> sqlite3.Row | None:
            return tx.one("SELECT * FROM calls WHERE call_id = ?", (call_id,))

        row = await self._db.read(body, "reading a call")
        return None if row is None else self._call(row)

    async def open_calls(self) -> list[CallRow]:
        def body(tx: Tx) -> list[sqlite3.Row]:
            return tx.all("SELECT * FROM calls WHERE ended_at IS NULL ORDER BY started_at, call_id")

        return [self._call(row) for row in await self._db.read(body, "listing open calls")]

    # ------------------------------------------------------------------ ingest

    async def ingest(self, call_id: str, source: Path, now: datetime) -> RecordingRow | None:
        _check_call_id(call_id)
        ts(now)
        async with self._files:
            return await self._ingest(call_id, Path(source), now)

    async def _ingest(self, call_id: str, source: Path, now: datetime) -> RecordingRow | None:
        def state(tx: Tx) -> tuple[sqlite3.Row | None, ...]:
            return (
                tx.one("SELECT * FROM recordings WHERE call_id = ?", (call_id,)),
                tx.one("SELECT * FROM pending_ingests WHERE call_id = ?", (call_id,)),
                tx.one("SELECT * FROM calls WHERE call_id = ?", (call_id,)),
            )

        existing, pending, call = await self._db.read(state, f"ingesting call {call_id}")
        if existing is not None:
            await self._tidy_source(existing, source)
            return self._recording(existing)
        if pending is not None:
            return await self._finish_pending(pending, now)
        if call is None or call["decision"] != Decision.RECORD.value:
            why = "no such call" if call is None else f"decision {call['decision']}"
            await self._discard(call_id, source, now, why)
            return None
        files.regular_file(source, f"ingesting call {call_id}")
        if await self._in_thread(f"reading {source}", files.header_only, source):
            return await self._store_empty(call, source, now)
        created = parse_ts(call["decided_at"])
        recording_id = _new_recording_id(created)
        suffix = source.suffix.lower() if _SUFFIX.match(source.suffix.lower()) else ".wav"
        if suffix == ".wav16":  # MixMonitor's name for 16 kHz; the file is a plain RIFF WAV
            suffix = ".wav"
        day = created.strftime("%Y/%m/%d")
        final = self.recordings_dir / day / f"{recording_id}{suffix}"

        def intent(tx: Tx) -> None:
            tx.run(
                "INSERT INTO pending_ingests (recording_id, call_id, source, dest, started_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (recording_id, call_id, str(source), self._rel(final), ts(now)),
            )

        await self._db.write(intent, f"ingesting call {call_id}")
        try:
            await self._in_thread(f"creating {final.parent}", files.private_dir, final.parent)
            placed: files.Placed = await asyncio.to_thread(files.place, source, final)
        except StorageError:
            # Nothing moved (the source is where it was): forget the intent.
            def undo(tx: Tx) -> None:
                tx.run("DELETE FROM pending_ingests WHERE recording_id = ?", (recording_id,))

            await self._db.write(undo, f"undoing the ingest of call {call_id}")
            raise
        return await self._complete(
            recording_id, call, final, placed.sha256, placed.size, source, now
        )

    async def _complete(
        self,
        recording_id: str,
        call: sqlite3.Row,
        final: Path,
        sha256: str,
        size: int,
        source: Path,
        now: datetime,
    ) -> RecordingRow:
        row = await self._insert_recording(
            recording_id,
            call,
            now,
            status=RecordingStatus.STORED,
            path=final,
            sha256=sha256,
            size=size,
        )
        if source != final:
            await self._in_thread(f"removing {source}", files.remove, source)
        # complete: a withdrawal that waited for this file may have nothing left now.
        await self._enforce_withdrawals(now, recording_id=row.id, complete=True)
        return await self._require_recording(row.id)

    async def _insert_recording(
        self,
        recording_id: str,
        call: sqlite3.Row,
        now: datetime,
        *,
        status: RecordingStatus,
        path: Path | None,
        sha256: str | None,
        size: int,
    ) -> RecordingRow:
        created = parse_ts(call["decided_at"])
        due = delete_after(created, months=self.policy.retention_months, tz=self.policy.timezone)
        basis = LegalBasis(call["legal_basis"])
        line_name = call["line"] or ""
        line = self.policy.line_named(line_name)
        purposes = line.purposes & ALLOWED[basis] if line is not None else ALLOWED[basis]
        action = "recording.stored" if status is RecordingStatus.STORED else f"recording.{status}"

        def body(tx: Tx) -> sqlite3.Row:
            tx.run("DELETE FROM pending_ingests WHERE recording_id = ?", (recording_id,))
            tx.run(
                "INSERT INTO recordings (id, call_id, line, legal_basis, caller, dialed, "
                "customer, decided_at, created_at, delete_after, sha256, path, linked_to, "
                "purposes, size, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    recording_id,
                    call["call_id"],
                    line_name,
                    basis.value,
                    call["caller"],
                    call["dialed"],
                    call["customer"],
                    call["decided_at"],
                    ts(created),
                    ts(due),
                    sha256,
                    None if path is None else self._rel(path),
                    call["linked_to"],
                    _purposes_text(purposes),
                    size,
                    status.value,
                ),
            )
            self._audit(
                tx,
                now,
                action,
                recording_id,
                {
                    "call_id": call["call_id"],
                    "line": line_name,
                    "legal_basis": basis.value,
                    "customer": self._pseudo(call["customer"]),
                    "sha256": sha256 or "",
                    "size": str(size),
                    "delete_after": ts(due),
                    "linked_to": call["linked_to"] or "",
                },
            )
            stored = tx.one("SELECT * FROM recordings WHERE id = ?", (recording_id,))
            assert stored is not None  # inserted just above, in this transaction
            return stored

        stored = await self._db.write(body, f"storing the recording of call {call['call_id']}")
        return self._recording(stored)

    async def _store_empty(self, call: sqlite3.Row, source: Path, now: datetime) -> RecordingRow:
        row = await self._insert_recording(
            _new_recording_id(parse_ts(call["decided_at"])),
            call,
            now,
            status=RecordingStatus.EMPTY,
            path=None,
            sha256=None,
            size=0,
        )
        await self._in_thread(f"removing {source}", files.remove, source)
        await self._enforce_withdrawals(now, recording_id=row.id, complete=True)
        return row

    async def _discard(self, call_id: str, source: Path, now: datetime, why: str) -> None:
        """A file nobody may keep (no committed RECORD decision): audited, then deleted."""
        try:
            files.regular_file(source, "discarding")
            digest, size = await self._in_thread(f"reading {source}", files.hash_file, source)
        except NotFoundError:
            return
        except StorageError:
            # A symlink or a device: remove the entry itself, never what it points to.
            digest, size = "", 0

        def body(tx: Tx) -> None:
            self._audit(
                tx,
                now,
                "recording.discarded",
                call_id,
                {"reason": why, "sha256": digest, "size": str(size)},
            )

        await self._db.write(body, f"discarding the file of call {call_id}")
        await self._in_thread(f"removing {source}", files.remove, source)

    async def _tidy_source(self, existing: sqlite3.Row, source: Path) -> None:
        """The call is already ingested; a source still there is a leftover copy of it."""
        if existing["path"] is not None and self._abs(existing["path"]) == source:
            return
        try:
            files.regular_file(source, "ingest")
        except StorageError:
            return
        if existing["status"] == RecordingStatus.EMPTY.value:
            if await self._in_thread(f"reading {source}", files.header_only, source):
                await self._in_thread(f"removing {source}", files.remove, source)
            return
        digest, _ = await self._in_thread(f"reading {source}", files.hash_file, source)
        if digest == existing["sha256"]:
            await self._in_thread(f"removing {source}", files.remove, source)

    async def _finish_pending(self, pending: sqlite3.Row, now: datetime) -> RecordingRow | None:
        recording_id = str(pending["recording_id"])
        final = self._abs(pending["dest"])
        source = Path(pending["source"])

        def read_call(tx: Tx) -> sqlite3.Row | None:
            return tx.one("SELECT * FROM calls WHERE call_id = ?", (pending["call_id"],))

        call = await self._db.read(read_call, "finishing an ingest")
        assert call is not None  # pending_ingests.call_id references calls
        tmp = final.with_name(f".{final.name}{files.TEMP_SUFFIX}")
        await self._in_thread(f"removing {tmp}", files.remove, tmp)
        if await asyncio.to_thread(final.exists):
            digest, size = await self._in_thread(f"reading {final}", files.hash_file, final)
            return await self._complete(recording_id, call, final, digest, size, source, now)
        if await asyncio.to_thread(source.exists):
            await self._in_thread(f"creating {final.parent}", files.private_dir, final.parent)
            placed: files.Placed = await asyncio.to_thread(files.place, source, final)
            return await self._complete(
                recording_id, call, final, placed.sha256, placed.size, source, now
            )
        return await self._insert_recording(
            recording_id,
            call,
            now,
            status=RecordingStatus.MISSING,
            path=final,
            sha256=None,
            size=0,
        )

    async def _require_recording(self, recording_id: str) -> RecordingRow:
        row = await self.recording(recording_id)
        if row is None:
            raise NotFoundError(f"no recording {shown(recording_id)}")
        return row

    # --------------------------------------------------------------- deletion

    async def _delete_batch(
        self, targets: Sequence[_Target], now: datetime, reason: str
    ) -> dict[str, str | None]:
        """Delete recordings: their copies and audio, then their rows, in three steps for
        the whole batch (one read, one file job, one write). Each id maps to a problem
        line, or None when it is deleted (or already was).

        Files go first and their directories are fsync'd (once each) before the rows are
        committed: a crash in between leaves rows whose files are gone, which the next
        sweep deletes again as "already absent". A recording whose audio could not be
        removed keeps its row (and is due again); the copies that did go are noted."""
        ids = [target.recording_id for target in targets]
        doomed = await self._db.read(lambda tx: self._doomed(tx, ids), "reading recordings")
        removals = await self._in_thread("removing recordings", _remove_files, doomed)
        removed = _Removed(targets, doomed, removals)
        return await self._record_removed(removed, now, reason)

    def _doomed(self, tx: Tx, ids: Sequence[str]) -> list[_Doomed]:
        """The recordings of `ids` not deleted yet, with every live copy of an export that
        holds them (an export goes as a whole)."""
        if not ids:
            return []
        marks = ", ".join("?" * len(ids))
        rows = tx.all(
            f"SELECT * FROM recordings WHERE id IN ({marks}) AND status != 'deleted'",  # noqa: S608 - only placeholders are added
            ids,
        )
        copies: dict[str, list[sqlite3.Row]] = {}
        copies_sql = (
            "SELECT g.recording_id AS of, f.id, f.export_id, f.path FROM export_files g "  # noqa: S608 - only placeholders are added
            "JOIN export_files f ON f.export_id = g.export_id AND f.deleted_at IS NULL "
            f"WHERE g.recording_id IN ({marks})"
        )
        for copy in tx.all(copies_sql, ids):
            copies.setdefault(copy["of"], []).append(copy)
        order = {recording_id: n for n, recording_id in enumerate(ids)}
        return [
            _Doomed(
                row,
                None if row["path"] is None else os.path.join(self.data_dir, row["path"]),  # noqa: PTH118 - text: see _Doomed
                tuple(copies.get(row["id"], ())),
            )
            for row in sorted(rows, key=lambda row: order[row["id"]])
        ]

    async def _record_removed(
        self, removed: _Removed, now: datetime, reason: str
    ) -> dict[str, str | None]:
        """Commit the deletions whose files are gone (one write transaction, an audit entry
        each); each target's problem line, or None."""
        by_id = {target.recording_id: target for target in removed.targets}
        outcome: dict[str, str | None] = dict.fromkeys(by_id)
        if not removed.doomed:
            return outcome
        pairs = list(zip(removed.doomed, removed.removals, strict=True))
        copies_gone = [c for removal in removed.removals for c in removal.copies_removed]
        when = ts(now)

        def body(tx: Tx) -> int:
            if copies_gone:
                self._mark_copies_in(tx, copies_gone, now)
            # The audio of the others is still there: their rows stay, due again. Rows deleted
            # meanwhile (another sweep, a withdrawal) are left as they are.
            removed_audio = [(i, r) for i, r in pairs if r.file_state is not None]
            if not removed_audio:
                return 0
            marks = ", ".join("?" * len(removed_audio))
            live = {
                row["id"]
                for row in tx.all(
                    f"SELECT id FROM recordings WHERE id IN ({marks}) "  # noqa: S608 - only placeholders are added
                    "AND status != 'deleted'",
                    [item.row["id"] for item, _ in removed_audio],
                )
            }
            gone = [
                (by_id[item.row["id"]], item, removal)
                for item, removal in removed_audio
                if item.row["id"] in live
            ]
            tx.many(
                "UPDATE recordings SET status = 'deleted', deleted_at = ?, "
                "deletion_reason = ?, withdrawal_id = ?, path = NULL, caller = NULL, "
                "dialed = NULL, customer = NULL WHERE id = ?",
                [(when, reason, t.withdrawal_id, t.recording_id) for t, _, _ in gone],
            )
            tx.many(
                "INSERT OR IGNORE INTO withdrawal_recordings "
                "(withdrawal_id, recording_id, action, why) VALUES (?, ?, 'deleted', ?)",
                [
                    (t.withdrawal_id, t.recording_id, "consent withdrawn")
                    for t, _, _ in gone
                    if t.withdrawal_id is not None
                ],
            )
            self._audit_many(
                tx,
                now,
                "recording.deleted",
                [
                    (
                        target.recording_id,
                        {
                            "call_id": item.row["call_id"],
                            "reason": reason,
                            "withdrawal_id": target.withdrawal_id or "",
                            "legal_basis": item.row["legal_basis"],
                            "sha256": item.row["sha256"] or "",
                            "size": str(item.row["size"]),
                            "created_at": item.row["created_at"],
                            "delete_after": item.row["delete_after"],
                            "file": str(removal.file_state),
                            "copies_removed": str(len(removal.copies_removed)),
                            "copies_left": str(len(item.copies) - len(removal.copies_removed)),
                        },
                    )
                    for target, item, removal in gone
                ],
            )
            return len(gone)

        first = removed.targets[0].recording_id
        what = (
            f"deleting recording {first}"
            if len(removed.targets) == 1
            else f"deleting {len(removed.doomed)} recordings"
        )
        if await self._db.write(body, what):
            await self._checkpoint_after(now, what)
        for item, removal in pairs:
            outcome[item.row["id"]] = "; ".join(removal.problems) if removal.problems else None
        return outcome

    async def _mark_copies(self, copy_ids: Sequence[int], now: datetime) -> None:
        if not copy_ids:
            return

        def body(tx: Tx) -> None:
            self._mark_copies_in(tx, copy_ids, now)

        await self._db.write(body, "noting removed export copies")

    def _mark_copies_in(self, tx: Tx, copy_ids: Sequence[int], now: datetime) -> None:
        tx.many(
            "UPDATE export_files SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL",
            [(ts(now), copy_id) for copy_id in copy_ids],
        )
        tx.run(
            "UPDATE exports SET state = 'deleted' WHERE state != 'deleted' AND NOT EXISTS "
            "(SELECT 1 FROM export_files f WHERE f.export_id = exports.export_id "
            "AND f.deleted_at IS NULL)"
        )

    async def _retry_copies(self, now: datetime) -> list[str]:
        """Copies a deletion could not remove (a stick unplugged, a permission): try again."""

        def read(tx: Tx) -> list[sqlite3.Row]:
            return tx.all(
                "SELECT f.id, f.path FROM export_files f WHERE f.deleted_at IS NULL AND "
                "f.export_id IN (SELECT g.export_id FROM export_files g JOIN recordings r "
                "ON r.id = g.recording_id WHERE r.status = 'deleted')"
            )

        problems: list[str] = []
        removed: list[int] = []
        for copy in await self._db.read(read, "listing copies left behind"):
            try:
                await asyncio.to_thread(files.remove, Path(copy["path"]))
                removed.append(int(copy["id"]))
            except OSError as error:
                problems.append(f"export copy {copy['path']}: {error.strerror or error}")
        await self._mark_copies(removed, now)
        return problems

    @staticmethod
    def _coverable(tx: Tx, where: str, params: Sequence[Any]) -> list[_Coverable]:
        """Recordings not deleted and the withdrawals that name them, for `where` (a
        condition on `w` or `r` with `?` parameters)."""
        sql = _WITHDRAWAL_PAIRS_SQL.format(where=where)
        return _coverables(tx.all(sql, (*params, *params)))

    async def _enforce_withdrawals(
        self,
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

        def read(tx: Tx) -> list[_Coverable]:
            return self._coverable(tx, where, params)

        targets: list[_Target] = []
        for item in await self._db.read(read, "applying withdrawals"):
            withdrawal = deleted_for(item.item, item.withdrawals)
            if withdrawal is not None:
                targets.append(_Target(item.recording_id, withdrawal.withdrawal_id))
        deleted: list[str] = []
        problems: list[str] = []
        for start in range(0, len(targets), SWEEP_BATCH):
            batch = targets[start : start + SWEEP_BATCH]
            outcome = await self._delete_batch(batch, now, "withdrawal")
            for target in batch:
                problem = outcome[target.recording_id]
                if problem is None:
                    deleted.append(target.recording_id)
                else:
                    problems.append(problem)
        if deleted or everyone or complete:
            await self._complete_withdrawals(now)
        return deleted, problems

    async def _withdrawals_waiting_for_files(self) -> set[str]:
        """Open withdrawals that cover (`flows.withdrawal`) a call whose recording is not in
        the store yet: the call goes on, or its file waits in the spool."""

        def read(tx: Tx) -> list[sqlite3.Row]:
            return tx.all(_WAITING_FILES_SQL)

        rows = await self._db.read(read, "looking for files withdrawals wait for")

        def waiting() -> set[str]:
            found: set[str] = set()
            for row in rows:
                item = Covered(
                    legal_basis=LegalBasis(row["legal_basis"]),
                    customer=row["customer"],
                    communication=row["communication"] or "",
                    decided_at=parse_ts(row["decided_at"]),
                )
                scope = _scope(row)
                if coverage(scope, item) is not Coverage.DELETE:
                    continue
                if row["ended_at"] is None or os.path.lexists(row["recording_file"]):
                    found.add(scope.withdrawal_id)
            return found

        return await asyncio.to_thread(waiting)

    async def _complete_withdrawals(self, now: datetime) -> None:
        """A withdrawal is complete once nothing it covers for deletion remains anywhere: no
        recording in the store, and no file of a covered call still to come or waiting in the
        spool (an ingest that failed, a call not yet ended)."""
        waiting = await self._withdrawals_waiting_for_files()

        def body(tx: Tx) -> int:
            completed = 0
            open_ids = [
                row["id"] for row in tx.all("SELECT id FROM withdrawals WHERE completed_at IS NULL")
            ]
            if not open_ids:
                return 0
            remaining = {
                w.withdrawal_id
                for item in self._coverable(tx, "w.completed_at IS NULL", ())
                for w in item.withdrawals
                if coverage(w, item.item) is Coverage.DELETE
            }
            for withdrawal_id in open_ids:
                if withdrawal_id in remaining or withdrawal_id in waiting:
                    continue
                tx.run(
                    "UPDATE withdrawals SET completed_at = ? WHERE id = ?", (ts(now), withdrawal_id)
                )
                completed += 1
                counts = tx.one(
                    "SELECT SUM(action = 'deleted') AS deleted, SUM(action = 'kept') AS kept "
                    "FROM withdrawal_recordings WHERE withdrawal_id = ?",
                    (withdrawal_id,),
                )
                self._audit(
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

        if await self._db.write(body, "completing withdrawals"):
            await self._checkpoint_after(now, "completing withdrawals")

    # ------------------------------------------------------------------ sweep

    async def sweep(
        self,
        now: datetime,
        *,
        dry_run: bool = False,
        progress: Progress | None = None,
        on_deleted: Callable[[Sequence[str]], None] | None = None,
    ) -> SweepReport:
        """Delete every recording due at `now` (see the module's docstring for the order of
        things). With `on_deleted`, each batch's ids go to it as soon as their deletion is
        committed (on a dry run: as they are listed) and the report keeps none of them, so
        a sweep's memory does not grow with the number of recordings it deletes."""
        when = ts(now)
        tell = progress or _silent

        Key = tuple[str, str]  # (delete_after, id) of the last recording of a page

        def page(after: Key) -> Callable[[Tx], tuple[list[str], Key, list[_Doomed]]]:
            # Pages in (delete_after, id) order, each after the last: memory stays flat
            # however many are due, and a recording that cannot be deleted is not met again.
            def body(tx: Tx) -> tuple[list[str], Key, list[_Doomed]]:
                rows = tx.all(
                    "SELECT id, delete_after FROM recordings WHERE status != 'deleted' "
                    "AND delete_after <= ? AND (delete_after, id) > (?, ?) "
                    "ORDER BY delete_after, id LIMIT ?",
                    (when, *after, SWEEP_BATCH),
                )
                last = (rows[-1]["delete_after"], rows[-1]["id"]) if rows else after
                ids = [row["id"] for row in rows]
                return ids, last, ([] if dry_run else self._doomed(tx, ids))

            return body

        after: Key = ("", "")
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

        async with self._files:
            total = await self._db.read(
                lambda tx: int(
                    tx.all(
                        "SELECT COUNT(*) FROM recordings WHERE status != 'deleted' "
                        "AND delete_after <= ?",
                        (when,),
                    )[0][0]
                ),
                "counting due recordings",
            )
            tell(0, total)
            if dry_run:
                while True:
                    ids, after, _ = await self._db.read(page(after), "listing due recordings")
                    if not ids:
                        return SweepReport(tuple(deleted), True, now, count)
                    hand_over(ids)
                    tell(count, total)
            # Pipelined: while batch k's files are removed (a worker thread), batch k-1's
            # rows are committed and batch k+1 is listed (the ledger's thread). Each batch
            # still commits only after its own files are gone and their directories fsync'd.
            # A copy listed for k+1 that batch k removes is found absent, which is fine.
            ids, after, doomed = await self._db.read(page(after), "listing due recordings")
            previous: _Removed | None = None
            while ids:
                committing = (
                    None
                    if previous is None
                    else asyncio.create_task(self._record_removed(previous, now, "retention"))
                )
                listing = asyncio.create_task(self._db.read(page(after), "listing due recordings"))
                try:
                    removals = await self._in_thread(
                        "removing expired recordings", _remove_files, doomed
                    )
                finally:
                    # Both ledger jobs are awaited whatever fails, so that none is left behind.
                    try:
                        if committing is not None:
                            tally(await committing)
                    finally:
                        following = await listing
                previous = _Removed([_Target(i, None) for i in ids], doomed, removals)
                ids, after, doomed = following
            if previous is not None:
                tally(await self._record_removed(previous, now, "retention"))
            problems += await self._retry_copies(now)
            _, withdrawal_problems = await self._enforce_withdrawals(now, everyone=True)
            problems += withdrawal_problems
            await self._scrub_calls(now)
        return SweepReport(tuple(deleted), False, now, count, tuple(problems))

    async def _scrub_calls(self, now: datetime) -> None:
        """Calls past the retention period keep their line, times and decision for the
        report, not the numbers: no call outlives its recording as personal data."""

        def body(tx: Tx) -> None:
            tx.run(
                "UPDATE calls SET caller = NULL, dialed = NULL, customer = NULL, "
                "recording_file = NULL, scrubbed = 1 WHERE scrubbed = 0 AND purge_after <= ?",
                (ts(now),),
            )

        await self._db.write(body, "removing old calls' numbers")

    # -------------------------------------------------------------- withdrawal

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
        if sum(x is not None for x in (caller, call_id, recording_id)) != 1:
            raise CallrecError(
                "a withdrawal names the caller's number, a call or a recording: exactly one"
            )
        number = (
            None if caller is None else normalise(caller, country_code=self.policy.country_code)
        )
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
        who = _person(registered_by, "who registers the withdrawal")
        if received_at > now:
            raise CallrecError(
                f"a withdrawal cannot be received ({ts(received_at)}) after it is "
                f"registered ({ts(now)})"
            )
        deadline = withdrawal_deadline(
            received_at,
            working_days=self.policy.withdrawal_working_days,
            tz=self.policy.timezone,
            cutoff=self.policy.receipt_cutoff,
        )
        withdrawal_id = secrets.token_hex(16)

        def register(tx: Tx) -> None:
            communication = (
                None if number is not None else _communication_named(tx, call_id, recording_id)
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
                for item in self._coverable(tx, "w.id = ?", (withdrawal_id,))
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
                {"caller": self._pseudo(number)}
                if number is not None
                else {"communication": communication or ""}
            )
            self._audit(
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

        async with self._files:
            await self._db.write(register, "registering a withdrawal")
            await self._enforce_withdrawals(now, withdrawal_id=withdrawal_id, complete=True)
        row = await self._withdrawal(withdrawal_id)
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

    async def _withdrawal(self, withdrawal_id: str) -> WithdrawalRow:
        rows = await self._withdrawal_rows("WHERE id = ?", (withdrawal_id,))
        if not rows:
            raise NotFoundError(f"no withdrawal {shown(withdrawal_id)}")
        return rows[0]

    async def _withdrawal_rows(self, where: str, params: Sequence[Any]) -> list[WithdrawalRow]:
        def body(tx: Tx) -> tuple[list[sqlite3.Row], list[sqlite3.Row]]:
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

        rows, items = await self._db.read(body, "reading withdrawals")
        deleted: dict[str, list[str]] = {}
        kept: dict[str, list[tuple[str, str]]] = {}
        for item in items:
            if item["action"] == "deleted":
                deleted.setdefault(item["withdrawal_id"], []).append(item["recording_id"])
            else:
                kept.setdefault(item["withdrawal_id"], []).append(
                    (item["recording_id"], item["why"])
                )
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

    async def withdrawals(self) -> list[WithdrawalRow]:
        return await self._withdrawal_rows("", ())

    # ------------------------------------------------------- access and export

    def _log_access(
        self,
        tx: Tx,
        now: datetime,
        who: str,
        purpose: str,
        recording_id: str,
        allowed: bool,
        reason: str,
    ) -> None:
        tx.run(
            "INSERT INTO access_log (at, who, purpose, recording_id, allowed, reason) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (ts(now), who, purpose, recording_id[:64], int(allowed), reason),
        )

    def _refusal(self, row: RecordingRow | None, recording_id: str, purpose: Purpose) -> str:
        """Why `row` may not serve `purpose`, or "" when it may."""
        if row is None:
            return f"no recording {shown(recording_id)}"
        if row.status is RecordingStatus.DELETED:
            when = "" if row.deleted_at is None else f" on {ts(row.deleted_at)}"
            return f"recording {row.id} was deleted{when} ({row.deletion_reason})"
        if row.status is RecordingStatus.EMPTY:
            return f"recording {row.id} is empty: nothing was recorded"
        if row.status is RecordingStatus.MISSING:
            return f"recording {row.id}: its file is missing"
        if not may_serve(row.legal_basis, purpose, row.purposes):
            allowed = ", ".join(sorted(p.value for p in row.purposes & ALLOWED[row.legal_basis]))
            return (
                f"purpose {purpose.value!r} does not fit recording {row.id} "
                f"(legal basis {row.legal_basis.value}; it may serve only: {allowed})"
            )
        return ""

    @staticmethod
    def _purpose(purpose: Purpose | str) -> Purpose:
        try:
            return Purpose(purpose)
        except ValueError:
            raise AccessRefused(f"unknown purpose {shown(str(purpose))}") from None

    async def access(self, recording_id: str, purpose: Purpose, who: str, now: datetime) -> Path:
        person = _person(who, "who accesses a recording")
        ts(now)
        try:
            wanted = self._purpose(purpose)
        except AccessRefused as error:
            await self._refuse_logged(now, person, str(purpose)[:32], recording_id, str(error))
            raise
        row = await self.recording(recording_id)
        refusal = self._refusal(row, recording_id, wanted)
        if not refusal and row is not None and row.path is not None:
            path = Path(row.path)
            try:
                size = (await asyncio.to_thread(os.stat, path)).st_size
            except OSError:
                size = -1
            if size != row.size:
                refusal = f"recording {row.id}: its file is missing or truncated"
                await self._refuse_logged(now, person, wanted.value, recording_id, refusal)
                raise IntegrityError(refusal)
        if refusal:
            await self._refuse_logged(now, person, wanted.value, recording_id, refusal)
            if row is None:
                raise NotFoundError(refusal)
            if row.status is RecordingStatus.MISSING:
                raise IntegrityError(refusal)
            raise AccessRefused(refusal)
        assert row is not None and row.path is not None  # no refusal: a stored file

        def body(tx: Tx) -> None:
            self._log_access(
                tx, now, person, wanted.value, row.id, True, f"fits {row.legal_basis.value}"
            )

        await self._db.write(body, "logging an access")
        return Path(row.path)

    async def _refuse_logged(
        self, now: datetime, who: str, purpose: str, recording_id: str, reason: str
    ) -> None:
        def body(tx: Tx) -> None:
            self._log_access(tx, now, who, purpose, recording_id, False, reason)

        await self._db.write(body, "logging a refused access")

    async def export(
        self,
        recording_ids: list[str],
        dest: Path,
        purpose: Purpose,
        who: str,
        now: datetime,
        *,
        progress: Progress | None = None,
    ) -> Path:
        """Copy the recordings and a `manifest.json` (metadata, SHA-256, their audit entries)
        into a new directory under `dest`; every file is registered as a copy first, so
        retention and withdrawals delete it with the original. All or nothing."""
        person = _person(who, "who exports recordings")
        wanted = self._purpose(purpose)
        if not recording_ids:
            raise CallrecError("export: name at least one recording")
        ids = list(dict.fromkeys(recording_ids))
        async with self._files:
            rows: list[RecordingRow] = []
            for recording_id in ids:
                row = await self.recording(recording_id)
                refusal = self._refusal(row, recording_id, wanted)
                if refusal:
                    await self._refuse_logged(now, person, wanted.value, recording_id, refusal)
                    if row is None:
                        raise NotFoundError(f"export refused: {refusal}")
                    raise AccessRefused(f"export refused: {refusal}")
                assert row is not None
                rows.append(row)
            export_id = secrets.token_hex(16)
            base = await asyncio.to_thread(Path(dest).absolute)
            folder = base / f"callrec-export-{export_id}"
            targets = [(row, folder / f"{row.id}{Path(row.path or '').suffix}") for row in rows]
            manifest_path = folder / MANIFEST

            def register(tx: Tx) -> None:
                tx.run(
                    "INSERT INTO exports (export_id, dir, purpose, who, created_at, state) "
                    "VALUES (?, ?, ?, ?, ?, 'writing')",
                    (export_id, str(folder), wanted.value, person, ts(now)),
                )
                tx.many(
                    "INSERT INTO export_files (export_id, recording_id, path, sha256) "
                    "VALUES (?, ?, ?, ?)",
                    [(export_id, row.id, str(path), row.sha256) for row, path in targets]
                    + [(export_id, None, str(manifest_path), None)],
                )
                for row in rows:
                    self._log_access(
                        tx, now, person, wanted.value, row.id, True, f"export {export_id}"
                    )

            await self._db.write(register, "registering an export")
            try:
                await self._write_export(
                    export_id, folder, targets, manifest_path, wanted, person, now,
                    progress or _silent,
                )  # fmt: skip
            except BaseException:
                await self._abandon_export(export_id, now)
                raise
            return folder

    async def _write_export(
        self,
        export_id: str,
        folder: Path,
        targets: list[tuple[RecordingRow, Path]],
        manifest_path: Path,
        purpose: Purpose,
        who: str,
        now: datetime,
        tell: Progress,
    ) -> None:
        await self._in_thread(f"creating {folder}", files.private_dir, folder)
        entries: list[dict[str, Any]] = []
        tell(0, len(targets))
        for copied, (row, path) in enumerate(targets, start=1):
            assert row.path is not None
            digest, size = await self._in_thread(
                f"copying recording {row.id}", files.copy_durably, Path(row.path), path
            )
            if digest != row.sha256 or size != row.size:
                raise IntegrityError(
                    f"recording {row.id} no longer matches its SHA-256 in the ledger: "
                    "not exported (run `callrec recordings verify`)"
                )
            tell(copied, len(targets))
            audit = await self.audit_entries(subject=row.id)
            audit += await self.audit_entries(subject=row.call_id)
            audit.sort(key=lambda entry: entry.seq)
            entries.append(
                {
                    "id": row.id,
                    "file": path.name,
                    "sha256": row.sha256,
                    "size": row.size,
                    "call_id": row.call_id,
                    "line": row.line,
                    "legal_basis": row.legal_basis.value,
                    "caller": row.caller,
                    "dialed": row.dialed,
                    "created_at": row.created_at.isoformat(),
                    "delete_after": row.delete_after.isoformat(),
                    "linked_to": row.linked_to,
                    "purposes": sorted(p.value for p in row.purposes),
                    "audit": [
                        {
                            "seq": entry.seq,
                            "at": entry.at.isoformat(),
                            "action": entry.action,
                            "subject": entry.subject,
                            "details": entry.details,
                            "prev_hash": entry.prev_hash,
                            "hash": entry.hash,
                        }
                        for entry in audit
                    ],
                }
            )
        manifest = {
            "export_id": export_id,
            "created_at": now.isoformat(),
            "purpose": purpose.value,
            "exported_by": who,
            "hash_chain": "sha256(prev_hash + canonical JSON of seq, at, action, subject, "
            "details; sorted keys, no spaces)",
            "recordings": entries,
        }
        data = json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8")
        digest = await self._in_thread(
            f"writing {manifest_path}", files.write_durably, manifest_path, data
        )

        def done(tx: Tx) -> None:
            tx.run(
                "UPDATE export_files SET sha256 = ? WHERE export_id = ? AND recording_id IS NULL",
                (digest, export_id),
            )
            tx.run("UPDATE exports SET state = 'done' WHERE export_id = ?", (export_id,))
            self._audit(
                tx,
                now,
                "export.created",
                export_id,
                {
                    "recordings": ",".join(row.id for row, _ in targets),
                    "purpose": purpose.value,
                    "by": who,
                },
            )

        await self._db.write(done, "finishing an export")

    async def _abandon_export(self, export_id: str, now: datetime) -> None:
        """Remove every file of an unfinished export (they are registered before written)."""

        def read(tx: Tx) -> list[sqlite3.Row]:
            return tx.all(
                "SELECT id, path FROM export_files WHERE export_id = ? AND deleted_at IS NULL",
                (export_id,),
            )

        removed: list[int] = []
        folders: set[Path] = set()
        for copy in await self._db.read(read, "reading an unfinished export"):
            with contextlib.suppress(OSError):
                await asyncio.to_thread(files.remove, Path(copy["path"]))
                removed.append(int(copy["id"]))
            folders.add(Path(copy["path"]).parent)

        def clear(folder: Path) -> None:
            for leftover in folder.glob(f".*{files.TEMP_SUFFIX}"):
                with contextlib.suppress(OSError):
                    files.remove(leftover)
            with contextlib.suppress(OSError):
                folder.rmdir()

        for folder in folders:
            await asyncio.to_thread(clear, folder)

        def body(tx: Tx) -> None:
            self._mark_copies_in(tx, removed, now)
            self._audit(tx, now, "export.abandoned", export_id, {})

        await self._db.write(body, "abandoning an export")

    # ------------------------------------------------------------------ verify

    async def verify(
        self, *, progress: Progress | None = None, checkpoint_file: Path | None = None
    ) -> VerifyReport:
        """Every file against its hash, the audit chain against its key and the signed
        checkpoints (the store's own, or a copy kept elsewhere: `checkpoint_file`), and the
        ledger's triggers and bookkeeping."""
        tell = progress or _silent
        problems: list[str] = []
        checked = 0
        last = 0
        anchors = checkpoint_file or self.checkpoints_dir / checkpoints.CHECKPOINT_FILE
        found, unreadable = await asyncio.to_thread(checkpoints.read, anchors)
        public = self._audit_keys.signing.public_key()
        good, unsigned = checkpoints.signed(found, public)
        keyed_from = await self._db.read(
            lambda tx: tx.all(chain.FIRST_KEYED_SQL)[0][0], "finding the keyed chain's start"
        )
        checker = chain.ChainChecker(self._audit_keys.mac, keyed_from, {c.seq for c in good})

        def count(tx: Tx) -> int:
            return sum(
                int(tx.all(sql)[0][0])
                for sql in (
                    "SELECT COUNT(*) FROM audit",
                    "SELECT COUNT(*) FROM recordings WHERE status IN ('stored', 'missing')",
                    "SELECT COUNT(*) FROM export_files f JOIN exports e ON e.export_id = "
                    "f.export_id WHERE f.deleted_at IS NULL AND e.state = 'done'",
                )
            )

        total = await self._db.read(count, "counting what to verify")
        tell(0, total)
        while True:

            def batch(tx: Tx, after: int = last) -> list[sqlite3.Row]:
                return tx.all(
                    "SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after, AUDIT_BATCH),
                )

            rows = await self._db.read(batch, "reading the audit log")
            if not rows:
                break
            for row in rows:
                entry, body = self._audit_entry(row, problems)
                if entry is not None:
                    checker.feed(entry, body)
                last = int(row["seq"])
                checked += 1
            tell(checked, total)
        problems += checker.problems
        status, anchored = checkpoints.against_chain(
            anchors,
            good,
            len(unreadable) + len(unsigned),
            checker.hashes,
            checker.last_seq,
        )
        problems += unreadable + unsigned + anchored
        problems += await asyncio.to_thread(self._public_key_problems)

        def state(tx: Tx) -> tuple[list[Any], ...]:
            return (
                integrity.trigger_problems(tx) + integrity.bookkeeping_problems(tx),
                tx.all(
                    "SELECT id, path, sha256, size, status FROM recordings "
                    "WHERE status IN ('stored', 'missing')"
                ),
                tx.all(
                    "SELECT f.path, f.sha256, f.recording_id FROM export_files f JOIN exports e "
                    "ON e.export_id = f.export_id WHERE f.deleted_at IS NULL AND e.state = 'done'"
                ),
                tx.all("SELECT call_id, dest FROM pending_ingests"),
            )

        ledger, recordings, copies, pending = await self._db.read(state, "verifying")
        problems += ledger
        known: set[Path] = set()
        for row in recordings:
            checked += 1
            path = self._abs(row["path"])
            known.add(path)
            if row["status"] == RecordingStatus.MISSING.value:
                problems.append(f"recording {row['id']}: file missing (flagged by reconcile)")
                continue
            problems += await self._check_file(
                f"recording {row['id']}", path, row["sha256"], row["size"]
            )
            tell(checked, total)
        for row in copies:
            checked += 1
            what = f"export copy of {row['recording_id']}" if row["recording_id"] else "manifest"
            problems += await self._check_file(what, Path(row["path"]), row["sha256"], None)
            tell(checked, total)
        for row in pending:
            known.add(self._abs(row["dest"]))
            problems.append(f"call {row['call_id']}: ingest not finished (reconcile finishes it)")
        for path in await asyncio.to_thread(self._store_files):
            if path not in known:
                problems.append(f"store: {self._rel(path)} belongs to no recording")
        problems += await self._spool_leftovers()
        return VerifyReport(checked, tuple(problems), status)

    def _public_key_problems(self) -> list[str]:
        path = self.data_dir / checkpoints.PUBLIC_KEY_FILE
        try:
            published = path.read_bytes()
        except OSError as error:
            return [f"checkpoints: the public key {path} is unreadable ({error.strerror})"]
        if published != checkpoints.public_pem(self._audit_keys.signing):
            return [f"checkpoints: {path} is not the public half of the store's signing key"]
        return []

    # ------------------------------------------------------------- checkpoints

    async def audit_head(self) -> tuple[int, str]:
        """(entries in the audit chain, the last one's hash)."""
        return await self._db.read(chain.head, "reading the audit chain's head")

    async def checkpoint(self, now: datetime) -> checkpoints.Checkpoint:
        """Sign the audit chain's head as of `now` and append it to the checkpoint file."""
        seq, head = await self.audit_head()
        signed = checkpoints.sign(self._audit_keys.signing, seq, head, ts(now))
        await self._in_thread(
            f"writing a checkpoint to {self.checkpoints_dir}",
            checkpoints.append,
            self.checkpoints_dir,
            signed,
        )
        return signed

    async def _checkpoint_after(self, now: datetime, what: str) -> None:
        """A checkpoint after committed work (a deletion batch, a completed withdrawal).
        The work stands whether or not its checkpoint can be written: raising here would
        tell the operator it failed and invite a second withdrawal. The failure is logged;
        the controller's next scheduled checkpoint covers the entries, and until then
        `verify` reports them as entries after the latest checkpoint."""
        try:
            await self.checkpoint(now)
        except StorageError as error:
            log.error("no checkpoint after %s (the next one will cover it): %s", what, error)

    def checkpoint_public_key(self) -> bytes:
        """The key that checks this store's checkpoints (PEM), for whoever checks them."""
        return checkpoints.public_pem(self._audit_keys.signing)

    def _audit_entry(self, row: sqlite3.Row, problems: list[str]) -> tuple[AuditEntry | None, str]:
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

    async def _check_file(
        self, what: str, path: Path, sha256: str | None, size: int | None
    ) -> list[str]:
        try:
            digest, actual = await asyncio.to_thread(files.hash_file, path)
        except FileNotFoundError:
            return [f"{what}: file missing ({path})"]
        except OSError as error:
            return [f"{what}: unreadable ({error.strerror or error})"]
        if size is not None and actual != size:
            return [f"{what}: {actual} bytes, the ledger says {size} (truncated or altered)"]
        if sha256 is not None and digest != sha256:
            return [f"{what}: content changed (SHA-256 does not match the ledger)"]
        return []

    def _store_files(self) -> list[Path]:
        return sorted(p for p in self.recordings_dir.rglob("*") if not p.is_dir())

    async def _spool_leftovers(self) -> list[str]:
        spool = self.spool_dir
        if spool is None or not await asyncio.to_thread(spool.is_dir):
            return []
        names = await asyncio.to_thread(lambda: sorted(p for p in spool.iterdir()))
        problems: list[str] = []
        for path in names:
            call = await self._call_of_spool_file(path)
            if call is None or call["ended_at"] is not None:
                problems.append(f"spool: {path.name} is not in the store (reconcile takes it)")
        return problems

    async def _call_of_spool_file(self, path: Path) -> sqlite3.Row | None:
        def body(tx: Tx) -> sqlite3.Row | None:
            row = tx.one("SELECT * FROM calls WHERE recording_file = ?", (str(path),))
            if row is None and CALL_ID.match(path.stem):
                row = tx.one("SELECT * FROM calls WHERE call_id = ?", (path.stem,))
            return row

        return await self._db.read(body, "finding a spool file's call")

    # --------------------------------------------------------------- reconcile

    async def reconcile(
        self,
        spool: Path,
        now: datetime,
        *,
        longest_call: timedelta | None = None,
        finished: Callable[[Path], bool] | None = None,
    ) -> ReconcileReport:
        """Run at start: finish what a crash interrupted and account for every file.

        `longest_call`: a call open for longer is closed (its end was never reported) and its
        file ingested. `finished(path)`: whether the writer is done with a spool file; one
        that may still be written is left for the controller, never hashed (default: all
        are finished)."""
        ts(now)
        report = _Reconciling()
        async with self._files:
            await self._resume_ingests(now, report.resumed, report.flagged)
            await self._resume_exports(now, report.resumed)
            await self._remove_temp_files(report.resumed)
            report.failed += await self._fail_closed(now)
            if longest_call is not None:
                for call_id in await self.close_stale_calls(now - longest_call, now):
                    report.flagged.append(
                        f"call {call_id}: no end was reported for longer than any call "
                        f"({longest_call}); closed"
                    )
            spool = Path(spool)
            if await asyncio.to_thread(spool.is_dir):
                await self._adopt_spool(spool, now, report, finished)
            await self._check_stored(now, report.flagged, report.resumed)
            await self._flag_calls_without_file(report.flagged)
            deleted, problems = await self._enforce_withdrawals(now, everyone=True)
            report.resumed += [f"recording {rid} deleted for a withdrawal" for rid in deleted]
            report.flagged += problems
        return ReconcileReport(
            ingested=tuple(report.ingested),
            deleted_unowned=tuple(report.unowned),
            flagged=tuple(report.flagged),
            failed_closed=tuple(report.failed),
            resumed=tuple(report.resumed),
        )

    async def _resume_ingests(self, now: datetime, resumed: list[str], flagged: list[str]) -> None:
        def read(tx: Tx) -> list[sqlite3.Row]:
            return tx.all("SELECT * FROM pending_ingests ORDER BY started_at")

        for pending in await self._db.read(read, "listing unfinished ingests"):
            try:
                row = await self._finish_pending(pending, now)
            except StorageError as error:
                flagged.append(f"call {pending['call_id']}: ingest not finished: {error}")
                continue
            if row is not None and row.status is RecordingStatus.MISSING:
                flagged.append(
                    f"call {pending['call_id']}: its recording was being stored and neither "
                    "the spool file nor the stored file exists (recording marked missing)"
                )
            else:
                resumed.append(f"call {pending['call_id']}: ingest finished")

    async def _resume_exports(self, now: datetime, resumed: list[str]) -> None:
        def read(tx: Tx) -> list[sqlite3.Row]:
            return tx.all("SELECT export_id FROM exports WHERE state = 'writing'")

        for row in await self._db.read(read, "listing unfinished exports"):
            await self._abandon_export(row["export_id"], now)
            resumed.append(f"export {row['export_id']}: unfinished, its files removed")

    async def _remove_temp_files(self, resumed: list[str]) -> None:
        def sweep_temps() -> list[Path]:
            found = sorted(self.recordings_dir.rglob(f".*{files.TEMP_SUFFIX}"))
            for path in found:
                files.remove(path)
            return found

        for path in await self._in_thread("removing temporary files", sweep_temps):
            resumed.append(f"store: removed the temporary file {self._rel(path)}")

    async def _fail_closed(self, now: datetime) -> list[str]:
        """Open calls without a committed decision: nothing may be recorded for them, and
        their caller did not finish the notice (so no callback treats them as missed)."""

        def body(tx: Tx) -> list[str]:
            rows = tx.all("SELECT call_id FROM calls WHERE ended_at IS NULL AND decided_at IS NULL")
            ids = [str(row["call_id"]) for row in rows]
            for call_id in ids:
                tx.run(
                    "UPDATE calls SET ended_at = ?, outcome = ?, reason = ? WHERE call_id = ?",
                    (
                        ts(now),
                        Outcome.ABANDONED_IN_PROMPT.value,
                        "controller restarted before a decision: not recorded",
                        call_id,
                    ),
                )
                self._audit(
                    tx, now, "call.failed_closed", call_id, {"reason": "no committed decision"}
                )
            return ids

        return await self._db.write(body, "closing calls without a decision")

    async def _adopt_spool(
        self,
        spool: Path,
        now: datetime,
        report: _Reconciling,
        finished: Callable[[Path], bool] | None,
    ) -> None:
        paths = await asyncio.to_thread(lambda: sorted(spool.iterdir()))
        for path in paths:
            if await asyncio.to_thread(path.is_symlink):
                # Never followed: it could point at any file of the machine.
                await self._in_thread(f"removing {path}", files.remove, path)
                report.flagged.append(f"spool: removed a symbolic link {shown(path.name)}")
                continue
            if await asyncio.to_thread(path.is_dir):
                continue
            call = await self._call_of_spool_file(path)
            if call is None or call["decision"] != Decision.RECORD.value:
                call_id = None if call is None else str(call["call_id"])
                why = "no such call" if call is None else f"decision {call['decision']}"
                await self._discard(call_id or "unknown", path, now, why)
                report.unowned.append(call_id or shown(path.name))
                continue
            call_id = str(call["call_id"])

            def stored(tx: Tx, cid: str = call_id) -> sqlite3.Row | None:
                return tx.one("SELECT * FROM recordings WHERE call_id = ?", (cid,))

            existing = await self._db.read(stored, "reading a recording")
            if existing is not None:
                await self._tidy_source(existing, path)
                if await asyncio.to_thread(path.exists):
                    report.flagged.append(
                        f"spool: {shown(path.name)} differs from the stored recording of "
                        f"call {call_id}; left for a look"
                    )
                else:
                    report.resumed.append(f"call {call_id}: leftover spool copy removed")
                continue
            if call["ended_at"] is None:
                report.flagged.append(
                    f"call {call_id}: still open, its recording stays in the spool"
                )
                continue
            if finished is not None and not await asyncio.to_thread(finished, path):
                report.flagged.append(
                    f"call {call_id}: its recording may still be written; left in the spool "
                    "for the controller"
                )
                continue
            try:
                row = await self._ingest(call_id, path, now)
            except StorageError as error:
                report.flagged.append(f"call {call_id}: not ingested: {error}")
                continue
            if row is not None:
                report.ingested.append(call_id)

    async def _check_stored(self, now: datetime, flagged: list[str], resumed: list[str]) -> None:
        def read(tx: Tx) -> list[sqlite3.Row]:
            return tx.all(
                "SELECT id, call_id, path, sha256, status FROM recordings "
                "WHERE path IS NOT NULL AND status IN ('stored', 'missing')"
            )

        rows = await self._db.read(read, "listing stored recordings")
        exists = await asyncio.to_thread(lambda: [self._abs(r["path"]).exists() for r in rows])
        referenced = {self._abs(r["path"]) for r in rows}
        for row, present in zip(rows, exists, strict=True):
            status = row["status"]
            if status == RecordingStatus.STORED.value and not present:
                await self._set_status(row["id"], RecordingStatus.MISSING, now)
                flagged.append(f"recording {row['id']} (call {row['call_id']}): file missing")
            elif status == RecordingStatus.MISSING.value and present:
                digest, _ = await self._in_thread(
                    "reading a reappeared file", files.hash_file, self._abs(row["path"])
                )
                if row["sha256"] is not None and digest == row["sha256"]:
                    await self._set_status(row["id"], RecordingStatus.STORED, now)
                    resumed.append(f"recording {row['id']}: its file is back and matches")
                else:
                    flagged.append(f"recording {row['id']}: a different file is at its path")
        orphans = [p for p in await asyncio.to_thread(self._store_files) if p not in referenced]
        if orphans:
            await self._place_orphans(orphans, now, flagged, resumed)

    async def _place_orphans(
        self, orphans: list[Path], now: datetime, flagged: list[str], resumed: list[str]
    ) -> None:
        """A file in the store no row points at. If its name is a recording that was
        deleted (a restored backup), the ledger says it must be gone; otherwise flag it."""
        for path in orphans:

            def read(tx: Tx, stem: str = path.stem) -> sqlite3.Row | None:
                return tx.one("SELECT id, status FROM recordings WHERE id = ?", (stem,))

            row = await self._db.read(read, "identifying a file in the store")
            if row is not None and row["status"] == RecordingStatus.DELETED.value:
                await self._in_thread(f"removing {path}", files.remove, path)

                def body(tx: Tx, recording_id: str = row["id"]) -> None:
                    self._audit(
                        tx,
                        now,
                        "recording.deleted",
                        recording_id,
                        {"reason": "reappeared after its deletion", "file": "removed"},
                    )

                await self._db.write(body, "deleting a reappeared recording")
                await self._checkpoint_after(now, "deleting a reappeared recording")
                resumed.append(f"recording {row['id']}: deleted again (it had reappeared)")
            else:
                flagged.append(f"store: {self._rel(path)} belongs to no recording")

    async def _set_status(self, recording_id: str, status: RecordingStatus, now: datetime) -> None:
        def body(tx: Tx) -> None:
            tx.run("UPDATE recordings SET status = ? WHERE id = ?", (status.value, recording_id))
            self._audit(tx, now, f"recording.{status.value}", recording_id, {})

        await self._db.write(body, f"marking recording {recording_id} {status.value}")

    async def _flag_calls_without_file(self, flagged: list[str]) -> None:
        """Told to record, ended, and no file ever arrived: said once, not at every start."""

        def read(tx: Tx) -> list[sqlite3.Row]:
            return tx.all(
                "SELECT c.call_id, c.recording_file FROM calls c "
                "WHERE c.recording_file IS NOT NULL "
                "AND c.ended_at IS NOT NULL AND c.file_flagged = 0 "
                "AND NOT EXISTS (SELECT 1 FROM recordings r WHERE r.call_id = c.call_id) "
                "AND NOT EXISTS (SELECT 1 FROM pending_ingests p WHERE p.call_id = c.call_id)"
            )

        rows = await self._db.read(read, "checking calls without a file")
        # A file still in the spool (left for the controller) has arrived: not flagged.
        present = await asyncio.to_thread(
            lambda: [os.path.lexists(row["recording_file"]) for row in rows]
        )
        ids = [str(row["call_id"]) for row, here in zip(rows, present, strict=True) if not here]

        def body(tx: Tx) -> None:
            tx.many("UPDATE calls SET file_flagged = 1 WHERE call_id = ?", [(i,) for i in ids])

        await self._db.write(body, "flagging calls without a file")
        for call_id in ids:
            flagged.append(f"call {call_id}: recording was started but no file arrived")

    # ----------------------------------------------------------------- queries

    async def recordings(self, *, include_deleted: bool = False) -> list[RecordingRow]:
        where = "" if include_deleted else "WHERE status != 'deleted'"

        def body(tx: Tx) -> list[sqlite3.Row]:
            return tx.all(
                f"SELECT * FROM recordings {where} ORDER BY created_at, id"  # noqa: S608
            )

        return [self._recording(row) for row in await self._db.read(body, "listing recordings")]

    async def recording(self, recording_id: str) -> RecordingRow | None:
        def body(tx: Tx) -> sqlite3.Row | None:
            return tx.one("SELECT * FROM recordings WHERE id = ?", (recording_id,))

        row = await self._db.read(body, "reading a recording")
        return None if row is None else self._recording(row)

    async def audit_entries(self, subject: str | None = None) -> list[AuditEntry]:
        def body(tx: Tx) -> list[sqlite3.Row]:
            if subject is None:
                return tx.all("SELECT * FROM audit ORDER BY seq")
            return tx.all("SELECT * FROM audit WHERE subject = ? ORDER BY seq", (subject,))

        entries: list[AuditEntry] = []
        problems: list[str] = []
        for row in await self._db.read(body, "reading the audit log"):
            entry, _ = self._audit_entry(row, problems)
            if entry is not None:
                entries.append(entry)
        return entries

    async def access_log(self, recording_id: str | None = None) -> list[AccessRecord]:
        def body(tx: Tx) -> list[sqlite3.Row]:
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
            for row in await self._db.read(body, "reading the access log")
        ]

    async def callbacks_due(self, now: datetime) -> list[CallbackDue]:
        window = self.policy.callback_window

        def body(tx: Tx) -> list[sqlite3.Row]:
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
        for row in await self._db.read(body, "listing callbacks due"):
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

    async def report(self, start: datetime, end: datetime) -> Report:
        lo, hi = ts(start), ts(end)

        def body(tx: Tx) -> dict[str, list[sqlite3.Row]]:
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
                    "SELECT SUM(size > 0) AS made, SUM(size = 0) AS empty FROM recordings "
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

        data = await self._db.read(body, "building the report")
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
                    within_window=ended is not None
                    and called - ended <= self.policy.callback_window,
                )
            )
        withdrawals = await self._withdrawal_rows(
            "WHERE received_at >= ? AND received_at < ?", (lo, hi)
        )
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
