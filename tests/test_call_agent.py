"""Who took a call: learned from the queue's variables in both modes and kept on the call."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fakes import fastagi_harness, fastagi_pbx
from storage_helpers import POLICY, T0, open_store, record_call

from agi.simpbx import CallerScript
from callrec.harness import harness
from flows.outcome import Outcome, QueueObserver

SCALE = 0.02
PRESS_1 = CallerScript(keys=((1.0, "1"),), agent_answers_after=1.0, talk_seconds=3.0)


def test_the_agent_is_named_by_our_variable_before_the_bridged_channel() -> None:
    """CALLREC_AGENT (the member's interface) names the agent over BRIDGEPEER, and the name
    outlives the queue clearing BRIDGEPEER after the talk."""
    observer = QueueObserver(continued=True)
    observer.saw_variable("BRIDGEPEER", "PJSIP/agent-00000002")
    assert observer.agent() == "PJSIP/agent-00000002"
    observer.saw_variable("CALLREC_AGENT", "PJSIP/1001")
    observer.saw_variable("BRIDGEPEER", "")
    assert observer.agent() == "PJSIP/1001"


def test_no_agent_is_named_by_empty_or_garbled_values() -> None:
    """An empty, overlong or unprintable value names nobody."""
    observer = QueueObserver(continued=True)
    for value in ("", "   ", "x" * 500, "PJSIP/\x00evil"):
        observer.saw_variable("CALLREC_AGENT", value)
    assert observer.agent() is None


@pytest.mark.usefixtures("ledger")
async def test_the_ledger_keeps_the_agent_of_an_ended_call(tmp_path: Path, spool: Path) -> None:
    """end_call stores who took the call; the first end is the one kept."""
    store = await open_store(tmp_path / "store", POLICY, spool_dir=spool, create=True)
    try:
        call_id, _ = await record_call(store, spool, end=False)
        await store.end_call(call_id, T0, Outcome.ANSWERED, "PJSIP/1001")
        await store.end_call(call_id, T0, Outcome.MISSED, "PJSIP/1002")
        row = await store.get_call(call_id)
        assert row is not None and row.agent == "PJSIP/1001"
        other, _ = await record_call(store, spool)
        row = await store.get_call(other)
        assert row is not None and row.agent is None
    finally:
        await store.close()


async def test_ari_mode_stores_the_agent_who_answered(tmp_path: Path) -> None:
    """A call the simulated queue's member answers has that member on its ledger row."""
    async with harness(POLICY, tmp_path, time_scale=SCALE) as h:
        placed = await h.sim.place_call("040 40 40 40", "041 555 201", PRESS_1)
        result = await asyncio.wait_for(placed.done, 30)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while h.stasis.is_live(result.channel_id):
            assert loop.time() < deadline
            await asyncio.sleep(0.01)
        call_id = h.stasis.call_id_of(result.channel_id)
        assert call_id is not None
        row = await h.store.get_call(call_id)
        assert row is not None and row.agent == "PJSIP/agent"


async def test_fastagi_mode_stores_the_agent_who_answered(tmp_path: Path) -> None:
    """The dialplan's hangup report names the agent (CALLREC_AGENT); the ledger keeps it."""
    async with fastagi_harness(tmp_path, prompt_timeout=30.0) as agi:
        sim = fastagi_pbx(agi.port, time_scale=SCALE)
        await sim.start()
        try:
            placed = await sim.place_call("040404040", "041123456", PRESS_1)
            result = await asyncio.wait_for(placed.done, 15)
            await agi.deps.collector.drain()
        finally:
            await sim.stop()
        row = await agi.store.get_call(result.variables["CALLREC_CALL_ID"])
        assert row is not None and row.agent == "PJSIP/agent"
