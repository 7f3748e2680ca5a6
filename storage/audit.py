"""The audit log's entries and the keyed pseudonym that keeps phone numbers out of it.

Each entry is hashed over the previous entry's hash followed by the canonical JSON of the
entry (sorted keys, no spaces, UTF-8): changing, inserting or removing an entry in the
middle breaks every later link. The first entry's previous hash is `GENESIS`. Entries are
keyed (an HMAC, `storage.chain`); `entry_hash`, plain SHA-256, is how the entries of a
ledger older than the keyed chain were hashed.

An audit entry must prove what was deleted, when and why without holding personal data; a
caller is named by HMAC-SHA256(key, E.164). The key lives beside the ledger
(`pseudonym.key`, 32 random bytes, mode 0600): with it the DPO can check whether a given
number is the one in an entry; without it the entries name nobody.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from pathlib import Path

from flows.errors import StorageError
from storage import keyfiles

GENESIS = "0" * 64
KEY_BYTES = 32


def canonical(seq: int, at: str, action: str, subject: str, details: Mapping[str, str]) -> str:
    return json.dumps(
        {"seq": seq, "at": at, "action": action, "subject": subject, "details": dict(details)},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )


def entry_hash(prev_hash: str, body: str) -> str:
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


def load_key(path: Path, *, create: bool = False) -> bytes:
    """The pseudonym key at `path`. Only a new store (`create`) gets a new one (0600, 32
    random bytes, written once by `storage.keyfiles`): a missing key is never replaced,
    because a new key would leave every pseudonym already in the audit log matching nobody."""
    if create:
        keyfiles.create_once(path, secrets.token_bytes(KEY_BYTES))
    elif not path.exists():
        raise StorageError(
            f"the pseudonym key {path} is missing: restore it from the backup (the "
            "store does not open without it; a new key would orphan the audit's "
            "pseudonyms)"
        )
    key = keyfiles.read_key(path, "pseudonym key")
    if len(key) != KEY_BYTES:
        raise StorageError(
            f"the pseudonym key {path} holds {len(key)} bytes, not {KEY_BYTES}: restore it "
            "from the backup (a new key would make old audit entries unmatchable)"
        )
    return key


def pseudonym(key: bytes, e164: str) -> str:
    return hmac.digest(key, e164.encode("ascii", "replace"), "sha256").hex()
