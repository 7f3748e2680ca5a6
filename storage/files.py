"""Durable file operations of the recording store (blocking; run them in a worker thread).

A file reaches its place in the store only whole: on the same file system it is renamed
there (after an fsync of its data), otherwise it is copied into a temporary file in the
destination directory, fsync'd and renamed over the final name. After a rename both
directories are fsync'd, so the new name survives a power cut. The source is removed by the
caller only after the ledger has committed the recording, so a crash at any point leaves
either the source or the stored file (or both), never neither.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import threading
from collections.abc import Sequence
from pathlib import Path

from flows.errors import NotFoundError, StorageError
from storage.ports import Placed
from storage.values import os_error

CHUNK = 1 << 20
WAV_HEADER = 44  # the canonical RIFF/WAVE header MixMonitor writes before any audio
TEMP_SUFFIX = ".tmp"
# Files a sweep removes at once. An unlink spends most of its time in the file system
# (ext4 frees the inode and its blocks after the directory entry is gone), not in Python,
# and several of them proceed side by side even in one directory: on two cores, 20,000
# removals took 1.35 s on one thread, 0.9 s on two and 0.6 s on four (bench/sweep.py).
UNLINK_WORKERS = 4
PRIVATE_DIR = 0o700  # recordings are personal data: the store's owner only
PRIVATE_FILE = 0o600


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def private_dir(path: Path) -> None:
    """Create `path` (and missing parents) with mode 0700, durably."""
    make_dir(path, PRIVATE_DIR)


def make_dir(path: Path, mode: int) -> None:
    """Create `path` and its missing parents, each with exactly `mode`, durably. The mode
    is set with chmod after mkdir: mkdir's own is cut by the umask (0777 under umask 000 for
    a plain mkdir, and a setgid bit is never taken from it). Existing directories are left
    as they are."""
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=mode & 0o777)
        except FileExistsError:
            continue
        directory.chmod(mode)
        fsync_dir(directory.parent)


def new_file(path: Path) -> int:
    """Open a new file at `path` for writing, mode exactly 0600 whatever the umask (refusing
    a symlink or an existing name); the descriptor."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def regular_file(path: Path, what: str) -> os.stat_result:
    """lstat of `path`, refusing anything but a regular file (a symlink in the spool could
    otherwise pull any file of the machine into the store)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError as error:
        raise NotFoundError(f"{what}: {path} does not exist") from error
    except OSError as error:
        raise os_error(error, f"{what}: {path}") from error
    if not stat.S_ISREG(info.st_mode):
        raise StorageError(f"{what}: {path} is not a regular file")
    return info


def hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def header_only(path: Path) -> bool:
    """True when `path` holds no audio: empty, a WAV header whose data chunk has no bytes
    after it, or (not RIFF) no more than a header's 44 bytes."""
    size = os.lstat(path).st_size
    if size == 0:
        return True
    with path.open("rb") as handle:
        head = handle.read(4096)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return size <= WAV_HEADER
    offset = 12
    while offset + 8 <= len(head):
        chunk_id = head[offset : offset + 4]
        chunk_size = int.from_bytes(head[offset + 4 : offset + 8], "little")
        if chunk_id == b"data":
            return size <= offset + 8
        offset += 8 + chunk_size + (chunk_size & 1)
    # No data chunk within the header area: there is nothing to play.
    return size <= max(offset, WAV_HEADER)


def place(source: Path, final: Path) -> Placed:
    """Put `source` at `final` (mode 0600) durably; see the module docstring."""
    info = regular_file(source, "ingest")
    doing = f"storing {source.name}"
    try:
        same_fs = info.st_dev == final.parent.stat().st_dev
        if same_fs:
            try:
                source.chmod(PRIVATE_FILE)
            except PermissionError:
                same_fs = False  # not ours to change: copy instead, the copy is ours
        if same_fs:
            sha256, size = _fsync_and_hash(source)
            source.replace(final)
            fsync_dir(final.parent)
            fsync_dir(source.parent)
            return Placed(sha256, size, renamed=True)
        sha256, size = copy_durably(source, final)
        return Placed(sha256, size, renamed=False)
    except OSError as error:
        raise os_error(error, doing) from error


def _fsync_and_hash(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        while chunk := os.read(fd, CHUNK):
            digest.update(chunk)
            size += len(chunk)
        os.fsync(fd)
    finally:
        os.close(fd)
    return digest.hexdigest(), size


def copy_durably(source: Path, final: Path) -> tuple[str, int]:
    """Copy `source` to `final` through a temporary file in `final`'s directory: the final
    name appears only with the whole, fsync'd content. Raises OSError; on failure nothing is
    left at `final` and the temporary file is removed."""
    tmp = final.with_name(f".{final.name}{TEMP_SUFFIX}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # a leftover of a crash: never anyone's data
    digest = hashlib.sha256()
    size = 0
    out = new_file(tmp)
    try:
        try:
            with source.open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    view = memoryview(chunk)
                    while view:
                        written = os.write(out, view)
                        view = view[written:]
            os.fsync(out)
        finally:
            os.close(out)
        tmp.replace(final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(final.parent)
    return digest.hexdigest(), size


def unlink(path: Path) -> bool:
    """Delete `path`, not yet durably (fsync its directory after); False when it was already
    gone. Raises OSError otherwise."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as error:
        if error.errno == errno.ENOTDIR:
            return False
        raise
    return True


class Unlinker:
    """Removes many files that share few directories (a sweep's batch): each directory is
    opened once and its names are removed relative to it (`unlinkat`, as `find -delete`
    does, instead of walking the whole path for every file); `sync` then fsyncs, once, each
    directory that lost a name. Not durable before `sync`. Use as a context manager.

    At most `OPEN_DIRS` directories are held open (a batch may touch many export folders);
    the oldest is fsync'd, if it lost a name, and closed to make room. A name found already
    gone still has its directory fsync'd: whoever removed it may not have made that durable,
    and the ledger is about to say it is deleted.

    Paths are handled as text (`os.path`), not `pathlib` objects: a sweep removes hundreds
    of thousands of files, and pathlib's per-call cost was a fifth of the time of each
    removal."""

    OPEN_DIRS = 64

    def __init__(self) -> None:
        self._fds: dict[str, int | None] = {}  # None: the directory is gone; oldest first
        self.touched: set[str] = set()  # directories to fsync: they lost a name

    def __enter__(self) -> Unlinker:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self._fds.values():
            if fd is not None:
                os.close(fd)
        self._fds.clear()

    def unlink(self, path: str | os.PathLike[str]) -> bool:
        """As `unlink`: False when `path` was already gone; raises OSError otherwise."""
        (outcome,) = self.unlink_many([os.fspath(path)])
        if isinstance(outcome, OSError):
            raise outcome
        return outcome

    def unlink_many(self, paths: Sequence[str]) -> list[bool | OSError]:
        """As `unlink` for each of `paths`, up to `UNLINK_WORKERS` at once: for each, True
        (removed), False (already gone) or the error that kept it. Directories are opened
        here, in the calling thread, and none is closed while a removal may be using it."""
        outcomes: list[bool | OSError] = [False] * len(paths)
        jobs: list[tuple[int, int, str]] = []  # (index in paths, directory fd, name)
        for index, path in enumerate(paths):
            directory, name = os.path.split(path)
            directory = directory or os.curdir  # a bare name is relative, as unlink(2) has it
            if directory not in self._fds and len(self._fds) >= self.OPEN_DIRS:
                _unlink_jobs(jobs, outcomes)  # opening one more closes the oldest
            try:
                fd = self._fds[directory] if directory in self._fds else self._open(directory)
            except OSError as error:  # this path's problem (EACCES, ELOOP, ...), not the batch's
                outcomes[index] = error
                continue
            if fd is not None:
                self.touched.add(directory)
                jobs.append((index, fd, name))
        _unlink_jobs(jobs, outcomes)
        return outcomes

    def removed_dir(self, directory: str) -> None:
        """`directory` itself was removed: its parent is the one to fsync now."""
        fd = self._fds.pop(directory, None)
        if fd is not None:
            os.close(fd)
        self.touched.discard(directory)
        self.touched.add(str(Path(directory).parent))

    def sync(self) -> None:
        for directory in sorted(self.touched):
            fd = self._fds.get(directory)
            with contextlib.suppress(FileNotFoundError):
                if fd is None:
                    fsync_dir(Path(directory))
                else:
                    os.fsync(fd)

    def _open(self, directory: str) -> int | None:
        while len(self._fds) >= self.OPEN_DIRS:
            oldest = next(iter(self._fds))
            old_fd = self._fds.pop(oldest)
            if old_fd is not None:
                try:
                    if oldest in self.touched:
                        os.fsync(old_fd)
                        self.touched.discard(oldest)
                finally:
                    os.close(old_fd)
        try:
            fd: int | None = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as error:
            if error.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise
            fd = None
        self._fds[directory] = fd
        return fd


def _unlink_jobs(jobs: list[tuple[int, int, str]], outcomes: list[bool | OSError]) -> None:
    """Carry out `jobs` (and empty the list) on up to `UNLINK_WORKERS` threads, the calling
    one among them, each taking every n-th job. Returns, or raises, only once every thread
    has ended: the caller closes the directories next. A thread that cannot be started (a
    task limit) leaves its share to the calling thread."""
    if not jobs:
        return
    failures: list[BaseException] = []

    def work(share: Sequence[tuple[int, int, str]]) -> None:
        try:
            for index, fd, name in share:
                try:
                    os.unlink(name, dir_fd=fd)
                    outcomes[index] = True
                except FileNotFoundError:
                    outcomes[index] = False
                except OSError as error:
                    outcomes[index] = error
        except BaseException as error:  # raised again in the calling thread
            failures.append(error)

    workers = min(UNLINK_WORKERS, len(jobs))
    shares = [jobs[w::workers] for w in range(workers)]
    here = [shares[0]]
    started: list[threading.Thread] = []
    for share in shares[1:]:
        thread = threading.Thread(target=work, args=(share,), name="callrec-unlink")
        try:
            thread.start()
        except RuntimeError:  # "can't start new thread": it never ran, so do it here
            here.append(share)
        else:
            started.append(thread)
    try:
        for share in here:
            work(share)
    finally:
        for thread in started:
            thread.join()
    if failures:
        raise failures[0]
    jobs.clear()


def remove(path: Path) -> bool:
    """Delete `path` durably; False when it was already gone. Raises OSError otherwise."""
    if not unlink(path):
        return False
    with contextlib.suppress(FileNotFoundError):
        fsync_dir(path.parent)
    return True


def write_durably(final: Path, data: bytes) -> str:
    """Write `data` to `final` (0600) through a temporary file; its SHA-256."""
    tmp = final.with_name(f".{final.name}{TEMP_SUFFIX}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    out = new_file(tmp)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(out, view)
                view = view[written:]
            os.fsync(out)
        finally:
            os.close(out)
        tmp.replace(final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(final.parent)
    return hashlib.sha256(data).hexdigest()
