"""FastAGI mode end to end: the simulated PBX runs `extensions-fastagi.conf`'s contexts and
its `AGI()` is a real FastAGI client of the controller's server, with MixMonitor writing
as Asterisk does (last frames and the header's sizes only when it closes the file, which
happens after the hangup handler's AGI has ended)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fakes import Harness, fastagi_harness, fastagi_pbx

from agi.simpbx import CallerScript, CallResult, SimulatedPbx
from flows.outcome import Outcome
from flows.policy import Decision, Direction
from storage.ports import RecordingRow, RecordingStatus

SCALE = 0.02  # a 10 s prompt plays in 0.2 s
WAIT = 15.0  # wall seconds a whole simulated call may take
SERVICE = "040404040"
PRESS_1 = CallerScript(keys=((1.0, "1"),), agent_answers_after=1.0, talk_seconds=3.0)


@dataclass
class Pbx:
    agi: Harness
    sim: SimulatedPbx

    async def call(self, script: CallerScript, dialed: str = SERVICE) -> CallResult:
        placed = await self.sim.place_call(dialed, "041123456", script)
        result = await asyncio.wait_for(placed.done, WAIT)
        await self.agi.deps.collector.drain()
        return result


@pytest.fixture
async def pbx(tmp_path: Path) -> AsyncIterator[Pbx]:
    async with fastagi_harness(tmp_path, prompt_timeout=30.0) as agi:
        sim = fastagi_pbx(agi.port, time_scale=SCALE)
        await sim.start()
        try:
            yield Pbx(agi, sim)
        finally:
            await sim.stop()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def only_recording(agi: Harness) -> RecordingRow:
    [recording] = await agi.store.recordings()
    return recording


async def test_fastagi_recording_is_stored_as_mixmonitor_finished_it(pbx: Pbx) -> None:
    """The `/hangup` report arrives while MixMonitor still has the file open; what the store
    keeps is the file as MixMonitor closed it: its size and SHA-256 are the ledger's, and
    verify finds nothing altered."""
    result = await pbx.call(PRESS_1)
    assert result.recorded_file is not None and result.answered_by_agent
    recording = await only_recording(pbx.agi)
    assert recording.status is RecordingStatus.STORED
    assert recording.path is not None
    stored = Path(recording.path)
    assert stored.stat().st_size == result.recorded_bytes == 44 + 2 * 3 * 8000
    assert recording.size == stored.stat().st_size
    assert recording.sha256 == sha256(stored)
    assert (await pbx.agi.store.verify()).ok
    assert not any(pbx.agi.spool.iterdir()), "the spool is empty"


async def test_fastagi_call_outcome_and_decision_match_the_ari_mode(pbx: Pbx) -> None:
    """Through the FastAGI dialplan a consenting caller is decided, recorded and answered,
    exactly as in ARI mode."""
    result = await pbx.call(PRESS_1)
    call_id = result.variables["CALLREC_CALL_ID"]
    row = await pbx.agi.store.get_call(call_id)
    assert row is not None
    assert (row.decision, row.digit, row.outcome) == (Decision.RECORD, "1", Outcome.ANSWERED)
    assert result.prompts_played == ("callrec-consent-question",)


async def test_fastagi_refusal_records_nothing(pbx: Pbx) -> None:
    """A caller who presses 2 reaches the agent; MixMonitor never runs."""
    result = await pbx.call(CallerScript(keys=((1.0, "2"),), agent_answers_after=1.0))
    assert result.answered_by_agent and result.recorded_file is None
    assert await pbx.agi.store.recordings() == []


async def test_fastagi_callback_customer_leg_is_stored_and_ended(pbx: Pbx) -> None:
    """A callback that is a new communication: the customer's leg hears the question, is
    recorded after its 1, and its end is reported, so its file is stored (not left in the
    spool with the call open for ever)."""
    placed = await pbx.sim.place_callback(
        "041555109",
        "service",
        agent_script=CallerScript(talk_seconds=4),
        customer_script=CallerScript(keys=((1.0, "1"),), agent_answers_after=1.0, talk_seconds=6),
    )
    result = await asyncio.wait_for(placed.done, WAIT)
    await pbx.agi.deps.collector.drain()
    assert result.callee is not None and result.callee.recorded_file is not None
    callee_id = result.callee.variables["CALLREC_CALL_ID"]
    row = await pbx.agi.store.get_call(callee_id)
    assert row is not None and row.direction is Direction.CALLEE
    assert row.ended_at is not None and row.outcome is Outcome.ANSWERED
    recording = await only_recording(pbx.agi)
    assert recording.call_id == callee_id and recording.status is RecordingStatus.STORED
    assert recording.path is not None
    assert recording.size == result.callee.recorded_bytes == 44 + 2 * 4 * 8000
    assert recording.sha256 == sha256(Path(recording.path))
    assert not any(pbx.agi.spool.iterdir())
