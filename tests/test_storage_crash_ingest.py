"""kill -9 at every durable step of ingest and export, then a restart: nothing is lost,
no copy is left unowned (see `storage_crashing.py` for how the kills are placed)."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from storage_crashing import Case, crash_everywhere, files_under
from storage_helpers import POLICY, T0, new_id, open_store, record_call

from storage.ports import RecordingStatus

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ledger")]


# ---------------------------------------------------------------------- ingest


def _ingest_preparer(spool_base: Callable[[Path], Path]) -> Callable[[Path], Awaitable[Case]]:
    async def prepare(root: Path) -> Case:
        data, spool = root / "data", spool_base(root)
        spool.mkdir(parents=True)
        async with await open_store(data, POLICY, create=True) as store:
            call_id, source = await record_call(store, spool)
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        return Case(
            root,
            data,
            spool,
            "ingest",
            T0 + timedelta(minutes=4),
            {"call_id": call_id, "source": str(source)},
            {"sha256": digest},
        )

    return prepare


async def _check_ingest(case: Case) -> None:
    async with await open_store(case.data, POLICY, spool_dir=case.spool) as store:
        await store.reconcile(case.spool, case.now + timedelta(minutes=1))
        rows = await store.recordings(include_deleted=True)
        assert len(rows) == 1, f"{len(rows)} recordings for one call"
        [row] = rows
        assert row.status is RecordingStatus.STORED and row.sha256 == case.facts["sha256"]
        assert row.path is not None
        assert hashlib.sha256(Path(row.path).read_bytes()).hexdigest() == row.sha256
        assert files_under(case.spool) == [], "the spool still holds a copy"
        report = await store.verify()
        assert report.ok, report.problems
        again = await store.ingest(case.args["call_id"], Path(case.args["source"]), case.now)
        assert again == row


async def test_kill_during_ingest_by_rename_loses_nothing(tmp_path: Path) -> None:
    """Same file system (rename): after a kill at any step and a restart the recording is
    stored exactly once, intact, and no copy is left in the spool or the store."""
    steps = await crash_everywhere(
        _ingest_preparer(lambda root: root / "spool"), _check_ingest, tmp_path
    )
    assert "replace" in steps and "commit" in steps


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm: no second file system to ingest from")
    path = shm / f"callrec-crash-{new_id()}"
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def test_kill_during_ingest_by_copy_loses_nothing(tmp_path: Path, shm_dir: Path) -> None:
    """Another file system (copy, fsync, rename, then remove the source): the same holds."""
    if shm_dir.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("/dev/shm is on the same file system as the temporary directory")
    steps = await crash_everywhere(
        _ingest_preparer(lambda root: shm_dir / root.name), _check_ingest, tmp_path
    )
    assert steps.count("fsync") >= 2 and "unlink" in steps


# ---------------------------------------------------------------------- export


async def _prepare_export(root: Path) -> Case:
    data, spool = root / "data", root / "spool"
    spool.mkdir(parents=True)
    async with await open_store(data, POLICY, create=True) as store:
        call_id, source = await record_call(store, spool, line="sales")
        row = await store.ingest(call_id, source, T0)
        assert row is not None
    return Case(
        root,
        data,
        spool,
        "export",
        T0 + timedelta(days=1),
        {"ids": [row.id], "dest": str(root / "out")},
        {"id": row.id},
    )


async def _check_export(case: Case) -> None:
    async with await open_store(case.data, POLICY) as store:
        await store.reconcile(case.spool, case.now)
        report = await store.verify()
        assert report.ok, report.problems
        exported = files_under(case.root / "out")
        assert all(not p.name.startswith(".") for p in exported), exported
        assert len(exported) in (0, 4), (
            exported
        )  # all (audio, manifest, sums, signature) or nothing
        row = await store.recording(case.facts["id"])
        assert row is not None
        await store.sweep(row.delete_after)
        assert files_under(case.root / "out") == [], "a copy escaped the deletion"


async def test_kill_during_export_leaves_no_unregistered_copy(tmp_path: Path) -> None:
    """An export killed at any step is either whole or removed at restart, and every copy
    it made is deleted with the recording."""
    await crash_everywhere(_prepare_export, _check_export, tmp_path)
