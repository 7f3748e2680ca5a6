"""What a running controller shows to monitoring: `/metrics` and `/healthz` on loopback.

`Metrics` holds one controller's Prometheus metrics in its own registry (never the
process-wide default, so that several controllers in one process, as in the tests, count
apart). The counters move where things happen: `MeteredStore` wraps the store the calls
use (calls started, decisions committed, recordings ingested or not), the ARI client
reports each REST request's time (`observe_request`), the sweeper its runs. What is a
state rather than an event (files waiting in the spool, callbacks due and overdue, the
events socket, calls shed) is read when Prometheus asks.

No label value is a phone number or a call id: lines come from the configuration, REST
resources are the Swagger's path templates (`/channels/{channelId}/play`), decisions and
directions are the policy's own words.

`MonitorServer` serves both paths with aiohttp on the controller's event loop. `/healthz`
answers 200 `ok` while the ledger answers and (serve) ARI's events socket is connected,
503 with a one-line reason otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from flows.errors import CallrecError, ConfigError, StorageError
from storage.ports import (
    CallStart,
    DecisionRecord,
    Queries,
    RecordingRow,
    StoreApi,
    SweepReport,
)

log = logging.getLogger("callrec.monitor")

HEALTH_TIMEOUT = 2.0  # seconds the ledger has to answer /healthz (and the callbacks query)
# REST latency buckets: a local Asterisk answers in milliseconds; seconds mean trouble, and
# the client gives up at its 5 s timeout.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
NO_LINE = "none"  # a call to a number of no line


class Metrics:
    """One controller's metrics (`mode`: "ari" for serve, "fastagi")."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.calls = Counter(
            "callrec_calls",
            "Calls the controller took, by line, direction and mode (ari or fastagi)",
            ["line", "direction", "mode"],
            registry=r,
        )
        self.decisions = Counter(
            "callrec_decisions",
            "Decisions committed, by kind (record, refuse, none) and legal basis",
            ["decision", "legal_basis"],
            registry=r,
        )
        self.recordings_stored = Counter(
            "callrec_recordings_stored", "Recordings taken into the store", registry=r
        )
        self.ingest_failures = Counter(
            "callrec_ingest_failures",
            "Recordings the store could not take (left in the spool, tried again)",
            registry=r,
        )
        self.rest_latency = Histogram(
            "callrec_ari_request_duration_seconds",
            "Time of ARI REST requests, by method and resource (the Swagger's path)",
            ["method", "resource"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.sweep_last_run = Gauge(
            "callrec_sweep_last_run_timestamp_seconds",
            "When the last retention sweep ended (Unix time; 0: none yet)",
            registry=r,
        )
        self.sweep_duration = Gauge(
            "callrec_sweep_last_duration_seconds", "How long the last sweep took", registry=r
        )
        self.sweep_deleted = Counter(
            "callrec_sweep_deleted_recordings", "Recordings the sweeps deleted", registry=r
        )
        self.sweep_failures = Counter(
            "callrec_sweep_failures",
            "Deletions a sweep could not carry out, and sweeps that failed (retried)",
            registry=r,
        )
        self.spool_backlog = Gauge(
            "callrec_spool_backlog_files", "Files waiting in the spool to be stored", registry=r
        )
        self.callbacks_due = Gauge(
            "callrec_callbacks_due", "Missed calls waiting for a callback", registry=r
        )
        self.callbacks_overdue = Gauge(
            "callrec_callbacks_overdue",
            "Missed calls whose callback window has passed with no callback",
            registry=r,
        )
        self.lock_held = Gauge(
            "callrec_controller_lock_held",
            "1 while the controller holds its id's lock on the ledger, 0 while it is lost",
            registry=r,
        )
        self.lock_lost = Counter(
            "callrec_controller_lock_lost",
            "Times the lock on the controller's id was found lost (its ledger session ended)",
            registry=r,
        )
        self._readings = _Readings()
        r.register(self._readings)
        self._latency: dict[tuple[str, str], Histogram] = {}

    def read_ari_connected(self, read: Callable[[], bool]) -> None:
        """serve: `callrec_ari_connected` is 1 while the events socket is up."""
        self._readings.ari_connected = read

    def read_calls_shed(self, read: Callable[[], int]) -> None:
        self._readings.shed = read

    def observe_request(self, method: str, resource: str, seconds: float) -> None:
        # Each REST request of every call lands here: the labelled child is looked up once.
        child = self._latency.get((method, resource))
        if child is None:
            child = self._latency[method, resource] = self.rest_latency.labels(method, resource)
        child.observe(seconds)

    def record_sweep(self, result: SweepReport | None, seconds: float) -> None:
        """A sweep ended (`None`: it failed as a whole)."""
        self.sweep_last_run.set(time.time())
        self.sweep_duration.set(seconds)
        if result is None:
            self.sweep_failures.inc()
            return
        self.sweep_deleted.inc(result.count)
        self.sweep_failures.inc(len(result.problems))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Readings(Collector):
    """The values read at each scrape from the running parts."""

    def __init__(self) -> None:
        self.ari_connected: Callable[[], bool] | None = None
        self.shed: Callable[[], int] | None = None

    def collect(self) -> Iterable[Metric]:
        if self.ari_connected is not None:
            yield GaugeMetricFamily(
                "callrec_ari_connected",
                "1 while ARI's events WebSocket is connected (serve)",
                value=1 if self.ari_connected() else 0,
            )
        shed = CounterMetricFamily(
            "callrec_calls_shed",
            "Calls handed on at once, unrecorded and without the notice, because the "
            "controller or Asterisk was behind",
        )
        shed.add_metric([], self.shed() if self.shed is not None else 0)
        yield shed

    def describe(self) -> Iterable[Metric]:
        return self.collect()


class MeteredStore:
    """The store as the calls use it, counting calls, decisions and ingests on the way (and
    saying so at debug level, by call id); everything else goes straight through."""

    def __init__(self, inner: StoreApi, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def start_call(self, call: CallStart, *, lazy: bool = False) -> None:
        await self._inner.start_call(call, lazy=lazy)
        line = call.line or NO_LINE
        self._metrics.calls.labels(line, call.direction.value, self._metrics.mode).inc()
        log.debug("call %s: %s call on line %s", call.call_id, call.direction.value, line)

    async def commit_decision(self, record: DecisionRecord, start: CallStart | None = None) -> None:
        await self._inner.commit_decision(record, start)
        self._metrics.decisions.labels(record.decision.value, record.legal_basis.value).inc()
        log.debug("call %s: decision %s committed", record.call_id, record.decision.value)

    async def ingest(
        self, call_id: str, source: Path, now: datetime, *, lazy: bool = False
    ) -> RecordingRow | None:
        try:
            row = await self._inner.ingest(call_id, source, now, lazy=lazy)
        except StorageError:
            self._metrics.ingest_failures.inc()
            raise
        if row is not None:
            self._metrics.recordings_stored.inc()
            log.debug("call %s: recording %s stored", call_id, row.id)
        return row


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    reason: str  # "ok", or what is wrong, in one line


class MonitorServer:
    """`/metrics` and `/healthz` of one controller.

    `ledger_answers` is awaited for health (it raises `CallrecError` when the ledger does
    not answer); `connected` (serve) says whether ARI's events socket is up, and
    `not_connected` why not; `callbacks` returns (due, overdue); `spool` is the directory
    whose files wait to be stored."""

    def __init__(
        self,
        metrics: Metrics,
        listen: tuple[str, int],
        *,
        ledger_answers: Callable[[], Any],
        callbacks: Callable[[], Any],
        spool: Path,
        connected: Callable[[], bool] | None = None,
        not_connected: Callable[[], str] | None = None,
    ) -> None:
        self.metrics = metrics
        self._listen = listen
        self._ledger_answers = ledger_answers
        self._callbacks = callbacks
        self._spool = spool
        self._connected = connected
        self._not_connected = not_connected
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> str:
        """Listen; returns the URL (with the real port when the configured one is 0)."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics_page)
        app.router.add_get("/healthz", self._health_page)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        host, port = self._listen
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            raise ConfigError(
                f"monitor.listen: cannot listen on {_where(host, port)}: {error.strerror} "
                '(set [monitor] listen = "" to turn the endpoint off)'
            ) from None
        self._runner = runner
        server = site._server  # aiohttp has no public accessor for the bound socket
        sockets: Sequence[Any] = getattr(server, "sockets", None) or ()
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        return f"http://{_where(host, self.port)}"

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def health(self) -> Health:
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT):
                await self._ledger_answers()
        except TimeoutError:
            return Health(False, f"the ledger did not answer within {HEALTH_TIMEOUT:g} s")
        except CallrecError as error:
            return Health(False, f"the ledger does not answer: {error}")
        except Exception as error:  # a health check answers, whatever broke
            return Health(False, f"the ledger does not answer ({type(error).__name__})")
        if self._connected is not None and not self._connected():
            why = self._not_connected() if self._not_connected is not None else ""
            return Health(False, f"ARI events socket not connected{': ' + why if why else ''}")
        return Health(True, "ok")

    async def refresh(self) -> None:
        """Read the states that are not counted as they happen."""
        self.metrics.spool_backlog.set(await asyncio.to_thread(_files_in, self._spool))
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT):
                due, overdue = await self._callbacks()
        except (TimeoutError, CallrecError) as error:
            # Left at their last values: a scrape must not fail for one slow query.
            log.debug("callbacks for /metrics not read: %s", error)
            return
        self.metrics.callbacks_due.set(due)
        self.metrics.callbacks_overdue.set(overdue)

    async def _metrics_page(self, request: web.Request) -> web.Response:
        await self.refresh()
        body = self.metrics.render()
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def _health_page(self, request: web.Request) -> web.Response:
        health = await self.health()
        line = " ".join(health.reason.split())  # one line, whatever the error said
        return web.Response(text=line + "\n", status=200 if health.ok else 503)


def _files_in(directory: Path) -> int:
    """Finished or unfinished recordings in the spool (hidden files are not recordings)."""
    with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
        return sum(1 for e in entries if e.is_file() and not e.name.startswith("."))
    return 0


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def callbacks_count(queries: Queries) -> tuple[int, int]:
    """(due, overdue) of the callbacks waiting now."""
    waiting = await queries.callbacks_due(datetime.now(UTC))
    return len(waiting), sum(1 for c in waiting if c.overdue)
