"""Asterisk sends the controller only the event types it reads: a queued caller's channel
reports every dialplan step and variable, which the app never looks at; the outcome comes in
the hangup handler's one user event."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections import Counter
from pathlib import Path

import pytest
from storage_helpers import POLICY

from agi.simpbx import CallerScript
from agi.simpbx.dialplan import Dialplan
from agi.stasis import DIALPLAN_VERSION_VARIABLE, WANTED_EVENTS
from callrec.harness import Harness, harness
from flows.outcome import Outcome
from storage.ports import CallRow

SCALE = 0.02
ANSWERED = CallerScript(keys=((1.0, "1"),), agent_answers_after=1.0, talk_seconds=3.0)
GIVES_UP = CallerScript(keys=((1.0, "1"),), agent_answers_after=None, give_up_after=4.0)


async def _ended(h: Harness, script: CallerScript, caller: str) -> tuple[str, CallRow]:
    placed = await h.sim.place_call("040 40 40 40", caller, script)
    result = await asyncio.wait_for(placed.done, 30)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while h.stasis.is_live(result.channel_id):
        assert loop.time() < deadline, "the controller never finished the call"
        await asyncio.sleep(0.01)
    call_id = h.stasis.call_id_of(result.channel_id)
    assert call_id is not None
    row = await h.store.get_call(call_id)
    assert row is not None
    return result.channel_id, row


def _sent_to_the_app(h: Harness, channel_id: str) -> Counter[str]:
    """The event types the simulated Asterisk put on the controller's WebSocket for a
    channel."""
    kinds: Counter[str] = Counter()
    for entry in h.sim.log:
        event = entry.get("event") if entry.get("kind") == "event" else None
        if not isinstance(event, dict) or event.get("application") != "callrec":
            continue
        channel = event.get("channel") or {}
        playback = event.get("playback") or {}
        if channel.get("id") == channel_id or playback.get("target_uri") == f"channel:{channel_id}":
            kinds[str(event["type"])] += 1
    return kinds


async def test_asterisk_sends_only_the_events_the_controller_reads(tmp_path: Path) -> None:
    """The app's event filter keeps a queued caller's dialplan steps, playback starts and
    dial events off the controller's WebSocket; the queue's variables still come, and with
    them who answered, or that nobody did."""
    async with harness(POLICY, tmp_path, time_scale=SCALE) as h:
        channel_id, answered = await _ended(h, ANSWERED, "041 555 201")
        _, missed = await _ended(h, GIVES_UP, "041 555 202")
    sent = _sent_to_the_app(h, channel_id)
    assert set(sent) <= WANTED_EVENTS, sent
    assert sent["StasisStart"] == 1 and sent["ChannelDestroyed"] == 1
    # The queue's variables come in the hangup handler's one user event, not one by one.
    assert sent["ChannelUserevent"] == 1 and "ChannelVarset" not in sent
    assert answered.outcome is Outcome.ANSWERED and answered.agent == "PJSIP/agent"
    assert missed.outcome is Outcome.MISSED and missed.agent is None


def _before_end_reports(dialplan: Dialplan) -> Dialplan:
    """The dialplan as installed before CALLREC_DIALPLAN_VERSION 2: no version, and a hangup
    handler that only logs."""
    contexts = dict(dialplan.contexts)
    contexts["callrec-hangup"] = {
        exten: tuple(step for step in steps if step.app != "UserEvent")
        for exten, steps in contexts["callrec-hangup"].items()
    }
    kept = {k: v for k, v in dialplan.globals.items() if k != DIALPLAN_VERSION_VARIABLE}
    return dataclasses.replace(dialplan, contexts=contexts, globals=kept)


async def test_an_older_dialplan_still_tells_answered_from_missed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Against a dialplan whose hangup handler sends no end report, the controller asks
    Asterisk for the queue's variables again (at every connection), says the dialplan
    wants installing again, and still tells an answered call from a missed one."""
    async with harness(POLICY, tmp_path, time_scale=SCALE) as h:
        h.sim.dialplan = _before_end_reports(h.sim.dialplan)
        await h.sim.restart()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not h.sim.connected("callrec"):
            assert loop.time() < deadline, "the controller never came back"
            await asyncio.sleep(0.01)
        channel_id, answered = await _ended(h, ANSWERED, "041 555 203")
        _, missed = await _ended(h, GIVES_UP, "041 555 204")
    sent = _sent_to_the_app(h, channel_id)
    assert sent["ChannelVarset"] > 0 and "ChannelUserevent" not in sent
    assert answered.outcome is Outcome.ANSWERED and answered.agent == "PJSIP/agent"
    assert missed.outcome is Outcome.MISSED and missed.agent is None
    assert "the dialplan predates end reports" in caplog.text


async def test_an_answered_inbound_call_costs_five_requests(tmp_path: Path) -> None:
    """The inbound dialplan answers the call before Stasis, so the controller sends no
    answer of its own: subscribe, play, stop, set the decision, continue."""
    async with harness(POLICY, tmp_path, time_scale=SCALE) as h:
        channel_id, row = await _ended(h, ANSWERED, "041 555 205")
    rest = [e for e in h.sim.log if e.get("kind") == "rest"]
    mine = [
        (e["method"], re.sub(r"/play/[^/]+$", "/play", e["path"].replace(channel_id, "{id}")))
        for e in rest
        if channel_id in e["path"] or channel_id in str(e["params"])
    ]
    assert sorted(mine) == [
        ("POST", "/applications/callrec/subscription"),
        ("POST", "/channels/{id}/continue"),
        ("POST", "/channels/{id}/play"),
        ("POST", "/channels/{id}/variable"),
    ]
    assert [e["method"] for e in rest if e["path"].startswith("/playbacks/")] == ["DELETE"]
    assert row.outcome is Outcome.ANSWERED
