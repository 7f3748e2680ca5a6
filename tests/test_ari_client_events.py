"""ARI events: the pure decoder on real traces and fuzz, and the WebSocket against real
aiohttp servers on 127.0.0.1 (order, bad messages, reconnects, backoff, cancellation)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import ARI_TRACES, absent

from agi.ari import AriClient
from agi.ari_events import MAX_EVENT_BYTES, AriEvent, Reconnected, decode_event
from flows.errors import ProtocolViolation

TRACES = ARI_TRACES
USER, PASSWORD = "callrec", "events-secret-9f8e"


def _trace_events() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(TRACES.glob("*.json")):
        for entry in json.loads(path.read_text(encoding="utf-8"))["log"]:
            if entry["kind"] == "event":
                found.append((path.stem, entry["event"]))
    return found


TRACE_EVENTS = _trace_events()
needs_traces = pytest.mark.skipif(not TRACE_EVENTS, reason=absent(TRACES))


def _event(kind: str, channel_id: str = "c1", **extra: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "timestamp": "2026-11-25T09:09:27.203+0000",
        "channel": {
            "id": channel_id,
            "caller": {"name": "Ana", "number": "041123456"},
            "dialplan": {"context": "inbound", "exten": "040404040", "priority": 2},
        },
        **extra,
    }


# The decoder


@needs_traces
def test_every_trace_event_decodes_with_the_right_fields() -> None:
    """Each event of the real traces decodes; lifted fields equal the JSON they came from."""
    kinds = {raw["type"] for _, raw in TRACE_EVENTS}
    assert {"StasisStart", "ChannelDtmfReceived", "PlaybackFinished", "Dial"} <= kinds
    for name, raw in TRACE_EVENTS:
        event = decode_event(json.dumps(raw))
        assert event.type == raw["type"], name
        assert event.timestamp == raw["timestamp"]
        assert event.raw == raw
        if "channel" in raw:
            assert event.channel_id == raw["channel"]["id"]
            assert event.caller_number == raw["channel"]["caller"]["number"]
            assert event.exten == raw["channel"]["dialplan"]["exten"]
        if "playback" in raw:
            assert event.playback_id == raw["playback"]["id"]
            assert f"channel:{event.channel_id}" == raw["playback"]["target_uri"]
        assert event.digit == raw.get("digit")
        assert event.variable == raw.get("variable")
        assert event.value == raw.get("value")
        assert event.args == tuple(raw.get("args", ()))


@needs_traces
def test_trace_events_give_the_app_what_it_routes_on() -> None:
    """StasisStart, DTMF, PlaybackFinished and the queue's ChannelVarset read as expected."""
    decoded = [decode_event(json.dumps(raw)) for name, raw in TRACE_EVENTS if "bargein" in name]
    start = next(e for e in decoded if e.type == "StasisStart")
    assert (start.channel_id, start.args, start.exten) == (
        "1795597767.8",
        ("040404040",),
        "040404040",
    )
    assert start.caller_number == "041123456"
    dtmf = next(e for e in decoded if e.type == "ChannelDtmfReceived")
    assert (dtmf.channel_id, dtmf.digit) == ("1795597767.8", "1")
    finished = next(e for e in decoded if e.type == "PlaybackFinished")
    assert finished.playback_id == "458d3bd8-6064-4663-b76e-531de702edab"
    assert finished.channel_id == "1795597767.8"
    varsets = [(e.variable, e.value) for e in decoded if e.type == "ChannelVarset"]
    assert ("CALLREC_RECORD", "yes") in varsets
    assert ("STASISSTATUS", "SUCCESS") in varsets


def test_str_and_bytes_decode_alike() -> None:
    """A text frame and a binary frame with the same UTF-8 decode to equal events."""
    raw = json.dumps(_event("ChannelDtmfReceived", digit="#", duration_ms=100))
    assert decode_event(raw) == decode_event(raw.encode())


def test_caller_number_stays_out_of_the_repr() -> None:
    """An event's repr (as in a log line) does not show the caller's number."""
    event = decode_event(json.dumps(_event("StasisStart", args=["inbound", "040404040"])))
    assert "041123456" not in repr(event)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "array, not an object"),
        ('"StasisStart"', "string, not an object"),
        ("{}", "no string 'type'"),
        ('{"type": 7}', "no string 'type'"),
        ('{"type": ""}', "no string 'type'"),
        (json.dumps(_event("ChannelDtmfReceived", digit="x")), "digit of 1 characters"),
        (json.dumps(_event("ChannelDtmfReceived", digit="E")), "digit of 1 characters"),
        (json.dumps(_event("ChannelDtmfReceived", digit="11")), "digit of 2 characters"),
        (json.dumps(_event("ChannelDtmfReceived", digit="")), "digit of 0 characters"),
        (json.dumps(_event("ChannelDtmfReceived")), "no 'digit'"),
        (json.dumps(_event("ChannelDtmfReceived", digit=5)), "'digit' is a number"),
        (json.dumps({"type": "StasisStart", "args": []}), "no 'channel'"),
        (json.dumps({"type": "StasisStart", "channel": "c1"}), "'channel' is a string"),
        (json.dumps({"type": "StasisEnd", "channel": {"id": 12}}), "'id' is a number"),
        (json.dumps({"type": "StasisEnd", "channel": {}}), "'id' is missing"),
        (json.dumps(_event("StasisStart", args="inbound")), "'args' is not a list"),
        (json.dumps(_event("StasisStart", args=[1])), "'args' is not a list"),
        (json.dumps({"type": "PlaybackFinished", "playback": {"id": ["p"]}}), "'id' is a"),
        (json.dumps(_event("ChannelVarset", variable="X", value=1)), "'value' is a number"),
        ("[" * 100_000 + "]" * 100_000, "not JSON"),
        ('{"type": "X", "n": ' + "9" * 5000 + "}", "not JSON"),
    ],
)
def test_malformed_events_are_protocol_violations(message: str, reason: str) -> None:
    """Each kind of malformed message raises ProtocolViolation saying what is wrong."""
    with pytest.raises(ProtocolViolation) as caught:
        decode_event(message)
    assert reason in str(caught.value)


def test_oversized_and_non_utf8_messages_are_protocol_violations() -> None:
    """A message over MAX_EVENT_BYTES, or bytes that are not UTF-8, are refused unparsed."""
    big = json.dumps(_event("ChannelVarset", variable="X", value="v" * MAX_EVENT_BYTES))
    with pytest.raises(ProtocolViolation, match="over the limit"):
        decode_event(big)
    with pytest.raises(ProtocolViolation, match="over the limit"):
        decode_event(big.encode())
    multibyte = json.dumps({"type": "X", "v": "š" * (MAX_EVENT_BYTES // 2)}, ensure_ascii=False)
    assert len(multibyte) < MAX_EVENT_BYTES
    with pytest.raises(ProtocolViolation, match="over the limit"):
        decode_event(multibyte)
    with pytest.raises(ProtocolViolation, match="not UTF-8"):
        decode_event(b'{"type": "\xff"}')


def test_playback_on_a_bridge_has_no_channel() -> None:
    """A playback whose target is a bridge names no channel."""
    event = decode_event(
        json.dumps({"type": "PlaybackStarted", "playback": {"id": "p", "target_uri": "bridge:b"}})
    )
    assert (event.playback_id, event.channel_id) == ("p", None)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_field_names = st.sampled_from(
    ["type", "channel", "playback", "digit", "args", "variable", "value", "timestamp", "id",
     "caller", "number", "dialplan", "exten", "target_uri"]
)  # fmt: skip
_shaped: st.SearchStrategy[Any] = st.recursive(
    _json,
    lambda inner: st.dictionaries(_field_names, inner, max_size=6),
    max_leaves=20,
)


def _decodes_or_violates(message: str | bytes) -> None:
    try:
        event = decode_event(message)
    except ProtocolViolation:
        return
    assert isinstance(event.type, str) and event.type
    assert event.digit is None or event.digit in set("0123456789*#ABCD")
    assert all(isinstance(arg, str) for arg in event.args)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(), st.binary()))
def test_arbitrary_text_and_bytes_only_ever_raise_protocol_violation(message: str | bytes) -> None:
    """Random text and bytes either decode or raise ProtocolViolation, nothing else."""
    _decodes_or_violates(message)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_shaped, st.sampled_from(["StasisStart", "ChannelDtmfReceived", "PlaybackFinished", None]))
def test_event_shaped_json_only_ever_raises_protocol_violation(data: Any, kind: str | None) -> None:
    """JSON built from ARI's own field names with random types decodes or is refused cleanly."""
    if kind is not None and isinstance(data, dict):
        data = {**data, "type": kind}
    _decodes_or_violates(json.dumps(data))


# The WebSocket

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler, port: int = 0) -> str:
        app = web.Application()
        app.router.add_get("/ari/events", handler)
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}/ari"

    yield start
    for runner in runners:
        await runner.cleanup()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _take(client: AriClient, count: int, within: float = 5.0) -> list[AriEvent | Reconnected]:
    taken: list[AriEvent | Reconnected] = []
    events = client.events()
    try:
        async with asyncio.timeout(within):
            async for item in events:
                taken.append(item)
                if len(taken) == count:
                    break
    finally:
        await events.aclose()
    return taken


async def test_events_arrive_in_order_and_bad_messages_are_skipped(
    serve: Callable[[Handler], Awaitable[str]], caplog: pytest.LogCaptureFixture
) -> None:
    """Good events come through in order; malformed, oversized and bad-digit messages are
    logged by size and reason only, and the connection outlives the REST timeout."""
    caplog.set_level(logging.DEBUG)
    seen_query: list[dict[str, str]] = []
    secret_number = "+38641999888"
    good = [
        _event("StasisStart", args=["inbound", "040404040"]),
        _event("ChannelDtmfReceived", digit="1", duration_ms=100),
        _event("SomethingNew"),
        _event("StasisEnd"),
    ]
    bad = [
        '{"type": "StasisStart", "channel": {"id": "c1", "caller": {"number": "' + secret_number,
        json.dumps(_event("ChannelVarset", variable="X", value=secret_number * 80_000)),
        json.dumps(_event("ChannelDtmfReceived", digit=secret_number, duration_ms=1)),
    ]

    async def handler(request: web.Request) -> web.StreamResponse:
        seen_query.append(dict(request.query))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(json.dumps(good[0]))
        await ws.send_str(bad[0])
        await asyncio.sleep(0.5)  # longer than the client's REST timeout
        await ws.send_str(bad[1])
        await ws.send_bytes(json.dumps(good[1]).encode())
        await ws.send_str(bad[2])
        await ws.send_str(json.dumps(good[2]))
        await ws.send_str(json.dumps(good[3]))
        await asyncio.sleep(10)
        return ws

    url = await serve(handler)
    async with AriClient(url, USER, PASSWORD, "callrec", timeout=0.3) as client:
        taken = await _take(client, 4)
        assert client.connect_attempts == 1
    assert [item.type for item in taken if isinstance(item, AriEvent)] == [
        "StasisStart", "ChannelDtmfReceived", "SomethingNew", "StasisEnd",
    ]  # fmt: skip
    assert seen_query == [{"app": "callrec", "subscribeAll": "false"}]
    dropped = [r.getMessage() for r in caplog.records if "dropped a message" in r.getMessage()]
    assert len(dropped) == 3
    assert "not JSON" in dropped[0]
    assert f"{len(bad[1])} bytes" in dropped[1] and "over the limit" in dropped[1]
    assert "not one of 0-9" in dropped[2]
    assert any("unknown event type 'SomethingNew'" in r.getMessage() for r in caplog.records)
    assert secret_number not in caplog.text
    assert PASSWORD not in caplog.text


async def test_events_an_app_does_not_want_are_dropped_unread(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """With `wanted`, known event types outside it never reach the app; unknown types and
    the client's own ApplicationReplaced still do, and the order holds."""
    sent = [
        _event("StasisStart", args=["inbound"]),
        _event("ChannelDialplan", dialplan_app="Queue", dialplan_app_data="service"),
        _event("ChannelVarset", variable="BRIDGEPEER", value="PJSIP/agent"),
        _event("ChannelStateChange"),
        _event("SomethingNew"),
        {"type": "ApplicationReplaced", "application": "callrec"},
    ]

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        for event in sent:
            await ws.send_str(json.dumps(event))
        await asyncio.sleep(10)
        return ws

    url = await serve(handler)
    wanted = frozenset({"StasisStart", "ChannelVarset"})
    async with AriClient(url, USER, PASSWORD, "callrec", timeout=0.3) as client:
        taken: list[str] = []
        events = client.events(wanted)
        try:
            async with asyncio.timeout(5):
                async for item in events:
                    if isinstance(item, AriEvent):
                        taken.append(item.type)
                    if len(taken) == 4:
                        break
        finally:
            await events.aclose()
    assert taken == ["StasisStart", "ChannelVarset", "SomethingNew", "ApplicationReplaced"]


async def test_variables_an_app_does_not_read_are_dropped_unread(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """With `variables`, ChannelVarset events of other variables never reach the app, while
    a wanted one always does: in pretty-printed JSON, with its keys in any order, and with
    a value that quotes another type or variable."""
    decoy = '{"type": "ChannelDialplan", "variable": "QUEUEPOSITION"}'
    sent = [
        json.dumps(_event("ChannelVarset", variable="QUEUEPOSITION", value="1")),
        json.dumps(_event("ChannelVarset", variable="MIXMONITOR_FILENAME", value="/x.wav")),
        json.dumps(_event("ChannelVarset", variable="BRIDGEPEER", value="PJSIP/agent-1"), indent=2),
        json.dumps({"value": decoy, "variable": "CALLREC_AGENT", **_event("ChannelVarset")}),
        json.dumps(_event("ChannelDialplan", dialplan_app="Queue")),
        json.dumps(_event("ChannelVarset", variable="ANSWEREDTIME", value="12")),
    ]

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        for text in sent:
            await ws.send_str(text)
        await asyncio.sleep(10)
        return ws

    url = await serve(handler)
    wanted = frozenset({"ChannelVarset"})
    variables = frozenset({"BRIDGEPEER", "CALLREC_AGENT", "ANSWEREDTIME"})
    async with AriClient(url, USER, PASSWORD, "callrec", timeout=0.3) as client:
        taken: list[tuple[str | None, str | None]] = []
        events = client.events(wanted, variables)
        try:
            async with asyncio.timeout(5):
                async for item in events:
                    if isinstance(item, AriEvent):
                        taken.append((item.variable, item.value))
                    if len(taken) == 3:
                        break
        finally:
            await events.aclose()
    assert taken == [
        ("BRIDGEPEER", "PJSIP/agent-1"),
        ("CALLREC_AGENT", decoy),
        ("ANSWEREDTIME", "12"),
    ]


async def test_reconnects_after_the_server_drops_the_socket(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """When the socket is closed mid-call the client reconnects, yields Reconnected, and the
    events of the new connection follow."""
    connections = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal connections
        connections += 1
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(json.dumps(_event("StasisStart", f"c{connections}", args=[])))
        if connections == 1:
            await ws.close()
        async for _ in ws:
            pass
        return ws

    url = await serve(handler)
    async with AriClient(url, USER, PASSWORD, "callrec", backoff_initial=0.05) as client:
        taken = await _take(client, 3)
    assert isinstance(taken[0], AriEvent) and taken[0].channel_id == "c1"
    assert taken[1] == Reconnected(1)
    assert isinstance(taken[2], AriEvent) and taken[2].channel_id == "c2"


async def test_reconnects_after_the_server_restarts(
    serve: Callable[..., Awaitable[str]],
) -> None:
    """A server that goes away and comes back on the same port is reconnected to, and
    Reconnected counts the attempts it took."""
    port = _free_port()
    runner_box: list[web.AppRunner] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(json.dumps(_event("StasisStart", "first", args=[])))
        async for _ in ws:
            pass
        return ws

    async def start() -> None:
        app = web.Application()
        app.router.add_get("/ari/events", handler)
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runner_box.append(runner)

    await start()
    url = f"http://127.0.0.1:{port}/ari"
    async with AriClient(
        url, USER, PASSWORD, "callrec", backoff_initial=0.05, backoff_max=0.2
    ) as client:
        events = client.events()
        try:
            first = await anext(events)
            assert isinstance(first, AriEvent)
            pending = asyncio.ensure_future(anext(events))
            before = client.connect_attempts
            await runner_box[0].cleanup()
            async with asyncio.timeout(5):
                while client.connect_attempts < before + 2:  # refused at least once
                    await asyncio.sleep(0.01)
            await start()
            async with asyncio.timeout(5):
                again = await pending
        finally:
            await events.aclose()
            await runner_box[-1].cleanup()
    assert isinstance(again, Reconnected)
    assert again.attempt >= 2


async def test_a_server_that_comes_up_late_is_announced_with_reconnected() -> None:
    """When the first connection needed retries, Reconnected precedes the first event, so
    the app reconciles channels that entered Stasis while it could not listen."""
    port = _free_port()

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(json.dumps(_event("StasisStart", "early", args=[])))
        async for _ in ws:
            pass
        return ws

    url = f"http://127.0.0.1:{port}/ari"
    async with AriClient(
        url, USER, PASSWORD, "callrec", backoff_initial=0.05, backoff_max=0.1
    ) as client:
        events = client.events()
        pending = asyncio.ensure_future(anext(events))
        async with asyncio.timeout(5):
            while client.connect_attempts < 2:
                await asyncio.sleep(0.01)
        app = web.Application()
        app.router.add_get("/ari/events", handler)
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            async with asyncio.timeout(5):
                first = await pending
                second = await anext(events)
        finally:
            await events.aclose()
            await runner.cleanup()
    assert isinstance(first, Reconnected) and first.attempt >= 2
    assert isinstance(second, AriEvent) and second.channel_id == "early"


async def test_a_down_server_does_not_make_it_spin(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """Refused connections, and a server that accepts and closes at once, are retried at a
    capped, backed-off rate, never in a hot loop."""
    accepted = 0

    async def close_at_once(request: web.Request) -> web.StreamResponse:
        nonlocal accepted
        accepted += 1
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close()
        return ws

    closing_url = await serve(close_at_once)
    refused_url = f"http://127.0.0.1:{_free_port()}/ari"
    span = 1.5
    counts = []
    for url in (refused_url, closing_url):
        client = AriClient(url, USER, PASSWORD, "callrec", backoff_initial=0.05, backoff_max=0.4)
        started = time.process_time()
        with contextlib.suppress(TimeoutError):
            await _take(client, 1000, within=span)
        cpu = time.process_time() - started
        counts.append(client.connect_attempts)
        await client.close()
        assert cpu < span / 2, f"{cpu:.2f} s of CPU in {span} s"
    # Delays 0.05, 0.1, 0.2, 0.4, 0.4, ... halved at worst by jitter: at most ~12 in 1.5 s.
    assert all(3 <= count <= 14 for count in counts), counts
    assert accepted == counts[1]


async def test_a_silent_server_is_noticed_by_the_heartbeat(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """A server that stops answering pings (a half-open connection) is dropped and
    reconnected to rather than waited on forever."""
    connections = 0

    async def deaf(request: web.Request) -> web.StreamResponse:
        nonlocal connections
        connections += 1
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        await ws.send_str(json.dumps(_event("StasisStart", f"c{connections}", args=[])))
        with contextlib.suppress(Exception):
            async for _ in ws:
                pass
        return ws

    url = await serve(deaf)
    async with AriClient(
        url, USER, PASSWORD, "callrec", heartbeat=0.2, backoff_initial=0.05
    ) as client:
        taken = await _take(client, 3, within=5)
    assert [type(item).__name__ for item in taken] == ["AriEvent", "Reconnected", "AriEvent"]


async def test_cancelling_the_consumer_stops_cleanly(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """A consumer cancelled while connected, or while backing off, ends cancelled (not
    swallowed) at once, and the server sees its socket closed."""
    closed = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(json.dumps(_event("StasisStart", args=[])))
        async for message in ws:
            assert message.type != WSMsgType.ERROR
        closed.set()
        return ws

    got_one = asyncio.Event()

    async def consume(client: AriClient) -> None:
        async for _ in client.events():
            got_one.set()

    url = await serve(handler)
    for target in (url, f"http://127.0.0.1:{_free_port()}/ari"):
        client = AriClient(target, USER, PASSWORD, "callrec", backoff_initial=5, backoff_max=5)
        task = asyncio.create_task(consume(client))
        if target == url:
            await asyncio.wait_for(got_one.wait(), 5)
        else:
            await asyncio.sleep(0.2)  # into the 5 s backoff
        started = time.monotonic()
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)  # bounded even if cancellation were swallowed
        assert task.cancelled(), "the cancellation was swallowed"
        assert time.monotonic() - started < 1.0
        await client.close()
        if not task.done():
            await asyncio.wait({task}, timeout=2.0)
    await asyncio.wait_for(closed.wait(), 5)


async def test_closing_the_client_ends_the_iteration(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """close() from another task ends events() normally, whether connected or backing off."""

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        return ws

    url = await serve(handler)
    for target in (url, f"http://127.0.0.1:{_free_port()}/ari"):
        client = AriClient(target, USER, PASSWORD, "callrec", backoff_initial=5, backoff_max=5)

        async def consume(client: AriClient = client) -> int:
            return len([item async for item in client.events()])

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await client.close()
        assert await asyncio.wait_for(task, 2) == 0
        assert time.monotonic() - started < 1.0
    assert [item async for item in client.events()] == []


async def test_refused_websocket_credentials_are_logged_without_the_password(
    serve: Callable[[Handler], Awaitable[str]], caplog: pytest.LogCaptureFixture
) -> None:
    """A 401 on the WebSocket is logged naming the user, retried with backoff, never leaked."""
    caplog.set_level(logging.DEBUG)

    async def refuse(request: web.Request) -> web.StreamResponse:
        return web.json_response({"message": "Authentication required"}, status=401)

    url = await serve(refuse)
    async with AriClient(url, USER, PASSWORD, "callrec", backoff_initial=0.05) as client:
        with contextlib.suppress(TimeoutError):
            await _take(client, 1, within=0.4)
    lines = [r.getMessage() for r in caplog.records if "refused the credentials" in r.getMessage()]
    assert lines and all(f"user '{USER}'" in line for line in lines)
    assert PASSWORD not in caplog.text
