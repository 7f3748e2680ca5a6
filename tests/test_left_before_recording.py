"""A caller who presses 1 and leaves before the dialplan's MixMonitor runs: the ledger keeps
the decision to record, the call's end, and marks the call unrecorded with the reason, in
both modes, so that no decision to record is left without an outcome."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from fakes import fastagi_harness, fastagi_pbx

from agi.simpbx import CallerScript, CallResult
from callrec.harness import harness
from flows.outcome import LEFT_BEFORE_RECORDING
from flows.policy import Decision, Policy
from storage.ports import CallRow, CallStart, DecisionRecord, Ledger, StoreApi
from storage.records import CallFilter
from storage.sqlite import SqliteStore

POLICY = replace(Policy(), overload_window=timedelta(hours=3))
SCALE = 0.02  # one script second is 20 ms of wall time
SERVICE = "040404040"
# Presses 1 early in the question, hangs up 0.8 s (wall) after the call began: after the
# key, and before the controller's hand-over, which each test holds back for longer.
PRESSES_1_AND_LEAVES = CallerScript(keys=((1.0, "1"),), hang_up_at=40.0)
HELD_BACK = 2.0  # wall seconds
WAIT = 15.0


async def _settled(store: StoreApi) -> tuple[CallRow, list[str]]:
    """The ledger's only call, once it has ended and its recording question has settled
    (a not-started mark, or none after a grace), with the reasons it was marked."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while True:
        listed = await store.calls(CallFilter())
        assert len(listed) <= 1
        call = None if not listed else await store.get_call(listed[0].call_id)
        if call is not None and call.ended_at is not None:
            reasons = [
                e.details.get("reason", "")
                for e in await store.audit_entries(call.call_id)
                if e.action == "recording.not_started"
            ]
            if reasons or loop.time() > deadline - 5:
                return call, reasons
        assert loop.time() < deadline, "the call never ended in the ledger"
        await asyncio.sleep(0.05)


def _check(result: CallResult, call: CallRow, reasons: list[str]) -> None:
    assert result.digits_sent == ("1",)
    assert result.recorded_file is None, "MixMonitor never ran"
    assert call.decision is Decision.RECORD
    assert call.ended_at is not None and call.outcome is not None
    assert reasons == [LEFT_BEFORE_RECORDING]


async def test_ari_caller_who_leaves_before_mixmonitor_is_marked_unrecorded(
    tmp_path: Path,
) -> None:
    """ARI: the caller hangs up while `continue` is on its way; the ledger shows the decision
    to record, the end, and `recording.not_started` saying the caller left first."""
    async with harness(POLICY, tmp_path, time_scale=SCALE) as h:
        assert h.sim is not None
        h.sim.delay_next("POST", "/channels/*/continue", delay=HELD_BACK)
        placed = await h.sim.place_call(SERVICE, "041 555 301", PRESSES_1_AND_LEAVES)
        result = await asyncio.wait_for(placed.done, WAIT)
        call, reasons = await _settled(h.store)
        _check(result, call, reasons)
        assert await h.store.recordings(include_deleted=True) == []


class _SlowDecisions:
    """The store, with decisions that take `HELD_BACK` seconds to commit (a busy disk)."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    async def commit_decision(self, record: DecisionRecord, start: CallStart | None = None) -> None:
        await asyncio.sleep(HELD_BACK)
        await self._store.commit_decision(record, start)

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


def _slow(store: SqliteStore) -> Ledger:
    slow: Ledger = _SlowDecisions(store)  # type: ignore[assignment]
    return slow


async def test_fastagi_caller_who_leaves_before_mixmonitor_is_marked_unrecorded(
    tmp_path: Path,
) -> None:
    """FastAGI: the caller hangs up while the decision is being committed, so MixMonitor is
    never run; the ledger shows the decision, the end, and the not-started mark."""
    async with fastagi_harness(tmp_path, POLICY, prompt_timeout=30.0, ledger=_slow) as agi:
        sim = fastagi_pbx(agi.port, time_scale=SCALE)
        await sim.start()
        try:
            placed = await sim.place_call(SERVICE, "041555302", PRESSES_1_AND_LEAVES)
            result = await asyncio.wait_for(placed.done, WAIT)
            call, reasons = await _settled(agi.store)
        finally:
            await sim.stop()
        _check(result, call, reasons)
        assert await agi.store.recordings(include_deleted=True) == []
