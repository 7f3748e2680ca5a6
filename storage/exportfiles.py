"""The files that make an export checkable offline, beside its recordings' copies:

- `manifest.json`: each recording's metadata, SHA-256 and audit entries, the recordings
  removed from the export since (`removed`), and the fingerprint of the key that signs;
- `SHA256SUMS`: `<sha256>  <name>` for every other file of the export, the manifest among
  them, in the format `sha256sum -c` reads;
- `SHA256SUMS.sig`: the store's Ed25519 signature (`checkpoint.key`) of SHA256SUMS's exact
  bytes, raw 64 bytes, as `openssl pkeyutl -verify -rawin` reads it.

SHA256SUMS fixes every byte of the manifest and the copies, and the signature fixes
SHA256SUMS, so an auditor with the published public key needs nothing else. When a
recording leaves an export (its retention ended, consent was withdrawn) its entry, personal
data, leaves the manifest for a line under `removed` (id, file, SHA-256, when, why), and
SHA256SUMS and the signature are written again: what remains still verifies.

Blocking file work; run it in a worker thread.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from storage import files
from storage.checkpoints import fingerprint

MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
SIGNATURE = "SHA256SUMS.sig"
PAPER = (MANIFEST, SUMS, SIGNATURE)  # an export's own files, beside the copies
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# `sha256sum` writes "<hex>  <name>" (text mode) or "<hex> *<name>" (binary mode).
_SUMS_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    return json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"


def sums_bytes(listing: Mapping[str, str]) -> bytes:
    """SHA256SUMS for `listing` (name -> SHA-256), by name."""
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(listing.items())).encode(
        "utf-8"
    )


def parse_sums(data: bytes) -> tuple[dict[str, str], list[str]]:
    """The names and SHA-256s a SHA256SUMS lists, and a problem line for each line that is
    not `<sha256>  <name>` with a plain file name (no directory, nothing hidden)."""
    listing: dict[str, str] = {}
    problems: list[str] = []
    text = data.decode("utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _SUMS_LINE.match(line)
        name = match.group(2) if match else ""
        if match is None or "/" in name or "\\" in name or name in {".", ".."}:
            problems.append(f"{SUMS} line {number}: not `<sha256>  <file name>`")
        elif name in listing:
            problems.append(f"{SUMS} line {number}: {name} is listed twice")
        else:
            listing[name] = match.group(1).lower()
    return listing, problems


def listing_of(manifest: Mapping[str, Any], manifest_digest: str) -> dict[str, str]:
    """What SHA256SUMS lists for `manifest`: each recording's copy and the manifest."""
    listing = {str(entry["file"]): str(entry["sha256"]) for entry in manifest["recordings"]}
    listing[MANIFEST] = manifest_digest
    return listing


def write_paper(
    folder: Path, manifest: dict[str, Any], key: Ed25519PrivateKey, *, signed: bool = True
) -> dict[str, str]:
    """Write the manifest and, when `signed`, SHA256SUMS and its signature into `folder`,
    each durably and whole; the SHA-256 of each file written, by name. The manifest first:
    SHA256SUMS is made from its bytes, and the signature from SHA256SUMS's."""
    if signed:
        manifest["signature"] = {
            "file": SIGNATURE,
            "signs": SUMS,
            "algorithm": "Ed25519",
            "key": fingerprint(key.public_key()),
        }
    data = manifest_bytes(manifest)
    digests = {MANIFEST: files.write_durably(folder / MANIFEST, data)}
    if signed:
        sums = sums_bytes(listing_of(manifest, digests[MANIFEST]))
        digests[SUMS] = files.write_durably(folder / SUMS, sums)
        digests[SIGNATURE] = files.write_durably(folder / SIGNATURE, key.sign(sums))
    return digests


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest at `path`; ValueError saying why it is not one callrec wrote."""
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ValueError(f"{path.name} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{path.name} is not JSON") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("recordings"), list):
        raise ValueError(f"{path.name} has no list of recordings")  # noqa: TRY004 - bad data, not a bad argument
    for entry in manifest["recordings"]:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("id"), str)
            and isinstance(entry.get("file"), str)
            and isinstance(entry.get("sha256"), str)
            and _HEX64.match(entry["sha256"])
        ):
            raise ValueError(f"{path.name}: a recording without its id, file and SHA-256")
    removed = manifest.setdefault("removed", [])
    if not isinstance(removed, list) or not all(isinstance(r, dict) for r in removed):
        raise ValueError(f"{path.name}: `removed` is not a list of recordings")
    return manifest


def prune(
    folder: Path,
    reasons: Mapping[str, str],
    at: str,
    key: Ed25519PrivateKey,
    *,
    signed: bool,
) -> tuple[dict[str, str], int]:
    """Take the recordings of `reasons` (id -> why their copy went) out of the manifest of
    the export at `folder`, note each under `removed`, and write the export's files again
    (`write_paper`); their SHA-256s, and how many recordings the manifest still holds.
    Doing it twice changes nothing more: a recording already under `removed` keeps its
    first note. ValueError when the manifest is not one callrec wrote; OSError."""
    manifest = read_manifest(folder / MANIFEST)
    noted = {note.get("id") for note in manifest["removed"]}
    kept: list[dict[str, Any]] = []
    for entry in manifest["recordings"]:
        if entry["id"] not in reasons:
            kept.append(entry)
        elif entry["id"] not in noted:
            manifest["removed"].append(
                {
                    "id": entry["id"],
                    "file": entry["file"],
                    "sha256": entry["sha256"],
                    "removed_at": at,
                    "reason": reasons[entry["id"]],
                }
            )
    manifest["recordings"] = kept
    return write_paper(folder, manifest, key, signed=signed), len(kept)
