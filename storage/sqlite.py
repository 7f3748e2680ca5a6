"""The embedded store: the ledger in one SQLite file (`ledger.sqlite3`, 0600) of the data
directory (`storage.datadir`), recordings in the local blob store beside it.

What only SQLite needs lives here: opening (and creating) the ledger file, the append-only
triggers `verify` compares with `sqlite_master`, SQLite's spelling of a JSON field and of a
full scan, and the lock that keeps a second controller off the same data directory. The
audit chain's head needs no lock of its own: every write transaction begins with
`BEGIN IMMEDIATE`, SQLite's database-wide write lock (`storage.db`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite

from flows.errors import NotFoundError, StorageError
from flows.numbers import shown
from flows.policy import Policy
from storage import chain, checkpoints, files
from storage.audit import GENESIS, canonical
from storage.blobs import RECORDINGS_DIR
from storage.calls import MISSED_CANDIDATES_SQL
from storage.datadir import (
    KEY_FILE,
    SPOOL_DIR,
    checked_controller_id,
    claim,
    prepare,
)
from storage.db import BUSY_TIMEOUT, RETRY_FOR, Database, os_error, ts
from storage.deletion import SWEEP_BATCH
from storage.ports import ClaimCheck, ClaimState, Tx
from storage.rows import make_recording_id, short_recording_id
from storage.schema import START_KEYED_AUDIT, PythonStep, StepRunner, expected_triggers
from storage.store import Store

__all__ = [  # what callers and benchmarks have always found here
    "KEY_FILE",
    "LEDGER_FILE",
    "MISSED_CANDIDATES_SQL",
    "RECORDINGS_DIR",
    "SPOOL_DIR",
    "SWEEP_BATCH",
    "SqliteLedger",
    "SqliteStore",
    "make_recording_id",
    "short_recording_id",
]

LEDGER_FILE = "ledger.sqlite3"
CONTROLLER_LOCK = "controller.lock"
_TRIGGERS_SQL = "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger'"


class SqliteLedger:
    """`storage.ports.LedgerDb` on one SQLite file."""

    def __init__(self, database: Database, root: Path) -> None:
        self._db = database
        self.read = database.read
        self.write = database.write
        self._lock_path = root / CONTROLLER_LOCK
        self._lock: int | None = None

    @property
    def groups(self) -> int:
        """Transactions that carried more than one queued write (group commit)."""
        return self._db.groups

    async def claim_controller(self, controller_id: str) -> None:
        """One SQLite ledger is one node: a second controller on the same data directory
        would settle the first one's live calls as its own. An exclusive `flock` on
        `controller.lock`, held until `close` (the kernel drops it when the process dies,
        even by kill -9: no stale lock to clean up)."""
        if self._lock is None:
            self._lock = await asyncio.to_thread(_lock, self._lock_path, controller_id)

    async def check_claim(self) -> ClaimCheck:
        # Nothing to check: the flock belongs to this process's open file description of
        # `controller.lock` on the data directory's (local) file system. No session or
        # server stands between them, so it cannot end while the process runs with the
        # descriptor open; the process's end drops it and the controller with it.
        return ClaimCheck(ClaimState.HELD)

    def append_audit(
        self,
        tx: Tx,
        key: bytes,
        at: datetime,
        action: str,
        entries: Sequence[tuple[str, Mapping[str, str]]],
    ) -> None:
        # The transaction began with BEGIN IMMEDIATE: nobody else appends meanwhile.
        chain.append(tx, key, at, action, entries)

    def guard_problems(self, tx: Tx) -> list[str]:
        """The append-only triggers, compared with the definitions the migrations create,
        not only counted: a trigger of the same name that does nothing is as good as none.
        A trigger the migrations never made, on any table, is reported too."""
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

    def json_text(self, column: str, key: str) -> str:
        return f"json_extract({column}, '$.{key}')"

    def full_scan(self, table: str, alias: str) -> str:
        # Through the subject index the audit is read in random order: 1.1 s of verify's
        # checks at 200,000 calls, against 0.19 s for a plain scan.
        return f"{table} {alias} NOT INDEXED"

    async def close(self) -> None:
        try:
            await self._db.close()
        finally:
            if self._lock is not None:
                os.close(self._lock)
                self._lock = None


def _lock(path: Path, controller_id: str) -> int:
    """Take the controller lock at `path` (blocking, but never waiting for it); its fd."""
    doing = f"taking the controller lock {path}"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise os_error(error, doing) from error
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            raise StorageError(
                f"another controller ({shown(holder, 120)}) serves the store at "
                f"{path.parent}: one SQLite ledger serves one controller; stop it first, or "
                "give this one its own data directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, controller {controller_id}\n".encode(), 0)
    except OSError as error:
        os.close(fd)
        raise os_error(error, doing) from error
    except BaseException:
        os.close(fd)
        raise
    return fd


def _normal(sql: str | None) -> str:
    return " ".join((sql or "").split())


class SqliteStore(Store):
    """The store on SQLite and local files (`storage.store.Store`)."""

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
        controller_id: str | None = None,
    ) -> SqliteStore:
        """Open the store rooted at `data_dir`, migrating its ledger as needed.

        A store is made only with `create` (then `created` says whether this call made it),
        and only in a new or empty directory: a path without a ledger is otherwise a
        `NotFoundError` naming it, so a mistyped data directory never becomes a new, empty
        store that verifies clean. A ledger whose pseudonym key is missing never opens.
        `spool_dir` is where MixMonitor writes; `verify` then also reports files left there.
        `controller_id` names the controller the calls it starts belong to (default: one
        of this host and data directory, `storage.datadir.default_controller_id`).
        """
        owner = None if controller_id is None else checked_controller_id(controller_id)

        def prepare_dir() -> tuple[Path, bytes, bool]:
            root = Path(data_dir).absolute()
            new = not os.path.lexists(root / LEDGER_FILE)
            if new:
                if not create:
                    raise NotFoundError(
                        f"no store at {root} (no {LEDGER_FILE} there): check the data "
                        "directory, or create a store with `callrec init`"
                    )
                claim(root, LEDGER_FILE)
            key = prepare(root, new=new)
            if new:
                with contextlib.suppress(FileExistsError):  # another process made it first
                    os.close(files.new_file(root / LEDGER_FILE))
            return root, key, new

        try:
            root, key, created = await asyncio.to_thread(prepare_dir)
        except OSError as error:
            raise os_error(error, f"opening the store {data_dir}") from error
        database = await Database.open(
            root / LEDGER_FILE,
            busy_timeout=busy_timeout,
            retry_for=retry_for,
            runners=migration_runners(root),
        )
        return await cls.on_local_files(
            SqliteLedger(database, root),
            root,
            policy,
            key,
            spool_dir=spool_dir,
            controller_id=owner,
            created=created,
        )


def migration_runners(root: Path) -> Mapping[PythonStep, StepRunner]:
    """The Python steps of the ledger's migrations, for the store rooted at `root`."""

    async def start_keyed_chain(conn: aiosqlite.Connection) -> None:
        rows = list(await conn.execute_fetchall(chain.HEAD_SQL))
        seq, prev = (0, GENESIS) if not rows else (int(rows[0][0]), str(rows[0][1]))

        def keys_and_checkpoint() -> tuple[bytes, str, str]:
            # The keys are made here, when the keyed chain starts (a new store or an older
            # ledger), and never again: a later open without them is an error.
            checkpoints.create_signing_key(root)
            chain.create_audit_key(root)
            signing = checkpoints.load_signing_key(root)
            # A checkpoint of what is already committed: whatever becomes of this
            # transaction, it stays true. Opening a store takes no time argument, so the
            # store's birth (or upgrade) is stamped with the machine's clock.
            when = ts(datetime.now(UTC))
            checkpoints.append(
                root / checkpoints.CHECKPOINTS_DIR, checkpoints.sign(signing, seq, prev, when)
            )
            return chain.load_audit_key(root), when, checkpoints.fingerprint(signing.public_key())

        try:
            key, when, signer = await asyncio.to_thread(keys_and_checkpoint)
        except OSError as error:
            raise StorageError(f"starting the keyed audit chain: {error}") from error
        if seq == 0:
            return  # a new chain: keyed from its first entry
        details = {
            "from_seq": str(seq + 1),
            "previous_head": prev,
            "mac": chain.MAC,
            "audit_key": chain.key_id(key),
            "checkpoint_key": signer,
        }
        body = canonical(seq + 1, when, chain.KEYED_START, "audit", details)
        await conn.execute(
            chain.INSERT_SQL,
            (
                seq + 1,
                when,
                chain.KEYED_START,
                "audit",
                json.dumps(details, sort_keys=True),
                prev,
                chain.entry_mac(key, prev, body),
            ),
        )

    return {START_KEYED_AUDIT: start_keyed_chain}
