"""The one place that chooses a ledger backend: `open_store`."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from flows.errors import CallrecError
from flows.numbers import shown
from flows.policy import Policy
from storage import backends
from storage.ledgers import POSTGRESQL, LedgerConfig, backend_of, redact
from storage.ports import StoreApi
from storage.schema import MIGRATIONS
from storage.sqlite import LEDGER_FILE, SqliteStore
from storage.store import Store

DEFAULT_LEDGER = "sqlite:"  # the SQLite file in the data directory
SCHEMA_VERSION = len(MIGRATIONS)  # what this program migrates every ledger to


async def open_store(
    data_dir: Path,
    policy: Policy,
    *,
    ledger_url: str | None = None,
    ledger_password: str | None = None,
    create: bool = False,
    spool_dir: Path | None = None,
    controller_id: str | None = None,
) -> StoreApi:
    """As `open_ledger`, the ledger named by its URL and password."""
    ledger = LedgerConfig(url=ledger_url, password=ledger_password)
    return await open_ledger(
        data_dir,
        policy,
        ledger,
        create=create,
        spool_dir=spool_dir,
        controller_id=controller_id,
    )


async def open_ledger(
    data_dir: Path,
    policy: Policy,
    ledger: LedgerConfig | None = None,
    *,
    create: bool = False,
    spool_dir: Path | None = None,
    controller_id: str | None = None,
) -> Store:
    """The store whose keys and recordings are in `data_dir` and whose ledger `ledger_url`
    names: `sqlite:` (the default) or `sqlite:///<data_dir>/ledger.sqlite3`, the SQLite
    file of the data directory, or `postgresql://user@host[:port]/db` (its password
    `ledger_password`, else libpq's own means). `create`, `spool_dir` and `controller_id`:
    as `storage.sqlite.SqliteStore.open`."""
    url = (ledger.url if ledger is not None else None) or DEFAULT_LEDGER
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        if parts.path not in ("", "/") and not _names_ledger_of(parts.path, data_dir):
            raise CallrecError(
                f"the SQLite ledger is the file {LEDGER_FILE} of the data directory "
                f"({data_dir}), not {shown(parts.path, 80)}: set the data directory instead"
            )
        return await SqliteStore.open(
            data_dir, policy, create=create, spool_dir=spool_dir, controller_id=controller_id
        )
    if parts.scheme in ("postgresql", "postgres"):
        return await backends.PgStore.open(
            data_dir,
            policy,
            LedgerConfig(url=url, password=ledger.password if ledger is not None else None),
            create=create,
            spool_dir=spool_dir,
            controller_id=controller_id,
        )
    raise CallrecError(
        f"unknown ledger {shown(parts.scheme or redact(url), 40)}: "
        "expected a sqlite: or postgresql: URL"
    )


async def ledger_version(
    data_dir: Path, *, ledger_url: str | None = None, ledger_password: str | None = None
) -> int:
    """The schema version of the store's ledger now (0: none yet), changing nothing."""
    ledger = LedgerConfig()
    if ledger_url and backend_of(ledger_url) == POSTGRESQL:
        ledger = LedgerConfig(url=ledger_url, password=ledger_password)
    return await backends.ledger_version(data_dir, ledger)


def _names_ledger_of(path: str, data_dir: Path) -> bool:
    return Path(path).absolute() == (Path(data_dir) / LEDGER_FILE).absolute()
