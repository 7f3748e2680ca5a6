"""A controller's face to its operator: the monitoring endpoint and systemd's notifications.

`Watch` starts `/metrics` and `/healthz` (`callrec.metrics`) before the controller is
ready, so that a health check sees why it is not; tells systemd `READY=1` once the
controller serves (the ledger open, and ARI's events socket connected or the FastAGI
server listening), keeps a one-line `STATUS=` current, and feeds the watchdog from the
event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType

from callrec.config import Settings
from callrec.logs import announce
from callrec.metrics import Metrics, MonitorServer, callbacks_count
from callrec.sdnotify import Notifier
from flows.errors import ConfigError
from storage.ports import StoreApi

log = logging.getLogger("callrec.monitor")

STATUS_EVERY = 5.0  # seconds between looks whether the status line changed

# Which settings name ARI's credentials, for the one line that says ARI refused them.
CREDENTIALS_HINT = (
    "check ari.user (or CALLREC_ARI_USER) and the password in CALLREC_ARI_PASSWORD or "
    "ari.password_file against the [user] section of Asterisk's ari.conf "
    "(then `asterisk -rx 'module reload res_ari.so'`)"
)


class Watch:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        store: StoreApi,
        *,
        status: Callable[[], str],
        connected: Callable[[], bool] | None = None,
        not_connected: Callable[[], str] | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.metrics = metrics
        self.notifier = notifier or Notifier()
        self._status = status
        self._tasks: list[asyncio.Task[None]] = []
        self.server: MonitorServer | None = None
        if settings.monitor.listen is not None:
            self.server = MonitorServer(
                metrics,
                settings.monitor.listen,
                ledger_answers=store.audit_head,
                callbacks=lambda: callbacks_count(store),
                spool=settings.spool_dir,
                connected=connected,
                not_connected=not_connected,
            )

    async def __aenter__(self) -> Watch:
        if self.server is not None:
            try:
                url = await self.server.start()
            except ConfigError as error:
                # Open on service: calls are taken without the endpoint rather than not at all.
                log.error("%s; /metrics and /healthz are off", error)
                self.server = None
            else:
                announce(f"callrec monitor: {url}/metrics and {url}/healthz")
        self._tasks.append(asyncio.create_task(self.notifier.feed_watchdog()))
        return self

    async def ready_once(self, serving: Awaitable[object]) -> None:
        """Tell systemd READY=1 when `serving` is done, then keep the status line current;
        meanwhile the status says what the controller waits for."""
        self._tasks.append(asyncio.create_task(self._ready(serving)))

    async def _ready(self, serving: Awaitable[object]) -> None:
        self.notifier.status(self._status())
        await serving
        self.notifier.ready(self._status())
        while True:
            await asyncio.sleep(STATUS_EVERY)
            self.notifier.status(self._status())

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.notifier.stopping()
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.stop()
