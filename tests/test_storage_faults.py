"""Bad input and faults: hostile caller IDs, a full disk, a read-only store, a locked
ledger, missing and truncated files. Each gives a clear error and loses nothing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from storage_helpers import (
    ALICE,
    POLICY,
    T0,
    new_id,
    open_store,
    raw_ledger,
    record_call,
    wav_bytes,
)

from flows.errors import (
    CallrecError,
    IntegrityError,
    NotFoundError,
    NumberError,
    StorageError,
    StoreFullError,
    StoreReadOnlyError,
)
from flows.policy import Decision, Direction, LegalBasis, Purpose
from storage.ports import CallStart, DecisionRecord, RecordingStatus, WithdrawalVia
from storage.sqlite import SqliteStore

pytestmark = pytest.mark.usefixtures("ledger")

HOSTILE = (
    "../../etc/passwd",
    "'; DROP TABLE calls; --",
    '"+38641111111" OR 1=1',
    "041\x00111111",
    "9" * 10_000,
    "+386 41 111 111/../../x",
)
SAFE_NAME = re.compile(
    r"^(recordings|exports|ledger\.sqlite3(-wal|-shm)?|pseudonym\.key|\d{2,4}|[0-9a-f]{32}\.wav"
    r"|audit\.key|checkpoint\.(key|pub)|checkpoints|checkpoints\.jsonl)$"
)


@pytest.fixture
async def store(tmp_path: Path, spool: Path, ledger: str) -> AsyncIterator[SqliteStore]:
    async with await open_store(tmp_path / "data", POLICY, spool_dir=spool, create=True) as opened:
        yield opened


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[None]:
    """A real small file system mounted at `path` (needs the right to mount)."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
            check=True,
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError) as error:
        pytest.skip(f"cannot mount a tmpfs here ({error}); no real full disk to test on")
    try:
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True, capture_output=True, timeout=10)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("hostile", HOSTILE, ids=lambda h: repr(h[:12]))
async def test_hostile_caller_ids_never_reach_a_path_or_sql(
    store: SqliteStore, spool: Path, hostile: str
) -> None:
    """A caller ID with `../`, quotes, NUL or 10 kB is no number: the call is stored as
    anonymous, its recording named by its id, the ledger intact; the channel id is
    kept verbatim as a parameter; a withdrawal for it is refused."""
    call_id = new_id()
    await store.start_call(
        CallStart(call_id, hostile, Direction.INBOUND, "sales", hostile, hostile, T0)
    )
    await store.commit_decision(
        DecisionRecord(
            call_id, Decision.RECORD, LegalBasis.ZEKOM2_214_7, None, hostile, hostile, None, T0
        )
    )
    source = spool / f"{call_id}.wav"
    await store.set_recording_file(call_id, str(source))
    source.write_bytes(wav_bytes())
    row = await store.ingest(call_id, source, T0)
    assert row is not None and row.caller is None and row.dialed is None
    call = await store.get_call(call_id)
    assert call is not None and call.channel_id == hostile and call.reason == hostile
    for path in store.data_dir.rglob("*"):
        assert SAFE_NAME.match(path.name), path
    found = await store.callback_candidates(hostile, T0 - timedelta(days=1), LegalBasis.CONSENT)
    assert found.calls == () and found.withdrawals == ()
    with pytest.raises(NumberError):
        await store.withdraw(hostile, WithdrawalVia.EMAIL, T0, "dpo", T0)
    with pytest.raises(NotFoundError):
        await store.access(hostile, Purpose.EVIDENCE, "dpo", T0)
    with raw_ledger(store.data_dir) as raw:
        assert raw.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 1
        logged = raw.execute("SELECT recording_id FROM access_log").fetchone()[0]
        assert len(logged) <= 64
    assert (await store.verify()).ok


async def test_a_malformed_call_id_is_refused_and_the_file_stays(
    store: SqliteStore, spool: Path
) -> None:
    """Call ids are ours (32 hex digits); anything else is refused before any file work."""
    source = spool / "x.wav"
    source.write_bytes(wav_bytes())
    with pytest.raises(StorageError, match="malformed call id"):
        await store.ingest("../../x", source, T0)
    with pytest.raises(StorageError, match="malformed call id"):
        await store.start_call(CallStart("../x", "1", Direction.INBOUND, "sales", ALICE, None, T0))
    assert source.read_bytes() == wav_bytes()


async def test_naive_times_are_refused(store: SqliteStore, spool: Path) -> None:
    """A time without a zone would be stored at the wrong instant: refused."""
    call_id, source = await record_call(store, spool)
    with pytest.raises(CallrecError, match="time zone"):
        await store.ingest(call_id, source, datetime(2025, 3, 3, 9, 0))
    with pytest.raises(CallrecError, match="time zone"):
        await store.sweep(datetime(2025, 3, 3, 9, 0))
    assert source.exists()


async def test_a_missing_source_is_reported_not_crashed_on(store: SqliteStore, spool: Path) -> None:
    """Ingesting a file that is not there is a NotFoundError and leaves no half state."""
    call_id, source = await record_call(store, spool)
    source.unlink()
    with pytest.raises(NotFoundError, match="does not exist"):
        await store.ingest(call_id, source, T0)
    assert await store.recordings(include_deleted=True) == []
    assert (await store.verify()).ok


async def test_a_symlink_is_never_followed_into_the_store(
    store: SqliteStore, spool: Path, tmp_path: Path
) -> None:
    """A symbolic link in the spool is refused; its target is neither copied nor moved."""
    call_id, source = await record_call(store, spool)
    secret = tmp_path / "secret.txt"
    secret.write_text("not audio")
    source.unlink()
    source.symlink_to(secret)
    with pytest.raises(StorageError, match="not a regular file"):
        await store.ingest(call_id, source, T0)
    assert secret.read_text() == "not audio"
    assert await store.recordings(include_deleted=True) == []


async def test_a_truncated_recording_is_reported(store: SqliteStore, spool: Path) -> None:
    """A stored file cut short is reported by verify and refused (and logged) on access."""
    call_id, source = await record_call(store, spool, line="sales")
    row = await store.ingest(call_id, source, T0)
    assert row is not None and row.path is not None
    with open(row.path, "r+b") as handle:
        handle.truncate(100)
    problems = (await store.verify()).problems
    assert problems == (
        f"recording {row.id}: 100 bytes, the ledger says {row.size} (truncated or altered)",
    )
    with pytest.raises(IntegrityError, match="missing or truncated"):
        await store.access(row.id, Purpose.EVIDENCE, "lawyer", T0)
    assert [a.allowed for a in await store.access_log(row.id)] == [False]


async def test_a_damaged_pseudonym_key_is_refused(tmp_path: Path) -> None:
    """A key of the wrong size is never replaced silently (old pseudonyms would orphan)."""
    data = tmp_path / "data"
    async with await open_store(data, POLICY, create=True):
        pass
    (data / "pseudonym.key").write_bytes(b"short")
    with pytest.raises(StorageError, match="restore it"):
        await open_store(data, POLICY)


async def test_concurrent_ingests_of_one_call_store_it_once(
    store: SqliteStore, spool: Path
) -> None:
    """Two ingests of the same call at once (ARI and a hangup route) give one recording."""
    call_id, source = await record_call(store, spool)
    first, second = await asyncio.gather(
        store.ingest(call_id, source, T0), store.ingest(call_id, source, T0)
    )
    assert first == second and first is not None
    assert len(await store.recordings()) == 1


# -------------------------------------------------------------- full and read-only


async def test_a_full_disk_gives_a_clear_error_and_keeps_the_source(
    tmp_path: Path, spool: Path
) -> None:
    """With the store on a 64 kB file system a 200 kB recording does not fit: StoreFullError,
    the spool file untouched, no partial file; once there is room the same ingest works."""
    data = tmp_path / "data"
    recordings = data / "recordings"
    async with await open_store(data, POLICY, spool_dir=spool, create=True) as store:
        call_id, source = await record_call(store, spool, audio=wav_bytes(frames=100_000))
        audio = source.read_bytes()
        with tmpfs(recordings, "size=64k,mode=0700"):
            with pytest.raises(StoreFullError, match="no space left"):
                await store.ingest(call_id, source, T0)
            assert source.read_bytes() == audio
            assert [p for p in recordings.rglob("*") if p.is_file()] == []
        row = await store.ingest(call_id, source, T0)
        assert row is not None and row.status is RecordingStatus.STORED
        assert row.path is not None and Path(row.path).read_bytes() == audio
        assert (await store.verify()).ok


async def test_a_read_only_store_gives_a_clear_error_and_keeps_the_source(
    tmp_path: Path, spool: Path
) -> None:
    """A store that cannot be written (a read-only mount; for non-root, mode 0500) gives
    StoreReadOnlyError and the spool file stays where it was."""
    data = tmp_path / "data"
    recordings = data / "recordings"
    async with await open_store(data, POLICY, spool_dir=spool, create=True) as store:
        call_id, source = await record_call(store, spool)
        audio = source.read_bytes()
        if os.geteuid() == 0:
            # chmod does not stop root; a read-only mount does.
            guard: contextlib.AbstractContextManager[None] = tmpfs(recordings, "size=1m,ro")
        else:
            guard = _mode(recordings, 0o500)
        with guard:
            with pytest.raises(StoreReadOnlyError, match="cannot be written"):
                await store.ingest(call_id, source, T0)
            assert source.read_bytes() == audio
        assert await store.recordings(include_deleted=True) == []
        row = await store.ingest(call_id, source, T0)
        assert row is not None and row.status is RecordingStatus.STORED


@contextlib.contextmanager
def _mode(path: Path, mode: int) -> Iterator[None]:
    old = path.stat().st_mode
    path.chmod(mode)
    try:
        yield
    finally:
        path.chmod(old)


# ------------------------------------------------------------------- locked ledger

HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


@contextlib.asynccontextmanager
async def holding_the_ledger(store: SqliteStore, seconds: float) -> AsyncIterator[None]:
    """Another process holds the ledger's write lock (BEGIN EXCLUSIVE) for `seconds`."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOLDER,
        str(store.data_dir / "ledger.sqlite3"),
        str(seconds),
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert await asyncio.wait_for(proc.stdout.readline(), 10) == b"locked\n"
    try:
        yield
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


@pytest.mark.sqlite_only("holds SQLite's write lock from another process")
async def test_a_locked_ledger_is_retried(tmp_path: Path) -> None:
    """While another process holds the write lock the store waits and retries; the write
    lands once the lock is released."""
    async with await open_store(
        tmp_path / "data", POLICY, busy_timeout=0.05, retry_for=10, create=True
    ) as store:
        async with holding_the_ledger(store, 1.0):
            started = time.monotonic()
            await store.set_overload(True, "lead", T0)
            waited = time.monotonic() - started
        assert waited > 0.5
        assert await store.overload() is True


@pytest.mark.sqlite_only("holds SQLite's write lock from another process")
async def test_a_ledger_that_stays_locked_gives_a_clear_error(tmp_path: Path) -> None:
    """Past the retry budget the error says the ledger stayed locked; nothing half-done."""
    async with await open_store(
        tmp_path / "data", POLICY, busy_timeout=0.05, retry_for=0.4, create=True
    ) as store:
        async with holding_the_ledger(store, 5.0):
            with pytest.raises(StorageError, match="stayed locked by another process"):
                await store.set_overload(True, "lead", T0)
        assert await store.overload() is False
        await store.set_overload(True, "lead", T0)
        assert await store.overload() is True
