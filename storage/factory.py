"""The one place that chooses a ledger backend: `open_store`."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from flows.errors import CallrecError
from flows.numbers import shown
from flows.policy import Policy
from storage.ports import StoreApi
from storage.sqlite import LEDGER_FILE, SqliteStore

DEFAULT_LEDGER = "sqlite:"  # the SQLite file in the data directory


async def open_store(
    data_dir: Path,
    policy: Policy,
    *,
    ledger_url: str | None = None,
    create: bool = False,
    spool_dir: Path | None = None,
    controller_id: str | None = None,
) -> StoreApi:
    """The store whose keys and recordings are in `data_dir` and whose ledger `ledger_url`
    names: `sqlite:` (the default) or `sqlite:///<data_dir>/ledger.sqlite3`, the SQLite
    file of the data directory. `create`, `spool_dir` and `controller_id`: as
    `storage.sqlite.SqliteStore.open`."""
    url = ledger_url or DEFAULT_LEDGER
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        if parts.path and not _names_ledger_of(parts.path, data_dir):
            raise CallrecError(
                f"the SQLite ledger is the file {LEDGER_FILE} of the data directory "
                f"({data_dir}), not {shown(parts.path, 80)}: set the data directory instead"
            )
        return await SqliteStore.open(
            data_dir, policy, create=create, spool_dir=spool_dir, controller_id=controller_id
        )
    raise CallrecError(f"unknown ledger {shown(parts.scheme or url, 40)}: expected a sqlite: URL")


def _names_ledger_of(path: str, data_dir: Path) -> bool:
    return Path(path).absolute() == (Path(data_dir) / LEDGER_FILE).absolute()
