"""The simulated PBX's faults: REST errors and time-outs, the events WebSocket dropping (now or
at an event), a PBX restart, and a clean stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from test_simpbx import WAIT, Ari, auth_header, simulated_ari

from agi.simpbx import CallerScript

QUEUED = CallerScript(agent_answers_after=None, give_up_after=30)  # stays in the queue a while


@pytest.fixture
async def ari() -> AsyncIterator[Ari]:
    async with simulated_ari() as client:
        yield client


async def test_fail_next_answers_an_error_and_does_nothing(ari: Ari) -> None:
    """A matched request gets the injected status and has no effect; the next one works."""
    events = await ari.events()
    # A callback's agent leg: it enters Stasis unanswered (the inbound dialplan answers).
    call = await ari.pbx.place_callback(
        "041123456", None, agent_script=CallerScript(), customer_script=CallerScript()
    )
    await events.expect("StasisStart")
    ari.pbx.fail_next("post", "/channels/*/answer", status=500)
    ari.pbx.fail_next("POST", "/channels/*/variable", status=503, count=2)
    path = f"/channels/{call.channel_id}"
    assert await ari.call("POST", path + "/answer") == (500, {"message": "Injected fault"})
    assert (await ari.call("GET", path))[1]["state"] == "Ring"
    assert (await ari.call("POST", path + "/answer"))[0] == 204
    assert (await ari.call("GET", path))[1]["state"] == "Up"
    for _ in range(2):
        status, _ = await ari.call("POST", path + "/variable", variable="A", value="1")
        assert status == 503
    assert (await ari.call("GET", path + "/variable", variable="A"))[0] == 404
    assert (await ari.call("POST", path + "/variable", variable="A", value="1"))[0] == 204
    rest = [e for e in ari.pbx.log if e["kind"] == "rest" and e["status"] >= 500]
    assert [e["status"] for e in rest] == [500, 503, 503]


async def test_fail_next_with_a_delay_times_a_client_out(ari: Ari) -> None:
    """A delayed fault outlasts a client's time-out; the PBX serves the next request."""
    ari.pbx.fail_next("GET", "/asterisk/info", delay=2.0)
    short = aiohttp.ClientTimeout(total=0.2)
    async with aiohttp.ClientSession(headers=auth_header(), timeout=short) as hasty:
        with pytest.raises(asyncio.TimeoutError):
            async with hasty.get(ari.pbx.base_url + "/asterisk/info") as response:
                await response.read()
    assert (await ari.call("GET", "/asterisk/info"))[0] == 200


async def test_fault_on_the_events_socket_refuses_the_connection(ari: Ari) -> None:
    """`fail_next("GET", "/events")` makes the WebSocket handshake fail once."""
    ari.pbx.fail_next("GET", "/events", status=500)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await ari.events()
    assert refused.value.status == 500
    await ari.events()
    assert ari.pbx.connected()


async def test_dropped_socket_fails_new_calls_until_the_app_reconnects(ari: Ari) -> None:
    """After a drop the app is inactive: a new call fails Stasis. On reconnect the channel
    still in Stasis is controllable and its subscription still delivers events."""
    first = await ari.events()
    held = await ari.pbx.place_call("040404040", "041123456", QUEUED)
    await first.expect("StasisStart")
    status, _ = await ari.call(
        "POST", "/applications/callrec/subscription", eventSource=f"channel:{held.channel_id}"
    )
    assert status == 200
    await ari.pbx.drop_websockets()
    await first.wait_closed()
    assert not ari.pbx.connected()
    missed = await ari.pbx.place_call(
        "040404040", "041123457", CallerScript(agent_answers_after=None, give_up_after=1)
    )
    assert (await asyncio.wait_for(missed.done, WAIT)).stasis_status == "FAILED"
    second = await ari.events()
    assert (await ari.call("POST", f"/channels/{held.channel_id}/answer"))[0] == 204
    await ari.play(held.channel_id)
    started = await second.expect("PlaybackStarted")
    assert started["playback"]["target_uri"] == f"channel:{held.channel_id}"
    await ari.decide(held.channel_id, record="no", file=None, subscribe=False)
    await second.expect("StasisEnd")
    varset = await second.expect("ChannelVarset", variable="STASISSTATUS")
    assert varset["channel"]["id"] == held.channel_id, "the subscription survived the drop"
    fresh = await ari.pbx.place_call("040404040", "041123458", CallerScript())
    start = await second.expect("StasisStart")
    assert start["channel"]["id"] == fresh.channel_id


@pytest.mark.parametrize("deliver", [False, True])
async def test_drop_at_an_event_closes_the_socket_there(ari: Ari, deliver: bool) -> None:
    """`drop_websockets_at` closes the socket at the next such event, before or after it."""
    events = await ari.events()
    ari.pbx.drop_websockets_at("ChannelDtmfReceived", deliver=deliver)
    call = await ari.pbx.place_call("040404040", "041123456", CallerScript(keys=((1.0, "1"),)))
    await events.expect("StasisStart")
    await ari.play(call.channel_id)
    await events.wait_closed()
    types = [e["type"] for e in events.seen]
    assert ("ChannelDtmfReceived" in types) is deliver
    assert types[-1] == ("ChannelDtmfReceived" if deliver else "PlaybackStarted")
    status, channel = await ari.call("GET", f"/channels/{call.channel_id}")
    assert status == 200 and channel["dialplan"]["app_name"] == "Stasis"
    again = await ari.events()
    assert "ChannelDtmfReceived" not in [e["type"] for e in await again.collect(0.1)]
    assert (await ari.call("DELETE", f"/channels/{call.channel_id}"))[0] == 204
    assert (await asyncio.wait_for(call.done, WAIT)).digits_sent == ("1",)


async def test_restart_loses_live_channels_and_serves_the_same_port(ari: Ari) -> None:
    """A restart closes the socket, resolves live calls, forgets apps and subscriptions, and
    comes back on the same URL with channel ids of a new epoch."""
    events = await ari.events()
    old = await ari.pbx.place_call("040404040", "041123456", QUEUED)
    await events.expect("StasisStart")
    url = ari.pbx.base_url
    await ari.pbx.restart(down_for=0.05)
    await events.wait_closed()
    result = await asyncio.wait_for(old.done, WAIT)
    assert result.channel_id == old.channel_id and not result.answered_by_agent
    assert ari.pbx.base_url == url
    assert await ari.call("GET", "/channels") == (200, [])
    assert (await ari.call("GET", "/applications/callrec"))[0] == 404
    assert await ari.call("GET", f"/channels/{old.channel_id}") == (
        404,
        {"message": "Channel not found"},
    )
    fresh_events = await ari.events()
    fresh = await ari.pbx.place_call("040404040", "041123456", CallerScript())
    start = await fresh_events.expect("StasisStart")
    assert start["channel"]["id"] == fresh.channel_id
    assert fresh.channel_id.split(".")[0] != old.channel_id.split(".")[0]


async def test_restart_closes_a_started_recording(ari: Ari, tmp_path: Path) -> None:
    """A call bridged when the PBX restarts keeps the audio MixMonitor had written."""
    file = tmp_path / "cut.wav"
    events = await ari.events()
    call = await ari.pbx.place_call(
        "040404040", "041123456", CallerScript(agent_answers_after=0, talk_seconds=600)
    )
    await events.expect("StasisStart")
    await ari.decide(call.channel_id, record="yes", file=str(file))
    await events.expect("ChannelVarset", variable="BRIDGEPEER")
    await asyncio.sleep(0.05)
    await ari.pbx.restart()
    result = await asyncio.wait_for(call.done, WAIT)
    assert result.recorded_file == str(file)
    assert 44 < file.stat().st_size == result.recorded_bytes


async def test_stop_resolves_calls_and_leaves_no_task_behind() -> None:
    """`stop` resolves every live call and cancels every task the simulator started."""
    async with simulated_ari() as ari:
        events = await ari.events()
        call = await ari.pbx.place_call("040404040", "041123456", CallerScript(keys=((9, "1"),)))
        await events.expect("StasisStart")
        await ari.play(call.channel_id)
        await events.expect("PlaybackStarted")
    assert call.done.done() and call.done.result().prompts_played == ("callrec-consent-question",)
    current = asyncio.current_task()
    leftovers = [
        task
        for task in asyncio.all_tasks()
        if task is not current and "simpbx" in str(task.get_coro())
    ]
    assert leftovers == []
