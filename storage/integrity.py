"""What `verify` checks in the ledger besides the chain: its guards and its bookkeeping.

The append-only triggers are compared with the definitions the migrations create, not only
counted: a trigger of the same name that does nothing is as good as none. A trigger the
migrations never made, on any table, is reported too.

Recordings and the audit log must tell the same story: every deleted recording has its
deletion entry (giving the same reason), every deletion entry names a recording the ledger
has as deleted, and every recording was announced by a `recording.stored` or
`recording.empty` entry, whose recording the ledger still has. Each check is one statement
answered from the audit's subject index, so none holds the ledger in memory.
"""

from __future__ import annotations

from storage import pg_schema
from storage.db import Tx
from storage.schema import expected_triggers

SHOWN = 20  # problem lines of one kind; more are counted, not listed

_TRIGGERS_SQL = "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger'"

_CHECKS: tuple[tuple[str, str], ...] = (
    (
        "SELECT r.id FROM recordings r WHERE r.status = 'deleted' AND NOT EXISTS "
        "(SELECT 1 FROM audit a WHERE a.subject = r.id AND a.action = 'recording.deleted') "
        "ORDER BY r.id",
        "recording {0}: deleted without its deletion entry in the audit log",
    ),
    (
        "SELECT r.id FROM recordings r WHERE r.status = 'deleted' AND EXISTS "
        "(SELECT 1 FROM audit a WHERE a.subject = r.id AND a.action = 'recording.deleted') "
        "AND NOT EXISTS (SELECT 1 FROM audit a WHERE a.subject = r.id "
        "AND a.action = 'recording.deleted' "
        "AND json_extract(a.details, '$.reason') IS r.deletion_reason) ORDER BY r.id",
        "recording {0}: its deletion entry gives another reason than the ledger",
    ),
    (
        "SELECT a.subject FROM audit a NOT INDEXED WHERE a.action = 'recording.deleted' "
        "AND NOT EXISTS (SELECT 1 FROM recordings r WHERE r.id = a.subject "
        "AND r.status = 'deleted')",
        "recording {0}: the audit log says it was deleted, the ledger does not",
    ),
    (
        "SELECT r.id FROM recordings r WHERE NOT EXISTS (SELECT 1 FROM audit a "
        "WHERE a.subject = r.id AND a.action IN ('recording.stored', 'recording.empty')) "
        "ORDER BY r.id",
        "recording {0}: in the ledger without the audit entry that stored it",
    ),
    (
        "SELECT a.subject FROM audit a NOT INDEXED "
        "WHERE a.action IN ('recording.stored', 'recording.empty') "
        "AND NOT EXISTS (SELECT 1 FROM recordings r WHERE r.id = a.subject)",
        "recording {0}: stored according to the audit log, gone from the ledger",
    ),
)


def _normal(sql: str | None) -> str:
    return " ".join((sql or "").split())


def trigger_problems(tx: Tx) -> list[str]:
    if getattr(tx, "dialect", "sqlite") == "postgresql":
        return pg_schema.guard_problems(tx)
    expected = expected_triggers()
    found = {row["name"]: row for row in tx.all(_TRIGGERS_SQL)}
    problems: list[str] = []
    for name in sorted(expected):
        row = found.get(name)
        if row is None:
            problems.append(f"ledger: the append-only trigger {name} was removed")
        elif _normal(row["sql"]) != _normal(expected[name]):
            problems.append(f"ledger: the trigger {name} was replaced (its definition changed)")
    for name in sorted(set(found) - set(expected)):
        problems.append(
            f"ledger: an unknown trigger {name} on table {found[name]['tbl_name']} was added"
        )
    return problems


def bookkeeping_problems(tx: Tx) -> list[str]:
    problems: list[str] = []
    for sql, line in _CHECKS:
        # The audit is read in its own order (one pass over the table): a subject named by
        # several entries is reported once.
        rows = list(dict.fromkeys(row[0] for row in tx.all(sql)))
        problems += [line.format(subject) for subject in rows[:SHOWN]]
        if len(rows) > SHOWN:
            what = line.split(": ", 1)[1]
            problems.append(f"{len(rows) - SHOWN} more recordings: {what}")
    return problems
