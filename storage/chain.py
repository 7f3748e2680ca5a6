"""The audit chain, keyed: each entry's hash is an HMAC under a key the ledger does not hold.

With plain SHA-256 whoever can write the ledger can change an entry and recompute every hash
after it. Each entry's hash is therefore HMAC-SHA256(audit key, previous hash + canonical
body) (`storage.audit.canonical`), with the key in `audit.key` beside the ledger (32 random
bytes, 0600, made once when the store is made): without the key no entry can be forged or
changed unnoticed. What the key cannot stop, cutting entries off the chain's end, the signed
checkpoints (`storage.checkpoints`) catch.

A ledger whose chain began before the key (schema migration 5) keeps its SHA-256 entries;
the migration appends an `audit.keyed` entry, the first keyed one, naming where the keyed
chain starts and the key that signs its checkpoints. Entries before the first `audit.keyed`
are checked with SHA-256 and every later one with the key; without such an entry the whole
chain must be keyed. Nobody without the key can write a valid `audit.keyed` entry, so a
chain rewritten with plain SHA-256 fails either way, old entries included: they are linked
into the first keyed entry's MAC.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flows.errors import StorageError
from storage import checkpoints
from storage.audit import GENESIS, canonical, entry_hash
from storage.keyfiles import create_once, read_key
from storage.ports import AuditEntry, Tx
from storage.values import ts

AUDIT_KEY_FILE = "audit.key"
KEY_BYTES = 32
KEYED_START = "audit.keyed"
MAC = "HMAC-SHA256"
FIRST_KEYED_SQL = "SELECT MIN(seq) AS keyed_from FROM audit WHERE action = 'audit.keyed'"
HEAD_SQL = "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"
INSERT_SQL = (
    "INSERT INTO audit (seq, at, action, subject, details, prev_hash, hash) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def entry_mac(key: bytes, prev_hash: str, body: str) -> str:
    return hmac.digest(key, (prev_hash + body).encode("utf-8"), "sha256").hex()


def key_id(key: bytes) -> str:
    """Names the audit key in the chain without revealing it."""
    return hashlib.sha256(b"callrec audit key\0" + key).hexdigest()[:16]


def create_audit_key(root: Path) -> None:
    create_once(root / AUDIT_KEY_FILE, secrets.token_bytes(KEY_BYTES))


def load_audit_key(root: Path) -> bytes:
    path = root / AUDIT_KEY_FILE
    key = read_key(path, "audit key")
    if len(key) != KEY_BYTES:
        raise StorageError(
            f"the audit key {path} holds {len(key)} bytes, not {KEY_BYTES}: restore it from "
            "the backup of the store's keys"
        )
    return key


def head(tx: Tx) -> tuple[int, str]:
    """(entries in the chain, the last one's hash); (0, GENESIS) when it is empty."""
    last = tx.one(HEAD_SQL)
    return (0, GENESIS) if last is None else (int(last["seq"]), str(last["hash"]))


def append(
    tx: Tx,
    key: bytes,
    at: datetime,
    action: str,
    entries: Sequence[tuple[str, Mapping[str, str]]],
) -> None:
    """Append one keyed entry per (subject, details), chained in order. The head is read
    once: the transaction holds the write lock, so nobody appends meanwhile."""
    if not entries:
        return
    seq, prev = head(tx)
    when = ts(at)
    rows = []
    for subject, details in entries:
        seq += 1
        mac = entry_mac(key, prev, canonical(seq, when, action, subject, details))
        stored = json.dumps(dict(details), sort_keys=True, ensure_ascii=False)
        rows.append((seq, when, action, subject, stored, prev, mac))
        prev = mac
    tx.many(INSERT_SQL, rows)


class ChainChecker:
    """Checks a chain fed entry by entry in seq order, holding only what it was asked to
    remember: the hashes at `wanted` (the checkpointed entries) and the last entry."""

    def __init__(self, key: bytes, keyed_from: int | None, wanted: set[int]) -> None:
        # keyed_from: the first `audit.keyed` entry; None: the chain was keyed from entry 1.
        self._key = key
        self._keyed_from = 1 if keyed_from is None else keyed_from
        self._wanted = wanted
        self.hashes: dict[int, str] = {0: GENESIS}
        self.problems: list[str] = []
        self.last_seq = 0
        self._expected_prev = GENESIS

    def feed(self, entry: AuditEntry, body: str) -> None:
        expected_seq = self.last_seq + 1
        if entry.seq != expected_seq:
            self.problems.append(
                f"audit: entry {expected_seq} is missing (next stored entry is {entry.seq})"
            )
        if entry.prev_hash != self._expected_prev:
            self.problems.append(f"audit: entry {entry.seq} does not link to the entry before it")
        if entry.seq >= self._keyed_from:
            expected = entry_mac(self._key, entry.prev_hash, body)
        else:
            expected = entry_hash(entry.prev_hash, body)
        if not hmac.compare_digest(expected, entry.hash):
            self.problems.append(f"audit: entry {entry.seq} was changed (its hash does not match)")
        if (
            entry.seq == self._keyed_from
            and entry.action == KEYED_START
            and entry.details.get("from_seq") != str(entry.seq)
        ):
            self.problems.append(f"audit: entry {entry.seq} starts the keyed chain elsewhere")
        if entry.seq in self._wanted:
            self.hashes[entry.seq] = entry.hash
        self._expected_prev = entry.hash
        self.last_seq = entry.seq


@dataclass(frozen=True, slots=True)
class AuditKeys:
    """The keys a store's audit needs besides the ledger; kept (and backed up) apart from it."""

    mac: bytes  # the chain's HMAC key (audit.key)
    signing: Ed25519PrivateKey  # signs the checkpoints (checkpoint.key)


def load_keys(root: Path) -> AuditKeys:
    """The store's audit keys (blocking); a missing one is an error naming the file."""
    return AuditKeys(load_audit_key(root), checkpoints.load_signing_key(root))
