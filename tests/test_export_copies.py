"""Exports an auditor can check offline, and deletions that take from an export only the
copies of the recordings deleted: its SHA256SUMS, manifest and signature are written again,
so that what remains still verifies."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from storage_helpers import ALICE, BOB, POLICY, T0, open_store, record_call, wav_bytes

from flows.policy import Purpose
from storage import checkpoints
from storage.exportcheck import check_export
from storage.exportfiles import MANIFEST, SIGNATURE, SUMS, parse_sums
from storage.ports import RecordingRow, RecordingStatus, WithdrawalVia
from storage.store import Store

pytestmark = pytest.mark.usefixtures("ledger")


@pytest.fixture
async def store(tmp_path: Path, spool: Path, ledger: str) -> AsyncIterator[Store]:
    async with await open_store(tmp_path / "data", POLICY, spool_dir=spool, create=True) as opened:
        yield opened


async def _stored(
    store: Store, spool: Path, line: str, caller: str, seed: int, days: int = 0
) -> RecordingRow:
    at = T0 + timedelta(days=days)
    call_id, source = await record_call(
        store, spool, line=line, caller=caller, at=at, audio=wav_bytes(seed=seed)
    )
    row = await store.ingest(call_id, source, at)
    assert row is not None
    return row


def _public(store: Store) -> Ed25519PublicKey:
    return checkpoints.load_public_key(store.data_dir / checkpoints.PUBLIC_KEY_FILE)


def _names(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir()}


async def test_export_lists_every_file_in_sha256sums_and_signs_it(
    store: Store, spool: Path, tmp_path: Path
) -> None:
    """SHA256SUMS names each copy and the manifest with their true SHA-256, the signature
    checks with the store's published key, and the manifest names that key."""
    one = await _stored(store, spool, "service", ALICE, 1)
    two = await _stored(store, spool, "sales", BOB, 2)
    folder = await store.export([one.id, two.id], tmp_path / "out", Purpose.EVIDENCE, "dpo", T0)
    listing, problems = parse_sums((folder / SUMS).read_bytes())
    assert problems == []
    assert set(listing) == {f"{one.id}.wav", f"{two.id}.wav", MANIFEST}
    for name, digest in listing.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
    assert _names(folder) == set(listing) | {SUMS, SIGNATURE}
    public = _public(store)
    public.verify((folder / SIGNATURE).read_bytes(), (folder / SUMS).read_bytes())
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["signature"]["key"] == checkpoints.fingerprint(public)
    result = check_export(folder, public)
    assert result.ok and result.signature == "ok", result.problems
    assert (await store.verify()).ok


async def test_withdrawing_one_recording_keeps_the_other_copies_of_its_export(
    store: Store, spool: Path, tmp_path: Path
) -> None:
    """An export of a sales and a service recording of one caller: withdrawing the service
    recording's consent removes only its copy; the sales copy stays, the manifest notes the
    removal (and keeps none of the withdrawn recording's data), the audit log says why, and
    the export still verifies offline."""
    sales = await _stored(store, spool, "sales", ALICE, 1)
    service = await _stored(store, spool, "service", ALICE, 2)
    folder = await store.export(
        [sales.id, service.id], tmp_path / "out", Purpose.EVIDENCE, "dpo", T0
    )
    shutil.copytree(folder, tmp_path / "handed-over")
    now = T0 + timedelta(days=1)
    report = await store.withdraw(
        None, WithdrawalVia.EMAIL, now, "dpo", now, recording_id=service.id
    )
    assert report.deleted == (service.id,)
    assert _names(folder) == {f"{sales.id}.wav", MANIFEST, SUMS, SIGNATURE}
    assert (folder / f"{sales.id}.wav").read_bytes() == (
        tmp_path / "handed-over" / f"{sales.id}.wav"
    ).read_bytes()
    manifest = json.loads((folder / MANIFEST).read_text())
    assert [entry["id"] for entry in manifest["recordings"]] == [sales.id]
    [note] = manifest["removed"]
    assert note["id"] == service.id and note["reason"] == "withdrawal"
    assert note["removed_at"] == now.isoformat()
    assert ALICE not in json.dumps(note) and service.call_id not in json.dumps(note)
    result = check_export(folder, _public(store))
    assert result.ok and result.signature == "ok", result.problems
    assert len(result.removed) == 1 and service.id in result.removed[0]
    export_id = folder.name.removeprefix("callrec-export-")
    entry = (await store.audit_entries(export_id))[-1]
    assert entry.action == "export.copy_removed"
    assert entry.details == {
        "recording_id": service.id,
        "reason": "withdrawal",
        "withdrawal_id": report.withdrawal_id,
        "export": "kept",
    }
    kept = await store.recording(sales.id)
    assert kept is not None and kept.status is RecordingStatus.STORED
    verified = await store.verify()
    assert verified.ok, verified.problems


async def test_withdrawing_a_caller_keeps_their_sales_copy_and_another_callers(
    store: Store, spool: Path, tmp_path: Path
) -> None:
    """A caller's withdrawal takes their consent recordings' copies from a shared export
    and leaves their sales recording's and another caller's; a second sweep changes nothing."""
    sales = await _stored(store, spool, "sales", ALICE, 1)
    service = await _stored(store, spool, "service", ALICE, 2)
    other = await _stored(store, spool, "service", BOB, 3)
    ids = [sales.id, service.id, other.id]
    folder = await store.export(ids, tmp_path / "out", Purpose.EVIDENCE, "dpo", T0)
    now = T0 + timedelta(days=1)
    await store.withdraw(ALICE, WithdrawalVia.PHONE, now, "agent", now)
    assert _names(folder) == {f"{sales.id}.wav", f"{other.id}.wav", MANIFEST, SUMS, SIGNATURE}
    before = {name: (folder / name).read_bytes() for name in _names(folder)}
    await store.sweep(now + timedelta(hours=1))
    assert {name: (folder / name).read_bytes() for name in _names(folder)} == before
    result = check_export(folder, _public(store))
    assert result.ok, result.problems


async def test_retention_removes_only_the_copies_that_are_due(
    store: Store, spool: Path, tmp_path: Path
) -> None:
    """A sweep takes from an export the copy of the recording whose retention ended and
    keeps a later recording's; when that one is due too the export goes whole."""
    early = await _stored(store, spool, "service", ALICE, 1)
    late = await _stored(store, spool, "service", BOB, 2, days=5)
    folder = await store.export([early.id, late.id], tmp_path / "out", Purpose.EVIDENCE, "dpo", T0)
    swept = await store.sweep(early.delete_after)
    assert swept.deleted == (early.id,) and swept.problems == ()
    assert _names(folder) == {f"{late.id}.wav", MANIFEST, SUMS, SIGNATURE}
    result = check_export(folder, _public(store))
    assert result.ok, result.problems
    [note] = json.loads((folder / MANIFEST).read_text())["removed"]
    assert (note["id"], note["reason"]) == (early.id, "retention")
    assert (await store.verify()).ok
    assert (await store.sweep(late.delete_after)).deleted == (late.id,)
    assert not folder.exists()
    assert (await store.verify()).ok


async def test_a_copy_that_could_not_go_goes_at_the_next_sweep_and_the_export_verifies(
    store: Store, spool: Path, tmp_path: Path
) -> None:
    """A copy the deletion cannot remove (a directory stands in its place) stays listed
    with its recording; the next sweep removes it, takes it out of the manifest and signs
    the rest again."""
    due = await _stored(store, spool, "service", ALICE, 1)
    late = await _stored(store, spool, "service", BOB, 2, days=5)
    folder = await store.export([due.id, late.id], tmp_path / "out", Purpose.EVIDENCE, "dpo", T0)
    copy = folder / f"{due.id}.wav"
    copy.unlink()
    (copy / "stuck").mkdir(parents=True)
    swept = await store.sweep(due.delete_after)
    assert swept.problems
    assert all(copy.name in problem for problem in swept.problems), swept.problems
    row = await store.recording(due.id)
    assert row is not None and row.status is RecordingStatus.DELETED
    assert [e["id"] for e in json.loads((folder / MANIFEST).read_text())["recordings"]] == [
        due.id,
        late.id,
    ]
    shutil.rmtree(copy)
    copy.write_bytes(b"the copy, back")
    again = await store.sweep(due.delete_after + timedelta(hours=1))
    assert again.problems == ()
    assert _names(folder) == {f"{late.id}.wav", MANIFEST, SUMS, SIGNATURE}
    result = check_export(folder, _public(store))
    assert result.ok, result.problems
    assert (await store.verify()).ok


async def test_an_export_spread_over_sweep_batches_goes_whole_when_all_are_due(
    store: Store, spool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one recording per batch (each batch listed while the one before is still being
    committed), an export of due recordings still goes whole, and one that also holds a
    later recording keeps exactly that copy and verifies."""
    monkeypatch.setattr("storage.sweep.SWEEP_BATCH", 1)
    due = [await _stored(store, spool, "service", ALICE, n) for n in range(3)]
    late = await _stored(store, spool, "service", BOB, 9, days=5)
    out = tmp_path / "out"
    whole = await store.export([r.id for r in due], out, Purpose.EVIDENCE, "dpo", T0)
    mixed = await store.export([*(r.id for r in due), late.id], out, Purpose.EVIDENCE, "dpo", T0)
    swept = await store.sweep(due[-1].delete_after)
    assert set(swept.deleted) == {r.id for r in due} and swept.problems == ()
    assert not whole.exists()
    assert _names(mixed) == {f"{late.id}.wav", MANIFEST, SUMS, SIGNATURE}
    result = check_export(mixed, _public(store))
    assert result.ok and len(result.removed) == 3, result.problems
    verified = await store.verify()
    assert verified.ok, verified.problems


async def test_an_export_whose_manifest_cannot_be_rewritten_is_tried_again(
    store: Store, spool: Path, tmp_path: Path
) -> None:
    """A manifest that cannot be read back (here garbled) keeps the deleted recording's
    copy listed and the sweep reports it; once the manifest is readable again the next
    sweep takes the recording out of it and the export verifies."""
    due = await _stored(store, spool, "service", ALICE, 1)
    late = await _stored(store, spool, "service", BOB, 2, days=5)
    folder = await store.export([due.id, late.id], tmp_path / "out", Purpose.EVIDENCE, "dpo", T0)
    original = (folder / MANIFEST).read_bytes()
    (folder / MANIFEST).write_bytes(b"garbled")
    swept = await store.sweep(due.delete_after)
    assert swept.problems and all(MANIFEST in problem for problem in swept.problems)
    assert not (folder / f"{due.id}.wav").exists()
    assert not (await store.verify()).ok
    (folder / MANIFEST).write_bytes(original)
    again = await store.sweep(due.delete_after + timedelta(hours=1))
    assert again.problems == ()
    assert _names(folder) == {f"{late.id}.wav", MANIFEST, SUMS, SIGNATURE}
    result = check_export(folder, _public(store))
    assert result.ok and len(result.removed) == 1, result.problems
    export_id = folder.name.removeprefix("callrec-export-")
    notes = [e for e in await store.audit_entries(export_id) if e.action == "export.copy_removed"]
    assert [e.details["recording_id"] for e in notes] == [due.id]
    verified = await store.verify()
    assert verified.ok, verified.problems
