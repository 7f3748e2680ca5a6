"""kill -9 at every durable step of a sweep and of a withdrawal, then a restart: nothing
is left undeleted and nothing deleted early (see `storage_crashing.py` for the kills)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from storage_crashing import Case, crash_everywhere, files_under
from storage_helpers import ALICE, BOB, POLICY, T0, open_store, record_call

from flows.policy import Purpose
from storage.checkpoints import PUBLIC_KEY_FILE, load_public_key
from storage.exportcheck import check_export
from storage.exportfiles import MANIFEST, SIGNATURE, SUMS
from storage.ports import RecordingStatus, WithdrawalVia

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ledger")]


# ----------------------------------------------------------------------- sweep


async def _prepare_sweep(root: Path) -> Case:
    data, spool, out = root / "data", root / "spool", root / "out"
    spool.mkdir(parents=True)
    async with await open_store(data, POLICY, create=True) as store:
        due: list[str] = []
        for line, caller in (("sales", ALICE), ("service", BOB)):
            call_id, source = await record_call(store, spool, line=line, caller=caller)
            row = await store.ingest(call_id, source, T0)
            assert row is not None
            due.append(row.id)
        later_call, source = await record_call(store, spool, at=T0 + timedelta(days=2))
        later = await store.ingest(later_call, source, T0 + timedelta(days=2))
        assert later is not None
        await store.export(due, out, Purpose.EVIDENCE, "dpo", T0 + timedelta(days=3))
        shared = await store.export([due[0], later.id], out, Purpose.EVIDENCE, "dpo", T0)
        keep_export = await store.export([later.id], out, Purpose.EVIDENCE, "dpo", T0)
        first = await store.recording(due[0])
        assert first is not None
    now = first.delete_after + timedelta(hours=1)
    return Case(
        root,
        data,
        spool,
        "sweep",
        now,
        {},
        {"due": due, "later": later.id, "keep_export": str(keep_export), "shared": str(shared)},
    )


async def _check_sweep(case: Case) -> None:
    async with await open_store(case.data, POLICY) as store:
        await store.reconcile(case.spool, case.now)
        await store.sweep(case.now)
        for recording_id in case.facts["due"]:
            row = await store.recording(recording_id)
            assert row is not None and row.status is RecordingStatus.DELETED
            actions = [e.action for e in await store.audit_entries(recording_id)]
            assert "recording.deleted" in actions
        later = await store.recording(case.facts["later"])
        assert later is not None and later.status is RecordingStatus.STORED, "deleted early"
        stored = files_under(store.recordings_dir)
        assert stored == [Path(str(later.path))], f"left in the store: {stored}"
        keep, shared = Path(case.facts["keep_export"]), Path(case.facts["shared"])
        exported = files_under(case.root / "out")
        left = files_under(keep) + [
            shared / name for name in (f"{later.id}.wav", MANIFEST, SUMS, SIGNATURE)
        ]
        assert sorted(exported) == sorted(left), f"copies left: {exported}"
        public = load_public_key(case.data / PUBLIC_KEY_FILE)
        for folder in (keep, shared):
            checked = check_export(folder, public)
            assert checked.ok, checked.problems
        report = await store.verify()
        assert report.ok, report.problems
        notes = await store.ctx.db.read(lambda tx: tx.all("SELECT ids FROM deletions"), "notes")
        assert not notes, f"deletions still noted as under way: {notes}"


async def test_kill_during_sweep_leaves_nothing_undeleted(tmp_path: Path) -> None:
    """After a kill at any step of a sweep and a re-run, every due recording and every
    export copy of it is gone with an audit entry, nothing not yet due was touched, no
    deletion is left noted as under way, and the exports left (one held a due and a later
    recording) verify offline."""
    steps = await crash_everywhere(_prepare_sweep, _check_sweep, tmp_path)
    assert steps.count("unlink") >= 5


# -------------------------------------------------------------------- withdraw


async def _prepare_withdraw(root: Path) -> Case:
    data, spool = root / "data", root / "spool"
    spool.mkdir(parents=True)
    ids: dict[str, str] = {}
    async with await open_store(data, POLICY, create=True) as store:
        for name, line, caller in (
            ("consent", "service", ALICE),
            ("callback", "service", ALICE),
            ("sales", "sales", ALICE),
            ("bob", "service", BOB),
        ):
            call_id, source = await record_call(store, spool, line=line, caller=caller)
            row = await store.ingest(call_id, source, T0)
            assert row is not None
            ids[name] = row.id
        folder = await store.export(
            [ids["consent"], ids["sales"]], root / "out", Purpose.EVIDENCE, "dpo", T0
        )
    facts = {**ids, "export": str(folder)}
    return Case(root, data, spool, "withdraw", T0 + timedelta(days=1), {"caller": ALICE}, facts)


async def _check_withdraw(case: Case) -> None:
    async with await open_store(case.data, POLICY) as store:
        await store.reconcile(case.spool, case.now)
        if not await store.withdrawals():
            # Killed before the registration committed: the command failed, so it is
            # registered again, as the DPO would.
            await store.withdraw(ALICE, WithdrawalVia.EMAIL, case.now, "dpo", case.now)
        [withdrawal] = await store.withdrawals()
        assert withdrawal.completed_at is not None
        assert withdrawal.completed_at <= withdrawal.deadline
        assert set(withdrawal.deleted) == {case.facts["consent"], case.facts["callback"]}
        for name, status in (
            ("consent", RecordingStatus.DELETED),
            ("callback", RecordingStatus.DELETED),
            ("sales", RecordingStatus.STORED),
            ("bob", RecordingStatus.STORED),
        ):
            row = await store.recording(case.facts[name])
            assert row is not None and row.status is status, f"{name}: {row}"
        folder = Path(case.facts["export"])
        kept = [folder / name for name in (f"{case.facts['sales']}.wav", MANIFEST, SUMS, SIGNATURE)]
        assert files_under(case.root / "out") == sorted(kept), "an export copy survived"
        checked = check_export(folder, load_public_key(case.data / PUBLIC_KEY_FILE))
        assert checked.ok, checked.problems
        report = await store.verify()
        assert report.ok, report.problems


async def test_kill_during_withdrawal_still_deletes_every_consent_recording(
    tmp_path: Path,
) -> None:
    """After a kill at any step of a withdrawal and a restart the caller's consent
    recordings and their copies are gone, the sales one and other callers' are kept, and
    the export that held a consent and the sales copy keeps the latter and verifies."""
    await crash_everywhere(_prepare_withdraw, _check_withdraw, tmp_path)
