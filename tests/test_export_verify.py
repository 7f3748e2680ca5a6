"""`callrec export verify DIR` as an auditor runs it: in a directory of their own, with no
callrec.toml, no data directory and no CALLREC_* setting, on an export handed to them; and
`sha256sum -c SHA256SUMS` (coreutils) agrees with it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from storage_helpers import ALICE, BOB, POLICY, T0, open_store, record_call, wav_bytes

from flows.policy import Purpose
from storage.exportfiles import MANIFEST, SIGNATURE, SUMS


@pytest.fixture(scope="module")
def handed_over(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export of two recordings and the store's public key, copied away from the store."""
    import asyncio

    root = tmp_path_factory.mktemp("store")

    async def make() -> Path:
        spool = root / "spool"
        spool.mkdir()
        async with await open_store(root / "data", POLICY, create=True) as store:
            ids = []
            for n, (line, caller) in enumerate((("sales", ALICE), ("service", BOB))):
                call_id, source = await record_call(
                    store, spool, line=line, caller=caller, audio=wav_bytes(seed=n)
                )
                row = await store.ingest(call_id, source, T0)
                assert row is not None
                ids.append(row.id)
            return await store.export(ids, root / "out", Purpose.EVIDENCE, "dpo", T0)

    folder = asyncio.run(make())
    given = tmp_path_factory.mktemp("given")
    shutil.copytree(folder, given / folder.name)
    shutil.copy(root / "data" / "checkpoint.pub", given / "checkpoint.pub")
    return given / folder.name


@pytest.fixture
def export(handed_over: Path, tmp_path: Path) -> Iterator[Path]:
    """A fresh copy of the handed-over export in the auditor's own directory."""
    auditor = tmp_path / "auditor"
    auditor.mkdir()
    shutil.copytree(handed_over, auditor / "export")
    shutil.copy(handed_over.parent / "checkpoint.pub", auditor / "checkpoint.pub")
    yield auditor / "export"


def _verify(export: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`callrec export verify` run from the auditor's directory, no CALLREC_* setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLREC_")}
    auditor = export.parent
    assert not (auditor / "callrec.toml").exists()
    return subprocess.run(
        [sys.executable, "-m", "callrec.cli", "export", "verify", "export", *extra],
        capture_output=True,
        text=True,
        env=env,
        cwd=auditor,
        timeout=60,
        check=False,
    )


def _sha256sum(export: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("sha256sum") is None:
        pytest.skip("coreutils sha256sum is not installed")
    return subprocess.run(
        ["sha256sum", "-c", SUMS], capture_output=True, text=True, cwd=export, check=False
    )


def _problems(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("PROBLEM: ")]


def test_a_clean_export_verifies_offline_with_the_public_key(export: Path) -> None:
    """Untouched, the export verifies (signature too) and sha256sum agrees; nothing but the
    export and the key is read, and no data directory is made."""
    result = _verify(export, "--public-key", "checkpoint.pub")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _problems(result) == []
    assert "signature ok" in result.stdout and "all match" in result.stdout
    assert sorted(p.name for p in export.parent.iterdir()) == ["checkpoint.pub", "export"]
    assert _sha256sum(export).returncode == 0


def test_without_the_key_the_signature_is_named_not_checked(export: Path) -> None:
    """Without --public-key the hashes are still checked and the key the manifest names is
    shown, so the auditor can compare it with the published one."""
    result = _verify(export)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "signature not checked" in result.stdout


def test_an_altered_byte_is_reported_by_name(export: Path) -> None:
    """One byte changed in a copy: reported once, by file name, exit 1; sha256sum agrees."""
    wav = sorted(export.glob("*.wav"))[0]
    data = bytearray(wav.read_bytes())
    data[-1] ^= 0xFF
    wav.write_bytes(bytes(data))
    result = _verify(export, "--public-key", "checkpoint.pub")
    assert result.returncode == 1
    assert _problems(result) == [
        f"PROBLEM: altered: {wav.name} (its SHA-256 is not the one in {SUMS})"
    ]
    checked = _sha256sum(export)
    assert checked.returncode == 1 and f"{wav.name}: FAILED" in checked.stdout


def test_a_deleted_file_is_reported_by_name(export: Path) -> None:
    """A copy removed: reported missing by name, exit 1; sha256sum agrees."""
    wav = sorted(export.glob("*.wav"))[1]
    wav.unlink()
    result = _verify(export, "--public-key", "checkpoint.pub")
    assert result.returncode == 1
    assert _problems(result) == [f"PROBLEM: missing: {wav.name} (listed in {SUMS})"]
    checked = _sha256sum(export)
    assert checked.returncode == 1 and wav.name in checked.stdout


def test_an_added_file_is_reported_by_name(export: Path) -> None:
    """A file slipped into the export: reported as extra, by name, exit 1."""
    (export / "notes.txt").write_text("not ours\n")
    result = _verify(export, "--public-key", "checkpoint.pub")
    assert result.returncode == 1
    assert _problems(result) == [f"PROBLEM: extra: notes.txt (not listed in {SUMS})"]


def test_a_rewritten_manifest_and_sums_fail_the_signature(export: Path) -> None:
    """Whoever edits the manifest and recomputes SHA256SUMS to match cannot sign it: the
    hashes agree, the signature does not."""
    import hashlib

    manifest = export / MANIFEST
    manifest.write_text(manifest.read_text().replace('"dpo"', '"someone else"'))
    lines = []
    for line in (export / SUMS).read_text().splitlines():
        digest, name = line.split("  ", 1)
        if name == MANIFEST:
            digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
        lines.append(f"{digest}  {name}\n")
    (export / SUMS).write_text("".join(lines))
    assert _sha256sum(export).returncode == 0
    result = _verify(export, "--public-key", "checkpoint.pub")
    assert result.returncode == 1
    assert [p for p in _problems(result) if SIGNATURE in p], result.stdout


def test_another_stores_key_is_refused(export: Path, tmp_path: Path) -> None:
    """A public key that is not the one that signed: the manifest's key and the signature
    are both reported."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    other = Ed25519PrivateKey.generate().public_key()
    (export.parent / "other.pub").write_bytes(
        other.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    result = _verify(export, "--public-key", "other.pub")
    assert result.returncode == 1
    assert len(_problems(result)) == 2, result.stdout


def test_openssl_checks_the_signature_as_the_readme_says(export: Path) -> None:
    """The signature is raw Ed25519 over SHA256SUMS: OpenSSL 3 checks it with the key."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    command = [
        "openssl", "pkeyutl", "-verify", "-pubin", "-inkey", "../checkpoint.pub",
        "-rawin", "-in", SUMS, "-sigfile", SIGNATURE,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=export, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Signature Verified Successfully" in result.stdout


def test_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    """Not a directory: exit 2, one line, no traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLREC_")}
    result = subprocess.run(
        [sys.executable, "-m", "callrec.cli", "export", "verify", "nowhere"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "callrec: export verify: nowhere is not a directory"
