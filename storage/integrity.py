"""What `verify` checks in the ledger besides the chain and the engine's own guards (the
append-only triggers: `storage.ports.LedgerDb.guard_problems`): its bookkeeping.

Recordings and the audit log must tell the same story: every deleted recording has its
deletion entry (giving the same reason), every deletion entry names a recording the ledger
has as deleted, and every recording was announced by a `recording.stored` or
`recording.empty` entry, whose recording the ledger still has. Each check is one statement
answered from the audit's subject index, so none holds the ledger in memory.
"""

from __future__ import annotations

from storage.ports import LedgerDb, Tx

SHOWN = 20  # problem lines of one kind; more are counted, not listed

# {json_reason}: the deletion entry's reason; {audit}: the audit table read in its own order
_CHECKS: tuple[tuple[str, str], ...] = (
    (
        "SELECT r.id AS subject FROM recordings r WHERE r.status = 'deleted' AND NOT EXISTS "
        "(SELECT 1 FROM audit a WHERE a.subject = r.id AND a.action = 'recording.deleted') "
        "ORDER BY r.id",
        "recording {0}: deleted without its deletion entry in the audit log",
    ),
    (
        "SELECT r.id AS subject FROM recordings r WHERE r.status = 'deleted' AND EXISTS "
        "(SELECT 1 FROM audit a WHERE a.subject = r.id AND a.action = 'recording.deleted') "
        "AND NOT EXISTS (SELECT 1 FROM audit a WHERE a.subject = r.id "
        "AND a.action = 'recording.deleted' "
        "AND {json_reason} IS NOT DISTINCT FROM r.deletion_reason) ORDER BY r.id",
        "recording {0}: its deletion entry gives another reason than the ledger",
    ),
    (
        "SELECT a.subject FROM {audit} WHERE a.action = 'recording.deleted' "
        "AND NOT EXISTS (SELECT 1 FROM recordings r WHERE r.id = a.subject "
        "AND r.status = 'deleted')",
        "recording {0}: the audit log says it was deleted, the ledger does not",
    ),
    (
        "SELECT r.id AS subject FROM recordings r WHERE NOT EXISTS (SELECT 1 FROM audit a "
        "WHERE a.subject = r.id AND a.action IN ('recording.stored', 'recording.empty')) "
        "ORDER BY r.id",
        "recording {0}: in the ledger without the audit entry that stored it",
    ),
    (
        "SELECT a.subject FROM {audit} "
        "WHERE a.action IN ('recording.stored', 'recording.empty') "
        "AND NOT EXISTS (SELECT 1 FROM recordings r WHERE r.id = a.subject)",
        "recording {0}: stored according to the audit log, gone from the ledger",
    ),
)


def bookkeeping_problems(tx: Tx, db: LedgerDb) -> list[str]:
    problems: list[str] = []
    parts = {
        "json_reason": db.json_text("a.details", "reason"),
        "audit": db.full_scan("audit", "a"),
    }
    for template, line in _CHECKS:
        sql = template.format(**parts)
        # The audit is read in its own order (one pass over the table): a subject named by
        # several entries is reported once.
        rows = list(dict.fromkeys(row["subject"] for row in tx.all(sql)))
        problems += [line.format(subject) for subject in rows[:SHOWN]]
        if len(rows) > SHOWN:
            what = line.split(": ", 1)[1]
            problems.append(f"{len(rows) - SHOWN} more recordings: {what}")
    return problems
