"""The harness: the real controller on a simulated PBX (or a live Asterisk), as `demo`,
`replay` and the tests run it.

The controller here is the one `callrec serve` runs: the same `StasisApp`, ARI client, store
and flows, on real loopback HTTP/WebSocket, a real SQLite ledger and real files. Only the
other end differs: `agi.simpbx.SimulatedPbx` plays the callers, agents and dialplan.
`callrec.runner` plays scenario steps on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from agi.ari import DEFAULT_MAX_CONNECTIONS, AriClient
from agi.collector import RecordingCollector
from agi.fastagi import FastAgiServer
from agi.ports import OffsetClock
from agi.session import SessionDeps
from agi.simpbx import SimulatedPbx, SimulatorError
from agi.simpbx.dids import load_dids, parse_dids
from agi.spool import SpoolWatch
from agi.stasis import StasisApp
from callrec import asterisk_files
from callrec.events import MemoryEvents
from callrec.resources import asterisk_conf_dir
from flows.errors import CallrecError, ConfigError
from flows.policy import Policy
from prompts.catalog import load_catalog
from storage import files
from storage.datadir import SPOOL_DIR
from storage.factory import open_store
from storage.ledgers import LEDGER_FILE, LedgerConfig
from storage.ports import StoreApi
from storage.values import os_error

log = logging.getLogger("callrec.harness")

CALL_TIMEOUT = 60.0  # seconds of wall time one scripted call may take at the demo's scale
LIVE_CALL_TIMEOUT = 180.0  # a real call: the notice, the queue, the talk
CALLEE_GRACE = 5.0  # seconds a callback's customer leg may lag its agent's leg in ending
LIVE_FASTAGI_PORT = 4573  # extensions-fastagi.conf connects to agi://127.0.0.1:4573
LIVE_SETUP_PAUSE = 1.0  # seconds for a queue membership change to run on the PBX
LIVE_PROBE_TIMEOUT = 5.0  # seconds a throwaway application may take to register
# Globals of asterisk-conf/extensions.conf that make a live callback ring the test customer
# instead of the trunk; the previous values are put back after the run.
LIVE_TRUNK = {"CALLREC_TRUNK_TECH": "Local", "CALLREC_TRUNK": "callrec-test-customer/n"}


@dataclass(slots=True)
class Harness:
    policy: Policy
    store: StoreApi
    sim: SimulatedPbx | None  # None: a live Asterisk
    client: AriClient  # ARI: the controller's; FastAGI: only to place calls and set globals
    app: StasisApp | None  # the controller in ARI mode
    clock: OffsetClock
    events: MemoryEvents
    calls: dict[str, str]  # scenario call name -> our call id
    data_dir: Path
    sim_password: str
    collector: RecordingCollector
    fastagi: FastAgiServer | None = None  # the controller in FastAGI mode

    @property
    def mode(self) -> str:
        return "ari" if self.fastagi is None else "agi"

    @property
    def stasis(self) -> StasisApp:
        if self.app is None:
            raise CallrecError("this harness runs FastAGI mode: there is no Stasis app")
        return self.app

    def call_id_of(self, channel_id: str) -> str | None:
        if self.fastagi is not None:
            return self.fastagi.call_id_of(channel_id)
        return self.stasis.call_id_of(channel_id)

    async def finished(self, channel_id: str) -> bool:
        """Whether the controller is done with the channel's call: its end stored and its
        file collected (or left for a retry)."""
        if self.app is not None:
            return not self.app.is_live(channel_id)
        call_id = self.call_id_of(channel_id)
        if call_id is None:
            return False
        row = await self.store.get_call(call_id)
        return row is not None and row.ended_at is not None and not self.collector.pending(call_id)

    def recent_call_ids(self) -> list[str]:
        server = self.fastagi if self.fastagi is not None else self.stasis
        return server.recent_call_ids()


@dataclass(frozen=True, slots=True)
class LiveAsterisk:
    """A real Asterisk running `asterisk-conf/` (test contexts included). Its MixMonitor
    spool must be the `spool_dir` the controller is given."""

    url: str
    user: str
    password: str
    app: str = "callrec"


@contextlib.asynccontextmanager
async def harness(
    policy: Policy,
    data_dir: Path,
    *,
    time_scale: float,
    live: LiveAsterisk | None = None,
    spool_dir: Path | None = None,
    spool_mode: int = files.PRIVATE_DIR,
    mode: str = "ari",
    ari_timeout: float = 5.0,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    shed_backlog: int | None = None,
    shed_decision_lag: float | None = None,
    ledger: LedgerConfig | None = None,
) -> AsyncIterator[Harness]:
    """A controller wired to a store in `data_dir` (created when new; never a store that
    serves real calls), facing the simulated PBX or, with `live`, a real Asterisk. The
    spool, when missing, is created with `spool_mode`. `mode` is CALLREC_MODE: `ari`
    (`serve`'s Stasis app) or `agi` (`fastagi`'s server, on 127.0.0.1:4573 for a live
    Asterisk, whose dialplan names that address, and CALLREC_MODE set to agi there for the
    run)."""
    if mode not in ("ari", "agi"):
        raise ConfigError(f"mode: ari or agi, not {mode!r}")
    catalog = load_catalog()
    store = await _replay_store(policy, data_dir, spool_dir, spool_mode, ledger)
    data_dir, spool = store.data_dir, store.spool_dir
    assert spool is not None  # _replay_store names it
    clock = OffsetClock()
    events = MemoryEvents()
    sim: SimulatedPbx | None = None
    try:
        if live is None:
            password = secrets.token_urlsafe(16)  # the simulator listens on 127.0.0.1 only
            sim = SimulatedPbx(
                app="callrec",
                user="callrec",
                password=password,
                prompt_durations={pid: info.duration_seconds for pid, info in catalog.items()},
                time_scale=time_scale,
                mode=mode,
                # The policy's lines route their numbers to their queues, as the dialplan
                # generated from them does on a real Asterisk.
                dids=line_dids(policy),
            )
            client = AriClient(
                await sim.start(),
                "callrec",
                password,
                "callrec",
                timeout=ari_timeout,
                max_connections=max_connections,
            )
        else:
            password = live.password
            if mode == "ari":
                await refuse_a_taken_app(live)
            client = AriClient(live.url, live.user, live.password, live.app)
            time_scale = 1.0  # a real PBX plays prompts in real time
    except BaseException:
        if sim is not None:
            await sim.stop()
        await store.close()
        raise
    collector = RecordingCollector(store, store, clock, events, SpoolWatch(spool))
    collector.start()
    deps = SessionDeps(
        ledger=store,
        store=store,
        clock=clock,
        events=events,
        spool_dir=spool,
        prompt_versions={pid: info.sha256 for pid, info in catalog.items()},
        collector=collector,
        country_code=policy.country_code,
    )
    app: StasisApp | None = None
    task: asyncio.Task[None] | None = None
    server: FastAgiServer | None = None
    trunk: dict[str, str] = {}
    h: Harness | None = None
    try:
        if mode == "ari":
            app = StasisApp(
                client,
                deps,
                policy,
                timer_scale=time_scale,
                shed_backlog=shed_backlog,
                shed_decision_lag=shed_decision_lag,
            )
            task = asyncio.get_running_loop().create_task(app.run())
            try:
                await asyncio.wait_for(client.wait_connected(), 10.0)
            except TimeoutError:
                raise CallrecError("the controller could not connect to ARI") from None
        else:
            port = LIVE_FASTAGI_PORT if live is not None else 0
            server = FastAgiServer(deps, policy, port=port, prompt_timeout=LIVE_CALL_TIMEOUT)
            port = await server.start()
            if sim is not None:
                sim.fastagi = ("127.0.0.1", port)
        h = Harness(
            policy, store, sim, client, app, clock, events, {}, data_dir, password, collector
        )
        h.fastagi = server
        if live is not None:
            # Callbacks ring the test customer (a Local channel), not the trunk; the
            # dialplan runs the mode under test.
            wanted = {**LIVE_TRUNK, "CALLREC_MODE": mode}
            trunk = {name: await client.get_global(name) for name in wanted}
            for name, value in wanted.items():
                await client.set_global(name, value)
            await set_agents(h, present=True)
        yield h
    finally:
        if live is not None and h is not None:
            with contextlib.suppress(CallrecError):
                await set_agents(h, present=False)
            for name, value in trunk.items():
                with contextlib.suppress(CallrecError):
                    await client.set_global(name, value)
        if app is not None:
            await app.shutdown(grace=2.0)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if server is not None:
            await server.stop(grace=2.0)
        await client.close()
        if sim is not None:
            await sim.stop()
        await collector.stop()
        await store.close()


async def _replay_store(
    policy: Policy,
    data_dir: Path,
    spool_dir: Path | None,
    spool_mode: int,
    ledger: LedgerConfig | None = None,
) -> StoreApi:
    """The store of a demo or replay, created when new; its spool made. Absolute paths:
    MixMonitor is told the spool path and has its own working directory."""
    root, spool = await asyncio.to_thread(_absolute, data_dir, spool_dir)
    ledger = ledger or LedgerConfig()
    store = await open_store(
        root,
        policy,
        ledger_url=ledger.url,
        ledger_password=ledger.password,
        spool_dir=spool,
        create=True,
    )
    try:
        # Scenario calls are dated by their scripts: among real callers' recordings they
        # would be swept and audited as if they were real.
        await _refuse_serving(store)
        try:
            await asyncio.to_thread(files.make_dir, spool, spool_mode)
        except OSError as error:
            raise os_error(error, f"creating the spool {spool}") from error
    except BaseException:
        await store.close()
        raise
    return store


async def refuse_a_serving_dir(policy: Policy, data_dir: Path) -> None:
    """A demo that keeps its scenarios' stores inside `data_dir` refuses a `data_dir` that
    is itself a store of real calls (its stores would sit among the callers' data)."""
    root, _ = await asyncio.to_thread(_absolute, data_dir, None)
    if not await asyncio.to_thread((root / LEDGER_FILE).exists):
        return
    store = await open_store(root, policy, create=False)
    try:
        await _refuse_serving(store)
    finally:
        await store.close()


def _absolute(data_dir: Path, spool_dir: Path | None) -> tuple[Path, Path]:
    root = data_dir.absolute()
    return root, (spool_dir or root / SPOOL_DIR).absolute()


async def _refuse_serving(store: StoreApi) -> None:
    if await store.serving_since() is not None:
        raise CallrecError(
            f"the store at {store.data_dir} serves real calls: demo and replay use a store "
            "of their own (--data-dir NEW_DIR)"
        )


async def refuse_a_taken_app(live: LiveAsterisk) -> None:
    """A second client on the application name would take the calls of the one serving it
    (Asterisk replaces the first), so a live run starts only where none is registered.

    A listed name is not always a client: Asterisk keeps an application whose WebSocket
    closed while it held channel subscriptions, and destroys it only when some application
    next registers or unregisters (res_stasis.c `cleanup()`), even once those channels are
    gone. So before refusing, subscriptions to channels that no longer exist are ended
    (nobody hears a gone channel; harmless to any owner) and a throwaway application is
    registered and dropped, which makes Asterisk tidy its registry."""
    async with AriClient(live.url, live.user, live.password, live.app) as client:
        taken = await client.application_registered()
        if taken:
            await _tidy_stale_app(client, live)
            taken = await client.application_registered()
            held = len(await client.subscribed_channels()) if taken else 0
    if taken:
        raise CallrecError(
            f"Stasis application {live.app!r} is already registered on {live.url}: stop "
            "`callrec serve` (or the other ARI client) first; a second client would take "
            f"its calls (it holds {held} channel subscriptions)"
        )


async def _tidy_stale_app(client: AriClient, live: LiveAsterisk) -> None:
    present = {str(c.get("id")) for c in await client.list_channels()}
    for channel_id in await client.subscribed_channels():
        if channel_id not in present:
            await client.unsubscribe(channel_id)
    probe = AriClient(live.url, live.user, live.password, f"{live.app}-probe-{uuid.uuid4().hex}")

    async def register() -> None:
        async for _ in probe.events():
            pass

    task = asyncio.get_running_loop().create_task(register())
    try:
        await asyncio.wait_for(probe.wait_connected(), LIVE_PROBE_TIMEOUT)
    except TimeoutError:
        log.warning("could not register a probe application on %s", live.url)
    finally:
        await probe.close()  # its unregistration is what tidies the registry
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def set_agents(h: Harness, *, present: bool) -> None:
    """Put the test agent into the queues, or take it out (for a missed call). Both halves
    of the Local channel run the extension; the second finds the work done."""
    extension = "add-agents" if present else "remove-agents"
    await originate(
        h,
        f"Local/{extension}@callrec-test-setup",
        context="callrec-test-setup",
        extension=extension,
    )
    await asyncio.sleep(LIVE_SETUP_PAUSE)


async def originate(
    h: Harness,
    endpoint: str,
    *,
    context: str,
    extension: str,
    caller_id: str | None = None,
    variables: Mapping[str, str] | None = None,
) -> str:
    reply = await h.client.originate(
        endpoint,
        context=context,
        extension=extension,
        priority=1,
        caller_id=caller_id,
        variables=variables,
    )
    return str(reply["id"])


async def until(condition: Callable[[], bool], within: float, message: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise CallrecError(message)
        await asyncio.sleep(0.01)


def line_dids(policy: Policy) -> dict[str, str]:
    """The DID -> queue table of the dialplan `callrec asterisk install` writes for
    `policy`'s lines: the simulated PBX routes a number as that Asterisk would."""
    try:
        return parse_dids(asterisk_files.extensions(policy, asterisk_files.Options()))
    except SimulatorError as error:
        raise ConfigError(str(error)) from None


def simulated_dids(conf_dir: Path | None = None) -> dict[str, str]:
    """The simulated PBX's DID -> queue table, from the dialplan callrec ships (the
    checkout's `asterisk-conf/`, or the installed package's copy), not from the policy: a
    scenario reaches the queue a real Asterisk with that dialplan would send it to."""
    try:
        return load_dids(conf_dir or asterisk_conf_dir())
    except SimulatorError as error:
        raise ConfigError(str(error)) from None
