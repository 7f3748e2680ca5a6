"""The Stasis application's name after the controller goes: Asterisk keeps an application
whose WebSocket closed while it held channel subscriptions, and destroys it only at its next
tidy; the controller must not leave it so, and a live run must not be refused by one."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from agi.ari import AriClient
from agi.simpbx import CallerScript, SimCall
from callrec.harness import Harness, LiveAsterisk, harness, refuse_a_taken_app
from flows.errors import CallrecError
from flows.policy import Policy

POLICY = replace(Policy(), overload_window=timedelta(hours=3))
SCALE = 0.02
SERVICE = "040 40 40 40"
# Presses 1, then waits in the queue far longer than the test: its channel stays up.
QUEUED = CallerScript(
    keys=((2.0, "1"),), agent_answers_after=None, give_up_after=100_000.0, talk_seconds=1.0
)


async def _queued_call(h: Harness) -> SimCall:
    assert h.sim is not None
    placed = await h.sim.place_call(SERVICE, "041 555 401", QUEUED)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    path = f"/channels/{placed.channel_id}/continue"
    while not any(e.get("kind") == "rest" and e.get("path") == path for e in h.sim.log):
        assert loop.time() < deadline, "the call was never continued"
        await asyncio.sleep(0.01)
    return placed


async def _registered(h: Harness, app: str) -> bool:
    assert h.sim is not None
    async with AriClient(h.sim.base_url, "callrec", h.sim_password, app) as client:
        return await client.application_registered()


async def test_shutdown_frees_the_app_name_while_callers_wait_in_the_queue(
    tmp_path: Path,
) -> None:
    """A controller stopped while its callers still wait in the queue leaves no application
    behind: the next controller or live run finds the name free."""
    async with harness(POLICY, tmp_path, time_scale=SCALE) as h:
        placed = await _queued_call(h)
        assert h.sim is not None and placed.channel_id in h.sim.channel_ids()
        await h.stasis.shutdown(grace=0.2)
        await h.client.close()
        assert not await _registered(h, "callrec")
        assert placed.channel_id in h.sim.channel_ids(), "the caller still waits"


async def test_a_live_run_starts_where_a_stale_app_holds_the_name(tmp_path: Path) -> None:
    """An application left behind by a client that went while subscribed (its channels gone
    since) is listed, yet nobody is behind it: a live run on that name starts."""
    async with harness(POLICY, tmp_path, time_scale=SCALE) as h:
        assert h.sim is not None
        placed = await _queued_call(h)
        gone = AriClient(h.sim.base_url, "callrec", h.sim_password, "callrec-stale")
        listening = asyncio.get_running_loop().create_task(_drain(gone))
        await asyncio.wait_for(gone.wait_connected(), 10)
        await gone.subscribe(placed.channel_id)
        listening.cancel()  # the client dies: its socket closes, nothing is unsubscribed
        with contextlib.suppress(asyncio.CancelledError):
            await listening
        await h.client.hangup(placed.channel_id)
        await asyncio.wait_for(placed.done, 10)
        assert await _registered(h, "callrec-stale"), "Asterisk keeps it until it tidies"
        live = LiveAsterisk(h.sim.base_url, "callrec", h.sim_password, "callrec-stale")
        await refuse_a_taken_app(live)
        assert not await _registered(h, "callrec-stale")
        await gone.close()


async def test_a_live_run_is_refused_where_a_client_holds_the_name(tmp_path: Path) -> None:
    """A name a connected client holds is still refused: a second client would take its
    calls."""
    async with harness(POLICY, tmp_path, time_scale=SCALE) as h:
        assert h.sim is not None
        live = LiveAsterisk(h.sim.base_url, "callrec", h.sim_password, "callrec")
        with pytest.raises(CallrecError, match="already registered"):
            await refuse_a_taken_app(live)
        assert h.client.connected


async def _drain(client: AriClient) -> None:
    async for _ in client.events():
        pass
