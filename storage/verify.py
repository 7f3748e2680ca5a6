"""Verify: every file against its hash, the audit chain against its key and the signed
checkpoints, and the ledger's guards and bookkeeping (`storage.integrity`).

Other controllers may be working on the same ledger and store while it runs. What they have
in flight is not a problem: an ingest whose intent is committed (its temporary or placed
file, its recording not committed yet), an export being written, a deletion between its
files' removal and its commit (`storage.deletion` marks its rows first). Verify lists
these (`VerifyReport.in_flight`) and looks again, in a fresh transaction, at every file it
found wrong before calling it a problem. A step in flight for longer than `IN_FLIGHT_FOR`
is reported: its controller is gone or stuck.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from storage import chain, checkpoints, deletion, files, integrity
from storage.calls import call_of_spool_file
from storage.datadir import KEY_FILE
from storage.ports import Progress, RecordingStatus, Row, Tx, VerifyReport
from storage.reconcile import not_in_flight
from storage.rows import Context, audit_entry, silent
from storage.values import ts

AUDIT_BATCH = 5000  # audit entries read per query while verifying
# How long an ingest, export or deletion may be in flight before it is a problem. Each is
# one short step on a working system: an ingest copies one recording (a four-hour call at
# 16 kHz is some 460 MB: minutes on a slow share), a deletion removes a batch of 2,000
# files (about a second), an export copies what was asked for. An hour past its start, the
# step's controller died (its restart finishes or undoes it) or hangs.
IN_FLIGHT_FOR = timedelta(hours=1)


async def verify(
    ctx: Context,
    *,
    progress: Progress | None = None,
    checkpoint_file: Path | None = None,
    now: datetime | None = None,
) -> VerifyReport:
    """Every file against its hash, the audit chain against its key and the signed
    checkpoints (the store's own, or a copy kept elsewhere: `checkpoint_file`), and the
    ledger's triggers and bookkeeping. `now` (default: the clock) dates what is in flight."""
    tell = progress or silent
    stale_before = ts((now or datetime.now(UTC)) - IN_FLIGHT_FOR)
    in_flight: list[str] = []
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

    def state(
        tx: Tx,
    ) -> tuple[list[str], Sequence[Row], Sequence[Row], Sequence[Row], Sequence[Row]]:
        return (
            ctx.db.guard_problems(tx) + integrity.bookkeeping_problems(tx, ctx.db),
            tx.all(
                "SELECT id, path, sha256, size, status FROM recordings "
                "WHERE status IN ('stored', 'missing')"
            ),
            tx.all(
                "SELECT f.id, f.path, f.sha256, f.recording_id FROM export_files f JOIN exports "
                "e ON e.export_id = f.export_id WHERE f.deleted_at IS NULL AND e.state = 'done'"
            ),
            tx.all("SELECT call_id, dest, started_at FROM pending_ingests"),
            tx.all("SELECT export_id, created_at FROM exports WHERE state = 'writing'"),
        )

    ledger, recordings, copies, pending, writing = await ctx.db.read(state, "verifying")
    problems += ledger
    known: set[str] = set()
    suspects: dict[str, list[str]] = {}  # recording id -> its file's problems
    for row in recordings:
        checked += 1
        key = str(row["path"])
        known.add(key)
        if row["status"] == RecordingStatus.MISSING.value:
            problems.append(f"recording {row['id']}: file missing (flagged by reconcile)")
            continue
        bad = await check_file(
            f"recording {row['id']}",
            ctx.blobs.location(key),
            ctx.blobs.hash(key),
            row["sha256"],
            row["size"],
        )
        if bad and not (await ctx.blobs.exists_many([key]))[0]:
            suspects[str(row["id"])] = bad  # gone: perhaps a deletion in flight
        else:
            problems += bad
        tell(checked, total)
    lines, stuck, gone = await being_deleted(ctx, list(suspects), stale_before)
    in_flight += lines
    problems += stuck
    problems += [p for rid, bad in suspects.items() if rid not in gone for p in bad]
    wrong: list[tuple[Row, list[str]]] = []
    for row in copies:
        checked += 1
        bad = await check_copy(row, row["sha256"])
        if bad:
            wrong.append((row, bad))
        tell(checked, total)
    problems += await copies_again(ctx, wrong, in_flight)
    for row in pending:
        known.update((str(row["dest"]), ctx.blobs.partial_key(str(row["dest"]))))
        since = str(row["started_at"])
        if since < stale_before:
            problems.append(
                f"call {row['call_id']}: ingest not finished since {since} (its controller's "
                "reconcile finishes it)"
            )
        else:
            in_flight.append(f"call {row['call_id']}: being ingested since {since}")
    for row in writing:
        since = str(row["created_at"])
        if since < stale_before:
            problems.append(
                f"export {row['export_id']}: unfinished since {since} (its controller's "
                "reconcile removes its files)"
            )
        else:
            in_flight.append(f"export {row['export_id']}: being written since {since}")
    listed = [key for key in await ctx.blobs.list() if key not in known]
    # Looked up again after the listing: ingests begun or finished since the first read.
    for key in await not_in_flight(ctx, listed):
        problems.append(f"store: {key} belongs to no recording")
    problems += await spool_leftovers(ctx)
    return VerifyReport(checked, tuple(problems), status, tuple(in_flight))


async def being_deleted(
    ctx: Context, ids: list[str], stale_before: str
) -> tuple[list[str], list[str], set[str]]:
    """Of recordings whose file was not found, read again now: the in-flight lines of those
    being deleted, the problem lines of deletions begun before `stale_before`, and the ids
    whose missing file is said by these (or by nothing: deleted meanwhile)."""
    if not ids:
        return [], [], set()

    def read(tx: Tx) -> tuple[list[Row], dict[str, str]]:
        rows: list[Row] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            rows += tx.all(
                f"SELECT id, status FROM recordings WHERE id IN ({marks})",  # noqa: S608 - only placeholders
                chunk,
            )
        return rows, deletion.being_deleted(tx, ids)

    lines: list[str] = []
    stuck: list[str] = []
    gone: set[str] = set()
    rows, deleting = await ctx.db.read(read, "reading recordings again")
    for row in rows:
        since = deleting.get(str(row["id"]))
        if row["status"] == RecordingStatus.DELETED.value:
            gone.add(str(row["id"]))
        elif since is not None:
            gone.add(str(row["id"]))
            if str(since) < stale_before:
                stuck.append(
                    f"recording {row['id']}: its file was removed by a deletion begun at "
                    f"{since} that was never committed (the next sweep or withdrawal "
                    "finishes it)"
                )
            else:
                lines.append(f"recording {row['id']}: being deleted since {since}")
    return lines, stuck, gone


async def check_copy(row: Row, sha256: str | None) -> list[str]:
    path = Path(row["path"])
    what = (
        f"export copy of {row['recording_id']}"
        if row["recording_id"]
        else f"export file {path.name}"
    )
    return await check_file(what, str(path), asyncio.to_thread(files.hash_file, path), sha256, None)


async def copies_again(
    ctx: Context, wrong: list[tuple[Row, list[str]]], in_flight: list[str]
) -> list[str]:
    """Export files found wrong, read again now: a deletion removes a recording's copies
    and rewrites its exports' manifests before it commits (the copies' rows and the new
    SHA-256s with it). No problem: a file whose row is marked removed by now, or whose
    export holds a recording being deleted; one whose SHA-256 changed is checked again."""
    if not wrong:
        return []

    def read(tx: Tx) -> dict[int, tuple[Row, bool]]:
        deleting = deletion.being_deleted(tx)
        found: dict[int, tuple[Row, bool]] = {}
        for row, _ in wrong:
            again = tx.one(
                "SELECT deleted_at, sha256, export_id FROM export_files WHERE id = ?",
                (row["id"],),
            )
            if again is not None:
                held = tx.all(
                    "SELECT recording_id FROM export_files WHERE export_id = ?",
                    (again["export_id"],),
                )
                pruning = any(h["recording_id"] in deleting for h in held)
                found[int(row["id"])] = again, pruning
        return found

    now = await ctx.db.read(read, "reading export files again")
    problems: list[str] = []
    for row, found in wrong:
        if int(row["id"]) not in now:
            continue
        again, pruning = now[int(row["id"])]
        if again["deleted_at"] is not None:
            continue
        if pruning:
            in_flight.append(f"export file {row['path']}: being pruned by a deletion")
        elif again["sha256"] != row["sha256"]:
            problems += await check_copy(row, again["sha256"])
        else:
            problems += found
    return problems


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
