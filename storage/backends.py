"""Which ledger a store uses: the data directory's SQLite file, or a PostgreSQL database.

`[storage] ledger_url` (or `CALLREC_LEDGER_URL`) names it: `sqlite://` (the default: the
data directory's `ledger.sqlite3`, as ever) or `postgresql://user@host[:port]/db`. The
password never comes from the URL of the config file; it comes from `CALLREC_LEDGER_PASSWORD`
or `storage.ledger_password_file`, or libpq's own means (`~/.pgpass`, a Unix socket).

With PostgreSQL the files stay under the data directory: the keys (pseudonym, audit MAC,
checkpoint signing), the signed checkpoints and the recordings. A data directory and a ledger
belong together: a new data directory is never paired with a ledger that already holds a
store (its keys would not match the chain), and a data directory that holds a SQLite ledger
is never silently switched to PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from flows.errors import NotFoundError, StorageError
from flows.policy import Policy
from storage import files
from storage.audit import load_key
from storage.blobs import RECORDINGS_DIR
from storage.datadir import (
    EXPORTS_DIR,
    KEY_FILE,
    checked_controller_id,
    claim,
)
from storage.db import RETRY_FOR, os_error
from storage.ledgers import LEDGER_FILE, POSTGRESQL, LedgerConfig
from storage.pg import PgDatabase
from storage.pg_schema import migration_runners
from storage.store import Store
from storage.verify import foreign_keys


async def open_postgres(
    root: Path,
    ledger: LedgerConfig,
    *,
    create: bool,
    retry_for: float,
    ledger_file: str,
    key_file: str,
    claim: Callable[[Path], None],
    prepare_dirs: Callable[[Path], None],
) -> tuple[PgDatabase, bytes, bool]:
    """The PostgreSQL ledger of the store rooted at `root`, migrated, with the store's
    pseudonym key and whether this call made the store."""
    assert ledger.url is not None
    db = await PgDatabase.connect(ledger.url, password=ledger.password, retry_for=retry_for)
    try:
        version = await db.version()

        def prepare() -> tuple[bytes, bool]:
            _pair(root, ledger, version, create=create, ledger_file=ledger_file, key_file=key_file)
            if version == 0:
                claim(root)
            prepare_dirs(root)
            return load_key(root / key_file, create=version == 0), version == 0

        try:
            key, created = await asyncio.to_thread(prepare)
        except OSError as error:
            raise os_error(error, f"opening the store {root}") from error
        await db.migrate(migration_runners(root))
    except BaseException:
        await db.close()
        raise
    return db, key, created


def _pair(
    root: Path, ledger: LedgerConfig, version: int, *, create: bool, ledger_file: str, key_file: str
) -> None:
    """Refuse a data directory and a ledger that do not belong together."""
    if os.path.lexists(root / ledger_file):
        raise StorageError(
            f"{root} holds a SQLite ledger ({ledger_file}), but the configuration names "
            f"the PostgreSQL ledger {ledger.shown}: move the ledger first, or unset "
            "storage.ledger_url"
        )
    if version > 0 and not os.path.lexists(root / key_file):
        if any(os.path.lexists(root / name) for name in _STORE_FILES):
            # This store's directory, its key lost: the key, not another directory, is
            # what the operator must bring back.
            load_key(root / key_file, create=False)
        raise StorageError(
            f"the ledger {ledger.shown} already holds a store whose keys are not in "
            f"{root}: name that store's data directory, or an empty database"
        )
    if version == 0 and not create:
        raise NotFoundError(
            f"no store at {root} (the ledger {ledger.shown} holds none): check the data "
            "directory and storage.ledger_url, or create a store with `callrec init`"
        )


# What a store's data directory holds besides the pseudonym key (`storage.datadir`).
_STORE_FILES = ("audit.key", "checkpoint.key", "checkpoints")


class PgStore(Store):
    """The store on a PostgreSQL ledger and local files (`storage.store.Store`)."""

    @classmethod
    async def open(
        cls,
        data_dir: Path,
        policy: Policy,
        ledger: LedgerConfig,
        *,
        create: bool = False,
        spool_dir: Path | None = None,
        retry_for: float = RETRY_FOR,
        controller_id: str | None = None,
    ) -> PgStore:
        """Open the store whose files are in `data_dir` and whose ledger is the PostgreSQL
        database `ledger` names, migrating it as needed; the rest as `SqliteStore.open`.
        Each controller on the ledger settles only its own calls after a restart, so each
        needs an id of its own (the default, of this host and data directory, is)."""
        owner = None if controller_id is None else checked_controller_id(controller_id)
        root = await asyncio.to_thread(Path(data_dir).absolute)
        db, key, created = await open_postgres(
            root,
            ledger,
            create=create,
            retry_for=retry_for,
            ledger_file=LEDGER_FILE,
            key_file=KEY_FILE,
            claim=lambda path: claim(path, LEDGER_FILE),
            prepare_dirs=make_dirs(RECORDINGS_DIR, EXPORTS_DIR),
        )
        store = await cls.on_local_files(
            db, root, policy, key, spool_dir=spool_dir, controller_id=owner, created=created
        )
        # Many nodes share this ledger: one whose keys differ would fork the audit chain.
        try:
            why = await foreign_keys(store.ctx)
        except BaseException:
            await store.close()
            raise
        if why is not None:
            await store.close()
            raise StorageError(why)
        return store


def make_dirs(*names: str) -> Callable[[Path], None]:
    def prepare_dirs(root: Path) -> None:
        for name in names:
            files.private_dir(root / name)

    return prepare_dirs


async def ledger_version(data_dir: Path, ledger: LedgerConfig) -> int:
    """The schema version of the store's ledger now (0: none yet), changing nothing."""
    if ledger.url is not None and ledger.backend == POSTGRESQL:
        db = await PgDatabase.connect(ledger.url, password=ledger.password)
        try:
            return await db.version()
        finally:
            await db.close()

    def sqlite_version() -> int:
        path = Path(data_dir).absolute() / LEDGER_FILE
        if not path.exists():
            return 0
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as conn:
            found = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
            ).fetchone()
            if found is None:
                return 0
            return int(conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0)

    try:
        return await asyncio.to_thread(sqlite_version)
    except sqlite3.Error as error:
        raise StorageError(f"reading the ledger's schema version: {error}") from error
