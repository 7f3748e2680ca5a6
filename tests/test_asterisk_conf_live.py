"""asterisk-conf/ on a real Asterisk: the dialplan's side of the controller contract.

Runs against the Asterisk named by CALLREC_TEST_ARI_URL (e.g. http://127.0.0.1:8088/ari,
user CALLREC_TEST_ARI_USER, default `callrec`, password CALLREC_TEST_ARI_PASSWORD) loaded
with asterisk-conf/. The test stands in for the controller as ARI application `callrec`, so
no controller may be attached. A second application, subscribed to everything, watches the
channel variables: MIXMONITOR_FILENAME appears exactly when MixMonitor started.
CALLREC_TEST_SPOOL is the directory the stand-in names for recordings (Asterisk must be able
to write there; default /var/spool/asterisk/monitor/callrec).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from agi.spool import SpoolWatch

URL = os.environ.get("CALLREC_TEST_ARI_URL", "")
USER = os.environ.get("CALLREC_TEST_ARI_USER", "callrec")
PASSWORD = os.environ.get("CALLREC_TEST_ARI_PASSWORD", "")
SPOOL = os.environ.get("CALLREC_TEST_SPOOL", "/var/spool/asterisk/monitor/callrec")
OBSERVER = "callrec-live-observer"
SERVICE_DID = "040404040"
WAIT = 20.0  # seconds any one expected event may take

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not URL, reason="CALLREC_TEST_ARI_URL names no Asterisk"),
]

Event = dict[str, Any]


class Ari:
    """The few ARI requests the tests make."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def request(self, method: str, path: str, **params: str) -> Any:
        async with self.session.request(method, URL.rstrip("/") + path, params=params) as r:
            body = await r.text()
            assert r.status < 300, f"{method} {path}: {r.status} {body}"
            return json.loads(body) if body else None

    async def originate(self, endpoint: str, variables: dict[str, str] | None = None,
                        **target: str) -> str:  # fmt: skip
        params = {"endpoint": endpoint, "timeout": "30", **target}
        url = URL.rstrip("/") + "/channels"
        async with self.session.post(url, params=params, json={"variables": variables or {}}) as r:
            body = await r.json()
            assert r.status == 200, body
            return str(body["id"])

    async def set_global(self, name: str, value: str) -> None:
        await self.request("POST", "/asterisk/variable", variable=name, value=value)

    async def get_global(self, name: str) -> str:
        return str((await self.request("GET", "/asterisk/variable", variable=name))["value"])


@dataclass
class Events:
    """Everything one WebSocket application received, with a way to wait for an event."""

    seen: list[Event] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait(self, predicate: Callable[[Event], bool], timeout: float = WAIT) -> Event:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for event in self.seen:
                if predicate(event):
                    return event
            remaining = deadline - asyncio.get_running_loop().time()
            assert remaining > 0, "an expected event did not arrive"
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)

    def varsets(self, name: str, channel_id: str | None = None) -> list[str]:
        return [
            e["value"]
            for e in self.seen
            if e["type"] == "ChannelVarset"
            and e.get("variable") == name
            and (channel_id is None or e.get("channel", {}).get("id") == channel_id)
        ]


Behaviour = Callable[[Ari, "StandIn", str, list[str]], Coroutine[Any, Any, None]]


@dataclass
class StandIn:
    """The ARI application `callrec`: runs `behaviour` for each StasisStart."""

    ari: Ari
    behaviour: Behaviour
    events: Events = field(default_factory=Events)
    digits: dict[str, asyncio.Queue[str]] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def receive(self, event: Event) -> None:
        self.events.seen.append(event)
        self.events.changed.set()
        if event["type"] == "StasisStart":
            channel = event["channel"]["id"]
            self.digits[channel] = asyncio.Queue()
            task = asyncio.create_task(self.behaviour(self.ari, self, channel, event["args"]))
            self.tasks.append(task)
        elif event["type"] == "ChannelDtmfReceived":
            queue = self.digits.get(event["channel"]["id"])
            if queue is not None:
                queue.put_nowait(event["digit"])

    async def ask(self, channel: str, timeout: float = 10.0) -> str | None:
        """Answer, play the consent question, and return the first key (or None)."""
        await self.ari.request("POST", f"/channels/{channel}/answer")
        playback = uuid.uuid4().hex
        await self.ari.request(
            "POST", f"/channels/{channel}/play/{playback}",
            media="sound:callrec-consent-again", lang="sl",
        )  # fmt: skip
        try:
            return await asyncio.wait_for(self.digits[channel].get(), timeout)
        except TimeoutError:
            return None
        finally:
            with contextlib.suppress(AssertionError):
                await self.ari.request("DELETE", f"/playbacks/{playback}")

    async def decide(self, channel: str, **variables: str) -> None:
        """Subscribe, set the controller's variables, and continue with no target."""
        await self.ari.request(
            "POST", "/applications/callrec/subscription", eventSource=f"channel:{channel}"
        )
        for name, value in variables.items():
            await self.ari.request(
                "POST", f"/channels/{channel}/variable", variable=name, value=value
            )
        await self.ari.request("POST", f"/channels/{channel}/continue")


def websocket_url(app: str, subscribe_all: bool) -> str:
    parts = urlsplit(URL)
    scheme = "wss" if parts.scheme == "https" else "ws"
    everything = "&subscribeAll=true" if subscribe_all else ""
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}/events?app={app}{everything}"


async def pump(ws: aiohttp.ClientWebSocketResponse, receive: Callable[[Event], None]) -> None:
    async for message in ws:
        if message.type == aiohttp.WSMsgType.TEXT:
            receive(json.loads(message.data))


@contextlib.asynccontextmanager
async def live(behaviour: Behaviour | None) -> AsyncIterator[tuple[Ari, Events, StandIn | None]]:
    """An ARI session, the observer's events, and (unless `behaviour` is None) the
    stand-in controller; the test agent is in both queues meanwhile."""
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    headers = {"Authorization": f"Basic {token}"}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        ari = Ari(session)
        observed = Events()

        def observe(event: Event) -> None:
            observed.seen.append(event)
            observed.changed.set()

        sockets = [await session.ws_connect(websocket_url(OBSERVER, subscribe_all=True))]
        tasks = [asyncio.create_task(pump(sockets[0], observe))]
        stand_in = None
        if behaviour is not None:
            stand_in = StandIn(ari, behaviour)
            sockets.append(await session.ws_connect(websocket_url("callrec", False)))
            tasks.append(asyncio.create_task(pump(sockets[1], stand_in.receive)))
        await setup_agents(ari, "add-agents")
        try:
            yield ari, observed, stand_in
        finally:
            await setup_agents(ari, "remove-agents")
            for channel in {e["channel"]["id"] for e in observed.seen if "channel" in e}:
                with contextlib.suppress(AssertionError):
                    await ari.request("DELETE", f"/channels/{channel}")
            for task in tasks + (stand_in.tasks if stand_in else []):
                task.cancel()
            for ws in sockets:
                await ws.close()


async def setup_agents(ari: Ari, action: str) -> None:
    """Run callrec-test-setup's `action` (the Local channel's other half gets nowhere)."""
    with contextlib.suppress(AssertionError):
        await ari.originate(f"Local/{action}@callrec-test-setup", app=OBSERVER)
    await asyncio.sleep(0.3)


async def place_call(ari: Ari, scenario: str, did: str = SERVICE_DID) -> str:
    return await ari.originate(
        f"Local/{scenario}@callrec-test-caller",
        extension=did, context="callrec-inbound", priority="1", callerId="Test <040999999>",
    )  # fmt: skip


def varset(name: str, channel: str | None = None) -> Callable[[Event], bool]:
    def match(event: Event) -> bool:
        return (
            event["type"] == "ChannelVarset"
            and event.get("variable") == name
            and bool(event.get("value"))
            and (channel is None or event.get("channel", {}).get("id") == channel)
        )

    return match


def answer_with(record: str, file: str | None = None) -> Behaviour:
    async def behaviour(ari: Ari, stand_in: StandIn, channel: str, args: list[str]) -> None:
        await stand_in.ask(channel)
        call_id = uuid.uuid4().hex
        chosen = {"CALLREC_CALL_ID": call_id, "CALLREC_RECORD": record}
        if record == "yes" or file is not None:
            chosen["CALLREC_FILE"] = file or f"{SPOOL}/{call_id}.wav"
        await stand_in.decide(channel, **chosen)

    return behaviour


async def test_live_consent_records_the_conversation_with_the_agent() -> None:
    """After a 1, MixMonitor writes the controller's file, the agent who answers is named
    on the caller's channel, and when the caller leaves, the hangup handler's CallrecEnded
    user event says who answered and for how long."""
    async with live(answer_with("yes")) as (ari, observed, stand_in):
        caller = await place_call(ari, "press1")
        started = await observed.wait(varset("MIXMONITOR_FILENAME", caller))
        assert stand_in is not None
        file = stand_in.events.varsets("CALLREC_FILE", caller)
        assert started["value"] == file[-1]
        assert observed.varsets("STASISSTATUS", caller)[-1] == "SUCCESS"
        agent = await observed.wait(varset("CALLREC_AGENT", caller))
        assert agent["value"] == "Local/agent@callrec-test-agent/n"
        await observed.wait(varset("BRIDGEPEER", caller))
        ended = await observed.wait(
            lambda e: (
                e["type"] == "ChannelUserevent"
                and e.get("eventname") == "CallrecEnded"
                and e.get("channel", {}).get("id") == caller
            )
        )
        report = ended["userevent"]
        assert report["CALLREC_AGENT"] == "Local/agent@callrec-test-agent/n"
        assert int(report["ANSWEREDTIME"]) > 0 and report["ABANDONED"] in ("", "FALSE")


@pytest.mark.parametrize(
    ("record", "file"),
    [
        ("no", None),  # the caller pressed 2
        ("yes", f"{SPOOL}/../escape.wav"),  # a file outside the spool
        ("yes", f"{SPOOL}/x.wav,v(9)"),  # a comma would add MixMonitor options
        ("no", f"{SPOOL}/x.wav SUCCESS yes"),  # the file passing for the whole test
    ],
)
async def test_live_unrecorded_calls_still_reach_the_agent(record: str, file: str | None) -> None:
    """A refusal or an unsafe file name never starts MixMonitor, and the call goes on to the
    agent exactly as a consenting one."""
    async with live(answer_with(record, file)) as (ari, observed, _):
        caller = await place_call(ari, "press1")
        await observed.wait(varset("CALLREC_AGENT", caller))
        assert observed.varsets("MIXMONITOR_FILENAME", caller) == []


async def test_live_without_the_application_the_call_goes_on_unrecorded() -> None:
    """With no controller attached, Stasis fails at once and the caller is queued,
    unrecorded."""
    async with live(None) as (ari, observed, _):
        caller = await place_call(ari, "press1")
        failed = await observed.wait(varset("STASISSTATUS", caller))
        assert failed["value"] == "FAILED"
        await observed.wait(varset("CALLREC_AGENT", caller))
        assert observed.varsets("MIXMONITOR_FILENAME", caller) == []


@pytest.mark.parametrize(
    ("line_cid", "shown"),
    [("040404045", "040404045"), ("", "040404040"), ("0404:04045", "040404040")],
)
async def test_live_callback_customer_hears_the_notice_once_before_the_agent(
    line_cid: str, shown: str
) -> None:
    """A callback that is a new communication runs Stasis once on the customer's leg (not
    twice: the nested PBX after `continue` is guarded), records that leg after its 1, and
    then connects it to the agent. The customer's leg shows the caller ID the controller
    set for the callback's line, or the global CALLREC_CALLBACK_NUMBER when that is unset
    or not a plain number."""
    callback_id = uuid.uuid4().hex

    async def behaviour(ari: Ari, stand_in: StandIn, channel: str, args: list[str]) -> None:
        if args[0] == "callback":
            assert args[1:] == ["040111222", "service"]
            chosen = {"CALLREC_CALLBACK_CID": line_cid} if line_cid else {}
            await stand_in.decide(
                channel,
                CALLREC_CALL_ID=callback_id,
                CALLREC_RECORD="no",
                CALLREC_NOTICE="yes",
                **chosen,
            )
        else:
            assert args == ["callee", callback_id]
            await answer_with("yes")(ari, stand_in, channel, args)

    async with live(behaviour) as (ari, observed, stand_in):
        assert stand_in is not None
        previous = {n: await ari.get_global(n) for n in ("CALLREC_TRUNK_TECH", "CALLREC_TRUNK")}
        await ari.set_global("CALLREC_TRUNK_TECH", "Local")
        await ari.set_global("CALLREC_TRUNK", "callrec-test-customer/n")
        try:
            await ari.originate(
                "Local/040111222@callrec-callback",
                {"CALLREC_LINE": "service"},
                extension="agent", context="callrec-test-agent", priority="1",
            )  # fmt: skip
            callee_start = await stand_in.events.wait(
                lambda e: e["type"] == "StasisStart" and e["args"][0] == "callee"
            )
            callee = callee_start["channel"]["id"]
            # Dial's f() is the connected line the called channel is given (app_dial.c).
            assert callee_start["channel"]["connected"]["number"] == shown
            await observed.wait(varset("MIXMONITOR_FILENAME", callee))
            await observed.wait(varset("BRIDGEPEER", callee))
            await asyncio.sleep(1.0)  # a second StasisStart would come right after the first
            starts = [
                e
                for e in stand_in.events.seen
                if e["type"] == "StasisStart" and e["args"][0] == "callee"
            ]
            assert len(starts) == 1
        finally:
            for name, value in previous.items():
                await ari.set_global(name, value)


@pytest.mark.skipif(
    urlsplit(URL).hostname not in ("127.0.0.1", "localhost", "::1"),
    reason="FastAGI needs this test on Asterisk's host (agi://127.0.0.1:4573)",
)
async def test_live_fastagi_mode_reports_the_call_and_records_through_the_server() -> None:
    """With CALLREC_MODE=agi the flow calls the FastAGI routes: the server's EXEC MixMonitor
    records, and the hangup handler reports call id, talk time and agent. MixMonitor closes
    the file only after that report has ended (so the server must not take it earlier)."""
    routes: list[tuple[str, list[str]]] = []
    call_id = uuid.uuid4().hex
    file = f"{SPOOL}/{call_id}.wav"
    watch = SpoolWatch(Path(SPOOL))
    closed_at_report: list[bool] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        environment: dict[str, str] = {}
        while line := (await reader.readline()).decode().strip():
            key, _, value = line.partition(": ")
            environment[key] = value
        arguments = [environment[k] for k in sorted(environment) if k.startswith("agi_arg_")]
        routes.append((environment.get("agi_network_script", ""), arguments))
        if environment.get("agi_network_script") == "hangup":
            await asyncio.sleep(0.5)  # time enough for a close, were it to come first
            closed_at_report.append(watch.seen_closed(Path(file)))
        if environment.get("agi_network_script") == "inbound":
            for command in (f"SET VARIABLE CALLREC_CALL_ID {call_id}",
                            f"SET VARIABLE CALLREC_FILE {file}",
                            "SET VARIABLE CALLREC_RECORD yes",
                            f"EXEC MixMonitor {file},b"):  # fmt: skip
                writer.write(f"{command}\n".encode())
                await writer.drain()
                assert (await reader.readline()).startswith(b"200")
        writer.close()

    try:
        server = await asyncio.start_server(serve, "127.0.0.1", 4573)
    except OSError as error:
        pytest.skip(f"port 4573 is taken: {error}")
    watch.start()
    async with server, live(None) as (ari, observed, _):
        previous = await ari.get_global("CALLREC_MODE")
        await ari.set_global("CALLREC_MODE", "agi")
        try:
            caller = await place_call(ari, "silent")
            await observed.wait(varset("MIXMONITOR_FILENAME", caller))
            await observed.wait(varset("CALLREC_AGENT", caller))
            await asyncio.sleep(2.0)  # talk a little
            await ari.request("DELETE", f"/channels/{caller}")
            deadline = asyncio.get_running_loop().time() + WAIT
            while not closed_at_report:  # the report, and the look at the file during it
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.1)
        finally:
            await ari.set_global("CALLREC_MODE", previous)
    assert routes[0] == ("inbound", [SERVICE_DID])
    hangup = next(arguments for route, arguments in routes if route == "hangup")
    assert hangup[0] == call_id
    assert int(hangup[1]) >= 1  # ANSWEREDTIME
    assert hangup[3] == "Local/agent@callrec-test-agent/n"
    assert closed_at_report == [False], "MixMonitor closed the file before the hangup report"
    assert await watch.finished(Path(file), WAIT), "MixMonitor never closed the file"
    watch.stop()
    Path(file).unlink()
