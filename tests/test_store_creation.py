"""A store is created only on purpose: `callrec init`, or the first start of a controller
(said loudly). A mistyped path is an error that names it, and a lost key is never replaced."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cli_helpers import callrec, fastagi_config, serve_once
from storage_helpers import open_store

from flows.errors import NotFoundError, StorageError
from flows.policy import Policy
from storage.sqlite import SqliteStore

pytestmark = pytest.mark.usefixtures("ledger")

COMMANDS_NEEDING_A_STORE = [
    ["recordings", "list"],
    ["recordings", "show", "0" * 32],
    ["recordings", "export", "0" * 32, "--to", "OUT", "--purpose", "evidence", "--by", "dpo"],
    ["recordings", "verify"],
    ["withdraw", "--caller", "041 555 101", "--via", "phone", "--by", "dpo"],
    ["sweep"],
    ["sweep", "--dry-run"],
    ["callbacks"],
    ["callbacks", "--overload", "on", "--by", "dpo"],
    ["report", "--from", "2026-01-01T00:00:00+00:00", "--to", "2026-02-01T00:00:00+00:00"],
]


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("args", COMMANDS_NEEDING_A_STORE, ids=" ".join)
def test_a_command_on_a_path_without_a_store_names_it_and_creates_nothing(
    tmp_path: Path, args: list[str]
) -> None:
    """Every command but init, serve, fastagi, demo and replay refuses a path with no store:
    exit 2, one line naming the path, and no directory is made there."""
    data_dir = tmp_path / "mistyped" / "store"
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    line = one_line_error(callrec(*args, data_dir=data_dir, check=False))
    assert str(data_dir) in line
    assert "callrec init" in line
    assert not (tmp_path / "mistyped").exists()


def test_init_creates_a_store_once_and_then_commands_use_it(tmp_path: Path, ledger: str) -> None:
    """`callrec init` makes the ledger, the key and the directories; a second init changes
    nothing (the key stays the same); commands then work on the store."""
    data_dir = tmp_path / "new" / "store"
    first = callrec("init", data_dir=data_dir)
    assert "created a new store" in first.stdout
    key = (data_dir / "pseudonym.key").read_bytes()
    assert (data_dir / "ledger.sqlite3").is_file() == (ledger == "sqlite")
    assert (data_dir / "spool").is_dir()
    again = callrec("init", data_dir=data_dir)
    assert "exists" in again.stdout and "nothing created" in again.stdout
    assert (data_dir / "pseudonym.key").read_bytes() == key
    assert callrec("recordings", "verify", data_dir=data_dir).returncode == 0


def test_a_missing_pseudonym_key_is_refused_and_not_replaced(tmp_path: Path) -> None:
    """A store whose key is gone does not open, for a command or a starting controller:
    the error names the key's path and no new key appears."""
    data_dir = tmp_path / "store"
    callrec("init", data_dir=data_dir)
    key = data_dir / "pseudonym.key"
    key.unlink()
    line = one_line_error(callrec("recordings", "verify", data_dir=data_dir, check=False))
    assert str(key) in line and "restore it from the backup" in line
    config = fastagi_config(tmp_path / "etc")
    started = callrec("fastagi", data_dir=data_dir, config=config, check=False, timeout=60)
    assert str(key) in one_line_error(started)
    assert not key.exists()


def test_a_controller_creating_its_store_says_so_loudly(tmp_path: Path, ledger: str) -> None:
    """`callrec fastagi` on a path with no store creates one and logs a WARNING naming the
    path; on the next start, with the store there, it says nothing of the kind."""
    data_dir = tmp_path / "store"
    config = fastagi_config(tmp_path / "etc")
    first = serve_once(data_dir, config)
    warnings = [line for line in first.splitlines() if "WARNING" in line]
    assert any("NEW" in line and str(data_dir) in line for line in warnings), first
    assert (data_dir / "ledger.sqlite3").is_file() == (ledger == "sqlite")
    second = serve_once(data_dir, config)
    assert "NEW" not in second


def test_init_refuses_a_directory_that_holds_something_else(tmp_path: Path) -> None:
    """A store is never made in a directory with other files in it (a home directory named
    by mistake): exit 2 naming it, nothing written, its mode unchanged."""
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    (home / "notes.txt").write_text("mine")
    line = one_line_error(callrec("init", data_dir=home, check=False))
    assert str(home) in line and "notes.txt" in line
    assert sorted(p.name for p in home.iterdir()) == ["notes.txt"]
    assert home.stat().st_mode & 0o777 == 0o755


async def test_opening_a_missing_store_is_an_error_that_makes_nothing(tmp_path: Path) -> None:
    """Opening a store without `create` raises NotFoundError naming the path and leaves
    no directory behind."""
    data_dir = tmp_path / "absent"
    with pytest.raises(NotFoundError, match=str(data_dir)):
        await open_store(data_dir, Policy())
    assert not data_dir.exists()


@pytest.mark.sqlite_only("removes the SQLite ledger file")
async def test_recordings_without_their_ledger_never_get_a_new_one(tmp_path: Path) -> None:
    """A data directory whose ledger is gone but whose recordings remain is not made into a
    new, empty store, even by a controller's first start."""
    data_dir = tmp_path / "store"
    async with await SqliteStore.open(data_dir, Policy(), create=True) as store:
        assert store.created
    day = data_dir / "recordings" / "2026" / "03" / "02"
    day.mkdir(parents=True)
    (day / "a.wav").write_bytes(b"RIFF")
    (data_dir / "ledger.sqlite3").unlink()
    with pytest.raises(StorageError, match="restore the ledger"):
        await SqliteStore.open(data_dir, Policy(), create=True)
    assert not (data_dir / "ledger.sqlite3").exists()
