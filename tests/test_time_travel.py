"""`--now` cannot make a store of real calls travel in time: once `serve` or `fastagi` has
run on a store, commands that write to it use the machine's clock; `--now` stays for replay
and demo stores and for questions that write nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import callrec, fastagi_config, serve_once
from conftest import LEDGER_DB
from storage_helpers import POLICY, open_store

FUTURE = "2062-01-01T00:00:00+00:00"
PAST = "2020-01-01T00:00:00+00:00"
WRITING_WITH_NOW = [
    ["sweep", "--now", FUTURE],
    ["withdraw", "--caller", "041 555 101", "--via", "phone", "--by", "dpo", "--now", PAST],
    ["callbacks", "--overload", "on", "--by", "dpo", "--now", PAST],
    ["recordings", "export", "0" * 32, "--to", "OUT", "--purpose", "evidence", "--by", "dpo",
     "--now", PAST],
]  # fmt: skip


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """A store that `callrec fastagi` has served, on each backend (as the `ledger` fixture,
    for the whole module: starting a controller for every test would be slow)."""
    with pytest.MonkeyPatch.context() as patch:
        if request.param == "postgresql":
            patch.setenv(LEDGER_DB, request.getfixturevalue("pg_database"))
        else:
            patch.delenv(LEDGER_DB, raising=False)
        root = tmp_path_factory.mktemp("served")
        data_dir = root / "store"
        serve_once(data_dir, fastagi_config(root / "etc"))
        assert (data_dir / "ledger.sqlite3").exists() == (request.param == "sqlite")
        yield data_dir


def audit_rows(data_dir: Path) -> list[tuple[object, ...]]:
    async def read() -> list[tuple[object, ...]]:
        async with await open_store(data_dir, POLICY) as store:
            return [(e.seq, e.at, e.action, e.subject) for e in await store.audit_entries()]

    return asyncio.run(read())


@pytest.mark.parametrize("args", WRITING_WITH_NOW, ids=lambda a: a[0])
def test_a_served_store_refuses_writing_at_another_time(
    served: Path, tmp_path: Path, args: list[str]
) -> None:
    """sweep, withdraw, the overload switch and export with --now on a store of real calls:
    exit 2, one line saying why, and the audit log unchanged."""
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    before = audit_rows(served)
    result = callrec(*args, data_dir=served, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "--now" in line and "serves real calls" in line
    assert audit_rows(served) == before


@pytest.mark.parametrize(
    "args",
    [
        ["sweep", "--dry-run", "--now", FUTURE],
        ["callbacks", "--now", PAST],
        ["report", "--from", PAST, "--to", FUTURE],
        ["recordings", "verify"],
    ],
    ids=lambda a: a[0],
)
def test_a_served_store_answers_questions_about_any_time(served: Path, args: list[str]) -> None:
    """Questions that write nothing may name any time on a store of real calls."""
    callrec(*args, data_dir=served)


def test_a_served_store_takes_writes_at_the_machine_time(served: Path) -> None:
    """Without --now a sweep and a withdrawal run, a withdrawal received earlier keeps its
    --received-at, and one received in the future is refused as before."""
    callrec("sweep", data_dir=served)
    done = callrec(
        "withdraw", "--caller", "041 555 102", "--via", "email", "--by", "dpo",
        "--received-at", PAST, data_dir=served,
    )  # fmt: skip
    assert "received 2020-01-01" in done.stdout
    ahead = callrec(
        "withdraw", "--caller", "041 555 102", "--via", "email", "--by", "dpo",
        "--received-at", FUTURE, data_dir=served, check=False,
    )  # fmt: skip
    assert ahead.returncode == 2 and "after it is registered" in ahead.stderr


def test_a_replay_store_keeps_now(tmp_path: Path, ledger: str) -> None:
    """A store that never served calls (made by init, as by demo and replay) still takes
    --now for writing commands, so scenarios can be replayed."""
    data_dir = tmp_path / "store"
    callrec("init", data_dir=data_dir)
    callrec("sweep", "--now", FUTURE, data_dir=data_dir)
    callrec(
        "withdraw", "--caller", "041 555 101", "--via", "phone", "--by", "dpo", "--now", PAST,
        data_dir=data_dir,
    )  # fmt: skip
    assert any(str(row[1]).startswith("2020-01-01") for row in audit_rows(data_dir))


def test_demo_refuses_a_store_of_real_calls(served: Path) -> None:
    """`callrec demo` pointed at a store that served real calls refuses to play its dated
    scenario calls into it."""
    before = audit_rows(served)
    result = callrec("demo", "--data-dir", str(served), data_dir=served, check=False)
    assert result.returncode == 2
    assert "serves real calls" in result.stderr
    assert audit_rows(served) == before
