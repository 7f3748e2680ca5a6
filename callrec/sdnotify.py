"""systemd's service notification protocol (`sd_notify(3)`), spoken directly.

A unit with `Type=notify` waits for `READY=1` before it counts the service as started;
`STATUS=` lines show in `systemctl status`; with `WatchdogSec=` systemd kills and restarts
a service that stops sending `WATCHDOG=1`. The protocol is one datagram of `KEY=value`
lines to the unix socket named by `$NOTIFY_SOCKET` (a path, or `@name` for the abstract
namespace); without that variable, as outside systemd, nothing is sent.

The watchdog is fed from the event loop itself, at half of `$WATCHDOG_USEC`: a loop that is
stuck (a blocking call, a busy handler) stops feeding it, and systemd restarts the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("callrec.sdnotify")

STATUS_MAX = 200  # characters of a STATUS= line; systemctl shows one line


def _address(value: str) -> str | bytes | None:
    """The socket address of `$NOTIFY_SOCKET`: a path, or an abstract name for `@name`."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # systemd also knows vsock addresses; callrec never runs in such a VM


class Notifier:
    """Sends notifications to systemd when it asked for them; otherwise does nothing."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval = _watchdog_interval(env)
        self.ready_sent = False
        self._last_status = ""

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *fields: str) -> bool:
        """One datagram of `fields`; False (logged once at debug) when it could not go."""
        if self._address is None:
            return False
        message = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self._address)
        except OSError as error:
            # systemd gone or the socket not ours: the service itself is unaffected.
            log.debug("sd_notify %s failed: %s", fields[0].split("=", 1)[0], error)
            return False
        return True

    def ready(self, status: str) -> None:
        """The service is up: said once, with its status."""
        if not self.ready_sent:
            self.ready_sent = self.send("READY=1", _status(status), f"MAINPID={os.getpid()}")
            self._last_status = status

    def status(self, status: str) -> None:
        """A new status line (sent only when it changed)."""
        if status != self._last_status:
            self._last_status = status
            self.send(_status(status))

    def stopping(self) -> None:
        self.send("STOPPING=1", _status("stopping"))

    async def feed_watchdog(self) -> None:
        """Send WATCHDOG=1 at half the interval systemd asked for, until cancelled. It runs
        on the event loop, so it stops by itself when the loop does not turn."""
        interval = self.watchdog_interval
        if interval is None or not self.enabled:
            return
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(interval / 2)


def _status(text: str) -> str:
    return "STATUS=" + " ".join(text.split())[:STATUS_MAX]


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Seconds of `$WATCHDOG_USEC`, when it is meant for this process (`$WATCHDOG_PID`,
    when set, names the process systemd watches)."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    with contextlib.suppress(ValueError):
        value = int(usec)
        if value > 0:
            return value / 1_000_000
    return None
