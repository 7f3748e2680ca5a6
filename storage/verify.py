"""Verify: every file against its hash, the audit chain against its key and the signed
checkpoints, and the ledger's guards and bookkeeping (`storage.integrity`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Sequence
from pathlib import Path

from storage import chain, checkpoints, files, integrity
from storage.calls import call_of_spool_file
from storage.datadir import KEY_FILE
from storage.ports import Progress, RecordingStatus, Row, Tx, VerifyReport
from storage.rows import Context, audit_entry, silent

AUDIT_BATCH = 5000  # audit entries read per query while verifying


async def verify(
    ctx: Context, *, progress: Progress | None = None, checkpoint_file: Path | None = None
) -> VerifyReport:
    """Every file against its hash, the audit chain against its key and the signed
    checkpoints (the store's own, or a copy kept elsewhere: `checkpoint_file`), and the
    ledger's triggers and bookkeeping."""
    tell = progress or silent
    problems: list[str] = []
    checked = 0
    last = 0
    anchors = checkpoint_file or ctx.checkpoints_dir / checkpoints.CHECKPOINT_FILE
    found, unreadable = await asyncio.to_thread(checkpoints.read, anchors)
    public = ctx.audit_keys.signing.public_key()
    good, unsigned = checkpoints.signed(found, public)
    keyed_from = await ctx.db.read(
        lambda tx: tx.all(chain.FIRST_KEYED_SQL)[0]["keyed_from"], "finding the keyed chain's start"
    )
    checker = chain.ChainChecker(ctx.audit_keys.mac, keyed_from, {c.seq for c in good})

    def count(tx: Tx) -> int:
        return sum(
            int(tx.all(sql)[0]["n"])
            for sql in (
                "SELECT COUNT(*) AS n FROM audit",
                "SELECT COUNT(*) AS n FROM recordings WHERE status IN ('stored', 'missing')",
                "SELECT COUNT(*) AS n FROM export_files f JOIN exports e ON e.export_id = "
                "f.export_id WHERE f.deleted_at IS NULL AND e.state = 'done'",
            )
        )

    total = await ctx.db.read(count, "counting what to verify")
    tell(0, total)
    while True:

        def batch(tx: Tx, after: int = last) -> Sequence[Row]:
            return tx.all(
                "SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, AUDIT_BATCH),
            )

        rows = await ctx.db.read(batch, "reading the audit log")
        if not rows:
            break
        for row in rows:
            entry, body = audit_entry(row, problems)
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
    problems += await asyncio.to_thread(public_key_problems, ctx)

    def state(tx: Tx) -> tuple[list[str], Sequence[Row], Sequence[Row], Sequence[Row]]:
        return (
            ctx.db.guard_problems(tx) + integrity.bookkeeping_problems(tx, ctx.db),
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

    ledger, recordings, copies, pending = await ctx.db.read(state, "verifying")
    problems += ledger
    known: set[str] = set()
    for row in recordings:
        checked += 1
        key = str(row["path"])
        known.add(key)
        if row["status"] == RecordingStatus.MISSING.value:
            problems.append(f"recording {row['id']}: file missing (flagged by reconcile)")
            continue
        problems += await check_file(
            f"recording {row['id']}",
            ctx.blobs.location(key),
            ctx.blobs.hash(key),
            row["sha256"],
            row["size"],
        )
        tell(checked, total)
    for row in copies:
        checked += 1
        path = Path(row["path"])
        what = (
            f"export copy of {row['recording_id']}"
            if row["recording_id"]
            else f"export file {path.name}"
        )
        problems += await check_file(
            what,
            str(path),
            asyncio.to_thread(files.hash_file, path),
            row["sha256"],
            None,
        )
        tell(checked, total)
    for row in pending:
        known.add(str(row["dest"]))
        problems.append(f"call {row['call_id']}: ingest not finished (reconcile finishes it)")
    for key in await ctx.blobs.list():
        if key not in known:
            problems.append(f"store: {key} belongs to no recording")
    problems += await spool_leftovers(ctx)
    return VerifyReport(checked, tuple(problems), status)


def public_key_problems(ctx: Context) -> list[str]:
    path = ctx.data_dir / checkpoints.PUBLIC_KEY_FILE
    try:
        published = path.read_bytes()
    except OSError as error:
        return [f"checkpoints: the public key {path} is unreadable ({error.strerror})"]
    if published != checkpoints.public_pem(ctx.audit_keys.signing):
        return [f"checkpoints: {path} is not the public half of the store's signing key"]
    return []


async def check_file(
    what: str,
    where: str,
    hashed: Awaitable[tuple[str, int]],
    sha256: str | None,
    size: int | None,
) -> list[str]:
    try:
        digest, actual = await hashed
    except FileNotFoundError:
        return [f"{what}: file missing ({where})"]
    except OSError as error:
        return [f"{what}: unreadable ({error.strerror or error})"]
    if size is not None and actual != size:
        return [f"{what}: {actual} bytes, the ledger says {size} (truncated or altered)"]
    if sha256 is not None and digest != sha256:
        return [f"{what}: content changed (SHA-256 does not match the ledger)"]
    return []


async def spool_leftovers(ctx: Context) -> list[str]:
    spool = ctx.spool_dir
    if spool is None or not await asyncio.to_thread(spool.is_dir):
        return []
    names = await asyncio.to_thread(lambda: sorted(p for p in spool.iterdir()))
    problems: list[str] = []
    for path in names:
        call = await call_of_spool_file(ctx, path)
        if call is None or call["ended_at"] is not None:
            problems.append(f"spool: {path.name} is not in the store (reconcile takes it)")
    return problems


async def foreign_keys(ctx: Context) -> str | None:
    """Why this data directory's keys are not the ones the ledger's entries were made with
    (None: they are, or nothing in the ledger can tell yet).

    Every controller on a shared ledger must append with the same audit key: entries under
    another key would fork the chain into two that nobody can verify together. The head
    entry's MAC says whether ours is the key; the newest decision whose call still has its
    number says the same of the pseudonym key (a second key would give one customer two
    pseudonyms)."""

    def body(tx: Tx) -> str | None:
        last = tx.one("SELECT * FROM audit ORDER BY seq DESC LIMIT 1")
        if last is not None:
            entry, signed = audit_entry(last, [])
            # An unreadable head is verify's to report; a key it cannot judge is no reason
            # to refuse the store.
            mac = chain.entry_mac(ctx.audit_keys.mac, str(last["prev_hash"]), signed)
            if entry is not None and mac != last["hash"]:
                return f"{chain.AUDIT_KEY_FILE} is not the key of the ledger's audit chain"
        decided = tx.one(
            "SELECT a.details, c.customer FROM audit a JOIN calls c ON c.call_id = a.subject "
            "WHERE a.action = 'decision.committed' AND c.customer IS NOT NULL "
            "ORDER BY a.seq DESC LIMIT 1"
        )
        if decided is not None:
            said = json.loads(decided["details"]).get("customer")
            if said is not None and said != ctx.pseudo(decided["customer"]):
                return f"{KEY_FILE} is not the pseudonym key of the ledger's entries"
        return None

    why = await ctx.db.read(body, "checking the data directory's keys against the ledger")
    if why is None:
        return None
    return (
        f"{why}: {ctx.data_dir} holds the keys of another store. Every controller on one "
        "ledger needs the same keys (audit.key, pseudonym.key, checkpoint.key): copy them "
        "from the store's first data directory"
    )
