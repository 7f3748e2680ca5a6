"""Checking an export with nothing but its files and, for the signature, the store's
published public key: no ledger, no configuration, no secret (`callrec export verify`).

Every file is checked against SHA256SUMS (missing, altered and extra files, each by name),
each recording's copy against the manifest's SHA-256, the recordings the manifest says were
removed against what is still there, and, given the public key, the signature of
SHA256SUMS and the key the manifest names. `sha256sum -c SHA256SUMS` agrees on the hashes.
"""

from __future__ import annotations

import binascii
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from storage import exportfiles, files
from storage.checkpoints import fingerprint
from storage.exportfiles import MANIFEST, SIGNATURE, SUMS


@dataclass(frozen=True, slots=True)
class ExportCheck:
    """What checking an export found. `signature`: "ok", "bad", "missing" or "not checked"
    (no public key given); `key`: the fingerprint the manifest names."""

    folder: Path
    files: int  # files hashed
    recordings: int
    problems: tuple[str, ...]
    removed: tuple[str, ...]  # the removals the manifest documents, one line each
    signature: str
    key: str | None

    @property
    def ok(self) -> bool:
        return not self.problems


def present_files(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """The regular files under `folder` by name relative to it, and a problem line for
    anything else found there (a directory, a link)."""
    found: dict[str, Path] = {}
    problems: list[str] = []
    for directory, subdirs, names in os.walk(folder):
        for name in sorted(subdirs + names):
            path = Path(directory) / name
            relative = path.relative_to(folder).as_posix()
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode):
                found[relative] = path
            elif not stat.S_ISDIR(mode) or name not in subdirs:
                problems.append(f"extra: {relative} (not a regular file)")
            else:
                problems.append(f"extra: {relative}/ (a directory)")
    return found, problems


def check_export(folder: Path, public: Ed25519PublicKey | None) -> ExportCheck:
    """Check the export at `folder` (blocking); see the module docstring."""
    present, problems = present_files(folder)
    hashes: dict[str, str] = {}

    def digest(name: str) -> str:
        if name not in hashes:
            hashes[name] = files.hash_file(present[name])[0]
        return hashes[name]

    reported: set[str] = set()  # names already reported missing or altered

    def problem(name: str, line: str) -> None:
        reported.add(name)
        problems.append(line)

    sums_data = present[SUMS].read_bytes() if SUMS in present else None
    listing: dict[str, str] = {}
    if sums_data is None:
        problems.append(f"missing: {SUMS}")
    else:
        listing, unreadable = exportfiles.parse_sums(sums_data)
        problems += unreadable
        for name, expected in sorted(listing.items()):
            if name not in present:
                problem(name, f"missing: {name} (listed in {SUMS})")
            elif digest(name) != expected:
                problem(name, f"altered: {name} (its SHA-256 is not the one in {SUMS})")
        for name in sorted(set(present) - set(listing) - {SUMS, SIGNATURE}):
            problems.append(f"extra: {name} (not listed in {SUMS})")

    manifest: dict[str, Any] | None = None
    try:
        manifest = exportfiles.read_manifest(folder / MANIFEST)
    except ValueError as error:
        if MANIFEST not in reported:
            problems.append(f"{MANIFEST}: {error}")
    except OSError as error:
        problems.append(f"{MANIFEST}: unreadable ({error.strerror or error})")
    removed: list[str] = []
    key: str | None = None
    entries = 0
    if manifest is not None:
        entries = len(manifest["recordings"])
        problems += _against_manifest(manifest, present, listing, digest, problem, reported)
        removed, gone_but_there = _removals(manifest, present)
        problems += gone_but_there
        signature = manifest.get("signature")
        if isinstance(signature, dict) and isinstance(signature.get("key"), str):
            key = signature["key"]
    verdict, signature_problems = _signature(folder, present, sums_data, key, public)
    problems += signature_problems
    return ExportCheck(folder, len(hashes), entries, tuple(problems), tuple(removed), verdict, key)


def _against_manifest(
    manifest: dict[str, Any],
    present: dict[str, Path],
    listing: dict[str, str],
    digest: Callable[[str], str],
    problem: Callable[[str, str], None],
    reported: set[str],
) -> list[str]:
    """Each recording's copy against the manifest's SHA-256 (once per file: one already
    reported against SHA256SUMS is not reported again), and SHA256SUMS against the
    manifest: it lists the manifest and the recordings' copies, nothing else."""
    problems: list[str] = []
    names = {MANIFEST}
    for entry in manifest["recordings"]:
        name, recording = entry["file"], entry["id"]
        names.add(name)
        if name in reported:
            continue
        if name not in present:
            problem(name, f"missing: {name} (the copy of recording {recording})")
        elif digest(name) != entry["sha256"]:
            problem(
                name,
                f"altered: {name} (recording {recording}: its SHA-256 is not the manifest's)",
            )
    if listing:
        for name in sorted(set(listing) - names):
            problems.append(f"{SUMS}: {name} is not a file of the manifest")
        for name in sorted(names - set(listing)):
            problems.append(f"{SUMS}: {name} is not listed")
    return problems


def _removals(manifest: dict[str, Any], present: dict[str, Path]) -> tuple[list[str], list[str]]:
    """The removals the manifest notes, one line each, and a problem for each removed
    copy that is still there."""
    lines: list[str] = []
    problems: list[str] = []
    for note in manifest["removed"]:
        recording, name = note.get("id", "?"), note.get("file", "?")
        why = f"{note.get('reason', '?')}, {note.get('removed_at', '?')}"
        if name in present:
            problems.append(
                f"extra: {name} (recording {recording} was removed from this export: {why})"
            )
        lines.append(f"recording {recording} ({name}) removed from this export: {why}")
    return lines, problems


def _signature(
    folder: Path,
    present: dict[str, Path],
    sums: bytes | None,
    key: str | None,
    public: Ed25519PublicKey | None,
) -> tuple[str, list[str]]:
    if SIGNATURE not in present:
        return "missing", [f"missing: {SIGNATURE} (the signature of {SUMS})"]
    if public is None:
        return "not checked", []
    given = fingerprint(public)
    problems: list[str] = []
    if key is not None and key != given:
        problems.append(f"{MANIFEST}: signed by key {key}, not by the given key {given}")
    if sums is None:
        return "bad", problems
    try:
        public.verify((folder / SIGNATURE).read_bytes(), sums)
    except (InvalidSignature, binascii.Error, ValueError):
        problems.append(
            f"{SIGNATURE}: does not verify {SUMS} with key {given} "
            "(SHA256SUMS or its signature was altered, or another key signed it)"
        )
        return "bad", problems
    return ("bad" if problems else "ok"), problems
