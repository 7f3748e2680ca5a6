"""The controller: `callrec serve` (ARI) and `callrec fastagi` wired to a store, the spool
collector, the retention sweeper, the callback watch and the audit checkpoints.

The other subcommands' bodies are in `callrec.commands`; both are the composition root.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from agi.collector import RecordingCollector
from agi.ports import EventSink, SystemClock
from agi.session import SessionDeps
from agi.spool import SpoolWatch
from callrec.cli import EXIT_ERROR, EXIT_OK
from callrec.commands import (
    announce_deleted,
    events_of,
    make_spool,
    open_store,
    publish_sweep,
)
from callrec.config import Settings
from callrec.events import MqttEvents
from callrec.logs import announce, sweep_summary
from callrec.metrics import MeteredStore, Metrics
from callrec.watch import CREDENTIALS_HINT, Watch
from flows.errors import CallrecError, ControllerConflict
from flows.policy import Policy
from prompts.catalog import load_catalog
from storage import checkpoints
from storage.ports import ClaimCheck, ClaimState, StoreApi, SweepReport
from storage.values import parse_ts

log = logging.getLogger("callrec")
CALLBACK_CHECK_SECONDS = 60  # how often serve looks for missed calls due a callback
# How often serve and fastagi sign the audit chain's head (when it moved since the last
# checkpoint, and at least once a day): entries appended since the last checkpoint are the
# only ones a tail cut could remove unnoticed. Deletions are checkpointed as they commit.
CHECKPOINT_INTERVAL = timedelta(minutes=5)
CHECKPOINT_AT_LEAST = timedelta(days=1)


@contextlib.asynccontextmanager
async def serving_store(settings: Settings, command: str) -> AsyncIterator[StoreApi]:
    """The store of a controller that takes real calls: created on the first start (said
    loudly, since a mistyped path would otherwise start an empty store unnoticed), held for
    this controller alone (a second one on the same SQLite store is refused), its spool
    made, and marked as a store of real calls."""
    async with open_store(settings, create=True) as store:
        await store.claim_controller()
        if store.created:
            log.warning(
                "created a NEW, empty store at %s (there was none): if the store should "
                "already exist, stop %s and check storage.data_dir / CALLREC_DATA_DIR",
                store.data_dir,
                command,
            )
        await make_spool(settings)
        await store.mark_serving(datetime.now(UTC), command)
        yield store


async def _sweeper(
    store: StoreApi, settings: Settings, events: EventSink, metrics: Metrics | None = None
) -> None:
    """Retention runs inside the controller too: a recording outlives its delete-after by at
    most one sweep interval even where nobody installed the timer unit."""
    interval = settings.policy.sweep_interval.total_seconds()
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        result: SweepReport | None = None
        try:
            # The deletions are announced batch by batch, and not kept: a sweep that
            # catches up on months does not grow the controller by what it deleted.
            result = await store.sweep(datetime.now(UTC), on_deleted=announce_deleted(events))
            publish_sweep(events, result)
        except CallrecError as error:
            log.error("retention sweep failed (retrying next interval): %s", error)
        took = loop.time() - started
        if metrics is not None:
            metrics.record_sweep(result, took)
        if result is not None:
            log_sweep(result, took)
        await asyncio.sleep(interval)


def log_sweep(result: SweepReport, seconds: float) -> None:
    """One line per sweep, whatever it deleted; the ids only at debug level."""
    level = logging.WARNING if result.problems else logging.INFO
    summary = sweep_summary(result.count, len(result.problems), seconds)
    log.log(level, "retention sweep: %s", summary)
    for problem in result.problems:
        log.debug("retention sweep: %s", problem)


async def _callback_watch(store: StoreApi, events: EventSink) -> None:
    """Tells the call center which missed calls are due for a callback, once each, and once
    more when one is overdue (the notice promises a callback within the hour)."""
    announced: set[str] = set()
    overdue: set[str] = set()
    while True:
        try:
            for due in await store.callbacks_due(datetime.now(UTC)):
                payload = {
                    "call_id": due.call_id,
                    "line": due.line,
                    "due_by": due.due_by.isoformat(),
                }
                if due.call_id not in announced:
                    announced.add(due.call_id)
                    events.publish("callback/due", payload)
                if due.overdue and due.call_id not in overdue:
                    overdue.add(due.call_id)
                    events.publish("callback/overdue", payload)
        except CallrecError as error:
            log.error("callback check failed (retrying): %s", error)
        await asyncio.sleep(CALLBACK_CHECK_SECONDS)


async def _checkpointer(store: StoreApi) -> None:
    """Anchors the audit chain outside the ledger for as long as the controller runs."""
    last: checkpoints.Checkpoint | None = None
    while True:
        now = datetime.now(UTC)
        try:
            head = await store.audit_head()
            if (
                last is None
                or (last.seq, last.head) != head
                or now - parse_ts(last.at) >= CHECKPOINT_AT_LEAST
            ):
                last = await store.checkpoint(now)
        except CallrecError as error:
            log.error("writing an audit checkpoint failed (retrying): %s", error)
        await asyncio.sleep(CHECKPOINT_INTERVAL.total_seconds())


async def _keep_claim(store: StoreApi, every: float, metrics: Metrics) -> None:
    """The heartbeat of the controller's hold on its id (`StoreApi.keep_claim`). A lost
    hold (a PostgreSQL session ended) is taken again; while it cannot be, the calls go on
    (the ledger's own writes fail closed) and it is tried again at every beat. Ends only by
    raising `ControllerConflict`: another controller took the id meanwhile."""
    lost = False
    metrics.lock_held.set(1)
    while True:
        await asyncio.sleep(every)
        try:
            check = await store.keep_claim()
        except ControllerConflict:
            metrics.lock_held.set(0)
            raise
        except CallrecError as error:
            check = ClaimCheck(ClaimState.LOST, str(error))
        if check.state is ClaimState.LOST:
            if not lost:
                metrics.lock_lost.inc()
                log.error(
                    "the lock on this controller's id is lost: %s; calls go on, taking it "
                    "again every %g s",
                    check.detail,
                    every,
                )
            else:
                log.debug("the lock on this controller's id is still lost: %s", check.detail)
            lost = True
            metrics.lock_held.set(0)
            continue
        if check.state is ClaimState.RETAKEN:
            if not lost:
                metrics.lock_lost.inc()
            log.warning(
                "the lock on this controller's id was lost and is held again: %s", check.detail
            )
        lost = False
        metrics.lock_held.set(1)


def _stop_on_signals() -> asyncio.Event:
    """An event SIGINT and SIGTERM set from now on. Installed before the controller says
    it is up, so that a stop right after start still stops it in order."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _until_stopped(stop: asyncio.Event, *watched: asyncio.Task[None]) -> int:
    """Until `stop` is set (a signal, `_stop_on_signals`: EXIT_OK), or until one of
    `watched` ends: it raised, said here (critical), and the controller stops with
    EXIT_ERROR, for systemd to restart it (and the start-up then to say why it may not
    run)."""
    signalled = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({signalled, *watched}, return_when=asyncio.FIRST_COMPLETED)
    signalled.cancel()
    for task in watched:
        if task in done:
            error = task.exception()
            log.critical("stopping: %s", error if error is not None else "a part ended")
            return EXIT_ERROR
    return EXIT_OK


Reload = Callable[[], Settings]  # the configuration read again, as at start


def _reloading(settings: Settings, load: Reload | None, use: Callable[[Policy], None]) -> None:
    """On SIGHUP, read the configuration again and serve new calls under its lines and
    policy; calls in progress keep theirs. A configuration that does not load is logged
    and the one in use stays. Only the policy sections are reloaded: the others (storage,
    ARI, MQTT, FastAGI) name resources the controller holds open, and need a restart."""
    if load is None:
        return
    current = settings

    def reload() -> None:
        nonlocal current
        try:
            new = load()
        except CallrecError as error:
            log.error("reload refused, the configuration in use stays: %s", error)
            return
        except Exception:
            log.exception("reload failed, the configuration in use stays")
            return
        if _restart_only(new) != _restart_only(current):
            log.warning(
                "reload: storage, ari, mqtt and fastagi settings changed; they take effect "
                "at the next start (only the policy and the lines are reloaded)"
            )
        use(new.policy)
        current = new
        announce(
            f"callrec: reloaded {new.source}: lines "
            f"{', '.join(line.name for line in new.policy.lines)}; calls in progress keep "
            "the configuration they started with"
        )

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)


def _serving(deps: SessionDeps, use: Callable[[Policy], None]) -> Callable[[Policy], None]:
    """`use`, after the prompt versions are read again: a reloaded line may name a prompt
    that was added to the catalog since the start (its decisions name its audio)."""

    def both(policy: Policy) -> None:
        versions = deps.prompt_versions
        if isinstance(versions, dict):
            versions.update({pid: info.sha256 for pid, info in load_catalog().items()})
        use(policy)

    return both


def _restart_only(settings: Settings) -> tuple[object, ...]:
    return (
        settings.data_dir,
        settings.spool_dir,
        settings.ari,
        settings.mqtt,
        settings.fastagi,
        settings.ledger,
        settings.recording_format,
        settings.controller_id,
        settings.lock_check_seconds,
    )


def _deps(
    settings: Settings, store: StoreApi, events: EventSink, collector: RecordingCollector
) -> SessionDeps:
    catalog = load_catalog()
    return SessionDeps(
        ledger=store,
        store=store,
        clock=SystemClock(),
        events=events,
        spool_dir=settings.spool_dir,
        prompt_versions={pid: info.sha256 for pid, info in catalog.items()},
        collector=collector,
        recording_format=settings.recording_format,
        caller_id_form=settings.asterisk.caller_id_form,
        country_code=settings.policy.country_code,
    )


async def _start_collecting(
    settings: Settings, store: StoreApi, events: EventSink
) -> RecordingCollector:
    """Watch the spool before anything may write there, then reconcile: a file that may still
    be written is left to the collector, which stores it once MixMonitor has closed it."""
    watch = SpoolWatch(settings.spool_dir)
    collector = RecordingCollector(
        store, store, SystemClock(), events, watch, longest_call=settings.longest_call
    )
    collector.start(check=False)
    reconciled = await store.reconcile(
        settings.spool_dir,
        datetime.now(UTC),
        longest_call=settings.longest_call,
        finished=watch.settled,
    )
    for line in reconciled.flagged:
        log.warning("reconcile: %s", line)
    for name in reconciled.deleted_unowned:
        log.warning("reconcile: deleted %s from the spool: no call decided to record it", name)
    collector.start()
    return collector


@dataclass(frozen=True, slots=True)
class _Parts:
    """What `serve` and `fastagi` both run on."""

    store: StoreApi
    events: EventSink
    metrics: Metrics
    deps: SessionDeps


@contextlib.asynccontextmanager
async def _controller(settings: Settings, command: str, mode: str) -> AsyncIterator[_Parts]:
    """The store, the spool's collector, the events and the metrics of a controller, started
    in that order and stopped in the reverse one."""
    events = events_of(settings)
    metrics = Metrics(mode)
    async with serving_store(settings, command) as plain_store:
        store = MeteredStore(plain_store, metrics)
        collector = await _start_collecting(settings, store, events)
        try:
            if isinstance(events, MqttEvents):
                await events.start()
            yield _Parts(store, events, metrics, _deps(settings, store, events, collector))
        finally:
            await collector.stop()
            if isinstance(events, MqttEvents):
                await events.stop()


async def serve(settings: Settings, reload: Reload | None = None) -> int:
    from agi.ari import AriClient
    from agi.stasis import StasisApp

    async with _controller(settings, "serve", "ari") as parts:
        store, events, metrics, deps = parts.store, parts.events, parts.metrics, parts.deps
        client = AriClient(
            settings.ari.url,
            settings.ari.user,
            settings.ari.password,
            settings.ari.app,
            max_connections=settings.ari.max_connections,
            on_request=metrics.observe_request,
            credentials_hint=CREDENTIALS_HINT,
        )
        app = StasisApp(
            client,
            deps,
            settings.policy,
            shed_backlog=settings.ari.shed_backlog,
            shed_decision_lag=None
            if settings.ari.shed_decision_lag_ms is None
            else settings.ari.shed_decision_lag_ms / 1000,
        )
        _reloading(settings, reload, _serving(deps, app.use_policy))
        metrics.read_ari_connected(lambda: client.connected)
        metrics.read_calls_shed(lambda: app.shed)
        stop = _stop_on_signals()
        announce(
            f"callrec serve: app {settings.ari.app!r} at {settings.ari.url}, store "
            f"{settings.data_dir}, spool {settings.spool_dir} ({settings.source})"
        )

        def status() -> str:
            if client.connected:
                return f"serving: {app.handled} call(s) taken, {app.live_calls} live"
            return f"waiting for ARI at {settings.ari.url}: {client.last_failure or 'connecting'}"

        watch = Watch(
            settings,
            metrics,
            store,
            status=status,
            connected=lambda: client.connected,
            not_connected=lambda: client.last_failure or "connecting",
        )
        async with watch:
            claim = asyncio.create_task(_keep_claim(store, settings.lock_check_seconds, metrics))
            tasks = [
                asyncio.create_task(app.run()),
                asyncio.create_task(_sweeper(store, settings, events, metrics)),
                asyncio.create_task(_callback_watch(store, events)),
                asyncio.create_task(_checkpointer(store)),
                claim,
            ]
            await watch.ready_once(client.wait_connected())
            try:
                code = await _until_stopped(stop, claim)
            finally:
                await app.shutdown()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await client.close()
    return code


async def fastagi(settings: Settings, reload: Reload | None = None) -> int:
    from agi.fastagi import FastAgiServer

    async with _controller(settings, "fastagi", "fastagi") as parts:
        store, events, metrics, deps = parts.store, parts.events, parts.metrics, parts.deps
        server = FastAgiServer(
            deps,
            settings.policy,
            host=settings.fastagi.host,
            port=settings.fastagi.port,
            allow=settings.fastagi.allow,
        )

        def status() -> str:
            return f"listening on {settings.fastagi.host}:{port}, {server.live_connections} live"

        async with Watch(settings, metrics, store, status=status) as watch:
            port = await server.start()
            _reloading(settings, reload, _serving(deps, server.use_policy))
            stop = _stop_on_signals()
            announce(f"callrec fastagi: listening on {settings.fastagi.host}:{port}")
            sweeper = asyncio.create_task(_sweeper(store, settings, events, metrics))
            checkpointer = asyncio.create_task(_checkpointer(store))
            claim = asyncio.create_task(_keep_claim(store, settings.lock_check_seconds, metrics))
            await watch.ready_once(asyncio.sleep(0))
            try:
                code = await _until_stopped(stop, claim)
            finally:
                for task in (sweeper, checkpointer, claim):
                    task.cancel()
                await server.stop()
    return code
