"""The simulated PBX's ARI surface over real sockets on 127.0.0.1: authentication, Asterisk's
error bodies, Stasis and its events, playbacks, variables, originate, the log.

The small client here (aiohttp, Basic auth, an events reader) is shared by the other
`test_simpbx_*` files; it deliberately does not use `agi.ari`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yarl

from agi.simpbx import CallerScript, SimulatedPbx, SimulationSettingError

USER, PASSWORD = "callrec", "simulated-pbx-test-secret"
SCALE = 0.02  # a 10 s prompt plays in 0.2 s
PROMPTS = {"callrec-consent-question": 10.0, "callrec-sales-notice": 8.0}
WAIT = 5.0  # wall seconds any single expected event may take


def auth_header(user: str = USER, password: str = PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class Events:
    """One application's events WebSocket, read as the test asks."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []
        self.closed = False

    async def _read(self, within: float) -> dict[str, Any] | None:
        message = await asyncio.wait_for(self.ws.receive(), within)
        if message.type != aiohttp.WSMsgType.TEXT:
            self.closed = True
            return None
        event: dict[str, Any] = json.loads(message.data)
        self.seen.append(event)
        return event

    async def expect(self, kind: str, within: float = WAIT, **fields: Any) -> dict[str, Any]:
        """The next event of `kind` (with `fields`), skipping others."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            event = await self._read(max(0.01, deadline - loop.time()))
            if event is None:
                raise AssertionError(f"the socket closed while waiting for {kind}")
            if event["type"] == kind and all(event.get(k) == v for k, v in fields.items()):
                return event

    async def collect(self, within: float) -> list[dict[str, Any]]:
        """Everything that arrives in the next `within` seconds (stops early on close)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        got: list[dict[str, Any]] = []
        while not self.closed and (left := deadline - loop.time()) > 0:
            try:
                event = await self._read(left)
            except TimeoutError:
                break
            if event is not None:
                got.append(event)
        return got

    async def wait_closed(self, within: float = WAIT) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not self.closed:
            await self._read(max(0.01, deadline - loop.time()))


class Ari:
    """REST and WebSocket access to one simulated PBX."""

    def __init__(self, session: aiohttp.ClientSession, pbx: SimulatedPbx) -> None:
        self.session = session
        self.pbx = pbx

    async def call(
        self, method: str, path: str, json_body: Any = None, **params: Any
    ) -> tuple[int, Any]:
        query = {k: str(v) for k, v in params.items()}
        async with self.session.request(
            method, self.pbx.base_url + path, params=query, json=json_body
        ) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None

    async def events(self, app: str = "callrec", **query: str) -> Events:
        url = self.pbx.base_url.replace("http://", "ws://") + "/events"
        ws = await self.session.ws_connect(url, params={"app": app, **query})
        return Events(ws)

    async def decide(
        self,
        channel_id: str,
        *,
        record: str,
        file: str | None,
        subscribe: bool = True,
        extra: dict[str, str] | None = None,
    ) -> None:
        """What the controller does after a decision: subscribe, set variables, continue."""
        if subscribe:
            status, _ = await self.call(
                "POST", "/applications/callrec/subscription", eventSource=f"channel:{channel_id}"
            )
            assert status == 200
        variables = {"CALLREC_RECORD": record, **(extra or {})}
        if file is not None:
            variables["CALLREC_FILE"] = file
        for name, value in variables.items():
            status, _ = await self.call(
                "POST", f"/channels/{channel_id}/variable", variable=name, value=value
            )
            assert status == 204
        status, _ = await self.call("POST", f"/channels/{channel_id}/continue")
        assert status == 204

    async def play(self, channel_id: str, prompt: str = "callrec-consent-question") -> str:
        status, body = await self.call(
            "POST", f"/channels/{channel_id}/play", media=f"sound:{prompt}", lang="sl"
        )
        assert status == 201, body
        return str(body["id"])


@contextlib.asynccontextmanager
async def simulated_ari(**settings: Any) -> AsyncIterator[Ari]:
    """A running simulated PBX and an authenticated client session for it."""
    sim = SimulatedPbx(password=PASSWORD, prompt_durations=PROMPTS, time_scale=SCALE, **settings)
    await sim.start()
    try:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(headers=auth_header(), timeout=timeout) as session:
            yield Ari(session, sim)
    finally:
        await sim.stop()


@pytest.fixture
async def ari() -> AsyncIterator[Ari]:
    async with simulated_ari() as client:
        yield client


@pytest.fixture
def pbx(ari: Ari) -> SimulatedPbx:
    return ari.pbx


# -- authentication -------------------------------------------------------------------


async def test_requests_without_valid_credentials_get_401(pbx: SimulatedPbx) -> None:
    """No credentials or a wrong password is 401 with Asterisk's body and challenge."""
    async with aiohttp.ClientSession() as anonymous:
        for headers in ({}, auth_header(password="wrong"), auth_header(user="other")):
            async with anonymous.get(pbx.base_url + "/channels", headers=headers) as response:
                assert response.status == 401
                assert await response.json() == {"message": "Authentication required"}
                assert response.headers["WWW-Authenticate"].startswith("Basic realm=")
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await anonymous.ws_connect(pbx.base_url + "/events", params={"app": "callrec"})
        assert refused.value.status == 401


async def test_api_key_and_basic_auth_are_both_accepted(pbx: SimulatedPbx) -> None:
    """`?api_key=user:password` works for REST and the WebSocket, like Basic auth."""
    async with aiohttp.ClientSession() as session:
        key = {"api_key": f"{USER}:{PASSWORD}"}
        async with session.get(pbx.base_url + "/channels", params=key) as response:
            assert response.status == 200 and await response.json() == []
        async with session.get(pbx.base_url + "/asterisk/info", headers=auth_header()) as info:
            assert info.status == 200
            assert set(await info.json()) == {"build", "system", "config", "status"}
        ws = await session.ws_connect(pbx.base_url + "/events", params={"app": "callrec", **key})
        assert pbx.connected("callrec")
        await ws.close()


# -- error shapes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "params", "status", "message"),
    [
        ("GET", "/channels/1.1", {}, 404, "Channel not found"),
        ("POST", "/channels/1.1/answer", {}, 404, "Channel not found"),
        ("POST", "/channels/1.1/continue", {}, 404, "Channel not found"),
        ("POST", "/channels/1.1/play", {"media": "sound:x"}, 404, "Channel not found"),
        ("DELETE", "/channels/1.1", {}, 404, "Channel not found"),
        ("DELETE", "/playbacks/abc", {}, 404, "Playback not found"),
        ("GET", "/playbacks/abc", {}, 404, "Playback not found"),
        ("GET", "/channels/1.1/variable", {"variable": "X"}, 404, "Provided channel was not found"),
        ("POST", "/channels/1.1/variable", {}, 400, "Variable name is required"),
        (
            "POST",
            "/applications/callrec/subscription",
            {"eventSource": "channel:1.1"},
            404,
            "Application not found",
        ),
        ("GET", "/bridges", {}, 404, "Resource not found"),
        ("PUT", "/channels", {}, 405, "Invalid method"),
        ("GET", "/channels/", {}, 404, "ARI URLs do not end with a slash. Try /ari/channels"),
        ("POST", "/channels", {}, 400, "Endpoint must be specified"),
        ("POST", "/channels", {"endpoint": "Local"}, 400, "Invalid endpoint specified"),
        (
            "POST",
            "/channels",
            {"endpoint": "Local/x@y"},
            400,
            "Application or extension must be specified",
        ),
        (
            "POST",
            "/channels",
            {"endpoint": "Local/nobody@ctx", "extension": "1"},
            500,
            "Allocation failed",
        ),
    ],
)
async def test_errors_have_asterisk_status_and_body(
    ari: Ari, method: str, path: str, params: dict[str, str], status: int, message: str
) -> None:
    """Requests that cannot be served get Asterisk's status code and `{"message": ...}`."""
    got_status, body = await ari.call(method, path, **params)
    assert (got_status, body) == (status, {"message": message})


async def test_requests_on_a_live_channel_are_checked_like_asterisk(ari: Ari) -> None:
    """Missing or bad parameters on a channel in Stasis get Asterisk's 400/422/500 answers."""
    events = await ari.events()
    call = await ari.pbx.place_call("040404040", "041123456", CallerScript())
    await events.expect("StasisStart")
    cid = call.channel_id
    cases = [
        ("POST", "/applications/callrec/subscription", {}, 400, "Missing parameter eventSource"),
        (
            "POST",
            "/applications/callrec/subscription",
            {"eventSource": "channel:9.9"},
            422,
            "Event source does not exist",
        ),
        (
            "POST",
            "/applications/callrec/subscription",
            {"eventSource": "bogus:x"},
            400,
            "Invalid event source URI scheme",
        ),
        (
            "DELETE",
            "/applications/callrec/subscription",
            {"eventSource": f"channel:{cid}", "x": "1"},
            200,
            None,
        ),
        ("DELETE", f"/channels/{cid}", {"reason": "bogus"}, 400, None),
        ("POST", f"/channels/{cid}/play", {}, 500, "Failed to queue media for playback"),
        ("GET", f"/channels/{cid}/variable", {"variable": "NOPE"}, 404, None),
        ("GET", f"/channels/{cid}/variable", {}, 400, "Variable name is required"),
        ("POST", f"/channels/{cid}/continue", {"label": "nowhere"}, 404, None),
    ]
    for method, path, params, status, message in cases:
        got_status, body = await ari.call(method, path, **params)
        assert got_status == status, (method, path, params, body)
        if message is not None:
            assert body == {"message": message}
    status, _ = await ari.call("POST", f"/channels/{cid}/variable", variable="V", value="1")
    assert status == 204
    assert await ari.call("GET", f"/channels/{cid}/variable", variable="V") == (
        200,
        {"value": "1"},
    )
    assert await ari.call("GET", f"/channels/{cid}/variable", variable="CALLERID(num)") == (
        200,
        {"value": "041123456"},
    )
    # ARRAY() sets each named variable from the comma-separated value; one with no value
    # is set empty (funcs/func_strings.c, array).
    status, _ = await ari.call(
        "POST", f"/channels/{cid}/variable", variable="ARRAY(A1,A2,A3)", value="x,/s/f.wav"
    )
    assert status == 204
    for name, value in (("A1", "x"), ("A2", "/s/f.wav"), ("A3", "")):
        assert await ari.call("GET", f"/channels/{cid}/variable", variable=name) == (
            200,
            {"value": value},
        ), name
    status, channel = await ari.call("GET", f"/channels/{cid}")
    assert status == 200
    assert set(channel) == {
        "id",
        "name",
        "state",
        "protocol_id",
        "caller",
        "connected",
        "accountcode",
        "dialplan",
        "creationtime",
        "language",
    }
    assert channel["dialplan"]["app_name"] == "Stasis"
    assert channel["dialplan"]["app_data"] == "callrec,inbound,040404040"


# -- Stasis, hang-ups, playbacks ------------------------------------------------------


async def test_caller_hanging_up_in_the_prompt_ends_stasis_and_rest_gets_404(ari: Ari) -> None:
    """ChannelHangupRequest, PlaybackFinished (failed), StasisEnd; then 404 on the channel."""
    events = await ari.events()
    call = await ari.pbx.place_call("040404040", "041123456", CallerScript(hang_up_at=2.0))
    start = await events.expect("StasisStart")
    assert start["args"] == ["inbound", "040404040"]
    assert (await ari.call("POST", f"/channels/{call.channel_id}/answer"))[0] == 204
    await ari.play(call.channel_id)
    await events.expect("PlaybackStarted")
    request = await events.expect("ChannelHangupRequest")
    assert request["cause"] == 16 and "soft" not in request
    finished = await events.expect("PlaybackFinished")
    assert finished["playback"]["state"] == "failed"
    await events.expect("StasisEnd")
    result = await asyncio.wait_for(call.done, WAIT)
    assert "ChannelDestroyed" not in [e["type"] for e in await events.collect(0.1)]
    assert result.prompts_played == ("callrec-consent-question",)
    assert result.recorded_file is None and not result.answered_by_agent
    for method, path, params in (
        ("POST", f"/channels/{call.channel_id}/answer", {}),
        ("POST", f"/channels/{call.channel_id}/variable", {"variable": "A", "value": "b"}),
        ("POST", f"/channels/{call.channel_id}/play", {"media": "sound:x"}),
        ("DELETE", f"/channels/{call.channel_id}", {}),
    ):
        assert await ari.call(method, path, **params) == (404, {"message": "Channel not found"})


async def test_playback_finished_still_arrives_after_delete(ari: Ari) -> None:
    """DELETE /playbacks answers 204 first; PlaybackFinished (done) follows; then 404."""
    events = await ari.events()
    call = await ari.pbx.place_call("040404040", "041123456", CallerScript())
    await events.expect("StasisStart")
    playback_id = await ari.play(call.channel_id)
    started = await events.expect("PlaybackStarted")
    assert started["playback"]["state"] == "playing"
    assert await ari.call("DELETE", f"/playbacks/{playback_id}") == (204, None)
    finished = await events.expect("PlaybackFinished")
    assert finished["playback"] == {**started["playback"], "state": "done"}
    log = ari.pbx.log
    delete = next(i for i, e in enumerate(log) if e.get("method") == "DELETE")
    event = next(
        i for i, e in enumerate(log) if e.get("event", {}).get("type") == "PlaybackFinished"
    )
    assert delete < event, "the REST answer goes out before the event"
    assert await ari.call("DELETE", f"/playbacks/{playback_id}") == (
        404,
        {"message": "Playback not found"},
    )


async def test_unknown_sound_is_accepted_then_fails_at_once(ari: Ari) -> None:
    """Like Asterisk, a missing sound file is 201, then PlaybackStarted and a failed finish."""
    events = await ari.events()
    call = await ari.pbx.place_call("040404040", "041123456", CallerScript())
    await events.expect("StasisStart")
    status, body = await ari.call(
        "POST", f"/channels/{call.channel_id}/play/my-id", media="sound:no-such-file"
    )
    assert status == 201
    assert body == {
        "id": "my-id",
        "media_uri": "sound:no-such-file",
        "target_uri": f"channel:{call.channel_id}",
        "language": "en",
        "state": "queued",
    }
    await events.expect("PlaybackStarted")
    finished = await events.expect("PlaybackFinished")
    assert finished["playback"]["state"] == "failed"


async def test_variable_set_during_a_prompt_waits_for_it(ari: Ari) -> None:
    """As on Asterisk, a variable request on a playing channel is carried out after the
    prompt: its 204 and its ChannelVarset come after PlaybackFinished."""
    events = await ari.events()
    call = await ari.pbx.place_call("040404040", "041123456", CallerScript())
    await events.expect("StasisStart")
    await ari.play(call.channel_id)
    await events.expect("PlaybackStarted")
    loop = asyncio.get_running_loop()
    began = loop.time()
    status, _ = await ari.call(
        "POST", f"/channels/{call.channel_id}/variable", variable="CALLREC_RECORD", value="no"
    )
    assert status == 204
    assert loop.time() - began >= 0.7 * PROMPTS["callrec-consent-question"] * SCALE
    order = [e["type"] for e in await events.collect(0.2)]
    assert order.index("PlaybackFinished") < order.index("ChannelVarset")


@pytest.mark.parametrize("subscribe", [True, False])
async def test_only_a_subscription_keeps_events_coming_after_continue(
    ari: Ari, tmp_path: Path, subscribe: bool
) -> None:
    """After `continue` the app hears StasisEnd and then nothing, unless it subscribed."""
    events = await ari.events()
    call = await ari.pbx.place_call("040404040", "041123456", CallerScript(talk_seconds=1))
    await events.expect("StasisStart")
    await ari.decide(call.channel_id, record="no", file=None, subscribe=subscribe)
    await events.expect("StasisEnd")
    await asyncio.wait_for(call.done, WAIT)
    after = [e["type"] for e in await events.collect(0.1)]
    if subscribe:
        assert after[0] == "ChannelVarset" and after[-1] == "ChannelDestroyed"
        assert "ChannelDialplan" in after and "Dial" in after
    else:
        assert after == []


async def test_controller_hangup_is_an_explicit_soft_hangup(ari: Ari) -> None:
    """DELETE /channels gives ChannelHangupRequest cause 32 soft, then StasisEnd (no-key trace)."""
    events = await ari.events()
    call = await ari.pbx.place_call("040404040", "041123456", CallerScript())
    await events.expect("StasisStart")
    assert await ari.call("DELETE", f"/channels/{call.channel_id}", reason="normal") == (204, None)
    request = await events.expect("ChannelHangupRequest")
    assert (request["cause"], request["soft"]) == (32, True)
    await events.expect("StasisEnd")
    result = await asyncio.wait_for(call.done, WAIT)
    assert result.stasis_status == "SUCCESS"
    assert (await ari.call("GET", f"/channels/{call.channel_id}"))[0] == 404


async def test_channel_in_the_dialplan_is_not_in_stasis(ari: Ari) -> None:
    """After `continue` the channel exists (GET 200) but Stasis requests get 409."""
    events = await ari.events()
    call = await ari.pbx.place_call(
        "040404040", "041123456", CallerScript(agent_answers_after=None, give_up_after=30)
    )
    await events.expect("StasisStart")
    await ari.decide(call.channel_id, record="no", file=None)
    await events.expect("ChannelDialplan", dialplan_app="Queue")
    status, channel = await ari.call("GET", f"/channels/{call.channel_id}")
    assert status == 200 and channel["dialplan"]["app_name"] == "Queue"
    assert await ari.call("POST", f"/channels/{call.channel_id}/continue") == (
        409,
        {"message": "Channel not in Stasis application"},
    )
    assert (await ari.call("DELETE", f"/channels/{call.channel_id}"))[0] == 204
    result = await asyncio.wait_for(call.done, WAIT)
    assert result.variables["ABANDONED"] == "TRUE"


async def test_keys_count_from_the_first_playback(ari: Ari) -> None:
    """A key scripted at 1 s comes 1 s after the prompt starts when the prompt starts late."""
    events = await ari.events()
    call = await ari.pbx.place_call("040404040", "041123456", CallerScript(keys=((1.0, "1"),)))
    await events.expect("StasisStart")
    await asyncio.sleep(0.5 * SCALE)  # the controller takes half a second before it plays
    await ari.play(call.channel_id)
    await events.expect("ChannelDtmfReceived")
    at = {e["event"]["type"]: e["t"] for e in ari.pbx.log if e["kind"] == "event"}
    assert at["StasisStart"] < at["PlaybackStarted"] < at["ChannelDtmfReceived"]
    assert at["ChannelDtmfReceived"] - at["PlaybackStarted"] >= 1.0 * SCALE - 0.002
    await ari.call("DELETE", f"/channels/{call.channel_id}")
    assert (await asyncio.wait_for(call.done, WAIT)).digits_sent == ("1",)


async def test_keys_count_from_stasis_start_when_nothing_plays(ari: Ari) -> None:
    """Without a playback the key clock runs from StasisStart."""
    events = await ari.events()
    await ari.pbx.place_call("040404040", None, CallerScript(keys=((1.0, "7"),)))
    start = await events.expect("StasisStart")
    assert start["channel"]["caller"] == {"name": "", "number": ""}
    dtmf = await events.expect("ChannelDtmfReceived")
    assert (dtmf["digit"], dtmf["duration_ms"]) == ("7", 100)


async def test_second_websocket_replaces_the_first(ari: Ari) -> None:
    """A second socket for the app takes it over; the first hears ApplicationReplaced."""
    first = await ari.events()
    second = await ari.events()
    replaced = await first.expect("ApplicationReplaced")
    assert replaced["application"] == "callrec"
    await ari.pbx.place_call("040404040", "041123456", CallerScript())
    await second.expect("StasisStart")
    assert await first.collect(0.1) == []


async def test_originate_runs_a_local_test_caller_into_the_dialplan(ari: Ari) -> None:
    """POST /channels with Local/<script>@ctx runs that caller into a context, as the traces did."""
    events = await ari.events()
    status, body = await ari.call(
        "POST",
        "/channels",
        endpoint="Local/press1@callrec-test-caller",
        extension="040404040",
        context="callrec-inbound",
        priority=1,
        callerId="Ana <041123456>",
    )
    assert status == 200
    assert body["state"] == "Down" and body["name"].endswith(";1")
    assert body["caller"] == {"name": "Ana", "number": "041123456"}
    assert body["dialplan"]["app_name"] == "AppDial2"
    start = await events.expect("StasisStart")
    assert start["channel"]["id"] == body["id"] and start["args"] == ["inbound", "040404040"]
    await ari.play(body["id"])
    dtmf = await events.expect("ChannelDtmfReceived")
    assert dtmf["digit"] == "1"
    status, second = await ari.call(
        "POST",
        "/channels",
        json_body={"variables": {"X": "1"}},
        endpoint="Local/silent@callrec-test-caller",
        app="callrec",
        appArgs="callee,abc",
        channelId="my-channel",
    )
    assert status == 200 and second["id"] == "my-channel"
    start = await events.expect("StasisStart")
    assert start["args"] == ["callee", "abc"]
    assert await ari.call("GET", "/channels/my-channel/variable", variable="X") == (
        200,
        {"value": "1"},
    )
    assert (
        await ari.call(
            "POST", "/channels", endpoint="Local/silent@x", app="a", channelId="my-channel"
        )
    )[0] == 409


async def test_ids_are_decoded_per_path_segment(ari: Ari) -> None:
    """A channel id holding `/`, `?` or `%` is found when each path part is percent-encoded."""
    events = await ari.events()
    odd = "a/b?c%d"
    status, body = await ari.call(
        "POST", "/channels", endpoint="Local/silent@x", app="callrec", channelId=odd
    )
    assert (status, body["id"]) == (200, odd)
    await events.expect("StasisStart")
    url = yarl.URL(ari.pbx.base_url + "/channels/a%2Fb%3Fc%25d", encoded=True)
    async with ari.session.get(url) as response:
        assert response.status == 200 and (await response.json())["id"] == odd
    assert ari.pbx.log[-1]["path"] == f"/channels/{odd}"


async def test_log_holds_rest_and_events_in_trace_format(ari: Ari) -> None:
    """`log` entries look like the traces': rest with method/path/params/status/body, events."""
    events = await ari.events()
    call = await ari.pbx.place_call("040404040", "041123456", CallerScript())
    await events.expect("StasisStart")
    await ari.call("POST", f"/channels/{call.channel_id}/answer")
    log = ari.pbx.log
    rest = [e for e in log if e["kind"] == "rest"]
    assert rest[-1] == {
        "t": rest[-1]["t"],
        "kind": "rest",
        "method": "POST",
        "path": f"/channels/{call.channel_id}/answer",
        "params": {},
        "status": 204,
        "body": "",
    }
    first = next(e for e in log if e["kind"] == "event")
    assert first["event"]["type"] == "StasisStart"
    assert set(first["event"]) == {
        "type",
        "timestamp",
        "args",
        "channel",
        "asterisk_id",
        "application",
    }
    assert first["event"] == events.seen[0]


async def test_bad_scripts_and_settings_are_refused_clearly(pbx: SimulatedPbx) -> None:
    """A script or setting that cannot be simulated is refused with an error naming it."""
    with pytest.raises(SimulationSettingError, match="DTMF"):
        CallerScript(keys=((1.0, "x"),))
    with pytest.raises(SimulationSettingError, match="negative"):
        CallerScript(talk_seconds=-1)
    with pytest.raises(SimulationSettingError, match="time_scale"):
        SimulatedPbx(time_scale=0)
    with pytest.raises(SimulationSettingError, match="empty"):
        await pbx.place_call(" ", None, CallerScript())
    with pytest.raises(SimulationSettingError, match="count"):
        pbx.fail_next("GET", "/channels", count=0)
