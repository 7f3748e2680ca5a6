"""The data directory of a store (created 0700), whatever its ledger:

<ledger>                  the SQLite ledger's file (`storage.sqlite`), when it is there
pseudonym.key             the key of the callers' pseudonyms in the audit log (0600)
audit.key                 the key of the audit chain's MACs (0600, `storage.chain`)
checkpoint.key, .pub      the key pair that signs the audit's checkpoints (0600, 0644)
checkpoints/              the signed checkpoints of the audit chain (`storage.checkpoints`)
recordings/YYYY/MM/DD/    one file per recording, named by its id (`storage.blobs`)
exports/                  the default place of exports
spool/                    the default spool, where MixMonitor writes
controller.lock           held by the controller serving a SQLite ledger (`storage.sqlite`)
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from pathlib import Path

from flows.errors import StorageError
from flows.numbers import shown
from storage import files
from storage.audit import load_key
from storage.blobs import RECORDINGS_DIR

KEY_FILE = "pseudonym.key"
EXPORTS_DIR = "exports"
SPOOL_DIR = "spool"  # the default spool, inside the data directory
CONTROLLER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_KEY_TEMP = re.compile(rf"^\.{re.escape(KEY_FILE)}\.[0-9a-f]+\.tmp$")  # a key being written


def claim(root: Path, ledger_file: str) -> None:
    """Make `root` the directory of a new store (0700), refusing one that holds anything
    else: a new store never lands in a home or system directory by a slip of the config,
    and never beside recordings whose ledger is lost. What an interrupted creation leaves
    (the key, empty directories of the store) is allowed."""
    try:
        entries = list(root.iterdir())
    except FileNotFoundError:
        files.private_dir(root)
        return
    for entry in entries:
        name = entry.name
        if name in (KEY_FILE, "lost+found") or _KEY_TEMP.match(name):
            continue
        if name in (RECORDINGS_DIR, EXPORTS_DIR, SPOOL_DIR) and not _holds_files(entry):
            continue
        raise StorageError(
            f"no store at {root} (no {ledger_file}), and it is not empty ({shown(name, 40)} "
            "is there): restore the ledger from the backup, or name a new or empty directory"
        )
    root.chmod(files.PRIVATE_DIR)


def _holds_files(directory: Path) -> bool:
    if directory.is_symlink() or not directory.is_dir():
        return True
    return any(names for _, _, names in os.walk(directory))


def prepare(root: Path, *, new: bool) -> bytes:
    """The directories of the store at `root` and its pseudonym key (made when `new`)
    (blocking). The key comes before the ledger: a ledger is never without its key, and
    a creation cut short (a key, no ledger) is finished by the next one."""
    files.private_dir(root / RECORDINGS_DIR)
    files.private_dir(root / EXPORTS_DIR)
    return load_key(root / KEY_FILE, create=new)


def default_controller_id(root: Path) -> str:
    """This machine and data directory's controller id: the host's name and a digest of
    the directory, the same at every start (a restart settles the calls it left open)."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:40].strip(".-") or "host"
    digest = hashlib.sha256(str(root.absolute()).encode("utf-8")).hexdigest()[:12]
    return f"{host}:{digest}"


def checked_controller_id(value: str) -> str:
    """A controller id as configured: 1 to 64 letters, digits, '.', '_', ':' or '-'."""
    if not isinstance(value, str) or not CONTROLLER_ID.match(value):
        raise StorageError(
            f"a controller id is 1 to 64 letters, digits, '.', '_', ':' or '-', "
            f"got {shown(str(value), 40)}"
        )
    return value
