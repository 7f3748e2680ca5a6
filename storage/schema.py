"""The ledger's schema as versioned migrations.

Migration N (1-based) is `MIGRATIONS[N - 1]`, a list of SQL statements applied in one
transaction together with the new row of `schema_version`. A database records the highest
migration applied; opening an older one applies the rest, opening a newer one is refused
(an older program must not write tables it does not understand).

Times are ISO-8601 UTC text with microseconds and a `Z` (`storage.timefmt`), so text order
is time order and every index on a time column is a range index.

A step that needs more than SQL (the audit key, to start the keyed chain) is a `PythonStep`
in the list; whoever migrates supplies its runner, and without one the migration stops
before it changes anything.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import aiosqlite

from flows.errors import StorageError


@dataclass(frozen=True, slots=True)
class PythonStep:
    name: str


Step = str | PythonStep
StepRunner = Callable[[aiosqlite.Connection], Awaitable[None]]

LEDGER: tuple[str, ...] = (
    """CREATE TABLE calls (
        call_id        TEXT PRIMARY KEY,
        channel_id     TEXT NOT NULL,
        direction      TEXT NOT NULL,
        line           TEXT,
        caller         TEXT,
        dialed         TEXT,
        customer       TEXT,          -- E.164 of the customer: caller inbound, dialed otherwise
        started_at     TEXT NOT NULL,
        purge_after    TEXT NOT NULL, -- the numbers go when a recording of this call would
        ended_at       TEXT,
        outcome        TEXT,
        decision       TEXT NOT NULL DEFAULT 'none',
        decided_at     TEXT,
        digit          TEXT,
        legal_basis    TEXT,
        prompt         TEXT,
        prompt_sha256  TEXT,
        reason         TEXT,
        linked_to      TEXT,
        parent_call_id TEXT,
        recording_file TEXT,
        file_flagged   INTEGER NOT NULL DEFAULT 0,
        scrubbed       INTEGER NOT NULL DEFAULT 0
    )""",
    # The callback lookup: equality on the customer, range on ended_at, newest first.
    """CREATE INDEX calls_missed ON calls (customer, ended_at)
        WHERE outcome = 'missed' AND direction = 'inbound'""",
    "CREATE INDEX calls_open ON calls (started_at) WHERE ended_at IS NULL",
    "CREATE INDEX calls_started ON calls (started_at)",
    # "Has the customer been answered since?" for the list of callbacks due.
    "CREATE INDEX calls_customer ON calls (customer, started_at)",
    "CREATE INDEX calls_purge ON calls (purge_after) WHERE scrubbed = 0",
    """CREATE INDEX calls_recording_file ON calls (recording_file)
        WHERE recording_file IS NOT NULL""",
    """CREATE TABLE callbacks (
        callback_call_id TEXT PRIMARY KEY REFERENCES calls (call_id),
        missed_call_id   TEXT NOT NULL REFERENCES calls (call_id),
        window_seconds   REAL,
        overload         INTEGER NOT NULL,
        linked_at        TEXT NOT NULL
    )""",
    "CREATE INDEX callbacks_missed ON callbacks (missed_call_id)",
    "CREATE INDEX callbacks_linked_at ON callbacks (linked_at)",
    """CREATE TABLE overload_switch (
        seq INTEGER PRIMARY KEY,
        at  TEXT NOT NULL,
        on_ INTEGER NOT NULL,
        by  TEXT NOT NULL
    )""",
)

RECORDING_STORE: tuple[str, ...] = (
    """CREATE TABLE recordings (
        id              TEXT PRIMARY KEY,
        call_id         TEXT NOT NULL UNIQUE REFERENCES calls (call_id),
        line            TEXT NOT NULL,
        legal_basis     TEXT NOT NULL,
        caller          TEXT,
        dialed          TEXT,
        customer        TEXT,
        decided_at      TEXT NOT NULL,
        created_at      TEXT NOT NULL,
        delete_after    TEXT NOT NULL,
        sha256          TEXT,
        path            TEXT,
        linked_to       TEXT,
        purposes        TEXT NOT NULL,
        size            INTEGER NOT NULL,
        status          TEXT NOT NULL,
        deleted_at      TEXT,
        deletion_reason TEXT,
        withdrawal_id   TEXT
    )""",
    "CREATE INDEX recordings_due ON recordings (delete_after) WHERE status != 'deleted'",
    "CREATE INDEX recordings_customer ON recordings (customer) WHERE status != 'deleted'",
    "CREATE INDEX recordings_created ON recordings (created_at)",
    "CREATE INDEX recordings_deleted ON recordings (deleted_at) WHERE status = 'deleted'",
    # An ingest's intent, committed before any file moves: reconcile finishes or undoes it.
    """CREATE TABLE pending_ingests (
        recording_id TEXT PRIMARY KEY,
        call_id      TEXT NOT NULL UNIQUE REFERENCES calls (call_id),
        source       TEXT NOT NULL,
        dest         TEXT NOT NULL,
        started_at   TEXT NOT NULL
    )""",
    """CREATE TABLE exports (
        export_id  TEXT PRIMARY KEY,
        dir        TEXT NOT NULL,
        purpose    TEXT NOT NULL,
        who        TEXT NOT NULL,
        created_at TEXT NOT NULL,
        state      TEXT NOT NULL   -- writing | done | deleted
    )""",
    # Every copy is registered before it is written, so no copy can escape deletion.
    """CREATE TABLE export_files (
        id           INTEGER PRIMARY KEY,
        export_id    TEXT NOT NULL REFERENCES exports (export_id),
        recording_id TEXT REFERENCES recordings (id),  -- NULL: the manifest
        path         TEXT NOT NULL,
        sha256       TEXT,
        deleted_at   TEXT
    )""",
    "CREATE INDEX export_files_recording ON export_files (recording_id)",
    "CREATE INDEX export_files_export ON export_files (export_id)",
    "CREATE INDEX export_files_live ON export_files (export_id) WHERE deleted_at IS NULL",
    """CREATE TABLE withdrawals (
        id            TEXT PRIMARY KEY,
        caller        TEXT NOT NULL,
        via           TEXT NOT NULL,
        received_at   TEXT NOT NULL,
        registered_by TEXT NOT NULL,
        registered_at TEXT NOT NULL,
        received_on   TEXT NOT NULL,
        due_on        TEXT NOT NULL,
        deadline      TEXT NOT NULL,
        completed_at  TEXT
    )""",
    "CREATE INDEX withdrawals_caller ON withdrawals (caller, registered_at)",
    "CREATE INDEX withdrawals_open ON withdrawals (registered_at) WHERE completed_at IS NULL",
    """CREATE TABLE withdrawal_recordings (
        withdrawal_id TEXT NOT NULL REFERENCES withdrawals (id),
        recording_id  TEXT NOT NULL REFERENCES recordings (id),
        action        TEXT NOT NULL,   -- deleted | kept
        why           TEXT NOT NULL,
        PRIMARY KEY (withdrawal_id, recording_id)
    )""",
)

AUDIT: tuple[str, ...] = (
    """CREATE TABLE audit (
        seq       INTEGER PRIMARY KEY,
        at        TEXT NOT NULL,
        action    TEXT NOT NULL,
        subject   TEXT NOT NULL,
        details   TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash      TEXT NOT NULL
    )""",
    "CREATE INDEX audit_subject ON audit (subject)",
    # Append-only in the database itself; `verify` also reports a trigger that was dropped.
    """CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    """CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    """CREATE TABLE access_log (
        id           INTEGER PRIMARY KEY,
        at           TEXT NOT NULL,
        who          TEXT NOT NULL,
        purpose      TEXT NOT NULL,
        recording_id TEXT NOT NULL,
        allowed      INTEGER NOT NULL,
        reason       TEXT NOT NULL
    )""",
    "CREATE INDEX access_log_recording ON access_log (recording_id)",
    """CREATE TRIGGER access_log_no_update BEFORE UPDATE ON access_log
        BEGIN SELECT RAISE(ABORT, 'the access log is append-only'); END""",
    """CREATE TRIGGER access_log_no_delete BEFORE DELETE ON access_log
        BEGIN SELECT RAISE(ABORT, 'the access log is append-only'); END""",
)

# The callback lookup answered from the index alone: every column the statement reads is in
# it, so the calls table (most of a big ledger, mostly not in memory) is not touched while
# the customer waits on the line. The index holds missed inbound calls only.
COVERING_MISSED: tuple[str, ...] = (
    "DROP INDEX calls_missed",
    """CREATE INDEX calls_missed ON calls (customer, ended_at, outcome, direction, call_id,
        line, legal_basis, decision, decided_at)
        WHERE outcome = 'missed' AND direction = 'inbound'""",
)

# One communication (POLICY.md §3): a missed call and every callback within its window.
# A callback answers a missed call of its own legal basis, so the look-up's index leads with
# it; a missed call is answered at most once (the primary key of `callback_answers`), and
# callbacks nobody picked up leave it open for the next attempt. A withdrawal may name one
# communication instead of a customer (`caller` is then '', the column being NOT NULL).
COMMUNICATIONS: tuple[str, ...] = (
    "ALTER TABLE calls ADD COLUMN communication_id TEXT",
    "UPDATE calls SET communication_id = COALESCE(linked_to, call_id)",
    """UPDATE calls SET communication_id = (SELECT p.communication_id FROM calls p
        WHERE p.call_id = calls.parent_call_id) WHERE parent_call_id IS NOT NULL""",
    "CREATE INDEX calls_communication ON calls (communication_id)",
    "DROP INDEX calls_missed",
    """CREATE INDEX calls_missed ON calls (customer, legal_basis, ended_at, outcome, direction,
        call_id, line, decision, decided_at)
        WHERE outcome = 'missed' AND direction = 'inbound'""",
    """CREATE TABLE callback_answers (
        missed_call_id   TEXT PRIMARY KEY REFERENCES calls (call_id),
        callback_call_id TEXT NOT NULL UNIQUE REFERENCES calls (call_id),
        answered_at      TEXT NOT NULL
    )""",
    """INSERT OR IGNORE INTO callback_answers (missed_call_id, callback_call_id, answered_at)
        SELECT b.missed_call_id, b.callback_call_id, c.ended_at FROM callbacks b
        JOIN calls c ON c.call_id = b.callback_call_id
        WHERE c.outcome = 'answered' AND c.ended_at IS NOT NULL ORDER BY c.ended_at""",
    "ALTER TABLE withdrawals ADD COLUMN communication_id TEXT",
    """CREATE INDEX withdrawals_communication ON withdrawals (communication_id)
        WHERE communication_id IS NOT NULL""",
)

# From here on every audit entry's hash is an HMAC under a key kept outside the ledger
# (`storage.chain`); an older ledger's chain goes on from its head with an entry saying so.
START_KEYED_AUDIT = PythonStep("start the keyed audit chain")
KEYED_AUDIT: tuple[Step, ...] = (START_KEYED_AUDIT,)

# Each call belongs to the controller that started it: after a restart a controller settles
# its own open calls and no other's (several controllers may share one ledger). Calls of a
# ledger older than this have no owner and are every controller's (there was only one).
CONTROLLERS: tuple[Step, ...] = (
    "ALTER TABLE calls ADD COLUMN controller_id TEXT",
    """CREATE INDEX calls_open_by_controller ON calls (controller_id, started_at)
        WHERE ended_at IS NULL""",
)

# Who took the call (`flows.outcome.QueueObserver.agent`: the queue member's interface or
# the bridged channel), so that one call's story and a search by agent need no CDR.
AGENTS: tuple[Step, ...] = (
    "ALTER TABLE calls ADD COLUMN agent TEXT",
    "CREATE INDEX calls_agent ON calls (agent, started_at) WHERE agent IS NOT NULL",
)

# Lines are data: a decision fixes what its conversation's line decides (`flows.retention
# .Keeping`): `line` becomes the conversation's line (a linked callback's is the missed
# call's), `purge_after` the date its recording and numbers go, and `purposes` what that
# recording may serve. NULL: decided before this migration (the line as configured then).
LINES_AS_DATA: tuple[Step, ...] = ("ALTER TABLE calls ADD COLUMN purposes TEXT",)

# Each export belongs to the controller (or command) that writes it: a restart abandons its
# own unfinished exports, never one another node is writing. NULL: written before this
# migration, every controller's (as calls of before `CONTROLLERS`).
EXPORT_OWNERS: tuple[Step, ...] = ("ALTER TABLE exports ADD COLUMN controller_id TEXT",)

# Each taking of a controller id's lock on a shared ledger (`storage.pg_claim`) adds one to
# the id's generation, in the lock's own session. A controller that takes its lock again
# after losing it finds its own generation there, or learns that another controller held
# the id meanwhile (and may have settled its calls) although none holds it now. SQLite's
# lock is a flock that ends only with its process, so nothing there writes this table.
CONTROLLER_CLAIMS: tuple[Step, ...] = (
    """CREATE TABLE controller_claims (
        controller_id TEXT PRIMARY KEY,
        generation    INTEGER NOT NULL,
        taken_at      TEXT NOT NULL,
        taken_by      TEXT NOT NULL
    )""",
)

# A deletion's intent (`storage.deletion`): set, with the deletion's time, in the
# transaction that lists the recordings before any of their files is removed, and cleared
# when they are marked deleted (or kept). Between the two a recording's file is gone while
# its row still says stored; reconcile and verify on another node must not take it for
# missing.
DELETION_INTENT: tuple[Step, ...] = ("ALTER TABLE recordings ADD COLUMN deleting_since TEXT",)

# The intent above, once a batch instead of once a row: a deletion step writes one row
# naming its recordings (a JSON array of their ids) where it marked each of them, which
# rewrote every recording row (and on PostgreSQL each of its index entries) only for the
# claim to rewrite it again. The marks a crash left become one-recording rows.
# A note's id is random, never a rowid: SQLite hands a deleted rowid out again, and a
# deletion that commits deletes its note by id, which must not be another's by then.
DELETIONS: tuple[Step, ...] = (
    """CREATE TABLE deletions (
        id    TEXT PRIMARY KEY,
        since TEXT NOT NULL,
        ids   TEXT NOT NULL
    )""",
    "INSERT INTO deletions (id, since, ids) SELECT 'mark-' || id, deleting_since, "
    "'[\"' || id || '\"]' FROM recordings WHERE deleting_since IS NOT NULL",
    "ALTER TABLE recordings DROP COLUMN deleting_since",
)

MIGRATIONS: tuple[tuple[Step, ...], ...] = (
    LEDGER,
    RECORDING_STORE,
    AUDIT,
    COVERING_MISSED,
    COMMUNICATIONS,
    KEYED_AUDIT,
    CONTROLLERS,
    AGENTS,
    LINES_AS_DATA,
    EXPORT_OWNERS,
    CONTROLLER_CLAIMS,
    DELETION_INTENT,
    DELETIONS,
)
APPEND_ONLY_TRIGGERS = frozenset(
    {"audit_no_update", "audit_no_delete", "access_log_no_update", "access_log_no_delete"}
)
_CREATE_TRIGGER = re.compile(r"^\s*CREATE\s+TRIGGER\s+(\w+)\s", re.IGNORECASE)


def expected_triggers(
    migrations: tuple[tuple[Step, ...], ...] = MIGRATIONS,
) -> dict[str, str]:
    """Each trigger's definition as the migrations create it (the last one wins), by name."""
    found: dict[str, str] = {}
    for migration in migrations:
        for statement in migration:
            if isinstance(statement, str) and (match := _CREATE_TRIGGER.match(statement)):
                found[match.group(1)] = statement
    return found


async def schema_version(conn: aiosqlite.Connection) -> int:
    rows = await conn.execute_fetchall(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    )
    if not list(rows):
        return 0
    rows = await conn.execute_fetchall("SELECT MAX(version) FROM schema_version")
    value = next(iter(rows))[0]
    return int(value or 0)


async def migrate(
    conn: aiosqlite.Connection,
    migrations: tuple[tuple[Step, ...], ...] = MIGRATIONS,
    *,
    runners: Mapping[PythonStep, StepRunner] | None = None,
) -> int:
    """Apply the migrations `conn` lacks; return the version it is at afterwards.

    `conn` must be in autocommit mode (isolation_level=None): each migration is its own
    explicit transaction, so a crash leaves the database at a whole version. `runners` do
    the migrations' Python steps, in the same transaction.
    """
    await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)")
    current = await schema_version(conn)
    if current > len(migrations):
        raise StorageError(
            f"the ledger's schema is version {current}, newer than this program's "
            f"{len(migrations)}: upgrade callrec before opening it"
        )
    steps = dict(runners or {})
    for number in range(current + 1, len(migrations) + 1):
        for statement in migrations[number - 1]:
            if isinstance(statement, PythonStep) and statement not in steps:
                raise StorageError(
                    f"migration {number} of the ledger ({statement.name}) needs the store's "
                    "keys: open it as a store"
                )
    for number in range(current + 1, len(migrations) + 1):
        await conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in migrations[number - 1]:
                if isinstance(statement, str):
                    await conn.execute(statement)
                else:
                    await steps[statement](conn)
            await conn.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
            await conn.commit()
        except BaseException:
            await conn.rollback()
            raise
    return len(migrations)
