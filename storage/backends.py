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
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from flows.errors import ConfigError, NotFoundError, StorageError
from storage import files
from storage.audit import load_key
from storage.db import os_error
from storage.pg import PgDatabase, redact
from storage.pg_schema import migration_runners

LEDGER_FILE = "ledger.sqlite3"  # the SQLite ledger's name in the data directory
SQLITE = "sqlite"
POSTGRESQL = "postgresql"
_SCHEMES = {"sqlite": SQLITE, "postgresql": POSTGRESQL, "postgres": POSTGRESQL}


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    """Where the ledger is. `url` None: the data directory's SQLite file."""

    url: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def backend(self) -> str:
        return SQLITE if self.url is None else backend_of(self.url)

    @property
    def shown(self) -> str:
        return "the data directory's SQLite ledger" if self.url is None else redact(self.url)


def backend_of(url: str) -> str:
    scheme = urlsplit(url).scheme.lower()
    if scheme not in _SCHEMES:
        raise ConfigError(
            f"storage.ledger_url: must start with sqlite:// or postgresql://, got {redact(url)!r}"
        )
    return _SCHEMES[scheme]


def check_url(url: str, *, from_file: bool) -> str:
    """`url` when usable as a ledger URL; a `ConfigError` naming what is wrong otherwise."""
    kind = backend_of(url)
    parts = urlsplit(url)
    if kind == SQLITE:
        if parts.netloc or parts.path not in ("", "/"):
            raise ConfigError(
                "storage.ledger_url: the SQLite ledger is always the data directory's "
                "ledger.sqlite3; write sqlite:// and set storage.data_dir"
            )
        return url
    try:
        parts.port  # noqa: B018 - parsing it is the check
    except ValueError as error:
        raise ConfigError(f"storage.ledger_url: not a usable URL ({error})") from None
    if from_file and parts.password is not None:
        raise ConfigError(
            "storage.ledger_url: secrets are not kept in the config file; set "
            "storage.ledger_password_file or the CALLREC_LEDGER_PASSWORD environment variable"
        )
    if not parts.path.strip("/"):
        raise ConfigError("storage.ledger_url: name the database, postgresql://user@host/db")
    return url


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
        raise StorageError(
            f"the ledger {ledger.shown} already holds a store whose keys are not in "
            f"{root}: name that store's data directory, or an empty database"
        )
    if version == 0 and not create:
        raise NotFoundError(
            f"no store in the ledger {ledger.shown}: check storage.ledger_url, or "
            "create a store with `callrec init`"
        )


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
