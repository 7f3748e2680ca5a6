"""Every directory and file callrec creates gets its mode from callrec, never from the umask:
the store 0700/0600, the spool as configured (0700 unless Asterisk's group is let in)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cli_helpers import callrec, fastagi_config, serve_once
from storage_helpers import POLICY, T0, open_store, record_call

from flows.policy import Purpose


@pytest.fixture(params=[0o000, 0o022], ids=["umask000", "umask022"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """The process's umask for the test (children inherit it), restored afterwards."""
    value: int = request.param
    previous = os.umask(value)
    try:
        yield value
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def modes_under(root: Path) -> dict[str, int]:
    """The mode of `root` and of everything below it, by path relative to `root`."""
    found = {".": mode(root)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = mode(path)
    return found


def test_a_controller_on_default_settings_keeps_its_store_private(
    tmp_path: Path, umask: int
) -> None:
    """`callrec fastagi` starting on nothing with the default settings: the data directory,
    the spool inside it and every directory of the store 0700, the ledger, the keys and the
    checkpoints 0600."""
    data_dir = tmp_path / "store"
    serve_once(data_dir, fastagi_config(tmp_path / "etc"))
    made = modes_under(data_dir)
    for name, got in made.items():
        wanted = 0o700 if (data_dir / name).is_dir() else 0o600
        if name == "checkpoint.pub":
            wanted = 0o644  # the public key: anyone may check a checkpoint with it
        assert got == wanted, f"{name}: {got:o}"
    assert {".", "spool", "recordings", "exports", "ledger.sqlite3"} <= made.keys()


def test_a_controller_creates_its_store_and_spool_with_exact_modes(
    tmp_path: Path, umask: int
) -> None:
    """`callrec fastagi` starting on nothing: data directory (and its missing parents),
    recordings and exports 0700, ledger and key 0600, and a spool configured as "2770"
    exactly that (group-writable for Asterisk, setgid), whatever the umask."""
    data_dir = tmp_path / "var" / "lib" / "callrec"
    spool = tmp_path / "spool" / "monitor" / "callrec"
    config = fastagi_config(
        tmp_path / "etc", f'[storage]\nspool_dir = "{spool}"\nspool_mode = "2770"\n'
    )
    serve_once(data_dir, config)
    assert mode(tmp_path / "var") == 0o700
    assert mode(tmp_path / "var" / "lib") == 0o700
    for directory in (data_dir, data_dir / "recordings", data_dir / "exports"):
        assert mode(directory) == 0o700, directory
    for name in ("ledger.sqlite3", "pseudonym.key"):
        assert mode(data_dir / name) == 0o600, name
    assert mode(spool) == 0o2770
    assert mode(spool.parent) == 0o2770  # a missing parent is made like the spool


def test_init_makes_a_private_store_and_spool(tmp_path: Path, umask: int, ledger: str) -> None:
    """`callrec init` with the default settings: everything it makes is its owner's only,
    the spool inside the store included (on PostgreSQL, the same files but the ledger)."""
    data_dir = tmp_path / "store"
    callrec("init", data_dir=data_dir)
    made = modes_under(data_dir)
    if ledger == "sqlite":
        assert made.pop("ledger.sqlite3") == 0o600
    for key in ("pseudonym.key", "audit.key", "checkpoint.key", "checkpoints/checkpoints.jsonl"):
        assert made.pop(key) == 0o600, key
    assert made.pop("checkpoint.pub") == 0o644
    for name in ("ledger.sqlite3-wal", "ledger.sqlite3-shm"):
        if name in made:
            assert made.pop(name) == 0o600
    assert made == {
        ".": 0o700,
        "recordings": 0o700,
        "exports": 0o700,
        "spool": 0o700,
        "checkpoints": 0o700,
    }


async def test_recordings_and_exports_get_exact_modes(
    tmp_path: Path, umask: int, ledger: str
) -> None:
    """A stored recording (its day directories 0700, the file 0600) and an export (its
    directories 0700, copies and manifest 0600) do not take the umask's modes."""
    data_dir = tmp_path / "store"
    spool = tmp_path / "spool"
    spool.mkdir()
    async with await open_store(data_dir, POLICY, spool_dir=spool, create=True) as store:
        call_id, source = await record_call(store, spool)
        row = await store.ingest(call_id, source, T0 + timedelta(minutes=4))
        assert row is not None and row.path is not None
        stored = Path(row.path)
        folder = await store.export(
            [row.id],
            tmp_path / "out" / "evidence",
            Purpose.EVIDENCE,
            "dpo",
            T0 + timedelta(hours=1),
        )
    assert mode(stored) == 0o600
    for directory in stored.relative_to(data_dir / "recordings").parents:
        assert mode(data_dir / "recordings" / directory) == 0o700, directory
    exported = modes_under(tmp_path / "out")
    assert exported.pop(".") == 0o700
    assert exported.pop("evidence") == 0o700
    assert exported.pop(str(folder.relative_to(tmp_path / "out"))) == 0o700
    assert set(exported.values()) == {0o600}, exported
    assert len(exported) == 4  # the copy, the manifest, SHA256SUMS and its signature
