"""The audit as evidence: attacks on a real SQLite ledger, made with sqlite3 as an attacker
would, that `verify` must catch, and the signed checkpoints a third party checks."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import aiosqlite
import pytest
from cli_helpers import ledger_env
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from storage_helpers import ALICE, POLICY, T0, open_store, record_call

from callrec import commands, controller
from flows.errors import StorageError
from storage import checkpoints
from storage.audit import GENESIS, canonical, entry_hash, load_key
from storage.ports import WithdrawalVia
from storage.schema import MIGRATIONS, expected_triggers, migrate
from storage.sqlite import SqliteStore
from storage.store import Store

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("ledger")
RAW = "attacks the SQLite file with sqlite3"


@pytest.fixture
async def store(tmp_path: Path, spool: Path, ledger: str) -> AsyncIterator[Store]:
    async with await open_store(tmp_path / "data", POLICY, spool_dir=spool, create=True) as opened:
        yield opened


def _raw(store: Store) -> sqlite3.Connection:
    return sqlite3.connect(store.data_dir / "ledger.sqlite3")


def _checkpoint_file(store: Store) -> Path:
    return store.data_dir / "checkpoints" / "checkpoints.jsonl"


async def _withdrawn(store: Store, spool: Path) -> str:
    """A consent recording deleted by a withdrawal: the chain ends with the withdrawal's
    registration, the deletion and the completion. Returns the recording's id."""
    call_id, source = await record_call(store, spool)
    row = await store.ingest(call_id, source, T0)
    assert row is not None
    report = await store.withdraw(ALICE, WithdrawalVia.EMAIL, T0, "dpo", T0 + timedelta(hours=1))
    assert report.deleted == (row.id,)
    assert (await store.verify()).ok
    return row.id


def _rehash_plain(raw: sqlite3.Connection, from_seq: int) -> None:
    """What an attacker who read the old code does after changing an entry: recompute the
    plain SHA-256 chain from `from_seq` on."""
    rows = raw.execute(
        "SELECT seq, at, action, subject, details FROM audit WHERE seq >= ? ORDER BY seq",
        (from_seq,),
    ).fetchall()
    prev_row = raw.execute("SELECT hash FROM audit WHERE seq = ?", (from_seq - 1,)).fetchone()
    prev = GENESIS if prev_row is None else prev_row[0]
    for seq, at, action, subject, details in rows:
        digest = entry_hash(prev, canonical(seq, at, action, subject, json.loads(details)))
        raw.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, digest, seq))
        prev = digest


def _restore_triggers(raw: sqlite3.Connection) -> None:
    """Put the append-only triggers back exactly as the migrations made them."""
    for name, sql in expected_triggers().items():
        raw.execute(f"DROP TRIGGER IF EXISTS {name}")
        raw.execute(sql)


# ------------------------------------------------------------------ attacks


@pytest.mark.sqlite_only(RAW)
async def test_a_tail_cut_with_the_triggers_restored_fails_verify(
    store: Store, spool: Path
) -> None:
    """Cutting the withdrawal's last entries off the chain and restoring the triggers is
    caught: the chain is shorter than the checkpoint written after the deletion."""
    await _withdrawn(store, spool)
    with _raw(store) as raw:
        last = raw.execute("SELECT MAX(seq) FROM audit").fetchone()[0]
        raw.execute("DROP TRIGGER audit_no_delete")
        raw.execute("DELETE FROM audit WHERE seq > ?", (last - 3,))
        _restore_triggers(raw)
    report = await store.verify()
    assert not report.ok
    assert any("entries were cut from its end" in p for p in report.problems), report.problems
    assert report.checkpoint is not None and not report.checkpoint.covered
    assert report.checkpoint.seq == last


@pytest.mark.sqlite_only(RAW)
async def test_a_changed_reason_rehashed_with_plain_sha256_fails_verify(
    store: Store, spool: Path
) -> None:
    """A deletion's reason changed in the audit log and the chain recomputed with SHA-256
    is caught: the entries' hashes are MACs under a key the ledger does not hold."""
    await _withdrawn(store, spool)
    with _raw(store) as raw:
        seq, details = raw.execute(
            "SELECT seq, details FROM audit WHERE action = 'recording.deleted'"
        ).fetchone()
        changed = json.loads(details) | {"reason": "retention", "withdrawal_id": ""}
        raw.execute("DROP TRIGGER audit_no_update")
        raw.execute(
            "UPDATE audit SET details = ? WHERE seq = ?",
            (json.dumps(changed, sort_keys=True), seq),
        )
        raw.execute("UPDATE recordings SET deletion_reason = 'retention', withdrawal_id = NULL")
        _rehash_plain(raw, 1)
        _restore_triggers(raw)
    problems = (await store.verify()).problems
    assert "audit: entry 1 was changed (its hash does not match)" in problems
    assert f"audit: entry {seq} was changed (its hash does not match)" in problems
    assert any("the chain was rewritten" in p for p in problems), problems


@pytest.mark.sqlite_only(RAW)
async def test_a_do_nothing_trigger_in_place_of_the_append_only_one_fails_verify(
    store: Store, spool: Path
) -> None:
    """Replacing audit_no_delete with a trigger of the same name that does nothing is
    reported, even before anything is deleted."""
    call_id, source = await record_call(store, spool)
    await store.ingest(call_id, source, T0)
    with _raw(store) as raw:
        raw.execute("DROP TRIGGER audit_no_delete")
        raw.execute("CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT 1; END")
    problems = (await store.verify()).problems
    assert problems == (
        "ledger: the trigger audit_no_delete was replaced (its definition changed)",
    )


@pytest.mark.sqlite_only(RAW)
async def test_a_trigger_the_migrations_never_made_fails_verify(store: Store, spool: Path) -> None:
    """An extra trigger (one that could quietly undo what is written) is reported by name."""
    with _raw(store) as raw:
        raw.execute("CREATE TRIGGER undo AFTER INSERT ON recordings BEGIN SELECT 1; END")
    problems = (await store.verify()).problems
    assert problems == ("ledger: an unknown trigger undo on table recordings was added",)


@pytest.mark.sqlite_only(RAW)
async def test_a_recording_deleted_without_its_deletion_entry_fails_verify(
    store: Store, spool: Path
) -> None:
    """A recording marked deleted and its file removed, with no audit entry, is reported."""
    call_id, source = await record_call(store, spool)
    row = await store.ingest(call_id, source, T0)
    assert row is not None and row.path is not None
    Path(row.path).unlink()
    with _raw(store) as raw:
        raw.execute(
            "UPDATE recordings SET status = 'deleted', path = NULL, deleted_at = ?, "
            "deletion_reason = 'retention' WHERE id = ?",
            ("2025-09-03T09:00:00.000000Z", row.id),
        )
    problems = (await store.verify()).problems
    assert problems == (f"recording {row.id}: deleted without its deletion entry in the audit log",)


@pytest.mark.sqlite_only(RAW)
async def test_a_deleted_recording_brought_back_fails_verify(store: Store, spool: Path) -> None:
    """A recording the audit log says was deleted, put back as stored with its file from a
    backup, is reported; so is a recording whose row was removed from the ledger."""
    call_id, source = await record_call(store, spool, line="sales")
    row = await store.ingest(call_id, source, T0)
    assert row is not None and row.path is not None
    audio = Path(row.path).read_bytes()
    kept_id, kept_source = await record_call(store, spool, line="sales", at=T0 + timedelta(days=1))
    kept = await store.ingest(kept_id, kept_source, T0 + timedelta(days=1))
    assert kept is not None
    await store.sweep(row.delete_after)
    Path(row.path).write_bytes(audio)
    with _raw(store) as raw:
        raw.execute(
            "UPDATE recordings SET status = 'stored', path = ?, deleted_at = NULL, "
            "deletion_reason = NULL WHERE id = ?",
            (str(Path(row.path).relative_to(store.data_dir)), row.id),
        )
        raw.execute("DELETE FROM recordings WHERE id = ?", (kept.id,))
    assert kept.path is not None
    Path(kept.path).unlink()
    problems = (await store.verify()).problems
    assert problems == (
        f"recording {row.id}: the audit log says it was deleted, the ledger does not",
        f"recording {kept.id}: stored according to the audit log, gone from the ledger",
    )


@pytest.mark.sqlite_only(RAW)
async def test_a_forged_checkpoint_fails_verify_and_the_offline_check(
    store: Store, spool: Path, tmp_path: Path
) -> None:
    """After a tail cut, a checkpoint of the shorter chain signed by another key, or one
    whose entry count was edited, is reported as not the store's, in verify and offline."""
    await _withdrawn(store, spool)
    with _raw(store) as raw:
        last = raw.execute("SELECT MAX(seq) FROM audit").fetchone()[0]
        raw.execute("DROP TRIGGER audit_no_delete")
        raw.execute("DELETE FROM audit WHERE seq = ?", (last,))
        _restore_triggers(raw)
        head = raw.execute("SELECT hash FROM audit WHERE seq = ?", (last - 1,)).fetchone()[0]
    path = _checkpoint_file(store)
    genuine = checkpoints.parse(path.read_text().splitlines()[-1])
    forged = checkpoints.sign(Ed25519PrivateKey.generate(), last - 1, head, genuine.at)
    forged = checkpoints.Checkpoint(forged.seq, forged.head, forged.at, genuine.key, forged.sig)
    edited = checkpoints.Checkpoint(last + 5, genuine.head, genuine.at, genuine.key, genuine.sig)
    with path.open("ab") as out:
        out.write(checkpoints.to_line(forged) + checkpoints.to_line(edited))
    report = await store.verify()
    lines = len(path.read_text().splitlines())
    assert (
        f"checkpoints: line {lines - 1} (entry {last - 1}): the signature does not verify "
        "(forged or altered)"
    ) in report.problems
    assert any(f"line {lines} (entry {last + 5})" in p for p in report.problems)
    assert any("entries were cut from its end" in p for p in report.problems)
    assert report.checkpoint is not None and not report.checkpoint.signature_ok
    assert report.checkpoint.bad == 2

    pub = tmp_path / "checkpoint.pub"
    pub.write_bytes(store.checkpoint_public_key())
    assert commands.check_checkpoints(path, pub, as_json=False) == commands.EXIT_FAILED


@pytest.mark.sqlite_only(RAW)
async def test_a_tail_cut_hidden_in_the_store_is_caught_by_a_kept_copy(
    store: Store, spool: Path, tmp_path: Path
) -> None:
    """Cutting the chain and the store's checkpoint file back to the same earlier point
    fools the store's own file, not a copy of the checkpoints kept elsewhere."""
    path = _checkpoint_file(store)
    kept_before = len(path.read_text().splitlines())
    seq_before = (await store.audit_head())[0]
    await _withdrawn(store, spool)
    copy = tmp_path / "offsite.jsonl"
    shutil.copy(path, copy)
    with _raw(store) as raw:
        raw.execute("DROP TRIGGER audit_no_delete")
        raw.execute("DELETE FROM audit WHERE seq > ?", (seq_before,))
        raw.execute("DELETE FROM withdrawal_recordings")
        raw.execute("DELETE FROM withdrawals")
        raw.execute("DELETE FROM recordings")
        _restore_triggers(raw)
    path.write_text("".join(f"{line}\n" for line in path.read_text().splitlines()[:kept_before]))
    assert (await store.verify()).ok
    report = await store.verify(checkpoint_file=copy)
    assert any("entries were cut from its end" in p for p in report.problems), report.problems


async def test_a_removed_checkpoint_file_fails_verify(store: Store, spool: Path) -> None:
    """A store without its checkpoints cannot show its chain was not cut: verify says so."""
    await _withdrawn(store, spool)
    _checkpoint_file(store).unlink()
    report = await store.verify()
    assert any("the checkpoint file was removed or emptied" in p for p in report.problems)
    assert report.checkpoint is not None and report.checkpoint.seq is None


# ------------------------------------------------------------- the keyed chain


@pytest.mark.sqlite_only(RAW)
async def test_the_chain_is_keyed_with_a_key_outside_the_ledger(store: Store, spool: Path) -> None:
    """Entry hashes are not plain SHA-256, and the audit key (0600, 32 bytes) appears
    nowhere in the ledger file."""
    call_id, source = await record_call(store, spool)
    await store.ingest(call_id, source, T0)
    entries = await store.audit_entries()
    for entry in entries:
        body = canonical(
            entry.seq,
            entry.at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            entry.action,
            entry.subject,
            entry.details,
        )
        assert entry.hash != entry_hash(entry.prev_hash, body)
    key_path = store.data_dir / "audit.key"
    key = key_path.read_bytes()
    assert len(key) == 32 and stat.S_IMODE(key_path.stat().st_mode) == 0o600
    for name in ("checkpoint.key",):
        assert stat.S_IMODE((store.data_dir / name).stat().st_mode) == 0o600
    ledger = (store.data_dir / "ledger.sqlite3").read_bytes()
    assert key not in ledger and key.hex().encode() not in ledger


async def test_a_missing_audit_key_is_an_error_not_a_new_key(tmp_path: Path) -> None:
    """Opening a store whose audit key is gone names the file and makes no new key."""
    data = tmp_path / "data"
    async with await open_store(data, POLICY, create=True):
        pass
    (data / "audit.key").unlink()
    with pytest.raises(StorageError, match=r"audit key .*audit\.key is missing"):
        await open_store(data, POLICY)
    assert not (data / "audit.key").exists()


@pytest.mark.sqlite_only(RAW)
async def test_an_older_ledger_goes_on_as_a_keyed_chain(tmp_path: Path, spool: Path) -> None:
    """A ledger at schema 4 with plain SHA-256 entries is migrated: its entries still
    verify, an audit.keyed entry starts the keyed chain at its head, and a rewrite of an
    old entry with plain SHA-256 is caught through the first keyed entry."""
    data = tmp_path / "data"
    data.mkdir()
    async with aiosqlite.connect(data / "ledger.sqlite3", isolation_level=None) as conn:
        assert await migrate(conn, MIGRATIONS[:4]) == 4
        prev = GENESIS
        for seq in (1, 2):
            at = f"2025-03-0{seq}T09:00:00.000000Z"
            details = {"by": "operator"}
            digest = entry_hash(prev, canonical(seq, at, "overload.on", "overload", details))
            await conn.execute(
                "INSERT INTO audit (seq, at, action, subject, details, prev_hash, hash) "
                "VALUES (?, ?, 'overload.on', 'overload', ?, ?, ?)",
                (seq, at, json.dumps(details), prev, digest),
            )
            prev = digest
    load_key(data / "pseudonym.key", create=True)  # an old store had its key too
    async with await SqliteStore.open(data, POLICY, spool_dir=spool) as store:
        call_id, source = await record_call(store, spool)
        await store.ingest(call_id, source, T0)
        entries = await store.audit_entries()
        marker = entries[2]
        assert marker.action == "audit.keyed" and marker.details["from_seq"] == "3"
        assert marker.details["previous_head"] == prev == marker.prev_hash
        report = await store.verify()
        assert report.ok, report.problems
        assert report.checkpoint is not None and report.checkpoint.seq == 2
        with _raw(store) as raw:
            raw.execute("DROP TRIGGER audit_no_update")
            raw.execute('UPDATE audit SET details = \'{"by": "nobody"}\' WHERE seq = 1')
            _rehash_plain(raw, 1)
            _restore_triggers(raw)
        problems = (await store.verify()).problems
    assert "audit: entry 3 was changed (its hash does not match)" in problems
    assert "audit: entry 2 differs from the checkpoint of" in " ".join(problems)


# ----------------------------------------------------------------- checkpoints


async def test_each_deletion_batch_and_withdrawal_is_checkpointed(
    store: Store, spool: Path
) -> None:
    """After a withdrawal and after a sweep the latest checkpoint is the chain's head."""
    await _withdrawn(store, spool)
    report = await store.verify()
    assert report.checkpoint is not None
    assert (report.checkpoint.seq, report.checkpoint.head) == await store.audit_head()
    call_id, source = await record_call(store, spool, line="sales", caller=None)
    row = await store.ingest(call_id, source, T0)
    assert row is not None
    await store.sweep(row.delete_after)
    report = await store.verify()
    assert report.ok, report.problems
    assert report.checkpoint is not None and report.checkpoint.entries_after == 0
    assert (report.checkpoint.seq, report.checkpoint.head) == await store.audit_head()


async def test_a_withdrawal_stands_when_its_checkpoint_cannot_be_written(
    store: Store, spool: Path
) -> None:
    """A checkpoint file that cannot be appended to fails no withdrawal that was carried
    out (a retry would register it twice); the next checkpoint that can be written covers
    its entries."""
    call_id, source = await record_call(store, spool)
    row = await store.ingest(call_id, source, T0)
    assert row is not None
    checkpoints = _checkpoint_file(store)
    checkpoints.rename(checkpoints.with_suffix(".kept"))
    checkpoints.mkdir()  # appending to a directory fails, whoever runs the test
    later = T0 + timedelta(hours=1)
    report = await store.withdraw(ALICE, WithdrawalVia.PHONE, later, "agent 7", later)
    assert report.deleted == (row.id,) and report.completed_at is not None
    checkpoints.rmdir()
    checkpoints.with_suffix(".kept").rename(checkpoints)
    await store.checkpoint(later)
    verified = await store.verify()
    assert verified.ok, verified.problems


async def test_the_running_controller_checkpoints_a_moved_head_on_its_schedule(
    store: Store, spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The controller's checkpoint task signs the head once it moved, and not again while
    it stays put."""
    monkeypatch.setattr(controller, "CHECKPOINT_INTERVAL", timedelta(seconds=0.02))
    path = _checkpoint_file(store)

    def latest() -> tuple[int, str]:
        last = checkpoints.parse(path.read_text().splitlines()[-1])
        return last.seq, last.head

    async def until_checkpointed() -> int:
        head = await store.audit_head()
        for _ in range(500):
            if latest() == head:
                return len(path.read_text().splitlines())
            await asyncio.sleep(0.01)
        raise AssertionError(f"no checkpoint of {head}")

    task = asyncio.create_task(controller._checkpointer(store))
    try:
        call_id, source = await record_call(store, spool)
        await store.ingest(call_id, source, T0)
        written = await until_checkpointed()
        await asyncio.sleep(0.2)  # ten intervals with the head where it was
        assert len(path.read_text().splitlines()) == written
        await store.set_overload(True, "operator", T0)
        await until_checkpointed()
    finally:
        task.cancel()


def _callrec(*args: str, data_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLREC_")}
    if data_dir is not None:
        env["CALLREC_DATA_DIR"] = str(data_dir)
        env.update(ledger_env(data_dir))
    return subprocess.run(
        [sys.executable, "-m", "callrec.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


async def test_verify_json_reports_the_checkpoint_and_a_third_party_checks_it(
    store: Store, spool: Path, tmp_path: Path
) -> None:
    """`recordings verify --json` gives the latest checkpoint's status; with only the
    exported public key and a copy of the checkpoint file (no ledger, no secret key)
    `audit check-checkpoints` accepts it and refuses one altered line."""
    await _withdrawn(store, spool)
    seq, head = await store.audit_head()
    data = store.data_dir
    await store.close()
    verified = _callrec("recordings", "verify", "--json", data_dir=data)
    assert verified.returncode == 0, verified.stderr
    status = json.loads(verified.stdout)["checkpoint"]
    assert (status["seq"], status["head"]) == (seq, head)
    assert status["signature_ok"] is True and status["covered"] is True
    exported = _callrec("audit", "public-key", data_dir=data)
    assert exported.returncode == 0, exported.stderr

    third_party = tmp_path / "third-party"
    third_party.mkdir()
    (third_party / "checkpoint.pub").write_text(exported.stdout)
    copy = third_party / "checkpoints.jsonl"
    shutil.copy(data / "checkpoints" / "checkpoints.jsonl", copy)
    checked = _callrec(
        "audit",
        "check-checkpoints",
        str(copy),
        "--public-key",
        str(third_party / "checkpoint.pub"),
        "--json",
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    out = json.loads(checked.stdout)
    assert out["ok"] and (out["latest"]["seq"], out["latest"]["head"]) == (seq, head)

    lines = copy.read_text().splitlines()
    altered = json.loads(lines[-1]) | {"seq": seq - 1}
    copy.write_text("\n".join([*lines[:-1], json.dumps(altered)]) + "\n")
    refused = _callrec(
        "audit", "check-checkpoints", str(copy), "--public-key", str(third_party / "checkpoint.pub")
    )
    assert refused.returncode == 1
    assert "the signature does not verify" in refused.stdout


def _readme_openssl_recipe() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)
    recipe = next(block for block in blocks if "openssl pkeyutl -verify" in block)
    return textwrap.dedent(recipe)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
async def test_the_readme_openssl_recipe_checks_a_checkpoint_with_the_public_key_alone(
    store: Store, tmp_path: Path
) -> None:
    """The README's openssl recipe, run as written beside a copy of the checkpoint file and
    the public key, accepts the last checkpoint and refuses it with its count edited."""
    recipe = _readme_openssl_recipe()
    shutil.copy(_checkpoint_file(store), tmp_path / "checkpoints.jsonl")
    (tmp_path / "checkpoint.pub").write_bytes(store.checkpoint_public_key())

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", recipe], cwd=tmp_path, capture_output=True, text=True, check=False
        )

    accepted = run()
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "Signature Verified Successfully" in accepted.stdout
    lines = (tmp_path / "checkpoints.jsonl").read_text().splitlines()
    edited = json.loads(lines[-1])
    edited["seq"] += 1
    (tmp_path / "checkpoints.jsonl").write_text("\n".join([*lines[:-1], json.dumps(edited)]))
    assert run().returncode != 0
