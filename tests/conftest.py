"""The storage tests' two backends: each test of a module that uses the `ledger` fixture runs
on the data directory's SQLite ledger and on a PostgreSQL ledger (`tests/pg_server.py`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pg_server
import pytest

LEDGER_DB = "CALLREC_TEST_LEDGER_DB"  # read by storage_helpers, here and in crash children


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "sqlite_only(reason): pokes the SQLite file itself; the PostgreSQL run leaves it out",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept: list[pytest.Item] = []
    left: list[pytest.Item] = []
    for item in items:
        params = getattr(item, "callspec", None)
        on_pg = params is not None and params.params.get("ledger") == "postgresql"
        (left if on_pg and item.get_closest_marker("sqlite_only") else kept).append(item)
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = kept


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    """The directory MixMonitor writes to, empty."""
    path = tmp_path / "spool"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """This run's own PostgreSQL database, dropped at the end."""
    url = pg_server.server_url()
    why = pg_server.reachable(url)
    if why is not None:
        pytest.skip(why)
    with pg_server.database(url) as database:
        yield database


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The backend under test; stores opened through `storage_helpers.open_store` use it."""
    if request.param == "postgresql":
        monkeypatch.setenv(LEDGER_DB, request.getfixturevalue("pg_database"))
    else:
        monkeypatch.delenv(LEDGER_DB, raising=False)
    return str(request.param)
