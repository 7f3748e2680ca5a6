"""The ledger's schema on PostgreSQL: `storage.schema`'s migrations, numbered alike.

Each PostgreSQL migration is derived from the SQLite one of the same number, statement by
statement, so the two cannot drift: the same tables, columns and (partial) indexes, with
SQLite's types spelled for PostgreSQL. Times stay ISO-8601 text, and every text column sorts
bytewise (`COLLATE "C"`), as SQLite's do, so ordering and range indexes behave alike
whatever the database's locale. The rowid keys SQLite assigns (`INTEGER PRIMARY KEY` of a
row inserted without it) become identity columns; the audit's `seq` is always given.

The append-only triggers become PL/pgSQL functions that raise, plus a TRUNCATE guard each
(PostgreSQL's TRUNCATE fires no row trigger). `expected_triggers` gives what `verify`
compares the catalog with.

Every migration runs in a write transaction of `PgDatabase`, after its advisory lock, so
controllers starting at once migrate one after the other and the later ones find the work
done.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from flows.errors import StorageError
from storage import chain, checkpoints
from storage.ports import Tx
from storage.schema import MIGRATIONS, START_KEYED_AUDIT, PythonStep, Step
from storage.values import ts

if TYPE_CHECKING:
    from storage.pg import PgDatabase, StepRunner

_IDENTITY_KEYS = {("export_files", "id"), ("access_log", "id"), ("overload_switch", "seq")}
_TABLE = re.compile(r"^\s*CREATE\s+TABLE\s+(\w+)", re.IGNORECASE)
_ALTER = re.compile(r"^\s*ALTER\s+TABLE\s+\w+\s+ADD\s+COLUMN", re.IGNORECASE)
_CREATE_TRIGGER = re.compile(r"^\s*CREATE\s+TRIGGER\s+(\w+)\s", re.IGNORECASE)
_ROWID = re.compile(r"^(\s*)(\w+)(\s+)INTEGER PRIMARY KEY\b", re.MULTILINE)

# (trigger, table, message): one PL/pgSQL function per table, raising the SQLite message.
_GUARDED = {
    "audit": "the audit log is append-only",
    "access_log": "the access log is append-only",
}
_ROW_BEFORE, _UPDATE, _DELETE, _TRUNCATE = 1 | 2, 16, 8, 32


def _function(table: str) -> str:
    return f"{table}_append_only"


def _body(table: str) -> str:
    return f" BEGIN RAISE EXCEPTION '{_GUARDED[table]}'; END "


def _guards(table: str) -> tuple[str, ...]:
    fn = _function(table)
    return (
        f"CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS ${fn}${_body(table)}${fn}$",
        f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION {fn}()",
        f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION {fn}()",
        f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {fn}()",
    )


def expected_triggers() -> dict[str, str]:
    """Each guard as `_TRIGGERS_SQL` reports it: timing and event, enabled ('O'), the
    function and its body."""
    found: dict[str, str] = {}
    for table in _GUARDED:
        fn, body = _function(table), _body(table)
        found[f"{table}_no_update"] = f"{_ROW_BEFORE | _UPDATE} O {fn} {body}"
        found[f"{table}_no_delete"] = f"{_ROW_BEFORE | _DELETE} O {fn} {body}"
        found[f"{table}_no_truncate"] = f"{2 | _TRUNCATE} O {fn} {body}"
    return found


# The guards as the catalog has them: name, table, and what decides whether it guards (when
# it fires, whether it is enabled, the function and its body).
_TRIGGERS_SQL = (
    "SELECT t.tgname::text AS name, c.relname::text AS tbl_name, "
    "t.tgtype::text || ' ' || t.tgenabled::text || ' ' || p.proname::text || ' ' "
    "|| p.prosrc AS sql "
    "FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
    "JOIN pg_proc p ON p.oid = t.tgfoid "
    "WHERE NOT t.tgisinternal AND c.relnamespace = current_schema()::regnamespace"
)


def guard_problems(tx: Tx) -> list[str]:
    """The append-only triggers compared with what the migrations create; a trigger they
    never made, on any table of the ledger, is reported too."""
    expected = expected_triggers()
    found = {row["name"]: row for row in tx.all(_TRIGGERS_SQL)}
    problems: list[str] = []
    for name in sorted(expected):
        row = found.get(name)
        if row is None:
            problems.append(f"ledger: the append-only trigger {name} was removed")
        elif " ".join(row["sql"].split()) != " ".join(expected[name].split()):
            problems.append(f"ledger: the trigger {name} was replaced (its definition changed)")
    for name in sorted(set(found) - set(expected)):
        problems.append(
            f"ledger: an unknown trigger {name} on table {found[name]['tbl_name']} was added"
        )
    return problems


def _column_types(table: str, sql: str) -> str:
    def rowid(match: re.Match[str]) -> str:
        indent, column, space = match.groups()
        if (table, column) in _IDENTITY_KEYS:
            return f"{indent}{column}{space}BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
        return f"{indent}{column}{space}BIGINT PRIMARY KEY"

    sql = _ROWID.sub(rowid, sql)
    sql = re.sub(r"\bTEXT\b", 'TEXT COLLATE "C"', sql)
    sql = re.sub(r"\bREAL\b", "DOUBLE PRECISION", sql)
    return re.sub(r"\bINTEGER\b", "BIGINT", sql)


def _statement(step: Step, emitted: set[str]) -> tuple[Step, ...]:
    if isinstance(step, PythonStep):
        return (step,)
    if match := _CREATE_TRIGGER.match(step):
        table = next(t for t in _GUARDED if match.group(1).startswith(f"{t}_no_"))
        if table in emitted:
            return ()
        emitted.add(table)
        return _guards(table)
    if match := _TABLE.match(step):
        return (_column_types(match.group(1), step),)
    if _ALTER.match(step):
        return (_column_types("", step),)
    return (step,)


def _derive() -> tuple[tuple[Step, ...], ...]:
    emitted: set[str] = set()
    return tuple(
        tuple(out for step in migration for out in _statement(step, emitted))
        for migration in MIGRATIONS
    )


PG_MIGRATIONS: tuple[tuple[Step, ...], ...] = _derive()


async def migrate(
    database: PgDatabase, *, runners: Mapping[PythonStep, StepRunner] | None = None
) -> int:
    """Apply the migrations the ledger lacks, each in its own write transaction."""
    steps = dict(runners or {})
    total = len(PG_MIGRATIONS)

    def apply(tx: Tx, *, number: int) -> None:
        tx.run("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)")
        row = tx.one("SELECT MAX(version) AS v FROM schema_version")
        current = int(row["v"] or 0) if row is not None else 0
        if current > total:
            raise StorageError(
                f"the ledger's schema is version {current}, newer than this program's "
                f"{total}: upgrade callrec before opening it"
            )
        if current >= number:
            return  # another controller migrated it meanwhile
        for later in PG_MIGRATIONS[number - 1 :]:
            for statement in later:
                if isinstance(statement, PythonStep) and statement not in steps:
                    raise StorageError(
                        f"migration {number} of the ledger ({statement.name}) needs the "
                        "store's keys: open it as a store"
                    )
        for statement in PG_MIGRATIONS[number - 1]:
            if isinstance(statement, str):
                tx.run(statement)
            else:
                steps[statement](tx)
        tx.run("INSERT INTO schema_version (version) VALUES (?)", (number,))

    if await database.version() == total:
        return total  # the usual case: no write transaction, no lock
    for number in range(1, total + 1):
        await database.write(functools.partial(apply, number=number), f"migrating to {number}")
    return total


def migration_runners(root: Path) -> Mapping[PythonStep, StepRunner]:
    """The Python steps of the migrations on PostgreSQL, for the store rooted at `root`.

    A PostgreSQL ledger is new with this program, so its chain is keyed from entry 1: the
    keyed-audit step only makes the keys and the first checkpoint, as for a new SQLite
    store (`storage.chain.migration_runners`)."""

    def start_keyed_chain(tx: Tx) -> None:
        seq, prev = chain.head(tx)
        if seq != 0:
            raise StorageError(
                "the ledger's audit chain began before its keys: not a callrec ledger"
            )
        try:
            checkpoints.create_signing_key(root)
            chain.create_audit_key(root)
            signing = checkpoints.load_signing_key(root)
            checkpoints.append(
                root / checkpoints.CHECKPOINTS_DIR,
                checkpoints.sign(signing, seq, prev, ts(datetime.now(UTC))),
            )
        except OSError as error:
            raise StorageError(f"starting the keyed audit chain: {error}") from error

    return {START_KEYED_AUDIT: start_keyed_chain}
