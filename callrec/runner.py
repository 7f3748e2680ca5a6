"""Runs scenarios against the simulated PBX (or a live Asterisk) through the real controller.

The controller here is the one `callrec serve` runs: the same `StasisApp`, ARI client, store
and flows, on real loopback HTTP/WebSocket, a real SQLite ledger and real files. Only the
other end differs: `agi.simpbx.SimulatedPbx` plays the callers, agents and dialplan.
`demo` and `replay` both use `Harness`; what they print differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from agi.ari import DEFAULT_MAX_CONNECTIONS, AriClient
from agi.collector import RecordingCollector
from agi.fastagi import FastAgiServer
from agi.ports import OffsetClock
from agi.session import SessionDeps
from agi.simpbx import CallerScript, CallResult, SimulatedPbx, SimulatorError
from agi.simpbx.dids import load_dids, parse_dids
from agi.spool import SpoolWatch
from agi.stasis import StasisApp
from callrec import asterisk_files
from callrec.events import MemoryEvents
from callrec.resources import asterisk_conf_dir
from callrec.scenarios import (
    Check,
    Scenario,
    Step,
    StepReport,
    parse_duration,
    parse_time,
)
from flows.errors import CallrecError, ConfigError
from flows.keys import KEYS
from flows.numbers import normalise
from flows.policy import Policy
from prompts.catalog import load_catalog
from storage import files
from storage.datadir import SPOOL_DIR
from storage.factory import open_store
from storage.ledgers import LEDGER_FILE, LedgerConfig
from storage.ports import CallRow, RecordingRow, RecordingStatus, StoreApi, WithdrawalVia
from storage.rows import short_recording_id
from storage.values import os_error

log = logging.getLogger("callrec.runner")

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
            await _set_agents(h, present=True)
        yield h
    finally:
        if live is not None and h is not None:
            with contextlib.suppress(CallrecError):
                await _set_agents(h, present=False)
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


async def _set_agents(h: Harness, *, present: bool) -> None:
    """Put the test agent into the queues, or take it out (for a missed call). Both halves
    of the Local channel run the extension; the second finds the work done."""
    extension = "add-agents" if present else "remove-agents"
    await _originate(
        h,
        f"Local/{extension}@callrec-test-setup",
        context="callrec-test-setup",
        extension=extension,
    )
    await asyncio.sleep(LIVE_SETUP_PAUSE)


async def _originate(
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


async def _until(condition: Callable[[], bool], within: float, message: str) -> None:
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


def _script(args: Mapping[str, Any], prefix: str, where: str) -> CallerScript:
    def get(key: str, default: Any) -> Any:
        return args.get(f"{prefix}{key}", default)

    keys = tuple((float(at), str(digit)) for at, digit in get("keys", []))
    for _, digit in keys:
        if digit not in KEYS:
            raise ConfigError(f"{where}: {digit!r} is not a DTMF key (0-9, *, #, A-D)")
    agent = get("agent_answers_after", 2.0)
    hang_up = get("hang_up_at", None)
    try:
        return CallerScript(
            keys=keys,
            hang_up_at=None if hang_up is None else float(hang_up),
            agent_answers_after=None if agent is None else float(agent),
            give_up_after=float(get("give_up_after", 5.0)),
            talk_seconds=float(get("talk_seconds", 3.0)),
        )
    except SimulatorError as error:
        raise ConfigError(f"{where}: {error}") from None


async def _until_finished(h: Harness, channel_id: str, within: float, message: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await h.finished(channel_id):
        if loop.time() > deadline:
            raise CallrecError(message)
        await asyncio.sleep(0.01)


async def _finished_call(h: Harness, result: CallResult) -> CallRow | None:
    """The ledger row of a call the simulator has finished, once the controller has
    finished it too (outcome stored, file ingested)."""
    if h.fastagi is not None:
        # The hangup handler stored the end before the channel went; its file is taken
        # once MixMonitor closed it. A channel that never reached the server has no call.
        await h.collector.drain()
        if h.call_id_of(result.channel_id) is None:
            return None
    await _until_finished(
        h, result.channel_id, 10.0, f"the controller did not finish channel {result.channel_id}"
    )
    call_id = h.call_id_of(result.channel_id)
    return None if call_id is None else await h.store.get_call(call_id)


async def _recording_of(h: Harness, call_id: str | None) -> RecordingRow | None:
    if call_id is None:
        return None
    for row in await h.store.recordings(include_deleted=True):
        if row.call_id == call_id:
            return row
    return None


async def run_step(h: Harness, step: Step) -> StepReport:
    match step.kind:
        case "advance":
            delta = parse_duration(step.args["value"], step.where)
            h.clock.advance(delta)
            return StepReport(step.where, f"{_clock(h)}  time moves on by {step.args['value']}")
        case "at":
            target = parse_time(step.args["value"], step.where)
            h.clock.advance(target - h.clock.now())
            return StepReport(step.where, f"{_clock(h)}  the clock is set")
        case "overload":
            # `enabled`, not `on`: YAML 1.1 reads a bare `on` as the boolean true.
            on = step.args.get("enabled")
            if not isinstance(on, bool):
                raise ConfigError(f"{step.where}: overload takes enabled: true or false")
            await h.store.set_overload(on, str(step.args.get("by", "operator")), h.clock.now())
            state = "ON" if on else "off"
            return StepReport(step.where, f"{_clock(h)}  overload switch {state} (audited)")
        case "call" | "callback":
            return await _call_step(h, step)
        case "withdraw":
            return await _withdraw_step(h, step)
        case "sweep":
            return await _sweep_step(h, step)
    raise ConfigError(f"{step.where}: unknown step {step.kind}")


def _clock(h: Harness) -> str:
    return h.clock.now().astimezone(_zone(h)).strftime("%Y-%m-%d %H:%M")


def _zone(h: Harness) -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo(h.policy.timezone)


class NotLive(CallrecError):
    """A scenario step that cannot run against a live Asterisk (no `live:` test caller)."""


async def _live_call(h: Harness, step: Step, name: str) -> CallResult:
    """Place the step's call on a real Asterisk through the test contexts of
    asterisk-conf/, and wait until the controller has finished it."""
    args = step.args
    script = args.get("live")
    if not isinstance(script, str):
        raise NotLive(f"{step.where}: no `live:` test-caller extension for {name}")
    nobody_answers = "agent_answers_after" in args and args["agent_answers_after"] is None
    if nobody_answers:  # a missed call: take the test agent out of the queues first
        await _set_agents(h, present=False)
    try:
        if step.kind == "call":
            dialed = normalise(str(args["dialed"]))
            national = "0" + dialed[4:] if dialed.startswith("+386") else dialed
            caller = str(args.get("caller", ""))
            channel_id = await _originate(
                h,
                f"Local/{script}@callrec-test-caller",
                context="callrec-inbound",
                extension=national,
                caller_id=f'"Test" <{caller}>' if caller else None,
            )
        else:
            customer = "0" + normalise(str(args["customer"]))[4:]
            channel_id = await _originate(
                h,
                f"Local/{script}@callrec-test-agent",
                context="callrec-callback",
                extension=customer,
                variables={"CALLREC_LINE": str(args.get("line", ""))},
            )
        await _until(
            lambda: h.call_id_of(channel_id) is not None,
            LIVE_CALL_TIMEOUT,
            f"{step.where}: the call never reached the controller",
        )
        await _until_finished(
            h, channel_id, LIVE_CALL_TIMEOUT, f"{step.where}: the call did not end"
        )
        call_id = h.call_id_of(channel_id)
        callee_id = None
        if step.kind == "callback" and call_id is not None:
            callee_id = await _callee_leg(h, call_id)
    finally:
        if nobody_answers:
            await _set_agents(h, present=True)
    callee = None
    if callee_id is not None:
        callee = await _live_result(h, f"callee of {channel_id}", callee_id)
    result = await _live_result(h, channel_id, call_id)
    return replace(result, callee=callee)


async def _callee_leg(h: Harness, call_id: str) -> str | None:
    """The customer's leg of callback `call_id` when it heard the notice (a new
    communication), once the controller is done with it too."""
    row = await h.store.get_call(call_id)
    if row is None or row.decision.value != "none" or row.recording_file is not None:
        return None  # the same communication: decided on the agent's leg
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < LIVE_CALL_TIMEOUT:
        leg = None
        for candidate in reversed(h.recent_call_ids()):
            found = await h.store.get_call(candidate)
            if found is not None and found.parent_call_id == call_id:
                leg = found
                break
        if leg is None and loop.time() - started > CALLEE_GRACE:
            return None  # no customer leg reached the controller (nobody answered)
        if leg is not None and leg.ended_at is not None and not h.collector.pending(leg.call_id):
            return leg.call_id
        await asyncio.sleep(0.1)
    raise CallrecError(f"the customer's leg of callback {call_id} did not end")


async def _live_result(h: Harness, channel_id: str, call_id: str | None) -> CallResult:
    row = await h.store.get_call(call_id) if call_id else None
    return CallResult(
        channel_id=channel_id,
        stasis_status="SUCCESS",
        variables={"CALLREC_CALL_ID": call_id} if call_id else {},
        recorded_file=row.recording_file if row else None,
        recorded_bytes=0,
        answered_by_agent=bool(row and row.outcome and row.outcome.value == "answered"),
        prompts_played=(),
        digits_sent=(),
    )


async def _simulated_call(sim: SimulatedPbx, step: Step, name: str) -> CallResult:
    args = step.args
    try:
        if step.kind == "call":
            caller = args.get("caller")
            placed = await sim.place_call(
                str(args["dialed"]),
                None if caller is None else str(caller),
                _script(args, "", step.where),
            )
        else:
            placed = await sim.place_callback(
                str(args["customer"]),
                args.get("line"),
                agent_script=_script(args, "agent_", step.where),
                customer_script=_script(args, "customer_", step.where),
            )
    except SimulatorError as error:
        raise ConfigError(f"{step.where}: {name}: {error}") from None
    return await asyncio.wait_for(placed.done, CALL_TIMEOUT)


async def _call_step(h: Harness, step: Step) -> StepReport:
    args = step.args
    name = str(args.get("name", f"call{len(h.calls) + 1}"))
    if step.kind == "call":
        dialed = str(args["dialed"])
        caller = args.get("caller")
        title = f"{_clock(h)}  {name}: {caller or 'anonymous'} calls {dialed}"
    else:
        customer = str(args["customer"])
        title = f"{_clock(h)}  {name}: an agent calls {customer} back"
    if h.sim is None:
        result = await _live_call(h, step, name)
    else:
        result = await _simulated_call(h.sim, step, name)
    report = StepReport(step.where, title)
    row = await _finished_call(h, result)
    leg = result
    if step.kind == "callback" and result.callee is not None:
        if h.sim is None:  # found by the ledger, already finished (_callee_leg)
            callee_id = result.callee.variables.get("CALLREC_CALL_ID")
            callee_row = await h.store.get_call(callee_id) if callee_id else None
        else:
            callee_row = await _finished_call(h, result.callee)
        report.lines.append("agent's leg: no missed call within the window -> new communication")
        if row is not None:
            h.calls[f"{name}.agent"] = row.call_id
        row, leg = callee_row, result.callee
    if row is not None:
        h.calls[name] = row.call_id
    recording = await _recording_of(h, row.call_id if row else None)
    _describe(report, row, leg, recording, h)
    _check_call(report, step, row, leg, recording, h)
    return report


def _describe(
    report: StepReport,
    row: CallRow | None,
    leg: CallResult,
    recording: RecordingRow | None,
    h: Harness,
) -> None:
    if h.sim is None:  # a live PBX does not report what a channel heard: the ledger does
        prompt = row.prompt if row is not None and row.prompt else "-"
        report.lines.append(f"prompt of the decision (ledger): {prompt}")
    else:
        heard = ", ".join(leg.prompts_played) or "no prompt"
        report.lines.append(f"heard: {heard}; keys: {''.join(leg.digits_sent) or '-'}")
    if row is None:
        report.lines.append("not handled by the controller (no ledger row)")
        return
    report.lines.append(
        f"decision: {row.decision.value}"
        + (f" (digit {row.digit})" if row.digit else "")
        + f"; {row.reason or ''}; outcome: {row.outcome.value if row.outcome else '-'}"
    )
    if row.linked_to:
        report.lines.append(f"linked to missed call {row.linked_to[:8]}")
    if recording is None:
        report.lines.append("recording: none")
    else:
        due = recording.delete_after.astimezone(_zone(h)).strftime("%Y-%m-%d %H:%M")
        report.lines.append(
            f"recording: {recording.status.value}, {recording.size} bytes, "
            f"basis {recording.legal_basis.value}, delete after {due}"
        )


def _check_call(
    report: StepReport,
    step: Step,
    row: CallRow | None,
    leg: CallResult,
    recording: RecordingRow | None,
    h: Harness,
) -> None:
    expect = step.expect
    where = step.where
    if "decision" in expect:
        actual = row.decision.value if row else None
        report.checks.append(Check(where, "decision", expect["decision"], actual))
    if "digit" in expect:
        actual = row.digit if row else None
        wanted = expect["digit"]
        report.checks.append(Check(where, "digit", None if wanted is None else str(wanted), actual))
    if "recorded" in expect:
        stored = recording is not None and recording.status is RecordingStatus.STORED
        report.checks.append(Check(where, "recorded", bool(expect["recorded"]), stored))
        # Fail closed, seen from the PBX side too: MixMonitor ran only on a committed yes.
        report.checks.append(
            Check(
                where,
                "MixMonitor started only with a recorded decision",
                True,
                leg.recorded_file is None or (row is not None and row.decision.value == "record"),
            )
        )
    if "outcome" in expect:
        actual = row.outcome.value if row and row.outcome else None
        report.checks.append(Check(where, "outcome", expect["outcome"], actual))
    if "prompts" in expect and h.sim is not None:  # a live PBX does not tell what played
        report.checks.append(
            Check(where, "prompts heard", list(expect["prompts"]), list(leg.prompts_played))
        )
    if "linked_to" in expect:
        wanted = expect["linked_to"]
        actual_link = row.linked_to if row else None
        expected_id = h.calls.get(str(wanted)) if wanted is not None else None
        report.checks.append(Check(where, f"linked to {wanted}", expected_id, actual_link))
    if "legal_basis" in expect:
        actual = recording.legal_basis.value if recording else None
        report.checks.append(Check(where, "legal basis", expect["legal_basis"], actual))


def _ids(h: Harness, names: Any, where: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name in names or []:
        if str(name) not in h.calls:
            raise ConfigError(f"{where}: no call named {name!r} before this step")
        out.append((str(name), h.calls[str(name)]))
    return out


async def _state_of(h: Harness, call_id: str) -> str:
    recording = await _recording_of(h, call_id)
    return "none" if recording is None else recording.status.value


async def _withdraw_step(h: Harness, step: Step) -> StepReport:
    """A withdrawal by the caller's number (`caller:`), or of the one communication of a
    call (`call:` names it) or of its recording (`recording:` names the call)."""
    args = step.args
    caller = normalise(str(args["caller"])) if "caller" in args else None
    call_id = recording_id = None
    if "call" in args:
        (_, call_id), *_ = _ids(h, [args["call"]], step.where)
        named = f"call {args['call']}"
    elif "recording" in args:
        (_, of_call), *_ = _ids(h, [args["recording"]], step.where)
        recording = await _recording_of(h, of_call)
        if recording is None:
            raise ConfigError(f"{step.where}: call {args['recording']!r} has no recording")
        recording_id, named = recording.id, f"recording of {args['recording']}"
    else:
        named = str(args.get("caller"))
    received = (
        parse_time(args["received_at"], step.where) if "received_at" in args else h.clock.now()
    )
    result = await h.store.withdraw(
        caller,
        WithdrawalVia(str(args.get("via", "phone"))),
        received,
        str(args.get("by", "agent")),
        h.clock.now(),
        call_id=call_id,
        recording_id=recording_id,
    )
    report = StepReport(
        step.where, f"{_clock(h)}  withdrawal of consent by {named} via {result.via.value}"
    )
    report.lines.append(
        f"received on {result.received_on}, due by {result.due_on}; "
        f"deleted {len(result.deleted)}, kept {len(result.kept)}"
    )
    for recording_id, why in result.kept:
        report.lines.append(f"kept {short_recording_id(recording_id)}: {why}")
    await _check_outcomes(h, step, report)
    if "due_on" in step.expect:
        report.checks.append(Check(step.where, "due on", str(step.expect["due_on"]), result.due_on))
    if result.completed_at is not None:
        report.checks.append(
            Check(
                step.where,
                "completed by the deadline",
                True,
                result.completed_at <= result.deadline,
            )
        )
    return report


async def _sweep_step(h: Harness, step: Step) -> StepReport:
    result = await h.store.sweep(h.clock.now(), dry_run=bool(step.args.get("dry_run", False)))
    report = StepReport(
        step.where,
        f"{_clock(h)}  retention sweep: {len(result.deleted)} recording(s) past delete-after",
    )
    await _check_outcomes(h, step, report)
    return report


async def _check_outcomes(h: Harness, step: Step, report: StepReport) -> None:
    for name, call_id in _ids(h, step.expect.get("deleted"), step.where):
        report.checks.append(
            Check(step.where, f"{name} deleted", "deleted", await _state_of(h, call_id))
        )
    for name, call_id in _ids(h, step.expect.get("kept"), step.where):
        report.checks.append(
            Check(step.where, f"{name} kept", "stored", await _state_of(h, call_id))
        )


def live_capable(scenario: Scenario) -> bool:
    """Whether every call of the scenario names a test caller of asterisk-conf/."""
    return all(
        isinstance(step.args.get("live"), str)
        for step in scenario.steps
        if step.kind in ("call", "callback")
    )


async def run_scenario(h: Harness, scenario: Scenario) -> list[StepReport]:
    if scenario.start is not None:
        h.clock.advance(scenario.start - h.clock.now())
    reports = []
    for step in scenario.steps:
        reports.append(await run_step(h, step))
    return reports


def now_text(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")
