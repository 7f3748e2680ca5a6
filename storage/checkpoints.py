"""Signed checkpoints of the audit chain, kept outside the ledger.

A checkpoint says "at time T the audit chain had N entries and the last one's hash was H",
signed with the store's Ed25519 key (`checkpoint.key`, 0600). Each is one JSON line appended
to `checkpoints/checkpoints.jsonl` (opened O_APPEND, fsync'd), a directory of its own so that
it can be made append-only (`chattr +a`) or put on another file system. The ledger's writer
can cut entries from the chain's end or rewrite it, but not the checkpoints already written
(nor those copied elsewhere), and because every entry links to the one before, the head hash
at N fixes all of the first N entries: `verify` fails on a chain shorter than, or different
from, any checkpoint.

The signed message is one ASCII line, `callrec-checkpoint/1 seq=N head=H at=T`, so that anyone
holding only the public key (`checkpoint.pub`, PEM) can check a checkpoint with any Ed25519
tool, and nobody without the private key can make one. Checkpoints are written when a store is
created or upgraded, after every deletion batch and withdrawal, at reconcile, and on a schedule
by the running controller.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from flows.errors import StorageError
from storage import files
from storage.keyfiles import create_once, read_key
from storage.ports import CheckpointStatus
from storage.values import parse_ts

FORMAT = 1
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_FILE = "checkpoints.jsonl"
SIGNING_KEY_FILE = "checkpoint.key"
PUBLIC_KEY_FILE = "checkpoint.pub"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int  # entries in the chain
    head: str  # the hash of entry `seq` (GENESIS when the chain is empty)
    at: str  # when it was taken, storage.db.ts format
    key: str  # fingerprint of the public key that signs it
    sig: str  # Ed25519 signature of `message(seq, head, at)`, base64


def message(seq: int, head: str, at: str) -> bytes:
    return f"callrec-checkpoint/{FORMAT} seq={seq} head={head} at={at}".encode("ascii")


def fingerprint(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(private: Ed25519PrivateKey, seq: int, head: str, at: str) -> Checkpoint:
    signature = private.sign(message(seq, head, at))
    return Checkpoint(
        seq=seq,
        head=head,
        at=at,
        key=fingerprint(private.public_key()),
        sig=base64.b64encode(signature).decode("ascii"),
    )


def signature_ok(public: Ed25519PublicKey, checkpoint: Checkpoint) -> bool:
    try:
        signature = base64.b64decode(checkpoint.sig, validate=True)
        public.verify(signature, message(checkpoint.seq, checkpoint.head, checkpoint.at))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def to_line(checkpoint: Checkpoint) -> bytes:
    body = {
        "v": FORMAT,
        "seq": checkpoint.seq,
        "head": checkpoint.head,
        "at": checkpoint.at,
        "key": checkpoint.key,
        "sig": checkpoint.sig,
    }
    return (json.dumps(body, separators=(",", ":")) + "\n").encode("ascii")


def parse(text: str) -> Checkpoint:
    """One line of the checkpoint file; ValueError saying what is wrong with it."""
    try:
        body = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON ({error.msg})") from None
    if not isinstance(body, dict) or body.get("v") != FORMAT:
        raise ValueError(f"not a version {FORMAT} checkpoint")
    seq, head, at, key, sig = (body.get(k) for k in ("seq", "head", "at", "key", "sig"))
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ValueError("seq is not a count of entries")
    if not isinstance(head, str) or not _HEX64.match(head):
        raise ValueError("head is not a SHA-256 in hex")
    texts = [value for value in (at, key, sig) if isinstance(value, str)]
    if len(texts) != 3:
        raise ValueError("at, key or sig is missing")
    parse_ts(texts[0])  # ValueError when it is not a time in the ledger's format
    return Checkpoint(seq=seq, head=head, at=texts[0], key=texts[1], sig=texts[2])


# ------------------------------------------------------------------ the file


def append(directory: Path, checkpoint: Checkpoint) -> None:
    """Append one checkpoint to the file in `directory`, durably (blocking).

    One write of the whole line on an O_APPEND descriptor: lines of several processes
    (the controller, a sweep from the command line) never interleave."""
    files.private_dir(directory)
    path = directory / CHECKPOINT_FILE
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        line = to_line(checkpoint)
        if os.write(fd, line) != len(line):
            raise StorageError(f"{path}: a checkpoint was written only in part (disk full?)")
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        files.fsync_dir(directory)


def read(path: Path) -> tuple[list[tuple[int, Checkpoint]], list[str]]:
    """The checkpoints of the file at `path` as (line number, checkpoint), and a problem line
    for each line that is not one. A missing file has none."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return [], []
    except OSError as error:
        return [], [f"checkpoints: cannot read {path} ({error.strerror or error})"]
    found: list[tuple[int, Checkpoint]] = []
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            found.append((number, parse(raw)))
        except ValueError as error:
            problems.append(f"checkpoints: line {number} is unreadable ({error})")
    if text and not text.endswith("\n"):
        problems.append("checkpoints: the last line is cut short")
    return found, problems


def signed(
    found: Iterable[tuple[int, Checkpoint]], public: Ed25519PublicKey
) -> tuple[list[Checkpoint], list[str]]:
    """The checkpoints that `public` vouches for, and a problem line for each other one;
    two good checkpoints of the same entry with different hashes are a problem too (the
    chain was rewritten between them)."""
    mine = fingerprint(public)
    good: list[Checkpoint] = []
    problems: list[str] = []
    heads: dict[int, Checkpoint] = {}
    for number, checkpoint in found:
        if checkpoint.key != mine:
            problems.append(
                f"checkpoints: line {number} (entry {checkpoint.seq}) names key "
                f"{checkpoint.key}, not this store's {mine}"
            )
        elif not signature_ok(public, checkpoint):
            problems.append(
                f"checkpoints: line {number} (entry {checkpoint.seq}): the signature does not "
                "verify (forged or altered)"
            )
        else:
            earlier = heads.setdefault(checkpoint.seq, checkpoint)
            if earlier.head != checkpoint.head:
                problems.append(
                    f"checkpoints: line {number} gives entry {checkpoint.seq} another hash than "
                    f"the checkpoint of {earlier.at}: the chain was rewritten in between"
                )
            good.append(checkpoint)
    return good, problems


def latest(good: Iterable[Checkpoint]) -> Checkpoint | None:
    """The checkpoint of the longest chain (the newest of those, on a tie)."""
    return max(good, key=lambda c: (c.seq, c.at), default=None)


def against_chain(
    path: Path,
    good: list[Checkpoint],
    bad: int,
    hashes: Mapping[int, str],
    last_seq: int,
) -> tuple[CheckpointStatus, list[str]]:
    """Whether the chain (its hash at each checkpointed entry, and its length) still holds
    every signed checkpoint; the status of the latest, and a problem line for each that fails."""
    problems: list[str] = []
    for checkpoint in sorted(good, key=lambda c: (c.seq, c.at)):
        if checkpoint.seq > last_seq:
            problems.append(
                f"audit: the chain ends at entry {last_seq} but the checkpoint of "
                f"{checkpoint.at} covers entry {checkpoint.seq}: entries were cut from its end"
            )
        elif hashes.get(checkpoint.seq) != checkpoint.head:
            problems.append(
                f"audit: entry {checkpoint.seq} differs from the checkpoint of "
                f"{checkpoint.at}: the chain was rewritten"
            )
    newest = latest(good)
    if newest is None:
        problems.append(
            f"checkpoints: none signed by this store in {path}: the checkpoint file was "
            "removed or emptied"
        )
        return CheckpointStatus(str(path), 0, bad, None, None, None, False, False, 0), problems
    covered = newest.seq <= last_seq and hashes.get(newest.seq) == newest.head
    status = CheckpointStatus(
        path=str(path),
        checkpoints=len(good),
        bad=bad,
        seq=newest.seq,
        head=newest.head,
        at=parse_ts(newest.at),
        signature_ok=bad == 0,
        covered=covered,
        entries_after=max(0, last_seq - newest.seq),
    )
    return status, problems


# ------------------------------------------------------------------ the keys


def create_signing_key(root: Path) -> None:
    """The store's checkpoint key pair, unless it has one (blocking)."""
    private = Ed25519PrivateKey.generate()
    create_once(
        root / SIGNING_KEY_FILE,
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    # The public half of whichever key won, readable by whoever checks the checkpoints.
    create_once(root / PUBLIC_KEY_FILE, public_pem(load_signing_key(root)), mode=0o644)


def load_signing_key(root: Path) -> Ed25519PrivateKey:
    path = root / SIGNING_KEY_FILE
    data = read_key(path, "checkpoint signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        raise StorageError(f"the checkpoint signing key {path} is unreadable ({error})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise StorageError(f"the checkpoint signing key {path} is not an Ed25519 key")
    return key


def public_pem(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A public key in PEM (as `checkpoint.pub` and `callrec audit public-key` give it)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise StorageError(f"cannot read the public key {path}: {error.strerror}") from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise StorageError(f"{path} is not a public key in PEM") from None
    if not isinstance(key, Ed25519PublicKey):
        raise StorageError(f"{path} is not an Ed25519 public key")
    return key
