"""Key files beside the ledger: written once, whole and durably, never replaced.

A key is written to a temporary file (0600, fsync'd) and linked to its name: of two
processes creating it at once one key wins, and a crash leaves either no key or a whole one.
Reading a key that is not there is an error naming the file: a lost key is restored from the
backup, never silently made anew (a new key cannot vouch for what the old one signed).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from flows.errors import StorageError


def create_once(path: Path, data: bytes, *, mode: int = 0o600) -> bool:
    """Write `data` to `path` unless a file is there already; True when this call made it."""
    if path.exists():
        return False
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        try:
            os.fchmod(fd, mode)  # the umask does not decide who may read a key
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
            made = True
        except FileExistsError:
            made = False
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as error:
        raise StorageError(f"cannot create {path}: {error.strerror or error}") from error
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return made


def read_key(path: Path, what: str) -> bytes:
    """The bytes of the key file `path`; a missing or unreadable one is a clear error."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise StorageError(
            f"the {what} {path} is missing: restore it from the backup of the store's keys "
            "(a new key could not vouch for the audit log written under the old one)"
        ) from None
    except OSError as error:
        raise StorageError(f"cannot read the {what} {path}: {error.strerror or error}") from error
