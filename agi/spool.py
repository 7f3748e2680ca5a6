"""When MixMonitor has finished a file: the spool directory watched through inotify.

MixMonitor writes its file through stdio, so the last frames sit in a buffer until the file
is closed, and the WAV header's sizes are written only then (`formats/format_wav.c`,
`wav_close` -> `update_header`). A file is finished when Asterisk closes it, which Linux
reports as `IN_CLOSE_WRITE` on the spool directory. Hashing it any earlier stores a file
that is still changing: the ledger's size and SHA-256 then describe a file that no longer
exists.

When that close comes depends on the interface:
* FastAGI: the hangup handler runs before the channel's audiohooks are detached
  (`main/channel.c`, `ast_hangup`: `ast_pbx_hangup_handler_run`, then `destroy_hooks`), so
  MixMonitor closes the file only after the `/hangup` AGI has ended. Waiting for the close
  while that AGI connection is open would wait for ever; the wait starts once it is closed.
* ARI: `ChannelDestroyed` comes after MixMonitor closed the file (its thread closes the
  stream before it lets the channel's datastore go), so the close has usually been seen
  by then.

The watch runs for the whole life of the controller and remembers which files were closed,
so a close that happens before anyone asks is not lost. A file whose close was not seen (the
controller was not running then, or the kernel dropped events) is taken as finished only
when it has not changed since before the watch began (or since the events were lost), for
at least `QUIET` seconds, and no process visible to us holds it open for writing. Without
inotify (not Linux, or no inotify instances left) the same rule applies to every file.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import struct
import time
from collections import OrderedDict
from pathlib import Path

log = logging.getLogger("callrec.spool")

# <sys/inotify.h>
IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_MASK = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name

QUIET = 5.0  # seconds a file whose close was not seen must stay unchanged to count as finished
POLL = 0.5  # seconds between looks at a file while waiting without inotify
REMEMBERED = 10_000  # closed files remembered; the spool holds far fewer at any time


class SpoolWatch:
    """Which files of one directory a writer has closed. Start it before MixMonitor may
    write there (at the controller's start); use `finished` to wait for one file."""

    def __init__(self, directory: Path, *, quiet: float = QUIET) -> None:
        self.directory = Path(directory).absolute()
        self.quiet = quiet
        self._fd: int | None = None
        self._closed: OrderedDict[str, None] = OrderedDict()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._blind_since = time.time()  # files changed before this: their close was not seen
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def watching(self) -> bool:
        """Whether closes are observed (inotify), not inferred."""
        return self._fd is not None

    def start(self) -> None:
        """Watch the directory (its creator gives it its mode). Without inotify, say so
        once: files are then taken as finished by the quiet rule only."""
        if self._fd is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._blind_since = time.time()
        try:
            fd = _inotify(self.directory)
        except OSError as error:
            log.warning(
                "cannot watch %s for finished recordings (%s): a file counts as finished only "
                "after %g s without a change",
                self.directory,
                error.strerror or error,
                self.quiet,
            )
            return
        self._fd = fd
        self._loop.add_reader(fd, self._read)

    def stop(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None and self._loop is not None:
            self._loop.remove_reader(fd)
            os.close(fd)
        # Whoever waits now runs into its time limit and judges by the quiet rule.

    def seen_closed(self, path: Path) -> bool:
        return self._ours(path) and path.name in self._closed

    async def finished(self, path: Path, within: float) -> bool:
        """True once the writer has closed `path`: seen now or before, or (its close not seen)
        by the quiet rule. False when neither happened within `within` seconds."""
        path = Path(path)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        if self._fd is not None and self._ours(path):
            self._read()  # events the kernel holds already: a write after a close, say
            if path.name in self._closed:
                return True
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(path.name, []).append(waiter)
            try:
                await asyncio.wait_for(waiter, within)
            except TimeoutError:
                pass
            else:
                return True
            finally:
                waiters = self._waiters.get(path.name, [])
                if waiter in waiters:
                    waiters.remove(waiter)
                if not waiters:
                    self._waiters.pop(path.name, None)
            if path.name in self._closed:
                return True
            # The close was not seen: only a file untouched since before the watch (or the
            # lost events) can still count as finished.
            return await asyncio.to_thread(self._settled, path)
        while True:
            if await asyncio.to_thread(self._settled, path, unwatched=True):
                return True
            if loop.time() + POLL > deadline:
                return False
            await asyncio.sleep(POLL)

    def settled(self, path: Path) -> bool:
        """Whether `path` counts as finished without waiting (for reconcile); blocking, so
        called in a worker thread, where it does not read the watch's events."""
        if self._fd is not None and self.seen_closed(path):
            return True
        return self._settled(path, unwatched=self._fd is None or not self._ours(path))

    def _settled(self, path: Path, *, unwatched: bool = False) -> bool:
        try:
            info = os.lstat(path)
        except OSError:
            return False
        now = time.time()
        if now - info.st_mtime < self.quiet:
            return False
        if not unwatched and info.st_mtime >= self._blind_since:
            # Changed while we were watching, and no close came: a writer still has it.
            return False
        return not held_for_writing(path)

    def _ours(self, path: Path) -> bool:
        return path.parent == self.directory

    def _read(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            data = os.read(fd, 64 * 1024)
        except BlockingIOError:
            return
        except OSError as error:
            log.error("the spool watch failed (%s); falling back to the quiet rule", error)
            self._blind_since = time.time()
            self.stop()
            return
        offset = 0
        while offset + _EVENT.size <= len(data):
            _, mask, _, length = _EVENT.unpack_from(data, offset)
            raw = data[offset + _EVENT.size : offset + _EVENT.size + length]
            offset += _EVENT.size + length
            self._event(mask, os.fsdecode(raw.rstrip(b"\0")))

    def _event(self, mask: int, name: str) -> None:
        if mask & IN_Q_OVERFLOW:
            # Events were dropped: a file changed from now back to the last good event may
            # have closed unseen, so the quiet rule judges those.
            log.warning("spool watch: the kernel dropped events; unseen closes are inferred")
            self._blind_since = time.time()
            return
        if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
            log.error("the spool directory %s went away; its watch ends", self.directory)
            self._blind_since = time.time()
            self.stop()
            return
        if not name:
            return
        if mask & IN_CLOSE_WRITE:
            self._closed[name] = None
            self._closed.move_to_end(name)
            while len(self._closed) > REMEMBERED:
                self._closed.popitem(last=False)
            for waiter in self._waiters.pop(name, []):
                if not waiter.done():
                    waiter.set_result(None)
        elif mask & (IN_MODIFY | IN_DELETE | IN_MOVED_FROM):
            # Written again after its close, or gone: what was seen no longer holds.
            self._closed.pop(name, None)


def _inotify(directory: Path) -> int:
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name, use_errno=True)
    fd = int(libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    wd = int(libc.inotify_add_watch(fd, os.fsencode(directory), _MASK))
    if wd < 0:
        code = ctypes.get_errno()
        os.close(fd)
        raise OSError(code, os.strerror(code))
    return fd


def held_for_writing(path: Path) -> bool:
    """Whether a process we may look at (ours, or all when running as root) has `path` open
    for writing, from /proc. Processes we may not look at are not seen: this is the
    fallback's extra care, not its proof."""
    target = Path(path).absolute()
    proc = Path("/proc")
    with contextlib.suppress(OSError):
        for process in proc.iterdir():
            if not process.name.isdigit():
                continue
            try:
                descriptors = list((process / "fd").iterdir())
            except OSError:
                continue
            for descriptor in descriptors:
                try:
                    if descriptor.readlink() != target:
                        continue
                    flags = _fd_flags(process / "fdinfo" / descriptor.name)
                except OSError as error:
                    if error.errno in (errno.ENOENT, errno.EACCES, errno.EPERM):
                        continue
                    raise
                if flags is None or flags & (os.O_WRONLY | os.O_RDWR):
                    return True
    return False


def _fd_flags(info: Path) -> int | None:
    for line in info.read_text(encoding="ascii", errors="replace").splitlines():
        if line.startswith("flags:"):
            return int(line.split()[1], 8)
    return None
